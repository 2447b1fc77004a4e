//! A node: one instance of a cluster with its registry, history, handlers, jobs
//! and alerts, assembled by [`NodeBuilder`]. The `shardcron standalone` and
//! `shardcron agent` commands are this builder fed from flags and a config file;
//! a Rust application uses it directly:
//!
//! ```no_run
//! use shardcron::{Job, JobContext, JobError, Node, SimpleJob};
//!
//! struct Hello;
//!
//! #[shardcron::async_trait]
//! impl SimpleJob for Hello {
//!     async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError> {
//!         Ok(Some(format!("hello from item {}", ctx.sharding.item)))
//!     }
//! }
//!
//! # async fn run() -> Result<(), shardcron::NodeError> {
//! let node = Node::standalone("./shardcron-data")
//!     .handler("hello", Hello)
//!     .job(Job::every("hello", std::time::Duration::from_secs(5)).shards(3).kind("hello"))
//!     .start()
//!     .await?;
//! node.run_until_signal().await
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardcron_console::auth::{Auth, AuthOptions};
use shardcron_console::metrics::{MeteredRegistry, Metrics, MetricsSink};
use shardcron_console::{AppState, ConsoleState};

use shardcron_core::clock::{SharedClock, SystemClock};
use shardcron_core::job::{JobErrors, JobSpec};
use shardcron_registry::{EtcdOptions, EtcdRegistry, MemoryRegistry, Registry};
use shardcron_runtime::script::{ScriptJob, ScriptOptions};
use shardcron_runtime::{
    ApplyOutcome, Cluster, DataflowJob, Handlers, HistorySink, HttpJob, HttpOptions, Instance,
    InstanceConfig, Listener, Runner, SchedulerOptions, SimpleJob,
};
use shardcron_store::{HistoryStore, HistoryWriter, WriterOptions};

use crate::job::Job;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting or job is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// Something outside failed (registry, database, files, network).
    #[error("{0}")]
    Failed(String),
}

impl From<JobErrors> for NodeError {
    fn from(e: JobErrors) -> Self {
        NodeError::Invalid(e.to_string())
    }
}

/// Where the node's registry is.
#[derive(Debug)]
enum RegistryChoice {
    /// The embedded registry in `{data}/registry` (one machine).
    Embedded,
    /// etcd.
    Etcd(Box<EtcdOptions>),
    /// A registry the caller built (tests, custom backends).
    Given(Arc<dyn Registry>),
}

/// Builds and starts a [`Node`]. Start from [`Node::standalone`] or
/// [`Node::etcd`].
#[derive(Debug)]
pub struct NodeBuilder {
    registry: Result<RegistryChoice, String>,
    data: PathBuf,
    history: Option<String>,
    config: InstanceConfig,
    handlers: Handlers,
    jobs: Vec<Result<JobSpec, JobErrors>>,
    scheduler: SchedulerOptions,
    alerts: Vec<shardcron_alert::AlertConfig>,
    console: Option<ConsoleOptions>,
    clock: SharedClock,
}

/// Where and how a node serves the console and the REST API.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Address to listen on (port 0: any free port, see [`Node::console_addr`]).
    pub bind: SocketAddr,
    /// Admin password, admin token, cookie flags.
    pub auth: AuthOptions,
}

impl ConsoleOptions {
    /// Serve on `bind` with no configured password: a generated one is printed
    /// once, at the namespace's first start.
    pub fn new(bind: SocketAddr) -> Self {
        ConsoleOptions {
            bind,
            auth: AuthOptions::default(),
        }
    }
}

impl NodeBuilder {
    fn new(registry: Result<RegistryChoice, String>, data: PathBuf) -> Self {
        let mut config = InstanceConfig::new();
        // Capabilities come from the handlers registered.
        config.capabilities = Vec::new();
        NodeBuilder {
            registry,
            data,
            history: None,
            config,
            handlers: Handlers::new(),
            jobs: Vec::new(),
            scheduler: SchedulerOptions::default(),
            alerts: Vec::new(),
            console: None,
            clock: SystemClock::shared(),
        }
    }

    /// The data directory: the embedded registry, the default SQLite history and
    /// the history spool live here (default `./shardcron-data` for standalone).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data = dir.into();
        self
    }

    /// The execution history database: `sqlite://PATH`, `postgres://...` or
    /// `mysql://...` (default: SQLite in the data directory).
    pub fn history(mut self, url: impl Into<String>) -> Self {
        self.history = Some(url.into());
        self
    }

    /// The instance's name (default: the host name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// A label of the instance (jobs may require labels).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.labels.insert(key.into(), value.into());
        self
    }

    /// The instance's weight for the `weighted` strategy (default 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.config.weight = weight;
        self
    }

    /// The whole instance configuration (lease TTL, fence margin, ...); the
    /// capabilities still come from the handlers.
    pub fn instance_config(mut self, config: InstanceConfig) -> Self {
        self.config = config;
        self
    }

    /// Trigger-loop settings.
    pub fn scheduler_options(mut self, options: SchedulerOptions) -> Self {
        self.scheduler = options;
        self
    }

    /// Run jobs of `kind = name` with `job`.
    pub fn handler(mut self, name: impl Into<String>, job: impl SimpleJob) -> Self {
        self.handlers = self.handlers.register(name, job);
        self
    }

    /// Run jobs of `kind = name` with a dataflow job (fetch, then process; see
    /// `streaming` in the job).
    pub fn dataflow(mut self, name: impl Into<String>, job: impl DataflowJob) -> Self {
        self.handlers = self.handlers.dataflow(name, job);
        self
    }

    /// A Rust listener that jobs name in `[[job.listeners]]` as `handler = name`.
    pub fn listener(mut self, name: impl Into<String>, listener: impl Listener) -> Self {
        self.handlers = self.handlers.listener(name, listener);
        self
    }

    /// Run `script` jobs (and `command` listeners), with these options (the
    /// allow-list of programs, output limits, ...).
    pub fn scripts(mut self, options: ScriptOptions) -> Self {
        self.handlers = self.handlers.scripts(ScriptJob::new(options));
        self
    }

    /// Run `http` jobs with this client.
    pub fn http(mut self, options: HttpOptions) -> Self {
        match HttpJob::new(options) {
            Ok(job) => self.handlers = self.handlers.register("http", job),
            Err(e) => self
                .jobs
                .push(Err(JobErrors(vec![shardcron_core::job::Problem {
                    job: None,
                    field: "http".into(),
                    message: format!("cannot set up the HTTP job client: {e}"),
                }]))),
        }
        self
    }

    /// Make sure this job exists when the node starts (created if absent; an
    /// existing copy is replaced only when the job says `overwrite`).
    pub fn job(mut self, job: impl Into<JobDefinition>) -> Self {
        self.jobs.push(job.into().0);
        self
    }

    /// Every job of a job file (TOML).
    pub fn jobs_file(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let read = std::fs::read_to_string(path)
            .map_err(|e| {
                JobErrors(vec![shardcron_core::job::Problem {
                    job: None,
                    field: "(file)".into(),
                    message: format!("cannot read {}: {e}", path.display()),
                }])
            })
            .and_then(|text| shardcron_core::job::JobFile::from_toml(&text));
        match read {
            Ok(file) => self.jobs.extend(file.jobs.into_iter().map(Ok)),
            Err(e) => self.jobs.push(Err(e)),
        }
        self
    }

    /// Alert channels (as read from `[[alert]]` tables).
    pub fn alerts(mut self, channels: Vec<shardcron_alert::AlertConfig>) -> Self {
        self.alerts = channels;
        self
    }

    /// Serve the console, the REST API, `/metrics` and `/health`.
    pub fn console(mut self, options: ConsoleOptions) -> Self {
        self.console = Some(options);
        self
    }

    /// The clock (tests use a manual one).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Open the registry and the history, join the cluster, apply the jobs and
    /// start running them.
    pub async fn start(self) -> Result<Node, NodeError> {
        let mut problems = Vec::new();
        let mut jobs = Vec::new();
        for j in self.jobs {
            match j {
                Ok(spec) => jobs.push(spec),
                Err(e) => problems.extend(e.0),
            }
        }
        if !problems.is_empty() {
            return Err(JobErrors(problems).into());
        }
        let registry_choice = self.registry.map_err(NodeError::Invalid)?;
        let data = self.data;
        std::fs::create_dir_all(&data).map_err(|e| {
            NodeError::Invalid(format!(
                "data directory: cannot create {}: {e}",
                data.display()
            ))
        })?;
        let (registry, memory): (Arc<dyn Registry>, Option<MemoryRegistry>) = match registry_choice
        {
            RegistryChoice::Embedded => {
                let dir = data.join("registry");
                let m = MemoryRegistry::open(&dir).map_err(|e| {
                    NodeError::Failed(format!(
                        "cannot open the embedded registry in {}: {e}",
                        dir.display()
                    ))
                })?;
                (Arc::new(m.clone()), Some(m))
            }
            RegistryChoice::Etcd(opts) => {
                let endpoints = opts.endpoints.join(",");
                let r = EtcdRegistry::connect(*opts).await.map_err(|e| {
                    NodeError::Failed(format!("cannot connect to etcd at {endpoints}: {e}"))
                })?;
                (Arc::new(r), None)
            }
            RegistryChoice::Given(r) => (r, None),
        };
        let history_url = self.history.unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                std::path::absolute(data.join("history.db"))
                    .unwrap_or_else(|_| data.join("history.db"))
                    .display()
            )
        });
        let store = HistoryStore::connect(&history_url)
            .await
            .map_err(|e| NodeError::Failed(format!("history database: {e}")))?;
        let writer = HistoryWriter::start(store.clone(), WriterOptions::new(data.join("spool")))
            .await
            .map_err(|e| NodeError::Failed(format!("history spool: {e}")))?;
        let alerting = crate::alerting::Alerting::start(self.alerts, Arc::new(writer.clone()))
            .map_err(|e| NodeError::Failed(format!("alerts: {e}")))?;
        // Counted for /metrics: every record and every registry call.
        let metrics = Arc::new(Metrics::new());
        let history: Arc<dyn HistorySink> =
            Arc::new(MetricsSink::new(alerting.sink(), metrics.clone()));
        let registry: Arc<dyn Registry> = Arc::new(MeteredRegistry::new(registry, metrics.clone()));

        let mut config = self.config;
        config.capabilities.clear();
        config
            .validate()
            .map_err(|e| NodeError::Invalid(e.to_string()))?;
        let runner = Runner {
            handlers: self.handlers,
            history,
            options: self.scheduler,
        };
        let instance = Instance::start_with(registry.clone(), self.clock.clone(), config, runner)
            .await
            .map_err(|e| NodeError::Failed(format!("cannot join the cluster: {e}")))?;
        alerting.set_instance(&instance);
        let instance = Arc::new(instance);
        metrics.set_instance(Arc::downgrade(&instance));
        let cluster = Cluster::new(registry.clone(), self.clock.clone());
        for spec in &jobs {
            apply_job(&cluster, spec).await?;
        }
        let console = match self.console {
            None => None,
            Some(opts) => {
                let state = Arc::new(ConsoleState {
                    cluster: cluster.clone(),
                    history: store.clone(),
                    instance: Some(Arc::downgrade(&instance)),
                    auth: start_auth(registry, self.clock.clone(), opts.auth).await?,
                    metrics: Some(metrics.clone()),
                    clock: self.clock,
                });
                Some(Console::start(opts.bind, state).await?)
            }
        };
        Ok(Node {
            instance,
            cluster,
            store,
            writer,
            memory,
            alerting,
            console,
            metrics,
        })
    }
}

/// Set up logins for the namespace; a password generated now (the namespace's
/// first start without one configured) is printed once, to standard error.
pub async fn start_auth(
    registry: Arc<dyn Registry>,
    clock: SharedClock,
    opts: AuthOptions,
) -> Result<Auth, NodeError> {
    let (auth, generated) = Auth::init(registry, clock, opts)
        .await
        .map_err(|e| NodeError::Invalid(format!("console: {e}")))?;
    if let Some(password) = generated {
        // Printed, not logged: it must not reach log files, and it is shown once.
        eprintln!(
            "\n  shardcron console: the admin password of this namespace was generated now\n  \
             and is shown only this once. Log in as `admin` with:\n\n      {password}\n"
        );
    }
    Ok(auth)
}

/// The console's server task.
#[derive(Debug)]
pub struct Console {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Console {
    /// Listen on `bind` and serve `state` in the background.
    pub async fn start(bind: SocketAddr, state: AppState) -> Result<Console, NodeError> {
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
            NodeError::Failed(format!(
                "console: cannot listen on {bind} (choose another address with --bind): {e}"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| NodeError::Failed(format!("console: {e}")))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = shardcron_console::serve(listener, state, shutdown).await {
                tracing::error!(error = %e, "the console stopped");
            }
        });
        tracing::info!(url = %format!("http://{addr}/"), "console and REST API");
        Ok(Console { addr, stop, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let requests in flight finish (at most 5 s; open event
    /// streams are cut).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// A job to apply at start: a [`Job`] builder or a [`JobSpec`].
#[derive(Debug)]
pub struct JobDefinition(Result<JobSpec, JobErrors>);

impl From<Job> for JobDefinition {
    fn from(job: Job) -> Self {
        JobDefinition(job.build())
    }
}

impl From<JobSpec> for JobDefinition {
    fn from(spec: JobSpec) -> Self {
        JobDefinition(spec.validate().map(|()| spec))
    }
}

async fn apply_job(cluster: &Cluster, job: &JobSpec) -> Result<(), NodeError> {
    let name = job.name.as_str();
    match cluster.apply_job(job).await {
        Ok(ApplyOutcome::Created) => tracing::info!(job = name, "job created"),
        Ok(ApplyOutcome::Overwritten) => {
            tracing::info!(job = name, "job updated (overwrite = true)")
        }
        Ok(ApplyOutcome::Unchanged) => tracing::debug!(job = name, "job unchanged"),
        Ok(ApplyOutcome::Conflict) => tracing::warn!(
            job = name,
            "the registry's copy of this job differs from this node's definition; kept the registry's copy (set overwrite = true to replace it)"
        ),
        Err(e) => return Err(NodeError::Failed(format!("cannot apply job {name:?}: {e}"))),
    }
    Ok(())
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    instance: Arc<Instance>,
    cluster: Cluster,
    store: HistoryStore,
    writer: HistoryWriter,
    memory: Option<MemoryRegistry>,
    alerting: crate::alerting::Alerting,
    console: Option<Console>,
    metrics: Arc<Metrics>,
}

impl Node {
    /// A node on one machine: the embedded registry and SQLite history in `data`.
    pub fn standalone(data: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder::new(Ok(RegistryChoice::Embedded), data.into())
    }

    /// A node of a cluster coordinated by etcd at `url` (`etcd://HOST:PORT[,...]`)
    /// under `namespace`. Give it a shared history with [`NodeBuilder::history`]
    /// (PostgreSQL or MySQL) so that every node writes to the same place.
    pub fn etcd(url: &str, namespace: &str) -> NodeBuilder {
        let opts = EtcdOptions::from_url(url, namespace)
            .and_then(|o| o.validate().map(|()| o))
            .map(|o| RegistryChoice::Etcd(Box::new(o)))
            .map_err(|e| format!("registry: {e}"));
        NodeBuilder::new(opts, PathBuf::from("shardcron-data"))
    }

    /// A node of a cluster coordinated by etcd with these options (TLS, user...).
    pub fn etcd_with(options: EtcdOptions) -> NodeBuilder {
        let opts = options
            .validate()
            .map(|()| RegistryChoice::Etcd(Box::new(options)))
            .map_err(|e| format!("registry: {e}"));
        NodeBuilder::new(opts, PathBuf::from("shardcron-data"))
    }

    /// A node on a registry built by the caller.
    pub fn with_registry(registry: Arc<dyn Registry>) -> NodeBuilder {
        NodeBuilder::new(
            Ok(RegistryChoice::Given(registry)),
            PathBuf::from("shardcron-data"),
        )
    }

    /// The instance (its id, leadership, placement, events...).
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Read and change the namespace: jobs, triggers, item and instance flags.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The execution history.
    pub fn history(&self) -> &HistoryStore {
        &self.store
    }

    /// The node's counters (what `/metrics` shows).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where the console listens, when it is served.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(Console::addr)
    }

    /// Wait for Ctrl-C, SIGTERM or a shutdown request from the cluster.
    pub async fn wait_for_shutdown_signal(&self) -> Result<(), NodeError> {
        self.instance
            .wait_for_shutdown_signal()
            .await
            .map_err(|e| NodeError::Failed(e.to_string()))
    }

    /// Wait for a shutdown signal, then stop gracefully.
    pub async fn run_until_signal(self) -> Result<(), NodeError> {
        let waited = self.wait_for_shutdown_signal().await;
        let stopped = self.shutdown().await;
        waited.and(stopped)
    }

    /// Stop gracefully: runs in progress get the shutdown grace to finish (the
    /// rest are failed over), the lease is revoked, the history and queued alerts
    /// are flushed. Anything still holding the instance (an HTTP server) must be
    /// stopped first.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        if let Some(c) = self.console {
            c.stop().await;
        }
        // Something that upgraded a weak handle a moment ago may still hold it.
        let mut shared = self.instance;
        let mut tries = 0;
        let instance = loop {
            match Arc::try_unwrap(shared) {
                Ok(i) => break i,
                Err(again) if tries < 200 => {
                    shared = again;
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(_) => {
                    return Err(NodeError::Failed(
                        "the instance is still in use at shutdown".to_string(),
                    ));
                }
            }
        };
        let stopped = instance.shutdown().await;
        let (_, written) = tokio::join!(self.alerting.shutdown(), self.writer.shutdown());
        if let Err(e) = written {
            tracing::error!(error = %e, "the history writer did not flush everything");
        }
        if let Some(m) = self.memory {
            let _ = m.close().await;
        }
        stopped.map_err(|e| NodeError::Failed(e.to_string()))
    }
}
