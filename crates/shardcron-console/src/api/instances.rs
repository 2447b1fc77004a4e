//! `/api/instances`, `/api/overview`, `/api/health` and `/health`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{Duration as Span, Utc};
use serde_json::{Value, json};
use shardcron_core::ExecutionStatus;
use shardcron_runtime::{JobPlacement, placement_in};
use shardcron_store::ExecutionQuery;

use crate::audit;
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Instance, overview and health routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/instances", get(list))
        .route("/api/instances/{name}/enable", post(enable))
        .route("/api/instances/{name}/disable", post(disable))
        .route("/api/instances/{id}/shutdown", post(shutdown))
        .route("/api/overview", get(overview))
        .route("/api/health", get(health))
        .route("/health", get(health))
}

async fn list(State(state): State<AppState>, _c: Caller) -> ApiResult<Json<Value>> {
    let instances = state.cluster.instances().await?;
    let flags = state.cluster.instance_flags().await?;
    let leader = state.cluster.leader().await?.map(|(l, _)| l.instance);
    let generation = state.cluster.generation().await?;
    let (jobs, _) = state.cluster.list_jobs().await?;
    // Items per instance, as every instance computes them.
    let mut items: BTreeMap<String, usize> = BTreeMap::new();
    for j in &jobs {
        if let JobPlacement::Assigned(a) = placement_in(generation.as_ref(), &j.spec) {
            for (id, its) in a {
                *items.entry(id).or_default() += its.len();
            }
        }
    }
    let out: Vec<Value> = instances
        .iter()
        .map(|i| {
            json!({
                "id": i.id,
                "name": i.name,
                "host": i.host,
                "pid": i.pid,
                "labels": i.labels,
                "weight": i.weight,
                "capabilities": i.capabilities,
                "version": i.version,
                "started_at": i.started,
                "heartbeat": i.heartbeat,
                "clock_skewed": i.clock_skewed,
                "leader": leader.as_deref() == Some(i.id.as_str()),
                "enabled": flags.get(&i.name).is_none_or(|f| !f.disabled),
                "items": items.get(&i.id).copied().unwrap_or(0),
            })
        })
        .collect();
    // Disabled names with no live instance still show, so they can be enabled.
    let disabled: Vec<&String> = flags
        .iter()
        .filter(|(n, f)| f.disabled && !instances.iter().any(|i| &i.name == *n))
        .map(|(n, _)| n)
        .collect();
    Ok(Json(json!({
        "instances": out,
        "leader": leader,
        "disabled_names": disabled,
    })))
}

/// Instance names: as instances name themselves (see `InstanceConfig::name`).
fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "name",
            format!("not an instance name (1-128 letters, digits, '.', '_', '-'): {name:?}"),
        ))
    }
}

async fn set_enabled(state: &AppState, c: &str, name: &str, on: bool) -> ApiResult<Json<Value>> {
    check_name(name)?;
    let known = state
        .cluster
        .instances()
        .await?
        .iter()
        .any(|i| i.name == name)
        || state.cluster.instance_flags().await?.contains_key(name);
    if !known {
        return Err(ApiError::not_found(format!("instance name {name:?}")));
    }
    state.cluster.set_instance_enabled(name, on).await?;
    let action = if on {
        "instance.enable"
    } else {
        "instance.disable"
    };
    audit::record(state, c, action, name, Value::Null).await;
    Ok(Json(json!({ "name": name, "enabled": on })))
}

async fn enable(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_enabled(&state, &c.name, &name, true).await
}

async fn disable(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_enabled(&state, &c.name, &name, false).await
}

async fn shutdown(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    if !state.cluster.instances().await?.iter().any(|i| i.id == id) {
        return Err(ApiError::not_found(format!("instance {id:?}")));
    }
    state.cluster.shutdown_instance(&id, &c.name).await?;
    audit::record(&state, &c.name, "instance.shutdown", &id, Value::Null).await;
    Ok((StatusCode::ACCEPTED, Json(json!({ "instance": id }))))
}

/// Width of one lateness bucket of the overview chart.
const BUCKET_MINUTES: i64 = 5;

async fn overview(State(state): State<AppState>, _c: Caller) -> ApiResult<Json<Value>> {
    let now = state.clock.wall();
    let instances = state.cluster.instances().await?;
    let leader = state.cluster.leader().await?.map(|(l, _)| l.instance);
    let leader_name = leader.as_ref().and_then(|id| {
        instances
            .iter()
            .find(|i| &i.id == id)
            .map(|i| i.name.clone())
    });
    let (jobs, _) = state.cluster.list_jobs().await?;
    let running: Vec<Value> = state
        .cluster
        .running()
        .await?
        .into_iter()
        .map(|(job, item, r)| {
            json!({
                "job": job,
                "item": item,
                "execution_id": r.execution,
                "instance": r.holder,
                "since": r.claimed_at,
                "fire_time": r.fire_time,
                "source": r.source,
            })
        })
        .collect();
    let failures_24h = state
        .history
        .count(&ExecutionQuery {
            statuses: vec![
                ExecutionStatus::Failed,
                ExecutionStatus::TimedOut,
                ExecutionStatus::Lost,
            ],
            started_from: Some(now - Span::hours(24)),
            ..Default::default()
        })
        .await?;
    // Lateness of the last hour's starts (started_at - fire_time), per bucket.
    let recent = state
        .history
        .query(&ExecutionQuery {
            started_from: Some(now - Span::hours(1)),
            limit: shardcron_store::MAX_PAGE,
            ..Default::default()
        })
        .await?;
    let mut buckets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in &recent.items {
        if r.status == ExecutionStatus::Skipped {
            continue;
        }
        let bucket = r.started_at.timestamp() / (BUCKET_MINUTES * 60);
        let late = (r.started_at - r.fire_time).num_milliseconds().max(0);
        buckets.entry(bucket).or_default().push(late);
    }
    let lateness: Vec<Value> = buckets
        .into_iter()
        .map(|(b, mut v)| {
            v.sort_unstable();
            let at = chrono::DateTime::<Utc>::from_timestamp(b * BUCKET_MINUTES * 60, 0);
            json!({
                "at": at,
                "count": v.len(),
                "p50_ms": v[v.len() / 2],
                "max_ms": v[v.len() - 1],
            })
        })
        .collect();
    Ok(Json(json!({
        "instances": instances.len(),
        "leader": leader,
        "leader_name": leader_name,
        "jobs": jobs.len(),
        "running": running,
        "failures_24h": failures_24h,
        "lateness": lateness,
        "served_by": state.instance().and_then(|i| i.id()),
    })))
}

/// 200 with the serving instance's identity while it is registered and may act;
/// 503 while it is fenced or stopping. A console without an instance (`shardcron
/// console`) answers 200 when the registry answers.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (ok, body) = match (&state.instance, state.instance()) {
        (Some(_), None) => (false, json!({ "status": "stopping" })),
        (Some(_), Some(instance)) => {
            let id = instance.id();
            let ok = id.is_some() && instance.may_act() && !instance.is_stopped();
            (
                ok,
                json!({
                    "status": if ok { "ok" } else { "unavailable" },
                    "name": instance.name(),
                    "instance": id,
                    "leader": instance.is_leader(),
                }),
            )
        }
        (None, _) => {
            let ok = state.cluster.leader().await.is_ok();
            (
                ok,
                json!({ "status": if ok { "ok" } else { "unavailable" }, "instance": null }),
            )
        }
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
