//! The `http` job kind: send one HTTP request for one item of one fire.
//!
//! # What a run is
//!
//! A job `kind = "http"` with `http = { method, url, headers, body, timeout, accept }`
//! ([`HttpSpec`], documented with the job file format in
//! [`shardcron_core::job`]) sends one request:
//!
//! - **Method and URL** as configured. Redirects are not followed: a `3xx` answer is
//!   judged like any other status against `accept` (so that the job's headers,
//!   which hold secrets, are never sent to a host the job did not name).
//! - **Headers**: the job's `headers`, plus
//!   - `X-Shardcron-Context`: the run's [`ShardingContext`] as one compact JSON
//!     object (the same object a script gets as its last argument), with every
//!     non-ASCII character written as a `\uXXXX` escape so that the header is pure
//!     ASCII;
//!   - `X-Shardcron-Token`: the fencing token, so that the receiver can reject a
//!     stale run;
//!   - `Content-Type`, when there is a body and the job sets none:
//!     `application/json` when the filled-in body is valid JSON, else
//!     `text/plain; charset=utf-8`;
//!   - `User-Agent: shardcron/<version>` unless the job sets one.
//! - **Body**: the job's `body` with its `{{name}}` placeholders filled in from the
//!   sharding context ([`HttpSpec::render_body`]); none when not set.
//! - **Timeout**: `http.timeout` bounds the whole exchange, from connecting to the
//!   last byte of the response body. The job's own `timeout` (the scheduler's)
//!   still bounds the run.
//! - **Cancellation**: when [`JobContext::cancelled`] resolves (cancel request,
//!   shutdown, self-fencing) the request is dropped at once, which closes its
//!   connection; the run fails with a cause saying it was cancelled.
//!
//! # Outcome
//!
//! Only the last [`HttpOptions::output_limit`] bytes of the response body are kept
//! (never more in memory). When bytes were dropped, the kept part starts with a line
//! `[... N earlier bytes not kept]` and begins at a character boundary; the text is
//! decoded as UTF-8, lossily.
//!
//! - A status in `accept`: success, with the body tail as output (`None` when the
//!   body is empty).
//! - A status outside `accept`: a [`JobError`] whose first line is
//!   `<METHOD> <target> answered <status>, not an accepted status (<accept>)`,
//!   followed, when the body is not empty, by a line `--- response body ---` and the
//!   body tail.
//! - No answer: a [`JobError`] saying whether the connection could not be made, the
//!   request timed out (`http.timeout`), or the exchange broke off, with the
//!   underlying error.
//!
//! `<target>` is the URL without its query and fragment, which may hold secrets.
//!
//! # Secrets
//!
//! Header values are secrets: they are marked sensitive in the request, and never
//! written to logs, causes or outputs (nor by the `Debug` of [`HttpSpec`]). The
//! query string of the URL is left out of causes and logs too. The body is not
//! treated as a secret.
//!
//! # Limits
//!
//! - Proxies are taken from the usual environment variables (`HTTP_PROXY`,
//!   `HTTPS_PROXY`, `NO_PROXY`), as reqwest does by default.
//! - TLS uses rustls with the bundled web PKI roots; there is no setting for a
//!   private CA or client certificates yet.

use crate::tail::Tail;
use std::fmt::Write as _;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use shardcron_core::ShardingContext;
use shardcron_core::job::{CONTEXT_HEADER, HttpMethod, HttpSpec, JobKind};

use crate::error::{Error, Result};
use crate::execute::{JobContext, JobError, SimpleJob, kind_name};

/// [`CONTEXT_HEADER`] as a header name.
const CONTEXT: HeaderName = HeaderName::from_static("x-shardcron-context");
/// [`shardcron_core::job::TOKEN_HEADER`] as a header name.
const TOKEN: HeaderName = HeaderName::from_static("x-shardcron-token");

/// Default of [`HttpOptions::output_limit`]: 4 KiB of the response body.
pub const DEFAULT_OUTPUT_LIMIT: usize = 4 * 1024;

/// How HTTP jobs are run on this instance.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Bytes kept of the end of each response body ([`DEFAULT_OUTPUT_LIMIT`]).
    pub output_limit: usize,
    /// The `User-Agent` sent when a job sets none (`shardcron/<version>`).
    pub user_agent: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            output_limit: DEFAULT_OUTPUT_LIMIT,
            user_agent: format!("shardcron/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Runs `http` jobs (register it as `"http"`); see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HttpJob {
    client: reqwest::Client,
    options: HttpOptions,
}

impl HttpJob {
    /// An HTTP executor with these options. Fails only when the HTTP client cannot
    /// be set up (its TLS configuration).
    pub fn new(options: HttpOptions) -> Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(options.user_agent.clone())
            .build()
            .map_err(|e| Error::Invalid(format!("cannot set up the HTTP client: {e}")))?;
        Ok(HttpJob { client, options })
    }

    /// Its options.
    pub fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// The request for one run, ready to send.
    fn request(&self, spec: &HttpSpec, ctx: &ShardingContext) -> Result<reqwest::Request, String> {
        let url = reqwest::Url::parse(&spec.url)
            .map_err(|e| format!("http.url is not a valid URL: {e}"))?;
        let body = spec
            .render_body(ctx)
            .map_err(|e| format!("http.body: {e}"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("http.headers: {name:?} is not a valid header name"))?;
            // The value is a secret: the message does not show it.
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("http.headers.{name}: not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let context = ascii_json(
            &serde_json::to_string(ctx)
                .map_err(|e| format!("cannot encode the run's context as JSON: {e}"))?,
        );
        headers.insert(
            CONTEXT,
            HeaderValue::from_str(&context)
                .map_err(|e| format!("cannot send the context in {CONTEXT_HEADER}: {e}"))?,
        );
        headers.insert(TOKEN, HeaderValue::from(ctx.token));
        if let Some(body) = &body
            && !headers.contains_key(CONTENT_TYPE)
        {
            let json = serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(if json {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                }),
            );
        }
        let mut request = self
            .client
            .request(method(spec.method), url)
            .headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        request
            .build()
            .map_err(|e| format!("cannot build the request: {}", error_chain(&e)))
    }

    /// Send the request and read the response, keeping the tail of its body.
    async fn exchange(&self, request: reqwest::Request) -> reqwest::Result<(u16, Tail)> {
        let mut response = self.client.execute(request).await?;
        let status = response.status().as_u16();
        let mut tail = Tail::new(self.options.output_limit);
        while let Some(chunk) = response.chunk().await? {
            tail.push(&chunk);
        }
        Ok((status, tail))
    }
}

#[async_trait::async_trait]
impl SimpleJob for HttpJob {
    async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError> {
        let JobKind::Http(spec) = &ctx.spec.kind else {
            return Err(JobError(format!(
                "job {} is of kind {:?}, not http",
                ctx.sharding.job,
                kind_name(&ctx.spec.kind)
            )));
        };
        let target = format!("{} {}", spec.method, target(&spec.url));
        if ctx.is_cancelled() {
            return Err(JobError(format!(
                "{target} was cancelled before it was sent"
            )));
        }
        let request = self
            .request(spec, &ctx.sharding)
            .map_err(|e| JobError(format!("{target}: {e}")))?;
        let outcome = tokio::select! {
            r = tokio::time::timeout(spec.timeout, self.exchange(request)) => r,
            () = ctx.cancelled() => {
                return Err(JobError(format!("{target} was cancelled")));
            }
        };
        let (status, tail) = match outcome {
            Err(_elapsed) => {
                return Err(JobError(format!(
                    "{target} timed out: no complete response within {:?} (http.timeout)",
                    spec.timeout
                )));
            }
            Ok(Err(e)) => return Err(JobError(format!("{target} {}", describe(&e)))),
            Ok(Ok(answer)) => answer,
        };
        tracing::debug!(
            job = %ctx.sharding.job,
            item = ctx.sharding.item,
            status,
            "{target} answered"
        );
        if spec.accepts(status) {
            return Ok((!tail.is_empty()).then(|| tail.text()));
        }
        let mut cause = format!(
            "{target} answered {}, not an accepted status ({})",
            status_text(status),
            spec.accept
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !tail.is_empty() {
            let _ = write!(cause, "\n--- response body ---\n{}", tail.text());
        }
        Err(JobError(cause))
    }
}

fn method(m: HttpMethod) -> reqwest::Method {
    match m {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
        HttpMethod::Head => reqwest::Method::HEAD,
    }
}

/// `500 Internal Server Error`, or the bare code when it has no standard reason.
fn status_text(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// The URL as shown in causes and logs: without credentials, query and fragment.
fn target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// What went wrong with an exchange that got no complete answer, after the target.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "failed: cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "failed while reading the response"
    } else {
        "failed"
    };
    format!("{what}: {}", error_chain(e))
}

/// An error and its sources, `a: b: c`, without the URL (which may hold secrets in
/// its query) and without repeating a message a source already gave.
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let top = e.to_string();
    let top = match e.url() {
        Some(url) => top
            .replace(&format!(" for url ({url})"), "")
            .replace(url.as_str(), "(url)"),
        None => top,
    };
    parts.push(top);
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// JSON with every non-ASCII character escaped as `\uXXXX` (UTF-16 units), which
/// is still the same JSON: such characters only occur inside strings.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_json_escapes_non_ascii() {
        let json = serde_json::json!({ "p": "é €😀", "q": "a\"b" }).to_string();
        let ascii = ascii_json(&json);
        assert!(ascii.is_ascii(), "{ascii}");
        assert_eq!(ascii, r#"{"p":"\u00e9 \u20ac\ud83d\ude00","q":"a\"b"}"#);
        let back: serde_json::Value = serde_json::from_str(&ascii).expect("json");
        assert_eq!(back.to_string(), json);
    }

    #[test]
    fn header_names_are_the_documented_ones() {
        assert!(CONTEXT.as_str().eq_ignore_ascii_case(CONTEXT_HEADER));
        assert!(
            TOKEN
                .as_str()
                .eq_ignore_ascii_case(shardcron_core::job::TOKEN_HEADER)
        );
    }

    #[test]
    fn targets_leave_out_secrets() {
        assert_eq!(
            target("https://u:p@example.com:8443/a/b?token=s3cret#frag"),
            "https://example.com:8443/a/b"
        );
        assert_eq!(target("not a url"), "(invalid URL)");
        assert_eq!(status_text(500), "500 Internal Server Error");
        assert_eq!(status_text(599), "599");
    }
}
