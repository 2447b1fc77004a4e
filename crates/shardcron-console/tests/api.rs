//! The REST API through HTTP against a running instance (embedded registry,
//! SQLite history, script jobs): every endpoint, bad input naming its field,
//! unknown objects, missing and wrong credentials, roles, secrets, the live feed.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Node;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shardcron_console::ConsoleState;
use shardcron_console::auth::AuthOptions;
use shardcron_console::openapi::{Access, OPERATIONS};
use shardcron_registry::{MemoryRegistry, Registry};
use shardcron_runtime::script::{ScriptJob, ScriptOptions};
use shardcron_runtime::{Handlers, Instance, InstanceConfig, Runner, SchedulerOptions};
use shardcron_store::{HistoryWriter, WriterOptions};
use shardcron_testkit::write_script;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

struct Server {
    http: reqwest::Client,
    instance: Option<Arc<Instance>>,
    writer: HistoryWriter,
    scripts: PathBuf,
    /// Last, so that its directory outlives the instance and the writer.
    node: Node,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let scripts = dir.path().join("jobs");
    std::fs::create_dir(&scripts).expect("mkdir");
    write_script(&scripts, "ok.sh", "echo hello from $SHARDCRON_ITEM");
    write_script(&scripts, "fail.sh", "echo broken >&2; exit 3");
    write_script(&scripts, "slow.sh", "sleep 30");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let clock = common::clock();
    let store = common::history(dir.path()).await;
    let writer = HistoryWriter::start(store.clone(), WriterOptions::new(dir.path().join("spool")))
        .await
        .expect("writer");
    let mut config = InstanceConfig::new();
    config.name = "api-node".into();
    config.capabilities = Vec::new();
    let runner = Runner {
        handlers: Handlers::new().scripts(ScriptJob::new(ScriptOptions {
            allow: vec![scripts.clone()],
            ..ScriptOptions::default()
        })),
        history: Arc::new(writer.clone()),
        options: SchedulerOptions::default(),
    };
    let instance = Instance::start_with(registry.clone(), clock.clone(), config, runner)
        .await
        .expect("instance");
    let (auth, generated) = common::init_auth(
        registry.clone(),
        AuthOptions {
            admin_password: Some("correct horse battery".into()),
            admin_token: Some(ADMIN_TOKEN.into()),
            secure_cookies: false,
        },
    )
    .await;
    assert!(
        generated.is_none(),
        "a configured password is not generated"
    );
    let instance = Arc::new(instance);
    let state = ConsoleState {
        instance: Some(Arc::downgrade(&instance)),
        ..common::state(registry, clock, auth, store)
    };
    Server {
        http: reqwest::Client::new(),
        instance: Some(instance),
        writer,
        scripts,
        node: common::serve(state, dir).await,
    }
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.node.at(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// `request` (`METHOD /path`) with `body` as the admin, answered with
    /// `want`: the answer's body.
    async fn expect(&self, request: &str, body: Option<Value>, want: StatusCode) -> Value {
        let (method, path) = request.split_once(' ').expect("METHOD /path");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (code, v) = self.admin(method, path, body).await;
        assert_eq!(code, want, "{request}: {v}");
        v
    }

    /// `request` (`METHOD /path`) with `body` as the admin is a 400 naming
    /// `field`: the answer's body.
    async fn bad_request(&self, request: &str, body: Option<Value>, field: &str) -> Value {
        let v = self.expect(request, body, StatusCode::BAD_REQUEST).await;
        assert_eq!(v["field"].as_str(), Some(field), "{request}: {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        self.expect(&format!("GET {path}"), None, StatusCode::OK)
            .await
    }

    fn script(&self, name: &str) -> String {
        self.scripts.join(name).display().to_string()
    }

    /// Create a manual job running `script` on `shards` items.
    async fn create_manual(&self, name: &str, script: &str, shards: u32) {
        let job = manual_job(name, &self.script(script), shards);
        self.expect("POST /api/jobs", Some(job), StatusCode::CREATED)
            .await;
    }

    /// Wait until `f` returns Some, polling.
    async fn until<T>(&self, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn manual_job(name: &str, command: &str, shards: u32) -> Value {
    json!({"name": name, "manual": true, "shards": shards, "command": [command]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_guarded() {
    let s = server().await;
    let viewer = json!({"name": "ro", "role": "viewer"});
    let viewer = s
        .expect("POST /api/tokens", Some(viewer), StatusCode::CREATED)
        .await;
    let viewer = viewer["token"].as_str().expect("token").to_owned();
    let concrete = |p: &str| {
        p.replace("{name}", "nope")
            .replace("{item}", "0")
            .replace("{id}", "nope")
    };
    for op in OPERATIONS {
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).expect("method");
        let path = concrete(op.path);
        if path == "/api/events" {
            continue; // a stream; checked below
        }
        let body = op.body.then(|| json!({}));
        // Without credentials, and with a wrong token.
        let (anon, _) = s.call(method.clone(), &path, None, body.clone()).await;
        let (wrong, _) = s
            .call(method.clone(), &path, Some("sc_wrong"), body.clone())
            .await;
        if op.access == Access::Public {
            assert_ne!(anon, StatusCode::UNAUTHORIZED, "{} {path}", op.method);
        } else {
            assert_eq!(
                anon,
                StatusCode::UNAUTHORIZED,
                "{} {path} without credentials",
                op.method
            );
            assert_eq!(
                wrong,
                StatusCode::UNAUTHORIZED,
                "{} {path} with a wrong token",
                op.method
            );
        }
        if op.access == Access::Admin {
            let (code, _) = s
                .call(method.clone(), &path, Some(&viewer), body.clone())
                .await;
            assert_eq!(
                code,
                StatusCode::FORBIDDEN,
                "{} {path} as a viewer",
                op.method
            );
        }
        // The route exists: an answer of ours (JSON), not the router's empty 404/405.
        if op.path == "/api/logout" {
            continue; // would end nothing for a token, but keep the admin token alive
        }
        let (code, v) = s.admin(method, &path, body).await;
        assert_ne!(code, StatusCode::METHOD_NOT_ALLOWED, "{} {path}", op.method);
        assert!(
            code != StatusCode::NOT_FOUND || v.get("error").is_some(),
            "{} {path}: the route is missing ({code} {v})",
            op.method
        );
    }
    // Every answer carries the security headers, and API answers are not cached.
    let resp = s
        .http
        .get(s.node.at("/api/jobs"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("jobs");
    let h = resp.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h["content-security-policy"]
            .to_str()
            .is_ok_and(|c| c.contains("default-src 'self'"))
    );
    // The document itself.
    let (code, doc) = s.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(doc["paths"]["/api/jobs/{name}"]["put"].is_object(), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_crud_with_bad_input_named_and_nothing_invalid_written() {
    let s = server().await;
    // Bad input: 400 naming the field, nothing written.
    let mut bad = manual_job("bad", &s.script("ok.sh"), 0);
    let v = s
        .bad_request("POST /api/jobs", Some(bad.clone()), "shards")
        .await;
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("between 1")),
        "{v}"
    );
    bad["shards"] = json!(2);
    bad["colour"] = json!("red");
    s.bad_request("POST /api/jobs", Some(bad), "colour").await;
    let not_an_object = Some(json!([1, 2]));
    s.expect("POST /api/jobs", not_an_object, StatusCode::BAD_REQUEST)
        .await;
    assert!(
        s.get("/api/jobs").await["jobs"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    // Validation with a preview of the next fires.
    let job = json!({"name": "v", "cron": "0 0 * * * *", "command": ["./x"]});
    let v = s
        .expect("POST /api/jobs/validate", Some(job), StatusCode::OK)
        .await;
    assert_eq!(v["next"].as_array().map(Vec::len), Some(5), "{v}");
    let job = json!({"name": "v", "cron": "61 * * * * *", "command": ["./x"]});
    s.bad_request("POST /api/jobs/validate", Some(job), "cron")
        .await;

    // Create, read, conflict.
    let job = json!({"name": "hourly", "cron": "0 0 * * * *", "shards": 3, "command": [s.script("ok.sh")]});
    let v = s
        .expect("POST /api/jobs", Some(job.clone()), StatusCode::CREATED)
        .await;
    let revision = v["revision"].as_i64().expect("revision");
    s.expect("POST /api/jobs", Some(job.clone()), StatusCode::CONFLICT)
        .await;
    let detail = s.get("/api/jobs/hourly").await;
    assert_eq!(detail["job"]["shards"], 3);
    assert_eq!(detail["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(detail["next_fires"].as_array().map(Vec::len), Some(5));
    let list = s.get("/api/jobs").await;
    assert_eq!(list["jobs"][0]["name"], "hourly");
    assert_eq!(list["jobs"][0]["schedule"], "cron 0 0 * * * * (UTC)");
    let next = s.get("/api/jobs/hourly/next?count=3").await;
    assert_eq!(next["next"].as_array().map(Vec::len), Some(3));
    s.bad_request("GET /api/jobs/hourly/next?count=0", None, "count")
        .await;

    // Update: the name cannot change, a stale revision is refused.
    let mut changed = job.clone();
    changed["shards"] = json!(4);
    changed["revision"] = json!(revision);
    let update = Some(changed.clone());
    s.expect("PUT /api/jobs/hourly", update, StatusCode::OK)
        .await;
    // The revision is stale now.
    let stale = Some(changed.clone());
    s.expect("PUT /api/jobs/hourly", stale, StatusCode::CONFLICT)
        .await;
    changed["name"] = json!("other");
    changed["revision"] = Value::Null;
    s.bad_request("PUT /api/jobs/hourly", Some(changed), "name")
        .await;
    let missing = Some(manual_job("missing", "./x", 1));
    s.expect("PUT /api/jobs/missing", missing, StatusCode::NOT_FOUND)
        .await;
    assert_eq!(s.get("/api/jobs/hourly").await["job"]["shards"], 4);

    // Enable/disable, items.
    let v = s
        .expect("POST /api/jobs/hourly/disable", None, StatusCode::OK)
        .await;
    assert_eq!(v["enabled"].as_bool(), Some(false));
    assert_eq!(s.get("/api/jobs/hourly").await["job"]["enabled"], false);
    for (request, want) in [
        ("POST /api/jobs/hourly/enable", StatusCode::OK),
        ("POST /api/jobs/hourly/items/2/disable", StatusCode::OK),
    ] {
        s.expect(request, None, want).await;
    }
    assert_eq!(
        s.get("/api/jobs/hourly").await["items"][2]["enabled"],
        false
    );
    for request in [
        "POST /api/jobs/hourly/items/9/disable",
        "POST /api/jobs/hourly/items/x/disable",
    ] {
        s.expect(request, None, StatusCode::NOT_FOUND).await;
    }
    let items = Some(json!({"items": [7]}));
    s.bad_request("POST /api/jobs/hourly/trigger", items, "items")
        .await;
    s.expect(
        "POST /api/jobs/missing/trigger",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;

    // Delete.
    for (request, want) in [
        ("DELETE /api/jobs/hourly", StatusCode::NO_CONTENT),
        ("GET /api/jobs/hourly", StatusCode::NOT_FOUND),
        ("DELETE /api/jobs/hourly", StatusCode::NOT_FOUND),
    ] {
        s.expect(request, None, want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_returned_and_survive_an_edit() {
    let s = server().await;
    let job = json!({"name": "hook", "manual": true,
        "http": {"url": "http://127.0.0.1:9/x", "headers": {"Authorization": "Bearer s3cr3t-value"}}});
    let v = s
        .expect("POST /api/jobs", Some(job), StatusCode::CREATED)
        .await;
    assert!(!v.to_string().contains("s3cr3t"), "{v}");
    let detail = s.get("/api/jobs/hook").await;
    assert!(!detail.to_string().contains("s3cr3t"), "{detail}");
    assert_eq!(
        detail["job"]["http"]["headers"]["Authorization"],
        "<redacted>"
    );
    // Sending the redacted form back (an edit in the console) keeps the secret.
    let mut edited = detail["job"].clone();
    edited["description"] = json!("edited");
    s.expect("PUT /api/jobs/hook", Some(edited), StatusCode::OK)
        .await;
    let stored = s
        .node
        .state
        .cluster
        .get_job("hook")
        .await
        .expect("read")
        .expect("job");
    match &stored.spec.kind {
        shardcron_core::job::JobKind::Http(h) => {
            assert_eq!(
                h.headers.get("Authorization").map(String::as_str),
                Some("Bearer s3cr3t-value")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stored.spec.description, "edited");
    assert!(!s.get("/api/jobs").await.to_string().contains("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_are_queried_read_and_cancelled() {
    let s = server().await;
    for (name, script) in [("ok", "ok.sh"), ("broken", "fail.sh"), ("slow", "slow.sh")] {
        s.create_manual(name, script, 2).await;
    }
    // Triggers right after creation are kept until the job is seen.
    for (name, body) in [
        ("ok", None),
        ("broken", None),
        ("slow", Some(json!({"items": [1]}))),
    ] {
        let request = format!("POST /api/jobs/{name}/trigger");
        s.expect(&request, body, StatusCode::ACCEPTED).await;
    }
    let done = s
        .until("both ok items succeed", async || {
            let v = s.get("/api/executions?job=ok&status=succeeded").await;
            let rows = v["executions"].as_array()?.clone();
            (rows.len() == 2).then_some(rows)
        })
        .await;
    assert!(done.iter().all(|r| {
        r["output"]
            .as_str()
            .is_some_and(|o| o.contains("hello from"))
    }));
    let failed = s
        .until("broken fails", async || {
            let v = s
                .get("/api/executions?job=broken&status=FAILED,TIMED_OUT")
                .await;
            let rows = v["executions"].as_array()?.clone();
            (rows.len() == 2).then_some(rows)
        })
        .await;
    assert!(
        failed[0]["cause"].as_str().is_some_and(|c| c.contains('3')),
        "{}",
        failed[0]
    );
    // Paging and filters.
    let page = s.get("/api/executions?limit=1").await;
    assert_eq!(page["executions"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["next_offset"], 1);
    let item1 = s.get("/api/executions?job=ok&item=1").await;
    assert!(
        item1["executions"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["item"] == 1)
    );
    for (q, f) in [
        ("status=DONE", "status"),
        ("limit=0", "limit"),
        ("from=yesterday", "from"),
        ("item=-2", "item"),
    ] {
        s.bad_request(&format!("GET /api/executions?{q}"), None, f)
            .await;
    }
    let unknown = "GET /api/executions?colour=red";
    s.expect(unknown, None, StatusCode::BAD_REQUEST).await;
    // One execution with its transitions.
    let id = done[0]["id"].as_str().expect("id");
    let one = s.get(&format!("/api/executions/{id}")).await;
    assert_eq!(one["execution"]["status"], "SUCCEEDED");
    let states: Vec<&str> = one["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter_map(|t| t["status"].as_str())
        .collect();
    assert_eq!(states, ["RUNNING", "SUCCEEDED"]);
    s.expect("GET /api/executions/nope", None, StatusCode::NOT_FOUND)
        .await;
    // Cancel: the running one, not a finished one.
    let running = s
        .until("slow runs", async || {
            let v = s.get("/api/executions?job=slow&status=RUNNING").await;
            v["executions"][0]["id"].as_str().map(str::to_owned)
        })
        .await;
    // A trigger of the busy item is refused in the history, as a manual one.
    s.expect(
        "POST /api/jobs/slow/trigger",
        Some(json!({"items": [1]})),
        StatusCode::ACCEPTED,
    )
    .await;
    let refused = s
        .until("the second trigger is recorded as skipped", async || {
            let v = s.get("/api/executions?job=slow&status=SKIPPED").await;
            v["executions"].as_array()?.first().cloned()
        })
        .await;
    assert_eq!(refused["source"], "MANUAL", "{refused}");
    assert_eq!(refused["item"], 1, "{refused}");
    for (id, want) in [
        (id, StatusCode::CONFLICT), // finished: cannot be cancelled
        ("nope", StatusCode::NOT_FOUND),
        (&running, StatusCode::ACCEPTED),
    ] {
        let request = format!("POST /api/executions/{id}/cancel");
        s.expect(&request, None, want).await;
    }
    s.until("the slow run is cancelled", async || {
        let v = s.get(&format!("/api/executions/{running}")).await;
        (v["execution"]["status"] == "CANCELLED").then_some(())
    })
    .await;
    // The overview counts the failures and the job list shows the last results.
    let overview = s.get("/api/overview").await;
    assert_eq!(overview["failures_24h"], 2, "{overview}");
    assert_eq!(overview["instances"], 1);
    assert!(
        overview["lateness"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{overview}"
    );
    let jobs = s.get("/api/jobs").await;
    let broken = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["name"] == "broken")
        .cloned();
    assert_eq!(
        broken.map(|b| b["last"]["status"].clone()),
        Some(json!("FAILED"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_streams_new_statuses() {
    let s = server().await;
    s.create_manual("feed", "ok.sh", 1).await;
    let mut resp = s
        .http
        .get(s.node.at("/api/events"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()
            .get("content-type")
            .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"))
    );
    s.expect("POST /api/jobs/feed/trigger", None, StatusCode::ACCEPTED)
        .await;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(text.contains("\"SUCCEEDED\"") && text.contains("\"job\":\"feed\"")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no SUCCEEDED event for feed ({other:?}): {text}"),
        }
    }
    assert!(text.contains("event: execution"), "{text}");
    assert!(text.contains("\"RUNNING\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_listed_flagged_and_shut_down() {
    let mut s = server().await;
    let list = s
        .until("the instance is registered and leads", async || {
            let v = s.get("/api/instances").await;
            (v["instances"][0]["leader"] == true).then_some(v)
        })
        .await;
    let id = list["instances"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(list["instances"][0]["name"], "api-node");
    assert_eq!(list["leader"], id.as_str());
    let v = s
        .expect("POST /api/instances/api-node/disable", None, StatusCode::OK)
        .await;
    assert_eq!(v["enabled"].as_bool(), Some(false), "{v}");
    assert_eq!(
        s.get("/api/instances").await["instances"][0]["enabled"],
        false
    );
    for (request, want) in [
        ("POST /api/instances/api-node/enable", StatusCode::OK),
        ("POST /api/instances/ghost/disable", StatusCode::NOT_FOUND),
    ] {
        s.expect(request, None, want).await;
    }
    s.bad_request("POST /api/instances/bad%20name/disable", None, "name")
        .await;
    s.expect(
        "POST /api/instances/ghost-1/shutdown",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    let health = s.call(Method::GET, "/api/health", None, None).await;
    assert_eq!(health.0, StatusCode::OK, "{}", health.1);
    assert_eq!(health.1["instance"], id.as_str());
    // Shut it down through the API: the instance sees the request.
    let request = format!("POST /api/instances/{id}/shutdown");
    s.expect(&request, None, StatusCode::ACCEPTED).await;
    let instance = s.instance.take().expect("instance");
    tokio::time::timeout(Duration::from_secs(10), instance.shutdown_requested())
        .await
        .expect("the shutdown request reaches the instance");
    let Ok(instance) = Arc::try_unwrap(instance) else {
        panic!("the console holds the instance strongly")
    };
    instance.shutdown().await.expect("shutdown");
    let _ = s.writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_in_the_audit_log() {
    let s = server().await;
    s.create_manual("audited", "ok.sh", 1).await;
    for (request, want) in [
        ("POST /api/jobs/audited/disable", StatusCode::OK),
        ("DELETE /api/jobs/audited", StatusCode::NO_CONTENT),
    ] {
        s.expect(request, None, want).await;
    }
    let log = s
        .until("the audit entries land", async || {
            let v = s.get("/api/audit?limit=50").await;
            let entries = v["entries"].as_array()?.clone();
            (entries.iter().filter(|e| e["target"] == "audited").count() == 3).then_some(entries)
        })
        .await;
    let actions: Vec<&str> = log
        .iter()
        .filter(|e| e["target"] == "audited")
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["job.delete", "job.disable", "job.create"],
        "newest first"
    );
    assert!(
        log.iter()
            .all(|e| e["actor"].as_str().is_some_and(|a| !a.is_empty()))
    );
}
