//! What runs when an item fires: Rust handlers registered through the SDK, and
//! where their outcome is recorded.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use shardcron_core::ShardingContext;
use shardcron_core::job::{JobKind, JobSpec};
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
        }
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

/// Handlers by name (the `kind` of a job). The names become the instance's
/// capabilities, so jobs are only placed on instances that can run them.
#[derive(Clone, Default)]
pub struct Handlers {
    map: BTreeMap<String, Arc<dyn SimpleJob>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
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

    /// The handler registered under a name.
    pub fn get(&self, name: &str) -> Option<Arc<dyn SimpleJob>> {
        self.map.get(name).cloned()
    }

    /// The handler that runs jobs of `kind`: built-in kinds are registered under
    /// their kind name (`script`, `http`), Rust handlers under theirs.
    pub fn for_kind(&self, kind: &JobKind) -> Option<Arc<dyn SimpleJob>> {
        self.get(kind_name(kind))
    }

    /// Registered names.
    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
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
