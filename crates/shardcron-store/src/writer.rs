//! [`HistoryWriter`]: records history without ever making a fire wait.
//!
//! `record` validates the event and pushes it on an in-memory queue (a mutex held
//! for a push). One background task drains the queue into the database in
//! batches, each batch one transaction. When the database fails, times out or
//! falls behind, the task moves the queue into the local [spool](crate::spool)
//! and from then on everything goes through the spool, in order, until the spool
//! has been replayed; so the database sees events in the order they were
//! recorded, and nothing is dropped. The spool is also replayed at the next start.
//!
//! Every event has a sequence number; [`HistoryWriter::flush`] waits until the
//! database has everything up to the last number handed out.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};

use crate::event::{HistoryEvent, validate};
use crate::spool::{Spool, encode};
use crate::{HistoryStore, Result, StoreError};

/// How the writer batches, spools and retries.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Directory of the spool (created if missing), normally
    /// `<data dir>/history-spool`. One writer per directory (it is locked).
    pub spool_dir: PathBuf,
    /// Most events per database transaction.
    pub batch_size: usize,
    /// A batch that is not full waits at most this long after the previous write
    /// started; under load batches fill up and are written back to back.
    pub flush_interval: Duration,
    /// Queue length at which the database counts as slower than the fires: the
    /// queue moves to the spool, which is replayed as fast as the database takes
    /// it.
    pub spool_threshold: usize,
    /// Most events held in memory; past it `record` itself moves the queue to
    /// the spool (only when the background task is stuck).
    pub queue_capacity: usize,
    /// Most bytes (estimated) held in memory, same rule.
    pub queue_max_bytes: usize,
    /// A write still running after this long counts as stalled: from then on
    /// what is recorded goes to the spool (synced) instead of waiting in memory,
    /// so a kill -9 during a database hang loses at most about this much.
    pub stall_after: Duration,
    /// How long one batch may take before it counts as failed (the database may
    /// still commit it: replays are idempotent).
    pub write_timeout: Duration,
    /// First retry delay after a failure; doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long [`HistoryWriter::shutdown`] keeps writing to the database before
    /// it leaves the rest in the spool.
    pub shutdown_timeout: Duration,
}

impl WriterOptions {
    /// Defaults, with the spool in `spool_dir`.
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        WriterOptions {
            spool_dir: spool_dir.into(),
            batch_size: 1000,
            flush_interval: Duration::from_millis(20),
            spool_threshold: 20_000,
            queue_capacity: 100_000,
            queue_max_bytes: 64 << 20,
            stall_after: Duration::from_secs(1),
            write_timeout: Duration::from_secs(10),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// What the writer has done and holds, for monitoring.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterStats {
    /// Events accepted by `record` since start.
    pub recorded: u64,
    /// Events in memory, waiting for the database.
    pub queued: usize,
    /// Their estimated size in bytes.
    pub queued_bytes: usize,
    /// Events in the spool, waiting for the database.
    pub spooled: u64,
    /// Size of the spool file in bytes.
    pub spool_bytes: u64,
    /// When the oldest waiting spooled event was spooled.
    pub spool_oldest: Option<DateTime<Utc>>,
    /// How long it has been waiting.
    pub spool_age: Option<Duration>,
    /// Events written to the database since start (replays of the spool count).
    pub written: u64,
    /// Transactions committed since start.
    pub batches: u64,
    /// Failed or timed-out batch writes since start.
    pub failures: u64,
    /// Events the database refused for good, kept in `history.rejected`.
    pub rejected: u64,
    /// Whether the last write succeeded (false while writes fail or stall).
    pub db_available: bool,
    /// The last write error (password masked).
    pub last_error: Option<String>,
    /// Bytes of torn tail cut from the spool when it was opened.
    pub spool_torn_bytes: u64,
    /// Bytes of corrupt spool moved aside when it was opened.
    pub spool_corrupt_bytes: u64,
}

/// An event with its sequence number and estimated size.
#[derive(Debug)]
struct Queued {
    seq: u64,
    bytes: usize,
    event: HistoryEvent,
}

fn estimate(e: &HistoryEvent) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    160 + match e {
        HistoryEvent::Record(r) => {
            r.id.len()
                + r.job.len()
                + r.instance.len()
                + r.host.len()
                + text(&r.cause)
                + text(&r.output)
        }
        HistoryEvent::Update(u) => u.id.len() + text(&u.cause) + text(&u.output) + text(&u.message),
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    queue_bytes: usize,
    /// Events taken from the queue whose database write is under way.
    inflight: Option<Arc<Vec<Queued>>>,
    /// Bumped every time the queue (and the in-flight batch) moves to the spool.
    epoch: u64,
    next_seq: u64,
    recorded: u64,
    written: u64,
    batches: u64,
    failures: u64,
    db_available: bool,
    last_error: Option<String>,
    closing: bool,
    /// The last handle was dropped without `shutdown`: stop at once.
    abandoned: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    // Lock order: `state`, then `spool`.
    spool: Mutex<Spool>,
    wake: Notify,
    committed: watch::Sender<u64>,
    options: WriterOptions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent data here (every critical
    // section either completes its update or changes nothing), so carry on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

impl Shared {
    /// Move the in-flight batch (unless it is `keep_inflight`) and the queue to the
    /// end of the spool, in order, with `state` locked (so nothing can be recorded
    /// in between). Returns how many events moved.
    fn spill_locked(&self, st: &mut State, sync: bool) -> Result<usize> {
        let inflight = st.inflight.take();
        let n = inflight.as_ref().map_or(0, |b| b.len()) + st.queue.len();
        if n == 0 {
            return Ok(0);
        }
        let now = now_micros();
        let mut buf = Vec::with_capacity(st.queue_bytes + 4096);
        for q in inflight
            .iter()
            .flat_map(|b| b.iter())
            .chain(st.queue.iter())
        {
            encode(q.seq, now, &q.event, &mut buf);
        }
        let mut spool = lock(&self.spool);
        let res = spool
            .append(&buf, n as u64, now)
            .and_then(|()| if sync { spool.sync() } else { Ok(()) });
        match res {
            Ok(()) => {
                st.queue.clear();
                st.queue_bytes = 0;
                st.epoch += 1;
                Ok(n)
            }
            Err(e) => {
                // Keep everything in memory; the next attempt may succeed.
                st.inflight = inflight;
                Err(e)
            }
        }
    }

    /// [`Shared::spill_locked`] for the background task: the queue is taken
    /// under the state lock, but encoded and written with only the spool locked,
    /// so that `record` never waits for the disk.
    fn spill(&self, sync: bool) -> Result<usize> {
        let mut st = lock(&self.state);
        let inflight = st.inflight.take();
        let queue = std::mem::take(&mut st.queue);
        let bytes = std::mem::take(&mut st.queue_bytes);
        let n = inflight.as_ref().map_or(0, |b| b.len()) + queue.len();
        if n == 0 {
            return Ok(0);
        }
        st.epoch += 1;
        // Taken before the state lock is released: nothing recorded from now on
        // can reach the spool ahead of these events.
        let mut spool = lock(&self.spool);
        drop(st);
        let now = now_micros();
        let mut buf = Vec::with_capacity(bytes + 4096);
        for q in inflight.iter().flat_map(|b| b.iter()).chain(queue.iter()) {
            encode(q.seq, now, &q.event, &mut buf);
        }
        let res = spool
            .append(&buf, n as u64, now)
            .and_then(|()| if sync { spool.sync() } else { Ok(()) });
        drop(spool);
        if let Err(e) = res {
            // Put everything back in front of what was recorded meanwhile.
            let mut st = lock(&self.state);
            let newer = std::mem::take(&mut st.queue);
            st.queue = queue;
            st.queue.extend(newer);
            st.queue_bytes += bytes;
            st.inflight = inflight;
            return Err(e);
        }
        Ok(n)
    }

    fn stats(&self) -> WriterStats {
        // The state lock is not held while waiting for the spool's (which the
        // task holds during disk I/O): `record` must never wait behind it.
        let (recorded, queued, queued_bytes, written, batches, failures, db_available, last_error) = {
            let st = lock(&self.state);
            (
                st.recorded,
                st.queue.len() + st.inflight.as_ref().map_or(0, |b| b.len()),
                st.queue_bytes,
                st.written,
                st.batches,
                st.failures,
                st.db_available,
                st.last_error.clone(),
            )
        };
        let spool = lock(&self.spool);
        let oldest = spool.oldest().and_then(DateTime::from_timestamp_micros);
        WriterStats {
            recorded,
            queued,
            queued_bytes,
            spooled: spool.pending(),
            spool_bytes: spool.bytes(),
            spool_oldest: oldest,
            spool_age: oldest.map(|t| (Utc::now() - t).to_std().unwrap_or_default()),
            written,
            batches,
            failures,
            rejected: spool.rejected,
            db_available,
            last_error,
            spool_torn_bytes: spool.torn_bytes,
            spool_corrupt_bytes: spool.corrupt_bytes,
        }
    }
}

/// The handle's side: dropping the last handle without `shutdown` moves what is
/// in memory to the spool (synchronously), so that nothing is lost.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        if !st.closing {
            st.closing = true;
            st.abandoned = true;
            if let Err(e) = self.shared.spill_locked(&mut st, true) {
                tracing::error!("history writer dropped; could not spool its queue: {e}");
            }
        }
        drop(st);
        self.shared.wake.notify_one();
    }
}

/// Records execution history in the background; see the [module docs](self).
///
/// Cheap to clone; every clone feeds the same queue.
#[derive(Debug, Clone)]
pub struct HistoryWriter {
    handle: Arc<Handle>,
}

impl HistoryWriter {
    /// Open the spool (recovering it after a crash), and start the background
    /// task on the current tokio runtime. Whatever the spool holds from an earlier
    /// run is written before anything recorded now.
    pub async fn start(store: HistoryStore, options: WriterOptions) -> Result<HistoryWriter> {
        let dir = options.spool_dir.clone();
        let spool = tokio::task::spawn_blocking(move || Spool::open(&dir))
            .await
            .map_err(|e| StoreError::Spool {
                path: options.spool_dir.display().to_string(),
                cause: format!("opening task failed: {e}"),
            })??;
        if !spool.is_empty() {
            tracing::info!(
                spool = %spool.dir().display(),
                events = spool.pending(),
                "history spool from an earlier run will be replayed"
            );
        }
        let first_seq = spool.max_seq + 1;
        // With a spool to replay, nothing counts as committed until it is.
        let (committed, _) = watch::channel(if spool.is_empty() { first_seq - 1 } else { 0 });
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_seq: first_seq,
                db_available: true,
                ..State::default()
            }),
            spool: Mutex::new(spool),
            wake: Notify::new(),
            committed,
            options,
        });
        let task = tokio::spawn(run(shared.clone(), store));
        Ok(HistoryWriter {
            handle: Arc::new(Handle {
                shared,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// Queue `event` for the database. Never waits for the database or the disk
    /// (except when the queue is full because the background task is stuck: then
    /// this call moves the queue to the spool file). Refuses only events no
    /// database could store (see [`StoreError::InvalidEvent`]); long text is
    /// trimmed to the stored limits instead.
    ///
    /// After [`HistoryWriter::shutdown`], events go straight to the spool and are
    /// written at the next start.
    pub fn record(&self, mut event: HistoryEvent) -> Result<()> {
        validate(&mut event)?;
        let shared = &self.handle.shared;
        let opts = &shared.options;
        let mut st = lock(&shared.state);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.recorded += 1;
        let bytes = estimate(&event);
        st.queue.push_back(Queued { seq, bytes, event });
        st.queue_bytes += bytes;
        let len = st.queue.len();
        if st.closing {
            // The task is gone or going: keep it on disk for the next start.
            return shared.spill_locked(&mut st, false).map(|_| ());
        }
        if len >= opts.queue_capacity || st.queue_bytes >= opts.queue_max_bytes {
            if let Err(e) = shared.spill_locked(&mut st, false) {
                // Memory grows past the bound rather than losing events.
                tracing::error!("history queue is full and cannot be spooled: {e}");
            }
            drop(st);
            shared.wake.notify_one();
            return Ok(());
        }
        drop(st);
        if len == 1 || len.is_multiple_of(opts.batch_size.max(1)) {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// Counters and the spool's size and age.
    pub fn stats(&self) -> WriterStats {
        self.handle.shared.stats()
    }

    /// Wait until every event recorded before this call is in the database (or
    /// was refused for good), at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let shared = &self.handle.shared;
        let target = lock(&shared.state).next_seq - 1;
        let mut rx = shared.committed.subscribe();
        shared.wake.notify_one();
        let wait = rx.wait_for(|c| *c >= target);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Timeout(
                "the writer stopped before the flush completed; the rest is spooled".into(),
            )),
            Err(_) => {
                let s = self.stats();
                Err(StoreError::Timeout(format!(
                    "flush did not complete within {timeout:?} ({} queued, {} spooled; last \
                     error: {})",
                    s.queued,
                    s.spooled,
                    s.last_error.as_deref().unwrap_or("none")
                )))
            }
        }
    }

    /// Stop: write what is queued and spooled to the database for at most
    /// `shutdown_timeout`, leave the rest in the (synced) spool, and stop the
    /// background task. Returns the final stats.
    pub async fn shutdown(&self) -> Result<WriterStats> {
        let shared = &self.handle.shared;
        lock(&shared.state).closing = true;
        shared.wake.notify_one();
        let task = lock(&self.handle.task).take();
        if let Some(task) = task {
            let grace = shared.options.shutdown_timeout
                + shared.options.write_timeout
                + Duration::from_secs(5);
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("history writer task failed: {e}"),
                Err(_) => tracing::error!("history writer task did not stop within {grace:?}"),
            }
        }
        // Whatever is still in memory (the task died, or events raced the close).
        let sh = shared.clone();
        tokio::task::spawn_blocking(move || sh.spill(true))
            .await
            .map_err(|e| StoreError::Spool {
                path: shared.options.spool_dir.display().to_string(),
                cause: format!("final spool task failed: {e}"),
            })??;
        Ok(self.stats())
    }
}

/// Where the batch being written came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Queue { epoch: u64 },
    Spool { end: u64 },
}

/// A batch write under way.
struct Inflight {
    fut: std::pin::Pin<Box<dyn std::future::Future<Output = WriteOutcome> + Send>>,
    source: Source,
    count: usize,
    last_seq: u64,
    started: Instant,
}

/// How a batch write ended.
enum WriteOutcome {
    /// Committed; these events were refused for good (with the reason) and left out.
    Done(Vec<(HistoryEvent, String)>),
    /// Not written (or not known to be): retry later.
    Failed(StoreError),
}

/// Write a batch; if the database refuses it for a reason that is not an outage
/// (a data error in some event), write the events one by one and set aside those
/// refused, so that one bad event cannot block the history forever.
async fn write_batch(
    store: HistoryStore,
    batch: Arc<Vec<Queued>>,
    timeout: Duration,
) -> WriteOutcome {
    let all = batch.iter().map(|q| &q.event);
    let err = match tokio::time::timeout(timeout, store.write_events(all)).await {
        Ok(Ok(())) => return WriteOutcome::Done(Vec::new()),
        Ok(Err(e)) => e,
        Err(_) => {
            return WriteOutcome::Failed(StoreError::Timeout(format!(
                "a batch write to {} took longer than {timeout:?}",
                store.url()
            )));
        }
    };
    if err.is_transient() {
        return WriteOutcome::Failed(err);
    }
    tracing::warn!("history batch refused ({err}); writing its events one by one");
    let mut rejected = Vec::new();
    for q in batch.iter() {
        match tokio::time::timeout(timeout, store.write_events(std::iter::once(&q.event))).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) if !err.is_transient() => {
                rejected.push((q.event.clone(), err.to_string()))
            }
            Ok(Err(err)) => return WriteOutcome::Failed(err),
            Err(_) => {
                return WriteOutcome::Failed(StoreError::Timeout(format!(
                    "a write to {} took longer than {timeout:?}",
                    store.url()
                )));
            }
        }
    }
    WriteOutcome::Done(rejected)
}

async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
) -> Result<T> {
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || f(&sh))
        .await
        .map_err(|e| StoreError::Spool {
            path: shared.options.spool_dir.display().to_string(),
            cause: format!("spool task failed: {e}"),
        })?
}

/// The background task.
async fn run(shared: Arc<Shared>, store: HistoryStore) {
    let opts = shared.options.clone();
    let tick = opts
        .flush_interval
        .clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut inflight: Option<Inflight> = None;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = opts.retry_min;
    let mut last_write = Instant::now() - opts.flush_interval;
    let mut close_deadline: Option<Instant> = None;
    loop {
        // Wait for a batch to finish, a record, or the tick.
        let completed = match inflight.as_mut() {
            Some(w) => tokio::select! {
                outcome = &mut w.fut => Some(outcome),
                () = shared.wake.notified() => None,
                () = tokio::time::sleep(tick) => None,
            },
            None => {
                tokio::select! {
                    () = shared.wake.notified() => {},
                    () = tokio::time::sleep(tick) => {},
                }
                None
            }
        };
        if let Some(outcome) = completed
            && let Some(w) = inflight.take()
        {
            match outcome {
                WriteOutcome::Done(rejected) => {
                    for (event, error) in &rejected {
                        tracing::error!(
                            execution = event.execution_id(),
                            "history event refused by the database, kept in history.rejected: {error}"
                        );
                    }
                    let source = w.source;
                    let count = w.count;
                    let res = blocking(&shared, move |sh| {
                        let mut spool = lock(&sh.spool);
                        for (event, error) in &rejected {
                            spool.reject(event, error)?;
                        }
                        if let Source::Spool { end } = source {
                            spool.consume(end, count as u64)?;
                        }
                        Ok(())
                    })
                    .await;
                    if let Err(e) = res {
                        tracing::error!("history spool: {e}");
                    }
                    let mut st = lock(&shared.state);
                    if let Source::Queue { epoch } = w.source
                        && epoch == st.epoch
                    {
                        st.inflight = None;
                    }
                    st.written += w.count as u64;
                    st.batches += 1;
                    if !st.db_available {
                        tracing::info!(url = store.url(), "history store is writable again");
                    }
                    st.db_available = true;
                    drop(st);
                    shared.committed.send_if_modified(|c| {
                        let changed = w.last_seq > *c;
                        *c = (*c).max(w.last_seq);
                        changed
                    });
                    retry_at = None;
                    backoff = opts.retry_min;
                }
                WriteOutcome::Failed(e) => {
                    let msg = e.to_string();
                    {
                        let mut st = lock(&shared.state);
                        if st.db_available {
                            tracing::warn!(
                                "history store unavailable, spooling to {}: {msg}",
                                opts.spool_dir.display()
                            );
                        }
                        st.failures += 1;
                        st.db_available = false;
                        st.last_error = Some(msg);
                    }
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(opts.retry_max);
                    // The in-flight batch (if it came from the queue) goes to the
                    // spool below with the rest of the queue: `retry_at` is set.
                }
            }
        }

        let (closing, abandoned, queue_len) = {
            let st = lock(&shared.state);
            (st.closing, st.abandoned, st.queue.len())
        };
        if abandoned {
            // The handle's drop spooled the queue; leave without more writes.
            return;
        }
        let now = Instant::now();
        if closing && close_deadline.is_none() {
            close_deadline = Some(now + opts.shutdown_timeout);
        }
        let out_of_time = close_deadline.is_some_and(|d| now >= d);
        let spool_empty = lock(&shared.spool).is_empty();
        let queue_batch = lock(&shared.state).inflight.is_some();

        // Degraded: the database is failing, or the spool holds older events, or
        // the queue has outgrown what the database keeps up with. Everything then
        // goes through the spool so that order is kept.
        let stalled = inflight
            .as_ref()
            .is_some_and(|w| now.duration_since(w.started) >= opts.stall_after);
        if stalled {
            let mut st = lock(&shared.state);
            if st.db_available {
                st.db_available = false;
                tracing::warn!(
                    "history store write stalled for {:?}, spooling to {}",
                    opts.stall_after,
                    opts.spool_dir.display()
                );
            }
        }
        let degraded =
            stalled || retry_at.is_some() || !spool_empty || queue_len >= opts.spool_threshold;
        let stop = closing && (out_of_time || retry_at.is_some());
        if stop || (degraded && (queue_len > 0 || queue_batch)) {
            match blocking(&shared, |sh| sh.spill(true)).await {
                Ok(n) if n > 0 => tracing::debug!(events = n, "history queue moved to the spool"),
                Ok(_) => {}
                Err(e) => tracing::error!("history spool: {e}"),
            }
        }
        if stop {
            if retry_at.is_some() || out_of_time {
                let s = shared.stats();
                if s.spooled > 0 {
                    tracing::warn!(
                        events = s.spooled,
                        "history writer stopped with events in the spool; they are written at the next start"
                    );
                }
            }
            return;
        }

        if inflight.is_none() && retry_at.is_none_or(|t| now >= t) {
            let spool_empty = lock(&shared.spool).is_empty();
            if !spool_empty {
                let max = opts.batch_size.max(1);
                match blocking(&shared, move |sh| lock(&sh.spool).read_batch(max)).await {
                    Ok(batch) if !batch.events.is_empty() => {
                        let count = batch.events.len();
                        let last_seq = batch.events.last().map_or(0, |e| e.seq);
                        let events: Vec<Queued> = batch
                            .events
                            .into_iter()
                            .map(|e| Queued {
                                seq: e.seq,
                                bytes: 0,
                                event: e.event,
                            })
                            .collect();
                        inflight = Some(Inflight {
                            fut: Box::pin(write_batch(
                                store.clone(),
                                Arc::new(events),
                                opts.write_timeout,
                            )),
                            source: Source::Spool { end: batch.end },
                            count,
                            last_seq,
                            started: now,
                        });
                        last_write = now;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("history spool: {e}");
                        retry_at = Some(now + opts.retry_max);
                    }
                }
            } else {
                let mut st = lock(&shared.state);
                let due = st.queue.len() >= opts.batch_size
                    || now.duration_since(last_write) >= opts.flush_interval
                    || closing;
                if !st.queue.is_empty() && due && st.inflight.is_none() {
                    let n = st.queue.len().min(opts.batch_size.max(1));
                    let batch: Vec<Queued> = st.queue.drain(..n).collect();
                    st.queue_bytes -= batch.iter().map(|q| q.bytes).sum::<usize>();
                    let last_seq = batch.last().map_or(0, |q| q.seq);
                    // Shared with the state so that the batch stays spillable (it
                    // moves to the spool if the write fails).
                    let batch = Arc::new(batch);
                    st.inflight = Some(batch.clone());
                    let epoch = st.epoch;
                    drop(st);
                    inflight = Some(Inflight {
                        fut: Box::pin(write_batch(store.clone(), batch, opts.write_timeout)),
                        source: Source::Queue { epoch },
                        count: n,
                        last_seq,
                        started: now,
                    });
                    last_write = now;
                }
            }
        }

        if closing && inflight.is_none() {
            let spool_empty = lock(&shared.spool).is_empty();
            let st = lock(&shared.state);
            if spool_empty && st.queue.is_empty() && st.inflight.is_none() {
                return;
            }
        }
    }
}
