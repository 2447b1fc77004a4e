//! [`Instance`]: one member of a cluster.
//!
//! An instance registers under a per-start identity bound to its own lease, keeps
//! the lease alive, heartbeats its wall clock, mirrors the namespace, campaigns for
//! leadership, and (as leader) publishes membership generations. From the current
//! generation every instance computes every job's assignment itself.
//!
//! Losing the lease (the keeper reports it, a heartbeat's compare fails, or the
//! instance key disappears from the mirror) *fences* the instance: it stops acting
//! on the old identity at once, then registers again under a new one. It never
//! shuts itself down because of a lost session. A graceful shutdown revokes the
//! lease so the others react at once; a shutdown *request* is carried out by the
//! target itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use shardcron_core::clock::SharedClock;
use shardcron_core::job::JobSpec;
use shardcron_core::sharding::ShardingInstance;
use shardcron_registry::{
    Compare, Lease, LeaseEvent, LeaseKeeper, Registry, RegistryError, Txn, TxnOp,
};
use tokio::sync::{broadcast, watch};

use crate::cluster::decode_job;
use crate::error::{Error, Result};
use crate::execute::{Handlers, HistorySink};
use crate::keys::{self, Key};
use crate::mirror::Mirror;
use crate::model::{
    Generation, InstanceFlag, InstanceInfo, ItemFlag, LeaderInfo, Member, Schema, TriggerRequest,
    decode, encode,
};
use crate::scheduler::{Scheduler, SchedulerOptions};
use crate::skew::{SkewGuard, SkewStatus};

/// How an instance runs.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Stable name; flags such as "disabled" attach to it. Default: the host name.
    pub name: String,
    /// Labels that jobs select on.
    pub labels: BTreeMap<String, String>,
    /// Job kinds and handler names this instance can run.
    pub capabilities: Vec<String>,
    /// Relative capacity (weighted strategy), at least 1.
    pub weight: u32,
    /// Lease TTL (default 5 s).
    pub lease_ttl: Duration,
    /// Stop acting this long before the lease's local deadline (default TTL / 5).
    pub fence_margin: Duration,
    /// How often the instance writes its heartbeat (default 2 s).
    pub heartbeat_interval: Duration,
    /// How often mirrors re-list everything as a reconcile (default 30 s).
    pub reconcile_interval: Duration,
    /// Largest tolerated clock skew against the cluster (default 2 s).
    pub max_clock_skew: Duration,
    /// How long a graceful shutdown lets running executions finish (default 30 s).
    pub shutdown_grace: Duration,
}

impl InstanceConfig {
    /// Defaults with the machine's host name as the name.
    pub fn new() -> Self {
        InstanceConfig {
            name: host_name(),
            labels: BTreeMap::new(),
            capabilities: vec!["script".into(), "http".into()],
            weight: 1,
            lease_ttl: Duration::from_secs(5),
            fence_margin: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(2),
            reconcile_interval: Duration::from_secs(30),
            max_clock_skew: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// Refuse settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::Invalid(format!(
                "name: must be 1-64 characters of letters, digits, '.', '_' and '-', got {:?}",
                self.name
            )));
        }
        if self.weight == 0 || self.weight > 10_000 {
            return Err(Error::Invalid(format!(
                "weight: must be between 1 and 10000, got {}",
                self.weight
            )));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(Error::Invalid(format!(
                "lease_ttl: must be at least 2s (etcd's minimum), got {:?}",
                self.lease_ttl
            )));
        }
        if self.fence_margin >= self.lease_ttl / 2 {
            return Err(Error::Invalid(format!(
                "fence_margin: must be less than half the lease TTL ({:?}), got {:?}",
                self.lease_ttl / 2,
                self.fence_margin
            )));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || v.is_empty() {
                return Err(Error::Invalid(format!(
                    "labels: keys and values must not be empty, got {k:?}={v:?}"
                )));
            }
        }
        Ok(())
    }
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The machine's host name, cleaned to `[A-Za-z0-9._-]`.
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "localhost".into());
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Something that happened to an instance (for logs, tests and the console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// Registered under a new identity.
    Registered {
        /// The identity.
        id: String,
    },
    /// Stopped acting on an identity whose lease can no longer be trusted.
    Fenced {
        /// The identity.
        id: String,
        /// Why.
        reason: String,
    },
    /// Became the leader.
    Elected {
        /// The leader token.
        token: i64,
    },
    /// Stopped being the leader.
    Deposed,
    /// Published a generation (as leader).
    Published {
        /// Generation number.
        number: u64,
    },
    /// A shutdown request for this instance arrived.
    ShutdownRequested,
}

/// Why a job does not run anywhere, or does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobPlacement {
    /// Assigned: items per instance id.
    Assigned(BTreeMap<String, Vec<u32>>),
    /// No live, enabled instance matches the job's labels and kind.
    NoEligibleInstance,
    /// The job is disabled.
    Disabled,
    /// No generation has been published yet.
    NoGeneration,
}

#[derive(Debug)]
struct Session {
    id: String,
    lease: Lease,
    reg_rev: i64,
    keeper: LeaseKeeper,
}

#[derive(Debug)]
pub(crate) struct Mirrors {
    pub(crate) instances: Arc<Mirror>,
    pub(crate) leader: Arc<Mirror>,
    pub(crate) generation: Arc<Mirror>,
    pub(crate) jobs: Arc<Mirror>,
    pub(crate) items: Arc<Mirror>,
    pub(crate) flags: Arc<Mirror>,
    pub(crate) requests: Arc<Mirror>,
    pub(crate) runs: Arc<Mirror>,
    pub(crate) failovers: Arc<Mirror>,
}

impl Mirrors {
    fn all(&self) -> [&Arc<Mirror>; 9] {
        [
            &self.runs,
            &self.failovers,
            &self.instances,
            &self.leader,
            &self.generation,
            &self.jobs,
            &self.items,
            &self.flags,
            &self.requests,
        ]
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) clock: SharedClock,
    pub(crate) config: InstanceConfig,
    session: RwLock<Option<Arc<Session>>>,
    /// Leader token while this instance leads.
    leader_token: RwLock<Option<i64>>,
    mirrors: Mirrors,
    skew: Mutex<SkewGuard>,
    stop: watch::Sender<bool>,
    events: broadcast::Sender<InstanceEvent>,
    shutdown_requested: watch::Sender<bool>,
    /// Set while a fence is in progress; no claim may start.
    fenced: AtomicBool,
    /// The weight announced in heartbeats (changeable live).
    weight: AtomicU32,
    /// Wakes the heartbeat loop early (after a weight change).
    pub(crate) heartbeat_now: tokio::sync::Notify,
    session_changed: watch::Sender<u64>,
    /// Where execution records go (the scheduler's, and the leader's LOST records).
    history: Option<Arc<dyn HistorySink>>,
    scheduler: SchedulerOptions,
    /// Runs in progress (the scheduler's), for a graceful shutdown's drain.
    pub(crate) running: crate::scheduler::RunningMap,
    /// Set by a graceful shutdown: claim nothing new, let runs finish.
    draining: AtomicBool,
}

/// Reads jobs from an instance's mirror of the registry; see
/// [`Instance::job_reader`].
#[derive(Clone)]
pub struct JobReader(Arc<Shared>);

impl std::fmt::Debug for JobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobReader")
    }
}

impl JobReader {
    /// The job as the instance sees it now.
    pub fn job(&self, name: &str) -> Option<JobSpec> {
        self.0.job(name)
    }
}

/// What an instance runs: handlers, where records go, and trigger-loop settings.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Rust handlers by job kind.
    pub handlers: Handlers,
    /// Where execution records go.
    pub history: Arc<dyn HistorySink>,
    /// Trigger-loop settings.
    pub options: SchedulerOptions,
}

/// A running instance. Dropping it stops its tasks without revoking its lease
/// (like a crash: the others notice when the lease expires); call
/// [`Instance::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct Instance {
    shared: Arc<Shared>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match l.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Create the schema key if absent; refuse a namespace of a newer major version.
pub async fn check_schema(registry: &dyn Registry) -> Result<Schema> {
    let ours = Schema {
        major: keys::SCHEMA_MAJOR,
        minor: keys::SCHEMA_MINOR,
    };
    let resp = registry
        .txn(
            Txn::new()
                .when(Compare::absent(keys::schema()))
                .and_then(TxnOp::put(keys::schema(), encode(&ours)))
                .or_else(TxnOp::get(keys::schema())),
        )
        .await?;
    if resp.succeeded {
        return Ok(ours);
    }
    let found = resp
        .responses
        .into_iter()
        .find_map(|r| match r {
            shardcron_registry::OpResponse::Get { kvs } => kvs.into_iter().next(),
            _ => None,
        })
        .ok_or_else(|| Error::NotFound("schema key".into()))?;
    let schema: Schema = decode(&found.key, &found.value)?;
    if schema.major > keys::SCHEMA_MAJOR {
        return Err(Error::SchemaTooNew {
            found_major: schema.major,
            found_minor: schema.minor,
            known_major: keys::SCHEMA_MAJOR,
        });
    }
    Ok(schema)
}

impl Instance {
    /// Join the cluster of `registry`: check the key schema, register, and start
    /// the background tasks. Returns once registered.
    pub async fn start(
        registry: Arc<dyn Registry>,
        clock: SharedClock,
        config: InstanceConfig,
    ) -> Result<Instance> {
        Self::start_inner(registry, clock, config, None).await
    }

    /// Join the cluster and run jobs: the trigger loop claims the fires of the
    /// items this instance owns and runs them with `runner`'s handlers (whose names
    /// are added to the instance's capabilities).
    pub async fn start_with(
        registry: Arc<dyn Registry>,
        clock: SharedClock,
        mut config: InstanceConfig,
        runner: Runner,
    ) -> Result<Instance> {
        for name in runner.handlers.names() {
            if !config.capabilities.contains(&name) {
                config.capabilities.push(name);
            }
        }
        Self::start_inner(registry, clock, config, Some(runner)).await
    }

    async fn start_inner(
        registry: Arc<dyn Registry>,
        clock: SharedClock,
        config: InstanceConfig,
        runner: Option<Runner>,
    ) -> Result<Instance> {
        config.validate()?;
        check_schema(registry.as_ref()).await?;
        let (stop, stop_rx) = watch::channel(false);
        let reconcile = config.reconcile_interval;
        let m = |p: &[u8]| Mirror::spawn(registry.clone(), p, reconcile, stop_rx.clone());
        let mirrors = Mirrors {
            instances: m(keys::INSTANCES.as_bytes()),
            leader: m(&keys::leader()),
            generation: m(&keys::generation()),
            jobs: m(keys::JOBS.as_bytes()),
            items: m(keys::ITEMS.as_bytes()),
            flags: m(keys::INSTANCE_FLAGS.as_bytes()),
            requests: m(keys::REQUESTS.as_bytes()),
            runs: m(keys::RUNS.as_bytes()),
            failovers: m(keys::FAILOVERS.as_bytes()),
        };
        let (events, _) = broadcast::channel(256);
        let weight = config.weight;
        let shared = Arc::new(Shared {
            registry,
            clock,
            config,
            session: RwLock::new(None),
            leader_token: RwLock::new(None),
            mirrors,
            skew: Mutex::new(SkewGuard::default()),
            stop,
            events,
            shutdown_requested: watch::channel(false).0,
            fenced: AtomicBool::new(true),
            weight: AtomicU32::new(weight),
            heartbeat_now: tokio::sync::Notify::new(),
            session_changed: watch::channel(0).0,
            history: runner.as_ref().map(|r| r.history.clone()),
            scheduler: runner
                .as_ref()
                .map(|r| r.options.clone())
                .unwrap_or_default(),
            running: Default::default(),
            draining: AtomicBool::new(false),
        });
        let session = register(&shared).await?;
        install_session(&shared, session);
        for mirror in shared.mirrors.all() {
            mirror.synced().await;
        }
        tokio::spawn(session_loop(shared.clone()));
        tokio::spawn(deadline_watchdog(shared.clone()));
        tokio::spawn(heartbeat_loop(shared.clone()));
        tokio::spawn(leader_loop(shared.clone()));
        tokio::spawn(watch_instances(shared.clone()));
        tokio::spawn(watch_requests(shared.clone()));
        if let Some(r) = runner {
            for partition in 0..r.options.partitions.max(1) {
                let scheduler = Scheduler::new(
                    shared.clone(),
                    r.handlers.clone(),
                    r.history.clone(),
                    r.options.clone(),
                    partition,
                );
                tokio::spawn(scheduler.run());
            }
        }
        Ok(Instance { shared })
    }

    /// The current identity (None while fenced and not yet re-registered).
    pub fn id(&self) -> Option<String> {
        if self.shared.fenced.load(Ordering::SeqCst) {
            return None;
        }
        read(&self.shared.session).as_ref().map(|s| s.id.clone())
    }

    /// The stable name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Whether this instance is the leader now.
    pub fn is_leader(&self) -> bool {
        read(&self.shared.leader_token).is_some()
    }

    /// Events (registration, fencing, leadership, generations, shutdown requests).
    pub fn events(&self) -> broadcast::Receiver<InstanceEvent> {
        self.shared.events.subscribe()
    }

    /// Resolves when a shutdown request for this instance has arrived.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shared.shutdown_requested.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The generation this instance sees.
    pub fn generation(&self) -> Option<Generation> {
        self.shared.generation()
    }

    /// Where a job runs, as computed locally from the generation.
    pub fn placement(&self, job: &str) -> Option<JobPlacement> {
        let spec = self.shared.job(job)?;
        Some(self.shared.placement(&spec))
    }

    /// The items of `job` this instance owns now (disabled items excluded).
    pub fn my_items(&self, job: &str) -> Vec<u32> {
        let Some(id) = self.id() else {
            return Vec::new();
        };
        let Some(spec) = self.shared.job(job) else {
            return Vec::new();
        };
        match self.shared.placement(&spec) {
            JobPlacement::Assigned(a) => {
                let disabled = self.shared.disabled_items(job);
                a.get(&id)
                    .map(|items| {
                        items
                            .iter()
                            .copied()
                            .filter(|i| !disabled.contains(i))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Trigger requests this instance sees, oldest first.
    pub fn pending_triggers(&self) -> Vec<TriggerRequest> {
        self.shared.mirrors.requests.read(|m| {
            m.iter()
                .filter(|(k, _)| matches!(Key::parse(k), Key::TriggerRequest(_)))
                .filter_map(|(k, kv)| decode::<TriggerRequest>(k, &kv.value).ok())
                .collect()
        })
    }

    /// Executions whose cancellation was requested.
    pub fn pending_cancels(&self) -> Vec<String> {
        self.shared.mirrors.requests.read(|m| {
            m.keys()
                .filter_map(|k| match Key::parse(k) {
                    Key::CancelRequest(e) => Some(e),
                    _ => None,
                })
                .collect()
        })
    }

    /// Change the weight this instance announces; the leader publishes a new
    /// generation with it.
    pub fn set_weight(&self, weight: u32) -> Result<()> {
        if weight == 0 || weight > 10_000 {
            return Err(Error::Invalid(format!(
                "weight: must be between 1 and 10000, got {weight}"
            )));
        }
        self.shared.weight.store(weight, Ordering::SeqCst);
        self.shared.heartbeat_now.notify_one();
        Ok(())
    }

    /// The clock-skew guard's verdict now.
    pub fn skew(&self) -> SkewStatus {
        self.shared.skew_status()
    }

    /// The lease's local deadline margin check: whether the instance may act now.
    pub fn may_act(&self) -> bool {
        self.shared.may_act()
    }

    /// Stop gracefully: stop the tasks and revoke the lease, so the others react at
    /// once (the instance and leader keys disappear with it).
    pub async fn shutdown(self) -> Result<()> {
        graceful_stop(&self.shared).await
    }

    /// The job as this instance sees it now (its mirror of the registry).
    pub fn job(&self, name: &str) -> Option<JobSpec> {
        self.shared.job(name)
    }

    /// A handle that reads jobs from this instance's mirror, like
    /// [`Instance::job`], without holding the instance (it stays usable, with the
    /// last state seen, after the instance stops).
    pub fn job_reader(&self) -> JobReader {
        JobReader(self.shared.clone())
    }

    /// Run until SIGTERM, Ctrl-C (SIGINT) or a shutdown request, then stop
    /// gracefully (revoking the lease, so the others react at once). This is what
    /// `shardcron agent` and embedding applications call from `main`.
    pub async fn run_until_shutdown(self) -> Result<()> {
        let waited = self.wait_for_shutdown_signal().await;
        let stopped = self.shutdown().await;
        waited.and(stopped)
    }

    /// Wait for SIGTERM, Ctrl-C (SIGINT) or a shutdown request, without stopping:
    /// for callers that stop other things first and then call [`Instance::shutdown`].
    pub async fn wait_for_shutdown_signal(&self) -> Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::Invalid(format!("cannot listen for SIGTERM: {e}")))?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down gracefully"),
            r = tokio::signal::ctrl_c() => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                }
                tracing::info!("Ctrl-C: shutting down gracefully");
            }
            () = self.shutdown_requested() => {}
        }
        Ok(())
    }

    /// Whether the instance has stopped (after a shutdown request or a shutdown).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.shared.stop.send(true);
        // Like a crash: runs stop now (they keep their run keys for failover),
        // not when the trigger loop next looks (it may be blocked in a registry
        // call; found by the simulation).
        crate::scheduler::abort_all(&self.shared.running);
        if let Some(s) = read(&self.shared.session).as_ref() {
            s.keeper.stop();
        }
    }
}

impl Shared {
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn mirrors(&self) -> &Mirrors {
        &self.mirrors
    }

    pub(crate) fn session_changes(&self) -> watch::Receiver<u64> {
        self.session_changed.subscribe()
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Fence the identity `id` (if it is still the current one).
    pub(crate) fn fence_identity(&self, id: &str, reason: &str) {
        self.fence(id, reason);
    }

    fn emit(&self, e: InstanceEvent) {
        let _ = self.events.send(e);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopped()
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(crate) fn current_session(&self) -> Option<(String, i64)> {
        if self.fenced.load(Ordering::SeqCst) {
            return None;
        }
        read(&self.session)
            .as_ref()
            .map(|s| (s.id.clone(), s.reg_rev))
    }

    pub(crate) fn may_act(&self) -> bool {
        if self.fenced.load(Ordering::SeqCst) || self.stopped() {
            return false;
        }
        read(&self.session)
            .as_ref()
            .is_some_and(|s| s.keeper.is_valid(self.config.fence_margin))
    }

    pub(crate) fn generation(&self) -> Option<Generation> {
        let kv = self.mirrors.generation.get(&keys::generation())?;
        decode(&kv.key, &kv.value).ok()
    }

    pub(crate) fn job(&self, name: &str) -> Option<JobSpec> {
        let kv = self.mirrors.jobs.get(&keys::job(name))?;
        match decode_job(&kv.key, &kv.value) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a malformed job");
                None
            }
        }
    }

    pub(crate) fn disabled_items(&self, job: &str) -> Vec<u32> {
        let prefix = keys::items_of(job);
        self.mirrors.items.read(|m| {
            m.range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, kv)| match Key::parse(k) {
                    Key::Item(_, i) => decode::<ItemFlag>(k, &kv.value)
                        .ok()
                        .filter(|f| f.disabled)
                        .map(|_| i),
                    _ => None,
                })
                .collect()
        })
    }

    pub(crate) fn placement(&self, spec: &JobSpec) -> JobPlacement {
        placement_in(self.generation().as_ref(), spec)
    }

    pub(crate) fn skew_status(&self) -> SkewStatus {
        let Some((me, _)) = self.current_session() else {
            return SkewStatus::Unknown;
        };
        let others: Vec<String> = self.mirrors.instances.read(|m| {
            m.keys()
                .filter_map(|k| match Key::parse(k) {
                    Key::Instance(id) if id != me => Some(id),
                    _ => None,
                })
                .collect()
        });
        let leader = self
            .mirrors
            .leader
            .get(&keys::leader())
            .and_then(|kv| decode::<LeaderInfo>(&kv.key, &kv.value).ok())
            .map(|l| l.instance);
        lock(&self.skew).status(
            &others,
            &me,
            leader.as_deref(),
            self.clock.mono(),
            self.clock.wall(),
            self.config.heartbeat_interval * 3,
            self.config.max_clock_skew,
        )
    }

    fn info(&self, id: &str) -> InstanceInfo {
        let now = self.clock.wall();
        InstanceInfo {
            id: id.to_string(),
            name: self.config.name.clone(),
            host: host_name(),
            pid: std::process::id(),
            labels: self.config.labels.clone(),
            capabilities: self.config.capabilities.clone(),
            weight: self.weight.load(Ordering::SeqCst),
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat: now,
            started: now,
            clock_skewed: matches!(self.skew_status(), SkewStatus::TooFar { .. }),
        }
    }

    /// Stop acting on the current identity (idempotent per identity).
    fn fence(&self, id: &str, reason: &str) {
        if crate::failpoints::removed(crate::failpoints::Mechanism::SelfFence) {
            tracing::warn!(
                instance = id,
                reason,
                "self-fencing is removed (test switch): carrying on"
            );
            return;
        }
        let current = read(&self.session).as_ref().map(|s| s.id.clone());
        if current.as_deref() != Some(id) {
            return;
        }
        if self.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            instance = id,
            reason,
            "fencing: the lease can no longer be trusted"
        );
        *write(&self.leader_token) = None;
        // Stop the runs now, not when the trigger loop next looks: it may be
        // blocked in a registry call that hangs (found by the simulation).
        crate::scheduler::fence_runs(&self.running, id);
        self.emit(InstanceEvent::Fenced {
            id: id.to_string(),
            reason: reason.to_string(),
        });
        self.session_changed.send_modify(|v| *v += 1);
    }
}

/// Stop every task and revoke the lease (once). Runs in progress get the shutdown
/// grace period to finish and release; the rest are cancelled and keep their run
/// keys, so the leader fails them over.
async fn graceful_stop(shared: &Arc<Shared>) -> Result<()> {
    shared.draining.store(true, Ordering::SeqCst);
    crate::scheduler::wind_down_all(&shared.running);
    let running = || match shared.running.lock() {
        Ok(g) => g.len(),
        Err(p) => p.into_inner().len(),
    };
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_grace;
    while running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if running() > 0 {
        crate::scheduler::cancel_for_shutdown(&shared.running);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let already = shared.stopped();
    let _ = shared.stop.send(true);
    *write(&shared.leader_token) = None;
    if already {
        return Ok(());
    }
    let session = read(&shared.session).clone();
    if let Some(s) = session {
        s.keeper.stop();
        shared.registry.lease_revoke(s.lease.id).await?;
    }
    Ok(())
}

/// Where `spec`'s items run in `generation` (the same computation every instance
/// makes; the console uses it to show owners).
pub fn placement_in(generation: Option<&Generation>, spec: &JobSpec) -> JobPlacement {
    if !spec.enabled {
        return JobPlacement::Disabled;
    }
    let Some(current) = generation else {
        return JobPlacement::NoGeneration;
    };
    let eligible: Vec<ShardingInstance> = slot_order(current, spec)
        .into_iter()
        .map(|m| ShardingInstance {
            id: m.id.clone(),
            weight: m.weight.max(1),
        })
        .collect();
    if eligible.is_empty() {
        return JobPlacement::NoEligibleInstance;
    }
    JobPlacement::Assigned(
        spec.strategy
            .assign(spec.name.as_str(), spec.shards, &eligible),
    )
}

/// The selector of a job: which members may run it (the capabilities it needs,
/// its kind's and its listeners', and its labels). Jobs with equal selectors
/// share one slot order in the generation. A job without listeners has the
/// selector `{kind}|{labels}`; listeners add `+{capability}`, sorted.
pub fn selector(spec: &JobSpec) -> String {
    let kind = crate::execute::kind_name(&spec.kind);
    let labels: Vec<String> = spec
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut caps = String::new();
    if !spec.listeners.is_empty() {
        let mut extra: Vec<String> = crate::execute::required_capabilities(spec)
            .into_iter()
            .filter(|c| c != kind)
            .collect();
        extra.sort();
        for c in extra {
            caps.push('+');
            caps.push_str(&c);
        }
    }
    format!("{kind}{caps}|{}", labels.join(","))
}

/// The members eligible for `spec`, in the generation's slot order for its
/// selector (or in join order for a selector the leader has not ordered yet).
fn slot_order<'g>(generation: &'g Generation, spec: &JobSpec) -> Vec<&'g Member> {
    let by_id: std::collections::HashMap<&str, &Member> = generation
        .members
        .iter()
        .filter(|m| eligible(spec, m))
        .map(|m| (m.id.as_str(), m))
        .collect();
    let mut out: Vec<&Member> = Vec::with_capacity(by_id.len());
    if let Some(order) = generation.orders.get(&selector(spec)) {
        out.extend(
            order
                .iter()
                .filter_map(|id| by_id.get(id.as_str()).copied()),
        );
    }
    for m in &generation.members {
        if by_id.contains_key(m.id.as_str()) && !out.iter().any(|o| o.id == m.id) {
            out.push(m);
        }
    }
    out
}

/// The next slot order of one selector: members that are no longer eligible are
/// removed `swap_remove`-style (from the highest position down, so the last
/// member fills each gap), and newly eligible members are appended in join order.
fn next_order(prev: Option<&Vec<String>>, eligible_in_join_order: &[&str]) -> Vec<String> {
    let mut order = prev.cloned().unwrap_or_default();
    let mut i = order.len();
    while i > 0 {
        i -= 1;
        if !eligible_in_join_order.contains(&order[i].as_str()) {
            order.swap_remove(i);
        }
    }
    for id in eligible_in_join_order {
        if !order.iter().any(|o| o == id) {
            order.push((*id).to_string());
        }
    }
    order
}

/// Whether member `m` may run `spec`: it carries every label the job asks for and
/// can run the job's kind and its listeners (see
/// [`crate::execute::required_capabilities`]; this is the same rule without
/// allocating, as it runs for every job and member).
fn eligible(spec: &JobSpec, m: &Member) -> bool {
    use shardcron_core::job::ListenerAction;
    let has = |cap: &str| m.capabilities.iter().any(|c| c == cap);
    spec.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v))
        && has(crate::execute::kind_name(&spec.kind))
        && spec.listeners.iter().all(|l| match &l.action {
            ListenerAction::Command(_) => has("script"),
            ListenerAction::Handler(h) => m.capabilities.iter().any(|c| {
                c.strip_prefix(crate::execute::LISTENER_CAPABILITY_PREFIX) == Some(h.as_str())
            }),
        })
}

/// Grant a lease, see one keep-alive of it acknowledged, and create the instance
/// key under a fresh identity.
///
/// The acknowledged keep-alive first: when keep-alives hang while other calls
/// work (a stalled keep-alive stream), a new identity would take items and fence
/// itself again one TTL later, over and over, each time cutting the runs it had
/// started (measured with the gRPC proxy: 2-4 identities per 6 s stall). The
/// instance stays unregistered (fenced) until its leases can be kept.
async fn register(shared: &Arc<Shared>) -> Result<Session> {
    let lease = shared.registry.lease_grant(shared.config.lease_ttl).await?;
    let sent = shared.clock.mono();
    let wait = (lease.ttl / 3).max(Duration::from_millis(100));
    let kept = match tokio::time::timeout(wait, shared.registry.lease_keep_alive(lease.id)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::from(e)),
        Err(_) => Err(Error::Registry(RegistryError::Unavailable(format!(
            "the new lease's first keep-alive was not answered within {wait:?}"
        )))),
    };
    if let Err(e) = kept {
        let _ = shared.registry.lease_revoke(lease.id).await;
        return Err(e);
    }
    let id = format!("{}-{:x}", shared.config.name, lease.id);
    let key = keys::instance(&id);
    let resp = shared
        .registry
        .txn(
            Txn::new()
                .when(Compare::absent(key.clone()))
                .and_then(TxnOp::put_with_lease(
                    key,
                    encode(&shared.info(&id)),
                    lease.id,
                )),
        )
        .await?;
    if !resp.succeeded {
        let _ = shared.registry.lease_revoke(lease.id).await;
        return Err(Error::Conflict(format!("instance key {id} already exists")));
    }
    let (keeper, events) =
        LeaseKeeper::start(shared.registry.clone(), lease, sent, shared.clock.clone());
    tokio::spawn(forward_lease_events(shared.clone(), id.clone(), events));
    Ok(Session {
        id,
        lease,
        reg_rev: resp.revision,
        keeper,
    })
}

fn install_session(shared: &Arc<Shared>, s: Session) {
    let id = s.id.clone();
    *write(&shared.session) = Some(Arc::new(s));
    shared.fenced.store(false, Ordering::SeqCst);
    tracing::info!(instance = %id, "registered");
    shared.emit(InstanceEvent::Registered { id });
    shared.session_changed.send_modify(|v| *v += 1);
}

async fn forward_lease_events(
    shared: Arc<Shared>,
    id: String,
    mut events: tokio::sync::mpsc::UnboundedReceiver<LeaseEvent>,
) {
    if let Some(LeaseEvent::Lost { reason }) = events.recv().await {
        shared.fence(&id, &reason);
    }
}

/// Re-register under a new identity whenever the current one is fenced.
async fn session_loop(shared: Arc<Shared>) {
    let mut changed = shared.session_changed.subscribe();
    let mut stop = shared.stop.subscribe();
    loop {
        if shared.stopped() {
            return;
        }
        if shared.fenced.load(Ordering::SeqCst) {
            let old = write(&shared.session).take();
            if let Some(old) = old {
                old.keeper.stop();
                // Best effort: the lease is untrusted; revoking it makes the old
                // identity disappear at once if the registry still has it.
                let _ = shared.registry.lease_revoke(old.lease.id).await;
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                if shared.stopped() {
                    return;
                }
                match register(&shared).await {
                    Ok(s) => {
                        install_session(&shared, s);
                        // Dropped or shut down while registering: the new identity
                        // must not outlive the instance (its keeper would keep it
                        // alive and the leader would give it items that nothing
                        // runs; found by the simulation). Installing first and
                        // checking after pairs with `Drop`, which stops first and
                        // reads the session after: one of the two sees the other.
                        if shared.stopped() {
                            if let Some(s) = read(&shared.session).as_ref() {
                                s.keeper.stop();
                            }
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registration failed; retrying");
                        tokio::select! {
                            _ = stop.changed() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

/// Fence exactly when the lease's local deadline minus the fence margin passes, so
/// that runs stop before the registry could expire the lease (the keeper itself
/// only reports a loss at the deadline).
async fn deadline_watchdog(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let session = read(&shared.session).clone();
        let wait = match session {
            Some(s) if !shared.fenced.load(Ordering::SeqCst) => {
                let left = s.keeper.remaining(shared.config.fence_margin);
                if left.is_zero() {
                    shared.fence(
                        &s.id,
                        "no keep-alive was acknowledged in time: the lease's local deadline \
                         minus the fence margin has passed",
                    );
                    Duration::from_millis(10)
                } else {
                    left.min(Duration::from_millis(100))
                }
            }
            _ => Duration::from_millis(50),
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Write the heartbeat; a failed compare means the identity is gone: fence.
async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(shared.config.heartbeat_interval) => {}
            () = shared.heartbeat_now.notified() => {}
        }
        let Some(s) = read(&shared.session).clone() else {
            continue;
        };
        if shared.fenced.load(Ordering::SeqCst) {
            continue;
        }
        if !s.keeper.is_valid(shared.config.fence_margin) {
            shared.fence(
                &s.id,
                "the lease's local deadline (minus the fence margin) has passed",
            );
            continue;
        }
        let key = keys::instance(&s.id);
        let mut info = shared.info(&s.id);
        if let Some(kv) = shared.mirrors.instances.get(&key)
            && let Ok(old) = decode::<InstanceInfo>(&kv.key, &kv.value)
        {
            info.started = old.started;
        }
        let res = shared
            .registry
            .txn(
                Txn::new()
                    .when(Compare::create_revision_is(key.clone(), s.reg_rev))
                    .and_then(TxnOp::put_with_lease(key, encode(&info), s.lease.id)),
            )
            .await;
        match res {
            Ok(r) if !r.succeeded => {
                shared.fence(&s.id, "the instance key is gone (lease expired or revoked)")
            }
            Err(shardcron_registry::RegistryError::LeaseNotFound(_)) => {
                shared.fence(&s.id, "the registry no longer has the lease")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
    }
}

/// Watch the instance mirror: fence at once if our own key disappears, and feed
/// other instances' heartbeats to the skew guard.
async fn watch_instances(shared: Arc<Shared>) {
    let mut rx = shared.mirrors.instances.subscribe();
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let now = shared.clock.wall();
        let at = shared.clock.mono();
        let session = shared.current_session();
        let mut live = Vec::new();
        let mut own_present = false;
        shared.mirrors.instances.read(|m| {
            let mut guard = lock(&shared.skew);
            for (k, kv) in m {
                let Key::Instance(id) = Key::parse(k) else {
                    continue;
                };
                if let Some((me, reg_rev)) = &session
                    && &id == me
                    && kv.create_revision == *reg_rev
                {
                    own_present = true;
                    continue;
                }
                if let Ok(info) = decode::<InstanceInfo>(k, &kv.value) {
                    guard.observe(&id, info.heartbeat, now, at);
                }
                live.push(id);
            }
            guard.retain(|id| live.iter().any(|l| l == id));
        });
        if let Some((me, reg_rev)) = session
            && !own_present
            && shared.mirrors.instances.revision() > reg_rev
        {
            shared.fence(&me, "the instance key disappeared from the registry");
        }
    }
}

/// Carry out shutdown requests addressed to this instance.
async fn watch_requests(shared: Arc<Shared>) {
    let mut rx = shared.mirrors.requests.subscribe();
    let mut stop = shared.stop.subscribe();
    loop {
        let Some((me, _)) = shared.current_session() else {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        let key = keys::shutdown_request(&me);
        if shared.mirrors.requests.get(&key).is_some() && !*shared.shutdown_requested.borrow() {
            tracing::info!(instance = %me, "shutdown requested; shutting down gracefully");
            let _ = shared.registry.delete(&key).await;
            shared.emit(InstanceEvent::ShutdownRequested);
            // Carried out here, by the target itself: stop acting, then revoke our
            // own lease so the others react at once.
            let _ = graceful_stop(&shared).await;
            shared.shutdown_requested.send_replace(true);
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// Campaign for leadership; while leading, publish generations and collect garbage.
async fn leader_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut leader_rx = shared.mirrors.leader.subscribe();
    loop {
        if shared.stopped() {
            return;
        }
        let session = read(&shared.session).clone();
        let Some(s) = session.filter(|_| shared.may_act()) else {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        match campaign(&shared, &s).await {
            Ok(Some(token)) => {
                *write(&shared.leader_token) = Some(token);
                tracing::info!(instance = %s.id, token, "elected leader");
                shared.emit(InstanceEvent::Elected { token });
                lead(&shared, &s, token).await;
                *write(&shared.leader_token) = None;
                shared.emit(InstanceEvent::Deposed);
            }
            Ok(None) => {
                // Someone else leads: wait until the leader key changes (or a
                // periodic retry, in case a change was missed).
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = leader_rx.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "campaign failed");
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Try to become leader. Never uses etcd's Lock RPC: create-if-absent of a key
/// bound to our lease, then re-read it and check lease and create revision.
async fn campaign(shared: &Arc<Shared>, s: &Session) -> Result<Option<i64>> {
    let info = LeaderInfo {
        instance: s.id.clone(),
        elected: shared.clock.wall(),
    };
    let resp = shared
        .registry
        .txn(
            Txn::new()
                .when(Compare::absent(keys::leader()))
                .and_then(TxnOp::put_with_lease(
                    keys::leader(),
                    encode(&info),
                    s.lease.id,
                )),
        )
        .await?;
    let Some(kv) = shared.registry.get(&keys::leader()).await? else {
        return Ok(None);
    };
    let ours = kv.lease == s.lease.id
        && decode::<LeaderInfo>(&kv.key, &kv.value).is_ok_and(|l| l.instance == s.id);
    if resp.succeeded && ours && kv.create_revision == resp.revision {
        return Ok(Some(kv.create_revision));
    }
    // A leader key of ours from before (e.g. an ambiguous earlier attempt).
    if ours {
        return Ok(Some(kv.create_revision));
    }
    Ok(None)
}

/// The leader looks for dead holders' runs at most this often.
const FAILOVER_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Leader duties, until leadership or the session is lost.
async fn lead(shared: &Arc<Shared>, s: &Session, token: i64) {
    let mut stop = shared.stop.subscribe();
    let mut inst = shared.mirrors.instances.subscribe();
    let mut flags = shared.mirrors.flags.subscribe();
    let mut gen_rx = shared.mirrors.generation.subscribe();
    let mut lead_rx = shared.mirrors.leader.subscribe();
    let mut sess = shared.session_changed.subscribe();
    let mut jobs_rx = shared.mirrors.jobs.subscribe();
    let mut runs_rx = shared.mirrors.runs.subscribe();
    let mut cache = SelectorCache::default();
    let mut dead_since = std::collections::HashMap::new();
    let mut last_unplaced = tokio::time::Instant::now();
    // Work is driven by what changed: run keys change on every claim and release
    // (thousands a second), and must not make the leader walk every job each time.
    let (mut need_publish, mut need_failover) = (true, true);
    let mut last_failover = tokio::time::Instant::now();
    loop {
        if shared.stopped() || !shared.may_act() {
            return;
        }
        let still = shared
            .mirrors
            .leader
            .get(&keys::leader())
            .is_some_and(|kv| kv.create_revision == token && kv.lease == s.lease.id);
        if !still && shared.mirrors.leader.revision() >= token {
            return;
        }
        if std::mem::take(&mut need_publish) {
            match publish_generation(shared, token, &mut cache).await {
                Ok(Some(n)) => shared.emit(InstanceEvent::Published { number: n }),
                Ok(None) => {}
                Err(Error::Conflict(_)) => return,
                Err(e) => {
                    need_publish = true;
                    tracing::debug!(error = %e, "publishing the generation failed");
                }
            }
            if let Err(e) = collect_garbage(shared).await {
                tracing::debug!(error = %e, "garbage collection failed");
            }
        }
        // At most every 50 ms: a burst of run-key changes is looked at once.
        if need_failover && last_failover.elapsed() >= FAILOVER_CHECK_EVERY {
            need_failover = false;
            last_failover = tokio::time::Instant::now();
            if let Err(e) = crate::scheduler::fail_over_dead_runs(
                shared,
                token,
                shared.history.as_ref(),
                shared.scheduler.lock_delay,
                &mut dead_since,
            )
            .await
            {
                tracing::debug!(error = %e, "failover check failed");
            }
            if !dead_since.is_empty() {
                need_failover = true;
            }
        }
        if last_unplaced.elapsed() >= Duration::from_secs(1) {
            last_unplaced = tokio::time::Instant::now();
            if let Some(history) = shared.history.as_ref() {
                let unplaced: Vec<JobSpec> = cache
                    .by_key
                    .values()
                    .map(|(_, spec)| spec)
                    .filter(|spec| shared.placement(spec) == JobPlacement::NoEligibleInstance)
                    .cloned()
                    .collect();
                for spec in unplaced {
                    if let Err(e) =
                        crate::scheduler::skip_unplaced(shared, token, history, &spec).await
                    {
                        tracing::debug!(job = %spec.name, error = %e, "recording unplaced fires failed");
                    }
                }
            }
        }
        let idle = if need_failover {
            FAILOVER_CHECK_EVERY.saturating_sub(last_failover.elapsed())
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = inst.changed() => { need_publish = true; need_failover = true; }
            _ = flags.changed() => need_publish = true,
            _ = gen_rx.changed() => need_publish = true,
            _ = jobs_rx.changed() => need_publish = true,
            _ = runs_rx.changed() => need_failover = true,
            _ = lead_rx.changed() => need_publish = true,
            _ = sess.changed() => return,
            () = tokio::time::sleep(idle) => {
                if !need_failover {
                    // The periodic pass: everything, as a reconcile.
                    need_publish = true;
                    need_failover = true;
                }
            }
        }
    }
}

/// The members a generation should list now, keeping the join order of `prev`.
fn next_members(shared: &Shared, prev: Option<&Generation>) -> Vec<Member> {
    let disabled: Vec<String> = shared.mirrors.flags.read(|m| {
        m.iter()
            .filter_map(|(k, kv)| match Key::parse(k) {
                Key::InstanceFlag(name) => decode::<InstanceFlag>(k, &kv.value)
                    .ok()
                    .filter(|f| f.disabled)
                    .map(|_| name),
                _ => None,
            })
            .collect()
    });
    let mut live: Vec<(InstanceInfo, i64)> = shared.mirrors.instances.read(|m| {
        m.iter()
            .filter_map(|(k, kv)| {
                decode::<InstanceInfo>(k, &kv.value)
                    .ok()
                    .map(|i| (i, kv.create_revision))
            })
            // Disabled instances, and instances whose clock is too far off to
            // fire, get no items.
            .filter(|(i, _)| !disabled.contains(&i.name) && !i.clock_skewed)
            .collect()
    });
    // New instances join at the end, in registration order.
    live.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.id.cmp(&b.0.id)));
    let member = |i: &InstanceInfo| Member {
        id: i.id.clone(),
        weight: i.weight.max(1),
        labels: i.labels.clone(),
        capabilities: i.capabilities.clone(),
    };
    let mut out: Vec<Member> = Vec::with_capacity(live.len());
    if let Some(prev) = prev {
        for m in &prev.members {
            if let Some((i, _)) = live.iter().find(|(i, _)| i.id == m.id) {
                out.push(member(i));
            }
        }
    }
    for (i, _) in &live {
        if !out.iter().any(|m| m.id == i.id) {
            out.push(member(i));
        }
    }
    out
}

/// The selectors of every job, cached by the job key's revision so that a leader
/// with 100,000 jobs decodes only the jobs that changed.
#[derive(Debug, Default)]
struct SelectorCache {
    by_key: std::collections::HashMap<Vec<u8>, (i64, JobSpec)>,
}

impl SelectorCache {
    fn selectors(&mut self, shared: &Shared) -> BTreeMap<String, JobSpec> {
        let mut seen = std::collections::HashSet::new();
        shared.mirrors.jobs.read(|m| {
            for (k, kv) in m {
                seen.insert(k.clone());
                if self
                    .by_key
                    .get(k)
                    .is_some_and(|(rev, _)| *rev == kv.mod_revision)
                {
                    continue;
                }
                if let Ok(spec) = decode_job(k, &kv.value) {
                    self.by_key.insert(k.clone(), (kv.mod_revision, spec));
                }
            }
        });
        self.by_key.retain(|k, _| seen.contains(k));
        // One representative job per selector (eligibility depends only on it).
        let mut out = BTreeMap::new();
        for (_, spec) in self.by_key.values() {
            out.entry(selector(spec)).or_insert_with(|| spec.clone());
        }
        out
    }
}

/// Publish a new generation if membership or a slot order changed. `Conflict`
/// means leadership was lost (the leader compare failed).
async fn publish_generation(
    shared: &Arc<Shared>,
    token: i64,
    cache: &mut SelectorCache,
) -> Result<Option<u64>> {
    let current = shared.mirrors.generation.get(&keys::generation());
    let prev: Option<Generation> = current
        .as_ref()
        .and_then(|kv| decode(&kv.key, &kv.value).ok());
    let members = next_members(shared, prev.as_ref());
    let mut orders = BTreeMap::new();
    for (sel, spec) in cache.selectors(shared) {
        let eligible_ids: Vec<&str> = members
            .iter()
            .filter(|m| eligible(&spec, m))
            .map(|m| m.id.as_str())
            .collect();
        let order = next_order(
            prev.as_ref().and_then(|p| p.orders.get(&sel)),
            &eligible_ids,
        );
        orders.insert(sel, order);
    }
    if prev
        .as_ref()
        .is_some_and(|p| p.members == members && p.orders == orders)
    {
        return Ok(None);
    }
    let number = prev.as_ref().map_or(1, |p| p.number + 1);
    let next = Generation {
        number,
        leader_token: token,
        members,
        orders,
        published: shared.clock.wall(),
    };
    let gen_rev = current.as_ref().map_or(0, |kv| kv.mod_revision);
    let resp = shared
        .registry
        .txn(
            Txn::new()
                .when(Compare::create_revision_is(keys::leader(), token))
                .when(Compare::mod_revision_is(keys::generation(), gen_rev))
                .and_then(TxnOp::put(keys::generation(), encode(&next)))
                .or_else(TxnOp::get(keys::leader())),
        )
        .await?;
    if resp.succeeded {
        tracing::info!(number, members = next.members.len(), "published generation");
        return Ok(Some(number));
    }
    let still_leader = resp.responses.iter().any(|r| match r {
        shardcron_registry::OpResponse::Get { kvs } => {
            kvs.iter().any(|kv| kv.create_revision == token)
        }
        _ => false,
    });
    if still_leader {
        // Our generation view was stale; the mirror catches up and we retry.
        Ok(None)
    } else {
        Err(Error::Conflict("leadership lost".into()))
    }
}

/// Remove keys that refer to instances that are gone: shutdown requests for dead
/// identities. (Instance keys expire with their leases; requests with theirs.)
async fn collect_garbage(shared: &Arc<Shared>) -> Result<()> {
    let live: Vec<String> = shared.mirrors.instances.read(|m| {
        m.keys()
            .filter_map(|k| match Key::parse(k) {
                Key::Instance(id) => Some(id),
                _ => None,
            })
            .collect()
    });
    let dead: Vec<Vec<u8>> = shared.mirrors.requests.read(|m| {
        m.keys()
            .filter(|k| matches!(Key::parse(k), Key::ShutdownRequest(ref id) if !live.contains(id)))
            .cloned()
            .collect()
    });
    for k in dead {
        shared.registry.delete(&k).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcron_core::job::{JobKind, JobName, ListenerAction, ListenerSpec, ListenerWhen};
    use shardcron_core::schedule::Schedule;

    fn job(name: &str) -> JobSpec {
        JobSpec::new(
            JobName::new(name).expect("name"),
            Schedule::Manual,
            JobKind::Handler("work".into()),
        )
    }

    #[test]
    fn listeners_are_part_of_the_selector() {
        let plain = job("a");
        let mut labelled = job("b");
        labelled.labels.insert("zone".into(), "eu".into());
        // Unchanged for jobs without listeners (no generation churn on upgrade).
        assert_eq!(selector(&plain), "work|");
        assert_eq!(selector(&labelled), "work|zone=eu");
        let mut audited = job("c");
        audited.listeners = vec![
            ListenerSpec::new(ListenerWhen::After, ListenerAction::Handler("z".into())),
            ListenerSpec::new(
                ListenerWhen::Before,
                ListenerAction::Command(vec!["./x".into()]),
            ),
            ListenerSpec::new(ListenerWhen::AfterAll, ListenerAction::Handler("a".into())),
        ];
        // Two jobs of one kind but different listeners may run on different
        // members, so they must not share a slot order.
        assert_eq!(selector(&audited), "work+listener:a+listener:z+script|");
        let mut same = job("d");
        same.listeners = audited.listeners.iter().rev().cloned().collect();
        assert_eq!(selector(&same), selector(&audited));
    }
}
