//! Deterministic simulation of a shardcron cluster: the real runtime ([`Instance`]
//! with its trigger loops, keepers, mirrors and leader) on the embedded registry,
//! on tokio's paused time, with faults chosen from a seed.
//!
//! - Time: every seed runs on its own current-thread tokio runtime with paused
//!   time. [`SimClock`] reads tokio's clock, so the runtime's [`Clock`] (wall and
//!   monotonic) and its tokio timers move together; the registry expires leases on
//!   the same clock. Tokio jumps to the next timer whenever every task waits, so a
//!   run of simulated minutes takes milliseconds.
//! - Faults ([`Plan`], drawn from the seed): crashes (an [`Instance`] dropped
//!   without shutdown) and restarts, early lease expiry (the registry revokes an
//!   instance's lease), keep-alive stalls (pauses: the keep-alives of one instance
//!   hang while its other calls work), isolation (every call of one instance hangs
//!   and is delivered late, as a partitioned client's requests would be), watch
//!   lag (the instance's watch streams hold their events, in order, and deliver
//!   them late; its calls work), and flaky windows in which calls fail before
//!   applying, lose their answer after applying (the ambiguous commit) or are
//!   delayed. Faults go through [`SimRegistry`], one per instance start, in front
//!   of one shared [`MemoryRegistry`].
//! - Plans ([`Scenario`]): random plans ([`Plan::from_seed`]) and targeted ones
//!   ([`Plan::unregistered_claimant`]: the leader isolated while another
//!   instance's lease is revoked under a lagging watch and stalled keep-alives,
//!   just before a fire: the scenario that only the registration compare stops),
//!   with timings drawn from the seed.
//! - Checks ([`check`]): I1 (runs of an item never overlap), I2 (one claim per
//!   fire), I4 (tokens increase per item), convergence (I5/I3: once faults
//!   stop, every item runs again), and `REG` on the registry's history (no claim
//!   or takeover commits after its identity's instance key was deleted: DESIGN
//!   section 5's "a claim must prove that its claimant is still registered";
//!   the deletions are recorded by a watch on the embedded registry itself).

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use shardcron_core::ExecutionSource;
use shardcron_core::clock::{Clock, MonoTime, SharedClock};
use shardcron_core::job::JobFile;
use shardcron_registry::{
    DeleteResponse, EventKind, KeyValue, Lease, LeaseId, MemoryRegistry, MemoryRegistryOptions,
    RangeRequest, RangeResponse, Registry, RegistryError, Result as RegResult, Revision, Txn,
    TxnResponse, WatchStream,
};
use shardcron_runtime::keys;
use shardcron_runtime::model::{LeaderInfo, decode};
use shardcron_runtime::{
    Cluster, Handlers, Instance, InstanceConfig, InstanceEvent, JobContext, JobError,
    MemoryHistory, Runner, SchedulerOptions, SimpleJob,
};
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// Randomness and time

/// SplitMix64: small, seedable, the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` if empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// A stable hash of some numbers (for per-run choices that must not depend on
/// the order in which runs happen).
pub fn mix(parts: &[u64]) -> u64 {
    let mut r = Rng::new(0);
    for p in parts {
        r.0 ^= *p;
        r.next_u64();
    }
    r.next_u64()
}

fn str_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The runtime's clock, read from tokio's (paused) clock: wall time starts at a
/// fixed instant, monotonic time at zero.
#[derive(Debug, Clone)]
pub struct SimClock {
    origin: Instant,
    wall0: DateTime<Utc>,
}

impl SimClock {
    pub fn new() -> SimClock {
        SimClock {
            origin: Instant::now(),
            wall0: Utc
                .with_ymd_and_hms(2030, 1, 1, 0, 0, 0)
                .single()
                .expect("a valid instant"),
        }
    }

    /// Simulated milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    pub fn wall_ms(&self, t: DateTime<Utc>) -> i64 {
        (t - self.wall0).num_milliseconds()
    }
}

impl Clock for SimClock {
    fn wall(&self) -> DateTime<Utc> {
        self.wall0 + chrono::Duration::from_std(self.origin.elapsed()).unwrap_or_default()
    }
    fn mono(&self) -> MonoTime {
        MonoTime::from_duration(self.origin.elapsed())
    }
}

// ---------------------------------------------------------------------------
// Fault injection

/// The fault state of one instance slot (shared by its successive starts).
#[derive(Debug)]
pub struct SlotFaults {
    pub slot: usize,
    /// Whether the plan may lag this slot's watches: only then do its watch
    /// streams go through a forwarding task (so that plans without the fault
    /// run exactly as before it existed).
    may_lag: bool,
    state: Mutex<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    rng: Rng,
    /// Keep-alives hang until then (a pause of the keep-alive path).
    stall_until: Option<Instant>,
    /// Every call hangs until then and is applied late (isolation).
    isolated_until: Option<Instant>,
    /// A flaky window: until, fail-before-apply, lose-answer, max delay.
    flaky: Option<(Instant, f64, f64, u64)>,
    /// Watch streams deliver nothing until then (a lagging watch): their
    /// batches are held, in order, and delivered after.
    watch_lag_until: Option<Instant>,
    stats: Stats,
}

/// What the fault layer did (for the report).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub failed: u64,
    pub lost: u64,
    pub delayed: u64,
    pub held: u64,
    pub stalled_keep_alives: u64,
    /// Watch batches held back by a [`Fault::WatchLag`].
    pub lagged_batches: u64,
}

impl SlotFaults {
    pub fn new(seed: u64, slot: usize, may_lag: bool) -> Arc<SlotFaults> {
        Arc::new(SlotFaults {
            slot,
            may_lag,
            state: Mutex::new(FaultState {
                rng: Rng::new(mix(&[seed, slot as u64, 0xFA])),
                stall_until: None,
                isolated_until: None,
                flaky: None,
                watch_lag_until: None,
                stats: Stats::default(),
            }),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut FaultState) -> R) -> R {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn stall_keep_alives(&self, until: Instant) {
        self.with(|s| s.stall_until = Some(until));
    }

    pub fn isolate(&self, until: Instant) {
        self.with(|s| s.isolated_until = Some(until));
    }

    pub fn flaky(&self, until: Instant, fail: f64, lose: f64, max_delay_ms: u64) {
        self.with(|s| s.flaky = Some((until, fail, lose, max_delay_ms)));
    }

    pub fn lag_watches(&self, until: Instant) {
        self.with(|s| s.watch_lag_until = Some(until));
    }

    /// The end of the open watch-lag window, if one is open.
    fn watch_lag(&self) -> Option<Instant> {
        self.with(|s| s.watch_lag_until.filter(|u| *u > Instant::now()))
    }

    pub fn clear(&self) {
        self.with(|s| {
            s.stall_until = None;
            s.isolated_until = None;
            s.flaky = None;
            s.watch_lag_until = None;
        });
    }

    pub fn stats(&self) -> Stats {
        self.with(|s| s.stats)
    }

    /// Before a call: hold it while isolated; then, in a flaky window, maybe delay
    /// it, and decide whether it fails before applying and whether its answer is
    /// lost after applying.
    async fn before(&self, can_lose: bool) -> (bool, bool, Duration) {
        let held = self.with(|s| {
            let now = Instant::now();
            s.isolated_until.filter(|u| *u > now).inspect(|_| {
                s.stats.held += 1;
            })
        });
        if let Some(until) = held {
            tokio::time::sleep_until(until).await;
        }
        self.with(|s| {
            let now = Instant::now();
            let Some((until, fail, lose, delay)) = s.flaky.filter(|f| f.0 > now) else {
                return (false, false, Duration::ZERO);
            };
            let _ = until;
            let before = if s.rng.chance(0.3) {
                s.stats.delayed += 1;
                s.rng.ms(0, delay)
            } else {
                Duration::ZERO
            };
            let failed = s.rng.chance(fail);
            let lost = !failed && can_lose && s.rng.chance(lose);
            if failed {
                s.stats.failed += 1;
            }
            if lost {
                s.stats.lost += 1;
            }
            (failed, lost, before)
        })
    }

    async fn call<T>(
        &self,
        can_lose: bool,
        op: impl std::future::Future<Output = RegResult<T>>,
    ) -> RegResult<T> {
        let (failed, lost, delay) = self.before(can_lose).await;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if failed {
            return Err(RegistryError::Unavailable("sim: request failed".into()));
        }
        let r = op.await;
        if lost {
            return Err(RegistryError::Unavailable(
                "sim: answer lost (the request may have been applied)".into(),
            ));
        }
        r
    }
}

/// A registry client of one instance start: every call goes through its slot's
/// faults to the shared embedded registry.
#[derive(Debug)]
pub struct SimRegistry {
    pub inner: Arc<dyn Registry>,
    pub faults: Arc<SlotFaults>,
}

#[async_trait::async_trait]
impl Registry for SimRegistry {
    async fn get(&self, key: &[u8]) -> RegResult<Option<KeyValue>> {
        self.faults.call(false, self.inner.get(key)).await
    }
    async fn range(&self, req: RangeRequest) -> RegResult<RangeResponse> {
        self.faults.call(false, self.inner.range(req)).await
    }
    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> RegResult<Revision> {
        self.faults
            .call(true, self.inner.put(key, value, lease))
            .await
    }
    async fn delete(&self, key: &[u8]) -> RegResult<DeleteResponse> {
        self.faults.call(true, self.inner.delete(key)).await
    }
    async fn txn(&self, txn: Txn) -> RegResult<TxnResponse> {
        self.faults.call(true, self.inner.txn(txn)).await
    }
    async fn lease_grant(&self, ttl: Duration) -> RegResult<Lease> {
        self.faults.call(true, self.inner.lease_grant(ttl)).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> RegResult<Duration> {
        let stall = self.faults.with(|s| {
            let now = Instant::now();
            s.stall_until.filter(|u| *u > now).inspect(|_| {
                s.stats.stalled_keep_alives += 1;
            })
        });
        if let Some(until) = stall {
            // Stalled: the answer never comes back in time (the keeper gives up
            // on it at its deadline).
            tokio::time::sleep_until(until).await;
            return Err(RegistryError::Unavailable("sim: keep-alive stalled".into()));
        }
        self.faults
            .call(true, self.inner.lease_keep_alive(id))
            .await
    }
    async fn lease_revoke(&self, id: LeaseId) -> RegResult<()> {
        self.faults.call(true, self.inner.lease_revoke(id)).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> RegResult<Option<Duration>> {
        self.faults
            .call(false, self.inner.lease_time_to_live(id))
            .await
    }
    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> RegResult<WatchStream> {
        let mut inner = self
            .faults
            .call(false, self.inner.watch(prefix, from_revision))
            .await?;
        if !self.faults.may_lag {
            return Ok(inner);
        }
        // Forward batch by batch; while the slot's lag window is open, hold them
        // (in order: the ones behind wait in `inner`) and deliver after, as a
        // lagging etcd watch would. Nothing is dropped.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let faults = self.faults.clone();
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    b = inner.next() => b,
                    () = tx.closed() => return,
                };
                let Some(batch) = batch else { return };
                let mut counted = false;
                // The window may be extended while a batch waits.
                while let Some(until) = faults.watch_lag() {
                    if !counted {
                        faults.with(|s| s.stats.lagged_batches += 1);
                        counted = true;
                    }
                    tokio::time::sleep_until(until).await;
                }
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        Ok(WatchStream::from_receiver(rx))
    }
    async fn compact(&self, revision: Revision) -> RegResult<()> {
        self.inner.compact(revision).await
    }
    async fn current_revision(&self) -> RegResult<Revision> {
        self.faults.call(false, self.inner.current_revision()).await
    }
}

// ---------------------------------------------------------------------------
// The plan of a seed

/// One fault of a plan, at `at` ms.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Drop the instance without shutdown; start it again `down` ms later.
    Crash { slot: usize, down: u64 },
    /// The registry revokes the instance's lease (it expires early).
    Revoke { slot: usize },
    /// The instance's keep-alives hang for `ms`.
    StallKeepAlive { slot: usize, ms: u64 },
    /// Every call of the instance hangs for `ms` and is then applied.
    Isolate { slot: usize, ms: u64 },
    /// For `ms`, the instance's watch streams deliver nothing; their events are
    /// held, in order, and delivered after (a lagging watch; calls still work).
    WatchLag { slot: usize, ms: u64 },
    /// The scenario that only the registration compare stops (DESIGN section 5:
    /// a claim must prove that its claimant is still registered), with its slots
    /// chosen when it applies: the current leader is isolated for `isolate_ms`
    /// (so no generation without the victim is published meanwhile), and another
    /// live instance, the victim, has its lease revoked by the registry while
    /// its watches lag for `lag_ms` and its keep-alives stall for `stall_ms`
    /// (so it learns of the loss neither from its mirror nor from a keep-alive).
    /// Its next claims, until its next heartbeat or its lease's local deadline,
    /// are sent by an identity whose instance key is gone.
    UnregisteredClaimant {
        isolate_ms: u64,
        lag_ms: u64,
        stall_ms: u64,
    },
    /// For `ms`, calls fail with probability `fail`, lose their answer with
    /// probability `lose`, and some are delayed up to `delay` ms.
    Flaky {
        slot: usize,
        ms: u64,
        fail: f64,
        lose: f64,
        delay: u64,
    },
}

/// A job of the simulation.
#[derive(Debug, Clone)]
pub struct SimJobSpec {
    pub name: &'static str,
    pub every_ms: u64,
    pub shards: u32,
    /// Work time of a run: uniform in this range (ms), drawn per fire.
    pub work: (u64, u64),
    pub misfire: &'static str,
}

/// Which kind of plan a seed is drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// [`Plan::from_seed`]: random faults of every kind.
    Random,
    /// [`Plan::unregistered_claimant`]: the scenario of the registration compare.
    UnregisteredClaimant,
}

impl Scenario {
    /// The name that `SHARDCRON_SIM_SCENARIO` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Random => "random",
            Scenario::UnregisteredClaimant => "unregistered-claimant",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        [Scenario::Random, Scenario::UnregisteredClaimant]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub seed: u64,
    pub instances: usize,
    /// Trigger loops per instance.
    pub partitions: usize,
    pub jobs: Vec<SimJobSpec>,
    /// The instances start then (ms; the jobs are created at 0, so that their
    /// fires are on whole seconds). It sets the phase of their heartbeats
    /// (every 500 ms from the start) against the fires.
    pub start_at: u64,
    /// Faults, by time (ms).
    pub faults: Vec<(u64, Fault)>,
    /// Faults happen before this (ms); then every slot is up and fault-free.
    pub fault_end: u64,
    /// The simulation ends then (ms).
    pub end: u64,
    /// Every item must have started a run in `settle..end` (convergence).
    pub settle: u64,
}

impl Plan {
    pub fn of(scenario: Scenario, seed: u64) -> Plan {
        match scenario {
            Scenario::Random => Plan::from_seed(seed),
            Scenario::UnregisteredClaimant => Plan::unregistered_claimant(seed),
        }
    }

    /// A targeted plan for the registration compare: two instances, one fast job
    /// of several items, and one [`Fault::UnregisteredClaimant`] shortly before a
    /// fire, with timings drawn from the seed. With the compare, the victim's
    /// next claim fails and it fences; without it, the claim commits under an
    /// identity whose instance key is gone (reported by the `REG` check of
    /// [`check`]).
    ///
    /// The victim's heartbeat (every 500 ms, a compare on its instance key)
    /// also notices the loss: the claim must come before it. Fires are on whole
    /// seconds; the instances start at `start_at` (100..400 ms), so their
    /// heartbeats fall at `start_at` + k * 500 ms, and the fault comes after the
    /// last heartbeat before a fire (at the fire minus 1..`500 - start_at` ms).
    /// Instances that start at 0, as in the random plans, heartbeat at the very
    /// instants of the fires, which is one reason why random plans do not
    /// produce this scenario.
    pub fn unregistered_claimant(seed: u64) -> Plan {
        let mut r = Rng::new(mix(&[seed, 0x0052_4547]));
        let start_at = r.range(100, 400);
        let at = r.range(6, 10) * 1_000 - r.range(1, 500 - start_at - 20);
        let fault = Fault::UnregisteredClaimant {
            isolate_ms: r.range(1_000, 3_000),
            lag_ms: r.range(3_000, 5_000),
            stall_ms: r.range(3_000, 5_000),
        };
        let fault_end = 20_000;
        Plan {
            scenario: Scenario::UnregisteredClaimant,
            seed,
            instances: 2,
            partitions: 1,
            jobs: vec![SimJobSpec {
                name: "fast",
                every_ms: 1000,
                shards: r.range(3, 7) as u32,
                work: (50, 400),
                misfire: "fire_once",
            }],
            start_at,
            faults: vec![(at, fault)],
            fault_end,
            end: fault_end + 25_000,
            settle: fault_end + 12_000,
        }
    }

    /// Whether some fault may lag the watches of `slot`.
    fn may_lag(&self, slot: usize) -> bool {
        self.faults.iter().any(|(_, f)| match f {
            Fault::WatchLag { slot: s, .. } => *s == slot,
            Fault::UnregisteredClaimant { .. } => true,
            _ => false,
        })
    }

    pub fn from_seed(seed: u64) -> Plan {
        let mut r = Rng::new(seed);
        let instances = r.range(2, 5) as usize;
        let partitions = r.range(1, 3) as usize;
        let jobs = vec![
            SimJobSpec {
                name: "fast",
                every_ms: 1000,
                shards: r.range(2, 5) as u32,
                work: (50, 1500),
                misfire: "fire_once",
            },
            SimJobSpec {
                name: "slow",
                every_ms: 3000,
                shards: r.range(1, 4) as u32,
                work: (500, 7000),
                misfire: if r.chance(0.5) { "skip" } else { "fire_once" },
            },
        ];
        let fault_end = 40_000;
        let n = r.range(4, 14);
        let mut faults = Vec::new();
        for _ in 0..n {
            let at = r.range(3_000, fault_end - 2_000);
            let slot = r.range(0, instances as u64) as usize;
            let f = match r.range(0, 100) {
                0..20 => Fault::Crash {
                    slot,
                    down: r.range(500, 8_000),
                },
                20..35 => Fault::Revoke { slot },
                35..55 => Fault::StallKeepAlive {
                    slot,
                    ms: r.range(500, 6_000),
                },
                55..70 => Fault::Isolate {
                    slot,
                    ms: r.range(200, 5_000),
                },
                _ => Fault::Flaky {
                    slot,
                    ms: r.range(1_000, 10_000),
                    fail: [0.05, 0.2, 0.5][r.range(0, 3) as usize],
                    lose: [0.05, 0.2, 0.5][r.range(0, 3) as usize],
                    delay: r.range(0, 800),
                },
            };
            faults.push((at, f));
        }
        // Lagging watches, from a stream of their own (so that the faults above
        // are what they were before this kind existed): half the seeds get one
        // or two.
        let mut lag = Rng::new(mix(&[seed, 0x1A6]));
        if lag.chance(0.5) {
            for _ in 0..lag.range(1, 3) {
                let at = lag.range(3_000, fault_end - 2_000);
                let slot = lag.range(0, instances as u64) as usize;
                let ms = lag.range(200, 6_000);
                faults.push((at, Fault::WatchLag { slot, ms }));
            }
        }
        faults.sort_by_key(|(at, _)| *at);
        Plan {
            scenario: Scenario::Random,
            seed,
            instances,
            partitions,
            jobs,
            start_at: 0,
            faults,
            fault_end,
            end: fault_end + 25_000,
            settle: fault_end + 12_000,
        }
    }
}

// ---------------------------------------------------------------------------
// The job

/// One execution as the job saw it (times in simulated ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub job: String,
    pub item: u32,
    /// Fire time, ms after the simulation's wall origin.
    pub fire: i64,
    pub token: i64,
    pub instance: String,
    pub source: ExecutionSource,
    pub attempt: u32,
    pub start: u64,
    pub end: Option<u64>,
    pub how: &'static str,
}

type Log = Arc<Mutex<Vec<Exec>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Records every run: its start at once, its end when it finishes, is cancelled
/// or is dropped (an aborted task: a crash).
#[derive(Clone)]
pub struct SimJob {
    seed: u64,
    clock: SimClock,
    log: Log,
    work: Arc<BTreeMap<String, (u64, u64)>>,
}

struct EndGuard {
    log: Log,
    index: usize,
    clock: SimClock,
    how: &'static str,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let now = self.clock.now_ms();
        if let Some(e) = lock(&self.log).get_mut(self.index) {
            e.end = Some(now);
            e.how = self.how;
        }
    }
}

#[async_trait::async_trait]
impl SimpleJob for SimJob {
    async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError> {
        let s = &ctx.sharding;
        let fire = self.clock.wall_ms(s.fire_time);
        let index = {
            let mut log = lock(&self.log);
            log.push(Exec {
                job: s.job.clone(),
                item: s.item,
                fire,
                token: s.token,
                instance: s.instance.clone(),
                source: s.source,
                attempt: s.attempt,
                start: self.clock.now_ms(),
                end: None,
                how: "running",
            });
            log.len() - 1
        };
        let mut guard = EndGuard {
            log: self.log.clone(),
            index,
            clock: self.clock.clone(),
            how: "aborted",
        };
        let (lo, hi) = self.work.get(&s.job).copied().unwrap_or((100, 200));
        let h = mix(&[self.seed, str_hash(&s.job), u64::from(s.item), fire as u64]);
        let work = Duration::from_millis(lo + h % (hi - lo).max(1));
        let cancelled = tokio::select! {
            biased;
            () = ctx.cancelled() => true,
            () = tokio::time::sleep(work) => false,
        };
        guard.how = if cancelled { "cancelled" } else { "done" };
        drop(guard);
        if cancelled {
            return Err(JobError("cancelled".into()));
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------
// Running a seed

/// What a seed produced.
#[derive(Debug)]
pub struct Outcome {
    pub plan: Plan,
    pub execs: Vec<Exec>,
    pub violations: Vec<String>,
    /// Overlaps within the documented limit of an early lease revocation (see
    /// [`check`]).
    pub allowed: Vec<String>,
    /// Normalized trace (identities renamed by slot and order), for determinism.
    pub trace: Vec<String>,
    pub stats: Stats,
    /// What the driver did, by time.
    pub driver_log: Vec<String>,
}

fn config(slot: usize) -> InstanceConfig {
    InstanceConfig {
        name: format!("s{slot}"),
        labels: BTreeMap::new(),
        capabilities: vec![],
        weight: 1,
        lease_ttl: Duration::from_secs(2),
        fence_margin: Duration::from_millis(500),
        heartbeat_interval: Duration::from_millis(500),
        reconcile_interval: Duration::from_secs(5),
        max_clock_skew: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(5),
    }
}

struct World {
    plan: Plan,
    clock: SimClock,
    memory: MemoryRegistry,
    faults: Vec<Arc<SlotFaults>>,
    slots: Mutex<Vec<Option<Instance>>>,
    /// Incremented on each crash, so that a start still in progress when its
    /// slot crashed drops what it started.
    epochs: Mutex<Vec<u64>>,
    job: SimJob,
    history: Arc<MemoryHistory>,
    driver_log: Mutex<Vec<String>>,
    /// Identities whose lease the registry revoked (the `Revoke` fault).
    revoked: Mutex<BTreeMap<String, Revocation>>,
    /// The registry's history of registrations: the revision at which each
    /// identity's instance key was deleted (by expiry, revocation or shutdown),
    /// as a watch on the embedded registry itself (not through a fault layer)
    /// saw it.
    deleted: Mutex<BTreeMap<String, Revision>>,
}

/// An early revocation by the registry (the `Revoke` fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// When, in simulated ms.
    pub at: u64,
    /// The registry's revision right after the revocation (its instance key's
    /// deletion), once the revocation has applied.
    pub revision: Option<Revision>,
}

impl World {
    fn note(&self, what: String) {
        let line = format!("{:>6} {what}", self.clock.now_ms());
        lock(&self.driver_log).push(line);
    }

    /// Start slot `slot` in the background (retrying while the registry refuses).
    fn start(self: &Arc<Self>, slot: usize) {
        let w = self.clone();
        let epoch = lock(&w.epochs)[slot];
        tokio::spawn(async move {
            loop {
                let reg: Arc<dyn Registry> = Arc::new(SimRegistry {
                    inner: Arc::new(w.memory.clone()),
                    faults: w.faults[slot].clone(),
                });
                let clock: SharedClock = Arc::new(w.clock.clone());
                let runner = Runner {
                    handlers: Handlers::new().register("sim", w.job.clone()),
                    history: w.history.clone(),
                    options: SchedulerOptions {
                        partitions: w.plan.partitions,
                        // Timers wake the loop at every fire; the tick is only the
                        // longest sleep between checks.
                        tick: Duration::from_millis(250),
                        ..SchedulerOptions::default()
                    },
                };
                match Instance::start_with(reg, clock, config(slot), runner).await {
                    Ok(i) => {
                        if lock(&w.epochs)[slot] != epoch {
                            return;
                        }
                        w.note(format!("s{slot} started as {}", i.id().unwrap_or_default()));
                        let mut events = i.events();
                        let w2 = w.clone();
                        tokio::spawn(async move {
                            while let Ok(e) = events.recv().await {
                                match e {
                                    InstanceEvent::Fenced { id, reason } => {
                                        w2.note(format!("{id} fenced: {reason}"));
                                    }
                                    InstanceEvent::Registered { id } => {
                                        w2.note(format!("s{slot} registered as {id}"));
                                    }
                                    InstanceEvent::Elected { token } => {
                                        w2.note(format!("s{slot} elected leader (token {token})"));
                                    }
                                    _ => {}
                                }
                            }
                        });
                        lock(&w.slots)[slot] = Some(i);
                        return;
                    }
                    Err(e) => {
                        w.note(format!("s{slot} start failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
    }

    fn crash(&self, slot: usize) -> bool {
        lock(&self.epochs)[slot] += 1;
        let taken = lock(&self.slots)[slot].take();
        let had = taken.is_some();
        drop(taken);
        had
    }

    fn identity(&self, slot: usize) -> Option<String> {
        lock(&self.slots)[slot].as_ref().and_then(Instance::id)
    }
}

/// Real time a seed may take before it is reported as a livelock (simulated time
/// stopped because a task never waits). Seeds normally take well under a second.
pub const LIVELOCK_AFTER: Duration = Duration::from_secs(5);

/// Run the simulation of `seed` (a random plan) on a fresh paused
/// current-thread runtime.
pub fn run_seed(seed: u64) -> Outcome {
    run_plan(Plan::from_seed(seed))
}

/// Run the simulation of `plan` on a fresh paused current-thread runtime.
pub fn run_plan(plan: Plan) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let reached = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // A real-time watchdog: paused time does not move while a task spins.
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(LIVELOCK_AFTER).is_err() {
            let _ = tx.send(());
        }
    });
    let outcome = rt.block_on({
        let plan = plan.clone();
        let reached = reached.clone();
        async move {
            tokio::select! {
                o = simulate(plan, reached) => Some(o),
                _ = rx => None,
            }
        }
    });
    let _ = done_tx.send(());
    let _ = watchdog.join();
    // Dropping the runtime drops every task left (keepers, mirrors, loops).
    drop(rt);
    outcome.unwrap_or_else(|| {
        let at = reached.load(std::sync::atomic::Ordering::SeqCst);
        Outcome {
            violations: vec![format!(
                "LIVELOCK simulated time stopped near {at} ms: a task runs without ever waiting (no real progress for {LIVELOCK_AFTER:?})"
            )],
            allowed: Vec::new(),
            plan,
            execs: Vec::new(),
            trace: Vec::new(),
            stats: Stats::default(),
            driver_log: Vec::new(),
        }
    })
}

async fn simulate(plan: Plan, reached: Arc<std::sync::atomic::AtomicU64>) -> Outcome {
    let clock = SimClock::new();
    {
        // Where simulated time is (for the livelock report).
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                reached.store(clock.now_ms(), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
    let memory = MemoryRegistry::with_options(MemoryRegistryOptions {
        clock: Arc::new(clock.clone()),
        // Leases also expire on every call; the timer only catches idle periods.
        expiry_tick: Duration::from_millis(250),
        ..MemoryRegistryOptions::default()
    })
    .expect("an embedded registry");
    let work: BTreeMap<String, (u64, u64)> = plan
        .jobs
        .iter()
        .map(|j| (j.name.to_string(), j.work))
        .collect();
    let job = SimJob {
        seed: plan.seed,
        clock: clock.clone(),
        log: Default::default(),
        work: Arc::new(work),
    };
    let world = Arc::new(World {
        faults: (0..plan.instances)
            .map(|s| SlotFaults::new(plan.seed, s, plan.may_lag(s)))
            .collect(),
        slots: Mutex::new((0..plan.instances).map(|_| None).collect()),
        epochs: Mutex::new(vec![0; plan.instances]),
        plan: plan.clone(),
        clock: clock.clone(),
        memory: memory.clone(),
        job: job.clone(),
        history: Arc::new(MemoryHistory::new()),
        driver_log: Mutex::new(Vec::new()),
        revoked: Mutex::new(BTreeMap::new()),
        deleted: Mutex::new(BTreeMap::new()),
    });
    {
        // The registry's own record of deregistrations (for the `REG` check): a
        // watch on the embedded registry, from before the first instance starts.
        let mut deletions = memory
            .watch(keys::INSTANCES.as_bytes(), 0)
            .await
            .expect("a watch of the instance keys");
        let w = world.clone();
        tokio::spawn(async move {
            while let Some(batch) = deletions.next().await {
                let Ok(batch) = batch else {
                    w.note("the watch of instance keys ended: REG check incomplete".into());
                    return;
                };
                for e in batch {
                    if e.kind != EventKind::Delete {
                        continue;
                    }
                    if let Some(id) = e.kv.key.strip_prefix(keys::INSTANCES.as_bytes()) {
                        lock(&w.deleted)
                            .insert(String::from_utf8_lossy(id).into_owned(), e.revision());
                    }
                }
            }
        });
    }
    let cluster = Cluster::new(Arc::new(memory.clone()), Arc::new(clock.clone()));
    for j in &plan.jobs {
        let toml = format!(
            "[[job]]\nname = \"{}\"\nevery = \"{}ms\"\nshards = {}\nkind = \"sim\"\nmisfire = \"{}\"\n",
            j.name, j.every_ms, j.shards, j.misfire
        );
        let spec = JobFile::from_toml(&toml).expect("job").jobs.remove(0);
        cluster.create_job(&spec).await.expect("create job");
    }
    tokio::time::sleep_until(clock.at(plan.start_at)).await;
    for slot in 0..plan.instances {
        world.start(slot);
    }
    for (at, fault) in &plan.faults {
        tokio::time::sleep_until(clock.at(*at)).await;
        apply(&world, fault).await;
    }
    tokio::time::sleep_until(clock.at(plan.fault_end)).await;
    // Faults stop; every slot that is down comes back.
    for (slot, f) in world.faults.iter().enumerate() {
        f.clear();
        let up = lock(&world.slots)[slot].is_some();
        if !up {
            world.crash(slot);
            world.start(slot);
        }
    }
    world.note("faults end".into());
    tokio::time::sleep_until(clock.at(plan.end)).await;
    // The registry's run keys and instances at the end (evidence for convergence).
    for prefix in ["run/", "failover/", "instances/"] {
        if let Ok(r) = memory
            .range(RangeRequest::prefix(prefix.as_bytes().to_vec()))
            .await
        {
            for kv in r.kvs {
                world.note(format!(
                    "at end: {} = {}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                ));
            }
        }
    }
    // The end: every instance stops as in a crash (running jobs are aborted and
    // log their end now).
    for slot in 0..plan.instances {
        world.crash(slot);
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let execs = lock(&job.log).clone();
    let mut stats = Stats::default();
    for f in &world.faults {
        let s = f.stats();
        stats.failed += s.failed;
        stats.lost += s.lost;
        stats.delayed += s.delayed;
        stats.held += s.held;
        stats.stalled_keep_alives += s.stalled_keep_alives;
        stats.lagged_batches += s.lagged_batches;
    }
    let revoked = lock(&world.revoked).clone();
    let deleted = lock(&world.deleted).clone();
    let (violations, allowed) = check(&plan, &execs, &revoked, &deleted);
    let trace = normalize(&execs);
    let driver_log = lock(&world.driver_log).clone();
    Outcome {
        plan,
        execs,
        violations,
        allowed,
        trace,
        stats,
        driver_log,
    }
}

/// The registry revokes the lease of `slot`'s current identity (if it has one),
/// in the background; recorded in `world.revoked`.
fn revoke(world: &Arc<World>, slot: usize) -> bool {
    let Some(id) = world.identity(slot) else {
        return false;
    };
    let Some(lease) = id
        .rsplit_once('-')
        .and_then(|(_, hex)| LeaseId::from_str_radix(hex, 16).ok())
    else {
        return false;
    };
    world.note(format!("s{slot} lease revoked by the registry ({id})"));
    lock(&world.revoked).insert(
        id.clone(),
        Revocation {
            at: world.clock.now_ms(),
            revision: None,
        },
    );
    let w = world.clone();
    tokio::spawn(async move {
        let _ = w.memory.lease_revoke(lease).await;
        let rev = w.memory.current_revision().await.ok();
        if let Some(r) = lock(&w.revoked).get_mut(&id) {
            r.revision = rev;
        }
    });
    true
}

/// The slot whose current identity holds the leader key, if any.
async fn leader_slot(world: &World) -> Option<usize> {
    let kv = world.memory.get(&keys::leader()).await.ok()??;
    let leader = decode::<LeaderInfo>(&kv.key, &kv.value).ok()?.instance;
    (0..world.plan.instances).find(|s| world.identity(*s).as_deref() == Some(leader.as_str()))
}

async fn apply(world: &Arc<World>, fault: &Fault) {
    let clock = &world.clock;
    let now = Instant::now();
    match *fault {
        Fault::Crash { slot, down } => {
            if world.crash(slot) {
                world.note(format!("s{slot} crashed (down {down} ms)"));
                let w = world.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(down)).await;
                    if w.clock.now_ms() < w.plan.fault_end && lock(&w.slots)[slot].is_none() {
                        w.start(slot);
                    }
                });
            }
        }
        Fault::Revoke { slot } => {
            revoke(world, slot);
        }
        Fault::StallKeepAlive { slot, ms } => {
            world.note(format!("s{slot} keep-alives stall for {ms} ms"));
            world.faults[slot].stall_keep_alives(now + Duration::from_millis(ms));
        }
        Fault::Isolate { slot, ms } => {
            world.note(format!("s{slot} isolated for {ms} ms"));
            world.faults[slot].isolate(now + Duration::from_millis(ms));
        }
        Fault::WatchLag { slot, ms } => {
            world.note(format!("s{slot} watches lag for {ms} ms"));
            world.faults[slot].lag_watches(now + Duration::from_millis(ms));
        }
        Fault::UnregisteredClaimant {
            isolate_ms,
            lag_ms,
            stall_ms,
        } => {
            let Some(leader) = leader_slot(world).await else {
                world.note("unregistered claimant: no leader now; skipped".into());
                return;
            };
            let Some(victim) =
                (0..world.plan.instances).find(|s| *s != leader && world.identity(*s).is_some())
            else {
                world.note("unregistered claimant: no other live instance; skipped".into());
                return;
            };
            world.note(format!(
                "unregistered claimant: leader s{leader} isolated for {isolate_ms} ms; s{victim}'s watches lag for {lag_ms} ms and its keep-alives stall for {stall_ms} ms"
            ));
            world.faults[leader].isolate(now + Duration::from_millis(isolate_ms));
            world.faults[victim].lag_watches(now + Duration::from_millis(lag_ms));
            world.faults[victim].stall_keep_alives(now + Duration::from_millis(stall_ms));
            revoke(world, victim);
        }
        Fault::Flaky {
            slot,
            ms,
            fail,
            lose,
            delay,
        } => {
            world.note(format!(
                "s{slot} flaky for {ms} ms (fail {fail}, lose {lose}, delay <= {delay} ms)"
            ));
            world.faults[slot].flaky(now + Duration::from_millis(ms), fail, lose, delay);
        }
    }
    let _ = clock;
}

// ---------------------------------------------------------------------------
// Checks

fn show(e: &Exec) -> String {
    format!(
        "{}/{} fire={} token={} {} {:?}#{} [{}..{}] {}",
        e.job,
        e.item,
        e.fire,
        e.token,
        e.instance,
        e.source,
        e.attempt,
        e.start,
        e.end.map_or("?".into(), |x| x.to_string()),
        e.how
    )
}

/// The invariant violations in a log of executions, and the overlaps allowed.
///
/// Besides the invariants of the executions (I1, I2, I4, I5), one rule is
/// checked on the registry's history: `REG`, DESIGN section 5's "a claim must
/// prove that its claimant is still registered" (the registration compare of
/// every claim and takeover). An execution's token is the revision at which its
/// claim or takeover committed, and `deleted` holds the revision at which each
/// identity's instance key was deleted; an execution whose token is above its
/// identity's deletion revision was claimed by an unregistered identity.
///
/// One overlap is allowed, within a bound: a lease revoked by the registry before
/// its holder's deadline (the `Revoke` fault: an operator's revoke, not an
/// expiry, which never comes before the holder's own deadline) is noticed by the
/// holder through its watch of its own key or its next keep-alive, which a
/// flaky connection can delay beyond the leader's lock delay; the holder's run
/// may then overlap the failover run until the holder fences itself, at the
/// latest at its lease's local deadline (revocation + TTL - fence margin). That
/// overlap is allowed (and reported as such) when the earlier run belongs to
/// the revoked identity and was claimed before the revocation (its token is
/// below the revocation's revision: a run claimed after it is what the
/// registration compare prevents), the later one started after the revocation,
/// and the earlier one was cancelled by that deadline. Everything else is a
/// violation.
pub fn check(
    plan: &Plan,
    execs: &[Exec],
    revoked: &BTreeMap<String, Revocation>,
    deleted: &BTreeMap<String, Revision>,
) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut allowed = Vec::new();
    let ttl = config(0).lease_ttl.saturating_sub(config(0).fence_margin);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let within_revocation_limit = |later: &Exec, earlier: &Exec| {
        revoked.get(&earlier.instance).is_some_and(|r| {
            r.revision.is_some_and(|rev| earlier.token < rev)
                && later.start >= r.at
                && earlier.how == "cancelled"
                && earlier.end.is_some_and(|end| end <= r.at + ttl_ms)
        })
    };
    // REG: no claim or takeover commits after its identity's instance key was
    // deleted.
    for e in execs {
        if let Some(&gone) = deleted.get(&e.instance)
            && e.token > gone
        {
            out.push(format!(
                "REG claim by an unregistered identity: {} committed at revision {}, after {}'s instance key was deleted at revision {gone}",
                show(e),
                e.token,
                e.instance
            ));
        }
    }
    let mut by_item: BTreeMap<(String, u32), Vec<&Exec>> = BTreeMap::new();
    for e in execs {
        by_item.entry((e.job.clone(), e.item)).or_default().push(e);
    }
    for ((job, item), runs) in &mut by_item {
        runs.sort_by_key(|e| (e.start, e.token));
        // I1: no two runs of an item at the same time.
        let mut latest: Option<&Exec> = None;
        for e in runs.iter() {
            if let Some(p) = latest
                && e.start < p.end.unwrap_or(u64::MAX)
            {
                let to = if within_revocation_limit(e, p) {
                    &mut allowed
                } else {
                    &mut out
                };
                to.push(format!(
                    "I1 overlap on {job}/{item}: {} runs while {} does",
                    show(e),
                    show(p)
                ));
            }
            if latest.is_none_or(|p| e.end.unwrap_or(u64::MAX) > p.end.unwrap_or(u64::MAX)) {
                latest = Some(e);
            }
        }
        // I4: tokens increase per item (a retry of a claim keeps its token).
        for w in runs.windows(2) {
            let (a, b) = (w[0], w[1]);
            let same_claim = a.token == b.token && a.fire == b.fire;
            if b.token < a.token || (b.token == a.token && !same_claim) {
                out.push(format!(
                    "I4 token not increasing on {job}/{item}: {} after {}",
                    show(b),
                    show(a)
                ));
            }
        }
        // I2: one claim per fire (a failover re-run or a retry is not a claim).
        let mut claims: BTreeMap<i64, Vec<&Exec>> = BTreeMap::new();
        for e in runs.iter() {
            if matches!(
                e.source,
                ExecutionSource::Normal | ExecutionSource::Misfire | ExecutionSource::Manual
            ) {
                claims.entry(e.fire).or_default().push(e);
            }
        }
        for (fire, c) in claims {
            let tokens: BTreeSet<i64> = c.iter().map(|e| e.token).collect();
            if tokens.len() > 1 {
                out.push(format!(
                    "I2 fire {fire} of {job}/{item} claimed {} times: {}",
                    tokens.len(),
                    c.iter().map(|e| show(e)).collect::<Vec<_>>().join(" | ")
                ));
            }
        }
    }
    // Convergence (I5, and I3's "nothing silently lost"): once faults stopped and
    // the cluster settled, every item runs again.
    for j in &plan.jobs {
        for item in 0..j.shards {
            let ran = execs
                .iter()
                .any(|e| e.job == j.name && e.item == item && e.start >= plan.settle);
            if !ran {
                let last = execs
                    .iter()
                    .filter(|e| e.job == j.name && e.item == item)
                    .max_by_key(|e| e.start);
                out.push(format!(
                    "I5 {}/{item} did not run between {} and {} ms (faults ended at {} ms); its last run: {}",
                    j.name,
                    plan.settle,
                    plan.end,
                    plan.fault_end,
                    last.map_or("none".into(), show)
                ));
            }
        }
    }
    (out, allowed)
}

/// The executions with identities renamed `s{slot}.{n}` (n-th identity of the
/// slot, in order of first run), sorted, one line each.
pub fn normalize(execs: &[Exec]) -> Vec<String> {
    let mut sorted: Vec<&Exec> = execs.iter().collect();
    sorted.sort_by(|a, b| {
        (a.start, &a.job, a.item, a.token).cmp(&(b.start, &b.job, b.item, b.token))
    });
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut per_slot: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for e in sorted {
        let slot = e
            .instance
            .rsplit_once('-')
            .map_or(e.instance.clone(), |(n, _)| n.to_string());
        let name = names
            .entry(e.instance.clone())
            .or_insert_with(|| {
                let n = per_slot.entry(slot.clone()).or_insert(0);
                *n += 1;
                format!("{slot}.{n}")
            })
            .clone();
        out.push(format!(
            "{}/{} fire={} token={} {} {:?}#{} [{}..{}] {}",
            e.job,
            e.item,
            e.fire,
            e.token,
            name,
            e.source,
            e.attempt,
            e.start,
            e.end.map_or("?".into(), |x| x.to_string()),
            e.how
        ));
    }
    out
}

impl Outcome {
    /// A report of the seed: plan, what the driver did, violations, trace.
    pub fn report(&self, with_trace: bool) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let scenario = match p.scenario {
            Scenario::Random => String::new(),
            other => format!("SHARDCRON_SIM_SCENARIO={} ", other.name()),
        };
        let _ = writeln!(
            s,
            "seed {} ({} plan): {} instances, jobs {:?}, {} faults until {} ms, end {} ms; replay: {scenario}SHARDCRON_SIM_SEED={} cargo nextest run -p shardcron-runtime --test simulation replay",
            p.seed,
            p.scenario.name(),
            p.instances,
            p.jobs
                .iter()
                .map(|j| format!(
                    "{}({} items, every {} ms, {})",
                    j.name, j.shards, j.every_ms, j.misfire
                ))
                .collect::<Vec<_>>(),
            p.faults.len(),
            p.fault_end,
            p.end,
            p.seed
        );
        let _ = writeln!(s, "fault layer: {:?}", self.stats);
        let _ = writeln!(s, "driver:");
        for l in &self.driver_log {
            let _ = writeln!(s, "  {l}");
        }
        let _ = writeln!(s, "violations ({}):", self.violations.len());
        for v in &self.violations {
            let _ = writeln!(s, "  {v}");
        }
        if !self.allowed.is_empty() {
            let _ = writeln!(s, "allowed ({}):", self.allowed.len());
            for v in &self.allowed {
                let _ = writeln!(s, "  {v}");
            }
        }
        if with_trace {
            let _ = writeln!(s, "executions ({}):", self.trace.len());
            for l in &self.trace {
                let _ = writeln!(s, "  {l}");
            }
        }
        s
    }
}
