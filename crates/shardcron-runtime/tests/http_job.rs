//! The `http` job kind against a server the test starts on loopback: what the
//! request carries, which statuses succeed, what a failure records, timeouts,
//! cancellation, connection errors, and a run through a real instance.

mod common;
use common::start_running;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use common::{Backend, Env, config, create_job, eventually};
use shardcron_core::job::{HttpMethod, HttpSpec, JobKind, JobName, JobSpec, StatusRange};
use shardcron_core::{ExecutionSource, ExecutionStatus, Schedule, ShardingContext};
use shardcron_runtime::http_job::DEFAULT_OUTPUT_LIMIT;
use shardcron_runtime::{
    Handlers, HttpJob, HttpOptions, JobContext, JobError, MemoryHistory, Runner, SchedulerOptions,
    SimpleJob,
};
use shardcron_store::HistoryEvent;
use tokio::sync::watch;

const SECRET: &str = "Bearer s3cret-value";

/// One request as the server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A loopback server that records every request and answers by path:
/// `/ok` 200 "fine"; `/echo` 200 with the request body; `/status/N` N with a
/// body of `/status/N?len=L` bytes (default none) ending in "THE END";
/// `/slow` 200 after 30 s; `/redirect` 302 to `/ok`.
struct Server {
    addr: SocketAddr,
    log: Log,
}

impl Server {
    async fn start() -> Server {
        let log: Log = Arc::default();
        let app = Router::new().fallback(handle).with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Server { addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }
}

async fn handle(
    State(log): State<Log>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = String::from_utf8_lossy(&body).into_owned();
    log.lock().expect("log").push(Seen {
        method,
        uri: uri.clone(),
        headers,
        body: body.clone(),
    });
    let path = uri.path();
    if path == "/ok" {
        return (StatusCode::OK, "fine").into_response();
    }
    if path == "/echo" {
        return (StatusCode::OK, body).into_response();
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return (StatusCode::OK, "late").into_response();
    }
    if path == "/redirect" {
        return (StatusCode::FOUND, [("location", "/ok")], "").into_response();
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code = StatusCode::from_u16(code.parse().expect("code")).expect("status");
        let len: usize = uri
            .query()
            .and_then(|q| q.strip_prefix("len="))
            .map_or(0, |l| l.parse().expect("len"));
        let body = if len == 0 {
            String::new()
        } else {
            // Multi-byte characters, so that the tail's cut can fall inside one.
            let mut b = "é".repeat(len / 2);
            b.truncate(len.saturating_sub(7) / 2 * 2);
            b.push_str("THE END");
            b
        };
        return (code, body).into_response();
    }
    (StatusCode::NOT_FOUND, "no such path").into_response()
}

fn sharding() -> ShardingContext {
    ShardingContext {
        job: "ping".into(),
        item: 2,
        total: 4,
        item_param: "eu wést".into(),
        param: "batch=500".into(),
        fire_time: DateTime::parse_from_rfc3339("2026-03-01T10:00:05Z")
            .expect("time")
            .with_timezone(&Utc),
        execution_id: "exec-1".into(),
        instance: "inst-a".into(),
        token: 4242,
        source: ExecutionSource::Failover,
        attempt: 2,
    }
}

/// A context for one run of `http`, and its cancel switch.
fn context(http: HttpSpec) -> (JobContext, watch::Sender<bool>) {
    let spec = JobSpec::new(
        JobName::new("ping").expect("name"),
        Schedule::Every(Duration::from_secs(60)),
        JobKind::Http(http),
    );
    spec.validate().expect("a valid spec");
    let (tx, rx) = watch::channel(false);
    (JobContext::new(sharding(), Arc::new(spec), rx), tx)
}

fn job() -> HttpJob {
    HttpJob::new(HttpOptions::default()).expect("http client")
}

async fn run(http: HttpSpec) -> Result<Option<String>, JobError> {
    let (ctx, _cancel) = context(http);
    job().execute(ctx).await
}

fn with_secret(mut http: HttpSpec) -> HttpSpec {
    http.headers
        .insert("Authorization".into(), SECRET.to_owned());
    http
}

#[tokio::test]
async fn the_request_carries_method_headers_context_and_filled_body() {
    let server = Server::start().await;
    let mut http = with_secret(HttpSpec::new(HttpMethod::Post, server.url("/ok?x=1")));
    http.headers.insert("X-Custom".into(), "a b\tc".into());
    http.body = Some(
        r#"{"item": {{item}}, "fire": "{{ fire_time }}", "token": {{token}}, "src": "{{source}}", "p": "{{param}}"}"#
            .into(),
    );
    assert_eq!(run(http).await, Ok(Some("fine".into())));

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.uri.path(), "/ok");
    assert_eq!(r.uri.query(), Some("x=1"));
    assert_eq!(r.header("authorization"), Some(SECRET));
    assert_eq!(r.header("x-custom"), Some("a b\tc"));
    assert_eq!(r.header("x-shardcron-token"), Some("4242"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let agent = r.header("user-agent").expect("user agent");
    assert!(agent.starts_with("shardcron/"), "{agent}");

    let raw = r.header("x-shardcron-context").expect("context header");
    assert!(!raw.contains('\n') && raw.is_ascii(), "{raw}");
    let ctx: ShardingContext = serde_json::from_str(raw).expect("context JSON");
    assert_eq!(ctx, sharding());
    let json: serde_json::Value = serde_json::from_str(raw).expect("json");
    assert_eq!(json["item"], 2);
    assert_eq!(json["token"], 4242);
    assert_eq!(json["item_param"], "eu wést");

    let body: serde_json::Value = serde_json::from_str(&r.body).expect("body is JSON");
    assert_eq!(
        body,
        serde_json::json!({
            "item": 2,
            "fire": "2026-03-01T10:00:05Z",
            "token": 4242,
            "src": "FAILOVER",
            "p": "batch=500",
        })
    );
}

#[tokio::test]
async fn methods_bodies_and_content_types() {
    let server = Server::start().await;
    for method in HttpMethod::ALL {
        assert_eq!(
            run(HttpSpec::new(method, server.url("/echo"))).await,
            Ok(None),
            "{method}"
        );
    }
    let mut text = HttpSpec::new(HttpMethod::Put, server.url("/echo"));
    text.body = Some("item={{item}} of {{total}}".into());
    assert_eq!(run(text.clone()).await, Ok(Some("item=2 of 4".into())));
    text.headers.insert(
        "content-TYPE".into(),
        "application/x-www-form-urlencoded".into(),
    );
    assert_eq!(run(text).await, Ok(Some("item=2 of 4".into())));

    let seen = server.seen();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "PUT", "PUT"
        ]
    );
    for s in &seen[..6] {
        assert_eq!(s.body, "", "{}", s.method);
        assert_eq!(s.header("content-type"), None, "{}", s.method);
    }
    assert_eq!(seen[6].body, "item=2 of 4");
    assert_eq!(
        seen[6].header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        seen[7].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn accepted_and_refused_statuses() {
    let server = Server::start().await;
    let mut http = HttpSpec::new(HttpMethod::Get, server.url("/status/204"));
    http.accept = vec![
        StatusRange::new(204, 204).expect("range"),
        StatusRange::parse("3xx").expect("range"),
    ];
    assert_eq!(run(http.clone()).await, Ok(None));

    // Redirects are not followed: 302 is judged against accept as it is.
    http.url = server.url("/redirect");
    assert_eq!(run(http.clone()).await, Ok(None));
    assert_eq!(server.seen().len(), 2, "the redirect was not followed");

    http.url = server.url("/ok");
    let JobError(cause) = run(http.clone()).await.expect_err("200 is not accepted");
    assert_eq!(
        cause,
        format!(
            "GET {} answered 200 OK, not an accepted status (204, 3xx)\n--- response body ---\nfine",
            server.url("/ok")
        )
    );

    // The default is 2xx; an empty body adds nothing to the cause.
    let JobError(cause) = run(HttpSpec::new(HttpMethod::Get, server.url("/status/404")))
        .await
        .expect_err("404");
    assert_eq!(
        cause,
        format!(
            "GET {} answered 404 Not Found, not an accepted status (2xx)",
            server.url("/status/404")
        )
    );
}

#[tokio::test]
async fn a_server_error_fails_with_the_status_and_the_tail_of_the_body() {
    let server = Server::start().await;
    let http = with_secret(HttpSpec::new(
        HttpMethod::Post,
        server.url("/status/500?len=10000"),
    ));
    let JobError(cause) = run(http).await.expect_err("500 fails");
    let (first, rest) = cause.split_once('\n').expect("several lines");
    assert_eq!(
        first,
        format!(
            "POST {} answered 500 Internal Server Error, not an accepted status (2xx)",
            server.url("/status/500")
        ),
        "the query is left out"
    );
    let tail = rest
        .strip_prefix("--- response body ---\n[... ")
        .expect("a cut body");
    let (dropped, kept) = tail.split_once(" earlier bytes not kept]\n").expect("cut");
    let dropped: usize = dropped.parse().expect("count");
    assert!(kept.ends_with("THE END"), "{kept}");
    assert!(kept.len() <= DEFAULT_OUTPUT_LIMIT, "{}", kept.len());
    assert!(kept.len() >= DEFAULT_OUTPUT_LIMIT - 3, "{}", kept.len());
    assert!(kept.trim_end_matches("THE END").chars().all(|c| c == 'é'));
    assert_eq!(dropped + kept.len(), 9_999, "every byte is accounted for");
    assert!(!cause.contains("s3cret"), "{cause}");
    assert_eq!(server.seen()[0].header("authorization"), Some(SECRET));
}

#[tokio::test]
async fn a_request_longer_than_its_timeout_fails() {
    let server = Server::start().await;
    let mut http = HttpSpec::new(HttpMethod::Get, server.url("/slow?token=s3cret"));
    http.timeout = Duration::from_millis(300);
    let start = Instant::now();
    let JobError(cause) = run(http).await.expect_err("timeout");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        cause,
        format!(
            "GET {} timed out: no complete response within 300ms (http.timeout)",
            server.url("/slow")
        )
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn cancellation_aborts_the_request() {
    let server = Server::start().await;
    let (ctx, cancel) = context(HttpSpec::new(HttpMethod::Get, server.url("/slow")));
    let run = tokio::spawn(async move { job().execute(ctx).await });
    eventually("the request arrived", Duration::from_secs(10), || {
        !server.seen().is_empty()
    })
    .await;
    let start = Instant::now();
    cancel.send(true).expect("cancel");
    let r = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the run stops promptly")
        .expect("join");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        r,
        Err(JobError(format!(
            "GET {} was cancelled",
            server.url("/slow")
        )))
    );
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_sends_nothing() {
    let server = Server::start().await;
    let (ctx, cancel) = context(HttpSpec::new(HttpMethod::Get, server.url("/ok")));
    cancel.send(true).expect("cancel");
    assert_eq!(
        job().execute(ctx).await,
        Err(JobError(format!(
            "GET {} was cancelled before it was sent",
            server.url("/ok")
        )))
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_refused_connection_fails_with_a_clear_cause() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let http = with_secret(HttpSpec::new(HttpMethod::Post, format!("{url}?key=s3cret")));
    let JobError(cause) = run(http).await.expect_err("refused");
    assert!(
        cause.starts_with(&format!("POST {url} failed: cannot connect: ")),
        "{cause}"
    );
    assert!(
        cause.to_lowercase().contains("connection refused"),
        "{cause}"
    );
    assert!(!cause.contains("s3cret"), "{cause}");
}

#[tokio::test]
async fn a_job_of_another_kind_is_refused() {
    let spec = JobSpec::new(
        JobName::new("ping").expect("name"),
        Schedule::Manual,
        JobKind::Handler("h".into()),
    );
    let (_tx, rx) = watch::channel(false);
    let ctx = JobContext::new(sharding(), Arc::new(spec), rx);
    assert_eq!(
        job().execute(ctx).await,
        Err(JobError("job ping is of kind \"h\", not http".into()))
    );
}

/// The final update of each execution, by item.
fn outcomes(h: &MemoryHistory) -> BTreeMap<u32, (ExecutionStatus, Option<String>, Option<String>)> {
    let events = h.events();
    let items: BTreeMap<String, u32> = events
        .iter()
        .filter_map(|e| match e {
            HistoryEvent::Record(r) => Some((r.id.clone(), r.item)),
            HistoryEvent::Update(_) => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for e in events {
        if let HistoryEvent::Update(u) = e
            && u.status.is_terminal()
            && let Some(item) = items.get(&u.id)
        {
            out.entry(*item)
                .or_insert((u.status, u.output.clone(), u.cause.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_job_runs_on_an_instance_and_its_output_is_recorded() {
    let server = Server::start().await;
    let env = Env::new(Backend::Memory).await;
    create_job(
        &env,
        &format!(
            r#"
            [[job]]
            name = "ping"
            every = "1s"
            shards = 2
            shard_params = "0=north,1=south"

            [job.http]
            method = "POST"
            url = "{}"
            headers = {{ Authorization = "{SECRET}" }}
            body = '{{"item": {{{{item}}}}, "region": "{{{{item_param}}}}", "token": {{{{token}}}}}}'
            timeout = "5s"
            accept = [200, 204]
            "#,
            server.url("/echo")
        ),
    )
    .await;
    let h = Arc::new(MemoryHistory::new());
    let runner = Runner {
        handlers: Handlers::new().register("http", job()),
        history: h.clone(),
        options: SchedulerOptions::default(),
    };
    let inst = start_running(&env, config("a"), runner).await;
    eventually("both items ran", Duration::from_secs(20), || {
        outcomes(&h).len() == 2
    })
    .await;
    inst.shutdown().await.expect("shutdown");

    let regions = ["north", "south"];
    let seen = server.seen();
    for (item, (status, output, cause)) in outcomes(&h) {
        assert_eq!(status, ExecutionStatus::Succeeded, "item {item}: {cause:?}");
        let output = output.expect("the response body is the output");
        let body: serde_json::Value = serde_json::from_str(&output).expect("echoed JSON");
        assert_eq!(body["item"], item);
        assert_eq!(body["region"], regions[item as usize]);
        // The token in the body, the token header and the context agree.
        let token = body["token"].as_i64().expect("token");
        assert!(token > 0);
        let request = seen
            .iter()
            .find(|s| s.body == output)
            .expect("the request of this run");
        assert_eq!(request.header("authorization"), Some(SECRET));
        assert_eq!(
            request.header("x-shardcron-token"),
            Some(token.to_string().as_str())
        );
        let ctx: ShardingContext =
            serde_json::from_str(request.header("x-shardcron-context").expect("context"))
                .expect("context JSON");
        assert_eq!((ctx.job.as_str(), ctx.item, ctx.total), ("ping", item, 2));
        assert_eq!(ctx.token, token);
        assert_eq!(ctx.item_param, regions[item as usize]);
    }
    // No secret in what the history holds.
    let everything = format!("{:?}", h.events());
    assert!(!everything.contains("s3cret"), "{everything}");
}
