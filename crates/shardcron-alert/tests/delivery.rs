//! Each alert channel delivered to a server on loopback that checks the payload
//! format (and the DingTalk signature) and answers HTTP 500 (SMTP 451) twice before
//! accepting; plus queueing, overflow and retry classification.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use shardcron_alert::{AlertConfig, AlertKind, AlertSender, SenderOptions};
use tokio::time::Instant;

const FLUSH: Duration = Duration::from_secs(20);

fn configs(toml: &str) -> Vec<AlertConfig> {
    AlertConfig::document_from_toml(toml).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends one FAILED alert for job `orders` to `toml`'s channels and waits for it.
async fn deliver_one(toml: &str) -> AlertSender {
    let sender = AlertSender::start(configs(toml), fast_options()).expect("start");
    sender.send(alert(AlertKind::Failed, "orders"));
    assert!(sender.flush(FLUSH).await, "not delivered in time");
    sender
}

/// Three requests, all valid: two answered 500, the last accepted; one delivery.
fn assert_three_attempts(server: &HttpServer, sender: &AlertSender) -> Vec<Recorded> {
    let reqs = server.requests();
    for r in &reqs {
        assert_eq!(r.verdict, Ok(()), "server rejected a request: {r:?}");
    }
    assert_eq!(reqs.len(), 3, "attempts: {reqs:#?}");
    let stats = sender.stats();
    assert_eq!(
        (
            stats.delivered,
            stats.failed,
            stats.failed_attempts,
            stats.pending
        ),
        (1, 0, 2, 0),
        "{stats:?}"
    );
    reqs
}

fn check_text(text: &str) -> Result<(), String> {
    for needle in [
        "FAILED",
        "job: orders",
        "item: 3",
        "fire time: 2026-03-01T10:00:05Z",
        "instance: node-a@10.0.0.1#42",
        "execution: exec-0001",
        "attempt: 2",
        "cause: exit status 7: disk full",
    ] {
        if !text.contains(needle) {
            return Err(format!("text lacks {needle:?}: {text:?}"));
        }
    }
    if text.contains("http://") || text.contains("https://") {
        return Err("text has a link".into());
    }
    Ok(())
}

/// `{"msgtype":"text","text":{"content": ...}}` and nothing else.
fn check_robot_text(r: &Recorded) -> Result<(), String> {
    r.check_json_post()?;
    let v = r.json();
    let obj = v.as_object().ok_or("body is not an object")?;
    if obj.len() != 2 || v["msgtype"] != "text" {
        return Err(format!("bad shape: {v}"));
    }
    let text = v["text"].as_object().ok_or("text is not an object")?;
    if text.len() != 1 {
        return Err(format!("bad text object: {v}"));
    }
    check_text(
        v["text"]["content"]
            .as_str()
            .ok_or("content is not a string")?,
    )
}

#[tokio::test]
async fn webhook_posts_alert_json_with_headers() {
    let server = http_server(Behaviour {
        fail_first: 2,
        ok_status: 204,
        ok_body: String::new(),
        validator: Arc::new(|r| {
            r.check_json_post()?;
            if r.path != "/hooks/tok-path" || r.param("sig").as_deref() != Some("q-token") {
                return Err(format!("path/query {} {}", r.path, r.query));
            }
            let auth = r.headers.get("authorization").and_then(|v| v.to_str().ok());
            let env = r.headers.get("x-env").and_then(|v| v.to_str().ok());
            if auth != Some("Bearer hdr-token") || env != Some("prod") {
                return Err(format!("headers {:?}", r.headers));
            }
            let v = r.json();
            let expected = [
                ("kind", Value::from("FAILED")),
                ("job", "orders".into()),
                ("item", 3.into()),
                ("fire_time", "2026-03-01T10:00:05Z".into()),
                ("instance", "node-a@10.0.0.1#42".into()),
                ("execution_id", "exec-0001".into()),
                ("attempt", 2.into()),
                ("cause", "exit status 7: disk full".into()),
            ];
            for (k, want) in expected {
                if v[k] != want {
                    return Err(format!("{k}: {} != {want}", v[k]));
                }
            }
            let summary = v["summary"].as_str().unwrap_or("");
            if !summary.starts_with("shardcron FAILED: job \"orders\" item 3") {
                return Err(format!("summary {summary:?}"));
            }
            Ok(())
        }),
        echo_on_failure: false,
    })
    .await;
    let sender = deliver_one(&format!(
        r#"[[alert]]
name = "hook"
type = "webhook"
url = "{}/hooks/tok-path?sig=q-token"
headers = {{ Authorization = "Bearer hdr-token", X-Env = "prod" }}
"#,
        server.base
    ))
    .await;
    let reqs = assert_three_attempts(&server, &sender);
    // Backoff between attempts: at least 0.75 * 20 ms, then 0.75 * 40 ms.
    let gaps: Vec<Duration> = reqs.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(15), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(30), "{gaps:?}");
}

#[tokio::test]
async fn slack_gets_text_only() {
    let server = http_server(Behaviour {
        fail_first: 2,
        ok_status: 200,
        ok_body: "ok".into(),
        validator: Arc::new(|r| {
            r.check_json_post()?;
            let v = r.json();
            let obj = v.as_object().ok_or("not an object")?;
            if obj.len() != 1 {
                return Err(format!("more than text: {v}"));
            }
            check_text(v["text"].as_str().ok_or("text is not a string")?)
        }),
        echo_on_failure: false,
    })
    .await;
    let sender = deliver_one(&format!(
        "[[alert]]\nname = \"s\"\ntype = \"slack\"\nurl = \"{}/services/T0/B0/XYZ\"\n",
        server.base
    ))
    .await;
    let reqs = assert_three_attempts(&server, &sender);
    assert_eq!(reqs[2].path, "/services/T0/B0/XYZ");
}

const DING_SECRET: &str = "SECtest-ding-secret-0123456789";

/// What a DingTalk robot checks: its token, a timestamp within an hour of now, the
/// signature recomputed from the secret, and the payload.
fn check_dingtalk(r: &Recorded, secret: &str, now_ms: i64) -> Result<(), String> {
    if r.path != "/robot/send" || r.param("access_token").as_deref() != Some("ding-token") {
        return Err(format!("path/token {} {}", r.path, r.query));
    }
    check_dingtalk_signature(r, secret, now_ms)?;
    check_robot_text(r)
}

fn dingtalk_validator(secret: &'static str) -> Validator {
    Arc::new(move |r| check_dingtalk(r, secret, chrono::Utc::now().timestamp_millis()))
}

#[tokio::test]
async fn dingtalk_is_signed_and_verified() {
    let server = http_server(Behaviour {
        fail_first: 2,
        ok_status: 200,
        ok_body: r#"{"errcode":0,"errmsg":"ok"}"#.into(),
        validator: dingtalk_validator(DING_SECRET),
        echo_on_failure: false,
    })
    .await;
    let sender = deliver_one(&format!(
        "[[alert]]\nname = \"d\"\ntype = \"dingtalk\"\nurl = \"{}/robot/send?access_token=ding-token\"\nsecret = \"{DING_SECRET}\"\n",
        server.base
    ))
    .await;
    let reqs = assert_three_attempts(&server, &sender);
    // The signature is URL-encoded in the query: no raw '+', '/' or '=' in it.
    for r in &reqs {
        let raw = r.query.split("sign=").nth(1).unwrap_or("");
        assert!(!raw.contains(['+', '/', '=']), "{}", r.query);
    }

    // The same server check refuses a stale timestamp and a forged signature.
    let stale = reqs[2].clone();
    let now = chrono::Utc::now().timestamp_millis();
    let e = check_dingtalk(&stale, DING_SECRET, now + 3_600_001 + 60_000);
    assert!(e.is_err_and(|e| e.starts_with("stale timestamp")));
    assert!(
        check_dingtalk(&stale, "SECanother", now).is_err_and(|e| e.starts_with("sign mismatch"))
    );
}

#[tokio::test]
async fn dingtalk_with_a_wrong_secret_is_refused_every_time() {
    // A server that knows another secret answers like DingTalk: HTTP 200 with a
    // non-zero errcode, which the sender counts as a failed attempt.
    let server = http_server(Behaviour {
        fail_first: 0,
        ok_status: 200,
        ok_body: r#"{"errcode":0,"errmsg":"ok"}"#.into(),
        validator: dingtalk_validator("SECthe-real-secret"),
        echo_on_failure: false,
    })
    .await;
    let sender = AlertSender::start(
        configs(&format!(
            "[[alert]]\nname = \"d\"\ntype = \"dingtalk\"\nurl = \"{}/robot/send?access_token=ding-token\"\nsecret = \"SECwrong\"\n",
            server.base
        )),
        SenderOptions { max_attempts: 3, ..fast_options() },
    )
    .expect("start");
    sender.send(alert(AlertKind::Failed, "orders"));
    assert!(sender.flush(FLUSH).await);
    let reqs = server.requests();
    // HTTP 400 from the check is permanent: one attempt, then given up.
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0]
            .verdict
            .as_ref()
            .is_err_and(|e| e.starts_with("sign mismatch"))
    );
    let s = sender.stats();
    assert_eq!((s.delivered, s.failed), (0, 1), "{s:?}");
}

#[tokio::test]
async fn robot_errcode_is_a_failed_attempt() {
    let server = http_server(Behaviour {
        fail_first: 0,
        ok_status: 200,
        ok_body: r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#.into(),
        validator: accept_all(),
        echo_on_failure: false,
    })
    .await;
    let sender = AlertSender::start(
        configs(&format!(
            "[[alert]]\nname = \"w\"\ntype = \"wecom\"\nurl = \"{}/cgi-bin/webhook/send?key=k\"\n",
            server.base
        )),
        SenderOptions {
            max_attempts: 3,
            ..fast_options()
        },
    )
    .expect("start");
    sender.send(alert(AlertKind::Lost, "orders"));
    assert!(sender.flush(FLUSH).await);
    assert_eq!(server.requests().len(), 3);
    let s = sender.stats();
    assert_eq!(
        (s.delivered, s.failed, s.failed_attempts),
        (0, 1, 3),
        "{s:?}"
    );
}

#[tokio::test]
async fn wecom_gets_robot_text() {
    let server = http_server(Behaviour {
        fail_first: 2,
        ok_status: 200,
        ok_body: r#"{"errcode":0,"errmsg":"ok"}"#.into(),
        validator: Arc::new(|r| {
            if r.path != "/cgi-bin/webhook/send" || r.param("key").as_deref() != Some("wecom-key") {
                return Err(format!("path/key {} {}", r.path, r.query));
            }
            check_robot_text(r)
        }),
        echo_on_failure: false,
    })
    .await;
    let sender = deliver_one(&format!(
        "[[alert]]\nname = \"w\"\ntype = \"wecom\"\nurl = \"{}/cgi-bin/webhook/send?key=wecom-key\"\n",
        server.base
    ))
    .await;
    assert_three_attempts(&server, &sender);
}

#[tokio::test]
async fn email_over_smtp_with_auth_is_retried_after_4xx() {
    let server = smtp_server(SmtpBehaviour {
        fail_first: 2,
        credentials: Some(("cron".into(), "smtp-pass-word".into())),
    })
    .await;
    let sender = deliver_one(&format!(
        r#"[[alert]]
name = "mail"
type = "email"
host = "127.0.0.1"
port = {}
tls = "none"
username = "cron"
password = "smtp-pass-word"
from = "shardcron <cron@example.com>"
to = ["ops@example.com", "Dev Team <dev@example.com>"]
subject = "[sc] {{kind}} {{job}} #{{item}}"
"#,
        server.port
    ))
    .await;
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 3, "{sessions:#?}");
    assert!(sessions[0].refused && sessions[1].refused && !sessions[2].refused);
    for s in &sessions {
        assert!(s.ehlo);
        assert_eq!(
            s.auth,
            Some((String::new(), "cron".into(), "smtp-pass-word".into()))
        );
    }
    let last = &sessions[2];
    assert_eq!(last.mail_from.as_deref(), Some("<cron@example.com>"));
    assert_eq!(last.rcpt_to, ["<ops@example.com>", "<dev@example.com>"]);
    let data = last.data.clone().unwrap_or_default();
    let (head, body) = data
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {data}"));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    assert_eq!(
        header("From").as_deref(),
        Some("shardcron <cron@example.com>")
    );
    assert_eq!(
        header("To").as_deref(),
        Some("ops@example.com, \"Dev Team\" <dev@example.com>")
    );
    assert_eq!(header("Subject").as_deref(), Some("[sc] FAILED orders #3"));
    assert!(header("Content-Type").is_some_and(|c| c.starts_with("text/plain")));
    let body = body.replace("\r\n", "\n");
    check_text(&body).unwrap_or_else(|e| panic!("{e}\n{data}"));
    let s = sender.stats();
    assert_eq!(
        (s.delivered, s.failed, s.failed_attempts),
        (1, 0, 2),
        "{s:?}"
    );
}

#[tokio::test]
async fn email_permanent_rejection_is_not_retried() {
    let server = smtp_server(SmtpBehaviour {
        fail_first: 0,
        credentials: Some(("cron".into(), "right".into())),
    })
    .await;
    let sender = deliver_one(&format!(
        "[[alert]]\nname = \"m\"\ntype = \"email\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"cron\"\npassword = \"wrong-password\"\nfrom = \"a@example.com\"\nto = \"b@example.com\"\n",
        server.port
    ))
    .await;
    assert_eq!(server.sessions().len(), 1);
    let s = sender.stats();
    assert_eq!(
        (s.delivered, s.failed, s.failed_attempts),
        (0, 1, 1),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_returns_at_once_while_the_server_stalls() {
    let (base, connections) = stalling_server().await;
    let sender = AlertSender::start(
        configs(&format!(
            "[[alert]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"{base}/x\"\n"
        )),
        SenderOptions {
            queue_capacity: 8,
            max_in_flight: 2,
            max_attempts: 2,
            attempt_timeout: Duration::from_millis(300),
            ..fast_options()
        },
    )
    .expect("start");
    sender.send(alert(AlertKind::Failed, "first"));
    // Let the delivery start and reach the stalled server.
    let t = Instant::now();
    while *connections.lock().expect("count") == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "no connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for i in 0..1000 {
        sender.send(alert(AlertKind::TimedOut, &format!("job-{i}")));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "1000 sends took {took:?}"
    );
    let s = sender.stats();
    // At most 8 queued, 1 taken from the queue waiting for a delivery slot, 2 in
    // delivery; everything else was dropped, nothing delivered.
    assert!(s.dropped >= 1000 - 8 - 2, "{s:?}");
    assert!(s.pending <= 8 + 1 + 2, "{s:?}");
    assert_eq!(s.delivered, 0);
    assert!(!sender.flush(Duration::from_millis(50)).await);
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest() {
    let server = http_server(Behaviour {
        fail_first: 0,
        ok_status: 200,
        ok_body: String::new(),
        validator: accept_all(),
        echo_on_failure: false,
    })
    .await;
    let sender = AlertSender::start(
        configs(&format!(
            "[[alert]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"{}/x\"\n",
            server.base
        )),
        SenderOptions {
            queue_capacity: 2,
            ..fast_options()
        },
    )
    .expect("start");
    // This test's runtime has one thread: the delivery task cannot run until this
    // task yields, so all five alerts meet a queue of two.
    for i in 1..=5 {
        sender.send(alert(AlertKind::Failed, &format!("job-{i}")));
    }
    assert_eq!(sender.stats().dropped, 3);
    assert!(sender.flush(FLUSH).await);
    let mut jobs: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.json()["job"].as_str().unwrap_or("").to_owned())
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["job-4", "job-5"]);
    assert_eq!(sender.stats().delivered, 2);
}

#[tokio::test]
async fn kinds_route_and_errors_are_classified() {
    let always_500 = http_server(Behaviour {
        fail_first: usize::MAX,
        ok_status: 200,
        ok_body: String::new(),
        validator: accept_all(),
        echo_on_failure: false,
    })
    .await;
    let not_found = http_server(Behaviour {
        fail_first: 0,
        ok_status: 404,
        ok_body: "no such hook".into(),
        validator: accept_all(),
        echo_on_failure: false,
    })
    .await;
    let lost_only = http_server(Behaviour {
        fail_first: 0,
        ok_status: 200,
        ok_body: String::new(),
        validator: accept_all(),
        echo_on_failure: false,
    })
    .await;
    let sender = AlertSender::start(
        configs(&format!(
            r#"[[alert]]
name = "a"
type = "webhook"
url = "{}/x"
[[alert]]
name = "b"
type = "webhook"
url = "{}/x"
[[alert]]
name = "c"
type = "webhook"
on = ["lost"]
url = "{}/x"
"#,
            always_500.base, not_found.base, lost_only.base
        )),
        SenderOptions {
            max_attempts: 4,
            ..fast_options()
        },
    )
    .expect("start");
    sender.send(alert(AlertKind::Failed, "orders"));
    assert!(sender.flush(FLUSH).await);
    assert_eq!(
        always_500.requests().len(),
        4,
        "5xx retried up to max_attempts"
    );
    assert_eq!(not_found.requests().len(), 1, "404 is permanent");
    assert_eq!(lost_only.requests().len(), 0, "FAILED is not in on");
    let s = sender.stats();
    assert_eq!(
        (s.delivered, s.failed, s.failed_attempts),
        (0, 2, 5),
        "{s:?}"
    );

    sender.send(alert(AlertKind::Lost, "orders"));
    assert!(sender.flush(FLUSH).await);
    assert_eq!(lost_only.requests().len(), 1);
    assert_eq!(sender.stats().delivered, 1);
}
