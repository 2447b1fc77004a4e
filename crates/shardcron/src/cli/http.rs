//! The node's HTTP endpoint (`--bind`): `GET /health` for probes and scripts.
//! The console and the REST API are served here too once they exist.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use shardcron_runtime::Instance;
use tokio::task::JoinHandle;

use super::CliError;

/// Bind `addr` and serve in the background. Binding fails at start (exit 1).
pub(crate) async fn spawn(
    addr: SocketAddr,
    instance: Arc<Instance>,
) -> Result<JoinHandle<()>, CliError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Failed(anyhow::anyhow!("--bind: cannot listen on {addr}: {e}")))?;
    // Handlers hold the instance weakly: connections that outlive the server task
    // (keep-alive clients) must not keep the node from shutting down.
    let app = Router::new()
        .route("/health", get(health))
        .with_state(Arc::downgrade(&instance));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
    }))
}

/// 200 with the instance's identity while it is registered and may act; 503
/// while it is fenced (its lease is not trusted) or stopping.
async fn health(State(instance): State<Weak<Instance>>) -> impl IntoResponse {
    let Some(instance) = instance.upgrade() else {
        let body = serde_json::json!({ "status": "stopping" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    };
    let id = instance.id();
    let ok = id.is_some() && instance.may_act() && !instance.is_stopped();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "name": instance.name(),
        "instance": id,
        "leader": instance.is_leader(),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
