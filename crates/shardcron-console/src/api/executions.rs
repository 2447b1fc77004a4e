//! `/api/executions`: query with filters and paging, one execution with its
//! transitions and output, cancel; `/api/events`: the live feed.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use shardcron_core::{ExecutionSource, ExecutionStatus};
use shardcron_store::ExecutionQuery;

use crate::audit;
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::params;
use crate::state::AppState;

/// Execution routes.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/executions", get(list))
        .route("/api/executions/{id}", get(read))
        .route("/api/executions/{id}/cancel", post(cancel))
        .route("/api/events", get(events))
}

/// Largest page.
const MAX_LIMIT: u32 = 1000;
/// Page size when none is asked for.
const DEFAULT_LIMIT: u32 = 50;

/// The query string of `GET /api/executions`; every value arrives as text so
/// that a bad one is reported with its field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    job: Option<String>,
    item: Option<String>,
    status: Option<String>,
    source: Option<String>,
    instance: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

fn build_query(q: &ListQuery) -> ApiResult<ExecutionQuery> {
    let limit = params::limit(&q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let (from, to) = (params::time("from", &q.from)?, params::time("to", &q.to)?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::bad_request("to", "must not be before `from`"));
    }
    Ok(ExecutionQuery {
        job: params::text(&q.job),
        item: params::number("item", &q.item)?,
        instance: params::text(&q.instance),
        statuses: params::list_of::<ExecutionStatus>("status", &q.status)?,
        sources: params::list_of::<ExecutionSource>("source", &q.source)?,
        started_from: from,
        started_to: to,
        limit,
        offset: params::offset(&q.offset)?,
        ..Default::default()
    })
}

async fn list(
    State(state): State<AppState>,
    _c: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let query = build_query(&params::query(q)?)?;
    let page = state.history.query(&query).await?;
    let next_offset =
        (page.items.len() as u32 == query.limit).then(|| query.offset + u64::from(query.limit));
    Ok(Json(json!({
        "executions": page.items,
        "next_offset": next_offset,
    })))
}

async fn read(
    State(state): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let detail = state
        .history
        .execution(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {id:?}")))?;
    let transitions: Vec<Value> = detail
        .transitions
        .iter()
        .map(|t| json!({"status": t.state, "at": t.at, "message": t.message}))
        .collect();
    Ok(Json(json!({
        "execution": detail.record,
        "transitions": transitions,
    })))
}

async fn cancel(
    State(state): State<AppState>,
    Admin(c): Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    // Only a run in progress can be cancelled: look for its run key.
    let running = state.cluster.running().await?;
    let Some((job, item, _)) = running.iter().find(|(_, _, r)| r.execution == id) else {
        return match state.history.execution(&id).await? {
            Some(d) => Err(ApiError::conflict(format!(
                "execution {id:?} is not running (it is {})",
                d.record.status
            ))),
            None => Err(ApiError::not_found(format!("execution {id:?}"))),
        };
    };
    state.cluster.cancel(&id, &c.name).await?;
    audit::record(
        &state,
        &c.name,
        "execution.cancel",
        &id,
        json!({"job": job, "item": item}),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(json!({ "execution": id }))))
}

/// How often the live feed looks for new transitions.
const FEED_POLL: Duration = Duration::from_millis(500);

/// Server-sent events: one `execution` event per new status of any execution,
/// from the moment of connection.
async fn events(State(state): State<AppState>, _c: Caller) -> ApiResult<impl IntoResponse> {
    // Start after the newest transition: the client loads the current state
    // with a normal query first.
    let after = state.history.last_transition_seq().await?;
    let stream = futures_util::stream::unfold((state, after), |(state, mut after)| async move {
        loop {
            match state.history.transitions_after(after, 200).await {
                Ok(batch) if !batch.is_empty() => {
                    let mut events = Vec::with_capacity(batch.len());
                    for t in batch {
                        after = t.seq;
                        let detail = state
                            .history
                            .execution(&t.execution_id)
                            .await
                            .ok()
                            .flatten();
                        let (job, item) = detail
                            .map(|d| (d.record.job, Some(d.record.item)))
                            .unwrap_or_default();
                        let data = json!({
                            "id": t.execution_id,
                            "job": job,
                            "item": item,
                            "status": t.transition.state,
                            "at": t.transition.at,
                        });
                        events.push(Ok::<_, Infallible>(
                            Event::default().event("execution").data(data.to_string()),
                        ));
                    }
                    return Some((futures_util::stream::iter(events), (state, after)));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "live feed: the history did not answer"),
            }
            tokio::time::sleep(FEED_POLL).await;
        }
    });
    use futures_util::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        serde_urlencoded_like(&text.join("&"))
    }

    fn serde_urlencoded_like(s: &str) -> ListQuery {
        let uri: axum::http::Uri = format!("/x?{s}").parse().unwrap_or_else(|e| panic!("{e}"));
        Query::<ListQuery>::try_from_uri(&uri)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    #[test]
    fn filters_are_parsed_and_bad_ones_name_their_field() {
        let query = build_query(&q(&[
            ("job", "a"),
            ("status", "failed,TIMED_OUT"),
            ("item", "3"),
            ("limit", "10"),
            ("offset", "20"),
            ("from", "2026-01-01T00:00:00Z"),
        ]))
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(query.job.as_deref(), Some("a"));
        assert_eq!(
            query.statuses,
            [ExecutionStatus::Failed, ExecutionStatus::TimedOut]
        );
        assert_eq!((query.item, query.limit, query.offset), (Some(3), 10, 20));
        for (pairs, field) in [
            (vec![("status", "DONE")], "status"),
            (vec![("source", "x")], "source"),
            (vec![("item", "-1")], "item"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "5000")], "limit"),
            (vec![("from", "yesterday")], "from"),
            (
                vec![
                    ("from", "2026-01-02T00:00:00Z"),
                    ("to", "2026-01-01T00:00:00Z"),
                ],
                "to",
            ),
        ] {
            let err = build_query(&q(&pairs)).err().map(|e| e.field);
            assert_eq!(err, Some(Some(field.to_owned())), "{pairs:?}");
        }
    }
}
