//! The registry: an etcd-shaped key-value store through which instances coordinate.
//!
//! The [`Registry`] trait mirrors etcd's data model (a global revision; per key a
//! create revision, mod revision, version and lease; leases with a TTL; atomic
//! compare-and-swap transactions; watches from a revision), so that the embedded
//! [`MemoryRegistry`] and the etcd backend behave the same and one conformance kit
//! (module `conformance`, feature `conformance`) tests both.

mod error;
mod keeper;
pub mod memory;
mod model;

#[cfg(feature = "etcd")]
pub mod etcd;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::time::Duration;

pub use error::{RegistryError, Result};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdRegistry, EtcdTls};
pub use keeper::{LeaseEvent, LeaseKeeper};
pub use memory::{MemoryRegistry, MemoryRegistryOptions};
pub use model::*;

#[doc(hidden)]
pub use async_trait::async_trait as __async_trait;

/// The operations shardcron needs from a coordination store.
///
/// Semantics follow etcd v3 exactly where they overlap, and the conformance kit is
/// the executable definition. Keys are byte strings; a backend with a namespace
/// prefix applies it transparently (keys seen by callers never include it).
#[async_trait::async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// Read one key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;

    /// Read keys by prefix, in key order.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Write `value` at `key`, bound to `lease` if given. Returns the new revision.
    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision>;

    /// Delete one key. Returns the revision after the call and the deleted pair.
    async fn delete(&self, key: &[u8]) -> Result<DeleteResponse>;

    /// Apply `then` if every compare holds, else `otherwise`, atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Grant a lease of at least `ttl` (backends may round up to their minimum).
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease>;

    /// Renew a lease once; returns its TTL. `LeaseNotFound` if it has expired or
    /// was revoked.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration>;

    /// Revoke a lease, deleting every key bound to it.
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;

    /// Remaining time to live of a lease, or `None` if it no longer exists.
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<Option<Duration>>;

    /// Watch every key under `prefix`, delivering every event with a revision of at
    /// least `from_revision` (0: from now on), in revision order. A start revision
    /// at or below the compacted revision fails with [`RegistryError::Compacted`],
    /// either from this call or as the first item of the stream.
    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream>;

    /// Drop history up to `revision`; watches starting at or below it then fail.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The current revision of the store.
    async fn current_revision(&self) -> Result<Revision>;
}
