//! History store URLs: which backend, where, and how to show them without the
//! password.
//!
//! - `sqlite://PATH` (relative, or absolute as `sqlite:///var/lib/...`), also
//!   `sqlite:PATH` and `sqlite::memory:`; the file is created if missing;
//! - `postgres://USER:PASSWORD@HOST:PORT/DB?...` (also `postgresql://`);
//! - `mysql://USER:PASSWORD@HOST:PORT/DB?...` (also `mariadb://`).

use std::path::PathBuf;
use std::str::FromStr;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::{Result, StoreError};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite (a file under the data dir; the default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl Backend {
    /// A short lower-case name: `sqlite`, `postgres`, `mysql`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed URL, ready to connect.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A file path, or `None` for an in-memory database.
    Sqlite(Option<PathBuf>),
    Postgres(Box<PgConnectOptions>),
    MySql(Box<MySqlConnectOptions>),
}

/// A URL split into what to connect to, its masked form, and the secrets that
/// must never appear in a message.
#[derive(Clone)]
pub(crate) struct StoreUrl {
    pub(crate) target: Target,
    pub(crate) masked: String,
    secrets: Vec<String>,
}

/// Never shows the password: the target's options and the secrets hold it.
impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreUrl")
            .field("url", &self.masked)
            .finish_non_exhaustive()
    }
}

const SECRET_PARAMS: &[&str] = &["password", "pass", "pwd", "sslpassword"];
const MASK: &str = "***";

/// The URL with its password (in the user-info part or as a `password=`-like
/// query parameter) replaced by `***`. Works on malformed URLs too.
pub fn mask_url(url: &str) -> String {
    mask_and_secrets(url).0
}

fn mask_and_secrets(url: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        // Not `scheme://...`: only a SQLite path is safe to show; anything else
        // after a scheme may be a mistyped password.
        return match url.split_once(':') {
            Some((scheme, rest)) if !scheme.eq_ignore_ascii_case("sqlite") && !rest.is_empty() => {
                secrets.push(rest.to_string());
                (format!("{scheme}:{MASK}"), secrets)
            }
            _ => (url.to_string(), secrets),
        };
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    // The query starts at the first '?'; the user info ends at the last '@' before
    // it (a password may contain '@', '/' or ':' when not percent-encoded).
    let (before_query, query) = match rest.find('?') {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    let mut out = String::from(head);
    match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host_and_path) = before_query.split_at(at);
            match userinfo.find(':') {
                Some(colon) => {
                    let password = &userinfo[colon + 1..];
                    if !password.is_empty() {
                        secrets.push(password.to_string());
                    }
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host_and_path);
        }
        None => out.push_str(before_query),
    }
    if let Some(params) = query.strip_prefix('?') {
        out.push('?');
        let masked: Vec<String> = params
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                    if !v.is_empty() {
                        secrets.push(v.to_string());
                    }
                    format!("{k}={MASK}")
                }
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&masked.join("&"));
    }
    // Percent-decoded forms may show up in driver messages too.
    let decoded: Vec<String> = secrets
        .iter()
        .map(|s| percent_decode(s))
        .filter(|d| !secrets.contains(d))
        .collect();
    secrets.extend(decoded);
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    (out, secrets)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl StoreUrl {
    /// Parse `url`; a wrong scheme or a malformed URL is a [`StoreError::BadUrl`]
    /// naming the masked URL.
    pub(crate) fn parse(url: &str) -> Result<StoreUrl> {
        let (masked, secrets) = mask_and_secrets(url.trim());
        let url = url.trim();
        let bad = |reason: String| StoreError::BadUrl {
            url: masked.clone(),
            reason,
        };
        let Some((scheme, _)) = url.split_once(':') else {
            return Err(bad(
                "expected sqlite://PATH, postgres://... or mysql://...".into()
            ));
        };
        let target = match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let rest = &url[scheme.len() + 1..];
                if rest == ":memory:" || rest == "//:memory:" {
                    Target::Sqlite(None)
                } else {
                    let path = rest.strip_prefix("//").unwrap_or(rest);
                    if path.contains('?') {
                        return Err(bad(
                            "query parameters are not supported in sqlite URLs".into()
                        ));
                    }
                    if path.is_empty() {
                        return Err(bad("missing file path: use sqlite://relative/path.db or \
                             sqlite:///absolute/path.db"
                            .into()));
                    }
                    Target::Sqlite(Some(PathBuf::from(path)))
                }
            }
            "postgres" | "postgresql" => {
                check_authority(url).map_err(&bad)?;
                let opts = PgConnectOptions::from_str(url)
                    .map_err(|e| bad(scrub(&e.to_string(), &secrets)))?;
                Target::Postgres(Box::new(opts))
            }
            "mysql" | "mariadb" => {
                check_authority(url).map_err(&bad)?;
                let normalized = format!("mysql{}", &url[scheme.len()..]);
                let opts = MySqlConnectOptions::from_str(&normalized)
                    .map_err(|e| bad(scrub(&e.to_string(), &secrets)))?;
                Target::MySql(Box::new(opts))
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?}: expected sqlite, postgres or mysql"
                )));
            }
        };
        Ok(StoreUrl {
            target,
            masked,
            secrets,
        })
    }

    pub(crate) fn backend(&self) -> Backend {
        match self.target {
            Target::Sqlite(_) => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
            Target::MySql(_) => Backend::MySql,
        }
    }

    /// `text` with every secret of this URL replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets)
    }
}

/// A server URL needs `//` and a host: `postgres:foo` is a typo, not a socket.
fn check_authority(url: &str) -> std::result::Result<(), String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Err("expected SCHEME://USER:PASSWORD@HOST:PORT/DATABASE".into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err("missing host: expected SCHEME://USER:PASSWORD@HOST:PORT/DATABASE".into());
    }
    Ok(())
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_user_info_and_query() {
        assert_eq!(
            mask_url("postgres://u:s3cret@db:5432/h"),
            "postgres://u:***@db:5432/h"
        );
        assert_eq!(
            mask_url("mysql://u:p@ss/w:rd@db/h?ssl-mode=required"),
            "mysql://u:***@db/h?ssl-mode=required"
        );
        assert_eq!(
            mask_url("postgres://db/h?user=u&password=hunter2&x=1"),
            "postgres://db/h?user=u&password=***&x=1"
        );
        assert_eq!(mask_url("postgres://u@db/h"), "postgres://u@db/h");
        assert_eq!(mask_url("sqlite://data/h.db"), "sqlite://data/h.db");
        assert_eq!(mask_url("no scheme at all"), "no scheme at all");
        assert_eq!(mask_url("mysql:u:pw@h"), "mysql:***");
        assert_eq!(mask_url("sqlite:data/h.db"), "sqlite:data/h.db");
    }

    #[test]
    fn scrub_removes_raw_and_decoded_passwords() {
        let u = StoreUrl::parse("postgres://u:p%40ss@127.0.0.1:1/h").expect("valid url");
        assert_eq!(u.masked, "postgres://u:***@127.0.0.1:1/h");
        assert_eq!(
            u.scrub("login p@ss failed, p%40ss"),
            "login *** failed, ***"
        );
    }

    #[test]
    fn schemes_and_paths() {
        let p = |s: &str| StoreUrl::parse(s).map(|u| u.backend());
        assert_eq!(p("sqlite://h.db").ok(), Some(Backend::Sqlite));
        assert_eq!(p("sqlite::memory:").ok(), Some(Backend::Sqlite));
        assert_eq!(p("postgresql://u:p@h/db").ok(), Some(Backend::Postgres));
        assert_eq!(p("mariadb://u:p@h/db").ok(), Some(Backend::MySql));
        match StoreUrl::parse("sqlite:///var/lib/x.db").map(|u| u.target) {
            Ok(Target::Sqlite(Some(path))) => assert_eq!(path, PathBuf::from("/var/lib/x.db")),
            other => panic!("absolute sqlite path: {other:?}"),
        }
        for (bad, why) in [
            ("redis://u:topsecret@h", "unknown scheme \"redis\""),
            ("sqlite://", "missing file path"),
            ("postgres://u:topsecret@h:notaport/db", "port"),
            ("mysql:", "expected SCHEME://"),
            ("postgres://u:topsecret@/db", "missing host"),
            ("just-a-word", "expected sqlite://PATH"),
        ] {
            let err = StoreUrl::parse(bad).err().map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("{bad} should be refused"));
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("topsecret"), "{bad}: password leaked: {err}");
        }
    }
}
