//! The runtime's one error type.

use shardcron_registry::RegistryError;

/// Result alias for the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A registry value could not be decoded.
    #[error("registry value at {key:?} is malformed: {problem}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The namespace was written by a newer, incompatible version.
    #[error(
        "the namespace uses key schema {found_major}.{found_minor}, newer than this \
         version understands ({known_major}.x); upgrade shardcron"
    )]
    SchemaTooNew {
        /// Major version found.
        found_major: u32,
        /// Minor version found.
        found_minor: u32,
        /// Major version this build knows.
        known_major: u32,
    },
    /// Invalid input (a job spec, an operation on something that does not exist).
    #[error("{0}")]
    Invalid(String),
    /// Something asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A concurrent change won; the caller may retry with fresh state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The instance is shutting down.
    #[error("the instance is shutting down")]
    ShuttingDown,
}
