//! API errors: every failure is a JSON body `{"error": MESSAGE}` with, for bad
//! input, the field (`{"error": ..., "field": "shards"}`) or every problem of a job
//! (`"problems": [{"job", "field", "message"}]`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shardcron_core::job::JobErrors;

/// An API failure with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// The input field at fault, for 400s.
    pub field: Option<String>,
    /// Every problem of an invalid job.
    pub problems: Option<JobErrors>,
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            problems: None,
        }
    }

    /// 400 naming the field.
    pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, message);
        e.field = Some(field.to_owned());
        e
    }

    /// 400 with every problem of a job.
    pub fn invalid_job(problems: JobErrors) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, problems.to_string());
        if let [one] = problems.0.as_slice() {
            e.field = Some(one.field.clone());
        }
        e.problems = Some(problems);
        e
    }

    /// 404: `what` does not exist.
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{} not found", what.into()))
    }

    /// 409: the state changed or the object exists.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 401: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: credentials without the right.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 429: too many attempts.
    pub fn too_many(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// 503: a backend (registry, database) did not answer.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %e, "{what} failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is unavailable: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(f) = self.field {
            body["field"] = f.into();
        }
        if let Some(p) = self.problems {
            body["problems"] =
                p.0.iter()
                    .map(|p| json!({"job": p.job, "field": p.field, "message": p.message}))
                    .collect();
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<shardcron_runtime::Error> for ApiError {
    fn from(e: shardcron_runtime::Error) -> Self {
        use shardcron_runtime::Error as E;
        match e {
            E::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            E::NotFound(m) => ApiError::not_found(m),
            E::Conflict(m) => ApiError::conflict(m),
            other => ApiError::unavailable("the registry", other),
        }
    }
}

impl From<shardcron_store::StoreError> for ApiError {
    fn from(e: shardcron_store::StoreError) -> Self {
        ApiError::unavailable("the history database", e)
    }
}
