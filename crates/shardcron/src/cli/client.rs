//! The HTTP client of the management commands (`shardcron job list`, `shardcron
//! instance ...`, `shardcron history --server`, ...): the REST API of docs/api.md,
//! authenticated with `Authorization: Bearer TOKEN`, its answers mapped onto the
//! exit-code contract: a 400 is invalid input (exit 2, with the API's field or
//! problems); a refused token, an unknown object, an unreachable server and
//! everything else exit 1. The token is never printed.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use clap::Args;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::CliError;

/// How the flag of the server is named in messages.
pub(crate) const SERVER_FLAG: &str = "--server (or SHARDCRON_SERVER)";
/// How the flag of the token is named in messages.
pub(crate) const TOKEN_FLAG: &str = "--token (or SHARDCRON_TOKEN)";

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a whole answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the API is and the credentials for it.
#[derive(Clone, Default, Args)]
pub(crate) struct ServerArgs {
    /// URL of a node serving the API (`--bind` of `standalone` or `agent`, or
    /// `shardcron console`), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SHARDCRON_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// API token, sent as `Authorization: Bearer TOKEN`. Prefer the environment
    /// variable: a flag is visible to other users in the process list.
    #[arg(
        long,
        env = "SHARDCRON_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
}

impl ServerArgs {
    /// Whether a server was given (flag or environment).
    pub(crate) fn given(&self) -> bool {
        self.server.as_deref().is_some_and(|s| !s.trim().is_empty())
    }
}

// By hand: the token must not show up in a debug print.
impl fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// A client of one server's API.
pub(crate) struct Client {
    http: reqwest::Client,
    /// The server URL as given (with a trailing path kept as a prefix).
    base: Url,
    /// The server URL as shown in messages: without user info.
    shown: String,
    /// The token as given, to scrub it from anything the server echoes.
    token: String,
    auth: HeaderValue,
}

/// An answer of the server, whatever its status.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The body when it is JSON.
    pub(crate) json: Option<Value>,
}

impl Answer {
    /// Whether the server said 404 about an object it knows the kind of (an API
    /// error body), as opposed to a path it does not serve.
    pub(crate) fn is_unknown_object(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
            && self.json.as_ref().is_some_and(|j| j.get("error").is_some())
    }
}

impl Client {
    /// A client for `--server` with `--token`; either missing or malformed is
    /// invalid input (exit 2) naming the flag.
    pub(crate) fn new(args: &ServerArgs) -> Result<Client, CliError> {
        let server = args
            .server
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                CliError::invalid(
                    SERVER_FLAG,
                    "missing: the URL of a node serving the API, e.g. http://127.0.0.1:8080",
                )
            })?;
        let base = parse_server(server)?;
        let token = args
            .token
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                CliError::invalid(
                    TOKEN_FLAG,
                    "missing: an API token (create one in the console or with POST /api/tokens)",
                )
            })?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            CliError::invalid(
                TOKEN_FLAG,
                "contains characters that an HTTP header cannot carry",
            )
        })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("shardcron/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot set up the HTTP client: {e}")))?;
        let mut shown = base.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        Ok(Client {
            http,
            shown: shown.as_str().trim_end_matches('/').to_owned(),
            base,
            token: token.to_owned(),
            auth,
        })
    }

    /// The server as shown in messages.
    pub(crate) fn server(&self) -> &str {
        &self.shown
    }

    /// The URL of `segments` (each percent-encoded as one path segment) under
    /// the server URL, with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    /// Send one request and return the answer whatever its status; only a
    /// server that cannot be reached or does not answer is an error (exit 1,
    /// naming the server).
    pub(crate) async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let mut req = self
            .http
            .request(method, self.url(segments, query))
            .header(AUTHORIZATION, self.auth.clone());
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        let json = serde_json::from_slice::<Value>(&bytes).ok();
        Ok(Answer { status, json })
    }

    /// [`Client::call`], and any status but 2xx turned into an error about
    /// `what` (e.g. `job "nightly"`), which a 404 names. The JSON answer, or
    /// null when there is none (204).
    pub(crate) async fn expect(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, CliError> {
        let answer = self.call(method, segments, query, body).await?;
        self.check(answer, what)
    }

    /// A GET of `segments` that must succeed.
    pub(crate) async fn get(&self, segments: &[&str], what: &str) -> Result<Value, CliError> {
        self.expect(Method::GET, segments, &[], None, what).await
    }

    /// A POST of `segments` that must succeed.
    pub(crate) async fn post(
        &self,
        segments: &[&str],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, CliError> {
        self.expect(Method::POST, segments, &[], body, what).await
    }

    /// A 2xx answer's JSON (null when none), or the error for its status.
    pub(crate) fn check(&self, answer: Answer, what: &str) -> Result<Value, CliError> {
        let Answer { status, json } = answer;
        if status.is_success() {
            return Ok(json.unwrap_or(Value::Null));
        }
        let message = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(Value::as_str)
            .map(|m| self.scrub(m));
        let failed = |text: String| CliError::Failed(anyhow::anyhow!(text));
        Err(match (status, message) {
            (StatusCode::BAD_REQUEST, Some(message)) => {
                CliError::Invalid(self.invalid_text(&message, json.as_ref()))
            }
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, message) => failed(format!(
                "the server refused the token: {} ({} at {})",
                message.unwrap_or_else(|| status.to_string()),
                status.as_u16(),
                self.shown
            )),
            (StatusCode::NOT_FOUND, Some(message)) => {
                if message == format!("{what} not found") {
                    failed(format!("{what} not found on {}", self.shown))
                } else {
                    failed(format!("{what} not found on {}: {message}", self.shown))
                }
            }
            (StatusCode::NOT_FOUND, None) => failed(format!(
                "{} answered 404 without an API error: is it a shardcron node serving \
                 the API (--bind) at that URL?",
                self.shown
            )),
            (StatusCode::CONFLICT, Some(message)) => failed(format!("{what}: {message}")),
            (_, Some(message)) => failed(format!(
                "{} answered {}: {message}",
                self.shown,
                status.as_u16()
            )),
            (_, None) => failed(format!(
                "{} answered {} without an API error body: is it a shardcron node serving \
                 the API at that URL?",
                self.shown, status
            )),
        })
    }

    /// The text of a 400: the API's problems one per line, or its field (the
    /// command-line flag when the field is one) and message.
    fn invalid_text(&self, message: &str, json: Option<&Value>) -> String {
        let problems: Vec<String> = json
            .and_then(|j| j.get("problems"))
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let field = p.get("field").and_then(Value::as_str).unwrap_or("(job)");
                        let text = p.get("message").and_then(Value::as_str).unwrap_or("");
                        match p.get("job").and_then(Value::as_str) {
                            Some(job) => format!("job {job:?}: {field}: {}", self.scrub(text)),
                            None => format!("{field}: {}", self.scrub(text)),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !problems.is_empty() {
            let n = problems.len();
            return format!(
                "the server refused the job ({n} problem{}):\n{}",
                if n == 1 { "" } else { "s" },
                problems.join("\n")
            );
        }
        match json.and_then(|j| j.get("field")).and_then(Value::as_str) {
            Some(field) => format!(
                "{}: {message} (refused by the server)",
                flag_of_field(field)
            ),
            None => format!("the server refused the request: {message}"),
        }
    }

    /// The token removed from a text that came from the server.
    fn scrub(&self, text: &str) -> String {
        if self.token.len() >= 4 {
            text.replace(&self.token, "<token>")
        } else {
            text.to_owned()
        }
    }

    /// A request that got no answer: exit 1 naming the server.
    fn transport(&self, e: &reqwest::Error) -> CliError {
        // The causes, not reqwest's own text (which repeats the URL).
        let mut causes = Vec::new();
        let mut source = e.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !causes.contains(&text) {
                causes.push(text);
            }
            source = s.source();
        }
        let cause = if causes.is_empty() {
            "no answer".to_owned()
        } else {
            causes.join(": ")
        };
        let text = if e.is_timeout() {
            format!("the server {} did not answer in time: {cause}", self.shown)
        } else if e.is_connect() {
            format!("cannot connect to the server {}: {cause}", self.shown)
        } else {
            format!("request to the server {} failed: {cause}", self.shown)
        };
        CliError::Failed(anyhow::anyhow!(self.scrub(&text)))
    }
}

/// The command-line flag for a query or body field of the API, when there is one.
fn flag_of_field(field: &str) -> String {
    match field {
        "items" | "item" | "job" | "status" | "source" | "instance" | "limit" => {
            format!("--{field}")
        }
        other => other.to_owned(),
    }
}

/// Check `--server`: an http:// or https:// URL (a path is kept as a prefix).
fn parse_server(server: &str) -> Result<Url, CliError> {
    let bad = |why: &str| CliError::invalid(SERVER_FLAG, format!("{why}, got {server:?}"));
    let url = Url::parse(server).map_err(|e| {
        if server.contains("://") {
            bad(&format!("not a URL ({e})"))
        } else {
            bad("expected an http:// or https:// URL such as http://127.0.0.1:8080")
        }
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(bad(
            "expected an http:// or https:// URL such as http://127.0.0.1:8080",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the URL must not have a query or a fragment"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: Option<&str>, token: Option<&str>) -> ServerArgs {
        ServerArgs {
            server: server.map(str::to_owned),
            token: token.map(str::to_owned),
        }
    }

    fn invalid(r: Result<Client, CliError>) -> String {
        match r {
            Err(CliError::Invalid(m)) => m,
            Err(CliError::Failed(e)) => panic!("expected invalid input, got failure {e}"),
            Ok(_) => panic!("expected invalid input"),
        }
    }

    #[test]
    fn server_and_token_are_checked_naming_the_flag() {
        assert!(invalid(Client::new(&args(None, Some("t")))).starts_with(SERVER_FLAG));
        assert!(invalid(Client::new(&args(Some("  "), Some("t")))).starts_with(SERVER_FLAG));
        for bad in ["localhost:8080", "ftp://x", "http://", "http://h/?a=1", "x"] {
            let m = invalid(Client::new(&args(Some(bad), Some("t"))));
            assert!(m.starts_with(SERVER_FLAG), "{bad}: {m}");
        }
        assert!(invalid(Client::new(&args(Some("http://h:1"), None))).starts_with(TOKEN_FLAG));
        let m = invalid(Client::new(&args(Some("http://h:1"), Some("a\nb"))));
        assert!(m.starts_with(TOKEN_FLAG) && !m.contains("a\nb"), "{m}");
    }

    #[test]
    fn urls_keep_a_path_prefix_and_encode_segments() {
        let c = Client::new(&args(Some("https://u:p@h:9/base/"), Some("secret")))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.server(), "https://h:9/base");
        let url = c.url(&["api", "executions", "a/b c"], &[("job", "x y".into())]);
        assert_eq!(
            url.as_str(),
            "https://u:p@h:9/base/api/executions/a%2Fb%20c?job=x+y"
        );
        let c = Client::new(&args(Some("http://h:9"), Some("secret")))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.url(&["api", "jobs"], &[]).as_str(), "http://h:9/api/jobs");
        assert!(!format!("{:?}", args(Some("x"), Some("secret"))).contains("secret"));
    }

    #[test]
    fn answers_map_to_exit_codes_without_the_token() {
        let c = Client::new(&args(Some("http://h:9"), Some("s3cr3t-token")))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let answer = |status: u16, json: Value| Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            json: Some(json),
        };
        let ok = c.check(answer(200, serde_json::json!({"a": 1})), "x");
        assert!(matches!(ok, Ok(v) if v["a"] == 1));
        match c.check(
            answer(
                400,
                serde_json::json!({"error": "bad", "field": "items", "problems": null}),
            ),
            "job \"a\"",
        ) {
            Err(CliError::Invalid(m)) => assert!(m.starts_with("--items: bad"), "{m}"),
            other => panic!("{other:?}"),
        }
        match c.check(
            answer(
                400,
                serde_json::json!({"error": "x", "problems": [
                    {"job": "a", "field": "shards", "message": "too many"},
                    {"job": null, "field": "name", "message": "missing"}]}),
            ),
            "job \"a\"",
        ) {
            Err(CliError::Invalid(m)) => {
                assert!(
                    m.contains("job \"a\": shards: too many\nname: missing"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        match c.check(
            answer(
                401,
                serde_json::json!({"error": "unknown token s3cr3t-token"}),
            ),
            "x",
        ) {
            Err(CliError::Failed(e)) => {
                let m = e.to_string();
                assert!(
                    m.contains("refused the token") && !m.contains("s3cr3t"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        match c.check(
            answer(404, serde_json::json!({"error": "job \"a\" not found"})),
            "job \"a\"",
        ) {
            Err(CliError::Failed(e)) => {
                assert_eq!(e.to_string(), "job \"a\" not found on http://h:9");
            }
            other => panic!("{other:?}"),
        }
        let bare = Answer {
            status: StatusCode::NOT_FOUND,
            json: None,
        };
        assert!(!bare.is_unknown_object());
        assert!(matches!(c.check(bare, "x"), Err(CliError::Failed(_))));
    }
}
