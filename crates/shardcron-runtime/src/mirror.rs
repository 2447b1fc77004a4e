//! A local mirror of every key under one registry prefix, kept current by a watch.
//!
//! Watches are treated as hints: the mirror lists the prefix, watches from the
//! listing's revision + 1, applies each event only if it is newer than what it
//! holds (duplicates from a resumed etcd watch are dropped by revision), re-lists
//! when the watch reports compaction or ends, and re-lists on a fixed interval
//! anyway (a full reconcile), so that a lost event cannot leave it wrong for long.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use shardcron_registry::{EventKind, KeyValue, RangeRequest, Registry, RegistryError, Revision};
use tokio::sync::watch;

/// Keys read per page while listing.
const PAGE: usize = 5_000;

/// The mirrored keys of one prefix.
#[derive(Debug)]
pub struct Mirror {
    prefix: Vec<u8>,
    map: RwLock<BTreeMap<Vec<u8>, KeyValue>>,
    /// Highest revision reflected in `map`.
    revision: AtomicI64,
    /// How many full listings were done (for tests and metrics).
    relists: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Mirror {
    /// Start mirroring `prefix`; the returned mirror fills in the background.
    pub fn spawn(
        registry: Arc<dyn Registry>,
        prefix: &[u8],
        reconcile_every: Duration,
        stop: watch::Receiver<bool>,
    ) -> Arc<Mirror> {
        let (tx, _) = watch::channel(0);
        let m = Arc::new(Mirror {
            prefix: prefix.to_vec(),
            map: RwLock::new(BTreeMap::new()),
            revision: AtomicI64::new(0),
            relists: AtomicU64::new(0),
            changed: tx,
        });
        tokio::spawn(run(m.clone(), registry, reconcile_every, stop));
        m
    }

    /// A receiver that changes whenever the mirror does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the first listing has completed.
    pub fn is_synced(&self) -> bool {
        self.relists.load(Ordering::SeqCst) > 0
    }

    /// Wait until the first listing has completed.
    pub async fn synced(&self) {
        let mut rx = self.subscribe();
        while !self.is_synced() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The highest revision reflected.
    pub fn revision(&self) -> Revision {
        self.revision.load(Ordering::SeqCst)
    }

    /// Full listings done so far.
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::SeqCst)
    }

    /// Read the mirrored map.
    pub fn read<R>(&self, f: impl FnOnce(&BTreeMap<Vec<u8>, KeyValue>) -> R) -> R {
        let g = match self.map.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&g)
    }

    /// One key, if present.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.read(|m| m.get(key).cloned())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Vec<u8>, KeyValue>> {
        match self.map.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    async fn list(&self, registry: &dyn Registry) -> Result<Revision, RegistryError> {
        let mut fresh = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        let mut first: Option<Revision> = None;
        let mut last;
        loop {
            let resp = registry
                .range(RangeRequest {
                    prefix: self.prefix.clone(),
                    start_after: after.clone(),
                    limit: PAGE,
                    count_only: false,
                })
                .await?;
            last = resp.revision;
            first.get_or_insert(resp.revision);
            after = resp.kvs.last().map(|kv| kv.key.clone());
            for kv in resp.kvs {
                fresh.insert(kv.key.clone(), kv);
            }
            if !resp.more {
                break;
            }
        }
        // Pages may be read at different revisions. The watch starts after the
        // *first* page's revision, so every change after it is replayed; events
        // are applied only when newer than the pair held, so replaying changes
        // that a later page already saw is harmless.
        *self.write() = fresh;
        self.revision.store(last, Ordering::SeqCst);
        self.relists.fetch_add(1, Ordering::SeqCst);
        self.notify();
        Ok(first.unwrap_or(last))
    }

    fn apply(&self, events: Vec<shardcron_registry::WatchEvent>) {
        let mut changed = false;
        {
            let mut map = self.write();
            for e in events {
                let rev = e.revision();
                let current = map.get(&e.kv.key).map_or(0, |kv| kv.mod_revision);
                if rev <= current {
                    continue; // a repeat of something already applied
                }
                match e.kind {
                    EventKind::Put => {
                        map.insert(e.kv.key.clone(), e.kv);
                    }
                    EventKind::Delete => {
                        map.remove(&e.kv.key);
                    }
                }
                changed = true;
                self.revision.fetch_max(rev, Ordering::SeqCst);
            }
        }
        if changed {
            self.notify();
        }
    }
}

async fn run(
    m: Arc<Mirror>,
    registry: Arc<dyn Registry>,
    reconcile_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        let listed = tokio::select! {
            _ = stop.changed() => return,
            r = m.list(registry.as_ref()) => r,
        };
        let rev = match listed {
            Ok(rev) => rev,
            Err(e) => {
                tracing::debug!(prefix = %String::from_utf8_lossy(&m.prefix), error = %e, "listing failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut stream = match registry.watch(&m.prefix, rev + 1).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "watch failed; re-listing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let reconcile = tokio::time::sleep(reconcile_every);
        tokio::pin!(reconcile);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = &mut reconcile => break,
                ev = stream.next() => match ev {
                    Some(Ok(batch)) => m.apply(batch),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch ended; re-listing");
                        break;
                    }
                    None => break,
                },
            }
        }
    }
}
