//! The registry's one error type.

use crate::{LeaseId, Revision};

/// Result alias for registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// What can go wrong talking to a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A watch asked for history that has been compacted away; re-list and
    /// watch again from the listing's revision + 1.
    #[error(
        "revision {requested} has been compacted (compacted up to {compacted}); re-list and watch again"
    )]
    Compacted {
        /// The start revision that was asked for.
        requested: Revision,
        /// The store's compacted revision.
        compacted: Revision,
    },
    /// A compaction at a revision the store has not reached.
    #[error("cannot compact at revision {requested}: the store is only at revision {current}")]
    FutureRevision {
        /// The revision that was asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// The request is malformed (too many operations, empty key, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The backend could not be reached or did not answer in time. The operation
    /// may or may not have been applied.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// Authentication or permission failure.
    #[error("registry refused the credentials: {0}")]
    Auth(String),
    /// Local storage of the embedded registry failed.
    #[error("registry storage error: {0}")]
    Storage(String),
    /// The registry has been closed.
    #[error("registry is closed")]
    Closed,
}

impl RegistryError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }
}
