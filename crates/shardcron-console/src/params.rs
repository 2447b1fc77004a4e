//! The query strings of the list endpoints (`GET /api/executions`,
//! `GET /api/audit`): every value arrives as text, so that a bad one is a 400
//! naming its field. An empty value is the same as a missing one.

use std::str::FromStr;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use chrono::{DateTime, Utc};

use crate::error::{ApiError, ApiResult};

/// The parsed query string, or a 400 naming `(query)` (e.g. for an unknown
/// parameter).
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("(query)", e.body_text()))
}

/// A text filter: `None` when missing or empty.
pub(crate) fn text(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

/// A non-negative integer.
pub(crate) fn number<T: FromStr>(field: &str, v: &Option<String>) -> ApiResult<Option<T>> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>().map_err(|_| {
                ApiError::bad_request(field, format!("expected a non-negative integer, got {s:?}"))
            })
        })
        .transpose()
}

/// A comma-separated list of upper-case names (given in any case), e.g.
/// statuses; empty when missing.
pub(crate) fn list_of<T: FromStr>(field: &str, v: &Option<String>) -> ApiResult<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    v.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.to_ascii_uppercase()
                .parse::<T>()
                .map_err(|e| ApiError::bad_request(field, e.to_string()))
        })
        .collect()
}

/// An RFC 3339 time.
pub(crate) fn time(field: &str, v: &Option<String>) -> ApiResult<Option<DateTime<Utc>>> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(field, format!("expected an RFC 3339 time: {e}"))
                })
        })
        .transpose()
}

/// The page size `limit`: `default` when missing, else from 1 to `max`.
pub(crate) fn limit(v: &Option<String>, default: u32, max: u32) -> ApiResult<u32> {
    match number::<u32>("limit", v)? {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "limit",
            format!("must be from 1 to {max}, got {n}"),
        )),
    }
}

/// The rows to skip, `offset` (0 when missing).
pub(crate) fn offset(v: &Option<String>) -> ApiResult<u64> {
    Ok(number("offset", v)?.unwrap_or(0))
}
