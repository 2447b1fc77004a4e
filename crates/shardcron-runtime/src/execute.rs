//! What runs when an item fires: Rust handlers registered through the SDK, and
//! where their outcome is recorded.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use shardcron_core::ShardingContext;
use shardcron_core::execution::ExecutionStatus;
use shardcron_core::job::{JobKind, JobSpec, ListenerAction};
use shardcron_store::{HistoryEvent, HistoryWriter};
use tokio::sync::watch;

/// A job implemented in Rust: `execute` runs one item of one fire.
///
/// It should watch [`JobContext::cancelled`] and stop promptly when it resolves
/// (cancel requests, timeouts, shutdown and self-fencing all cancel), and it
/// should hand the fencing token ([`ShardingContext::token`]) to any external
/// system it writes to, so that a stale writer can be rejected.
#[async_trait::async_trait]
pub trait SimpleJob: Send + Sync + 'static {
    /// Run one item. `Ok(Some(text))` stores `text` as the run's output tail.
    async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError>;
}

/// The failure of a job run, with a message for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError(pub String);

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError(e.to_string())
    }
}

/// Everything a run is told, and its cancellation signal.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Job, item, fire time, token, source, attempt...
    pub sharding: ShardingContext,
    /// The job as it was stored when the fire was claimed (kind fields, timeout...).
    pub spec: Arc<JobSpec>,
    cancel: watch::Receiver<bool>,
    wind_down: watch::Receiver<bool>,
    extra_env: Arc<[(String, String)]>,
}

impl JobContext {
    /// A context for one run of `spec`; the run stops when `cancel` turns true.
    pub fn new(
        sharding: ShardingContext,
        spec: Arc<JobSpec>,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        JobContext {
            sharding,
            spec,
            cancel,
            // A receiver whose sender is gone: never asks to wind down.
            wind_down: watch::channel(false).1,
            extra_env: Arc::new([]),
        }
    }

    /// The same context, asked to wind down when `wind_down` turns true.
    pub fn with_wind_down(mut self, wind_down: watch::Receiver<bool>) -> Self {
        self.wind_down = wind_down;
        self
    }

    /// The same context with these environment variables added for programs it
    /// starts (listeners add `SHARDCRON_LISTENER` and `SHARDCRON_STATUS`); a
    /// later value of a name wins.
    pub fn with_extra_env(mut self, env: Vec<(String, String)>) -> Self {
        let mut all = self.extra_env.to_vec();
        all.extend(env);
        self.extra_env = all.into();
        self
    }

    /// Extra environment variables for programs started by this run.
    pub fn extra_env(&self) -> &[(String, String)] {
        &self.extra_env
    }

    /// Whether the run should finish what it is doing and return soon, without
    /// being cancelled: its item is moving to another instance (a reshard, the
    /// item or job disabled) or the instance is shutting down. Streaming dataflow
    /// jobs stop fetching when this turns true. Also true once cancelled.
    pub fn should_wind_down(&self) -> bool {
        *self.wind_down.borrow() || self.is_cancelled()
    }

    /// Whether the run has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the run is asked to stop.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                // The scheduler is gone: treat as cancelled.
                return;
            }
        }
    }
}

/// How an execution ended, as an `after` listener is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// SUCCEEDED, FAILED, TIMED_OUT or CANCELLED.
    pub status: ExecutionStatus,
    /// Why it did not succeed, when it did not.
    pub cause: Option<String>,
}

/// One fire of a job across all its items, as an `after_all` listener is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireSummary {
    /// The job.
    pub job: String,
    /// The fire's scheduled time.
    pub fire_time: DateTime<Utc>,
    /// The job's item count.
    pub total: u32,
    /// The final status of every item of the fire that finished, by item.
    pub items: BTreeMap<u32, ExecutionStatus>,
    /// Whether every item expected to run finished (false when the listener's
    /// `wait` ran out first).
    pub complete: bool,
    /// The instance running the listener.
    pub instance: String,
}

/// What a listener is called for.
#[derive(Debug, Clone)]
pub enum ListenerEvent {
    /// Before an execution, on the instance that runs it.
    Before(JobContext),
    /// After an execution, on the instance that ran it.
    After(JobContext, Outcome),
    /// Once per fire across the cluster, after all its items (or the wait).
    AfterAll(Arc<JobSpec>, FireSummary),
}

/// A listener implemented in Rust, registered under a name that job files use as
/// `handler = "name"` in `[[job.listeners]]`. It runs under the listener's
/// `timeout`; an error from a `before` call fails the attempt.
#[async_trait::async_trait]
pub trait Listener: Send + Sync + 'static {
    /// Handle one event.
    async fn call(&self, event: ListenerEvent) -> Result<(), JobError>;
}

/// The capability prefix of Rust listeners: an instance with listener `audit`
/// has capability `listener:audit`.
pub const LISTENER_CAPABILITY_PREFIX: &str = "listener:";

/// Handlers by name (the `kind` of a job), and listeners. The names become the
/// instance's capabilities, so jobs are only placed on instances that can run
/// them (and their listeners).
#[derive(Clone, Default)]
pub struct Handlers {
    map: BTreeMap<String, Arc<dyn SimpleJob>>,
    listeners: BTreeMap<String, Arc<dyn Listener>>,
    scripts: Option<Arc<crate::script::ScriptJob>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `job` under `name` (a job with `kind = "name"` runs it).
    pub fn register(mut self, name: impl Into<String>, job: impl SimpleJob) -> Self {
        self.map.insert(name.into(), Arc::new(job));
        self
    }

    /// Register a dataflow job under `name` (see [`crate::dataflow`]).
    pub fn dataflow(self, name: impl Into<String>, job: impl crate::DataflowJob) -> Self {
        self.register(name, crate::dataflow::Dataflow::new(job))
    }

    /// Run `script` jobs, and `command` listeners, with this executor.
    pub fn scripts(mut self, scripts: crate::script::ScriptJob) -> Self {
        let scripts = Arc::new(scripts);
        self.map.insert("script".into(), scripts.clone());
        self.scripts = Some(scripts);
        self
    }

    /// Register a Rust listener under `name` (`handler = "name"` in a job's
    /// `[[job.listeners]]`).
    pub fn listener(mut self, name: impl Into<String>, listener: impl Listener) -> Self {
        self.listeners.insert(name.into(), Arc::new(listener));
        self
    }

    /// The Rust listener registered under a name.
    pub fn get_listener(&self, name: &str) -> Option<Arc<dyn Listener>> {
        self.listeners.get(name).cloned()
    }

    /// The executor of `command` listeners, when scripts are enabled.
    pub fn script_runner(&self) -> Option<Arc<crate::script::ScriptJob>> {
        self.scripts.clone()
    }

    /// Whether this instance can run `spec`: its kind and all its listeners.
    pub fn can_run(&self, spec: &JobSpec) -> bool {
        self.for_kind(&spec.kind).is_some()
            && spec.listeners.iter().all(|l| match &l.action {
                ListenerAction::Command(_) => self.scripts.is_some(),
                ListenerAction::Handler(h) => self.listeners.contains_key(h),
            })
    }

    /// The handler registered under a name.
    pub fn get(&self, name: &str) -> Option<Arc<dyn SimpleJob>> {
        self.map.get(name).cloned()
    }

    /// The handler that runs jobs of `kind`: built-in kinds are registered under
    /// their kind name (`script`, `http`), Rust handlers under theirs.
    pub fn for_kind(&self, kind: &JobKind) -> Option<Arc<dyn SimpleJob>> {
        self.get(kind_name(kind))
    }

    /// Registered names: handlers, and listeners as `listener:NAME` (the
    /// instance's capabilities).
    pub fn names(&self) -> Vec<String> {
        self.map
            .keys()
            .cloned()
            .chain(
                self.listeners
                    .keys()
                    .map(|l| format!("{LISTENER_CAPABILITY_PREFIX}{l}")),
            )
            .collect()
    }
}

/// Where execution records go. Recording never blocks a fire.
pub trait HistorySink: Send + Sync + fmt::Debug + 'static {
    /// Record one event.
    fn record(&self, event: HistoryEvent);
}

impl HistorySink for HistoryWriter {
    fn record(&self, event: HistoryEvent) {
        if let Err(e) = HistoryWriter::record(self, event) {
            tracing::error!(error = %e, "an execution record was refused by the history writer");
        }
    }
}

/// Keeps events in memory: for tests and for embedding without a database.
#[derive(Debug, Default)]
pub struct MemoryHistory {
    events: Mutex<Vec<HistoryEvent>>,
}

impl MemoryHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event recorded so far, in order.
    pub fn events(&self) -> Vec<HistoryEvent> {
        match self.events.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl HistorySink for MemoryHistory {
    fn record(&self, event: HistoryEvent) {
        match self.events.lock() {
            Ok(mut g) => g.push(event),
            Err(p) => p.into_inner().push(event),
        }
    }
}

/// The capability an instance needs to run jobs of `kind`.
pub fn kind_name(kind: &JobKind) -> &str {
    match kind {
        JobKind::Script { .. } => "script",
        JobKind::Http(_) => "http",
        JobKind::Handler(h) => h.as_str(),
    }
}

/// Every capability an instance needs to run `spec`: its kind's, `script` for
/// `command` listeners, and `listener:NAME` for Rust listeners.
pub fn required_capabilities(spec: &JobSpec) -> Vec<String> {
    let mut caps = vec![kind_name(&spec.kind).to_owned()];
    for l in &spec.listeners {
        let cap = match &l.action {
            ListenerAction::Command(_) => "script".to_owned(),
            ListenerAction::Handler(h) => format!("{LISTENER_CAPABILITY_PREFIX}{h}"),
        };
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    caps
}
