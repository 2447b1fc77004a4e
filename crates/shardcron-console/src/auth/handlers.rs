//! `/api/login`, `/api/logout`, `/api/session`, `/api/users`, `/api/tokens`.

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::{CACHE_CONTROL, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use shardcron_registry::{Compare, Txn, TxnOp};

use super::store::{self, TokenRecord, UserRecord};
use super::{
    Admin, Auth, Caller, ClientAddr, Role, SESSION_COOKIE, SESSION_TTL, password_problem, secret,
    session_cookie, valid_user_name,
};
use crate::audit;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `/api/login`, `/api/logout`, `/api/session`, `/api/tokens`, `/api/users`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/session", get(session))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/users/{name}", delete(delete_user))
        .route("/api/users/{name}/password", put(set_password))
        .route("/api/tokens", get(list_tokens).post(create_token))
        .route("/api/tokens/{id}", delete(delete_token))
}

/// A JSON object body; anything else is a 400 naming `body`.
struct JsonBody(Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<Value>::from_request(req, state).await {
            Ok(Json(v)) if v.is_object() => Ok(JsonBody(v)),
            Ok(_) => Err(ApiError::bad_request("body", "expected a JSON object")),
            Err(e) => Err(ApiError::bad_request("body", e.body_text())),
        }
    }
}

impl JsonBody {
    /// A string field that must be there.
    fn required(&self, field: &str) -> ApiResult<&str> {
        self.optional(field)?
            .ok_or_else(|| ApiError::bad_request(field, format!("{field} is required")))
    }

    /// A string field that may be missing or null.
    fn optional(&self, field: &str) -> ApiResult<Option<&str>> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad_request(
                field,
                format!("{field} must be a string"),
            )),
        }
    }

    /// The `role` field (default `viewer`).
    fn role(&self) -> ApiResult<Role> {
        match self.optional("role")? {
            None => Ok(Role::Viewer),
            Some(r) => Role::parse(r).ok_or_else(|| {
                ApiError::bad_request("role", "role must be \"viewer\" or \"admin\"")
            }),
        }
    }
}

const USER_NAME_RULE: &str = "must be 1-64 characters among A-Z a-z 0-9 . _ -";

fn check_user_name(name: &str) -> ApiResult<()> {
    if valid_user_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "name",
            format!("name {USER_NAME_RULE}"),
        ))
    }
}

fn check_password(password: &str) -> ApiResult<()> {
    match password_problem(password) {
        Some(p) => Err(ApiError::bad_request("password", format!("password {p}"))),
        None => Ok(()),
    }
}

/// The `Set-Cookie` value of a session (`None`: clear the cookie).
fn session_set_cookie(auth: &Auth, id: Option<&str>) -> String {
    let (value, max_age) = match id {
        Some(id) => (id, SESSION_TTL.as_secs()),
        None => ("", 0),
    };
    let secure = if auth.secure_cookies { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    )
}

/// The session of a cookie-authenticated request: its id and hash.
fn cookie_session(headers: &HeaderMap) -> Option<(String, String)> {
    if super::bearer_token(headers).is_some() {
        return None;
    }
    session_cookie(headers).map(|id| {
        let hash = secret::sha256_hex(&id);
        (id, hash)
    })
}

/// Names from users' input in the audit log: valid names as they are.
fn audit_name(name: &str) -> &str {
    if valid_user_name(name) { name } else { "-" }
}

async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    body: JsonBody,
) -> ApiResult<Response> {
    let username = body.required("username")?;
    let password = body.required("password")?;
    let auth = &state.auth;
    let keys = Auth::limit_keys(addr, username);
    let started = auth.clock.mono();
    // Count the attempt as a failure now (refunded on success), so that
    // concurrent attempts cannot all slip under the limit.
    let refused = auth.limiter.lock().expect("limiter").begin(&keys, started);
    if let Some(wait) = refused {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        return Ok((
            [(RETRY_AFTER, secs.to_string())],
            ApiError::too_many(format!("too many failed logins; retry in {secs} s")),
        )
            .into_response());
    }
    let checked = async {
        let found = if valid_user_name(username) {
            let kv = auth.get(&store::user(username)).await?;
            kv.and_then(|kv| store::decode::<UserRecord>(&kv).map(|u| (u, kv.create_revision)))
        } else {
            None
        };
        let ok = match &found {
            Some((u, _)) => auth.verify_password(password, &u.password_hash).await?,
            None => {
                // As long as for a real user, so names cannot be probed by timing.
                auth.verify_unknown_user(password).await?;
                false
            }
        };
        Ok::<_, ApiError>((found, ok))
    };
    let (found, ok) = match checked.await {
        Ok(v) => v,
        Err(e) => {
            // Not the caller's failure.
            auth.limiter.lock().expect("limiter").refund(&keys, started);
            return Err(e);
        }
    };
    let address = addr.map(|a| a.ip().to_string());
    let Some((user, user_revision)) = found.filter(|_| ok) else {
        tracing::info!(user = audit_name(username), address, "failed console login");
        audit::record(
            &state,
            audit_name(username),
            "login.failed",
            audit_name(username),
            json!({ "address": address }),
        )
        .await;
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    auth.limiter.lock().expect("limiter").refund(&keys, started);
    let id = auth.create_session(&user.name, user_revision).await?;
    audit::record(
        &state,
        &user.name,
        "login",
        &user.name,
        json!({ "address": address }),
    )
    .await;
    Ok((
        [
            (SET_COOKIE, session_set_cookie(auth, Some(&id))),
            (CACHE_CONTROL, "no-store".to_owned()),
        ],
        Json(json!({
            "user": user.name,
            "role": user.role,
            "csrf_token": secret::csrf_token(&id),
        })),
    )
        .into_response())
}

/// Ends the cookie's session everywhere (a session that already ended, or a
/// bearer request, has nothing to end: 204 too). Needs the CSRF header.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let auth = &state.auth;
    if let Some((id, hash)) = cookie_session(&headers)
        && let Some(caller) = auth.session_caller(&hash).await?
    {
        if !super::csrf_ok(&headers, &id) {
            return Err(super::csrf_error());
        }
        auth.revoke_session(&hash).await?;
        audit::record(&state, &caller.name, "logout", &caller.name, json!({})).await;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, session_set_cookie(auth, None))],
    )
        .into_response())
}

async fn session(caller: Caller, headers: HeaderMap) -> Response {
    let csrf = cookie_session(&headers).map(|(id, _)| secret::csrf_token(&id));
    (
        [(CACHE_CONTROL, "no-store")],
        Json(json!({ "user": caller.name, "role": caller.role, "csrf_token": csrf })),
    )
        .into_response()
}

async fn list_users(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Value>> {
    let users: Vec<Value> = state
        .auth
        .range(store::USERS)
        .await?
        .iter()
        .filter_map(store::decode::<UserRecord>)
        .map(|u| json!({ "name": u.name, "role": u.role, "created_at": u.created_at }))
        .collect();
    Ok(Json(json!({ "users": users })))
}

async fn create_user(
    State(state): State<AppState>,
    Admin(caller): Admin,
    body: JsonBody,
) -> ApiResult<Response> {
    let name = body.required("name")?;
    check_user_name(name)?;
    let password = body.required("password")?;
    check_password(password)?;
    let role = body.role()?;
    let auth = &state.auth;
    let now = auth.clock.wall();
    let rec = UserRecord {
        name: name.to_owned(),
        role,
        password_hash: auth.hash_password(password).await?,
        created_at: now,
        password_changed_at: now,
    };
    if !auth.put_if_absent(store::user(name), &rec).await? {
        return Err(ApiError::conflict(format!("user {name} already exists")));
    }
    audit::record(
        &state,
        &caller.name,
        "user.created",
        name,
        json!({ "role": role }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "role": role, "created_at": now })),
    )
        .into_response())
}

async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    check_user_name(&name)?;
    if caller.role != Role::Admin && caller.name != name {
        return Err(ApiError::forbidden(
            "only an admin can change the password of another user",
        ));
    }
    let password = body.required("password")?;
    check_password(password)?;
    let auth = &state.auth;
    let key = store::user(&name);
    let hash = auth.hash_password(password).await?;
    let mut changed = false;
    for _ in 0..5 {
        let Some(kv) = auth.get(&key).await? else {
            return Err(ApiError::not_found(format!("user {name}")));
        };
        let Some(mut rec) = store::decode::<UserRecord>(&kv) else {
            return Err(ApiError::not_found(format!("user {name}")));
        };
        rec.password_hash = hash.clone();
        rec.password_changed_at = auth.clock.wall();
        if auth.put_if_revision(&key, kv.mod_revision, &rec).await? {
            changed = true;
            break;
        }
    }
    if !changed {
        return Err(ApiError::conflict(format!(
            "user {name} kept changing concurrently; retry"
        )));
    }
    // Other sessions of the user end; the caller's own session goes on.
    let current = cookie_session(&headers).map(|(_, hash)| hash);
    auth.revoke_sessions_of(&name, current.as_deref()).await?;
    audit::record(
        &state,
        &caller.name,
        "user.password_changed",
        &name,
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_user(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    check_user_name(&name)?;
    let auth = &state.auth;
    let key = store::user(&name);
    for _ in 0..5 {
        let users = auth.range(store::USERS).await?;
        let Some(target) = users.iter().find(|kv| kv.key == key) else {
            return Err(ApiError::not_found(format!("user {name}")));
        };
        let mut txn = Txn::new().when(Compare::mod_revision_is(key.clone(), target.mod_revision));
        let is_admin = store::decode::<UserRecord>(target).is_some_and(|u| u.role == Role::Admin);
        if is_admin {
            // Another admin that is still there, unchanged, when the delete
            // commits: two admins deleting each other cannot both succeed.
            let other = users.iter().find(|kv| {
                kv.key != key
                    && store::decode::<UserRecord>(kv).is_some_and(|u| u.role == Role::Admin)
            });
            let Some(other) = other else {
                return Err(ApiError::conflict(format!(
                    "user {name} is the last admin; create another admin first"
                )));
            };
            txn = txn.when(Compare::mod_revision_is(
                other.key.clone(),
                other.mod_revision,
            ));
        }
        txn = txn.and_then(TxnOp::delete(key.clone()));
        if auth.commit(txn).await? {
            auth.revoke_sessions_of(&name, None).await?;
            audit::record(&state, &caller.name, "user.deleted", &name, json!({})).await;
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(ApiError::conflict(format!(
        "users kept changing concurrently; retry deleting {name}"
    )))
}

async fn list_tokens(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Value>> {
    let tokens: Vec<Value> = state
        .auth
        .range(store::TOKENS)
        .await?
        .iter()
        .filter_map(store::decode::<TokenRecord>)
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "role": t.role,
                "created_at": t.created_at,
                "created_by": t.created_by,
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

async fn create_token(
    State(state): State<AppState>,
    Admin(caller): Admin,
    body: JsonBody,
) -> ApiResult<Response> {
    let name = body.required("name")?;
    let n = name.chars().count();
    if !(1..=64).contains(&n) || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name",
            "name must be 1-64 characters, without control characters",
        ));
    }
    let role = body.role()?;
    let auth = &state.auth;
    let token = secret::new_token();
    let rec = TokenRecord {
        id: secret::new_token_id(),
        name: name.to_owned(),
        role,
        sha256: secret::sha256_hex(&token),
        created_at: auth.clock.wall(),
        created_by: caller.name.clone(),
    };
    if !auth.put_if_absent(store::token(&rec.id), &rec).await? {
        return Err(ApiError::conflict("token id collision; retry"));
    }
    auth.forget_tokens();
    audit::record(
        &state,
        &caller.name,
        "token.created",
        &rec.id,
        json!({ "name": rec.name, "role": role }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        [(CACHE_CONTROL, "no-store")],
        Json(json!({ "id": rec.id, "name": rec.name, "role": role, "token": token })),
    )
        .into_response())
}

async fn delete_token(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    // Ids are hex or `env-admin`; anything else (a `/` above all) is no key.
    if !valid_user_name(&id) {
        return Err(ApiError::not_found(format!("token {id}")));
    }
    let auth = &state.auth;
    let deleted = auth.delete(&store::token(&id)).await?;
    auth.forget_tokens();
    if deleted.prev.is_none() {
        return Err(ApiError::not_found(format!("token {id}")));
    }
    audit::record(&state, &caller.name, "token.deleted", &id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}
