//! Servers on loopback for the alert tests: a recording HTTP server that validates
//! requests and fails the first ones, a server that never answers, a minimal SMTP
//! server, and a buffer to capture log output.

#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use shardcron_alert::{Alert, AlertKind, SenderOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One request as the HTTP server saw it, and its verdict.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: Method,
    pub(crate) path: String,
    /// Raw query string.
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) at: Instant,
    /// What the validator said.
    pub(crate) verdict: Result<(), String>,
}

impl Recorded {
    /// A decoded query parameter.
    pub(crate) fn param(&self, key: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub(crate) type Validator = Arc<dyn Fn(&Recorded) -> Result<(), String> + Send + Sync>;

/// How the HTTP server answers.
#[derive(Clone)]
pub(crate) struct Behaviour {
    /// Answer HTTP 500 to this many valid requests before accepting.
    pub(crate) fail_first: usize,
    /// Status and body of an accepting answer.
    pub(crate) ok_status: u16,
    pub(crate) ok_body: String,
    /// Checks each request; an invalid one gets HTTP 400 with the reason.
    pub(crate) validator: Validator,
    /// When set, a failing answer's body repeats the request's path, query and
    /// headers (a server that echoes secrets).
    pub(crate) echo_on_failure: bool,
}

struct Srv {
    behaviour: Behaviour,
    log: Mutex<Vec<Recorded>>,
}

/// A running HTTP server.
pub(crate) struct HttpServer {
    pub(crate) base: String,
    srv: Arc<Srv>,
}

impl HttpServer {
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.srv.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

pub(crate) async fn http_server(behaviour: Behaviour) -> HttpServer {
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
    let mut log = srv.log.lock().expect("log");
    let valid_before = log.iter().filter(|r| r.verdict.is_ok()).count();
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

/// A server that accepts connections and reads, but never answers; counts
/// connections.
pub(crate) async fn stalling_server() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(Mutex::new(0usize));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            *c.lock().expect("count") += 1;
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
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// One SMTP session as the server saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmtpSession {
    pub(crate) ehlo: bool,
    /// (authorization id, user, password) of AUTH PLAIN.
    pub(crate) auth: Option<(String, String, String)>,
    pub(crate) mail_from: Option<String>,
    pub(crate) rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, CRLF line ends.
    pub(crate) data: Option<String>,
    /// Whether the server refused the session with a 4xx.
    pub(crate) refused: bool,
}

/// How the SMTP server answers.
#[derive(Debug, Clone)]
pub(crate) struct SmtpBehaviour {
    /// Answer `451` to MAIL FROM in this many sessions before accepting.
    pub(crate) fail_first: usize,
    /// Expected AUTH PLAIN credentials; a mismatch gets `535` (permanent), repeating
    /// what was sent (a careless server).
    pub(crate) credentials: Option<(String, String)>,
}

pub(crate) struct SmtpServer {
    pub(crate) port: u16,
    sessions: Arc<Mutex<Vec<SmtpSession>>>,
}

impl SmtpServer {
    pub(crate) fn sessions(&self) -> Vec<SmtpSession> {
        self.sessions.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

pub(crate) async fn smtp_server(behaviour: SmtpBehaviour) -> SmtpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sessions = Arc::new(Mutex::new(Vec::<SmtpSession>::new()));
    let s = sessions.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let index = {
                let mut all = s.lock().expect("sessions");
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

/// A log buffer for a `tracing` subscriber.
#[derive(Clone, Default)]
pub(crate) struct LogBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Captures every event of this thread, at every level, until the guard drops.
    pub(crate) fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let buf = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

impl Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn fire_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T10:00:05Z")
        .map(|d| d.with_timezone(&Utc))
        .expect("time")
}

pub(crate) fn alert(kind: AlertKind, job: &str) -> Alert {
    Alert {
        kind,
        job: job.to_owned(),
        item: 3,
        fire_time: fire_time(),
        instance: "node-a@10.0.0.1#42".to_owned(),
        execution_id: "exec-0001".to_owned(),
        attempt: 2,
        cause: "exit status 7: disk full".to_owned(),
    }
}

/// Short delays so that retries take milliseconds.
pub(crate) fn fast_options() -> SenderOptions {
    SenderOptions {
        queue_capacity: 64,
        max_in_flight: 4,
        max_attempts: 5,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(5),
    }
}

pub(crate) fn accept_all() -> Validator {
    Arc::new(|_| Ok(()))
}
