//! The REST API's handlers (see `docs/api.md`).

pub mod executions;
pub mod instances;
pub mod jobs;

use crate::state::AppState;

/// Jobs, executions, instances, overview, health and the OpenAPI document.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .merge(jobs::routes())
        .merge(executions::routes())
        .merge(instances::routes())
        .route(
            "/api/openapi.json",
            axum::routing::get(|| async { axum::Json(crate::openapi::document()) }),
        )
}
