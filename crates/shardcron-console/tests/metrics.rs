//! `/metrics` and `/api/audit` over HTTP, with the namespace in a
//! `MemoryRegistry` and the history (and audit log) in SQLite.

mod common;

use std::sync::Arc;

use common::Node;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use shardcron_console::audit;
use shardcron_console::auth::AuthOptions;
use shardcron_console::metrics::{Metrics, MetricsSink};
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus};
use shardcron_registry::{MemoryRegistry, Registry};
use shardcron_runtime::{HistorySink, MemoryHistory};
use shardcron_store::HistoryEvent;

const ADMIN_TOKEN: &str = "metrics-admin-token-0123456789";

/// A node serving the console (`/metrics`, `/api/audit`, the auth routes...),
/// with `metrics`.
async fn serve(metrics: Option<Arc<Metrics>>) -> Node {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let (auth, _) = common::init_auth(
        registry.clone(),
        AuthOptions {
            admin_password: Some("correct horse battery staple".into()),
            admin_token: Some(ADMIN_TOKEN.into()),
            ..Default::default()
        },
    )
    .await;
    common::start(registry, auth, metrics).await
}

/// A new API token with `role`, made by the admin.
async fn token(node: &Node, name: &str, role: &str) -> String {
    let v = common::create_token(node, ADMIN_TOKEN, name, role).await;
    v["token"].as_str().expect("token").to_owned()
}

async fn get(node: &Node, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = Client::new().get(node.at(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

fn running(id: &str) -> ExecutionRecord {
    let now = chrono::Utc::now();
    ExecutionRecord {
        id: id.into(),
        job: "orders".into(),
        item: 0,
        total: 1,
        fire_time: now,
        fire_time_end: None,
        skipped_count: None,
        started_at: now,
        ended_at: None,
        instance: "i-1".into(),
        host: "h".into(),
        source: ExecutionSource::Failover,
        status: ExecutionStatus::Running,
        skip_reason: None,
        attempt: 1,
        token: 1,
        cause: None,
        output: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_credentials_and_are_prometheus_text() {
    let m = Arc::new(Metrics::new());
    let node = serve(Some(m.clone())).await;
    let sink = MetricsSink::new(Arc::new(MemoryHistory::new()), m.clone());
    sink.record(HistoryEvent::Record(running("e1")));

    let r = get(&node, "/metrics", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = get(&node, "/metrics", Some("sc_not_a_token")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let viewer = token(&node, "prometheus", "viewer").await;
    let r = get(&node, "/metrics", Some(&viewer)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.expect("body");
    assert_eq!(text, m.render());
    assert!(text.contains("\nshardcron_executions_started_total{source=\"FAILOVER\"} 1\n"));
    assert!(text.contains("\nshardcron_failovers_total 1\n"));
    assert!(text.contains("# TYPE shardcron_registry_request_seconds histogram\n"));

    // A server without metrics says so.
    let bare = serve(None).await;
    let r = get(&bare, "/metrics", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v, json!({"error": "no metrics on this server"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_is_for_admins_newest_first_in_pages() {
    let node = serve(None).await;
    // Changes made through the API are audited (the token created here), and
    // so is anything recorded with audit::record.
    let viewer = token(&node, "reader", "viewer").await;
    for i in 0..5 {
        audit::record(
            &node.state,
            "alice",
            "job.update",
            &format!("job-{i}"),
            json!({"shards": i}),
        )
        .await;
    }
    audit::record(&node.state, "bob", "job.delete", "job-9", Value::Null).await;

    assert_eq!(
        get(&node, "/api/audit", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = get(&node, "/api/audit", Some(&viewer)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = get(&node, "/api/audit", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    let entries = v["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 7);
    assert_eq!(v["next_offset"], Value::Null);
    let targets: Vec<&str> = entries
        .iter()
        .map(|e| e["target"].as_str().expect("target"))
        .collect();
    assert_eq!(
        targets[..6],
        ["job-9", "job-4", "job-3", "job-2", "job-1", "job-0"]
    );
    assert_eq!(entries[6]["action"], "token.created");
    assert_eq!(entries[6]["detail"]["name"], "reader");
    let first = entries[0].as_object().expect("object");
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["action", "actor", "at", "detail", "target"]);
    let at = first["at"].as_str().expect("at is text");
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    assert_eq!(entries[1]["detail"], json!({"shards": 4}));

    let r = get(
        &node,
        "/api/audit?actor=alice&action=job.update&limit=2&offset=2",
        Some(ADMIN_TOKEN),
    )
    .await;
    let v: Value = r.json().await.expect("json");
    let targets: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["target"].as_str().expect("target"))
        .collect();
    assert_eq!(targets, ["job-2", "job-1"]);
    assert_eq!(v["next_offset"], 4);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("offset=-3", "offset"),
    ] {
        let r = get(&node, &format!("/api/audit?{query}"), Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["field"], field, "{query}");
    }
    let r = get(&node, "/api/audit?user=bob", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "unknown parameter");
}

/// A database that fails does not fail the caller of audit::record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_record_survives_a_closed_database() {
    let node = serve(None).await;
    node.state.history.close().await;
    audit::record(&node.state, "alice", "job.update", "x", json!({})).await;
    let r = get(&node, "/api/audit", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}
