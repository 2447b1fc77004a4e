//! `/api/jobs`: list, read, create, update, delete, enable/disable, trigger,
//! per-item state and flags, next fire times, validation.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use shardcron_core::job::{JobKind, JobSpec};
use shardcron_core::schedule::Schedule;
use shardcron_runtime::{JobPlacement, StoredJob, placement_in};

use crate::audit;
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Job routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/jobs", get(list).post(create))
        .route("/api/jobs/validate", post(validate))
        .route("/api/jobs/{name}", get(read).put(update).delete(remove))
        .route("/api/jobs/{name}/enable", post(enable))
        .route("/api/jobs/{name}/disable", post(disable))
        .route("/api/jobs/{name}/trigger", post(trigger))
        .route("/api/jobs/{name}/next", get(next))
        .route("/api/jobs/{name}/items/{item}/enable", post(enable_item))
        .route("/api/jobs/{name}/items/{item}/disable", post(disable_item))
}

/// Most fire times one request may ask for.
const MAX_NEXT: usize = 100;

/// The next `count` fire times of a job after `now` (none for manual jobs;
/// `delay` jobs fire after each run, so from `now` as if a run ended now).
pub fn next_fires(stored: &StoredJob, now: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    let schedule = &stored.spec.schedule;
    let mut out = Vec::new();
    if let Schedule::Delay(_) = schedule {
        if let Some(t) = schedule.next_delay_fire(now) {
            out.push(t);
        }
        return out;
    }
    let anchor = stored.anchor.unwrap_or(now);
    let mut after = now;
    while out.len() < count {
        match schedule.next_after(after, anchor) {
            Some(t) => {
                out.push(t);
                after = t;
            }
            None => break,
        }
    }
    out
}

/// A job's schedule in a few words.
fn schedule_text(spec: &JobSpec) -> String {
    match &spec.schedule {
        Schedule::Cron(c) => format!("cron {} ({})", c.expr(), c.tz().name()),
        Schedule::Every(d) => format!("every {}", shardcron_core::duration::HumanDuration(*d)),
        Schedule::Delay(d) => format!(
            "{} after each run",
            shardcron_core::duration::HumanDuration(*d)
        ),
        Schedule::At(t) => format!("once at {}", t.to_rfc3339()),
        Schedule::Manual => "manual".to_owned(),
    }
}

fn kind_text(spec: &JobSpec) -> String {
    match &spec.kind {
        JobKind::Script { .. } => "script".into(),
        JobKind::Http(_) => "http".into(),
        JobKind::Handler(h) => h.clone(),
    }
}

async fn stored(state: &AppState, name: &str) -> ApiResult<StoredJob> {
    state
        .cluster
        .get_job(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {name:?}")))
}

async fn list(State(state): State<AppState>, _c: Caller) -> ApiResult<Json<Value>> {
    let (jobs, errors) = state.cluster.list_jobs().await?;
    let running = state.cluster.running().await?;
    let now = state.clock.wall();
    let last = last_executions(&state).await?;
    let out: Vec<Value> = jobs
        .iter()
        .map(|j| {
            let name = j.spec.name.as_str();
            json!({
                "name": name,
                "description": j.spec.description,
                "kind": kind_text(&j.spec),
                "schedule": schedule_text(&j.spec),
                "shards": j.spec.shards,
                "enabled": j.spec.enabled,
                "revision": j.revision,
                "next_fire": if j.spec.enabled { next_fires(j, now, 1).first().copied() } else { None },
                "running": running.iter().filter(|(job, _, _)| job == name).count(),
                "last": last.get(name),
            })
        })
        .collect();
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    Ok(Json(json!({ "jobs": out, "errors": errors })))
}

/// The latest execution of each job among the most recent ones (a job quiet for
/// longer than the last [`LAST_SCAN`] executions shows none).
async fn last_executions(state: &AppState) -> ApiResult<std::collections::HashMap<String, Value>> {
    let page = state
        .history
        .query(&shardcron_store::ExecutionQuery {
            limit: LAST_SCAN,
            ..Default::default()
        })
        .await?;
    let mut out = std::collections::HashMap::new();
    for r in page.items {
        out.entry(r.job.clone()).or_insert_with(|| {
            json!({
                "status": r.status,
                "fire_time": r.fire_time,
                "ended_at": r.ended_at,
                "execution_id": r.id,
            })
        });
    }
    Ok(out)
}

/// How many recent executions the job list looks through for each job's last.
const LAST_SCAN: u32 = 1000;

async fn read(
    State(state): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = stored(&state, &name).await?;
    let now = state.clock.wall();
    let states = state.cluster.item_states(&name).await?;
    let generation = state.cluster.generation().await?;
    let instances = state.cluster.instances().await?;
    let owners = match placement_in(generation.as_ref(), &job.spec) {
        JobPlacement::Assigned(a) => a,
        _ => Default::default(),
    };
    let items: Vec<Value> = (0..job.spec.shards)
        .map(|item| {
            let owner = owners
                .iter()
                .find(|(_, items)| items.contains(&item))
                .map(|(id, _)| id.clone());
            let owner_name = owner.as_ref().and_then(|id| {
                instances
                    .iter()
                    .find(|i| &i.id == id)
                    .map(|i| i.name.clone())
            });
            let st = states.get(&item);
            let enabled = st.and_then(|s| s.flag.as_ref()).is_none_or(|f| !f.disabled);
            let running = st.and_then(|s| s.run.as_ref()).map(|r| {
                json!({
                    "execution_id": r.execution,
                    "instance": r.holder,
                    "since": r.claimed_at,
                    "fire_time": r.fire_time,
                    "attempt": r.attempt,
                })
            });
            let last = st.and_then(|s| s.last.as_ref());
            json!({
                "item": item,
                "param": job.spec.shard_params.get(&item),
                "enabled": enabled,
                "owner": owner,
                "owner_name": owner_name,
                "running": running,
                "last_fire": last.and_then(|l| l.fire),
                "last_completed": last.and_then(|l| l.completed),
            })
        })
        .collect();
    Ok(Json(json!({
        "job": job.spec.redacted().to_json(),
        "revision": job.revision,
        "next_fires": if job.spec.enabled { next_fires(&job, now, 5) } else { Vec::new() },
        "items": items,
    })))
}

/// A job from a request body: validated like a job file.
fn parse_job(body: &Value) -> ApiResult<JobSpec> {
    let mut body = body.clone();
    // `revision` is a request field of PUT, not a job field.
    if let Value::Object(m) = &mut body {
        m.remove("revision");
    }
    JobSpec::from_json_value(&body).map_err(ApiError::invalid_job)
}

async fn validate(
    State(state): State<AppState>,
    _c: Caller,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let spec = parse_job(&body)?;
    let preview = StoredJob {
        spec,
        revision: 0,
        anchor: None,
    };
    Ok(Json(json!({
        "valid": true,
        "next": next_fires(&preview, state.clock.wall(), 5),
    })))
}

async fn create(
    State(state): State<AppState>,
    Admin(c): Admin,
    Json(body): Json<Value>,
) -> ApiResult<impl IntoResponse> {
    let spec = parse_job(&body)?;
    let name = spec.name.as_str().to_owned();
    let revision = match state.cluster.create_job(&spec).await {
        Ok(r) => r,
        Err(shardcron_runtime::Error::Conflict(_)) => {
            return Err(ApiError::conflict(format!("job {name:?} already exists")));
        }
        Err(e) => return Err(e.into()),
    };
    audit::record(
        &state,
        &c.name,
        "job.create",
        &name,
        spec.redacted().to_json(),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "job": spec.redacted().to_json(), "revision": revision })),
    ))
}

async fn update(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let expected = match body.get("revision") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| ApiError::bad_request("revision", "expected an integer"))?,
        ),
    };
    let mut spec = parse_job(&body)?;
    if spec.name.as_str() != name {
        return Err(ApiError::bad_request(
            "name",
            format!(
                "the body names job {:?} but the path says {name:?} (a job cannot be renamed)",
                spec.name.as_str()
            ),
        ));
    }
    let old = stored(&state, &name).await?;
    spec.restore_redacted(&old.spec);
    let revision = match state.cluster.update_job(&spec, expected).await {
        Ok(r) => r,
        Err(shardcron_runtime::Error::Conflict(m)) => return Err(ApiError::conflict(m)),
        Err(e) => return Err(e.into()),
    };
    audit::record(
        &state,
        &c.name,
        "job.update",
        &name,
        json!({ "before": old.spec.redacted().to_json(), "after": spec.redacted().to_json() }),
    )
    .await;
    Ok(Json(
        json!({ "job": spec.redacted().to_json(), "revision": revision }),
    ))
}

async fn remove(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let old = stored(&state, &name).await?;
    state.cluster.delete_job(&name).await?;
    audit::record(
        &state,
        &c.name,
        "job.delete",
        &name,
        old.spec.redacted().to_json(),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(state: &AppState, c: &Caller, name: &str, on: bool) -> ApiResult<Json<Value>> {
    stored(state, name).await?;
    state.cluster.set_job_enabled(name, on).await?;
    let action = if on { "job.enable" } else { "job.disable" };
    audit::record(state, &c.name, action, name, Value::Null).await;
    Ok(Json(json!({ "name": name, "enabled": on })))
}

async fn enable(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_enabled(&state, &c, &name, true).await
}

async fn disable(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_enabled(&state, &c, &name, false).await
}

/// `POST /api/jobs/{name}/trigger` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    items: Vec<u32>,
}

async fn trigger(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(name): Path<String>,
    body: Option<Json<Value>>,
) -> ApiResult<impl IntoResponse> {
    let body: TriggerBody = match body {
        None => TriggerBody::default(),
        Some(Json(v)) => serde_json::from_value(v).map_err(|e| {
            ApiError::bad_request("items", format!("expected {{\"items\": [n, ...]}}: {e}"))
        })?,
    };
    let job = stored(&state, &name).await?;
    if let Some(bad) = body.items.iter().find(|i| **i >= job.spec.shards) {
        return Err(ApiError::bad_request(
            "items",
            format!(
                "item {bad} does not exist (the job has {} item(s), 0 to {})",
                job.spec.shards,
                job.spec.shards - 1
            ),
        ));
    }
    let request = state
        .cluster
        .trigger(&name, body.items.clone(), &c.name)
        .await?;
    audit::record(
        &state,
        &c.name,
        "job.trigger",
        &name,
        json!({ "items": body.items, "request": request }),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(json!({ "request": request }))))
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    count: Option<String>,
}

async fn next(
    State(state): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
    Query(q): Query<NextQuery>,
) -> ApiResult<Json<Value>> {
    let count = match q.count.as_deref() {
        None => 5,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_NEXT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "count",
                    format!("must be an integer from 1 to {MAX_NEXT}, got {s:?}"),
                ));
            }
        },
    };
    let job = stored(&state, &name).await?;
    Ok(Json(
        json!({ "next": next_fires(&job, state.clock.wall(), count) }),
    ))
}

async fn set_item(
    state: &AppState,
    c: &Caller,
    name: &str,
    item: &str,
    on: bool,
) -> ApiResult<Json<Value>> {
    let job = stored(state, name).await?;
    let item: u32 = item
        .parse()
        .ok()
        .filter(|i| *i < job.spec.shards)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "item {item:?} of job {name:?} (it has items 0 to {})",
                job.spec.shards - 1
            ))
        })?;
    state.cluster.set_item_enabled(name, item, on).await?;
    let action = if on { "item.enable" } else { "item.disable" };
    audit::record(
        state,
        &c.name,
        action,
        &format!("{name}/{item}"),
        Value::Null,
    )
    .await;
    Ok(Json(json!({ "job": name, "item": item, "enabled": on })))
}

async fn enable_item(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path((name, item)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_item(&state, &c, &name, &item, true).await
}

async fn disable_item(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path((name, item)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_item(&state, &c, &name, &item, false).await
}
