//! The state machine of the embedded registry: keys, leases, history and watchers,
//! with no I/O. [`super::MemoryRegistry`] wraps it in a lock and adds persistence.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use shardcron_core::MonoTime;
use tokio::sync::mpsc;

use crate::{
    Compare, CompareOp, CompareTarget, DeleteResponse, EventKind, KeyValue, LeaseId, OpResponse,
    RangeRequest, RangeResponse, RegistryError, Result, Revision, Txn, TxnOp, TxnResponse,
    WatchBatch, WatchEvent,
};

/// A change to persist, produced by every committed revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// A key that is not lease-bound now has this state.
    Put(KeyValue),
    /// The key is gone, or is lease-bound (lease-bound keys are not persisted).
    Delete(Vec<u8>),
}

/// One committed revision, as written to the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) revision: Revision,
    pub(crate) mutations: Vec<Mutation>,
}

#[derive(Debug)]
struct LeaseState {
    ttl: Duration,
    deadline: MonoTime,
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Debug)]
struct Watcher {
    prefix: Vec<u8>,
    /// Events below this revision are not for this watcher (it asked to start later).
    from: Revision,
    tx: mpsc::UnboundedSender<Result<WatchBatch>>,
}

/// Keys, leases, history and watchers.
#[derive(Debug)]
pub(crate) struct Store {
    revision: Revision,
    compacted: Revision,
    kv: BTreeMap<Vec<u8>, KeyValue>,
    leases: HashMap<LeaseId, LeaseState>,
    deadlines: BTreeSet<(MonoTime, LeaseId)>,
    history: VecDeque<WatchEvent>,
    history_retention: i64,
    watchers: Vec<Watcher>,
    next_lease: LeaseId,
}

/// Whether `key` lies under `prefix` (the empty prefix covers every key).
fn under(key: &[u8], prefix: &[u8]) -> bool {
    key.starts_with(prefix)
}

impl Store {
    /// An empty store at `revision` (whose history before it is unavailable).
    pub(crate) fn new(revision: Revision, history_retention: usize, lease_seed: i64) -> Self {
        Store {
            revision,
            compacted: revision,
            kv: BTreeMap::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            history: VecDeque::new(),
            history_retention: i64::try_from(history_retention.max(1)).unwrap_or(i64::MAX),
            watchers: Vec::new(),
            // Lease ids are never reused across restarts: a fresh random 62-bit base.
            next_lease: (lease_seed & 0x3fff_ffff_ffff_0000).max(1 << 16),
        }
    }

    /// Restore persisted pairs (from a snapshot or the log) without events.
    pub(crate) fn restore(&mut self, c: &Committed) {
        for m in &c.mutations {
            match m {
                Mutation::Put(kv) => {
                    self.kv.insert(kv.key.clone(), kv.clone());
                }
                Mutation::Delete(key) => {
                    self.kv.remove(key);
                }
            }
        }
        self.revision = self.revision.max(c.revision);
        self.compacted = self.revision;
    }

    pub(crate) fn revision(&self) -> Revision {
        self.revision
    }

    /// Every pair that survives a restart (not lease-bound), for a snapshot.
    pub(crate) fn persistent_pairs(&self) -> impl Iterator<Item = &KeyValue> {
        self.kv.values().filter(|kv| kv.lease == 0)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.kv.get(key).cloned()
    }

    fn prefix_iter<'a>(
        &'a self,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = &'a KeyValue> + 'a {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        self.kv
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| under(k, prefix))
            .map(|(_, v)| v)
    }

    pub(crate) fn range(&self, req: &RangeRequest) -> RangeResponse {
        let count = self.prefix_iter(&req.prefix, None).count();
        let mut kvs = Vec::new();
        let mut more = false;
        if !req.count_only {
            for kv in self.prefix_iter(&req.prefix, req.start_after.as_deref()) {
                if req.limit > 0 && kvs.len() == req.limit {
                    more = true;
                    break;
                }
                kvs.push(kv.clone());
            }
        }
        RangeResponse {
            kvs,
            count,
            more,
            revision: self.revision,
        }
    }

    fn compare_holds(&self, c: &Compare) -> bool {
        let kv = self.kv.get(&c.key);
        let ord = match (&c.target, kv) {
            // etcd: a value compare against a missing key is false whatever the op.
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::Lease(l), kv) => kv.map_or(0, |kv| kv.lease).cmp(l),
        };
        match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Greater => ord.is_gt(),
            CompareOp::Less => ord.is_lt(),
        }
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<()> {
        match lease {
            Some(id) if !self.leases.contains_key(&id) => Err(RegistryError::LeaseNotFound(id)),
            _ => Ok(()),
        }
    }

    /// Write `key` at revision `rev` (the caller bumps the revision once per commit).
    fn apply_put(
        &mut self,
        rev: Revision,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
        events: &mut Vec<WatchEvent>,
    ) -> Option<KeyValue> {
        let lease = lease.unwrap_or(0);
        let prev = self.kv.get(key).cloned();
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        if let Some(p) = &prev
            && p.lease != 0
            && p.lease != lease
            && let Some(l) = self.leases.get_mut(&p.lease)
        {
            l.keys.remove(key);
        }
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(key.to_vec());
        }
        self.kv.insert(key.to_vec(), kv.clone());
        events.push(WatchEvent {
            kind: EventKind::Put,
            kv,
            prev: prev.clone(),
        });
        prev
    }

    fn apply_delete(
        &mut self,
        rev: Revision,
        key: &[u8],
        events: &mut Vec<WatchEvent>,
    ) -> Option<KeyValue> {
        let prev = self.kv.remove(key)?;
        if prev.lease != 0
            && let Some(l) = self.leases.get_mut(&prev.lease)
        {
            l.keys.remove(key);
        }
        events.push(WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            },
            prev: Some(prev.clone()),
        });
        Some(prev)
    }

    /// Record the events of revision `rev` (if any): history, watchers, and the
    /// mutations to persist.
    fn finish(&mut self, rev: Revision, events: Vec<WatchEvent>) -> Option<Committed> {
        if events.is_empty() {
            return None;
        }
        self.revision = rev;
        let mut mutations = Vec::with_capacity(events.len());
        for e in &events {
            let key = &e.kv.key;
            // Persist the key's final state at this revision, once per key.
            if mutations.iter().any(|m| match m {
                Mutation::Put(kv) => &kv.key == key,
                Mutation::Delete(k) => k == key,
            }) {
                continue;
            }
            match self.kv.get(key) {
                Some(kv) if kv.lease == 0 => mutations.push(Mutation::Put(kv.clone())),
                _ => mutations.push(Mutation::Delete(key.clone())),
            }
        }
        self.watchers.retain(|w| {
            let batch: WatchBatch = events
                .iter()
                .filter(|e| e.revision() >= w.from && under(&e.kv.key, &w.prefix))
                .cloned()
                .collect();
            batch.is_empty() || w.tx.send(Ok(batch)).is_ok()
        });
        self.history.extend(events);
        let floor = self.revision - self.history_retention;
        if floor > self.compacted {
            self.compact_history(floor);
        }
        Some(Committed {
            revision: rev,
            mutations,
        })
    }

    fn compact_history(&mut self, revision: Revision) {
        while self
            .history
            .front()
            .is_some_and(|e| e.revision() <= revision)
        {
            self.history.pop_front();
        }
        self.compacted = revision;
    }

    pub(crate) fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<(Revision, Option<Committed>)> {
        if key.is_empty() {
            return Err(RegistryError::InvalidRequest("put of an empty key".into()));
        }
        if lease == Some(0) {
            return Err(RegistryError::InvalidRequest(
                "put with lease 0; use None for no lease".into(),
            ));
        }
        self.check_lease(lease)?;
        let rev = self.revision + 1;
        let mut events = Vec::with_capacity(1);
        self.apply_put(rev, key, value, lease, &mut events);
        let c = self.finish(rev, events);
        Ok((rev, c))
    }

    pub(crate) fn delete(&mut self, key: &[u8]) -> (DeleteResponse, Option<Committed>) {
        let rev = self.revision + 1;
        let mut events = Vec::with_capacity(1);
        let prev = self.apply_delete(rev, key, &mut events);
        let c = self.finish(rev, events);
        (
            DeleteResponse {
                revision: self.revision,
                prev,
            },
            c,
        )
    }

    pub(crate) fn txn(&mut self, txn: &Txn) -> Result<(TxnResponse, Option<Committed>)> {
        txn.validate()?;
        let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded { &txn.then } else { &txn.otherwise };
        // Check every lease first so that a failing op leaves nothing half-applied.
        for op in ops {
            if let TxnOp::Put { lease, .. } = op {
                self.check_lease(*lease)?;
            }
        }
        let rev = self.revision + 1;
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op {
                TxnOp::Put { key, value, lease } => OpResponse::Put {
                    prev: self.apply_put(rev, key, value, *lease, &mut events),
                },
                TxnOp::Delete { key } => OpResponse::Delete {
                    deleted: self
                        .apply_delete(rev, key, &mut events)
                        .into_iter()
                        .collect(),
                },
                TxnOp::DeletePrefix { prefix } => {
                    let keys: Vec<Vec<u8>> = self
                        .prefix_iter(prefix, None)
                        .map(|kv| kv.key.clone())
                        .collect();
                    let deleted = keys
                        .iter()
                        .filter_map(|k| self.apply_delete(rev, k, &mut events))
                        .collect();
                    OpResponse::Delete { deleted }
                }
                TxnOp::Get { key } => OpResponse::Get {
                    kvs: self.kv.get(key).cloned().into_iter().collect(),
                },
                TxnOp::GetPrefix { prefix } => OpResponse::Get {
                    kvs: self.prefix_iter(prefix, None).cloned().collect(),
                },
            };
            responses.push(resp);
        }
        let c = self.finish(rev, events);
        Ok((
            TxnResponse {
                succeeded,
                revision: self.revision,
                responses,
            },
            c,
        ))
    }

    pub(crate) fn lease_grant(&mut self, ttl: Duration, now: MonoTime) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(RegistryError::InvalidRequest(
                "lease TTL must be greater than zero".into(),
            ));
        }
        self.next_lease += 1;
        let id = self.next_lease;
        let deadline = now + ttl;
        self.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        Ok(id)
    }

    pub(crate) fn lease_keep_alive(&mut self, id: LeaseId, now: MonoTime) -> Result<Duration> {
        let l = self
            .leases
            .get_mut(&id)
            .ok_or(RegistryError::LeaseNotFound(id))?;
        self.deadlines.remove(&(l.deadline, id));
        l.deadline = now + l.ttl;
        self.deadlines.insert((l.deadline, id));
        Ok(l.ttl)
    }

    pub(crate) fn lease_time_to_live(&self, id: LeaseId, now: MonoTime) -> Option<Duration> {
        self.leases.get(&id).map(|l| l.deadline.duration_since(now))
    }

    /// Remove a lease and its keys (one revision for all of them).
    pub(crate) fn lease_revoke(&mut self, id: LeaseId) -> Result<Option<Committed>> {
        let l = self
            .leases
            .remove(&id)
            .ok_or(RegistryError::LeaseNotFound(id))?;
        self.deadlines.remove(&(l.deadline, id));
        let rev = self.revision + 1;
        let mut events = Vec::with_capacity(l.keys.len());
        for key in &l.keys {
            self.apply_delete(rev, key, &mut events);
        }
        Ok(self.finish(rev, events))
    }

    /// Revoke every lease whose deadline has passed.
    pub(crate) fn expire_leases(&mut self, now: MonoTime) -> Vec<Committed> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            match self.lease_revoke(id) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                // The deadline index and the lease map disagree: drop the stale entry.
                Err(_) => {
                    self.deadlines.remove(&(deadline, id));
                }
            }
        }
        out
    }

    pub(crate) fn watch(
        &mut self,
        prefix: &[u8],
        from: Revision,
    ) -> Result<mpsc::UnboundedReceiver<Result<WatchBatch>>> {
        if from != 0 && from <= self.compacted {
            return Err(RegistryError::Compacted {
                requested: from,
                compacted: self.compacted,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if from != 0 {
            // Replay history one revision per batch, as live delivery does.
            let mut batch: WatchBatch = Vec::new();
            for e in self
                .history
                .iter()
                .filter(|e| e.revision() >= from && under(&e.kv.key, prefix))
            {
                if batch.last().is_some_and(|b| b.revision() != e.revision()) {
                    let _ = tx.send(Ok(std::mem::take(&mut batch)));
                }
                batch.push(e.clone());
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch));
            }
        }
        self.watchers.push(Watcher {
            prefix: prefix.to_vec(),
            from,
            tx,
        });
        Ok(rx)
    }

    pub(crate) fn compact(&mut self, revision: Revision) -> Result<()> {
        if revision > self.revision {
            return Err(RegistryError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision <= self.compacted {
            return Err(RegistryError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        self.compact_history(revision);
        Ok(())
    }

    /// End every watch (their streams yield `None`).
    pub(crate) fn close_watchers(&mut self) {
        self.watchers.clear();
    }
}
