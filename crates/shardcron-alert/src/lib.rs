//! Alerts about executions, and their delivery.
//!
//! An [`Alert`] is one event about one execution: its [`AlertKind`] (FAILED,
//! TIMED_OUT, MISFIRE, FAILOVER or LOST), the job, item, fire time, instance,
//! execution id, attempt, and a bounded cause ([`Alert::from_record`] makes one from a
//! history record). An [`AlertSender`] queues alerts without ever blocking and
//! delivers them in the background to the configured channels, with retries.
//!
//! # Channels
//!
//! Each channel is one table with a `name`, a `type`, the kinds it wants (`on`), and
//! the fields of its type. In a node's config file or an alerts file they are
//! `[[alert]]` tables ([`AlertConfig::document_from_toml`]); any other caller can read
//! an array of them from a TOML or JSON value under its own field name
//! ([`AlertConfig::list_from_toml`], [`AlertConfig::list_from_json`]).
//!
//! ```toml
//! [[alert]]
//! name = "ops-log"
//! type = "log"                    # a tracing event
//! level = "error"                 # optional: "warn" or "error"
//!
//! [[alert]]
//! name = "pager"
//! type = "webhook"                # POST of the alert as JSON
//! on = ["failed", "timed_out", "lost"]
//! url = "https://hooks.example.com/shardcron"
//! headers = { Authorization = "Bearer xyz", X-Env = "prod" }
//!
//! [[alert]]
//! name = "team-slack"
//! type = "slack"                  # incoming webhook, {"text": ...}
//! url = "https://hooks.slack.com/services/T000/B000/XXXX"
//!
//! [[alert]]
//! name = "ding"
//! type = "dingtalk"               # group robot, signed when secret is set
//! url = "https://oapi.dingtalk.com/robot/send?access_token=XXXX"
//! secret = "SECxxxx"
//!
//! [[alert]]
//! name = "wecom"
//! type = "wecom"                  # group robot
//! url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=XXXX"
//!
//! [[alert]]
//! name = "mail"
//! type = "email"
//! on = ["failed", "lost"]
//! host = "smtp.example.com"
//! tls = "starttls"                # or "tls" (implicit, port 465) or "none"
//! port = 587                      # default by tls: 587, 465, 25
//! username = "shardcron"          # username and password: both or neither
//! password = "..."
//! from = "shardcron <cron@example.com>"
//! to = ["ops@example.com", "Dev Team <dev@example.com>"]   # or one string
//! subject = "[shardcron] {kind}: job {job} item {item}"
//! ```
//!
//! | field | types | meaning |
//! |---|---|---|
//! | `name` | all | required; 1-64 of ASCII letters, digits, `.`, `_`, `-`; unique in its list |
//! | `type` | all | required: `log`, `webhook`, `slack`, `dingtalk`, `wecom`, `email` |
//! | `on` | all | kinds sent here, any of `failed`, `timed_out`, `misfire`, `failover`, `lost` (any case); default all; not empty |
//! | `level` | log | `warn` or `error`; default ERROR for failed, timed_out, lost and WARN for misfire, failover |
//! | `url` | webhook, slack, dingtalk, wecom | required, `http://` or `https://` |
//! | `headers` | webhook | table of extra request headers; `Content-Type` and `Content-Length` are fixed |
//! | `secret` | dingtalk | the robot's signing secret; requests then carry `timestamp` and `sign` |
//! | `host`, `port`, `tls`, `username`, `password`, `from`, `to`, `subject` | email | as above; `subject` placeholders: `{kind}`, `{job}`, `{item}`, `{fire_time}`, `{instance}`, `{execution_id}`, `{attempt}` |
//!
//! Problems are reported all at once, each naming its field ([`AlertConfigErrors`]),
//! e.g. `alert[1].url: must be http:// or https://`. Unknown fields are errors, with a
//! suggestion when one is close.
//!
//! # Payloads
//!
//! - `webhook`: `Content-Type: application/json`, [`Alert::to_json`]: `kind`, `job`,
//!   `item`, `fire_time` (RFC 3339), `instance`, `execution_id`, `attempt`, `cause`,
//!   `summary`.
//! - `slack`: `{"text": ...}` with [`Alert::text`], `&`, `<`, `>` escaped.
//! - `dingtalk`, `wecom`: `{"msgtype":"text","text":{"content": ...}}` with
//!   [`Alert::text`]. An answer with a non-zero `errcode` is a failed attempt. The
//!   DingTalk signature ([`dingtalk_sign`]) is `base64(hmac_sha256(secret,
//!   "{timestamp}\n{secret}"))`, `timestamp` in milliseconds, both appended to the
//!   URL as (URL-encoded) query parameters.
//! - `email`: a `text/plain` mail with [`Alert::text`] as body.
//!
//! No payload carries a link.
//!
//! # Secrets
//!
//! The DingTalk `secret`, the email `password`, every webhook `headers` value and
//! every channel URL (whose path or query holds the access token) are held as
//! [`Secret`] and [`SecretUrl`], which print as `<redacted>` in `Debug`, `Display`
//! and `Serialize`. So `Serialize` of an [`AlertConfig`] is safe for API output;
//! [`AlertConfig::to_json`] with [`SecretMode::Reveal`] is the one way to write the
//! values, for storage. Config errors never quote a secret field's value, and
//! delivery errors are logged with every secret of the channel replaced by
//! `<redacted>` (and without the request URL).
//!
//! # Delivery
//!
//! See [`AlertSender`] for the queue, drop-oldest overflow, retries and counters.

mod alert;
mod channel;
mod config;
mod secret;
mod sender;

pub use alert::{Alert, AlertKind, MAX_CAUSE_CHARS};
pub use channel::{dingtalk_sign, render_subject};
pub use config::{
    AlertConfig, AlertConfigErrors, AlertProblem, Channel, DEFAULT_SUBJECT, EmailChannel, LogLevel,
    SUBJECT_PLACEHOLDERS, SecretMode, SmtpTls,
};
pub use secret::{REDACTED, Secret, SecretUrl};
pub use sender::{AlertSender, AlertStats, SenderOptions, StartError};
