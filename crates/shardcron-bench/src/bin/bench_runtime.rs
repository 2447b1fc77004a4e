//! Runtime benchmark: whole `Instance`s in this process, against the DESIGN
//! performance targets (section 10).
//!
//! - `lateness`: one instance on the embedded registry persisted in a temporary
//!   directory (write-ahead log synced), history to SQLite through a
//!   `HistoryWriter`; N every-second jobs of one item run a no-op handler that
//!   notes its fire time and the wall clock at its start. Lateness = start - fire.
//! - `scale`: the same with 100,000 jobs firing once a minute: lateness, RSS and
//!   threads with 0 and with 100,000 jobs, and how long creating them takes.
//! - `throughput`: a real single-member etcd; claim-shaped transactions through the
//!   raw `etcd-client` (etcd's own rate) and SUCCEEDED runs per second of 3
//!   instances on it, in the same run.
//! - `failover`: on etcd with lease TTL 5 s, the time from dropping the holder of
//!   running items (no cleanup, like kill -9) to the FAILOVER runs starting; and the
//!   time from a new instance's start until it owns its items.
//!
//! ```sh
//! cargo build --release -p shardcron-bench --bin bench_runtime
//! target/release/bench_runtime all
//! target/release/bench_runtime lateness [--jobs 1000,10000] [--aligned] [--warmup 5] [--window 20]
//! target/release/bench_runtime scale [--scale-jobs 100000] [--cases cron,every]
//! target/release/bench_runtime throughput [--tput-jobs 50] [--tput-items 200] [--tput-warmup 10] [--tput-window 20]
//! target/release/bench_runtime failover [--reps 4]
//! ```
//!
//! Nothing is asserted: every number is printed, next to its target.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use shardcron_bench::{Latencies, disks, machine, markdown_table, ms, thousands};
use shardcron_core::clock::SystemClock;
use shardcron_core::job::{JobFile, JobName, JobSpec};
use shardcron_core::{ExecutionSource, ExecutionStatus};
use shardcron_registry::{
    DeleteResponse, EtcdOptions, EtcdRegistry, KeyValue, Lease, LeaseId, MemoryRegistry,
    MemoryRegistryOptions, RangeRequest, RangeResponse, Registry, Revision, Txn, TxnOp,
    TxnResponse, WatchStream,
};
use shardcron_runtime::{
    Cluster, Handlers, HistorySink, Instance, InstanceConfig, JobContext, JobError, Runner,
    SchedulerOptions, SimpleJob, keys,
};
use shardcron_store::{HistoryEvent, HistoryStore, HistoryWriter, WriterOptions};
use shardcron_testkit::EtcdServer;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

// ---------------------------------------------------------------------------
// What the handlers see

/// One run as the no-op handler saw it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The job's number (the suffix of its name).
    job: u32,
    fire_ms: i64,
    late_us: i64,
    source: ExecutionSource,
}

/// Every run, in memory; one short lock per run.
#[derive(Debug, Clone, Default)]
struct Collector {
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Collector {
    fn snapshot(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    /// Distinct (job, fire) pairs with a fire time in `[from, to)`.
    fn distinct_in(&self, from_ms: i64, to_ms: i64) -> usize {
        lock(&self.samples)
            .iter()
            .filter(|s| s.fire_ms >= from_ms && s.fire_ms < to_ms)
            .map(|s| (s.job, s.fire_ms))
            .collect::<HashSet<_>>()
            .len()
    }
}

/// A handler that does nothing but note (fire time, wall clock now).
#[derive(Debug, Clone)]
struct NoopJob {
    col: Option<Collector>,
}

#[async_trait::async_trait]
impl SimpleJob for NoopJob {
    async fn execute(&self, ctx: JobContext) -> std::result::Result<Option<String>, JobError> {
        let now = Utc::now();
        if let Some(col) = &self.col {
            let s = &ctx.sharding;
            let sample = Sample {
                job: s
                    .job
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u32::MAX),
                fire_ms: s.fire_time.timestamp_millis(),
                late_us: (now - s.fire_time).num_microseconds().unwrap_or(i64::MAX),
                source: s.source,
            };
            lock(&col.samples).push(sample);
        }
        Ok(None)
    }
}

/// Counters of what the runtime recorded, forwarded to the real writer if any.
#[derive(Debug, Default)]
struct Counts {
    running: AtomicU64,
    succeeded: AtomicU64,
    other_end: AtomicU64,
    skipped_records: AtomicU64,
    skipped_fires: AtomicU64,
    lost: AtomicU64,
}

impl Counts {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct CountingSink {
    counts: Arc<Counts>,
    inner: Option<Arc<dyn HistorySink>>,
}

impl HistorySink for CountingSink {
    fn record(&self, event: HistoryEvent) {
        let c = &self.counts;
        let inc = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match &event {
            HistoryEvent::Record(r) => match r.status {
                ExecutionStatus::Running => inc(&c.running, 1),
                ExecutionStatus::Succeeded => inc(&c.succeeded, 1),
                ExecutionStatus::Skipped => {
                    inc(&c.skipped_records, 1);
                    inc(&c.skipped_fires, u64::from(r.skipped_count.unwrap_or(1)));
                }
                ExecutionStatus::Lost => inc(&c.lost, 1),
                _ => inc(&c.other_end, 1),
            },
            HistoryEvent::Update(u) => match u.status {
                ExecutionStatus::Succeeded => inc(&c.succeeded, 1),
                ExecutionStatus::Running => {}
                _ => inc(&c.other_end, 1),
            },
        }
        if let Some(inner) = &self.inner {
            inner.record(event);
        }
    }
}

/// A handler that holds its run until cancelled (or 10 minutes), noting starts.
/// A run start: `job#item`, instance, source, when.
type Start = (String, String, ExecutionSource, Instant);

#[derive(Debug, Clone, Default)]
struct HoldJob {
    log: Arc<Mutex<Vec<Start>>>,
}

#[async_trait::async_trait]
impl SimpleJob for HoldJob {
    async fn execute(&self, ctx: JobContext) -> std::result::Result<Option<String>, JobError> {
        let s = &ctx.sharding;
        lock(&self.log).push((
            format!("{}#{}", s.job, s.item),
            s.instance.clone(),
            s.source,
            Instant::now(),
        ));
        tokio::select! {
            () = ctx.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------
// Registry calls, counted and timed

/// Kinds of calls: transactions are told apart by shape (a claim puts a run key
/// and a fire key; a release deletes a run key).
const OPS: [&str; N_OPS] = [
    "get",
    "range",
    "put/delete",
    "claim txn",
    "release txn",
    "other txn",
    "lease",
    "watch/other",
];
const N_OPS: usize = 8;
const GET: usize = 0;
const RANGE: usize = 1;
const PUT: usize = 2;
const CLAIM: usize = 3;
const RELEASE: usize = 4;
const TXN: usize = 5;
const LEASE: usize = 6;
const OTHER: usize = 7;

fn txn_kind(txn: &Txn) -> usize {
    let run = keys::RUNS.as_bytes();
    let puts_run = txn
        .then
        .iter()
        .any(|op| matches!(op, TxnOp::Put { key, .. } if key.starts_with(run)));
    let puts_fire = txn
        .then
        .iter()
        .any(|op| matches!(op, TxnOp::Put { key, .. } if key.starts_with(b"fire/")));
    let deletes_run = txn
        .then
        .iter()
        .any(|op| matches!(op, TxnOp::Delete { key } if key.starts_with(run)));
    if puts_run && puts_fire {
        CLAIM
    } else if deletes_run {
        RELEASE
    } else {
        TXN
    }
}

#[derive(Debug, Default)]
struct Meter {
    count: [AtomicU64; N_OPS],
    nanos: [AtomicU64; N_OPS],
}

#[derive(Debug, Clone, Copy, Default)]
struct MeterSnap {
    count: [u64; N_OPS],
    nanos: [u64; N_OPS],
}

impl Meter {
    fn add(&self, op: usize, t0: Instant) {
        self.count[op].fetch_add(1, Ordering::Relaxed);
        self.nanos[op].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn snap(&self) -> MeterSnap {
        let mut s = MeterSnap::default();
        for i in 0..N_OPS {
            s.count[i] = self.count[i].load(Ordering::Relaxed);
            s.nanos[i] = self.nanos[i].load(Ordering::Relaxed);
        }
        s
    }
}

impl MeterSnap {
    fn since(&self, earlier: &MeterSnap) -> MeterSnap {
        let mut d = MeterSnap::default();
        for i in 0..N_OPS {
            d.count[i] = self.count[i] - earlier.count[i];
            d.nanos[i] = self.nanos[i] - earlier.nanos[i];
        }
        d
    }

    fn mean_us(&self, op: usize) -> f64 {
        if self.count[op] == 0 {
            return 0.0;
        }
        self.nanos[op] as f64 / self.count[op] as f64 / 1000.0
    }

    /// "get 1234/s (56 us), txn ..." over `secs`.
    /// `loops`: how many trigger loops (instances) issued the claims.
    fn describe(&self, secs: f64, loops: f64) -> String {
        (0..N_OPS)
            .filter(|&i| self.count[i] > 0)
            .map(|i| {
                // Claims are issued one at a time by the trigger loop: the share of
                // the window spent waiting for them.
                let busy = if i == CLAIM {
                    format!(
                        ", each trigger loop waiting on them {:.0}% of the time",
                        100.0 * self.nanos[i] as f64 / 1e9 / secs / loops
                    )
                } else {
                    String::new()
                };
                format!(
                    "{} {:.0}/s ({:.0} us{busy})",
                    OPS[i],
                    self.count[i] as f64 / secs,
                    self.mean_us(i)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A registry that counts and times every call it passes on.
#[derive(Debug)]
struct Metered {
    inner: Arc<dyn Registry>,
    meter: Arc<Meter>,
}

#[async_trait::async_trait]
impl Registry for Metered {
    async fn get(&self, key: &[u8]) -> shardcron_registry::Result<Option<KeyValue>> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.meter.add(GET, t);
        r
    }

    async fn range(&self, req: RangeRequest) -> shardcron_registry::Result<RangeResponse> {
        let t = Instant::now();
        let r = self.inner.range(req).await;
        self.meter.add(RANGE, t);
        r
    }

    async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> shardcron_registry::Result<Revision> {
        let t = Instant::now();
        let r = self.inner.put(key, value, lease).await;
        self.meter.add(PUT, t);
        r
    }

    async fn delete(&self, key: &[u8]) -> shardcron_registry::Result<DeleteResponse> {
        let t = Instant::now();
        let r = self.inner.delete(key).await;
        self.meter.add(PUT, t);
        r
    }

    async fn txn(&self, txn: Txn) -> shardcron_registry::Result<TxnResponse> {
        let kind = txn_kind(&txn);
        let t = Instant::now();
        let r = self.inner.txn(txn).await;
        self.meter.add(kind, t);
        r
    }

    async fn lease_grant(&self, ttl: Duration) -> shardcron_registry::Result<Lease> {
        let t = Instant::now();
        let r = self.inner.lease_grant(ttl).await;
        self.meter.add(LEASE, t);
        r
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> shardcron_registry::Result<Duration> {
        let t = Instant::now();
        let r = self.inner.lease_keep_alive(id).await;
        self.meter.add(LEASE, t);
        r
    }

    async fn lease_revoke(&self, id: LeaseId) -> shardcron_registry::Result<()> {
        let t = Instant::now();
        let r = self.inner.lease_revoke(id).await;
        self.meter.add(LEASE, t);
        r
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
    ) -> shardcron_registry::Result<Option<Duration>> {
        let t = Instant::now();
        let r = self.inner.lease_time_to_live(id).await;
        self.meter.add(LEASE, t);
        r
    }

    async fn watch(
        &self,
        prefix: &[u8],
        from_revision: Revision,
    ) -> shardcron_registry::Result<WatchStream> {
        let t = Instant::now();
        let r = self.inner.watch(prefix, from_revision).await;
        self.meter.add(OTHER, t);
        r
    }

    async fn compact(&self, revision: Revision) -> shardcron_registry::Result<()> {
        let t = Instant::now();
        let r = self.inner.compact(revision).await;
        self.meter.add(OTHER, t);
        r
    }

    async fn current_revision(&self) -> shardcron_registry::Result<Revision> {
        let t = Instant::now();
        let r = self.inner.current_revision().await;
        self.meter.add(OTHER, t);
        r
    }
}

// ---------------------------------------------------------------------------
// The process

/// A number from a `/proc/self/status` line (kB for Vm*, a count for Threads).
fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The first three fields of /proc/loadavg (the machine is shared).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// CPU time (user + system) of this process so far, in seconds.
fn cpu_secs() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            // After "(comm)": state is field 3, utime 14, stime 15.
            Some(f.get(11)? + f.get(12)?)
        })
        .unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Sleep until a wall-clock instant (in milliseconds since the epoch).
async fn sleep_until_ms(at_ms: i64) {
    let left = at_ms - Utc::now().timestamp_millis();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

fn ceil_to_second_ms(t_ms: i64) -> i64 {
    (t_ms + 999).div_euclid(1000) * 1000
}

// ---------------------------------------------------------------------------
// Setup helpers

/// The embedded setup of `shardcron standalone`: a persisted `MemoryRegistry` and
/// SQLite history in one directory.
struct Embedded {
    dir: tempfile::TempDir,
    registry: MemoryRegistry,
    history: Option<(HistoryStore, HistoryWriter)>,
}

/// `registry`: "persisted" (the default: synced log), "nosync" (log written, not
/// synced) or "memory"; `history`: "sqlite" (the default) or "none". The
/// non-default variants exist to find where time goes.
async fn embedded(registry: &str, history: &str) -> Result<Embedded> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let reg_dir = dir.path().join("registry");
    std::fs::create_dir_all(&reg_dir)?;
    let registry = match registry {
        "memory" => MemoryRegistry::new(),
        other => MemoryRegistry::with_options(MemoryRegistryOptions {
            data_dir: Some(reg_dir),
            sync: other != "nosync",
            ..Default::default()
        })
        .context("open the persisted MemoryRegistry")?,
    };
    let history = if history == "none" {
        None
    } else {
        let url = format!("sqlite://{}", dir.path().join("history.db").display());
        let store = HistoryStore::connect(&url)
            .await
            .context("connect the SQLite history")?;
        let writer = HistoryWriter::start(
            store.clone(),
            WriterOptions::new(dir.path().join("history-spool")),
        )
        .await
        .context("start the history writer")?;
        Some((store, writer))
    };
    Ok(Embedded {
        dir,
        registry,
        history,
    })
}

impl Embedded {
    fn sink(&self, counts: &Arc<Counts>) -> Arc<dyn HistorySink> {
        Arc::new(CountingSink {
            counts: counts.clone(),
            inner: self
                .history
                .as_ref()
                .map(|(_, w)| Arc::new(w.clone()) as Arc<dyn HistorySink>),
        })
    }

    async fn close(self) -> Result<()> {
        if let Some((store, writer)) = self.history {
            let stats = writer.shutdown().await?;
            if stats.spooled > 0 {
                println!(
                    "  (history writer: {} events left in the spool at shutdown)",
                    stats.spooled
                );
            }
            store.close().await;
        }
        self.registry.close().await?;
        drop(self.dir);
        Ok(())
    }
}

fn template(toml: &str) -> Result<JobSpec> {
    let mut f = JobFile::from_toml(toml).map_err(|e| anyhow!("job template: {e}"))?;
    Ok(f.jobs.remove(0))
}

fn job_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// Create jobs `prefix-0..n` from a template through `Cluster::create_job`, from
/// `concurrency` tasks; with `spread_over`, job i is created at `i/n` of it.
async fn create_jobs(
    cluster: &Cluster,
    template: &JobSpec,
    prefix: &str,
    n: usize,
    concurrency: usize,
    spread_over: Option<Duration>,
) -> Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let cluster = cluster.clone();
        let next = next.clone();
        let template = template.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                if let Some(over) = spread_over {
                    tokio::time::sleep_until(start + over.mul_f64(i as f64 / n as f64)).await;
                }
                let mut spec = template.clone();
                let name = job_name(&prefix, i);
                spec.name = JobName::new(&name).map_err(|e| anyhow!("job name {name}: {e}"))?;
                cluster
                    .create_job(&spec)
                    .await
                    .with_context(|| format!("create job {name}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.context("job creation task panicked")??;
    }
    Ok(start.elapsed())
}

/// Rewrite the anchors of `prefix-0..n`: job i gets `base + spread * i / n`.
/// Returns the anchors in milliseconds.
async fn set_anchors(
    reg: &dyn Registry,
    prefix: &str,
    n: usize,
    base_ms: i64,
    spread: Duration,
) -> Result<Vec<i64>> {
    let spread_ms = spread.as_millis() as i64;
    let anchors: Vec<i64> = (0..n)
        .map(|i| base_ms + spread_ms * i as i64 / n as i64)
        .collect();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut txn = Txn::new();
        for &i in chunk {
            let at = DateTime::<Utc>::from_timestamp_millis(anchors[i])
                .ok_or_else(|| anyhow!("anchor out of range"))?;
            txn = txn.and_then(TxnOp::put(
                keys::anchor(&job_name(prefix, i)),
                at.to_rfc3339().into_bytes(),
            ));
        }
        reg.txn(txn).await.context("write anchors")?;
    }
    Ok(anchors)
}

/// Fires of an `every` schedule (anchor `a`, interval `i`) in `[from, to)`.
fn every_fires_in(anchors_ms: &[i64], interval_ms: i64, from_ms: i64, to_ms: i64) -> u64 {
    let k_from = |a: i64, t: i64| -> i64 {
        if a >= t {
            0
        } else {
            (t - a + interval_ms - 1) / interval_ms
        }
    };
    anchors_ms
        .iter()
        .map(|&a| (k_from(a, to_ms) - k_from(a, from_ms)).max(0) as u64)
        .sum()
}

/// What ran of the fires in a window.
struct WindowStats {
    expected: u64,
    ran: u64,
    normal: u64,
    misfire: u64,
    lat: Latencies,
}

fn analyse(samples: &[Sample], from_ms: i64, to_ms: i64, expected: u64) -> WindowStats {
    let mut seen = HashSet::new();
    let mut st = WindowStats {
        expected,
        ran: 0,
        normal: 0,
        misfire: 0,
        lat: Latencies::new(),
    };
    for s in samples
        .iter()
        .filter(|s| s.fire_ms >= from_ms && s.fire_ms < to_ms)
    {
        if !seen.insert((s.job, s.fire_ms)) {
            continue;
        }
        st.ran += 1;
        match s.source {
            ExecutionSource::Normal => st.normal += 1,
            ExecutionSource::Misfire => st.misfire += 1,
            _ => {}
        }
        st.lat
            .push(Duration::from_micros(u64::try_from(s.late_us).unwrap_or(0)));
    }
    st
}

/// Wait until every expected fire of the window ran, or until `deadline_ms`.
async fn wait_for_window(
    col: &Collector,
    from_ms: i64,
    to_ms: i64,
    expected: u64,
    deadline_ms: i64,
) {
    sleep_until_ms(to_ms).await;
    while (col.distinct_in(from_ms, to_ms) as u64) < expected
        && Utc::now().timestamp_millis() < deadline_ms
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn instance_config(name: &str) -> InstanceConfig {
    InstanceConfig {
        name: name.to_string(),
        ..InstanceConfig::new()
    }
}

fn noop_runner(col: Option<Collector>, sink: Arc<dyn HistorySink>) -> Runner {
    Runner {
        handlers: Handlers::new().register("noop", NoopJob { col }),
        history: sink,
        options: SchedulerOptions::default(),
    }
}

/// Summary lines: what, target, measured.
type Summary = Vec<Vec<String>>;

// ---------------------------------------------------------------------------
// 1. Lateness

struct LatRow {
    anchors: &'static str,
    window: u64,
    create: Duration,
    stats: WindowStats,
    claims_per_s: f64,
    skipped_fires: u64,
    cpu_pct: f64,
    ops: String,
}

async fn lateness_case(
    args: &Args,
    n: usize,
    aligned: bool,
    registry: &str,
    history: &str,
) -> Result<LatRow> {
    let (warmup, window) = (args.warmup, args.window);
    let env = embedded(registry, history).await?;
    let raw: Arc<dyn Registry> = Arc::new(env.registry.clone());
    let cluster = Cluster::new(raw.clone(), SystemClock::shared());
    let tpl = template("[[job]]\nname = \"lat-0\"\nevery = \"1s\"\nshards = 1\nkind = \"noop\"\n")?;
    let create = create_jobs(&cluster, &tpl, "lat", n, 64, None).await?;
    // Jobs created at different times have anchors spread over the second; the
    // aligned case puts every fire at the same instant.
    let base = ceil_to_second_ms(Utc::now().timestamp_millis()) + 1000;
    let spread = if aligned {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    };
    let anchors = set_anchors(raw.as_ref(), "lat", n, base, spread).await?;

    let col = Collector::default();
    let counts = Arc::new(Counts::default());
    let sink = env.sink(&counts);
    let meter = Arc::new(Meter::default());
    let metered: Arc<dyn Registry> = Arc::new(Metered {
        inner: raw.clone(),
        meter: meter.clone(),
    });
    let inst = Instance::start_with(
        metered,
        SystemClock::shared(),
        instance_config("bench"),
        noop_runner(Some(col.clone()), sink),
    )
    .await
    .context("start the instance")?;

    let from = ceil_to_second_ms(Utc::now().timestamp_millis() + warmup as i64 * 1000);
    let to = from + window as i64 * 1000;
    sleep_until_ms(from).await;
    let (m0, c0, r0, s0) = (
        meter.snap(),
        cpu_secs(),
        Counts::get(&counts.running),
        Counts::get(&counts.skipped_fires),
    );
    sleep_until_ms(to).await;
    let (m1, c1, r1, s1) = (
        meter.snap(),
        cpu_secs(),
        Counts::get(&counts.running),
        Counts::get(&counts.skipped_fires),
    );
    let expected = every_fires_in(&anchors, 1000, from, to);
    wait_for_window(&col, from, to, expected, to + 5000).await;
    let stats = analyse(&col.snapshot(), from, to, expected);
    inst.shutdown().await.context("instance shutdown")?;
    env.close().await?;
    let secs = window as f64;
    Ok(LatRow {
        anchors: if aligned {
            "aligned (all at .000)"
        } else {
            "spread over the second"
        },
        window,
        create,
        stats,
        claims_per_s: (r1 - r0) as f64 / secs,
        skipped_fires: s1 - s0,
        cpu_pct: 100.0 * (c1 - c0) / secs,
        ops: m1.since(&m0).describe(secs, 1.0),
    })
}

async fn lateness(args: &Args, summary: &mut Summary) -> Result<()> {
    println!("## 1. Fire lateness: N every-second jobs, one embedded instance\n");
    println!(
        "One instance, persisted MemoryRegistry (log synced before every \
         acknowledgement), history to SQLite through HistoryWriter (`{}` + `{}`: the \
         embedded setup); each job: `every = \"1s\"`, 1 item, a no-op Rust handler. \
         Jobs are created first, their anchors then spread evenly over the second (as \
         for jobs created at different times), then the instance starts. Warm-up {} s, \
         then the fires scheduled in a {} s window; lateness = handler start - \
         scheduled fire time (wall clock). Misfire policy: fire_once (the default; a \
         fire claimed more than 1 s late runs as MISFIRE, older missed ones are \
         recorded SKIPPED). The last row (diagnostic) repeats the largest N with the \
         registry in memory and no history, to separate disk waits from CPU.\n",
        args.registry, args.history, args.warmup, args.window
    );
    let mut cases: Vec<(usize, bool, &str, &str)> = args
        .lat_jobs
        .iter()
        .map(|&n| (n, false, args.registry.as_str(), args.history.as_str()))
        .collect();
    if let Some(&max) = args.lat_jobs.iter().max() {
        if args.aligned {
            cases.push((max, true, args.registry.as_str(), args.history.as_str()));
        }
        if args.diagnose {
            cases.push((max, false, "memory", "none"));
        }
    }
    let mut rows = Vec::new();
    let mut evidence = Vec::new();
    for (n, aligned, registry, history) in cases {
        let t = Instant::now();
        let mut r = lateness_case(args, n, aligned, registry, history).await?;
        let setup = format!("{registry} + {history}");
        let main_setup = registry == args.registry && history == args.history;
        let st = &mut r.stats;
        let p50 = st.lat.quantile(0.5);
        let p99 = st.lat.quantile(0.99);
        let max = st.lat.max();
        let target = if n == 10_000 && !aligned && main_setup {
            "p99 <= 5 ms"
        } else {
            "-"
        };
        rows.push(vec![
            thousands(n as u64),
            setup.clone(),
            r.anchors.to_string(),
            format!("{} s", r.window),
            thousands(st.expected),
            thousands(st.normal),
            thousands(st.misfire),
            thousands(st.expected.saturating_sub(st.ran)),
            ms(p50),
            ms(p99),
            ms(max),
            target.to_string(),
        ]);
        evidence.push(vec![
            thousands(n as u64),
            setup.clone(),
            r.anchors.to_string(),
            format!("{:.2} s", r.create.as_secs_f64()),
            format!("{:.0}", r.claims_per_s),
            thousands(r.skipped_fires),
            format!("{:.0}%", r.cpu_pct),
            r.ops.clone(),
        ]);
        if n == 10_000 && !aligned && main_setup {
            summary.push(vec![
                "fire lateness, 10,000 every-second jobs, one embedded instance".into(),
                "p99 <= 5 ms".into(),
                format!(
                    "p50 {} ms, p99 {} ms, max {} ms; {} of {} fires ran, {} late (MISFIRE)",
                    ms(p50),
                    ms(p99),
                    ms(max),
                    thousands(st.ran),
                    thousands(st.expected),
                    thousands(st.misfire)
                ),
            ]);
        }
        println!(
            "(case {} jobs, {setup}{} took {:.0} s; load average {})",
            n,
            if aligned { ", aligned" } else { "" },
            t.elapsed().as_secs_f64(),
            loadavg()
        );
    }
    println!();
    print!(
        "{}",
        markdown_table(
            &[
                "jobs",
                "registry + history",
                "anchors",
                "window",
                "fires due",
                "ran on time",
                "ran late (MISFIRE)",
                "never ran",
                "p50 ms",
                "p99 ms",
                "max ms",
                "target",
            ],
            &rows,
        )
    );
    println!("\nWhere the time goes (same windows):\n");
    print!(
        "{}",
        markdown_table(
            &[
                "jobs",
                "registry + history",
                "anchors",
                "creating the jobs",
                "claims/s",
                "fires skipped",
                "process CPU (of one core)",
                "registry calls of the instance: rate (mean latency)",
            ],
            &evidence,
        )
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. 100,000 jobs

struct ScaleRow {
    case: String,
    create: Duration,
    stats: WindowStats,
    idle_rss_kb: u64,
    idle_threads: u64,
    created_rss_kb: u64,
    start_rss_kb: u64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
    cpu_pct: f64,
    ops: String,
    window: u64,
    keys: String,
}

async fn scale_case(args: &Args, n: usize, case: &str) -> Result<ScaleRow> {
    let env = embedded(&args.registry, &args.history).await?;
    let raw: Arc<dyn Registry> = Arc::new(env.registry.clone());
    let cluster = Cluster::new(raw.clone(), SystemClock::shared());
    let col = Collector::default();
    let counts = Arc::new(Counts::default());
    let sink = env.sink(&counts);
    let meter = Arc::new(Meter::default());
    let metered: Arc<dyn Registry> = Arc::new(Metered {
        inner: raw.clone(),
        meter: meter.clone(),
    });
    let inst = Instance::start_with(
        metered,
        SystemClock::shared(),
        instance_config("bench"),
        noop_runner(Some(col.clone()), sink),
    )
    .await
    .context("start the instance")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss_kb = proc_status("VmRSS:");
    let idle_threads = proc_status("Threads:");

    let (create, from, to, window) = if case == "cron" {
        // Every job fires at the same second of every minute: the worst case (as
        // `0 * * * * *`). The second is chosen so that the first fire after the
        // jobs are created (at about 1,500/s) comes soon.
        let lead = (n as i64 / 1500 + 15).clamp(10, 120);
        let sec = (Utc::now().timestamp() + lead).rem_euclid(60);
        let tpl = template(&format!(
            "[[job]]\nname = \"s-0\"\ncron = \"{sec} * * * * *\"\nshards = 1\nkind = \"noop\"\n"
        ))?;
        let create = create_jobs(&cluster, &tpl, "s", n, 64, None).await?;
        let earliest = Utc::now().timestamp() + 5;
        let mut fire = earliest - earliest.rem_euclid(60) + sec;
        if fire < earliest {
            fire += 60;
        }
        let from = fire * 1000;
        (create, from, from + 60_000, 60)
    } else {
        // `every = "60s"`, jobs created evenly over one minute: anchors spread over
        // the minute as in a deployment whose jobs were created over time.
        let tpl =
            template("[[job]]\nname = \"s-0\"\nevery = \"60s\"\nshards = 1\nkind = \"noop\"\n")?;
        let create = create_jobs(&cluster, &tpl, "s", n, 64, Some(Duration::from_secs(60))).await?;
        let from = ceil_to_second_ms(Utc::now().timestamp_millis() + 5000);
        (create, from, from + 60_000, 60)
    };
    let created_rss_kb = proc_status("VmRSS:");
    sleep_until_ms(from).await;
    let (m0, c0, start_rss_kb) = (meter.snap(), cpu_secs(), proc_status("VmRSS:"));
    sleep_until_ms(to).await;
    let (m1, c1) = (meter.snap(), cpu_secs());
    let rss_kb = proc_status("VmRSS:");
    let threads = proc_status("Threads:");
    // One fire per job in any minute (every anchor is before the window).
    let expected = n as u64;
    wait_for_window(&col, from, to, expected, to + 15_000).await;
    let hwm_kb = proc_status("VmHWM:");
    let stats = analyse(&col.snapshot(), from, to, expected);
    // What the embedded registry holds now.
    let mut key_counts = Vec::new();
    for prefix in ["jobs/", "anchors/", "last/", "run/", "fire/"] {
        let r = raw
            .range(RangeRequest {
                prefix: prefix.as_bytes().to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await?;
        key_counts.push(format!("{prefix} {}", thousands(r.count as u64)));
    }
    drop(inst);
    env.close().await?;
    Ok(ScaleRow {
        case: if case == "cron" {
            "cron: all at one second of the minute (worst case)".into()
        } else {
            "every 60s, anchors spread over the minute (typical)".into()
        },
        create,
        stats,
        idle_rss_kb,
        idle_threads,
        created_rss_kb,
        start_rss_kb,
        rss_kb,
        hwm_kb,
        threads,
        cpu_pct: 100.0 * (c1 - c0) / window as f64,
        ops: m1.since(&m0).describe(window as f64, 1.0),
        window,
        keys: key_counts.join(", "),
    })
}

async fn scale(args: &Args, summary: &mut Summary) -> Result<()> {
    println!(
        "## 2. {} jobs firing once a minute, one embedded instance\n",
        thousands(args.scale_jobs as u64)
    );
    println!(
        "Same setup as part 1. Each case runs in a fresh child process (so that RSS \
         is not inflated by earlier parts). The instance starts with no jobs (RSS and \
         threads measured after 3 s), then the jobs are created through \
         `Cluster::create_job` from 64 tasks while it runs. Measured: the fires of \
         one full minute (60 s window); lateness over every fire in it.\n"
    );
    use tokio::io::AsyncBufReadExt;
    for case in &args.scale_cases {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "scale",
                "--child",
                "--cases",
                case,
                "--scale-jobs",
                &args.scale_jobs.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the child process")?;
        let out = child.stdout.take().context("child stdout")?;
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Some(line) = lines.next_line().await? {
            match line.strip_prefix("@summary\t") {
                Some(rest) => summary.push(rest.split('\t').map(str::to_string).collect()),
                None => println!("{line}"),
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            bail!("the scale case {case} failed: {status}");
        }
    }
    Ok(())
}

/// The scale cases, in this process (the child of `scale`).
async fn scale_here(args: &Args) -> Result<()> {
    let mut summary: Summary = Vec::new();
    let mut rows = Vec::new();
    let mut mem = Vec::new();
    for case in &args.scale_cases {
        let t = Instant::now();
        let mut r = scale_case(args, args.scale_jobs, case).await?;
        let st = &mut r.stats;
        let (p50, p99, max) = (st.lat.quantile(0.5), st.lat.quantile(0.99), st.lat.max());
        rows.push(vec![
            r.case.clone(),
            format!(
                "{:.1} s ({:.0}/s)",
                r.create.as_secs_f64(),
                args.scale_jobs as f64 / r.create.as_secs_f64()
            ),
            format!("{} s", r.window),
            thousands(st.expected),
            thousands(st.normal),
            thousands(st.misfire),
            thousands(st.expected.saturating_sub(st.ran)),
            ms(p50),
            ms(p99),
            ms(max),
        ]);
        mem.push(vec![
            r.case.clone(),
            mib(r.idle_rss_kb),
            r.idle_threads.to_string(),
            mib(r.created_rss_kb),
            mib(r.start_rss_kb),
            mib(r.rss_kb),
            mib(r.hwm_kb),
            r.threads.to_string(),
            format!("{:.0}%", r.cpu_pct),
            r.ops.clone(),
        ]);
        summary.push(vec![
            format!(
                "{} jobs firing every minute ({})",
                thousands(args.scale_jobs as u64),
                case
            ),
            "RSS <= 200 MB, threads independent of job count".into(),
            format!(
                "RSS {} (peak {}), threads {} (0 jobs: {}, {}); lateness p50 {} / p99 {} / max {} ms, {} of {} fires ran",
                mib(r.rss_kb),
                mib(r.hwm_kb),
                r.threads,
                r.idle_threads,
                mib(r.idle_rss_kb),
                ms(p50),
                ms(p99),
                ms(max),
                thousands(st.ran),
                thousands(st.expected)
            ),
        ]);
        println!(
            "(case {case} took {:.0} s; load average {}; registry keys after the window: {})",
            t.elapsed().as_secs_f64(),
            loadavg(),
            r.keys
        );
    }
    println!();
    print!(
        "{}",
        markdown_table(
            &[
                "case",
                "creating the jobs",
                "window",
                "fires due",
                "ran on time",
                "ran late (MISFIRE)",
                "never ran (by window end + 15 s)",
                "p50 ms",
                "p99 ms",
                "max ms",
            ],
            &rows,
        )
    );
    println!();
    print!(
        "{}",
        markdown_table(
            &[
                "case",
                "RSS, 0 jobs",
                "threads, 0 jobs",
                "RSS, jobs created",
                "RSS, window start",
                "RSS, window end",
                "peak RSS (VmHWM)",
                "threads, jobs",
                "process CPU in window",
                "registry calls: rate (mean latency)",
            ],
            &mem,
        )
    );
    println!(
        "\nTarget: RSS <= 200 MB, threads independent of job count. RSS is the whole \
         process: instance, embedded registry, SQLite history writer, and this \
         program's samples (24 bytes per run).\n"
    );
    for row in summary {
        println!("@summary\t{}", row.join("\t"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Throughput through one etcd

/// Claim-shaped transactions through the raw client: `if mod_revision(a) == r
/// then put(a), put(b)`, one key pair per task, `concurrency` tasks.
async fn raw_claims(
    client: &etcd_client::Client,
    run: &str,
    concurrency: usize,
    dur: Duration,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut kv = client.kv_client();
        let done = done.clone();
        let a = format!("/raw-{run}/run/{t}").into_bytes();
        let b = format!("/raw-{run}/last/{t}").into_bytes();
        tasks.push(tokio::spawn(async move {
            let mut rev = 0i64;
            while start.elapsed() < dur {
                let txn = etcd_client::Txn::new()
                    .when(vec![etcd_client::Compare::mod_revision(
                        a.clone(),
                        etcd_client::CompareOp::Equal,
                        rev,
                    )])
                    .and_then(vec![
                        etcd_client::TxnOp::put(a.clone(), b"claimed-by-someone".to_vec(), None),
                        etcd_client::TxnOp::put(b.clone(), b"last-fire".to_vec(), None),
                    ]);
                let resp = kv.txn(txn).await?;
                if !resp.succeeded() {
                    bail!("a claim-shaped txn on a private key failed its compare");
                }
                rev = resp
                    .header()
                    .map(|h| h.revision())
                    .ok_or_else(|| anyhow!("txn response without a header"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("raw txn task panicked")??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn throughput(args: &Args, summary: &mut Summary) -> Result<()> {
    println!("## 3. Claimed executions through one etcd\n");
    let etcd = EtcdServer::start();
    let client = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .context("connect raw etcd-client")?;
    let raw_secs = Duration::from_secs(6);
    let raw_before = raw_claims(&client, "before", 64, raw_secs).await?;

    let ns = "/tput";
    let connect = || async {
        let r = EtcdRegistry::connect(EtcdOptions::new(etcd.endpoints(), ns))
            .await
            .context("connect EtcdRegistry")?;
        Ok::<_, anyhow::Error>(Arc::new(r) as Arc<dyn Registry>)
    };
    let cluster = Cluster::new(connect().await?, SystemClock::shared());
    let tpl = template(&format!(
        "[[job]]\nname = \"tp-0\"\nevery = \"1s\"\nshards = {}\nkind = \"noop\"\n",
        args.tput_items
    ))?;
    create_jobs(&cluster, &tpl, "tp", args.tput_jobs, 16, None).await?;
    let counts = Arc::new(Counts::default());
    let meter = Arc::new(Meter::default());
    let mut instances = Vec::new();
    for i in 0..3 {
        let reg: Arc<dyn Registry> = Arc::new(Metered {
            inner: connect().await?,
            meter: meter.clone(),
        });
        let sink = Arc::new(CountingSink {
            counts: counts.clone(),
            inner: None,
        });
        instances.push(
            Instance::start_with(
                reg,
                SystemClock::shared(),
                instance_config(&format!("tput-{i}")),
                noop_runner(None, sink),
            )
            .await
            .context("start an instance")?,
        );
    }
    tokio::time::sleep(Duration::from_secs(args.tput_warmup)).await;
    let snap = |c: &Counts| {
        (
            Counts::get(&c.succeeded),
            Counts::get(&c.running),
            Counts::get(&c.skipped_fires),
        )
    };
    let (s0, m0, c0, t0) = (snap(&counts), meter.snap(), cpu_secs(), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.tput_window)).await;
    let (s1, m1, c1, secs) = (
        snap(&counts),
        meter.snap(),
        cpu_secs(),
        t0.elapsed().as_secs_f64(),
    );
    drop(instances);
    let raw_after = raw_claims(&client, "after", 64, raw_secs).await?;

    let ok_per_s = (s1.0 - s0.0) as f64 / secs;
    let claims_per_s = (s1.1 - s0.1) as f64 / secs;
    let skipped_per_s = (s1.2 - s0.2) as f64 / secs;
    let offered = (args.tput_jobs as u64 * u64::from(args.tput_items)) as f64;
    let raw_mean = (raw_before + raw_after) / 2.0;
    let ops = m1.since(&m0);
    let per_run = |op: usize| ops.count[op] as f64 / (s1.0 - s0.0).max(1) as f64;
    println!(
        "etcd: one member on loopback (shardcron-testkit, fsync on). Raw: {} s of \
         64 concurrent claim-shaped txns (`if mod_revision(a) == r then put(a), \
         put(b)`), before and after the runtime run. Runtime: 3 in-process instances, \
         each with its own EtcdRegistry connection; {} jobs x {} items, `every = \
         \"1s\"`, no-op handler: {} fires offered per second. Warm-up {} s, window {} \
         s.\n",
        raw_secs.as_secs(),
        args.tput_jobs,
        args.tput_items,
        thousands(offered as u64),
        args.tput_warmup,
        args.tput_window
    );
    let rows = vec![
        vec![
            "raw etcd-client, claim-shaped txn, concurrency 64 (before)".into(),
            format!("{raw_before:.0} txn/s"),
        ],
        vec![
            "raw etcd-client, claim-shaped txn, concurrency 64 (after)".into(),
            format!("{raw_after:.0} txn/s"),
        ],
        vec![
            "3 instances: SUCCEEDED runs".into(),
            format!("{ok_per_s:.0} /s"),
        ],
        vec![
            "3 instances: claims (RUNNING records)".into(),
            format!("{claims_per_s:.0} /s"),
        ],
        vec![
            "3 instances: fires skipped (misfire policy)".into(),
            format!("{skipped_per_s:.0} /s"),
        ],
        vec![
            "ratio SUCCEEDED / mean raw txn rate (target >= 50%)".into(),
            format!("{:.1}%", 100.0 * ok_per_s / raw_mean),
        ],
    ];
    print!("{}", markdown_table(&["what", "rate"], &rows));
    println!(
        "\nRegistry calls of the 3 instances in the window: {}.\nPer SUCCEEDED run: \
         {:.2} claim txn, {:.2} release txn, {:.2} other txn, {:.2} get, {:.2} \
         put/delete. Process CPU (instances, this program; etcd is a separate \
         process): {:.0}% of one core.\n",
        ops.describe(secs, 3.0),
        per_run(CLAIM),
        per_run(RELEASE),
        per_run(TXN),
        per_run(GET),
        per_run(PUT),
        100.0 * (c1 - c0) / secs
    );
    let serial_ms = (2.0 * ops.mean_us(GET) + ops.mean_us(CLAIM)) / 1000.0;
    println!(
        "The trigger loop of an instance evaluates due items one after another; per \
         claimed fire it awaits `get anchors/JOB`, `get last/JOB/ITEM` and the claim \
         txn in sequence (the release runs in the run's own task). With this window's \
         mean latencies: 2 x {:.2} ms + {:.2} ms = {:.2} ms per claim, i.e. at most \
         {:.0} claims/s per instance, {:.0}/s for 3 (measured: {:.0}/s).\n",
        ops.mean_us(GET) / 1000.0,
        ops.mean_us(CLAIM) / 1000.0,
        serial_ms,
        1000.0 / serial_ms,
        3000.0 / serial_ms,
        claims_per_s
    );
    summary.push(vec![
        "claimed executions through one etcd".into(),
        ">= 50% of etcd's own txn throughput".into(),
        format!(
            "{:.0} SUCCEEDED/s vs {:.0} raw claim txn/s: {:.1}%",
            ok_per_s,
            raw_mean,
            100.0 * ok_per_s / raw_mean
        ),
    ]);
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Failover and a new instance

async fn etcd_registry(etcd: &EtcdServer, ns: &str) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(
        EtcdRegistry::connect(EtcdOptions::new(etcd.endpoints(), ns))
            .await
            .context("connect EtcdRegistry")?,
    ))
}

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

struct FailoverRep {
    pause: Duration,
    victim_was_leader: bool,
    runs: usize,
    lease_gone: Duration,
    failovers: Vec<Duration>,
}

async fn failover_rep(etcd: &EtcdServer, rep: usize, want_leader: bool) -> Result<FailoverRep> {
    let ns = format!("/failover-{rep}");
    let hold = HoldJob::default();
    let mut insts = Vec::new();
    for name in ["fo-a", "fo-b", "fo-c"] {
        let runner = Runner {
            handlers: Handlers::new().register("hold", hold.clone()),
            history: Arc::new(CountingSink {
                counts: Arc::new(Counts::default()),
                inner: None,
            }),
            options: SchedulerOptions::default(),
        };
        insts.push(Some(
            Instance::start_with(
                etcd_registry(etcd, &ns).await?,
                SystemClock::shared(),
                instance_config(name),
                runner,
            )
            .await?,
        ));
    }
    wait_for("a leader and a generation", Duration::from_secs(20), || {
        insts.iter().flatten().any(|i| i.is_leader())
            && insts.iter().flatten().all(|i| i.generation().is_some())
    })
    .await?;
    let cluster = Cluster::new(etcd_registry(etcd, &ns).await?, SystemClock::shared());
    // 3 jobs of 3 items: the items of a job spread over the instances, so each
    // instance holds runs and the victim may be the leader or not.
    let tpl = template("[[job]]\nname = \"fo-0\"\nevery = \"1h\"\nshards = 3\nkind = \"hold\"\n")?;
    let jobs = 3;
    create_jobs(&cluster, &tpl, "fo", jobs, 3, None).await?;
    wait_for("every item runs", Duration::from_secs(20), || {
        lock(&hold.log)
            .iter()
            .filter(|(_, _, s, _)| *s == ExecutionSource::Normal)
            .count()
            >= jobs * 3
    })
    .await?;
    // A drop at a varying point of the keep-alive period (TTL/3 = 1.67 s): the
    // time to expiry depends on how long ago the last keep-alive was.
    let pause = Duration::from_millis(u64::from(Utc::now().timestamp_subsec_nanos() % 1667));
    tokio::time::sleep(pause).await;
    // The victim: the leader, or an instance that is not the leader, holding runs.
    let holders: Vec<String> = lock(&hold.log)
        .iter()
        .map(|(_, i, _, _)| i.clone())
        .collect();
    let pick = insts
        .iter()
        .position(|i| {
            i.as_ref().is_some_and(|i| {
                i.is_leader() == want_leader && i.id().is_some_and(|id| holders.contains(&id))
            })
        })
        .or_else(|| {
            insts.iter().position(|i| {
                i.as_ref()
                    .is_some_and(|i| i.id().is_some_and(|id| holders.contains(&id)))
            })
        })
        .ok_or_else(|| anyhow!("no instance holds a run"))?;
    let victim = insts[pick].take().ok_or_else(|| anyhow!("victim gone"))?;
    let victim_id = victim.id().unwrap_or_default();
    let victim_was_leader = victim.is_leader();
    let victim_runs: Vec<String> = lock(&hold.log)
        .iter()
        .filter(|(_, i, _, _)| *i == victim_id)
        .map(|(j, _, _, _)| j.clone())
        .collect();
    let watcher = etcd_registry(etcd, &ns).await?;
    let killed = Instant::now();
    drop(victim); // like kill -9: no release, no revoke
    // When the victim's instance key disappears (its lease expired).
    let key = keys::instance(&victim_id);
    let mut lease_gone = None;
    let mut failovers = vec![None; victim_runs.len()];
    let deadline = Duration::from_secs(30);
    while failovers.iter().any(Option::is_none) && killed.elapsed() < deadline {
        if lease_gone.is_none() && watcher.get(&key).await?.is_none() {
            lease_gone = Some(killed.elapsed());
        }
        for (k, job) in victim_runs.iter().enumerate() {
            if failovers[k].is_none() {
                failovers[k] = lock(&hold.log)
                    .iter()
                    .find(|(j, _, s, _)| j == job && *s == ExecutionSource::Failover)
                    .map(|(_, _, _, at)| at.duration_since(killed));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(insts);
    let runs = victim_runs.len();
    let failovers: Vec<Duration> = failovers.into_iter().flatten().collect();
    if failovers.len() < runs {
        println!(
            "  rep {rep}: only {} of {runs} runs were failed over within {deadline:?}",
            failovers.len()
        );
    }
    Ok(FailoverRep {
        pause,
        victim_was_leader,
        runs,
        lease_gone: lease_gone.unwrap_or(deadline),
        failovers,
    })
}

struct JoinRep {
    start_call: Duration,
    published: Duration,
    new_sees: Duration,
    owns_after_call: Duration,
    handover_after_call: Duration,
}

async fn join_rep(etcd: &EtcdServer, rep: usize) -> Result<JoinRep> {
    let ns = format!("/join-{rep}");
    let runner = || Runner {
        handlers: Handlers::new().register("hold", HoldJob::default()),
        history: Arc::new(CountingSink {
            counts: Arc::new(Counts::default()),
            inner: None,
        }),
        options: SchedulerOptions::default(),
    };
    let mut insts = Vec::new();
    for name in ["join-a", "join-b"] {
        insts.push(
            Instance::start_with(
                etcd_registry(etcd, &ns).await?,
                SystemClock::shared(),
                instance_config(name),
                runner(),
            )
            .await?,
        );
    }
    let cluster = Cluster::new(etcd_registry(etcd, &ns).await?, SystemClock::shared());
    let tpl = template("[[job]]\nname = \"j-0\"\nmanual = true\nshards = 6\nkind = \"hold\"\n")?;
    let jobs = 10;
    create_jobs(&cluster, &tpl, "j", jobs, 10, None).await?;
    let names: Vec<String> = (0..jobs).map(|i| job_name("j", i)).collect();
    let owned = |insts: &[Instance]| -> usize {
        insts
            .iter()
            .map(|i| names.iter().map(|j| i.my_items(j).len()).sum::<usize>())
            .sum()
    };
    wait_for(
        "the two instances own every item",
        Duration::from_secs(20),
        || owned(&insts) == jobs * 6,
    )
    .await?;
    let reg = etcd_registry(etcd, &ns).await?;
    let gen_before = insts[0].generation().map_or(0, |g| g.number);
    let t0 = Instant::now();
    let new = Instance::start_with(
        reg,
        SystemClock::shared(),
        instance_config("join-c"),
        runner(),
    )
    .await?;
    let start_call = t0.elapsed();
    // When an old instance first sees the next generation (the leader published
    // it), and when the new one owns items of every job.
    let mut published = None;
    let mut new_sees = None;
    wait_for(
        "the new instance owns items of every job",
        Duration::from_secs(20),
        || {
            if published.is_none()
                && insts
                    .iter()
                    .any(|i| i.generation().is_some_and(|g| g.number > gen_before))
            {
                published = Some(t0.elapsed());
            }
            if new_sees.is_none() && new.generation().is_some_and(|g| g.number > gen_before) {
                new_sees = Some(t0.elapsed());
            }
            names.iter().all(|j| !new.my_items(j).is_empty())
        },
    )
    .await?;
    let owns_after_call = t0.elapsed();
    let published = published.unwrap_or(owns_after_call);
    let new_sees = new_sees.unwrap_or(owns_after_call);
    // Handover complete: the old instances no longer list the new one's items.
    wait_for("the old instances let go", Duration::from_secs(20), || {
        names.iter().all(|j| {
            let mine: HashSet<u32> = new.my_items(j).into_iter().collect();
            insts
                .iter()
                .all(|i| i.my_items(j).iter().all(|x| !mine.contains(x)))
        })
    })
    .await?;
    let handover_after_call = t0.elapsed();
    drop(new);
    drop(insts);
    Ok(JoinRep {
        start_call,
        published,
        new_sees,
        owns_after_call,
        handover_after_call,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() - 1) / 2]
}

fn secs3(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

async fn failover(args: &Args, summary: &mut Summary) -> Result<()> {
    println!("## 4. Failover and a new instance (etcd, lease TTL 5 s)\n");
    let etcd = EtcdServer::start();
    println!(
        "Each repetition: a fresh namespace, 3 instances (default settings: TTL 5 s, \
         fence margin 1 s, keep-alive every TTL/3, lock delay 500 ms), \
         3 jobs of 3 items whose handler holds the run (each instance holds 3 runs); \
         after a varying wait (0-1.67 s, to vary the phase of the keep-alives) one \
         instance, alternately a non-leader and the leader, is dropped \
         without cleanup (its tasks stop, its lease is neither kept alive nor revoked, \
         like kill -9). Measured from the drop: its instance key disappearing (lease \
         expiry, polled every 2 ms) and each of its runs starting again as FAILOVER on \
         a survivor.\n"
    );
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for rep in 0..args.reps {
        let r = failover_rep(&etcd, rep, rep % 2 == 1).await?;
        all.extend(r.failovers.iter().copied());
        rows.push(vec![
            rep.to_string(),
            format!("{:.0}", r.pause.as_secs_f64() * 1000.0),
            if r.victim_was_leader {
                "yes".into()
            } else {
                "no".into()
            },
            r.runs.to_string(),
            secs3(r.lease_gone),
            r.failovers
                .iter()
                .map(|d| secs3(*d))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    print!(
        "{}",
        markdown_table(
            &[
                "rep",
                "extra wait before the drop (ms)",
                "victim was leader",
                "its runs",
                "instance key gone after (s)",
                "FAILOVER run started after (s)",
            ],
            &rows,
        )
    );
    let (med, max) = (
        median(all.clone()),
        all.iter().copied().max().unwrap_or_default(),
    );
    println!(
        "\nFailover, all runs: median {} s, max {} s (target <= TTL + 1 s = 6 s).\n",
        secs3(med),
        secs3(max)
    );
    summary.push(vec![
        "failover after kill -9 (etcd, TTL 5 s)".into(),
        "re-run starts <= TTL + 1 s".into(),
        format!(
            "median {} s, max {} s over {} runs",
            secs3(med),
            secs3(max),
            all.len()
        ),
    ]);

    println!(
        "New instance: 2 instances own 10 manual jobs of 6 items; a third starts. \
         Measured from the `Instance::start_with` call (which returns once it is \
         registered and its mirrors are synced): `my_items` non-empty for every job on \
         the new instance, and the old ones no longer listing those items (polled every \
         2 ms).\n"
    );
    let mut rows = Vec::new();
    let mut owns = Vec::new();
    for rep in 0..args.reps.max(3) {
        let r = join_rep(&etcd, rep).await?;
        owns.push(r.owns_after_call);
        rows.push(vec![
            rep.to_string(),
            ms(r.start_call),
            ms(r.published),
            ms(r.new_sees),
            ms(r.owns_after_call),
            ms(r.owns_after_call - r.start_call),
            ms(r.handover_after_call),
        ]);
    }
    print!(
        "{}",
        markdown_table(
            &[
                "rep",
                "start_with returned (ms)",
                "an old instance sees the next generation (ms)",
                "the new instance sees it (ms)",
                "owns its items (ms)",
                "owns, after start_with returned (ms)",
                "old instances let go (ms)",
            ],
            &rows,
        )
    );
    let (med, max) = (
        median(owns.clone()),
        owns.iter().copied().max().unwrap_or_default(),
    );
    println!(
        "\nNew instance owns its items: median {} ms, max {} ms after the start call \
         (target <= 1 s after it registers).\n",
        ms(med),
        ms(max)
    );
    summary.push(vec![
        "new instance gets items".into(),
        "<= 1 s after it registers".into(),
        format!(
            "median {} ms, max {} ms from the start call",
            ms(med),
            ms(max)
        ),
    ]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Arguments and main

#[derive(Debug, Clone)]
struct Args {
    parts: Vec<String>,
    lat_jobs: Vec<usize>,
    aligned: bool,
    warmup: u64,
    window: u64,
    scale_jobs: usize,
    scale_cases: Vec<String>,
    tput_jobs: usize,
    tput_items: u32,
    tput_warmup: u64,
    tput_window: u64,
    reps: usize,
    registry: String,
    history: String,
    diagnose: bool,
    /// Run the scale cases here (in the child process `scale` starts).
    child: bool,
}

const USAGE: &str = "usage: bench_runtime [all|lateness|scale|throughput|failover]... \
[--jobs 1000,10000] [--aligned] [--no-diagnose] [--warmup S] [--window S] [--scale-jobs N] \
[--cases cron,every] [--tput-jobs N] [--tput-items N] [--tput-warmup S] [--tput-window S] \
[--reps N] [--registry persisted|nosync|memory] [--history sqlite|none]";

fn parse_args() -> Result<Args> {
    let mut a = Args {
        parts: Vec::new(),
        lat_jobs: vec![1000, 10_000],
        aligned: false,
        warmup: 5,
        window: 20,
        scale_jobs: 100_000,
        scale_cases: vec!["cron".into(), "every".into()],
        tput_jobs: 50,
        tput_items: 200,
        tput_warmup: 10,
        tput_window: 20,
        reps: 4,
        registry: "persisted".into(),
        history: "sqlite".into(),
        diagnose: true,
        child: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, flag: &str| -> Result<u64> {
        v.ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?
            .parse::<u64>()
            .with_context(|| format!("{flag} must be a whole number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "all" => a.parts.extend(
                ["lateness", "scale", "throughput", "failover"]
                    .iter()
                    .map(|s| s.to_string()),
            ),
            "lateness" | "scale" | "throughput" | "failover" => a.parts.push(arg),
            "--jobs" => {
                a.lat_jobs = it
                    .next()
                    .ok_or_else(|| anyhow!("--jobs needs a value"))?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .context("--jobs: comma-separated whole numbers")?
            }
            "--aligned" => a.aligned = true,
            "--no-diagnose" => a.diagnose = false,
            "--child" => a.child = true,
            "--warmup" => a.warmup = num(it.next(), "--warmup")?,
            "--window" => a.window = num(it.next(), "--window")?.max(1),
            "--scale-jobs" => a.scale_jobs = num(it.next(), "--scale-jobs")? as usize,
            "--cases" => {
                a.scale_cases = it
                    .next()
                    .ok_or_else(|| anyhow!("--cases needs a value"))?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect();
                if let Some(bad) = a.scale_cases.iter().find(|c| *c != "cron" && *c != "every") {
                    bail!("--cases: cron or every, got {bad}");
                }
            }
            "--tput-jobs" => a.tput_jobs = num(it.next(), "--tput-jobs")? as usize,
            "--tput-items" => {
                a.tput_items = u32::try_from(num(it.next(), "--tput-items")?)
                    .context("--tput-items too large")?
            }
            "--tput-warmup" => a.tput_warmup = num(it.next(), "--tput-warmup")?,
            "--tput-window" => a.tput_window = num(it.next(), "--tput-window")?.max(1),
            "--registry" => {
                a.registry = it.next().unwrap_or_default();
                if !["persisted", "nosync", "memory"].contains(&a.registry.as_str()) {
                    bail!("--registry: persisted, nosync or memory");
                }
            }
            "--history" => {
                a.history = it.next().unwrap_or_default();
                if !["sqlite", "none"].contains(&a.history.as_str()) {
                    bail!("--history: sqlite or none");
                }
            }
            "--reps" => a.reps = num(it.next(), "--reps")?.max(1) as usize,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.parts.is_empty() {
        bail!("say which part to run\n{USAGE}");
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    if args.child {
        return scale_here(&args).await;
    }
    let started = Instant::now();
    println!("# bench_runtime\n");
    println!(
        "command: `target/release/bench_runtime {}`",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!("machine: {}; disks: {}", machine(), disks());
    println!(
        "date: {}; tokio multi-thread runtime, {} worker threads\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut summary: Summary = Vec::new();
    for part in &args.parts {
        let t = Instant::now();
        match part.as_str() {
            "lateness" => lateness(&args, &mut summary).await?,
            "scale" => scale(&args, &mut summary).await?,
            "throughput" => throughput(&args, &mut summary).await?,
            "failover" => failover(&args, &mut summary).await?,
            _ => unreachable!("parts are checked when parsed"),
        }
        println!("(part {part} took {:.0} s)\n", t.elapsed().as_secs_f64());
    }
    println!("## Summary: DESIGN section 10 targets\n");
    print!(
        "{}",
        markdown_table(&["what", "target", "measured"], &summary)
    );
    println!("\ntotal run time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
