//! Alert channel settings: [`AlertConfig`], read from TOML or JSON and validated
//! field by field. The format is described in the crate documentation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use lettre::message::Mailbox;
use serde::{Serialize, Serializer};
use serde_json::{Value as Json, json};

use crate::alert::AlertKind;
use crate::secret::{Secret, SecretUrl};
use shardcron_core::value::{Table, Val, closest};

/// Longest alert name, in characters.
const MAX_NAME_LEN: usize = 64;

/// Subject of alert mails when `subject` is not given.
pub const DEFAULT_SUBJECT: &str = "[shardcron] {kind}: job {job} item {item}";

/// Placeholders a mail `subject` may use.
pub const SUBJECT_PLACEHOLDERS: &[&str] = &[
    "kind",
    "job",
    "item",
    "fire_time",
    "instance",
    "execution_id",
    "attempt",
];

const COMMON_FIELDS: &[&str] = &["name", "type", "on"];

/// One alert channel: where alerts of the kinds in `on` go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// Name, unique in its list; used in logs.
    pub name: String,
    /// The kinds of alert sent to this channel (never empty).
    pub on: BTreeSet<AlertKind>,
    /// Where and how.
    pub channel: Channel,
}

/// Level of a `log` channel's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `WARN`.
    Warn,
    /// `ERROR`.
    Error,
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (default port 587).
    StartTls,
    /// TLS from the first byte, "SMTPS" (default port 465).
    Tls,
    /// No encryption at all (default port 25); only for a relay on a trusted network.
    None,
}

impl SmtpTls {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::StartTls => "starttls",
            SmtpTls::Tls => "tls",
            SmtpTls::None => "none",
        }
    }

    /// The port used when `port` is not given.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }
}

/// Settings of an `email` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailChannel {
    /// SMTP server host name or address.
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// Connection security.
    pub tls: SmtpTls,
    /// User name and password for SMTP AUTH, when given.
    pub credentials: Option<(String, Secret)>,
    /// Sender mailbox, e.g. `shardcron <cron@example.com>`.
    pub from: String,
    /// Recipient mailboxes (at least one).
    pub to: Vec<String>,
    /// Subject template; placeholders in [`SUBJECT_PLACEHOLDERS`], e.g. `{job}`.
    pub subject: String,
}

/// A channel's type and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A `tracing` event; `level` overrides the default (ERROR for FAILED, TIMED_OUT
    /// and LOST, WARN for MISFIRE and FAILOVER).
    Log {
        /// Fixed level, if set.
        level: Option<LogLevel>,
    },
    /// POST of the alert as JSON ([`crate::Alert::to_json`]).
    Webhook {
        /// Target; its path and query values are secret.
        url: SecretUrl,
        /// Extra request headers; every value is treated as secret.
        headers: Vec<(String, Secret)>,
    },
    /// A Slack incoming webhook, `{"text": ...}`.
    Slack {
        /// The incoming-webhook URL; its path is secret.
        url: SecretUrl,
    },
    /// A DingTalk group robot, `{"msgtype":"text","text":{"content":...}}`, signed
    /// when `secret` is set.
    DingTalk {
        /// The robot URL with its `access_token`.
        url: SecretUrl,
        /// The robot's signing secret (`SEC...`).
        secret: Option<Secret>,
    },
    /// A WeCom group robot, `{"msgtype":"text","text":{"content":...}}`.
    WeCom {
        /// The robot URL with its `key`.
        url: SecretUrl,
    },
    /// Mail over SMTP.
    Email(EmailChannel),
}

impl Channel {
    /// The `type` name: `log`, `webhook`, `slack`, `dingtalk`, `wecom`, `email`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Channel::Log { .. } => "log",
            Channel::Webhook { .. } => "webhook",
            Channel::Slack { .. } => "slack",
            Channel::DingTalk { .. } => "dingtalk",
            Channel::WeCom { .. } => "wecom",
            Channel::Email(_) => "email",
        }
    }

    /// Where it delivers, printable: a redacted URL, `smtp://host:port`, or `log`.
    pub fn target(&self) -> String {
        match self {
            Channel::Log { .. } => "log".to_owned(),
            Channel::Webhook { url, .. }
            | Channel::Slack { url }
            | Channel::DingTalk { url, .. }
            | Channel::WeCom { url } => url.redacted(),
            Channel::Email(e) => format!("smtp://{}:{}", e.host, e.port),
        }
    }

    /// Every secret value of the channel, for scrubbing text before it is logged.
    pub(crate) fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Channel::Log { .. } => {}
            Channel::Webhook { url, headers } => {
                out.extend(url.secret_parts());
                out.extend(headers.iter().map(|(_, v)| v.expose().to_owned()));
                // The token of `Bearer <token>` on its own, too.
                out.extend(
                    headers
                        .iter()
                        .filter_map(|(_, v)| v.expose().split_once(' ').map(|x| x.1.to_owned())),
                );
            }
            Channel::Slack { url } | Channel::WeCom { url } => out.extend(url.secret_parts()),
            Channel::DingTalk { url, secret } => {
                out.extend(url.secret_parts());
                out.extend(secret.iter().map(|s| s.expose().to_owned()));
            }
            Channel::Email(e) => {
                out.extend(e.credentials.iter().map(|(_, p)| p.expose().to_owned()))
            }
        }
        out
    }
}

/// Whether [`AlertConfig::to_json`] writes secrets or `<redacted>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMode {
    /// `<redacted>` in place of every secret: for API output, logs, the console.
    Redact,
    /// The real values: only for storing the config where it is read back.
    Reveal,
}

/// One problem found in alert settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertProblem {
    /// The field, e.g. `alert[1].url`.
    pub field: String,
    /// What is wrong. Never contains the value of a secret field.
    pub message: String,
}

impl fmt::Display for AlertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found; never empty. Displays one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AlertConfigErrors(pub Vec<AlertProblem>);

impl fmt::Display for AlertConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl AlertConfigErrors {
    /// The same problems as job-file problems of job `job` (`job "x": alert[0].url:
    /// ...`), for callers that read alerts inside a `[[job]]` table.
    pub fn into_job_problems(self, job: Option<String>) -> Vec<shardcron_core::job::Problem> {
        self.0
            .into_iter()
            .map(|p| shardcron_core::job::Problem {
                job: job.clone(),
                field: p.field,
                message: p.message,
            })
            .collect()
    }
}

impl AlertConfig {
    /// Reads an array of alert tables (the value of an `alert` key), naming fields
    /// `{field}[i].key`. Names must be unique within the list.
    pub fn list_from_toml(
        value: &toml::Value,
        field: &str,
    ) -> Result<Vec<AlertConfig>, AlertConfigErrors> {
        read_list(&Val::from_toml(value.clone()), field)
    }

    /// Reads an array of alert objects; `null` fields count as absent.
    pub fn list_from_json(
        value: &Json,
        field: &str,
    ) -> Result<Vec<AlertConfig>, AlertConfigErrors> {
        read_list(&Val::from_json(value), field)
    }

    /// Reads one alert table, naming fields `{field}.key`.
    pub fn from_toml(value: &toml::Value, field: &str) -> Result<AlertConfig, AlertConfigErrors> {
        read_one_checked(&Val::from_toml(value.clone()), field)
    }

    /// Reads one alert object.
    pub fn from_json(value: &Json, field: &str) -> Result<AlertConfig, AlertConfigErrors> {
        read_one_checked(&Val::from_json(value), field)
    }

    /// Reads a whole document whose only top-level key is `alert`, an array of
    /// tables (`[[alert]]`). An empty document defines no alerts.
    pub fn document_from_toml(text: &str) -> Result<Vec<AlertConfig>, AlertConfigErrors> {
        let root = text.parse::<toml::Table>().map_err(|e| {
            AlertConfigErrors(vec![AlertProblem {
                field: "(file)".to_owned(),
                message: format!("invalid TOML: {}", e.message().trim()),
            }])
        })?;
        let mut problems = Vec::new();
        for key in root.keys().filter(|k| k.as_str() != "alert") {
            problems.push(AlertProblem {
                field: key.clone(),
                message: "unknown field (the only top-level key is \"alert\")".to_owned(),
            });
        }
        let list = match root.get("alert") {
            Some(v) => read_list(&Val::from_toml(v.clone()), "alert"),
            None => Ok(Vec::new()),
        };
        match list {
            Ok(list) if problems.is_empty() => Ok(list),
            Ok(_) => Err(AlertConfigErrors(problems)),
            Err(AlertConfigErrors(more)) => {
                problems.extend(more);
                Err(AlertConfigErrors(problems))
            }
        }
    }

    /// Whether alerts of `kind` go to this channel.
    pub fn accepts(&self, kind: AlertKind) -> bool {
        self.on.contains(&kind)
    }

    /// The JSON form, with the same fields as the TOML table; with
    /// [`SecretMode::Reveal`] it reads back ([`AlertConfig::from_json`]) to an equal
    /// config. `on` is written in [`AlertKind::ALL`] order.
    pub fn to_json(&self, mode: SecretMode) -> Json {
        let secret = |s: &Secret| match mode {
            SecretMode::Redact => Json::from(s.to_string()),
            SecretMode::Reveal => Json::from(s.expose()),
        };
        let url = |u: &SecretUrl| match mode {
            SecretMode::Redact => Json::from(u.redacted()),
            SecretMode::Reveal => Json::from(u.expose().as_str()),
        };
        let mut m = serde_json::Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(self.channel.type_name()));
        m.insert(
            "on".into(),
            json!(self.on.iter().map(|k| k.config_name()).collect::<Vec<_>>()),
        );
        match &self.channel {
            Channel::Log { level } => {
                if let Some(l) = level {
                    let l = match l {
                        LogLevel::Warn => "warn",
                        LogLevel::Error => "error",
                    };
                    m.insert("level".into(), json!(l));
                }
            }
            Channel::Webhook { url: u, headers } => {
                m.insert("url".into(), url(u));
                let h: serde_json::Map<String, Json> = headers
                    .iter()
                    .map(|(k, v)| (k.clone(), secret(v)))
                    .collect();
                m.insert("headers".into(), Json::Object(h));
            }
            Channel::Slack { url: u } | Channel::WeCom { url: u } => {
                m.insert("url".into(), url(u));
            }
            Channel::DingTalk { url: u, secret: s } => {
                m.insert("url".into(), url(u));
                if let Some(s) = s {
                    m.insert("secret".into(), secret(s));
                }
            }
            Channel::Email(e) => {
                m.insert("host".into(), json!(e.host));
                m.insert("port".into(), json!(e.port));
                m.insert("tls".into(), json!(e.tls.as_str()));
                if let Some((user, pass)) = &e.credentials {
                    m.insert("username".into(), json!(user));
                    m.insert("password".into(), secret(pass));
                }
                m.insert("from".into(), json!(e.from));
                m.insert("to".into(), json!(e.to));
                m.insert("subject".into(), json!(e.subject));
            }
        }
        Json::Object(m)
    }
}

/// Serializes as [`AlertConfig::to_json`] with [`SecretMode::Redact`]: safe for API
/// output.
impl Serialize for AlertConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json(SecretMode::Redact).serialize(serializer)
    }
}

// ---------------------------------------------------------------------------------
// Reading.

/// Marks a field whose problem has been recorded.
#[derive(Debug, Clone, Copy)]
struct Reported;

struct Cx<'p> {
    prefix: String,
    problems: &'p mut Vec<AlertProblem>,
}

impl Cx<'_> {
    fn report(&mut self, field: &str, message: impl Into<String>) -> Reported {
        let field = if field.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.problems.push(AlertProblem {
            field,
            message: message.into(),
        });
        Reported
    }

    fn wrong_type(&mut self, field: &str, expected: &str, got: &Val) -> Reported {
        self.report(
            field,
            format!("expected {expected}, got {}", got.type_name()),
        )
    }

    fn string<'v>(&mut self, t: &'v Table, field: &str) -> Result<Option<&'v str>, Reported> {
        match get(t, field) {
            None => Ok(None),
            Some(Val::Str(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(field, "a string", other)),
        }
    }

    fn required_string<'v>(&mut self, t: &'v Table, field: &str) -> Result<&'v str, Reported> {
        match self.string(t, field)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.report(field, "must not be empty")),
            None => Err(self.report(field, "missing")),
        }
    }

    fn url(&mut self, t: &Table, field: &str, hide_path: bool) -> Result<SecretUrl, Reported> {
        let s = self.required_string(t, field)?;
        SecretUrl::parse(s, hide_path).map_err(|e| self.report(field, e))
    }

    fn unknown_fields(&mut self, t: &Table, known: &[&str], type_name: Option<&str>) {
        for key in t.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let message = match (closest(key, known), type_name) {
                (Some(near), _) => format!("unknown field (did you mean {near:?}?)"),
                (None, Some(ty)) => format!("unknown field for type {ty:?}"),
                (None, None) => "unknown field".to_owned(),
            };
            self.report(key, message);
        }
    }
}

fn get<'t>(t: &'t Table, key: &str) -> Option<&'t Val> {
    t.get(key).filter(|v| !matches!(v, Val::Null))
}

fn read_list(v: &Val, field: &str) -> Result<Vec<AlertConfig>, AlertConfigErrors> {
    let mut problems = Vec::new();
    let items: &[Val] = match v {
        Val::Array(items) => items,
        Val::Null => &[],
        other => {
            return Err(AlertConfigErrors(vec![AlertProblem {
                field: field.to_owned(),
                message: format!("expected an array of tables, got {}", other.type_name()),
            }]));
        }
    };
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("{field}[{i}]");
        if let Some(config) = read_one(item, &prefix, &mut problems) {
            out.push(config);
        }
        // Names are compared as written, whether or not the rest of the table is valid.
        if let Val::Table(t) = item
            && let Some(Val::Str(name)) = get(t, "name")
        {
            if let Some(first) = seen.get(name) {
                problems.push(AlertProblem {
                    field: format!("{prefix}.name"),
                    message: format!("duplicate name {name:?} (also {field}[{first}])"),
                });
            } else {
                seen.insert(name.clone(), i);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(AlertConfigErrors(problems))
    }
}

fn read_one_checked(v: &Val, field: &str) -> Result<AlertConfig, AlertConfigErrors> {
    let mut problems = Vec::new();
    match read_one(v, field, &mut problems) {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(AlertConfigErrors(problems)),
    }
}

/// Reads one alert table; `None` when it has problems (all recorded).
fn read_one(v: &Val, prefix: &str, problems: &mut Vec<AlertProblem>) -> Option<AlertConfig> {
    let before = problems.len();
    let mut cx = Cx {
        prefix: prefix.to_owned(),
        problems,
    };
    let Val::Table(t) = v else {
        cx.wrong_type("", "a table", v);
        return None;
    };
    let name = read_name(&mut cx, t);
    let on = read_on(&mut cx, t);
    let channel = read_channel(&mut cx, t);
    let ok = cx.problems.len() == before;
    match (name, on, channel) {
        (Ok(name), Ok(on), Ok(channel)) if ok => Some(AlertConfig { name, on, channel }),
        _ => None,
    }
}

fn read_name(cx: &mut Cx<'_>, t: &Table) -> Result<String, Reported> {
    let name = cx.required_string(t, "name")?;
    let valid = name.chars().count() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(cx.report(
            "name",
            format!(
                "must be 1-{MAX_NAME_LEN} characters of ASCII letters, digits, '.', '_' and '-', got {name:?}"
            ),
        ))
    }
}

fn read_on(cx: &mut Cx<'_>, t: &Table) -> Result<BTreeSet<AlertKind>, Reported> {
    let Some(v) = get(t, "on") else {
        return Ok(AlertKind::ALL.iter().copied().collect());
    };
    let Val::Array(items) = v else {
        return Err(cx.wrong_type("on", "an array of strings", v));
    };
    let all: Vec<&str> = AlertKind::ALL.iter().map(|k| k.config_name()).collect();
    if items.is_empty() {
        return Err(cx.report(
            "on",
            format!("must name at least one of {}", all.join(", ")),
        ));
    }
    let mut out = BTreeSet::new();
    let mut result = Ok(());
    for (i, item) in items.iter().enumerate() {
        let field = format!("on[{i}]");
        match item {
            Val::Str(s) => match AlertKind::from_str(s) {
                Ok(k) => {
                    out.insert(k);
                }
                Err(e) => result = Err(cx.report(&field, e)),
            },
            other => result = Err(cx.wrong_type(&field, "a string", other)),
        }
    }
    result.map(|()| out)
}

fn read_channel(cx: &mut Cx<'_>, t: &Table) -> Result<Channel, Reported> {
    const TYPES: &[&str] = &["log", "webhook", "slack", "dingtalk", "wecom", "email"];
    let ty = cx.required_string(t, "type")?;
    let known = |extra: &[&'static str]| -> Vec<&'static str> {
        COMMON_FIELDS.iter().chain(extra).copied().collect()
    };
    match ty {
        "log" => {
            cx.unknown_fields(t, &known(&["level"]), Some(ty));
            let level = match cx.string(t, "level")? {
                None => None,
                Some(l) => match l.to_ascii_lowercase().as_str() {
                    "warn" => Some(LogLevel::Warn),
                    "error" => Some(LogLevel::Error),
                    _ => {
                        return Err(
                            cx.report("level", format!("must be \"warn\" or \"error\", got {l:?}"))
                        );
                    }
                },
            };
            Ok(Channel::Log { level })
        }
        "webhook" => {
            cx.unknown_fields(t, &known(&["url", "headers"]), Some(ty));
            let url = cx.url(t, "url", true);
            let headers = read_headers(cx, t);
            Ok(Channel::Webhook {
                url: url?,
                headers: headers?,
            })
        }
        "slack" => {
            cx.unknown_fields(t, &known(&["url"]), Some(ty));
            Ok(Channel::Slack {
                url: cx.url(t, "url", true)?,
            })
        }
        "dingtalk" => {
            cx.unknown_fields(t, &known(&["url", "secret"]), Some(ty));
            let url = cx.url(t, "url", false);
            let secret = match cx.string(t, "secret") {
                Ok(Some(s)) if s.trim().is_empty() => Err(cx.report("secret", "must not be empty")),
                Ok(s) => Ok(s.map(|s| Secret::new(s.trim()))),
                Err(r) => Err(r),
            };
            Ok(Channel::DingTalk {
                url: url?,
                secret: secret?,
            })
        }
        "wecom" => {
            cx.unknown_fields(t, &known(&["url"]), Some(ty));
            Ok(Channel::WeCom {
                url: cx.url(t, "url", false)?,
            })
        }
        "email" => {
            cx.unknown_fields(
                t,
                &known(&[
                    "host", "port", "tls", "username", "password", "from", "to", "subject",
                ]),
                Some(ty),
            );
            read_email(cx, t).map(Channel::Email)
        }
        other => Err(cx.report(
            "type",
            format!(
                "unknown type {other:?}, expected one of {}",
                TYPES.join(", ")
            ),
        )),
    }
}

fn read_headers(cx: &mut Cx<'_>, t: &Table) -> Result<Vec<(String, Secret)>, Reported> {
    let Some(v) = get(t, "headers") else {
        return Ok(Vec::new());
    };
    let Val::Table(h) = v else {
        return Err(cx.wrong_type("headers", "a table of strings", v));
    };
    let mut out = Vec::new();
    let mut result = Ok(());
    for (name, value) in h {
        let field = format!("headers.{name}");
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            result = Err(cx.report(&field, "is not a valid HTTP header name"));
            continue;
        }
        if name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("content-length")
        {
            result = Err(cx.report(&field, "is set by shardcron and cannot be changed"));
            continue;
        }
        match value {
            Val::Str(s) => {
                if reqwest::header::HeaderValue::from_str(s).is_err() {
                    // The value may be a secret: do not repeat it.
                    result = Err(cx.report(
                        &field,
                        "is not a valid HTTP header value (visible ASCII and spaces only)",
                    ));
                } else {
                    out.push((name.clone(), Secret::new(s.as_str())));
                }
            }
            other => result = Err(cx.wrong_type(&field, "a string", other)),
        }
    }
    result.map(|()| out)
}

fn read_email(cx: &mut Cx<'_>, t: &Table) -> Result<EmailChannel, Reported> {
    let host = cx.required_string(t, "host").map(|h| h.trim().to_owned());
    if let Ok(h) = &host
        && h.chars().any(|c| c.is_whitespace() || c == '/')
    {
        cx.report("host", format!("must be a host name or address, got {h:?}"));
    }
    let tls = match cx.string(t, "tls") {
        Ok(None) => Ok(SmtpTls::StartTls),
        Ok(Some(s)) => match s.to_ascii_lowercase().as_str() {
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Tls),
            "none" => Ok(SmtpTls::None),
            _ => Err(cx.report(
                "tls",
                format!("must be \"starttls\", \"tls\" or \"none\", got {s:?}"),
            )),
        },
        Err(r) => Err(r),
    };
    let port = match get(t, "port") {
        None => Ok(None),
        Some(Val::Int(n)) => match u16::try_from(*n) {
            Ok(p) if p > 0 => Ok(Some(p)),
            _ => Err(cx.report("port", format!("must be between 1 and 65535, got {n}"))),
        },
        Some(other) => Err(cx.wrong_type("port", "an integer", other)),
    };
    let username = cx.string(t, "username");
    let password = match get(t, "password") {
        None => Ok(None),
        Some(Val::Str(s)) if s.is_empty() => Err(cx.report("password", "must not be empty")),
        Some(Val::Str(s)) => Ok(Some(Secret::new(s.as_str()))),
        Some(other) => Err(cx.wrong_type("password", "a string", other)),
    };
    let credentials = match (username, password) {
        (Ok(None), Ok(None)) => Ok(None),
        (Ok(Some(u)), Ok(Some(p))) if !u.trim().is_empty() => Ok(Some((u.trim().to_owned(), p))),
        (Ok(Some(_)), Ok(Some(_))) => Err(cx.report("username", "must not be empty")),
        (Ok(Some(_)), Ok(None)) => Err(cx.report("password", "missing (username is set)")),
        (Ok(None), Ok(Some(_))) => Err(cx.report("username", "missing (password is set)")),
        _ => Err(Reported),
    };
    let from = cx
        .required_string(t, "from")
        .and_then(|f| mailbox(cx, "from", f));
    let to = read_recipients(cx, t);
    let subject = match cx.string(t, "subject") {
        Ok(None) => Ok(DEFAULT_SUBJECT.to_owned()),
        Ok(Some(s)) => check_subject(s).map_err(|e| cx.report("subject", e)),
        Err(r) => Err(r),
    };
    let tls = tls?;
    Ok(EmailChannel {
        host: host?,
        port: port?.unwrap_or(tls.default_port()),
        tls,
        credentials: credentials?,
        from: from?,
        to: to?,
        subject: subject?,
    })
}

fn mailbox(cx: &mut Cx<'_>, field: &str, s: &str) -> Result<String, Reported> {
    match Mailbox::from_str(s.trim()) {
        Ok(_) => Ok(s.trim().to_owned()),
        Err(e) => Err(cx.report(
            field,
            format!("is not a mail address such as \"Ops <ops@example.com>\" ({e}), got {s:?}"),
        )),
    }
}

fn read_recipients(cx: &mut Cx<'_>, t: &Table) -> Result<Vec<String>, Reported> {
    let v = match get(t, "to") {
        None => return Err(cx.report("to", "missing")),
        Some(v) => v,
    };
    match v {
        Val::Str(s) => Ok(vec![mailbox(cx, "to", s)?]),
        Val::Array(items) if items.is_empty() => {
            Err(cx.report("to", "must name at least one recipient"))
        }
        Val::Array(items) => {
            let mut out = Vec::new();
            let mut result = Ok(());
            for (i, item) in items.iter().enumerate() {
                let field = format!("to[{i}]");
                match item {
                    Val::Str(s) => match mailbox(cx, &field, s) {
                        Ok(m) => out.push(m),
                        Err(r) => result = Err(r),
                    },
                    other => result = Err(cx.wrong_type(&field, "a string", other)),
                }
            }
            result.map(|()| out)
        }
        other => Err(cx.wrong_type("to", "an array of mail addresses", other)),
    }
}

/// Checks a subject template: known placeholders only, balanced braces, one line.
fn check_subject(s: &str) -> Result<String, String> {
    if s.chars().any(|c| c == '\r' || c == '\n') {
        return Err("must be one line".to_owned());
    }
    let mut rest = s;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("has a '}' without '{'".to_owned());
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("has a '{' without '}'".to_owned());
        };
        let name = &after[..close];
        if !SUBJECT_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}}, expected one of {}",
                SUBJECT_PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[alert]]
name = "ops-log"
type = "log"

[[alert]]
name = "hook"
type = "webhook"
on = ["failed", "TIMED_OUT"]
url = "https://hooks.example.com/hook/abc-token-123?sig=qs-token-456"
headers = { Authorization = "Bearer header-token-789", X-Env = "prod" }

[[alert]]
name = "slack"
type = "slack"
url = "https://hooks.slack.com/services/T000/B000/slack-token-000"

[[alert]]
name = "ding"
type = "dingtalk"
on = ["lost"]
url = "https://oapi.dingtalk.com/robot/send?access_token=ding-token-111"
secret = "SECding-secret-222"

[[alert]]
name = "wecom"
type = "wecom"
url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=wecom-key-333"

[[alert]]
name = "mail"
type = "email"
host = "smtp.example.com"
tls = "tls"
username = "cron"
password = "smtp-password-444"
from = "shardcron <cron@example.com>"
to = ["ops@example.com", "Dev <dev@example.com>"]
subject = "{kind} {job}#{item}"
"#;

    const SECRETS: &[&str] = &[
        "abc-token-123",
        "qs-token-456",
        "header-token-789",
        "slack-token-000",
        "ding-token-111",
        "ding-secret-222",
        "wecom-key-333",
        "smtp-password-444",
    ];

    fn problems(text: &str) -> Vec<String> {
        match AlertConfig::document_from_toml(text) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn example_parses_with_defaults() {
        let list = AlertConfig::document_from_toml(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list.len(), 6);
        assert_eq!(list[0].on.len(), 5);
        assert_eq!(list[0].channel, Channel::Log { level: None });
        assert_eq!(
            list[1].on,
            [AlertKind::Failed, AlertKind::TimedOut]
                .into_iter()
                .collect()
        );
        let Channel::Email(e) = &list[5].channel else {
            panic!("not email")
        };
        assert_eq!(e.port, 465);
        assert_eq!(e.tls, SmtpTls::Tls);
        assert_eq!(e.to.len(), 2);
        assert_eq!(
            list[1].channel.target(),
            "https://hooks.example.com/<redacted>?sig=<redacted>"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_api_output_and_revealed_on_request() {
        let list = AlertConfig::document_from_toml(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{list:?}");
        let api = serde_json::to_string(&list).unwrap_or_default();
        for s in SECRETS {
            assert!(!debug.contains(s), "{s} in {debug}");
            assert!(!api.contains(s), "{s} in {api}");
        }
        assert!(api.contains("<redacted>"));
        for c in &list {
            let revealed = c.to_json(SecretMode::Reveal);
            let back = AlertConfig::from_json(&revealed, "x").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&back, c);
        }
        let all: String = list
            .iter()
            .map(|c| c.to_json(SecretMode::Reveal).to_string())
            .collect();
        for s in SECRETS {
            assert!(all.contains(s), "{s} missing from revealed form");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let p = problems(
            r#"
[[alert]]
name = "a"
type = "slack"
url = "ftp://x/y?token=leaky-token-999"
[[alert]]
name = "a"
type = "webhook"
url = "http://h/"
headers = { Authorization = "Bearer leaky-token-999\n" }
[[alert]]
type = "dingtalk"
on = ["failed", "exploded"]
url = "https://x/"
secret = ""
[[alert]]
name = "m"
type = "email"
host = "smtp"
port = 70000
passwrd = "x"
from = "not an address leaky-token-999"
to = []
subject = "{job} {nope}"
[[alert]]
name = "z"
type = "pager"
"#,
        );
        let expected = [
            "alert[0].url: must be http:// or https://",
            "alert[1].headers.Authorization: is not a valid HTTP header value (visible ASCII and spaces only)",
            "alert[1].name: duplicate name \"a\" (also alert[0])",
            "alert[2].name: missing",
            "alert[2].on[1]: unknown alert kind \"exploded\", expected one of failed, timed_out, misfire, failover, lost",
            "alert[2].secret: must not be empty",
            "alert[3].passwrd: unknown field (did you mean \"password\"?)",
            "alert[3].port: must be between 1 and 65535, got 70000",
            "alert[3].to: must name at least one recipient",
            "alert[3].subject: unknown placeholder {nope}, expected one of {kind}, {job}, {item}, {fire_time}, {instance}, {execution_id}, {attempt}",
            "alert[4].type: unknown type \"pager\", expected one of log, webhook, slack, dingtalk, wecom, email",
        ];
        for e in expected {
            assert!(p.iter().any(|x| x == e), "missing {e:?} in {p:#?}");
        }
        assert!(
            p.iter()
                .any(|x| x.starts_with("alert[3].from: is not a mail address"))
        );
        // The first URL is refused without being repeated; the from address is not a
        // secret field and is quoted.
        let urls: Vec<&String> = p.iter().filter(|x| !x.contains(".from:")).collect();
        assert!(
            urls.iter().all(|x| !x.contains("leaky-token-999")),
            "{urls:#?}"
        );
    }

    #[test]
    fn wrong_types_and_shapes() {
        let p = problems(
            "[[alert]]\nname = 1\ntype = \"log\"\non = \"failed\"\nlevel = \"info\"\nextra = 1\n",
        );
        assert!(
            p.contains(&"alert[0].name: expected a string, got an integer".to_owned()),
            "{p:?}"
        );
        assert!(
            p.contains(&"alert[0].on: expected an array of strings, got a string".to_owned()),
            "{p:?}"
        );
        assert!(
            p.contains(&"alert[0].level: must be \"warn\" or \"error\", got \"info\"".to_owned()),
            "{p:?}"
        );
        assert!(
            p.contains(&"alert[0].extra: unknown field for type \"log\"".to_owned()),
            "{p:?}"
        );
        let p = problems("alert = 3\nother = 1\n");
        assert_eq!(
            p,
            [
                "other: unknown field (the only top-level key is \"alert\")",
                "alert: expected an array of tables, got an integer"
            ]
        );
        let p = problems(
            "[[alert]]\nname = \"e\"\ntype = \"email\"\nhost = \"h\"\nusername = \"u\"\nfrom = \"a@b.c\"\nto = \"c@d.e\"\non = []\n",
        );
        assert!(
            p.contains(&"alert[0].password: missing (username is set)".to_owned()),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("alert[0].on: must name at least one")),
            "{p:?}"
        );
        assert!(AlertConfig::document_from_toml("").is_ok_and(|l| l.is_empty()));
    }

    #[test]
    fn json_lists_and_job_problems() {
        let v =
            serde_json::json!([{"name": "s", "type": "slack", "url": "https://h/x", "on": null}]);
        let list = AlertConfig::list_from_json(&v, "alerts").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list[0].on.len(), 5);
        let v = serde_json::json!([{"name": "s", "type": "slack"}]);
        let err = AlertConfig::list_from_json(&v, "alerts")
            .err()
            .unwrap_or_else(|| panic!("ok"));
        let problems = err.into_job_problems(Some("orders".into()));
        assert_eq!(
            problems[0].to_string(),
            "job \"orders\": alerts[0].url: missing"
        );
    }

    #[test]
    fn subject_templates() {
        assert!(check_subject(DEFAULT_SUBJECT).is_ok());
        assert_eq!(
            check_subject("a {job").err().as_deref(),
            Some("has a '{' without '}'")
        );
        assert_eq!(
            check_subject("a } b").err().as_deref(),
            Some("has a '}' without '{'")
        );
        assert_eq!(
            check_subject("a\nb").err().as_deref(),
            Some("must be one line")
        );
    }
}
