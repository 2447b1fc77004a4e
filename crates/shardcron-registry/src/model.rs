//! The data model shared by every registry backend.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::Result;

/// A revision of the store: increases by one with every write transaction.
pub type Revision = i64;

/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// A key with its value and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation, 1 after creation.
    pub version: i64,
    /// The lease the key is bound to, 0 if none.
    pub lease: LeaseId,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id (never 0).
    pub id: LeaseId,
    /// Its granted TTL.
    pub ttl: Duration,
}

/// A range read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    /// Keys starting with this prefix (empty: every key).
    pub prefix: Vec<u8>,
    /// Only keys strictly after this key (exclusive), for paging: pass the last key
    /// of the previous page.
    pub start_after: Option<Vec<u8>>,
    /// At most this many keys (0: no limit).
    pub limit: usize,
    /// Only count the keys, return none.
    pub count_only: bool,
}

impl RangeRequest {
    /// Every key under `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            prefix: prefix.into(),
            ..Default::default()
        }
    }
}

/// The result of a range read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// How many keys match the prefix (ignoring `limit` and `start_after`).
    pub count: usize,
    /// Whether more keys follow the returned ones.
    pub more: bool,
    /// The store revision the read was served at.
    pub revision: Revision,
}

/// The result of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteResponse {
    /// The store revision after the call.
    pub revision: Revision,
    /// The deleted pair, if the key existed.
    pub prev: Option<KeyValue>,
}

/// The comparison operator of a [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// What a [`Compare`] looks at. A missing key has create revision, mod revision,
/// version and lease 0 and no value; a value compare on a missing key is false
/// (as in etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value, compared as bytes.
    Value(Vec<u8>),
    /// The create revision.
    CreateRevision(Revision),
    /// The mod revision.
    ModRevision(Revision),
    /// The version.
    Version(i64),
    /// The lease id.
    Lease(LeaseId),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// The operator.
    pub op: CompareOp,
    /// The target and the operand.
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist (create revision == 0).
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }
    }

    /// The key exists (create revision > 0).
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Greater,
            target: CompareTarget::CreateRevision(0),
        }
    }

    /// The key's mod revision equals `revision` (0: the key is absent): it has not
    /// changed since it was read.
    pub fn mod_revision_is(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare::new(key, CompareOp::Equal, CompareTarget::ModRevision(revision))
    }

    /// The key's create revision equals `revision` (0: the key is absent): it is
    /// still the same incarnation of the key.
    pub fn create_revision_is(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare::new(
            key,
            CompareOp::Equal,
            CompareTarget::CreateRevision(revision),
        )
    }

    /// A compare with an explicit operator and target.
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            key: key.into(),
            op,
            target,
        }
    }
}

/// One operation in a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write a key, bound to a lease if given.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease to bind it to.
        lease: Option<LeaseId>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Delete every key under a prefix.
    DeletePrefix {
        /// The prefix (must not be empty).
        prefix: Vec<u8>,
    },
    /// Read one key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Read every key under a prefix.
    GetPrefix {
        /// The prefix.
        prefix: Vec<u8>,
    },
}

impl TxnOp {
    /// A put without a lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A put bound to `lease`.
    pub fn put_with_lease(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    /// A delete of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    /// A read of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Get { key: key.into() }
    }
}

/// Most operations one transaction may hold (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// An atomic compare-and-swap transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Operations applied when every compare holds.
    pub then: Vec<TxnOp>,
    /// Operations applied otherwise.
    pub otherwise: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a condition.
    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }

    /// Add an operation to the success branch.
    pub fn and_then(mut self, op: TxnOp) -> Self {
        self.then.push(op);
        self
    }

    /// Add an operation to the failure branch.
    pub fn or_else(mut self, op: TxnOp) -> Self {
        self.otherwise.push(op);
        self
    }

    /// Refuse transactions etcd would refuse: more than [`MAX_TXN_OPS`] operations
    /// in a branch (or compares), empty keys, puts with lease 0.
    pub fn validate(&self) -> Result<()> {
        use crate::RegistryError::InvalidRequest;
        for (what, n) in [
            ("compares", self.compares.len()),
            ("success operations", self.then.len()),
            ("failure operations", self.otherwise.len()),
        ] {
            if n > MAX_TXN_OPS {
                return Err(InvalidRequest(format!(
                    "transaction has {n} {what}; at most {MAX_TXN_OPS} are allowed"
                )));
            }
        }
        for c in &self.compares {
            if c.key.is_empty() {
                return Err(InvalidRequest("compare on an empty key".into()));
            }
        }
        for branch in [&self.then, &self.otherwise] {
            check_duplicate_writes(branch)?;
        }
        for op in self.then.iter().chain(&self.otherwise) {
            match op {
                TxnOp::Put { key, lease, .. } => {
                    if key.is_empty() {
                        return Err(InvalidRequest("put of an empty key".into()));
                    }
                    if *lease == Some(0) {
                        return Err(InvalidRequest(
                            "put with lease 0; use None for no lease".into(),
                        ));
                    }
                }
                TxnOp::Delete { key } | TxnOp::Get { key } if key.is_empty() => {
                    return Err(InvalidRequest("operation on an empty key".into()));
                }
                TxnOp::DeletePrefix { prefix } if prefix.is_empty() => {
                    return Err(InvalidRequest(
                        "delete of the empty prefix (every key)".into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// etcd refuses a branch that writes the same key twice ("duplicate key given in txn
/// request"), including a put under a deleted prefix; so do we, on every backend.
fn check_duplicate_writes(ops: &[TxnOp]) -> Result<()> {
    let mut puts: Vec<&[u8]> = Vec::new();
    let mut deletes: Vec<(&[u8], bool)> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key, .. } => puts.push(key),
            TxnOp::Delete { key } => deletes.push((key, false)),
            TxnOp::DeletePrefix { prefix } => deletes.push((prefix, true)),
            _ => {}
        }
    }
    let mut sorted = puts.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(crate::RegistryError::InvalidRequest(
            "duplicate key given in txn request: a branch puts the same key twice".into(),
        ));
    }
    for key in &puts {
        for (d, is_prefix) in &deletes {
            if (*is_prefix && key.starts_with(d)) || (!*is_prefix && key == d) {
                return Err(crate::RegistryError::InvalidRequest(
                    "duplicate key given in txn request: a branch puts and deletes the same key"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

/// The result of one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// A put happened; the previous pair if any.
    Put {
        /// The pair before the put.
        prev: Option<KeyValue>,
    },
    /// Deletes happened; the deleted pairs.
    Delete {
        /// The pairs deleted.
        deleted: Vec<KeyValue>,
    },
    /// A read; the pairs found.
    Get {
        /// The pairs, in key order.
        kvs: Vec<KeyValue>,
    },
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (the `then` branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction. When the branch that ran wrote
    /// anything, this is the revision of those writes: the fencing token.
    pub revision: Revision,
    /// One response per operation of the branch that ran.
    pub responses: Vec<OpResponse>,
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A key was written.
    Put,
    /// A key was deleted (explicitly or by lease expiry).
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The pair after the event. For a delete (as in etcd): the key, an empty
    /// value, `mod_revision` set to the deletion's revision, and create revision,
    /// version and lease 0.
    pub kv: KeyValue,
    /// The pair before the event, if the key existed.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the event.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The events of one revision (or of several consecutive revisions), in order: the
/// events of one transaction come in operation order (a delete-prefix in key order),
/// and the events of one revision are never split across batches.
pub type WatchBatch = Vec<WatchEvent>;

/// A stream of watch events. Dropping it cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::UnboundedReceiver<Result<WatchBatch>>,
}

impl WatchStream {
    /// A stream fed by `rx` (for backends).
    pub fn from_receiver(rx: mpsc::UnboundedReceiver<Result<WatchBatch>>) -> Self {
        WatchStream { rx }
    }

    /// The next batch of events; `None` when the watch has ended (the registry was
    /// closed). An error ends the watch too: the caller re-lists and re-watches.
    pub async fn next(&mut self) -> Option<Result<WatchBatch>> {
        self.rx.recv().await
    }
}
