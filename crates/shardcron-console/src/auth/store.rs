//! What auth keeps in the registry, under `console/` (see the key table of
//! `shardcron_runtime::keys`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `console/bootstrap` | [`Bootstrap`]: how the first login was set up | — |
//! | `console/users/{name}` | [`UserRecord`] (argon2id PHC string) | — |
//! | `console/tokens/{id}` | [`TokenRecord`] (SHA-256 of the token) | — |
//! | `console/sessions/{sha256 of the session id}` | [`SessionRecord`] | the session's |
//!
//! Values are JSON. A value that does not parse (tampered, or written by a newer
//! version) is treated as absent and logged without its content.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shardcron_registry::{KeyValue, LeaseId, Revision};

use super::Role;

/// Prefix of the user keys.
pub(crate) const USERS: &str = "console/users/";
/// Prefix of the API token keys.
pub(crate) const TOKENS: &str = "console/tokens/";
/// Prefix of the session keys.
pub(crate) const SESSIONS: &str = "console/sessions/";

/// The id of the token seeded from `SHARDCRON_ADMIN_TOKEN`.
pub(crate) const ENV_ADMIN_ID: &str = "env-admin";
/// The user whose password is generated or set from the config.
pub(crate) const ADMIN_USER: &str = "admin";

/// `console/bootstrap`
pub(crate) fn bootstrap() -> Vec<u8> {
    b"console/bootstrap".to_vec()
}

/// `console/users/{name}`
pub(crate) fn user(name: &str) -> Vec<u8> {
    format!("{USERS}{name}").into_bytes()
}

/// `console/tokens/{id}`
pub(crate) fn token(id: &str) -> Vec<u8> {
    format!("{TOKENS}{id}").into_bytes()
}

/// `console/sessions/{hash}`
pub(crate) fn session(hash: &str) -> Vec<u8> {
    format!("{SESSIONS}{hash}").into_bytes()
}

/// How the namespace got its first login (written once, create-if-absent).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    /// When.
    pub(crate) at: DateTime<Utc>,
    /// `generated` (a password printed once), `config` (the config's password)
    /// or `existing` (the admin user was already there).
    pub(crate) how: String,
}

/// A console user.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct UserRecord {
    /// The name (also the last key segment).
    pub(crate) name: String,
    /// The role.
    pub(crate) role: Role,
    /// argon2id, PHC string.
    pub(crate) password_hash: String,
    /// When the user was created.
    pub(crate) created_at: DateTime<Utc>,
    /// When the password was last set.
    pub(crate) password_changed_at: DateTime<Utc>,
}

/// An API token, without the token.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct TokenRecord {
    /// Its id (also the last key segment).
    pub(crate) id: String,
    /// A name for people.
    pub(crate) name: String,
    /// The role it grants.
    pub(crate) role: Role,
    /// SHA-256 of the token, lowercase hex.
    pub(crate) sha256: String,
    /// When it was created.
    pub(crate) created_at: DateTime<Utc>,
    /// Who created it.
    pub(crate) created_by: String,
}

/// A login session (the key is the hash of its id; the id is only in the cookie).
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct SessionRecord {
    /// The user.
    pub(crate) user: String,
    /// The create revision of the user's key at login: a user deleted and
    /// created again does not inherit the sessions of the old one.
    pub(crate) user_revision: Revision,
    /// When it was created.
    pub(crate) created_at: DateTime<Utc>,
    /// When it ends (the lease ends it too).
    pub(crate) expires_at: DateTime<Utc>,
    /// Its lease.
    pub(crate) lease: LeaseId,
}

/// JSON of a record.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("auth records always serialize")
}

/// Parse a stored record; `None` (with a warning naming the key only) if it does
/// not parse.
pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(
                key = %String::from_utf8_lossy(&kv.key),
                line = e.line(),
                column = e.column(),
                "ignoring an unreadable console record"
            );
            None
        }
    }
}
