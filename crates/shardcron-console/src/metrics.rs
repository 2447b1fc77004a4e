//! `/metrics`: a node's counters in the Prometheus text format (version 0.0.4),
//! written by hand.
//!
//! Where the numbers come from:
//! - [`MetricsSink`] sits in front of the node's history (it is a
//!   [`HistorySink`]: put it in the instance's `Runner`) and counts every event
//!   before forwarding it unchanged: executions started (RUNNING records) by
//!   source, fires (started with any source but RETRY), failovers (started with
//!   source FAILOVER), finished executions by status (terminal records and
//!   updates), misfires by reason (SKIPPED records, adding their
//!   `skipped_count`, and late runs: started with source MISFIRE, reason
//!   `late_run`), the lateness of each fire (`started_at - fire_time`; not for
//!   RETRY, whose fire time is the first attempt's) and the duration of each
//!   finished run (`ended_at - started_at`; not for LOST, whose end is only when
//!   it was noticed). A run's outcome arrives as an update without its start, so
//!   the start of each RUNNING record is remembered (by execution id, at most
//!   [`DEFAULT_MAX_TRACKED`], the oldest forgotten first) until its outcome.
//! - [`MeteredRegistry`] wraps the node's [`Registry`] and times every call
//!   (a watch when it is opened) into a histogram by operation, counting errors.
//! - The leadership and instance gauges are read when rendering, from the
//!   instance given to [`Metrics::set_instance`] (held weakly).
//!
//! Counters are atomics and histograms atomic buckets: recording never waits for
//! a render or another recording, except for the short lock around the map of
//! remembered starts. A render reads the buckets once and derives `_count` and
//! `+Inf` from the same reading, so they always agree.
//!
//! ```text
//! let metrics = Arc::new(Metrics::new());
//! let registry: Arc<dyn Registry> = Arc::new(MeteredRegistry::new(registry, metrics.clone()));
//! let history: Arc<dyn HistorySink> = Arc::new(MetricsSink::new(history, metrics.clone()));
//! let instance = Arc::new(Instance::start_with(registry, clock, config, Runner { history, .. }).await?);
//! metrics.set_instance(Arc::downgrade(&instance));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use shardcron_core::execution::SkipReason;
use shardcron_core::{ExecutionSource, ExecutionStatus};
use shardcron_registry::{
    DeleteResponse, KeyValue, Lease, LeaseId, RangeRequest, RangeResponse, Registry, Result,
    Revision, Txn, TxnResponse, WatchStream,
};
use shardcron_runtime::{HistorySink, Instance, SkewStatus};
use shardcron_store::HistoryEvent;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The content type of the exposition.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most RUNNING records whose start is remembered for the duration histogram.
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

/// Upper bounds (seconds) of `shardcron_fire_lateness_seconds`: from on time to
/// an hour late (a catch-up after downtime).
pub const LATENESS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
/// Upper bounds (seconds) of `shardcron_execution_duration_seconds`: from a
/// few milliseconds to four hours.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];
/// Upper bounds (seconds) of `shardcron_registry_request_seconds`: from the
/// embedded registry's microseconds to etcd under trouble.
pub const REGISTRY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A registry operation, the `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Range,
    Put,
    Delete,
    Txn,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LeaseTimeToLive,
    Watch,
    Compact,
    CurrentRevision,
}

impl Op {
    const ALL: [Op; 12] = [
        Op::Get,
        Op::Range,
        Op::Put,
        Op::Delete,
        Op::Txn,
        Op::LeaseGrant,
        Op::LeaseKeepAlive,
        Op::LeaseRevoke,
        Op::LeaseTimeToLive,
        Op::Watch,
        Op::Compact,
        Op::CurrentRevision,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Range => "range",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Txn => "txn",
            Op::LeaseGrant => "lease_grant",
            Op::LeaseKeepAlive => "lease_keep_alive",
            Op::LeaseRevoke => "lease_revoke",
            Op::LeaseTimeToLive => "lease_time_to_live",
            Op::Watch => "watch",
            Op::Compact => "compact",
            Op::CurrentRevision => "current_revision",
        }
    }
}

/// The sources of `shardcron_executions_started_total`, in output order.
const SOURCES: [ExecutionSource; 5] = [
    ExecutionSource::Normal,
    ExecutionSource::Misfire,
    ExecutionSource::Failover,
    ExecutionSource::Retry,
    ExecutionSource::Manual,
];

fn source_index(s: ExecutionSource) -> usize {
    match s {
        ExecutionSource::Normal => 0,
        ExecutionSource::Misfire => 1,
        ExecutionSource::Failover => 2,
        ExecutionSource::Retry => 3,
        ExecutionSource::Manual => 4,
    }
}

/// The statuses of `shardcron_executions_finished_total`, in output order.
const FINISHED: [ExecutionStatus; 5] = [
    ExecutionStatus::Succeeded,
    ExecutionStatus::Failed,
    ExecutionStatus::TimedOut,
    ExecutionStatus::Cancelled,
    ExecutionStatus::Lost,
];

fn finished_index(s: ExecutionStatus) -> Option<usize> {
    match s {
        ExecutionStatus::Succeeded => Some(0),
        ExecutionStatus::Failed => Some(1),
        ExecutionStatus::TimedOut => Some(2),
        ExecutionStatus::Cancelled => Some(3),
        ExecutionStatus::Lost => Some(4),
        ExecutionStatus::Running | ExecutionStatus::Skipped => None,
    }
}

/// The reasons of `shardcron_misfires_total`, in output order: the skip reasons,
/// a late run, and a SKIPPED record without a reason (shown only when counted).
const MISFIRE_REASONS: [&str; 7] = [
    "misfire_policy",
    "still_running",
    "disabled",
    "no_eligible_instance",
    "clock_skew",
    "late_run",
    "unknown",
];
const LATE_RUN: usize = 5;
const UNKNOWN_REASON: usize = 6;

fn reason_index(r: Option<&SkipReason>) -> usize {
    match r {
        Some(SkipReason::MisfirePolicy) => 0,
        Some(SkipReason::StillRunning) => 1,
        Some(SkipReason::Disabled) => 2,
        Some(SkipReason::NoEligibleInstance) => 3,
        Some(SkipReason::ClockSkew) => 4,
        None => UNKNOWN_REASON,
    }
}

/// A cumulative histogram with fixed bounds; lock-free.
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Count `v` (seconds; negative values count as 0).
    fn observe(&self, v: f64) {
        let v = if v.is_nan() { 0.0 } else { v.max(0.0) };
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// The `_bucket`, `_sum` and `_count` lines, with `labels` (`op="get"`, or
    /// empty) before `le`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0u64;
        for (bound, n) in self.bounds.iter().zip(&counts) {
            total += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {total}",
                Float(*bound)
            );
        }
        total += counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum{braces} {}", Float(sum));
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }

    /// The whole family `name` of this histogram alone, without labels.
    fn render_family(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        self.render(out, name, "");
    }
}

/// A float as the exposition writes it: shortest round-trip decimal, `+Inf`,
/// `-Inf`, `NaN`.
struct Float(f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// A label value escaped for the exposition (backslash, quote, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// `# HELP` and `# TYPE` of a family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of one sample without labels: its `# HELP`, `# TYPE` and value.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Seconds from `a` to `b` (negative when `b` is earlier).
fn seconds(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).as_seconds_f64()
}

/// The start of each RUNNING record until its outcome, bounded, oldest
/// forgotten first.
struct Starts {
    max: usize,
    next: u64,
    by_id: HashMap<String, (u64, DateTime<Utc>)>,
    order: BTreeMap<u64, String>,
}

impl Starts {
    fn new(max: usize) -> Starts {
        Starts {
            max: max.max(1),
            next: 0,
            by_id: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn insert(&mut self, id: &str, started_at: DateTime<Utc>) {
        self.remove(id);
        while self.by_id.len() >= self.max {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            self.by_id.remove(&old);
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, id.to_owned());
        self.by_id.insert(id.to_owned(), (seq, started_at));
    }

    fn remove(&mut self, id: &str) -> Option<DateTime<Utc>> {
        let (seq, started_at) = self.by_id.remove(id)?;
        self.order.remove(&seq);
        Some(started_at)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's counters, histograms and gauges. See the [module
/// documentation](self).
pub struct Metrics {
    started: [AtomicU64; SOURCES.len()],
    finished: [AtomicU64; FINISHED.len()],
    misfires: [AtomicU64; MISFIRE_REASONS.len()],
    lateness: Histogram,
    duration: Histogram,
    registry: [Histogram; Op::ALL.len()],
    registry_errors: [AtomicU64; Op::ALL.len()],
    starts: Mutex<Starts>,
    instance: RwLock<Option<Weak<Instance>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("tracked_runs", &self.tracked_runs())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Everything at zero, no instance.
    pub fn new() -> Metrics {
        Metrics::with_max_tracked(DEFAULT_MAX_TRACKED)
    }

    /// Remember at most `max` running executions' starts (at least 1) instead of
    /// [`DEFAULT_MAX_TRACKED`].
    pub fn with_max_tracked(max: usize) -> Metrics {
        let zero = || AtomicU64::new(0);
        Metrics {
            started: std::array::from_fn(|_| zero()),
            finished: std::array::from_fn(|_| zero()),
            misfires: std::array::from_fn(|_| zero()),
            lateness: Histogram::new(LATENESS_BUCKETS),
            duration: Histogram::new(DURATION_BUCKETS),
            registry: std::array::from_fn(|_| Histogram::new(REGISTRY_BUCKETS)),
            registry_errors: std::array::from_fn(|_| zero()),
            starts: Mutex::new(Starts::new(max)),
            instance: RwLock::new(None),
        }
    }

    /// Read the leadership and instance gauges from `instance` from now on.
    pub fn set_instance(&self, instance: Weak<Instance>) {
        *self.instance.write().unwrap_or_else(|e| e.into_inner()) = Some(instance);
    }

    /// How many running executions' starts are remembered now.
    pub fn tracked_runs(&self) -> usize {
        lock(&self.starts).by_id.len()
    }

    /// Count one history event (what [`MetricsSink`] does before forwarding).
    pub fn observe(&self, event: &HistoryEvent) {
        match event {
            HistoryEvent::Record(r) => match r.status {
                ExecutionStatus::Running => {
                    self.started[source_index(r.source)].fetch_add(1, Ordering::Relaxed);
                    if r.source == ExecutionSource::Misfire {
                        self.misfires[LATE_RUN].fetch_add(1, Ordering::Relaxed);
                    }
                    if r.source != ExecutionSource::Retry {
                        self.lateness.observe(seconds(r.fire_time, r.started_at));
                    }
                    lock(&self.starts).insert(&r.id, r.started_at);
                }
                ExecutionStatus::Skipped => {
                    let n = r.skipped_count.unwrap_or(1);
                    self.misfires[reason_index(r.skip_reason.as_ref())]
                        .fetch_add(u64::from(n), Ordering::Relaxed);
                    lock(&self.starts).remove(&r.id);
                }
                status => {
                    lock(&self.starts).remove(&r.id);
                    self.finish(status, Some(r.started_at), r.ended_at);
                }
            },
            HistoryEvent::Update(u) => {
                if finished_index(u.status).is_some() {
                    let started_at = lock(&self.starts).remove(&u.id);
                    self.finish(u.status, started_at, Some(u.ended_at.unwrap_or(u.at)));
                }
            }
        }
    }

    fn finish(
        &self,
        status: ExecutionStatus,
        started_at: Option<DateTime<Utc>>,
        ended_at: Option<DateTime<Utc>>,
    ) {
        let Some(i) = finished_index(status) else {
            return;
        };
        self.finished[i].fetch_add(1, Ordering::Relaxed);
        if status != ExecutionStatus::Lost
            && let (Some(start), Some(end)) = (started_at, ended_at)
        {
            self.duration.observe(seconds(start, end));
        }
    }

    fn observe_registry(&self, op: Op, took: Duration, failed: bool) {
        let i = op as usize;
        self.registry[i].observe(took.as_secs_f64());
        if failed {
            self.registry_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition (format version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        self.render_instance(&mut out);
        self.render_executions(&mut out);
        self.render_registry(&mut out);
        out
    }

    fn render_instance(&self, out: &mut String) {
        let instance = self
            .instance
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade);
        let running = instance.as_ref().filter(|i| !i.is_stopped());
        let id = running.and_then(|i| i.id());
        single(
            out,
            "shardcron_up",
            "gauge",
            "Whether this node's instance runs and is registered in the cluster (1) or not (0).",
            u8::from(id.is_some()),
        );
        single(
            out,
            "shardcron_leader",
            "gauge",
            "Whether this node's instance is the cluster's leader (1) or not (0).",
            u8::from(running.is_some_and(|i| i.is_leader())),
        );
        let Some(instance) = running else {
            return;
        };
        if let Some(id) = &id {
            header(
                out,
                "shardcron_instance_info",
                "gauge",
                "The instance's per-start identity and stable name (always 1).",
            );
            let _ = writeln!(
                out,
                "shardcron_instance_info{{id=\"{}\",name=\"{}\"}} 1",
                escape(id),
                escape(instance.name())
            );
        }
        let skew = instance.skew();
        single(
            out,
            "shardcron_clock_skew_ok",
            "gauge",
            "Whether the clock-skew guard lets this instance fire (1) or not (0).",
            u8::from(skew.allows_firing()),
        );
        if let SkewStatus::Ok { skew_ms } | SkewStatus::TooFar { skew_ms, .. } = skew {
            single(
                out,
                "shardcron_clock_skew_seconds",
                "gauge",
                "Estimated offset of this instance's clock from the cluster's (positive: ahead).",
                Float(skew_ms as f64 / 1000.0),
            );
        }
    }

    fn render_executions(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let started: Vec<u64> = self.started.iter().map(load).collect();
        let fires: u64 = SOURCES
            .iter()
            .zip(&started)
            .filter(|(s, _)| **s != ExecutionSource::Retry)
            .map(|(_, n)| n)
            .sum();
        single(
            out,
            "shardcron_fires_total",
            "counter",
            "Fires that started an execution on this node (every source but RETRY).",
            fires,
        );
        header(
            out,
            "shardcron_executions_started_total",
            "counter",
            "Executions started on this node, by source.",
        );
        for (s, n) in SOURCES.iter().zip(&started) {
            let _ = writeln!(
                out,
                "shardcron_executions_started_total{{source=\"{}\"}} {n}",
                s.as_str()
            );
        }
        header(
            out,
            "shardcron_executions_finished_total",
            "counter",
            "Executions finished, by status (LOST: recorded here for a dead holder).",
        );
        for (s, n) in FINISHED.iter().zip(&self.finished) {
            let _ = writeln!(
                out,
                "shardcron_executions_finished_total{{status=\"{}\"}} {}",
                s.as_str(),
                load(n)
            );
        }
        single(
            out,
            "shardcron_failovers_total",
            "counter",
            "Executions started on this node to re-run a fire whose holder died.",
            started[source_index(ExecutionSource::Failover)],
        );
        header(
            out,
            "shardcron_misfires_total",
            "counter",
            "Fires that did not run on time: skipped, by skip reason, or run late (late_run).",
        );
        for (i, reason) in MISFIRE_REASONS.iter().enumerate() {
            let n = load(&self.misfires[i]);
            if i == UNKNOWN_REASON && n == 0 {
                continue;
            }
            let _ = writeln!(out, "shardcron_misfires_total{{reason=\"{reason}\"}} {n}");
        }
        self.lateness.render_family(
            out,
            "shardcron_fire_lateness_seconds",
            "Time from a fire's scheduled time to the start of its execution (not RETRY).",
        );
        self.duration.render_family(
            out,
            "shardcron_execution_duration_seconds",
            "Run time of finished executions (not LOST), from start to end.",
        );
    }

    fn render_registry(&self, out: &mut String) {
        header(
            out,
            "shardcron_registry_request_seconds",
            "histogram",
            "Time of registry calls, by operation (a watch until it is open).",
        );
        for op in Op::ALL {
            self.registry[op as usize].render(
                out,
                "shardcron_registry_request_seconds",
                &format!("op=\"{}\"", op.as_str()),
            );
        }
        header(
            out,
            "shardcron_registry_errors_total",
            "counter",
            "Registry calls that failed, by operation.",
        );
        for op in Op::ALL {
            let _ = writeln!(
                out,
                "shardcron_registry_errors_total{{op=\"{}\"}} {}",
                op.as_str(),
                self.registry_errors[op as usize].load(Ordering::Relaxed)
            );
        }
    }
}

/// A [`HistorySink`] that counts every event in [`Metrics`] and forwards it,
/// unchanged, to the inner sink.
#[derive(Debug)]
pub struct MetricsSink {
    inner: Arc<dyn HistorySink>,
    metrics: Arc<Metrics>,
}

impl MetricsSink {
    /// Count into `metrics`, forward to `inner`.
    pub fn new(inner: Arc<dyn HistorySink>, metrics: Arc<Metrics>) -> MetricsSink {
        MetricsSink { inner, metrics }
    }
}

impl HistorySink for MetricsSink {
    fn record(&self, event: HistoryEvent) {
        self.metrics.observe(&event);
        self.inner.record(event);
    }
}

/// A [`Registry`] that times every call of the inner registry into
/// `shardcron_registry_request_seconds` and counts its errors.
#[derive(Debug)]
pub struct MeteredRegistry {
    inner: Arc<dyn Registry>,
    metrics: Arc<Metrics>,
}

impl MeteredRegistry {
    /// Time the calls of `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Registry>, metrics: Arc<Metrics>) -> MeteredRegistry {
        MeteredRegistry { inner, metrics }
    }

    /// The registry being timed.
    pub fn inner(&self) -> &Arc<dyn Registry> {
        &self.inner
    }

    async fn timed<T>(&self, op: Op, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .observe_registry(op, started.elapsed(), result.is_err());
        result
    }
}

#[async_trait::async_trait]
impl Registry for MeteredRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.timed(Op::Get, self.inner.get(key)).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.timed(Op::Range, self.inner.range(req)).await
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        self.timed(Op::Put, self.inner.put(key, value, lease)).await
    }

    async fn delete(&self, key: &[u8]) -> Result<DeleteResponse> {
        self.timed(Op::Delete, self.inner.delete(key)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.timed(Op::Txn, self.inner.txn(txn)).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease> {
        self.timed(Op::LeaseGrant, self.inner.lease_grant(ttl))
            .await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        self.timed(Op::LeaseKeepAlive, self.inner.lease_keep_alive(id))
            .await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.timed(Op::LeaseRevoke, self.inner.lease_revoke(id))
            .await
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<Option<Duration>> {
        self.timed(Op::LeaseTimeToLive, self.inner.lease_time_to_live(id))
            .await
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream> {
        self.timed(Op::Watch, self.inner.watch(prefix, from_revision))
            .await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.timed(Op::Compact, self.inner.compact(revision)).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.timed(Op::CurrentRevision, self.inner.current_revision())
            .await
    }
}

/// `GET /metrics` (a session or an API token; any role).
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/metrics", get(serve))
}

async fn serve(State(state): State<AppState>, _caller: Caller) -> ApiResult<impl IntoResponse> {
    let Some(metrics) = &state.metrics else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: "no metrics on this server".into(),
            field: None,
            problems: None,
        });
    };
    Ok(([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], metrics.render()))
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use shardcron_core::ExecutionRecord;
    use shardcron_registry::MemoryRegistry;
    use shardcron_runtime::MemoryHistory;
    use shardcron_store::ExecutionUpdate;

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn ms(n: i64) -> DateTime<Utc> {
        t0() + TimeDelta::milliseconds(n)
    }

    fn running(id: &str, source: ExecutionSource, late_ms: i64) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            job: "orders".into(),
            item: 0,
            total: 1,
            fire_time: t0(),
            fire_time_end: None,
            skipped_count: None,
            started_at: ms(late_ms),
            ended_at: None,
            instance: "i-1".into(),
            host: "h".into(),
            source,
            status: ExecutionStatus::Running,
            skip_reason: None,
            attempt: 1,
            token: 1,
            cause: None,
            output: None,
        }
    }

    fn done(id: &str, status: ExecutionStatus, at_ms: i64) -> HistoryEvent {
        HistoryEvent::Update(ExecutionUpdate::finished(id, status, ms(at_ms)))
    }

    fn skipped(id: &str, reason: Option<SkipReason>, count: Option<u32>) -> HistoryEvent {
        let mut r = running(id, ExecutionSource::Normal, 0);
        r.status = ExecutionStatus::Skipped;
        r.skip_reason = reason;
        r.skipped_count = count;
        r.token = 0;
        HistoryEvent::Record(r)
    }

    /// The lines of one metric family: from its `# HELP` to the next one.
    fn family(text: &str, name: &str) -> String {
        let start = text
            .find(&format!("# HELP {name} "))
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"));
        let rest = &text[start..];
        let end = rest[1..].find("# HELP ").map_or(rest.len(), |i| i + 1);
        rest[..end].to_string()
    }

    /// Every event counted as it should be, and the exact exposition of the
    /// gauges, counters and execution histograms.
    #[test]
    fn events_render_exactly() {
        let metrics = Arc::new(Metrics::new());
        let history = Arc::new(MemoryHistory::new());
        let sink = MetricsSink::new(history.clone(), metrics.clone());
        let mut lost = running("a2", ExecutionSource::Misfire, 2000);
        lost.status = ExecutionStatus::Lost;
        lost.ended_at = Some(ms(9000));
        lost.cause = Some("holder died".into());
        let events = vec![
            HistoryEvent::Record(running("a1", ExecutionSource::Normal, 500)),
            HistoryEvent::Record(running("a2", ExecutionSource::Misfire, 2000)),
            HistoryEvent::Record(running("a3", ExecutionSource::Failover, 250)),
            HistoryEvent::Record(running("a4", ExecutionSource::Retry, 100_000)),
            HistoryEvent::Record(running("m1", ExecutionSource::Manual, -30)),
            HistoryEvent::Update(ExecutionUpdate {
                ended_at: None,
                ..ExecutionUpdate::finished("m1", ExecutionStatus::Running, ms(10))
            }),
            done("a1", ExecutionStatus::Succeeded, 2000),
            done("a3", ExecutionStatus::Failed, 500),
            HistoryEvent::Record(lost),
            done("unseen", ExecutionStatus::Cancelled, 10),
            skipped("s1", Some(SkipReason::MisfirePolicy), Some(12)),
            skipped("s2", Some(SkipReason::StillRunning), None),
        ];
        for e in &events {
            sink.record(e.clone());
        }
        assert_eq!(history.events(), events, "forwarded unchanged, in order");
        assert_eq!(metrics.tracked_runs(), 2, "a4 and m1 still run");
        let text = metrics.render();
        let (head, registry) = text
            .split_once("# HELP shardcron_registry_request_seconds ")
            .expect("registry section");
        let want = r#"# HELP shardcron_up Whether this node's instance runs and is registered in the cluster (1) or not (0).
# TYPE shardcron_up gauge
shardcron_up 0
# HELP shardcron_leader Whether this node's instance is the cluster's leader (1) or not (0).
# TYPE shardcron_leader gauge
shardcron_leader 0
# HELP shardcron_fires_total Fires that started an execution on this node (every source but RETRY).
# TYPE shardcron_fires_total counter
shardcron_fires_total 4
# HELP shardcron_executions_started_total Executions started on this node, by source.
# TYPE shardcron_executions_started_total counter
shardcron_executions_started_total{source="NORMAL"} 1
shardcron_executions_started_total{source="MISFIRE"} 1
shardcron_executions_started_total{source="FAILOVER"} 1
shardcron_executions_started_total{source="RETRY"} 1
shardcron_executions_started_total{source="MANUAL"} 1
# HELP shardcron_executions_finished_total Executions finished, by status (LOST: recorded here for a dead holder).
# TYPE shardcron_executions_finished_total counter
shardcron_executions_finished_total{status="SUCCEEDED"} 1
shardcron_executions_finished_total{status="FAILED"} 1
shardcron_executions_finished_total{status="TIMED_OUT"} 0
shardcron_executions_finished_total{status="CANCELLED"} 1
shardcron_executions_finished_total{status="LOST"} 1
# HELP shardcron_failovers_total Executions started on this node to re-run a fire whose holder died.
# TYPE shardcron_failovers_total counter
shardcron_failovers_total 1
# HELP shardcron_misfires_total Fires that did not run on time: skipped, by skip reason, or run late (late_run).
# TYPE shardcron_misfires_total counter
shardcron_misfires_total{reason="misfire_policy"} 12
shardcron_misfires_total{reason="still_running"} 1
shardcron_misfires_total{reason="disabled"} 0
shardcron_misfires_total{reason="no_eligible_instance"} 0
shardcron_misfires_total{reason="clock_skew"} 0
shardcron_misfires_total{reason="late_run"} 1
# HELP shardcron_fire_lateness_seconds Time from a fire's scheduled time to the start of its execution (not RETRY).
# TYPE shardcron_fire_lateness_seconds histogram
shardcron_fire_lateness_seconds_bucket{le="0.005"} 1
shardcron_fire_lateness_seconds_bucket{le="0.01"} 1
shardcron_fire_lateness_seconds_bucket{le="0.025"} 1
shardcron_fire_lateness_seconds_bucket{le="0.05"} 1
shardcron_fire_lateness_seconds_bucket{le="0.1"} 1
shardcron_fire_lateness_seconds_bucket{le="0.25"} 2
shardcron_fire_lateness_seconds_bucket{le="0.5"} 3
shardcron_fire_lateness_seconds_bucket{le="1"} 3
shardcron_fire_lateness_seconds_bucket{le="2.5"} 4
shardcron_fire_lateness_seconds_bucket{le="5"} 4
shardcron_fire_lateness_seconds_bucket{le="10"} 4
shardcron_fire_lateness_seconds_bucket{le="30"} 4
shardcron_fire_lateness_seconds_bucket{le="60"} 4
shardcron_fire_lateness_seconds_bucket{le="300"} 4
shardcron_fire_lateness_seconds_bucket{le="3600"} 4
shardcron_fire_lateness_seconds_bucket{le="+Inf"} 4
shardcron_fire_lateness_seconds_sum 2.75
shardcron_fire_lateness_seconds_count 4
# HELP shardcron_execution_duration_seconds Run time of finished executions (not LOST), from start to end.
# TYPE shardcron_execution_duration_seconds histogram
shardcron_execution_duration_seconds_bucket{le="0.01"} 0
shardcron_execution_duration_seconds_bucket{le="0.05"} 0
shardcron_execution_duration_seconds_bucket{le="0.1"} 0
shardcron_execution_duration_seconds_bucket{le="0.25"} 1
shardcron_execution_duration_seconds_bucket{le="0.5"} 1
shardcron_execution_duration_seconds_bucket{le="1"} 1
shardcron_execution_duration_seconds_bucket{le="2.5"} 2
shardcron_execution_duration_seconds_bucket{le="5"} 2
shardcron_execution_duration_seconds_bucket{le="10"} 2
shardcron_execution_duration_seconds_bucket{le="30"} 2
shardcron_execution_duration_seconds_bucket{le="60"} 2
shardcron_execution_duration_seconds_bucket{le="300"} 2
shardcron_execution_duration_seconds_bucket{le="900"} 2
shardcron_execution_duration_seconds_bucket{le="3600"} 2
shardcron_execution_duration_seconds_bucket{le="14400"} 2
shardcron_execution_duration_seconds_bucket{le="+Inf"} 2
shardcron_execution_duration_seconds_sum 1.75
shardcron_execution_duration_seconds_count 2
"#;
        assert_eq!(head, want);
        // No registry calls: every operation is there, at zero.
        let registry = format!("# HELP shardcron_registry_request_seconds {registry}");
        let seconds = family(&registry, "shardcron_registry_request_seconds");
        assert!(seconds.starts_with(
            "# HELP shardcron_registry_request_seconds Time of registry calls, by operation \
             (a watch until it is open).\n# TYPE shardcron_registry_request_seconds histogram\n\
             shardcron_registry_request_seconds_bucket{op=\"get\",le=\"0.0005\"} 0\n"
        ));
        assert_eq!(
            seconds.lines().count(),
            2 + 12 * (REGISTRY_BUCKETS.len() + 3)
        );
        assert!(seconds.contains(
            "shardcron_registry_request_seconds_bucket{op=\"current_revision\",le=\"+Inf\"} 0\n\
             shardcron_registry_request_seconds_sum{op=\"current_revision\"} 0\n\
             shardcron_registry_request_seconds_count{op=\"current_revision\"} 0\n"
        ));
        let errors = family(&registry, "shardcron_registry_errors_total");
        assert_eq!(errors.lines().count(), 2 + 12);
        assert!(errors.contains("shardcron_registry_errors_total{op=\"txn\"} 0\n"));
        assert!(text.ends_with('\n'));
    }

    /// A SKIPPED record without a reason shows up under `unknown`; a run whose
    /// start was forgotten still counts as finished, without a duration.
    #[test]
    fn unknown_reasons_and_forgotten_starts() {
        let metrics = Metrics::with_max_tracked(2);
        metrics.observe(&skipped("s", None, Some(3)));
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            metrics.observe(&HistoryEvent::Record(running(
                id,
                ExecutionSource::Normal,
                250 * i as i64,
            )));
        }
        assert_eq!(metrics.tracked_runs(), 2);
        for id in ["a", "b", "c"] {
            metrics.observe(&done(id, ExecutionStatus::Succeeded, 1000));
        }
        assert_eq!(metrics.tracked_runs(), 0);
        let text = metrics.render();
        assert!(text.contains("shardcron_misfires_total{reason=\"unknown\"} 3\n"));
        assert!(text.contains("shardcron_executions_finished_total{status=\"SUCCEEDED\"} 3\n"));
        assert!(
            text.contains("shardcron_execution_duration_seconds_count 2\n"),
            "a was forgotten: {text}"
        );
        assert!(text.contains("shardcron_execution_duration_seconds_sum 1.25\n"));
    }

    #[test]
    fn histogram_bounds_are_inclusive_and_negative_counts_as_zero() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [-5.0, 1.0, 1.5, 2.0, 2.5, f64::NAN] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "k=\"v\"");
        assert_eq!(
            out,
            "x_bucket{k=\"v\",le=\"1\"} 3\nx_bucket{k=\"v\",le=\"2\"} 5\n\
             x_bucket{k=\"v\",le=\"+Inf\"} 6\nx_sum{k=\"v\"} 7\nx_count{k=\"v\"} 6\n"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(0.0005).to_string(), "0.0005");
    }

    /// A registry that answers `get` after a pause.
    #[derive(Debug)]
    struct Slow(MemoryRegistry, Duration);

    #[async_trait::async_trait]
    impl Registry for Slow {
        async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
            tokio::time::sleep(self.1).await;
            self.0.get(key).await
        }
        async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
            self.0.range(req).await
        }
        async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
            self.0.put(key, value, lease).await
        }
        async fn delete(&self, key: &[u8]) -> Result<DeleteResponse> {
            self.0.delete(key).await
        }
        async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
            self.0.txn(txn).await
        }
        async fn lease_grant(&self, ttl: Duration) -> Result<Lease> {
            self.0.lease_grant(ttl).await
        }
        async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
            self.0.lease_keep_alive(id).await
        }
        async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
            self.0.lease_revoke(id).await
        }
        async fn lease_time_to_live(&self, id: LeaseId) -> Result<Option<Duration>> {
            self.0.lease_time_to_live(id).await
        }
        async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream> {
            self.0.watch(prefix, from_revision).await
        }
        async fn compact(&self, revision: Revision) -> Result<()> {
            self.0.compact(revision).await
        }
        async fn current_revision(&self) -> Result<Revision> {
            self.0.current_revision().await
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .expect("a number")
    }

    /// Every call is timed under its operation; failures are counted.
    #[tokio::test]
    async fn registry_calls_are_timed() {
        let metrics = Arc::new(Metrics::new());
        let slow = Arc::new(Slow(MemoryRegistry::new(), Duration::from_millis(40)));
        let r = MeteredRegistry::new(slow, metrics.clone());
        r.put(b"k", b"v", None).await.expect("put");
        let got = r.get(b"k").await.expect("get").expect("present");
        assert_eq!(got.value, b"v");
        assert!(r.lease_keep_alive(0x5eed).await.is_err(), "no such lease");
        let _watch = r.watch(b"k", 0).await.expect("watch");
        let text = metrics.render();
        let s = "shardcron_registry_request_seconds";
        assert_eq!(value(&text, &format!("{s}_count{{op=\"get\"}}")), 1.0);
        assert!(value(&text, &format!("{s}_sum{{op=\"get\"}}")) >= 0.04);
        assert_eq!(
            value(&text, &format!("{s}_bucket{{op=\"get\",le=\"0.025\"}}")),
            0.0,
            "the pause is measured"
        );
        assert_eq!(
            value(&text, &format!("{s}_bucket{{op=\"get\",le=\"+Inf\"}}")),
            1.0
        );
        for op in ["put", "lease_keep_alive", "watch"] {
            assert_eq!(
                value(&text, &format!("{s}_count{{op=\"{op}\"}}")),
                1.0,
                "{op}"
            );
        }
        assert_eq!(value(&text, &format!("{s}_count{{op=\"txn\"}}")), 0.0);
        let e = "shardcron_registry_errors_total";
        assert_eq!(
            value(&text, &format!("{e}{{op=\"lease_keep_alive\"}}")),
            1.0
        );
        assert_eq!(value(&text, &format!("{e}{{op=\"get\"}}")), 0.0);
    }

    /// The gauges follow the instance: up and leader while it runs alone, down
    /// once it is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instance_gauges() {
        let metrics = Arc::new(Metrics::new());
        let registry: Arc<dyn Registry> = Arc::new(MeteredRegistry::new(
            Arc::new(MemoryRegistry::new()),
            metrics.clone(),
        ));
        let config = shardcron_runtime::InstanceConfig {
            name: "metrics-node".into(),
            lease_ttl: Duration::from_secs(2),
            fence_margin: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(200),
            ..shardcron_runtime::InstanceConfig::new()
        };
        let instance = Arc::new(
            Instance::start(
                registry,
                shardcron_core::clock::SystemClock::shared(),
                config,
            )
            .await
            .expect("instance starts"),
        );
        metrics.set_instance(Arc::downgrade(&instance));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !instance.is_leader() {
            assert!(Instant::now() < deadline, "never became the leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = metrics.render();
        assert!(text.contains("\nshardcron_up 1\n"), "{text}");
        assert!(text.contains("\nshardcron_leader 1\n"), "{text}");
        let id = instance.id().expect("registered");
        assert!(
            text.contains(&format!(
                "shardcron_instance_info{{id=\"{id}\",name=\"metrics-node\"}} 1\n"
            )),
            "{text}"
        );
        assert!(text.contains("\nshardcron_clock_skew_ok "), "{text}");
        let s = "shardcron_registry_request_seconds";
        for op in ["txn", "lease_grant", "watch"] {
            assert!(
                value(&text, &format!("{s}_count{{op=\"{op}\"}}")) >= 1.0,
                "{op} counted: {text}"
            );
        }
        let instance = Arc::try_unwrap(instance).expect("the only handle");
        instance.shutdown().await.expect("shutdown");
        let text = metrics.render();
        assert!(text.starts_with(
            "# HELP shardcron_up Whether this node's instance runs and is registered in the \
             cluster (1) or not (0).\n# TYPE shardcron_up gauge\nshardcron_up 0\n"
        ));
        assert!(text.contains("\nshardcron_leader 0\n"));
        assert!(!text.contains("shardcron_instance_info"));
    }
}
