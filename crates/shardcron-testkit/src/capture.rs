//! Servers on loopback that capture what alert channels send: a recording HTTP
//! server that validates each request and fails the first ones of each path, a
//! server that never answers, a port with nothing listening, and a minimal SMTP
//! server; plus an independent check of DingTalk robot signatures.
//!
//! The servers run on the current tokio runtime (they are `async fn`s that spawn
//! their tasks); a synchronous test can start them with a runtime of its own,
//! `runtime.block_on(http_server(..))`, and keep that runtime alive while they are
//! used.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One request as the HTTP server saw it, and its verdict.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Request path, without the query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// What the validator said.
    pub verdict: Result<(), String>,
}

impl Recorded {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Ok when this is a `POST` with `Content-Type: application/json`.
    pub fn check_json_post(&self) -> Result<(), String> {
        if self.method != Method::POST {
            return Err(format!("method {}", self.method));
        }
        let ct = self.header("content-type").unwrap_or("");
        if ct != "application/json" {
            return Err(format!("content-type {ct:?}"));
        }
        Ok(())
    }
}

/// Checks one request; an `Err` is its reason for refusing it.
pub type Validator = Arc<dyn Fn(&Recorded) -> Result<(), String> + Send + Sync>;

/// A validator that accepts every request.
pub fn accept_all() -> Validator {
    Arc::new(|_| Ok(()))
}

/// How the HTTP server answers.
#[derive(Clone)]
pub struct Behaviour {
    /// Answer HTTP 500 to this many valid requests **of each path** before
    /// accepting the requests of that path.
    pub fail_first: usize,
    /// Status of an accepting answer.
    pub ok_status: u16,
    /// Body of an accepting answer.
    pub ok_body: String,
    /// Checks each request; an invalid one gets HTTP 400 with the reason.
    pub validator: Validator,
    /// When set, a failing answer's body repeats the request's path, query and
    /// headers (a server that echoes secrets).
    pub echo_on_failure: bool,
}

impl fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Behaviour")
            .field("fail_first", &self.fail_first)
            .field("ok_status", &self.ok_status)
            .field("ok_body", &self.ok_body)
            .field("echo_on_failure", &self.echo_on_failure)
            .finish_non_exhaustive()
    }
}

struct Srv {
    behaviour: Behaviour,
    log: Mutex<Vec<Recorded>>,
}

/// A running HTTP server; it stops with its runtime.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    srv: Arc<Srv>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("base", &self.base)
            .field("behaviour", &self.srv.behaviour)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.srv.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The requests of one path, in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        let mut all = self.requests();
        all.retain(|r| r.path == path);
        all
    }
}

/// Starts an HTTP server on a free loopback port of the current runtime.
pub async fn http_server(behaviour: Behaviour) -> HttpServer {
    let srv = Arc::new(Srv {
        behaviour,
        log: Mutex::new(Vec::new()),
    });
    let app = Router::new().fallback(handle).with_state(srv.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HttpServer {
        base: format!("http://{addr}"),
        srv,
    }
}

async fn handle(
    State(srv): State<Arc<Srv>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut rec = Recorded {
        method,
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers,
        body,
        at: Instant::now(),
        verdict: Ok(()),
    };
    let b = &srv.behaviour;
    rec.verdict = (b.validator)(&rec);
    let echo = format!(
        "path={} query={} headers={:?}",
        rec.path, rec.query, rec.headers
    );
    let mut log = srv.log.lock().unwrap_or_else(|e| e.into_inner());
    let valid_before = log
        .iter()
        .filter(|r| r.path == rec.path && r.verdict.is_ok())
        .count();
    let answer = match &rec.verdict {
        Err(e) if b.echo_on_failure => (StatusCode::BAD_REQUEST, format!("{e}; {echo}")),
        Err(e) => (StatusCode::BAD_REQUEST, e.clone()),
        Ok(()) if valid_before < b.fail_first => {
            let body = if b.echo_on_failure {
                format!("try again; {echo}")
            } else {
                "try again".to_owned()
            };
            (StatusCode::INTERNAL_SERVER_ERROR, body)
        }
        Ok(()) => (
            StatusCode::from_u16(b.ok_status).unwrap_or(StatusCode::OK),
            b.ok_body.clone(),
        ),
    };
    log.push(rec);
    answer
}

/// The DingTalk robot signature of `timestamp_ms` with `secret`, computed here
/// independently of the code under test: `base64(hmac_sha256(secret,
/// "{timestamp}\n{secret}"))`.
pub fn dingtalk_signature(secret: &str, timestamp_ms: i64) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What a DingTalk robot checks of a signed request: a `timestamp` query parameter
/// (milliseconds) within an hour of `now_ms`, and a `sign` parameter equal to
/// [`dingtalk_signature`] of it.
pub fn check_dingtalk_signature(r: &Recorded, secret: &str, now_ms: i64) -> Result<(), String> {
    let ts: i64 = r
        .param("timestamp")
        .ok_or("no timestamp")?
        .parse()
        .map_err(|_| "timestamp is not a number")?;
    if (now_ms - ts).abs() > 3_600_000 {
        return Err(format!("stale timestamp {ts}"));
    }
    let sign = r.param("sign").ok_or("no sign")?;
    let expected = dingtalk_signature(secret, ts);
    if sign != expected {
        return Err(format!("sign mismatch: {sign} != {expected}"));
    }
    Ok(())
}

/// A server that accepts connections and reads, but never answers; counts
/// connections.
pub async fn stalling_server() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(Mutex::new(0usize));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            *c.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Read whatever comes, answer nothing, hold the connection.
                loop {
                    match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

/// A port with nothing listening.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// One SMTP session as the server saw it.
#[derive(Debug, Clone, Default)]
pub struct SmtpSession {
    /// Whether the client said EHLO (or HELO).
    pub ehlo: bool,
    /// (authorization id, user, password) of AUTH PLAIN.
    pub auth: Option<(String, String, String)>,
    /// The MAIL FROM argument.
    pub mail_from: Option<String>,
    /// The RCPT TO arguments.
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, CRLF line ends.
    pub data: Option<String>,
    /// Whether the server refused the session with a 4xx.
    pub refused: bool,
}

impl SmtpSession {
    /// A header of the message (the first line `Name: value` of its head).
    pub fn header(&self, name: &str) -> Option<String> {
        let data = self.data.as_deref()?;
        let head = data.split_once("\r\n\r\n").map_or(data, |(h, _)| h);
        let prefix = format!("{name}: ");
        head.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
    }

    /// The body of the message, with `\n` line ends.
    pub fn body(&self) -> Option<String> {
        let data = self.data.as_deref()?;
        data.split_once("\r\n\r\n")
            .map(|(_, b)| b.replace("\r\n", "\n"))
    }
}

/// How the SMTP server answers.
#[derive(Debug, Clone)]
pub struct SmtpBehaviour {
    /// Answer `451` to MAIL FROM in this many sessions before accepting.
    pub fail_first: usize,
    /// Expected AUTH PLAIN credentials; a mismatch gets `535` (permanent), repeating
    /// what was sent (a careless server).
    pub credentials: Option<(String, String)>,
}

/// A running SMTP server; it stops with its runtime.
#[derive(Debug)]
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    sessions: Arc<Mutex<Vec<SmtpSession>>>,
}

impl SmtpServer {
    /// Every session so far, in connection order.
    pub fn sessions(&self) -> Vec<SmtpSession> {
        self.sessions.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The messages accepted so far (sessions that sent DATA).
    pub fn messages(&self) -> Vec<SmtpSession> {
        let mut all = self.sessions();
        all.retain(|s| s.data.is_some());
        all
    }
}

/// Starts an SMTP server (no TLS) on a free loopback port of the current runtime.
pub async fn smtp_server(behaviour: SmtpBehaviour) -> SmtpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sessions = Arc::new(Mutex::new(Vec::<SmtpSession>::new()));
    let s = sessions.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let index = {
                let mut all = s.lock().unwrap_or_else(|e| e.into_inner());
                all.push(SmtpSession::default());
                all.len() - 1
            };
            let s = s.clone();
            let b = behaviour.clone();
            tokio::spawn(async move {
                let _ = smtp_session(stream, index, &b, &s).await;
            });
        }
    });
    SmtpServer { port, sessions }
}

async fn smtp_session(
    stream: tokio::net::TcpStream,
    index: usize,
    b: &SmtpBehaviour,
    sessions: &Mutex<Vec<SmtpSession>>,
) -> std::io::Result<()> {
    let update = |f: &dyn Fn(&mut SmtpSession)| {
        if let Ok(mut all) = sessions.lock() {
            f(&mut all[index]);
        }
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 test.local ESMTP ready\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            update(&|s| s.ehlo = true);
            "250-test.local\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n".to_owned()
        } else if upper.starts_with("AUTH PLAIN") {
            let mut encoded = cmd["AUTH PLAIN".len()..].trim().to_owned();
            if encoded.is_empty() {
                write.write_all(b"334 \r\n").await?;
                line.clear();
                lines.read_line(&mut line).await?;
                encoded = line.trim().to_owned();
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .unwrap_or_default();
            let parts: Vec<String> = String::from_utf8_lossy(&decoded)
                .split('\0')
                .map(str::to_owned)
                .collect();
            let got = match parts.as_slice() {
                [a, u, p] => (a.clone(), u.clone(), p.clone()),
                _ => Default::default(),
            };
            update(&|s| s.auth = Some(got.clone()));
            match &b.credentials {
                Some((u, p)) if *u != got.1 || *p != got.2 => {
                    format!("535 5.7.8 bad credentials {}/{}\r\n", got.1, got.2)
                }
                _ => "235 2.7.0 authenticated\r\n".to_owned(),
            }
        } else if upper.starts_with("MAIL FROM:") {
            if index < b.fail_first {
                update(&|s| s.refused = true);
                "451 4.3.0 try again later\r\n".to_owned()
            } else {
                let from = cmd["MAIL FROM:".len()..].trim().to_owned();
                update(&|s| s.mail_from = Some(from.clone()));
                "250 2.1.0 ok\r\n".to_owned()
            }
        } else if upper.starts_with("RCPT TO:") {
            let to = cmd["RCPT TO:".len()..].trim().to_owned();
            update(&|s| s.rcpt_to.push(to.clone()));
            "250 2.1.5 ok\r\n".to_owned()
        } else if upper == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let l = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(l);
            }
            update(&|s| s.data = Some(data.clone()));
            "250 2.0.0 queued\r\n".to_owned()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 ok\r\n".to_owned()
        } else {
            "502 5.5.2 unknown command\r\n".to_owned()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dingtalk_signature_matches_a_known_value() {
        // Computed with: printf '1700000000000\nSECabc' |
        //   openssl dgst -sha256 -hmac SECabc -binary | base64
        assert_eq!(
            dingtalk_signature("SECabc", 1_700_000_000_000),
            "jcUpW0QmtKduN03n4JqQ0PBosVjqnM8gU7fIIvsDmCM="
        );
    }

    #[tokio::test]
    async fn fail_first_counts_per_path_and_invalid_requests_get_400() {
        let server = http_server(Behaviour {
            fail_first: 1,
            ok_status: 204,
            ok_body: String::new(),
            validator: Arc::new(|r| {
                if r.path == "/bad" {
                    Err("bad path".into())
                } else {
                    Ok(())
                }
            }),
            echo_on_failure: false,
        })
        .await;
        let got = get_each(&server.base).await;
        assert_eq!(
            got,
            [
                ("/a".to_owned(), 500),
                ("/a".to_owned(), 204),
                ("/b".to_owned(), 500),
                ("/bad".to_owned(), 400),
                ("/b".to_owned(), 204),
            ]
        );
        assert_eq!(server.requests_to("/a").len(), 2);
        assert!(server.requests_to("/bad")[0].verdict.is_err());
    }

    /// GETs /a, /a, /b, /bad, /b over plain TCP; (path, status) of each.
    async fn get_each(base: &str) -> Vec<(String, u16)> {
        let addr = base.trim_start_matches("http://").to_owned();
        let mut out = Vec::new();
        for path in ["/a", "/a", "/b", "/bad", "/b"] {
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut answer = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer)
                .await
                .expect("read");
            let code = answer
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            out.push((path.to_owned(), code));
        }
        out
    }
}
