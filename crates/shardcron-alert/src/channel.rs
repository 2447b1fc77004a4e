//! One delivery attempt of one alert to one channel.

use std::error::Error as _;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;
use sha2::Sha256;

use crate::alert::{Alert, rfc3339};
use crate::config::{Channel, EmailChannel, LogLevel, SmtpTls};
use crate::secret::scrub;

/// Most characters of a response body quoted in an error.
const BODY_TAIL_CHARS: usize = 200;
/// Most bytes of a response body read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why an attempt failed, and whether trying again may help.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// A network error, a timeout, HTTP 408/425/429/5xx, an SMTP 4xx: retried.
    Transient(String),
    /// Anything a retry cannot fix (HTTP 4xx, SMTP 5xx, a bad address): not retried.
    Permanent(String),
}

impl AttemptError {
    pub(crate) fn message(&self) -> &str {
        match self {
            AttemptError::Transient(m) | AttemptError::Permanent(m) => m,
        }
    }
}

/// The DingTalk signature of `timestamp_ms` with `secret`:
/// `base64(hmac_sha256(key = secret, message = "{timestamp}\n{secret}"))`, before URL
/// encoding (DingTalk's documented "加签" scheme).
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Renders a mail subject template (placeholders checked when the config was read;
/// an unknown one is left as written). Control characters become spaces.
pub fn render_subject(template: &str, alert: &Alert) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let name = &after[..close];
        let value = match name {
            "kind" => alert.kind.to_string(),
            "job" => alert.job.clone(),
            "item" => alert.item.to_string(),
            "fire_time" => rfc3339(alert.fire_time),
            "instance" => alert.instance.clone(),
            "execution_id" => alert.execution_id.clone(),
            "attempt" => alert.attempt.to_string(),
            _ => format!("{{{name}}}"),
        };
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Slack treats `&`, `<` and `>` as markup.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Makes one attempt. `secrets` are scrubbed from a response body before it is cut
/// to its tail, so that no part of a secret is left at the cut.
pub(crate) async fn attempt(
    http: &reqwest::Client,
    name: &str,
    channel: &Channel,
    alert: &Alert,
    secrets: &[String],
) -> Result<(), AttemptError> {
    match channel {
        Channel::Log { level } => {
            log_alert(name, *level, alert);
            Ok(())
        }
        Channel::Webhook { url, headers } => {
            let mut req = http.post(url.expose().clone()).json(&alert.to_json());
            for (k, v) in headers {
                req = req.header(k.as_str(), v.expose());
            }
            post(req, false, secrets).await
        }
        Channel::Slack { url } => {
            let body = json!({ "text": slack_escape(&alert.text()) });
            post(http.post(url.expose().clone()).json(&body), false, secrets).await
        }
        Channel::DingTalk { url, secret } => {
            let mut target = url.expose().clone();
            if let Some(secret) = secret {
                let ts = chrono::Utc::now().timestamp_millis();
                let sign = dingtalk_sign(secret.expose(), ts);
                target
                    .query_pairs_mut()
                    .append_pair("timestamp", &ts.to_string())
                    .append_pair("sign", &sign);
            }
            let body = json!({ "msgtype": "text", "text": { "content": alert.text() } });
            post(http.post(target).json(&body), true, secrets).await
        }
        Channel::WeCom { url } => {
            let body = json!({ "msgtype": "text", "text": { "content": alert.text() } });
            post(http.post(url.expose().clone()).json(&body), true, secrets).await
        }
        Channel::Email(email) => send_mail(email, alert).await,
    }
}

fn log_alert(name: &str, level: Option<LogLevel>, alert: &Alert) {
    let error = match level {
        Some(LogLevel::Error) => true,
        Some(LogLevel::Warn) => false,
        None => alert.kind.is_error(),
    };
    let summary = alert.summary();
    macro_rules! emit {
        ($mac:ident) => {
            tracing::$mac!(
                target: "shardcron::alert",
                channel = %name,
                kind = alert.kind.as_str(),
                job = %alert.job,
                item = alert.item,
                fire_time = %rfc3339(alert.fire_time),
                instance = %alert.instance,
                execution_id = %alert.execution_id,
                attempt = alert.attempt,
                cause = %alert.cause,
                "{summary}"
            )
        };
    }
    if error {
        emit!(error);
    } else {
        emit!(warn);
    }
}

/// Sends a request; 2xx is success. With `errcode`, a JSON body whose `errcode` is
/// not 0 is a failure too (DingTalk and WeCom answer errors with HTTP 200).
async fn post(
    req: reqwest::RequestBuilder,
    errcode: bool,
    secrets: &[String],
) -> Result<(), AttemptError> {
    let mut resp = req.send().await.map_err(request_error)?;
    let status = resp.status();
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= MAX_BODY_BYTES {
            bytes.truncate(MAX_BODY_BYTES);
            break;
        }
    }
    let body = scrub(&String::from_utf8_lossy(&bytes), secrets);
    if !status.is_success() {
        let text = format!("HTTP {}{}", status.as_u16(), body_tail(&body));
        let transient = status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429);
        return Err(if transient {
            AttemptError::Transient(text)
        } else {
            AttemptError::Permanent(text)
        });
    }
    if errcode && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
        let code = v.get("errcode").and_then(serde_json::Value::as_i64);
        if let Some(code) = code.filter(|c| *c != 0) {
            let msg = v.get("errmsg").and_then(|m| m.as_str()).unwrap_or("");
            return Err(AttemptError::Transient(format!(
                "errcode {code}: {}",
                tail(msg)
            )));
        }
    }
    Ok(())
}

fn request_error(e: reqwest::Error) -> AttemptError {
    let permanent = e.is_builder();
    // The URL carries tokens: never include it.
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if permanent {
        AttemptError::Permanent(text)
    } else {
        AttemptError::Transient(text)
    }
}

fn tail(s: &str) -> String {
    let s = s.trim();
    let n = s.chars().count();
    let cut: String = s.chars().skip(n.saturating_sub(BODY_TAIL_CHARS)).collect();
    let cut: String = cut
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if n > BODY_TAIL_CHARS {
        format!("…{cut}")
    } else {
        cut
    }
}

fn body_tail(body: &str) -> String {
    if body.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", tail(body))
    }
}

async fn send_mail(email: &EmailChannel, alert: &Alert) -> Result<(), AttemptError> {
    let permanent =
        |what: &str, e: &dyn std::fmt::Display| AttemptError::Permanent(format!("{what}: {e}"));
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| permanent("bad from address", &e))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(render_subject(&email.subject, alert))
        .header(ContentType::TEXT_PLAIN);
    for to in &email.to {
        let to: Mailbox = to.parse().map_err(|e| permanent("bad to address", &e))?;
        builder = builder.to(to);
    }
    let message = builder
        .body(alert.text())
        .map_err(|e| permanent("cannot build the mail", &e))?;
    let mut transport = match email.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&email.host),
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&email.host)
            .map_err(|e| permanent("TLS setup", &e))?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&email.host)
            .map_err(|e| permanent("TLS setup", &e))?,
    }
    .port(email.port);
    if let Some((user, pass)) = &email.credentials {
        transport = transport.credentials(Credentials::new(user.clone(), pass.expose().to_owned()));
    }
    let transport = transport.build();
    match transport.send(message).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            Err(if e.is_permanent() {
                AttemptError::Permanent(format!("SMTP: {text}"))
            } else {
                AttemptError::Transient(format!("SMTP: {text}"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertKind;

    #[test]
    fn dingtalk_signature_matches_a_known_value() {
        // Computed independently: python3 -c 'import hmac,hashlib,base64;
        // print(base64.b64encode(hmac.new(b"SECabc", b"1700000000000\nSECabc",
        // hashlib.sha256).digest()).decode())'
        assert_eq!(dingtalk_sign("SECabc", 1_700_000_000_000), KNOWN_SIGN);
    }

    const KNOWN_SIGN: &str = "jcUpW0QmtKduN03n4JqQ0PBosVjqnM8gU7fIIvsDmCM=";

    #[test]
    fn subjects_render() {
        let alert = Alert {
            kind: AlertKind::TimedOut,
            job: "orders".into(),
            item: 2,
            fire_time: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            instance: "i\r\n1".into(),
            execution_id: "e9".into(),
            attempt: 1,
            cause: String::new(),
        };
        assert_eq!(
            render_subject(
                "[x] {kind} {job}#{item} {fire_time} {instance} {execution_id} {attempt}",
                &alert
            ),
            "[x] TIMED_OUT orders#2 2023-11-14T22:13:20Z i  1 e9 1"
        );
        assert_eq!(render_subject("{unknown} {", &alert), "{unknown} {");
    }

    #[test]
    fn slack_markup_is_escaped_and_tails_are_bounded() {
        assert_eq!(slack_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        let long = "x".repeat(1000);
        assert_eq!(tail(&long).chars().count(), BODY_TAIL_CHARS + 1);
    }

    #[tokio::test]
    async fn tls_transports_can_be_built() {
        // Building STARTTLS and implicit-TLS transports sets up rustls; it must not
        // need a crypto provider to be installed by hand.
        for tls in [SmtpTls::StartTls, SmtpTls::Tls] {
            let built = match tls {
                SmtpTls::StartTls => {
                    AsyncSmtpTransport::<Tokio1Executor>::starttls_relay("smtp.example.com")
                }
                _ => AsyncSmtpTransport::<Tokio1Executor>::relay("smtp.example.com"),
            };
            assert!(built.is_ok(), "{tls:?}");
        }
    }
}
