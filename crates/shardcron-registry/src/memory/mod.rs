//! The embedded registry: the whole [`Registry`] model in process memory, with
//! optional persistence to a data dir (the file format is described in `memory/wal.rs`).
//!
//! Every operation takes one lock, applies itself to the store state machine
//! (`memory/store.rs`) and, when persistence is on, waits until its revision is on disk before
//! answering (group commit: one sync covers every write that queued behind it).
//! Watch events and reads may show a write a moment before it is durable; that is
//! safe because anything that acts on it with an effect outside the process (a
//! claim, a fencing token) is itself a later write and waits for the disk, and the
//! log is written in revision order.
//!
//! Lease deadlines are kept on the [`shardcron_core::Clock`]'s monotonic time. Expired leases are
//! revoked before every operation and by a background timer, so a test that
//! advances a [`shardcron_core::ManualClock`] sees expiry on its next call.

mod store;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use shardcron_core::clock::{SharedClock, SystemClock};

use crate::{
    DeleteResponse, KeyValue, Lease, LeaseId, RangeRequest, RangeResponse, Registry, RegistryError,
    Result, Revision, Txn, TxnResponse, WatchStream,
};
use store::{Committed, Store};
use wal::Wal;

/// How to build a [`MemoryRegistry`].
#[derive(Debug, Clone)]
pub struct MemoryRegistryOptions {
    /// Where time comes from (lease deadlines).
    pub clock: SharedClock,
    /// Persist to this directory (snapshot + write-ahead log); `None`: memory only.
    pub data_dir: Option<PathBuf>,
    /// Revisions of history kept for watches that start in the past; older
    /// history is compacted automatically.
    pub history_retention: usize,
    /// Sync the log to disk before acknowledging a write (default true). Turning it
    /// off trades durability across a machine crash for speed; a process crash
    /// still loses nothing that was written to the OS.
    pub sync: bool,
    /// Log size after which it is folded into a new snapshot.
    pub snapshot_threshold_bytes: u64,
    /// How often the background timer looks for expired leases.
    pub expiry_tick: Duration,
}

impl Default for MemoryRegistryOptions {
    fn default() -> Self {
        MemoryRegistryOptions {
            clock: SystemClock::shared(),
            data_dir: None,
            history_retention: 100_000,
            sync: true,
            snapshot_threshold_bytes: 64 << 20,
            expiry_tick: Duration::from_millis(50),
        }
    }
}

#[derive(Debug)]
struct Locked {
    store: Store,
    /// Encoded log records not yet handed to the log writer.
    pending: Vec<u8>,
    /// Highest revision in `pending`.
    pending_upto: Revision,
}

#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    state: Mutex<Locked>,
    wal: Option<tokio::sync::Mutex<Wal>>,
    closed: AtomicBool,
    /// Bytes of torn or corrupt log tail cut off when the data dir was opened.
    torn_bytes: u64,
    /// Set when the log could not be written: the in-memory state may then be ahead
    /// of the disk, so every later operation fails rather than diverge further.
    failed: AtomicBool,
}

/// The embedded registry. Cheap to clone; clones share one store.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

impl MemoryRegistry {
    /// A registry in memory only, on the system clock. Inside a tokio runtime a
    /// background timer expires leases; outside one, expiry happens on each call.
    pub fn new() -> MemoryRegistry {
        Self::build(MemoryRegistryOptions::default(), None, Vec::new(), 0)
    }

    /// A registry in memory only, on `clock`.
    pub fn with_clock(clock: SharedClock) -> MemoryRegistry {
        Self::build(
            MemoryRegistryOptions {
                clock,
                ..Default::default()
            },
            None,
            Vec::new(),
            0,
        )
    }

    /// A registry persisted under `dir` with default options.
    pub fn open(dir: &Path) -> Result<MemoryRegistry> {
        Self::with_options(MemoryRegistryOptions {
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        })
    }

    /// A registry built from `options`, recovering persisted state if any.
    pub fn with_options(options: MemoryRegistryOptions) -> Result<MemoryRegistry> {
        match &options.data_dir {
            None => Ok(Self::build(options, None, Vec::new(), 0)),
            Some(dir) => {
                let (wal, recovered) =
                    Wal::open(dir, options.sync, options.snapshot_threshold_bytes)?;
                Ok(Self::build(
                    options,
                    Some(wal),
                    recovered.commits,
                    recovered.truncated_bytes,
                ))
            }
        }
    }

    fn build(
        options: MemoryRegistryOptions,
        wal: Option<Wal>,
        commits: Vec<Committed>,
        torn_bytes: u64,
    ) -> Self {
        let seed = rand::random::<i64>();
        let mut store = Store::new(0, options.history_retention, seed);
        for c in &commits {
            store.restore(c);
        }
        let inner = Arc::new(Inner {
            clock: options.clock,
            state: Mutex::new(Locked {
                store,
                pending: Vec::new(),
                pending_upto: 0,
            }),
            wal: wal.map(tokio::sync::Mutex::new),
            closed: AtomicBool::new(false),
            torn_bytes,
            failed: AtomicBool::new(false),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(expiry_timer(Arc::downgrade(&inner), options.expiry_tick));
        }
        MemoryRegistry { inner }
    }

    /// Stop serving: later calls fail with [`RegistryError::Closed`], watches end,
    /// and everything acknowledged is on disk.
    pub async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let upto = {
            let mut st = self.inner.lock();
            st.store.close_watchers();
            st.pending_upto
        };
        self.inner.make_durable(Some(upto)).await
    }

    /// Bytes of a torn or corrupt log tail that recovery cut off when the data dir
    /// was opened (writes that were never acknowledged); 0 after a clean stop.
    pub fn recovered_torn_bytes(&self) -> u64 {
        self.inner.torn_bytes
    }

    /// Revoke every lease whose deadline has passed now (the timer does this too).
    pub async fn expire_leases(&self) -> Result<()> {
        let rev = self.inner.expire()?;
        self.inner.make_durable(rev).await
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

async fn expiry_timer(inner: Weak<Inner>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(rev) = inner.expire() {
            // A failure here marks the registry failed; callers will see it.
            let _ = inner.make_durable(rev).await;
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Locked> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RegistryError::Closed);
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(RegistryError::Storage(
                "the write-ahead log could not be written; restart to recover".into(),
            ));
        }
        Ok(())
    }

    /// Run `f` on the store under the lock, after expiring due leases, queueing
    /// whatever it commits for the log. Returns `f`'s value and the revision to
    /// wait for before answering.
    fn apply<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<(T, Option<Committed>)>,
    ) -> Result<(T, Option<Revision>)> {
        self.check_open()?;
        let now = self.clock.mono();
        let mut st = self.lock();
        let expired = st.store.expire_leases(now);
        let mut wait = None;
        for c in &expired {
            wait = Some(queue(&mut st, c, self.wal.is_some()));
        }
        let (value, committed) = f(&mut st.store)?;
        if let Some(c) = committed {
            wait = Some(queue(&mut st, &c, self.wal.is_some()));
        }
        Ok((value, wait))
    }

    fn expire(&self) -> Result<Option<Revision>> {
        self.apply(|_| Ok(((), None))).map(|(_, rev)| rev)
    }

    /// Wait until every record up to `rev` is on disk (a no-op without persistence).
    async fn make_durable(&self, rev: Option<Revision>) -> Result<()> {
        let (Some(wal), Some(rev)) = (&self.wal, rev) else {
            return Ok(());
        };
        let mut w = wal.lock().await;
        if w.durable >= rev {
            return Ok(());
        }
        let (bytes, upto) = {
            let mut st = self.lock();
            (std::mem::take(&mut st.pending), st.pending_upto)
        };
        if let Err(e) = w.append(bytes, upto).await {
            self.failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
        if w.wants_snapshot() {
            let st = self.lock();
            // Everything pending is at or below the snapshot revision: fold it in.
            let rev = st.store.revision();
            let res = w.snapshot(rev, st.store.persistent_pairs());
            drop(st);
            if let Err(e) = res {
                self.failed.store(true, Ordering::SeqCst);
                return Err(e);
            }
            let mut st = self.lock();
            if st.pending_upto <= rev {
                st.pending.clear();
            }
        }
        Ok(())
    }
}

fn queue(st: &mut Locked, c: &Committed, persist: bool) -> Revision {
    if persist {
        wal::encode_record(c, &mut st.pending);
        st.pending_upto = c.revision;
    }
    c.revision
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Anything still queued belongs to calls whose futures were dropped before
        // they were answered; write it anyway so the revision counter never goes back.
        let pending = std::mem::take(&mut self.lock().pending);
        if let (Some(wal), false) = (&self.wal, pending.is_empty())
            && let Ok(mut w) = wal.try_lock()
        {
            let _ = w.append_blocking(&pending);
        }
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let (v, rev) = self.inner.apply(|s| Ok((s.get(key), None)))?;
        self.inner.make_durable(rev).await?;
        Ok(v)
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let (v, rev) = self.inner.apply(|s| Ok((s.range(&req), None)))?;
        self.inner.make_durable(rev).await?;
        Ok(v)
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        let (v, rev) = self.inner.apply(|s| s.put(key, value, lease))?;
        self.inner.make_durable(rev).await?;
        Ok(v)
    }

    async fn delete(&self, key: &[u8]) -> Result<DeleteResponse> {
        let (v, rev) = self.inner.apply(|s| Ok(s.delete(key)))?;
        self.inner.make_durable(rev).await?;
        Ok(v)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let (v, rev) = self.inner.apply(|s| s.txn(&txn))?;
        self.inner.make_durable(rev).await?;
        Ok(v)
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease> {
        let now = self.inner.clock.mono();
        let (id, rev) = self
            .inner
            .apply(|s| s.lease_grant(ttl, now).map(|id| (id, None)))?;
        self.inner.make_durable(rev).await?;
        Ok(Lease { id, ttl })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        let now = self.inner.clock.mono();
        let (ttl, rev) = self
            .inner
            .apply(|s| s.lease_keep_alive(id, now).map(|t| (t, None)))?;
        self.inner.make_durable(rev).await?;
        Ok(ttl)
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        let ((), rev) = self.inner.apply(|s| s.lease_revoke(id).map(|c| ((), c)))?;
        self.inner.make_durable(rev).await
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<Option<Duration>> {
        let now = self.inner.clock.mono();
        let (ttl, rev) = self
            .inner
            .apply(|s| Ok((s.lease_time_to_live(id, now), None)))?;
        self.inner.make_durable(rev).await?;
        Ok(ttl)
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream> {
        let (rx, rev) = self
            .inner
            .apply(|s| s.watch(prefix, from_revision).map(|rx| (rx, None)))?;
        self.inner.make_durable(rev).await?;
        Ok(WatchStream::from_receiver(rx))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let ((), rev) = self
            .inner
            .apply(|s| s.compact(revision).map(|()| ((), None)))?;
        self.inner.make_durable(rev).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        let (v, rev) = self.inner.apply(|s| Ok((s.revision(), None)))?;
        self.inner.make_durable(rev).await?;
        Ok(v)
    }
}
