//! Secrets never appear in Debug output, error messages or log output, even when
//! servers echo them back; and the log channel.

mod common;

use std::time::Duration;

use common::*;
use shardcron_alert::{AlertConfig, AlertKind, AlertSender, SecretMode, SenderOptions};

const SECRETS: &[&str] = &[
    "hook-path-token-1111",
    "hook-query-token-2222",
    "hook-header-token-3333",
    "slack-path-token-4444",
    "ding-access-token-5555",
    "SECding-signing-secret-6666",
    "wecom-key-token-7777",
    "smtp-password-8888",
    "refused-path-token-9999",
];

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{s} appears in {what}:\n{text}");
    }
}

fn config_toml(echo: &str, smtp_port: u16, closed: std::net::SocketAddr) -> String {
    format!(
        r#"
[[alert]]
name = "hook"
type = "webhook"
url = "{echo}/h/hook-path-token-1111?sig=hook-query-token-2222"
headers = {{ Authorization = "Bearer hook-header-token-3333" }}

[[alert]]
name = "slack"
type = "slack"
url = "{echo}/services/T0/B0/slack-path-token-4444"

[[alert]]
name = "ding"
type = "dingtalk"
url = "{echo}/robot/send?access_token=ding-access-token-5555"
secret = "SECding-signing-secret-6666"

[[alert]]
name = "wecom"
type = "wecom"
url = "{echo}/cgi-bin/webhook/send?key=wecom-key-token-7777"

[[alert]]
name = "mail"
type = "email"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
username = "cron"
password = "smtp-password-8888"
from = "cron@example.com"
to = "ops@example.com"

[[alert]]
name = "refused"
type = "webhook"
url = "http://{closed}/refused-path-token-9999"
"#
    )
}

#[tokio::test]
async fn secrets_stay_out_of_debug_errors_and_logs() {
    let logs = LogBuf::default();
    let _guard = logs.capture();

    // Every HTTP server answer fails and repeats the request's path, query and
    // headers; the SMTP server refuses AUTH and repeats the password.
    let echo = http_server(Behaviour {
        fail_first: usize::MAX,
        ok_status: 200,
        ok_body: String::new(),
        validator: std::sync::Arc::new(|_| Ok(())),
        echo_on_failure: true,
    })
    .await;
    let smtp = smtp_server(SmtpBehaviour {
        fail_first: 0,
        credentials: Some(("cron".into(), "not-the-password".into())),
    })
    .await;
    let closed = closed_port().await;
    let configs = AlertConfig::document_from_toml(&config_toml(&echo.base, smtp.port, closed))
        .unwrap_or_else(|e| panic!("{e}"));

    // Debug, Display and API output of the configs.
    assert_clean("Debug", &format!("{configs:?} {configs:#?}"));
    assert_clean(
        "API JSON",
        &serde_json::to_string(&configs).unwrap_or_default(),
    );
    let revealed: String = configs
        .iter()
        .map(|c| c.to_json(SecretMode::Reveal).to_string())
        .collect();
    for s in SECRETS {
        assert!(
            revealed.contains(s),
            "{s} not in the revealed form: the test would prove nothing"
        );
    }

    let sender = AlertSender::start(
        configs,
        SenderOptions {
            max_attempts: 2,
            ..fast_options()
        },
    )
    .expect("start");
    assert_clean("sender Debug", &format!("{sender:?}"));
    sender.send(alert(AlertKind::Failed, "orders"));
    assert!(sender.flush(Duration::from_secs(20)).await);
    let s = sender.stats();
    assert_eq!((s.delivered, s.failed), (0, 6), "{s:?}");

    // The servers did see (and echo) the secrets...
    let reqs = echo.requests();
    assert!(
        reqs.iter()
            .any(|r| r.query.contains("hook-query-token-2222"))
    );
    assert_eq!(
        smtp.sessions()[0].auth.as_ref().map(|a| a.2.as_str()),
        Some("smtp-password-8888")
    );

    // ...but the log shows only redacted forms.
    let text = logs.text();
    for name in ["hook", "slack", "ding", "wecom", "mail", "refused"] {
        assert!(
            text.contains(&format!("channel={name} "))
                && text.contains("alert delivery failed; giving up"),
            "no failure logged for {name}:\n{text}"
        );
    }
    assert!(text.contains("HTTP 500"), "{text}");
    assert!(text.contains("535"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(text.contains("access_token=<redacted>"), "{text}");
    assert_clean("log output", &text);
}

#[tokio::test]
async fn config_errors_do_not_quote_secrets() {
    let bad = r#"
[[alert]]
name = "a"
type = "webhook"
url = "ftp://example.com/hook-path-token-1111"
headers = { Authorization = "Bearer hook-header-token-3333\u0001" }
[[alert]]
name = "b"
type = "slack"
url = "slack-path-token-4444"
[[alert]]
name = "c"
type = "dingtalk"
url = "https://x/robot/send?access_token=ding-access-token-5555#frag"
secret = 6666
[[alert]]
name = "d"
type = "email"
host = "h"
password = "smtp-password-8888"
from = "a@b.c"
to = "d@e.f"
"#;
    let err = AlertConfig::document_from_toml(bad)
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    let text = format!("{err}\n{err:?}");
    assert_eq!(err.0.len(), 6, "{text}");
    assert!(
        text.contains("alert[0].url: must be http:// or https://"),
        "{text}"
    );
    assert!(
        text.contains("alert[0].headers.Authorization: is not a valid HTTP header value"),
        "{text}"
    );
    assert!(text.contains("alert[1].url: is not a valid URL"), "{text}");
    assert!(
        text.contains("alert[2].url: must not have a #fragment"),
        "{text}"
    );
    assert!(
        text.contains("alert[2].secret: expected a string, got an integer"),
        "{text}"
    );
    assert!(
        text.contains("alert[3].username: missing (password is set)"),
        "{text}"
    );
    assert_clean("config errors", &text);
}

#[tokio::test]
async fn log_channel_emits_error_and_warn_events() {
    let logs = LogBuf::default();
    let _guard = logs.capture();
    let configs = AlertConfig::document_from_toml(
        "[[alert]]\nname = \"l\"\ntype = \"log\"\n[[alert]]\nname = \"w\"\ntype = \"log\"\nlevel = \"warn\"\non = [\"lost\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sender = AlertSender::start(configs, fast_options()).expect("start");
    sender.send(alert(AlertKind::Failed, "orders"));
    sender.send(alert(AlertKind::Misfire, "reports"));
    sender.send(alert(AlertKind::Lost, "sync"));
    assert!(sender.flush(Duration::from_secs(5)).await);
    assert_eq!(sender.stats().delivered, 4);
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("shardcron::alert:"))
        .collect();
    let find = |level: &str, needle: &str| {
        lines
            .iter()
            .filter(|l| l.contains(level) && l.contains(needle))
            .count()
    };
    assert_eq!(
        find(
            "ERROR",
            "shardcron FAILED: job \"orders\" item 3, fire 2026-03-01T10:00:05Z"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        find("WARN", "shardcron MISFIRE: job \"reports\""),
        1,
        "{text}"
    );
    // LOST: ERROR on the default channel, WARN on the one with level = "warn".
    assert_eq!(find("ERROR", "shardcron LOST: job \"sync\""), 1, "{text}");
    assert_eq!(find("WARN", "shardcron LOST: job \"sync\""), 1, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("execution_id=exec-0001") && l.contains("channel=l ")),
        "{text}"
    );
}
