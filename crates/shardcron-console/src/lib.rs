//! The REST API, the web console, logins and API tokens, the audit log and
//! `/metrics` of a shardcron namespace, as one axum [`router`].
//!
//! Served by `shardcron standalone`, by `shardcron agent --bind ADDR` and by
//! `shardcron console` (which is not an instance: it reads and changes the
//! namespace through the registry and reads the history database).
//!
//! - `/api/...`: JSON, described by `/api/openapi.json`; every route but
//!   `/api/login`, `/api/openapi.json` and `/api/health` needs a session cookie
//!   (with the `X-CSRF-Token` header on changes) or `Authorization: Bearer TOKEN`.
//! - `/metrics`: Prometheus text (needs a token or session too).
//! - `/health`: the local instance's health, for probes (no credentials).
//! - `/`: the console, a page with its script and style, no external assets.

pub mod api;
pub mod assets;
pub mod audit;
pub mod auth;
mod error;
pub mod metrics;
pub mod openapi;
mod params;
pub mod state;

use axum::Router;

pub use error::{ApiError, ApiResult};
pub use state::{AppState, ConsoleState};

/// Every route of the console and the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(auth::routes())
        .merge(audit::routes())
        .merge(metrics::routes())
        .layer(axum::middleware::map_response(api_headers))
        .merge(assets::routes())
        .with_state(state)
}

/// Every answer carries the console's security headers; API answers are not
/// cached (they hold state and, for tokens, secrets shown once).
async fn api_headers(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    assets::security_headers(h);
    h.entry(axum::http::header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    response
}

/// Serve the router on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
