//! Logins, sessions, API tokens and roles, shared by every node of a namespace
//! through the registry (keys under `console/`, see [`store`]).
//!
//! - **No default password.** The `admin` user gets the config's password
//!   ([`AuthOptions::admin_password`]), or, at the very first start of the
//!   namespace, a generated one that [`Auth::init`] returns once (to be printed);
//!   a create-if-absent transaction makes nodes starting together agree on it.
//! - **Sessions**: a random id in the cookie `shardcron_session` (HttpOnly,
//!   SameSite=Strict, Path=/, Secure on request); the registry holds only its
//!   SHA-256, bound to a lease of [`SESSION_TTL`], so every node accepts it and a
//!   logout ends it everywhere (nodes cache a lookup for at most [`CACHE_TTL`]).
//! - **CSRF**: a request authenticated by the cookie whose method is not
//!   GET/HEAD/OPTIONS must carry `X-CSRF-Token` equal to the session's
//!   `csrf_token` (returned by login and `/api/session`), else 403. Bearer
//!   requests are exempt (browsers never add that header by themselves).
//! - **API tokens**: `Authorization: Bearer sc_...`, stored as SHA-256 and
//!   compared in constant time; `SHARDCRON_ADMIN_TOKEN` seeds the token
//!   `env-admin`.
//! - **Login rate limit**: at most 5 failures a minute per client address and per
//!   user name (per node), then 429 with `Retry-After`.
//! - Passwords are hashed with argon2id; no secret is ever logged.

mod handlers;
mod limit;
mod secret;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use shardcron_core::clock::{MonoTime, SharedClock};
use shardcron_registry::{
    Compare, DeleteResponse, KeyValue, RangeRequest, Registry, RegistryError, Revision, Txn, TxnOp,
};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;
use limit::Limiter;
use store::{Bootstrap, SessionRecord, TokenRecord, UserRecord};

pub use handlers::routes;

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a node trusts a session or token lookup before asking the registry
/// again: a logout or a revocation elsewhere takes effect within this.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// The session cookie.
pub const SESSION_COOKIE: &str = "shardcron_session";
/// The CSRF header.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Shortest accepted password.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Shortest accepted `SHARDCRON_ADMIN_TOKEN`.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;
/// Password hashes computed at once (each takes ~19 MiB and a core for a while).
const CONCURRENT_HASHES: usize = 2;
/// Above this many cached sessions, drop the stale ones.
const SESSION_CACHE_PRUNE: usize = 1024;

/// Logins, sessions and API tokens of a namespace.
pub struct Auth {
    registry: Arc<dyn Registry>,
    clock: SharedClock,
    secure_cookies: bool,
    limiter: Mutex<Limiter>,
    /// Session hash -> (when looked up, who).
    sessions: Mutex<HashMap<String, (MonoTime, Caller)>>,
    /// Every token record, and when it was read.
    tokens: Mutex<Option<(MonoTime, Arc<[TokenRecord]>)>>,
    hashing: Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

/// How auth starts.
#[derive(Clone, Default)]
pub struct AuthOptions {
    /// The admin password from the config, if set: the `admin` user gets it at
    /// start (at least [`MIN_PASSWORD_CHARS`] characters).
    pub admin_password: Option<String>,
    /// `SHARDCRON_ADMIN_TOKEN`: seeds the admin API token `env-admin` (at least
    /// [`MIN_ADMIN_TOKEN_CHARS`] characters).
    pub admin_token: Option<String>,
    /// Mark cookies `Secure` (served over HTTPS behind a proxy).
    pub secure_cookies: bool,
}

impl std::fmt::Debug for AuthOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("AuthOptions")
            .field("admin_password", &redacted(&self.admin_password))
            .field("admin_token", &redacted(&self.admin_token))
            .field("secure_cookies", &self.secure_cookies)
            .finish()
    }
}

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and changes.
    Admin,
}

impl Role {
    /// `viewer` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    /// Parse `viewer` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who calls.
#[derive(Debug, Clone)]
pub struct Caller {
    /// User name, or `token:NAME`.
    pub name: String,
    /// Role.
    pub role: Role,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let caller = state.auth.authenticate(parts).await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// An admin caller.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let c = Caller::from_request_parts(parts, state).await?;
        if c.role == Role::Admin {
            Ok(Admin(c))
        } else {
            Err(ApiError::forbidden("this needs the admin role"))
        }
    }
}

/// The client's address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// A registry failure as an API error.
fn registry_err(e: RegistryError) -> ApiError {
    ApiError::unavailable("the registry", e)
}

/// Whether `name` is a valid user name: 1-64 of `[A-Za-z0-9._-]`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why `password` is not acceptable, if it is not.
pub fn password_problem(password: &str) -> Option<String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        Some(format!(
            "must be at least {MIN_PASSWORD_CHARS} characters long"
        ))
    } else if n > MAX_PASSWORD_CHARS {
        Some(format!(
            "must be at most {MAX_PASSWORD_CHARS} characters long"
        ))
    } else {
        None
    }
}

/// Methods that never change anything (no CSRF token needed).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request carries the CSRF token of session `id`.
fn csrf_ok(headers: &HeaderMap, id: &str) -> bool {
    let want = secret::csrf_token(id);
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| secret::constant_time_eq(v.as_bytes(), want.as_bytes()))
}

/// 403 for a change without the session's CSRF token.
fn csrf_error() -> ApiError {
    ApiError::forbidden("missing or wrong X-CSRF-Token header: send the csrf_token of the session")
}

/// The token of an `Authorization: Bearer TOKEN` header, if any (other schemes,
/// such as a proxy's Basic authentication, are not ours and are ignored).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// The session id in the `Cookie` headers, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl Auth {
    /// Set up auth for the namespace: seed the `SHARDCRON_ADMIN_TOKEN` token,
    /// set the config's admin password, or generate one at the namespace's first
    /// start. Returns the generated admin password when this call generated it
    /// (exactly one of several nodes starting together gets it); the caller
    /// prints it once. Errors name the setting at fault and never contain a
    /// secret.
    pub async fn init(
        registry: Arc<dyn Registry>,
        clock: SharedClock,
        opts: AuthOptions,
    ) -> Result<(Auth, Option<String>), String> {
        if let Some(p) = &opts.admin_password
            && let Some(problem) = password_problem(p)
        {
            return Err(format!("the console admin password {problem}"));
        }
        if let Some(t) = &opts.admin_token {
            if t.chars().count() < MIN_ADMIN_TOKEN_CHARS {
                return Err(format!(
                    "SHARDCRON_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters long"
                ));
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(
                    "SHARDCRON_ADMIN_TOKEN must not contain spaces or control characters".into(),
                );
            }
        }
        let auth = Auth {
            registry,
            clock,
            secure_cookies: opts.secure_cookies,
            limiter: Mutex::new(Limiter::default()),
            sessions: Mutex::new(HashMap::new()),
            tokens: Mutex::new(None),
            hashing: Semaphore::new(CONCURRENT_HASHES),
        };
        let fail = |what: &str, e: ApiError| format!("{what}: {}", e.message);
        if let Some(t) = &opts.admin_token {
            auth.seed_admin_token(t)
                .await
                .map_err(|e| fail("cannot seed SHARDCRON_ADMIN_TOKEN", e))?;
        }
        let generated = match &opts.admin_password {
            Some(p) => {
                auth.set_config_password(p)
                    .await
                    .map_err(|e| fail("cannot set the console admin password", e))?;
                None
            }
            None => auth
                .bootstrap_password()
                .await
                .map_err(|e| fail("cannot set up the console admin password", e))?,
        };
        Ok((auth, generated))
    }

    /// Whether cookies are marked `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
    }

    /// The value at `key`.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, ApiError> {
        self.registry.get(key).await.map_err(registry_err)
    }

    /// Delete `key`.
    async fn delete(&self, key: &[u8]) -> Result<DeleteResponse, ApiError> {
        self.registry.delete(key).await.map_err(registry_err)
    }

    /// Every key-value under `prefix`.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, ApiError> {
        Ok(self
            .registry
            .range(RangeRequest::prefix(prefix))
            .await
            .map_err(registry_err)?
            .kvs)
    }

    /// Run `txn`; whether its conditions held (and so its changes were made).
    async fn commit(&self, txn: Txn) -> Result<bool, ApiError> {
        Ok(self
            .registry
            .txn(txn)
            .await
            .map_err(registry_err)?
            .succeeded)
    }

    /// Store `rec` at `key` unless the key exists; whether it was stored.
    async fn put_if_absent<T: Serialize>(&self, key: Vec<u8>, rec: &T) -> Result<bool, ApiError> {
        let txn = Txn::new()
            .when(Compare::absent(key.clone()))
            .and_then(TxnOp::put(key, store::encode(rec)));
        self.commit(txn).await
    }

    /// Store `rec` at `key` if the key's mod revision is still `rev` (0: the key
    /// is absent); whether it was stored.
    async fn put_if_revision<T: Serialize>(
        &self,
        key: &[u8],
        rev: Revision,
        rec: &T,
    ) -> Result<bool, ApiError> {
        let txn = Txn::new()
            .when(Compare::mod_revision_is(key, rev))
            .and_then(TxnOp::put(key, store::encode(rec)));
        self.commit(txn).await
    }

    /// Run a password hash or check off the async threads, a few at a time.
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| ApiError::unavailable("password hashing", e))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::unavailable("password hashing", e))
    }

    async fn hash_password(&self, password: &str) -> Result<String, ApiError> {
        let p = password.to_owned();
        self.hashing(move || secret::hash_password(&p))
            .await?
            .map_err(|e| ApiError::unavailable("password hashing", e))
    }

    async fn verify_password(&self, password: &str, phc: &str) -> Result<bool, ApiError> {
        let (p, h) = (password.to_owned(), phc.to_owned());
        self.hashing(move || secret::verify_password(&p, &h)).await
    }

    /// As long as [`Auth::verify_password`], for a user that does not exist.
    async fn verify_unknown_user(&self, password: &str) -> Result<(), ApiError> {
        let p = password.to_owned();
        self.hashing(move || secret::verify_nobody(&p)).await?;
        Ok(())
    }

    /// Store the hash of `SHARDCRON_ADMIN_TOKEN` as the admin token `env-admin`,
    /// unless it is already there.
    async fn seed_admin_token(&self, token: &str) -> Result<(), ApiError> {
        let key = store::token(store::ENV_ADMIN_ID);
        let sha256 = secret::sha256_hex(token);
        for _ in 0..5 {
            let cur = self.get(&key).await?;
            let rev = cur.as_ref().map_or(0, |kv| kv.mod_revision);
            if let Some(rec) = cur.as_ref().and_then(store::decode::<TokenRecord>)
                && rec.role == Role::Admin
                && secret::constant_time_eq(rec.sha256.as_bytes(), sha256.as_bytes())
            {
                return Ok(());
            }
            let rec = TokenRecord {
                id: store::ENV_ADMIN_ID.into(),
                name: "SHARDCRON_ADMIN_TOKEN".into(),
                role: Role::Admin,
                sha256: sha256.clone(),
                created_at: self.clock.wall(),
                created_by: "environment".into(),
            };
            if self.put_if_revision(&key, rev, &rec).await? {
                tracing::info!(
                    "stored the admin API token from SHARDCRON_ADMIN_TOKEN (id env-admin)"
                );
                self.forget_tokens();
                return Ok(());
            }
        }
        Err(ApiError::conflict("the token kept changing concurrently"))
    }

    /// Give the `admin` user the config's password (unless it already has it).
    async fn set_config_password(&self, password: &str) -> Result<(), ApiError> {
        let key = store::user(store::ADMIN_USER);
        let mut done = false;
        for _ in 0..5 {
            let cur = self.get(&key).await?;
            let rev = cur.as_ref().map_or(0, |kv| kv.mod_revision);
            let old = cur.as_ref().and_then(store::decode::<UserRecord>);
            if let Some(u) = &old
                && u.role == Role::Admin
                && self.verify_password(password, &u.password_hash).await?
            {
                done = true;
                break;
            }
            let now = self.clock.wall();
            let rec = UserRecord {
                name: store::ADMIN_USER.into(),
                role: Role::Admin,
                password_hash: self.hash_password(password).await?,
                created_at: old.as_ref().map_or(now, |u| u.created_at),
                password_changed_at: now,
            };
            if self.put_if_revision(&key, rev, &rec).await? {
                tracing::info!("set the password of the console user admin from the config");
                self.revoke_sessions_of(store::ADMIN_USER, None).await?;
                done = true;
                break;
            }
        }
        if !done {
            return Err(ApiError::conflict(
                "the admin user kept changing concurrently",
            ));
        }
        // From now on the namespace never generates a password.
        self.mark_bootstrap("config").await
    }

    /// Write `console/bootstrap` if absent.
    async fn mark_bootstrap(&self, how: &str) -> Result<(), ApiError> {
        let b = Bootstrap {
            at: self.clock.wall(),
            how: how.into(),
        };
        self.put_if_absent(store::bootstrap(), &b).await?;
        Ok(())
    }

    /// At the namespace's first start (no `console/bootstrap`, no `admin` user),
    /// create `admin` with a generated password and return it.
    async fn bootstrap_password(&self) -> Result<Option<String>, ApiError> {
        let marker = self.get(&store::bootstrap()).await?;
        if marker.is_none() {
            let password = secret::new_password();
            let now = self.clock.wall();
            let user = UserRecord {
                name: store::ADMIN_USER.into(),
                role: Role::Admin,
                password_hash: self.hash_password(&password).await?,
                created_at: now,
                password_changed_at: now,
            };
            let b = Bootstrap {
                at: now,
                how: "generated".into(),
            };
            let txn = Txn::new()
                .when(Compare::absent(store::bootstrap()))
                .when(Compare::absent(store::user(store::ADMIN_USER)))
                .and_then(TxnOp::put(store::bootstrap(), store::encode(&b)))
                .and_then(TxnOp::put(
                    store::user(store::ADMIN_USER),
                    store::encode(&user),
                ));
            if self.commit(txn).await? {
                tracing::info!("generated the password of the console user admin");
                return Ok(Some(password));
            }
            // Another node did it, or `admin` existed already.
            self.mark_bootstrap("existing").await?;
        }
        let users = self
            .registry
            .range(RangeRequest {
                prefix: store::USERS.into(),
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(registry_err)?;
        if users.count == 0 {
            tracing::warn!(
                "the namespace has no console user: set the admin password in the config to log in"
            );
        }
        Ok(None)
    }

    /// Who sent the request: its bearer token, else its session cookie (and
    /// then the CSRF header for changes).
    async fn authenticate(&self, parts: &Parts) -> Result<Caller, ApiError> {
        if let Some(token) = bearer_token(&parts.headers) {
            return match self.token_caller(token).await? {
                Some(c) => Ok(c),
                None => Err(ApiError::unauthorized("unknown or revoked API token")),
            };
        }
        let Some(id) = session_cookie(&parts.headers) else {
            return Err(ApiError::unauthorized("log in or send a bearer token"));
        };
        let hash = secret::sha256_hex(&id);
        let Some(caller) = self.session_caller(&hash).await? else {
            return Err(ApiError::unauthorized(
                "the session has ended or is unknown: log in again",
            ));
        };
        if !is_safe(&parts.method) && !csrf_ok(&parts.headers, &id) {
            return Err(csrf_error());
        }
        Ok(caller)
    }

    /// Every token record (cached for [`CACHE_TTL`] unless `fresh`), and whether
    /// it came from the registry just now.
    async fn token_records(&self, fresh: bool) -> Result<(Arc<[TokenRecord]>, bool), ApiError> {
        let now = self.clock.mono();
        if !fresh
            && let Some((at, list)) = &*self.tokens.lock().expect("token cache")
            && now.duration_since(*at) < CACHE_TTL
        {
            return Ok((list.clone(), false));
        }
        let list: Arc<[TokenRecord]> = self
            .range(store::TOKENS)
            .await?
            .iter()
            .filter_map(store::decode::<TokenRecord>)
            .collect();
        *self.tokens.lock().expect("token cache") = Some((now, list.clone()));
        Ok((list, true))
    }

    fn forget_tokens(&self) {
        *self.tokens.lock().expect("token cache") = None;
    }

    /// The caller holding API token `token`, if it is valid. A token missing
    /// from the cached list is looked for in the registry, so that a token
    /// created on another node works at once.
    async fn token_caller(&self, token: &str) -> Result<Option<Caller>, ApiError> {
        let sha256 = secret::sha256_hex(token);
        let find = |list: &[TokenRecord]| {
            let mut found = None;
            // Compare with every record, without stopping at a match.
            for rec in list {
                if secret::constant_time_eq(rec.sha256.as_bytes(), sha256.as_bytes()) {
                    found = Some(Caller {
                        name: format!("token:{}", rec.name),
                        role: rec.role,
                    });
                }
            }
            found
        };
        let (list, fresh) = self.token_records(false).await?;
        match find(&list) {
            None if !fresh => Ok(find(&self.token_records(true).await?.0)),
            found => Ok(found),
        }
    }

    /// The user of the session whose id hashes to `hash`, if it is valid (cached
    /// for [`CACHE_TTL`]).
    async fn session_caller(&self, hash: &str) -> Result<Option<Caller>, ApiError> {
        let now = self.clock.mono();
        if let Some((at, c)) = self.sessions.lock().expect("session cache").get(hash)
            && now.duration_since(*at) < CACHE_TTL
        {
            return Ok(Some(c.clone()));
        }
        let found = self.lookup_session(hash).await?;
        let mut cache = self.sessions.lock().expect("session cache");
        match &found {
            Some(c) => {
                if cache.len() >= SESSION_CACHE_PRUNE {
                    cache.retain(|_, (at, _)| now.duration_since(*at) < CACHE_TTL);
                }
                cache.insert(hash.to_owned(), (now, c.clone()));
            }
            None => {
                cache.remove(hash);
            }
        }
        Ok(found)
    }

    async fn lookup_session(&self, hash: &str) -> Result<Option<Caller>, ApiError> {
        let Some(kv) = self.get(&store::session(hash)).await? else {
            return Ok(None);
        };
        let Some(s) = store::decode::<SessionRecord>(&kv) else {
            return Ok(None);
        };
        if s.expires_at <= self.clock.wall() {
            return Ok(None);
        }
        let Some(ukv) = self.get(&store::user(&s.user)).await? else {
            return Ok(None);
        };
        if ukv.create_revision != s.user_revision {
            return Ok(None);
        }
        Ok(store::decode::<UserRecord>(&ukv).map(|u| Caller {
            name: u.name,
            role: u.role,
        }))
    }

    /// Start a session for `user` (whose key has create revision
    /// `user_revision`); returns its id.
    async fn create_session(&self, user: &str, user_revision: i64) -> Result<String, ApiError> {
        let lease = self
            .registry
            .lease_grant(SESSION_TTL)
            .await
            .map_err(registry_err)?;
        let id = secret::new_session_id();
        let now = self.clock.wall();
        let rec = SessionRecord {
            user: user.to_owned(),
            user_revision,
            created_at: now,
            expires_at: now + chrono::Duration::from_std(SESSION_TTL).expect("12 h fits"),
            lease: lease.id,
        };
        self.registry
            .put(
                &store::session(&secret::sha256_hex(&id)),
                &store::encode(&rec),
                Some(lease.id),
            )
            .await
            .map_err(registry_err)?;
        Ok(id)
    }

    /// End the session whose id hashes to `hash`, everywhere.
    async fn revoke_session(&self, hash: &str) -> Result<(), ApiError> {
        self.sessions.lock().expect("session cache").remove(hash);
        let key = store::session(hash);
        let deleted = self.delete(&key).await?;
        if let Some(rec) = deleted
            .prev
            .as_ref()
            .and_then(store::decode::<SessionRecord>)
        {
            self.revoke_lease(rec.lease).await;
        }
        Ok(())
    }

    async fn revoke_lease(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        match self.registry.lease_revoke(lease).await {
            Ok(()) | Err(RegistryError::LeaseNotFound(_)) => {}
            Err(e) => tracing::warn!(error = %e, "cannot revoke the lease of a session"),
        }
    }

    /// End every session of `user` but the one whose id hashes to `except`.
    async fn revoke_sessions_of(&self, user: &str, except: Option<&str>) -> Result<(), ApiError> {
        self.sessions
            .lock()
            .expect("session cache")
            .retain(|h, (_, c)| c.name != user || Some(h.as_str()) == except);
        for kv in &self.range(store::SESSIONS).await? {
            let hash = String::from_utf8_lossy(&kv.key[store::SESSIONS.len()..]).into_owned();
            if Some(hash.as_str()) == except {
                continue;
            }
            if store::decode::<SessionRecord>(kv).is_some_and(|s| s.user == user) {
                self.revoke_session(&hash).await?;
            }
        }
        Ok(())
    }

    /// The keys a login attempt is rate-limited by.
    fn limit_keys(addr: Option<SocketAddr>, user: &str) -> Vec<String> {
        let mut keys = Vec::with_capacity(2);
        if let Some(a) = addr {
            keys.push(format!("ip:{}", a.ip()));
        }
        if valid_user_name(user) {
            keys.push(format!("user:{user}"));
        } else {
            keys.push("user:".into());
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_and_passwords() {
        assert!(valid_user_name("a"));
        assert!(valid_user_name("Ops.team_1-x"));
        assert!(valid_user_name(&"a".repeat(64)));
        assert!(!valid_user_name(&"a".repeat(65)));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("a/b"));
        assert!(!valid_user_name("a b"));
        assert!(!valid_user_name("é"));
        assert!(password_problem("short").is_some());
        assert!(password_problem("twelve chars").is_none());
        assert!(password_problem(&"x".repeat(MAX_PASSWORD_CHARS + 1)).is_some());
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1; shardcron_session=abc; b=2".parse().unwrap());
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1".parse().unwrap());
        h.append(COOKIE, "shardcron_session=xyz".parse().unwrap());
        assert_eq!(session_cookie(&h).as_deref(), Some("xyz"));
        let mut h = HeaderMap::new();
        h.append(COOKIE, "shardcron_session=".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn bearer_tokens_are_found() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(bearer_token(&with("Bearer sc_abc")), Some("sc_abc"));
        assert_eq!(bearer_token(&with("bearer  sc_abc ")), Some("sc_abc"));
        assert_eq!(bearer_token(&with("Bearer ")), None);
        assert_eq!(bearer_token(&with("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn options_never_show_secrets() {
        let o = AuthOptions {
            admin_password: Some("hunter2hunter2".into()),
            admin_token: Some("tok-tok-tok-tok-tok".into()),
            secure_cookies: false,
        };
        let s = format!("{o:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok-tok"), "{s}");
    }
}
