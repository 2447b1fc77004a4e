//! Shared test setup: the same cluster tests run on the embedded registry and on a
//! real etcd started by the test.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardcron_core::clock::{SharedClock, SystemClock};
use shardcron_registry::{
    EtcdOptions, EtcdRegistry, MemoryRegistry, Registry, Txn, TxnOp, TxnResponse,
};
use shardcron_runtime::{Instance, InstanceConfig};
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
