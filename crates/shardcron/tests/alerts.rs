//! Alerts through the real binary: a `shardcron standalone` whose config file has
//! `[[alert]]` channels (webhook, Slack, DingTalk, WeCom, email, log) pointing at
//! loopback servers that check each payload (and the DingTalk signature) and fail
//! the first two deliveries of each channel; script jobs that fail, time out, or
//! fail with `alerts = []`. Every channel gets exactly the alerts of the jobs that
//! name it (or of every job, when a job names none) and of the kinds in its `on`;
//! no secret reaches the node's log. Bad `[[alert]]` tables and unknown channel
//! names in a job's `alerts` stop the start with exit code 2.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::{Node, bin, standalone, stderr, stdout, tempdir_with_jobs};
use shardcron_testkit::capture::{
    Behaviour, HttpServer, Recorded, SmtpBehaviour, check_dingtalk_signature, http_server,
    smtp_server,
};
use shardcron_testkit::{free_port, wait_until, write_script};

/// How long a node may take to stop on SIGTERM, delivering the alerts still
/// retrying (with backoff) first.
const SHUTDOWN: Duration = Duration::from_secs(20);

/// `shardcron job validate CONFIG`.
fn validate(config: &Path) -> Output {
    bin()
        .args(["job", "validate"])
        .arg(config)
        .output()
        .expect("run")
}

const DING_SECRET: &str = "SECding-secret-6666";

/// Every secret of the channels below: none may appear in the node's output.
const SECRETS: &[&str] = &[
    "path-token-1111",
    "query-token-2222",
    "header-token-3333",
    "slack-token-4444",
    "ding-token-5555",
    DING_SECRET,
    "wecom-key-7777",
    "smtp-password-8888",
];

const HOOK_PATH: &str = "/hook/path-token-1111";
const SLACK_PATH: &str = "/services/T0/B0/slack-token-4444";
const DING_PATH: &str = "/robot/send";
const WECOM_PATH: &str = "/cgi-bin/webhook/send";

/// (kind, job, item) of an alert.
type Seen = (String, String, u32);

/// Kind, job and item from an alert's text (`Alert::text`): `shardcron alert:
/// KIND`, `job: JOB`, `item: N` lines, plus the other fields; no links.
fn from_text(text: &str) -> Result<Seen, String> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .ok_or_else(|| format!("no {prefix:?} line in {text:?}"))
    };
    for needed in ["fire time: ", "instance: ", "execution: ", "attempt: 1"] {
        if !text.contains(needed) {
            return Err(format!("no {needed:?} in {text:?}"));
        }
    }
    if text.contains("http://") || text.contains("https://") {
        return Err(format!("a link in {text:?}"));
    }
    let item = field("item: ")?
        .parse()
        .map_err(|_| format!("bad item in {text:?}"))?;
    Ok((field("shardcron alert: ")?, field("job: ")?, item))
}

/// `{"msgtype":"text","text":{"content": ...}}` and nothing else.
fn robot_text(r: &Recorded) -> Result<Seen, String> {
    r.check_json_post()?;
    let v = r.json();
    let obj = v.as_object().ok_or("body is not an object")?;
    if obj.len() != 2 || v["msgtype"] != "text" || v["text"].as_object().map(|t| t.len()) != Some(1)
    {
        return Err(format!("bad robot payload: {v}"));
    }
    from_text(v["text"]["content"].as_str().ok_or("content is not text")?)
}

/// What the alert in a request is, checking its channel's format on the way.
fn parse(r: &Recorded) -> Result<Seen, String> {
    match r.path.as_str() {
        HOOK_PATH => {
            r.check_json_post()?;
            if r.param("sig").as_deref() != Some("query-token-2222")
                || r.header("authorization") != Some("Bearer header-token-3333")
                || r.header("x-env") != Some("test")
            {
                return Err(format!("query or headers: {} {:?}", r.query, r.headers));
            }
            let v = r.json();
            for key in ["fire_time", "instance", "execution_id", "cause", "summary"] {
                if v[key].as_str().is_none_or(str::is_empty) {
                    return Err(format!("{key} missing in {v}"));
                }
            }
            if v["attempt"] != 1 {
                return Err(format!("attempt in {v}"));
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            let job = v["job"].as_str().unwrap_or_default().to_owned();
            let cause = v["cause"].as_str().unwrap_or_default();
            let expected_cause = match kind.as_str() {
                "FAILED" => "exited with status 3",
                _ => "timeout",
            };
            if !cause.contains(expected_cause) {
                return Err(format!("cause of {kind}: {cause:?}"));
            }
            let item = v["item"].as_u64().ok_or("no item")?;
            Ok((kind, job, u32::try_from(item).map_err(|e| e.to_string())?))
        }
        SLACK_PATH => {
            r.check_json_post()?;
            let v = r.json();
            if v.as_object().map(|o| o.len()) != Some(1) {
                return Err(format!("more than text: {v}"));
            }
            from_text(v["text"].as_str().ok_or("text is not a string")?)
        }
        DING_PATH => {
            if r.param("access_token").as_deref() != Some("ding-token-5555") {
                return Err(format!("token: {}", r.query));
            }
            check_dingtalk_signature(r, DING_SECRET, chrono::Utc::now().timestamp_millis())?;
            robot_text(r)
        }
        WECOM_PATH => {
            if r.param("key").as_deref() != Some("wecom-key-7777") {
                return Err(format!("key: {}", r.query));
            }
            robot_text(r)
        }
        other => Err(format!("unexpected path {other}")),
    }
}

fn seen(items: &[(&str, &str, u32)]) -> BTreeSet<Seen> {
    items
        .iter()
        .map(|(k, j, i)| ((*k).to_owned(), (*j).to_owned(), *i))
        .collect()
}

/// The alerts a path received: all requests valid, two answered 500 and retried,
/// then one accepted per alert.
fn received(server: &HttpServer, path: &str) -> BTreeSet<Seen> {
    let reqs = server.requests_to(path);
    let mut out = BTreeSet::new();
    for r in &reqs {
        if let Err(e) = &r.verdict {
            panic!("{path}: the server refused a request: {e}");
        }
        out.insert(parse(r).unwrap_or_else(|e| panic!("{path}: {e}")));
    }
    assert_eq!(
        reqs.len(),
        out.len() + 2,
        "{path}: one request per alert plus the two refused: {out:?}"
    );
    out
}

fn channels_toml(base: &str, smtp_port: u16) -> String {
    format!(
        r#"
[[alert]]
name = "hook"
type = "webhook"
url = "{base}{HOOK_PATH}?sig=query-token-2222"
headers = {{ Authorization = "Bearer header-token-3333", X-Env = "test" }}

[[alert]]
name = "team-slack"
type = "slack"
on = ["timed_out"]
url = "{base}{SLACK_PATH}"

[[alert]]
name = "ding"
type = "dingtalk"
url = "{base}{DING_PATH}?access_token=ding-token-5555"
secret = "{DING_SECRET}"

[[alert]]
name = "wecom"
type = "wecom"
url = "{base}{WECOM_PATH}?key=wecom-key-7777"

[[alert]]
name = "mail"
type = "email"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
username = "cron"
password = "smtp-password-8888"
from = "shardcron <cron@example.com>"
to = "ops@example.com"
subject = "[sc] {{kind}} {{job}} #{{item}}"

[[alert]]
name = "ops-log"
type = "log"
"#
    )
}

#[test]
fn failed_and_timed_out_runs_alert_the_channels_their_jobs_name() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(http_server(Behaviour {
        fail_first: 2,
        ok_status: 200,
        ok_body: r#"{"errcode":0,"errmsg":"ok"}"#.into(),
        validator: Arc::new(|r| parse(r).map(|_| ())),
        echo_on_failure: false,
    }));
    let smtp = rt.block_on(smtp_server(SmtpBehaviour {
        fail_first: 2,
        credentials: Some(("cron".into(), "smtp-password-8888".into())),
    }));

    let (dir, jobs) = tempdir_with_jobs();
    write_script(&jobs, "fail.sh", "echo 'about to fail' >&2\nexit 3");
    write_script(&jobs, "slow.sh", "sleep 30");
    let config = jobs.join("shardcron.toml");
    // `delay` schedules fire once at once (no previous run), then an hour after.
    std::fs::write(
        &config,
        format!(
            r#"{}
[[job]]
name = "fails"
delay = "1h"
shards = 2
command = ["./fail.sh"]
alerts = ["hook", "team-slack", "ding", "mail", "ops-log"]

# No `alerts`: every channel.
[[job]]
name = "slow"
delay = "1h"
timeout = "1s"
command = ["./slow.sh"]

[[job]]
name = "quiet"
delay = "1h"
command = ["./fail.sh"]
alerts = []
"#,
            channels_toml(&server.base, smtp.port)
        ),
    )
    .expect("config");
    let mut cmd = standalone(&config, &dir.path().join("data"));
    cmd.args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--log", "info,shardcron::alert=debug"]);
    let mut node = Node::start(cmd, &dir.path().join("node.log"));

    let failed = seen(&[("FAILED", "fails", 0), ("FAILED", "fails", 1)]);
    let timed_out = seen(&[("TIMED_OUT", "slow", 0)]);
    let both: BTreeSet<Seen> = failed.union(&timed_out).cloned().collect();
    let expected_http = [
        (HOOK_PATH, both.clone()),
        (SLACK_PATH, timed_out.clone()),
        (DING_PATH, both.clone()),
        (WECOM_PATH, timed_out.clone()),
    ];
    let all_in = || {
        expected_http
            .iter()
            .all(|(path, want)| server.requests_to(path).len() >= want.len() + 2)
            && smtp.messages().len() >= both.len()
    };
    assert!(
        wait_until(Duration::from_secs(60), all_in),
        "alerts did not all arrive: {:?} / {} mails\n{}",
        server
            .requests()
            .iter()
            .map(|r| (r.path.clone(), r.verdict.clone()))
            .collect::<Vec<_>>(),
        smtp.messages().len(),
        node.log()
    );
    // Whatever is still coming (it should not) has time to arrive.
    std::thread::sleep(Duration::from_secs(2));
    for (path, want) in &expected_http {
        assert_eq!(&received(&server, path), want, "{path}\n{}", node.log());
    }
    // hook and ding: 3 alerts + 2 refused; slack and wecom: 1 + 2.
    assert_eq!(server.requests().len(), (3 + 2) * 2 + (1 + 2) * 2);

    // Email: two sessions refused (451), then one message per alert.
    let sessions = smtp.sessions();
    assert_eq!(sessions.len(), 3 + 2, "{sessions:#?}");
    assert_eq!(sessions.iter().filter(|s| s.refused).count(), 2);
    let mut mails = BTreeSet::new();
    for m in smtp.messages() {
        assert_eq!(
            m.auth,
            Some((String::new(), "cron".into(), "smtp-password-8888".into()))
        );
        assert_eq!(m.rcpt_to, ["<ops@example.com>"]);
        let body = m.body().unwrap_or_default();
        let alert = from_text(&body).unwrap_or_else(|e| panic!("mail body: {e}"));
        assert_eq!(
            m.header("Subject"),
            Some(format!("[sc] {} {} #{}", alert.0, alert.1, alert.2))
        );
        mails.insert(alert);
    }
    assert_eq!(mails, both);

    // The log channel, in the node's own log.
    let log = node.log();
    for line in [
        "shardcron FAILED: job \"fails\" item 0",
        "shardcron FAILED: job \"fails\" item 1",
        "shardcron TIMED_OUT: job \"slow\" item 0",
    ] {
        assert_eq!(
            log.lines()
                .filter(|l| l.contains("channel=ops-log") && l.contains(line))
                .count(),
            1,
            "{line}\n{log}"
        );
    }
    // The job with `alerts = []` failed, and told nobody.
    assert!(
        log.contains("execution finished: job=quiet") && log.contains("status=FAILED"),
        "{log}"
    );
    assert!(!log.contains("job \"quiet\""), "{log}");
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("quiet")),
        "an alert for quiet"
    );
    assert!(!mails.iter().any(|m| m.1 == "quiet"));

    // The start names the channels and their types, never their URLs.
    assert!(
        log.contains("alert channels configured")
            && log.contains(
                "hook (webhook), team-slack (slack), ding (dingtalk), wecom (wecom), mail (email), ops-log (log)"
            ),
        "{log}"
    );
    // Failed attempts were logged (with the target redacted)...
    assert!(
        log.contains("alert delivery attempt failed; retrying") && log.contains("<redacted>"),
        "{log}"
    );
    let status = node.terminate_within(SHUTDOWN);
    assert!(status.success(), "{status:?}\n{}", node.log());
    let log = node.log();
    assert!(log.contains("alerts sent"), "{log}");
    // ...and no secret ever reached the log.
    for s in SECRETS {
        assert!(!log.contains(s), "{s} in the node's log:\n{log}");
    }
}

#[test]
fn alerts_still_retrying_at_shutdown_are_delivered_before_the_node_exits() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(http_server(Behaviour {
        fail_first: 2,
        ok_status: 204,
        ok_body: String::new(),
        validator: shardcron_testkit::capture::accept_all(),
        echo_on_failure: false,
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    write_script(dir.path(), "fail.sh", "exit 3");
    let config = dir.path().join("shardcron.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[alert]]
name = "hook"
type = "webhook"
url = "{}/hook"

[[job]]
name = "fails"
delay = "1h"
command = ["./fail.sh"]
"#,
            server.base
        ),
    )
    .expect("config");
    let mut node = Node::start(
        standalone(&config, &dir.path().join("data")),
        &dir.path().join("node.log"),
    );
    // The first attempt was refused; the next ones come after 1 s and 2 s (with
    // jitter): stop the node now.
    assert!(
        wait_until(Duration::from_secs(30), || !server.requests().is_empty()),
        "no alert: {}",
        node.log()
    );
    let status = node.terminate_within(SHUTDOWN);
    assert!(status.success(), "{status:?}\n{}", node.log());
    let reqs = server.requests();
    assert_eq!(
        reqs.len(),
        3,
        "delivered during the shutdown\n{}",
        node.log()
    );
    assert_eq!(reqs[2].json()["job"], "fails");
    let log = node.log();
    assert!(log.contains("alerts sent delivered=1 failed=0"), "{log}");
}

#[test]
fn bad_alert_tables_stop_the_start_naming_the_field_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_script(dir.path(), "ok.sh", "true");
    let config = dir.path().join("shardcron.toml");
    std::fs::write(
        &config,
        r#"
[[alert]]
name = "ops-log"
type = "log"

[[alert]]
name = "pager"
type = "webhook"
url = "ftp://hooks.example.com/bad-path-token-aaaa"
headers = { Authorization = "Bearer bad-header-token-bbbb\u0001" }

[[alert]]
name = "mail"
type = "email"
host = "smtp.example.com"
password = "bad-password-cccc"
from = "cron@example.com"
to = "ops@example.com"

[[job]]
name = "x"
every = "1h"
command = ["./ok.sh"]
alerts = ["pager", "mail"]
"#,
    )
    .expect("config");
    let start = standalone(&config, &dir.path().join("data"))
        .output()
        .expect("run");
    for o in [&start, &validate(&config)] {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        for needle in [
            "has 3 problems",
            "alert[1].url: must be http:// or https://",
            "alert[1].headers.Authorization: is not a valid HTTP header value",
            "alert[2].username: missing (password is set)",
        ] {
            assert!(err.contains(needle), "{needle:?} in {err}");
        }
        // The channels exist, if broken: the job naming them is not blamed too.
        assert!(!err.contains("no [[alert]] channel"), "{err}");
        for secret in [
            "bad-path-token-aaaa",
            "bad-header-token-bbbb",
            "bad-password-cccc",
        ] {
            assert!(!err.contains(secret), "{secret} in {err}");
        }
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing started before the config was checked"
    );
}

#[test]
fn a_job_naming_an_unknown_channel_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_script(dir.path(), "ok.sh", "true");
    let job = r#"
[[job]]
name = "x"
every = "1h"
command = ["./ok.sh"]
alerts = ["ops-log", "nope"]
"#;
    let with_channels = dir.path().join("with.toml");
    std::fs::write(
        &with_channels,
        format!("[[alert]]\nname = \"ops-log\"\ntype = \"log\"\n{job}"),
    )
    .expect("config");
    let without_channels = dir.path().join("without.toml");
    std::fs::write(&without_channels, job).expect("config");

    let start = |config: &Path| {
        standalone(config, &dir.path().join("data"))
            .output()
            .expect("run")
    };
    let expect_unknown = |o: &Output, config: &Path, names: &[(usize, &str)]| {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        for (i, name) in names {
            let needle = format!(
                "job \"x\": alerts[{i}]: no [[alert]] channel named \"{name}\" in {}",
                config.display()
            );
            assert!(err.contains(&needle), "{needle:?} in {err}");
        }
        err
    };
    for o in [start(&with_channels), validate(&with_channels)] {
        let err = expect_unknown(&o, &with_channels, &[(1, "nope")]);
        assert!(err.contains("has 1 problem:"), "{err}");
    }
    // A node's config file must define the channels its jobs name...
    expect_unknown(
        &start(&without_channels),
        &without_channels,
        &[(0, "ops-log"), (1, "nope")],
    );
    // ...while a job file without [[alert]] tables may name the nodes' channels.
    let o = validate(&without_channels);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok, 1 job: x"), "{}", stdout(&o));

    // A JSON config file: `alert` is an array of channel objects.
    let json = dir.path().join("config.json");
    std::fs::write(
        &json,
        r#"{
  "alert": [{"name": "ops-log", "type": "log"}, {"name": "hook", "type": "webhook", "url": "ftp://x/json-token-dddd"}],
  "job": [{"name": "x", "every": "1h", "command": ["./ok.sh"], "alerts": ["ops-log", "nope"]}]
}"#,
    )
    .expect("config");
    for o in [start(&json), validate(&json)] {
        let err = expect_unknown(&o, &json, &[(1, "nope")]);
        assert!(
            err.contains("has 2 problems")
                && err.contains("alert[1].url: must be http:// or https://"),
            "{err}"
        );
        assert!(!err.contains("json-token-dddd"), "{err}");
    }

    // With the channel defined, the same job is fine; validate lists the channels.
    let fixed = dir.path().join("fixed.toml");
    std::fs::write(
        &fixed,
        format!(
            "[[alert]]\nname = \"ops-log\"\ntype = \"log\"\n[[alert]]\nname = \"nope\"\ntype = \"log\"\nlevel = \"warn\"\n{job}"
        ),
    )
    .expect("config");
    let o = validate(&fixed);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ok, 1 job: x; 2 alert channels: ops-log (log), nope (log)"),
        "{}",
        stdout(&o)
    );
}
