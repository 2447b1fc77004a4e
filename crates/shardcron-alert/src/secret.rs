//! Values that must never be shown: [`Secret`] and [`SecretUrl`].
//!
//! Both print as `<redacted>` (a URL keeps its scheme, host and port) through
//! `Debug`, `Display` and `Serialize`, so that a secret cannot reach a log line, an
//! error message, the history or an API response by accident. The only way to the
//! value is an explicit `expose()` call, made where it is sent to its server.

use std::fmt;

use serde::{Serialize, Serializer};
use url::Url;

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

/// A secret string: a signing secret, a password, a header value.
///
/// `Debug`, `Display` and `Serialize` print [`REDACTED`]; [`Secret::expose`] gives the
/// value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself; only for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A webhook URL, which usually carries its access token in the path (Slack,
/// generic webhooks) or in the query (`access_token=` of DingTalk, `key=` of WeCom).
///
/// It prints as scheme, host and port, then the path, or `/<redacted>` when the path
/// is secret too, then every query parameter with its value redacted, e.g.
/// `https://oapi.dingtalk.com/robot/send?access_token=<redacted>`. User and password
/// in the URL are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: Url,
    hide_path: bool,
}

impl SecretUrl {
    /// Parses an `http://` or `https://` URL with a host. `hide_path` says whether
    /// the path is secret as well as the query values. The error never repeats the
    /// URL.
    pub fn parse(text: &str, hide_path: bool) -> Result<SecretUrl, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("is not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be http:// or https://".to_owned());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must have a host".to_owned());
        }
        if url.fragment().is_some() {
            return Err("must not have a #fragment".to_owned());
        }
        Ok(SecretUrl { url, hide_path })
    }

    /// The whole URL; only for sending the request.
    pub fn expose(&self) -> &Url {
        &self.url
    }

    /// Whether the path is treated as secret.
    pub fn hides_path(&self) -> bool {
        self.hide_path
    }

    /// The printable form (see the type's documentation).
    pub fn redacted(&self) -> String {
        let url = &self.url;
        let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
        if let Some(port) = url.port() {
            out.push_str(&format!(":{port}"));
        }
        if self.hide_path && url.path() != "/" && !url.path().is_empty() {
            out.push('/');
            out.push_str(REDACTED);
        } else {
            out.push_str(url.path());
        }
        if url.query().is_some() {
            let keys: Vec<String> = url
                .query_pairs()
                .map(|(k, _)| format!("{k}={REDACTED}"))
                .collect();
            out.push('?');
            out.push_str(&keys.join("&"));
        }
        out
    }

    /// Every fragment of the URL that must not be printed, for scrubbing text.
    pub(crate) fn secret_parts(&self) -> Vec<String> {
        let url = &self.url;
        let mut parts = vec![url.as_str().to_owned()];
        if let Some(q) = url.query() {
            parts.push(q.to_owned());
            for (k, v) in url.query_pairs() {
                parts.push(v.into_owned());
                let raw = url
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .find_map(|p| p.split_once('=').filter(|(rk, _)| *rk == k).map(|x| x.1));
                if let Some(raw) = raw {
                    parts.push(raw.to_owned());
                }
            }
        }
        if self.hide_path && url.path() != "/" {
            parts.push(url.path().to_owned());
            parts.extend(
                url.path()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        if let Some(p) = url.password() {
            parts.push(p.to_owned());
        }
        if !url.username().is_empty() {
            parts.push(url.username().to_owned());
        }
        parts
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// Shortest secret fragment that is scrubbed from text: shorter ones (a path segment
/// such as `send`) are too likely to be ordinary words.
const MIN_SCRUB_LEN: usize = 6;

/// Replaces every occurrence of every secret in `text` with [`REDACTED`], longest
/// secrets first.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets
        .iter()
        .filter(|s| s.chars().count() >= MIN_SCRUB_LEN)
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_prints_redacted() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).ok().as_deref(),
            Some("\"<redacted>\"")
        );
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn url_redaction() {
        let u = SecretUrl::parse(
            "https://oapi.dingtalk.com/robot/send?access_token=abcdef123456",
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            u.to_string(),
            "https://oapi.dingtalk.com/robot/send?access_token=<redacted>"
        );
        let u = SecretUrl::parse(
            "http://user:pw-secret@127.0.0.1:8080/services/T0/B1/XYZtoken",
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{u:?}"), "http://127.0.0.1:8080/<redacted>");
        let scrubbed = scrub(
            "failed for http://user:pw-secret@127.0.0.1:8080/services/T0/B1/XYZtoken and XYZtoken",
            &u.secret_parts(),
        );
        assert!(!scrubbed.contains("XYZtoken"), "{scrubbed}");
        assert!(!scrubbed.contains("pw-secret"), "{scrubbed}");
    }

    #[test]
    fn url_errors_do_not_repeat_the_url() {
        for bad in [
            "ftp://h/x?token=tok-123456",
            "not a url tok-123456",
            "http://h/#tok-123456",
        ] {
            let e = SecretUrl::parse(bad, false).err().unwrap_or_default();
            assert!(!e.is_empty());
            assert!(!e.contains("tok-123456"), "{e}");
        }
        assert_eq!(
            SecretUrl::parse("ftp://h/x", false).err().as_deref(),
            Some("must be http:// or https://")
        );
    }
}
