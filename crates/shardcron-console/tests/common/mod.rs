//! What the HTTP tests share: a console served on loopback over a registry,
//! with its history (and audit log) in SQLite in a temporary directory.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use shardcron_console::auth::{Auth, AuthOptions};
use shardcron_console::{AppState, ConsoleState};
use shardcron_core::clock::{SharedClock, SystemClock};
use shardcron_registry::Registry;
use shardcron_runtime::Cluster;
use shardcron_store::HistoryStore;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A system clock (a new one at each call).
pub(crate) fn clock() -> SharedClock {
    SystemClock::shared()
}

/// Set up auth for the namespace in `registry`; the generated admin password,
/// if this call made one.
pub(crate) async fn init_auth(
    registry: Arc<dyn Registry>,
    opts: AuthOptions,
) -> (Auth, Option<String>) {
    Auth::init(registry, clock(), opts)
        .await
        .expect("auth init")
}

/// The history database `history.db` in `dir`.
pub(crate) async fn history(dir: &Path) -> HistoryStore {
    HistoryStore::connect(&format!("sqlite://{}", dir.join("history.db").display()))
        .await
        .expect("history store")
}

/// A console's state over `registry` with `clock`: no instance, no metrics.
pub(crate) fn state(
    registry: Arc<dyn Registry>,
    clock: SharedClock,
    auth: Auth,
    history: HistoryStore,
) -> ConsoleState {
    ConsoleState {
        cluster: Cluster::new(registry, clock.clone()),
        history,
        instance: None,
        auth,
        metrics: None,
        clock,
    }
}

/// A console served on loopback, until dropped.
pub(crate) struct Node {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// What its handlers see.
    pub(crate) state: AppState,
    /// The temporary directory of its history (and of anything else the test
    /// puts there).
    pub(crate) dir: TempDir,
    _stop: oneshot::Sender<()>,
}

impl Node {
    /// The URL of `path` (which starts with `/`).
    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// Serve the whole router with `state` on 127.0.0.1:0 (with the clients'
/// addresses), until the node is dropped; `dir` is kept as long.
pub(crate) async fn serve(state: ConsoleState, dir: TempDir) -> Node {
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = state.clone();
    tokio::spawn(async move {
        shardcron_console::serve(listener, served, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Node {
        url,
        state,
        dir,
        _stop: stop,
    }
}

/// Serve the console of `registry` with `auth`, a new history and no
/// instance; `metrics` if given.
pub(crate) async fn start(
    registry: Arc<dyn Registry>,
    auth: Auth,
    metrics: Option<Arc<shardcron_console::metrics::Metrics>>,
) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = history(dir.path()).await;
    let state = ConsoleState {
        metrics,
        ..state(registry, clock(), auth, history)
    };
    serve(state, dir).await
}

/// Create an API token named `name` with `role` (bearer `admin_token`): the
/// answer's JSON (`id`, `name`, `role`, `token`).
pub(crate) async fn create_token(node: &Node, admin_token: &str, name: &str, role: &str) -> Value {
    let r = Client::new()
        .post(node.at("/api/tokens"))
        .bearer_auth(admin_token)
        .json(&json!({"name": name, "role": role}))
        .send()
        .await
        .expect("create token");
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.expect("json")
}
