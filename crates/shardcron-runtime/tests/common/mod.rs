//! Shared test setup: the same cluster tests run on the embedded registry and on a
//! real etcd started by the test.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shardcron_core::ExecutionSource;
use shardcron_core::clock::{SharedClock, SystemClock};
use shardcron_core::job::JobFile;
use shardcron_registry::{
    EtcdOptions, EtcdRegistry, MemoryRegistry, Registry, Txn, TxnOp, TxnResponse,
};
use shardcron_runtime::{
    Cluster, Handlers, HistorySink, Instance, InstanceConfig, JobContext, JobError, MemoryHistory,
    Runner, SchedulerOptions, SimpleJob,
};
use shardcron_testkit::EtcdServer;

/// Which registry a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    Etcd,
}

/// A registry for one test: every `connect` gives a separate client of the same
/// namespace (on etcd, a separate connection, as separate processes would have).
pub struct Env {
    pub backend: Backend,
    memory: Option<MemoryRegistry>,
    etcd: Option<EtcdServer>,
    ns: String,
}

static NS: AtomicU64 = AtomicU64::new(0);

impl Env {
    pub async fn new(backend: Backend) -> Env {
        let ns = format!(
            "/runtime-test-{}-{}",
            std::process::id(),
            NS.fetch_add(1, Ordering::SeqCst)
        );
        match backend {
            Backend::Memory => Env {
                backend,
                memory: Some(MemoryRegistry::new()),
                etcd: None,
                ns,
            },
            Backend::Etcd => Env {
                backend,
                memory: None,
                etcd: Some(EtcdServer::start()),
                ns,
            },
        }
    }

    pub async fn connect(&self) -> Arc<dyn Registry> {
        match (&self.memory, &self.etcd) {
            (Some(m), _) => Arc::new(m.clone()),
            (_, Some(e)) => Arc::new(
                EtcdRegistry::connect(EtcdOptions::new(e.endpoints(), self.ns.clone()))
                    .await
                    .expect("connect to the test etcd"),
            ),
            _ => unreachable!("an env has a backend"),
        }
    }

    pub fn clock(&self) -> SharedClock {
        SystemClock::shared()
    }
}

/// A test-speed instance configuration.
pub fn config(name: &str) -> InstanceConfig {
    InstanceConfig {
        name: name.to_string(),
        labels: BTreeMap::new(),
        capabilities: vec!["script".into(), "http".into()],
        weight: 1,
        lease_ttl: Duration::from_secs(2),
        fence_margin: Duration::from_millis(500),
        heartbeat_interval: Duration::from_millis(300),
        reconcile_interval: Duration::from_secs(5),
        max_clock_skew: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(5),
    }
}

pub async fn start(env: &Env, cfg: InstanceConfig) -> Instance {
    Instance::start(env.connect().await, env.clock(), cfg)
        .await
        .expect("instance starts")
}

/// An instance of `env` that runs jobs with `runner`.
pub async fn start_running(env: &Env, cfg: InstanceConfig, runner: Runner) -> Instance {
    Instance::start_with(env.connect().await, env.clock(), cfg, runner)
        .await
        .expect("instance starts")
}

/// Poll `cond` until it holds, or panic with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("{what}: not true within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Async version of [`eventually`].
pub async fn eventually_async<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("{what}: not true within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Write many jobs quickly: batches of 100 puts per transaction.
pub async fn bulk_jobs(reg: &dyn Registry, n: usize, json: impl Fn(usize) -> (String, String)) {
    let mut i = 0;
    while i < n {
        let mut txn = Txn::new();
        for j in i..(i + 100).min(n) {
            let (name, body) = json(j);
            txn = txn.and_then(TxnOp::put(
                format!("jobs/{name}").into_bytes(),
                body.into_bytes(),
            ));
        }
        let r: TxnResponse = reg.txn(txn).await.expect("bulk job write");
        assert!(r.succeeded);
        i += 100;
    }
}

/// Generates one `#[tokio::test]` per backend for an async fn taking a [`Backend`].
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Memory).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Etcd).await;
                }
            )*
        }
    };
}

/// One execution as the job saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub job: String,
    pub item: u32,
    pub fire: DateTime<Utc>,
    pub instance: String,
    pub token: i64,
    pub source: ExecutionSource,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub cancelled: bool,
}

/// A job that records every run and takes `work` to finish; cancelled, it stops
/// and fails.
#[derive(Clone)]
pub struct Recorder {
    log: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    work: Duration,
}

impl Recorder {
    pub fn new(work: Duration) -> Self {
        Recorder {
            log: Default::default(),
            work,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }
}

#[async_trait::async_trait]
impl SimpleJob for Recorder {
    async fn execute(&self, ctx: JobContext) -> std::result::Result<Option<String>, JobError> {
        let start = Utc::now();
        let cancelled = tokio::select! {
            () = tokio::time::sleep(self.work) => false,
            () = ctx.cancelled() => true,
        };
        let s = &ctx.sharding;
        self.log.lock().expect("log").push(Seen {
            job: s.job.clone(),
            item: s.item,
            fire: s.fire_time,
            instance: s.instance.clone(),
            token: s.token,
            source: s.source,
            start,
            end: Utc::now(),
            cancelled,
        });
        if cancelled {
            return Err(JobError("stopped: cancelled".into()));
        }
        Ok(Some(format!("item {} done", s.item)))
    }
}

/// Handlers with `job` registered as `kind`.
pub fn runner(kind: &str, job: &Recorder, history: Arc<dyn HistorySink>) -> Runner {
    Runner {
        handlers: Handlers::new().register(kind, job.clone()),
        history,
        options: SchedulerOptions::default(),
    }
}

/// Create the one job of a TOML snippet.
pub async fn create_job(env: &Env, toml: &str) {
    let spec = JobFile::from_toml(toml).expect("job").jobs.remove(0);
    Cluster::new(env.connect().await, env.clock())
        .create_job(&spec)
        .await
        .expect("create job");
}

/// Lets keep-alives through until stalled; records when the last answered one was
/// sent.
#[derive(Debug, Default)]
pub struct Stall {
    pub stalled: std::sync::atomic::AtomicBool,
    pub last_ack: std::sync::Mutex<Option<Instant>>,
}

#[async_trait::async_trait]
impl shardcron_registry::conformance::Hooks for Stall {
    async fn keep_alive(
        &self,
        inner: &dyn Registry,
        id: shardcron_registry::LeaseId,
    ) -> shardcron_registry::Result<Duration> {
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let sent = Instant::now();
        let r = inner.lease_keep_alive(id).await;
        if r.is_ok() {
            *self.last_ack.lock().expect("ack") = Some(sent);
        }
        r
    }
}

/// `a`, whose keep-alives go through [`Stall`], holds the (hour-long) run of job
/// `fence`; `other` has joined; then `a`'s keep-alives stall.
pub struct StalledHolder {
    pub job: Recorder,
    pub h: Arc<MemoryHistory>,
    pub stall: Arc<shardcron_registry::conformance::Intercept<Stall>>,
    pub a: Instance,
    pub other: Instance,
}

pub async fn stall_a_holder(env: &Env) -> StalledHolder {
    const T: Duration = Duration::from_secs(20);
    let job = Recorder::new(Duration::from_secs(3600));
    let h = Arc::new(MemoryHistory::new());
    let stall = Arc::new(shardcron_registry::conformance::Intercept {
        inner: env.connect().await,
        hooks: Stall::default(),
    });
    let a = Instance::start_with(
        stall.clone(),
        env.clock(),
        config("a"),
        runner("slow", &job, h.clone()),
    )
    .await
    .expect("a");
    create_job(
        env,
        "[[job]]\nname = \"fence\"\nevery = \"1h\"\nshards = 1\nkind = \"slow\"\n",
    )
    .await;
    let reg = env.connect().await;
    eventually_async("the run started", T, || {
        let reg = reg.clone();
        async move { reg.get(b"run/fence/0").await.expect("get").is_some() }
    })
    .await;
    let other = Instance::start_with(
        env.connect().await,
        env.clock(),
        config("b"),
        runner("slow", &job, h.clone()),
    )
    .await
    .expect("b");
    eventually("a keep-alive was acknowledged", T, || {
        stall.hooks.last_ack.lock().expect("ack").is_some()
    })
    .await;
    stall.hooks.stalled.store(true, Ordering::SeqCst);
    StalledHolder {
        job,
        h,
        stall,
        a,
        other,
    }
}

/// `a` (named `name`) claims both items of the hour-long job `gen` and pauses right
/// after its claims commit (failpoint `after_claim`, released through `gate` and
/// cleared with `scope`); then `b` joins, which changes the generation.
pub struct PausedClaims {
    pub job: Recorder,
    pub h: Arc<MemoryHistory>,
    pub gate: Arc<tokio::sync::Semaphore>,
    pub scope: String,
    pub a: Instance,
    pub b: Instance,
}

pub async fn claims_paused_then_join(env: &Env, name: &str) -> PausedClaims {
    const T: Duration = Duration::from_secs(20);
    create_job(
        env,
        "[[job]]\nname = \"gen\"\nevery = \"1h\"\nshards = 2\nkind = \"slow\"\n",
    )
    .await;
    let job = Recorder::new(Duration::from_millis(300));
    let h = Arc::new(MemoryHistory::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let scope = format!("{name}-");
    shardcron_runtime::failpoints::set(
        "after_claim",
        &scope,
        shardcron_runtime::failpoints::Action::Pause(gate.clone()),
    );
    let a = Instance::start_with(
        env.connect().await,
        env.clock(),
        config(name),
        runner("slow", &job, h.clone()),
    )
    .await
    .expect("a");
    let reg = env.connect().await;
    eventually_async("a claimed both items", T, || {
        let reg = reg.clone();
        async move {
            reg.get(b"run/gen/0").await.expect("get").is_some()
                && reg.get(b"run/gen/1").await.expect("get").is_some()
        }
    })
    .await;
    let b = Instance::start_with(
        env.connect().await,
        env.clock(),
        config("b"),
        runner("slow", &job, h.clone()),
    )
    .await
    .expect("b");
    PausedClaims {
        job,
        h,
        gate,
        scope,
        a,
        b,
    }
}

/// The final state of every execution in `h` (its record with the last update
/// applied), in start order.
pub fn executions(h: &MemoryHistory) -> Vec<shardcron_core::ExecutionRecord> {
    use shardcron_store::HistoryEvent;
    let mut out: Vec<shardcron_core::ExecutionRecord> = Vec::new();
    for e in h.events() {
        match e {
            HistoryEvent::Record(r) => out.push(r),
            HistoryEvent::Update(u) => {
                if let Some(r) = out.iter_mut().find(|r| r.id == u.id) {
                    r.status = u.status;
                    r.ended_at = u.ended_at;
                    r.cause = u.cause.or(r.cause.take());
                    r.output = u.output.or(r.output.take());
                }
            }
        }
    }
    out.sort_by_key(|r| r.started_at);
    out
}

/// The executions of `h` that have ended.
pub fn ended(h: &MemoryHistory) -> Vec<shardcron_core::ExecutionRecord> {
    executions(h)
        .into_iter()
        .filter(|r| r.status.is_terminal())
        .collect()
}
