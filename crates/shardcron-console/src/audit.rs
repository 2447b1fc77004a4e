//! The audit log: every change made through the API is recorded in the history
//! database ([`record`]) and listed, newest first, by `GET /api/audit` (admin).
//!
//! Recording never fails the request that made the change: a database that
//! refuses or does not answer within [`RECORD_TIMEOUT`] is logged (with the
//! entry's actor, action and target, so the log keeps them) and the request goes
//! on. Every entry's actor, action and target (not its detail) is also logged at
//! debug level under the target `shardcron::audit`. Long values are cut by the
//! store, never refused.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use shardcron_store::{AuditEntry, AuditQuery};

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::params;
use crate::state::{AppState, ConsoleState};

/// Longest wait for the database when recording an entry.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest page of `GET /api/audit`.
pub const MAX_LIMIT: u32 = 1000;
/// Page size of `GET /api/audit` when none is asked for.
pub const DEFAULT_LIMIT: u32 = 50;

/// Record one change: `actor` (a user name or `token:NAME`) did `action` (e.g.
/// `job.update`) to `target` (e.g. the job's name), with `detail`. Never fails
/// and waits at most [`RECORD_TIMEOUT`].
pub async fn record(state: &ConsoleState, actor: &str, action: &str, target: &str, detail: Value) {
    tracing::debug!(target: "shardcron::audit", actor, action, target, "audit");
    let entry = AuditEntry {
        at: state.clock.wall(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    };
    let failure =
        match tokio::time::timeout(RECORD_TIMEOUT, state.history.record_audit(&entry)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the history database did not answer within {RECORD_TIMEOUT:?}"),
        };
    tracing::warn!(
        target: "shardcron::audit",
        actor,
        action,
        target,
        error = %failure,
        "could not record an audit entry"
    );
}

/// `GET /api/audit`.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/api/audit", get(list))
}

/// The query string of `GET /api/audit`; every value arrives as text so that a
/// bad one is reported with its field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<String>,
    offset: Option<String>,
    actor: Option<String>,
    action: Option<String>,
}

fn build_query(q: &ListQuery) -> ApiResult<AuditQuery> {
    let limit = params::limit(&q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = params::offset(&q.offset)?;
    if i64::try_from(offset).is_err() {
        return Err(ApiError::bad_request("offset", "is too large"));
    }
    Ok(AuditQuery {
        limit,
        offset,
        actor: params::text(&q.actor),
        action: params::text(&q.action),
    })
}

async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let page = state
        .history
        .audit(&build_query(&params::query(q)?)?)
        .await?;
    Ok(Json(json!({
        "entries": page.entries,
        "next_offset": page.next_offset,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        let mut q = ListQuery::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "limit" => q.limit = v,
                "offset" => q.offset = v,
                "actor" => q.actor = v,
                "action" => q.action = v,
                _ => unreachable!(),
            }
        }
        q
    }

    #[test]
    fn query_defaults_bounds_and_filters() {
        let d = build_query(&q(&[])).expect("defaults");
        assert_eq!(
            d,
            AuditQuery {
                limit: DEFAULT_LIMIT,
                offset: 0,
                actor: None,
                action: None
            }
        );
        let f = build_query(&q(&[
            ("limit", "1000"),
            ("offset", "20"),
            ("actor", "alice"),
            ("action", ""),
        ]))
        .expect("filters");
        assert_eq!(f.limit, 1000);
        assert_eq!(f.offset, 20);
        assert_eq!(f.actor.as_deref(), Some("alice"));
        assert_eq!(f.action, None, "an empty filter is no filter");
        for (field, bad) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "-1"),
            ("offset", "x"),
            ("offset", "18446744073709551615"),
        ] {
            let e = build_query(&q(&[(field, bad)])).expect_err(bad);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(e.field.as_deref(), Some(field), "{bad}");
        }
    }
}
