//! The history store's one error type.
//!
//! Every message that involves a database names its URL with the password
//! masked (see [`mask_url`](crate::mask_url)); causes reported by the driver are
//! scrubbed of the password too, so an error can be logged as it is.

/// Result alias for history store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong with the history store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The URL cannot be used: unknown scheme, malformed, missing path. Fix the
    /// configuration; retrying does not help.
    #[error("bad history store URL {url}: {reason}")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be reached or refused the login (wrong password,
    /// unknown database, server down, timeout).
    #[error("cannot connect to history store {url}: {cause}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// The driver's explanation.
        cause: String,
    },
    /// Creating or upgrading the schema failed.
    #[error("history store {url}: schema migration failed: {cause}")]
    Migrate {
        /// The URL, password masked.
        url: String,
        /// The driver's explanation.
        cause: String,
    },
    /// A statement failed. `transient` says whether the same statement may succeed
    /// later (lost connection, timeout, lock contention) or not (a data error).
    #[error("history store {url}: {op} failed: {cause}")]
    Database {
        /// The URL, password masked.
        url: String,
        /// What was being done.
        op: &'static str,
        /// The driver's explanation.
        cause: String,
        /// Whether retrying may succeed.
        transient: bool,
    },
    /// The local spool (under the data dir) could not be read or written.
    #[error("history spool {path}: {cause}")]
    Spool {
        /// The spool file or directory.
        path: String,
        /// What went wrong.
        cause: String,
    },
    /// An event was refused before it was queued (for example an empty or too
    /// long execution id). Nothing was recorded.
    #[error("invalid history event: {0}")]
    InvalidEvent(String),
    /// A wait (flush, shutdown) ran out of time; what was not written stays queued
    /// or spooled.
    #[error("history writer: {0}")]
    Timeout(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database { transient, .. } => *transient,
            StoreError::Connect { .. } | StoreError::Timeout(_) => true,
            _ => false,
        }
    }
}
