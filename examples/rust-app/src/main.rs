//! An application whose jobs are Rust code, run by shardcron.
//!
//! ```text
//! # one machine: embedded registry and SQLite history in ./example-data
//! cargo run -p shardcron-example-app
//!
//! # a cluster: start this on several machines (or twice on one)
//! cargo run -p shardcron-example-app -- --etcd etcd://127.0.0.1:2379 \
//!     --namespace example --history sqlite:///tmp/example-history.db --name a
//! ```
//!
//! Options: `--data DIR` (default `./example-data`), `--name NAME`, `--etcd URL`,
//! `--namespace NS` and `--history URL` (both required with `--etcd`). Ctrl-C
//! or SIGTERM stops it gracefully.
//!
//! Three jobs:
//! - `hello` (every 5 s, 3 items): a [`SimpleJob`] that says which item it runs
//!   and with which fencing token;
//! - `orders` (every 10 s, 2 items, `streaming`): a [`DataflowJob`] that drains the
//!   orders waiting for its item in batches of 5, and an `after_all` listener that
//!   reports once per fire, when both items are done;
//! - `audit` listeners log before and after every run of `hello`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shardcron::{
    DataflowJob, Job, JobContext, JobError, Listener, ListenerEvent, Node, NodeError, SimpleJob,
};

/// Says hello from its item.
struct Hello;

#[shardcron::async_trait]
impl SimpleJob for Hello {
    async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError> {
        let s = &ctx.sharding;
        println!(
            "hello: item {}/{} fire {} token {} on {}",
            s.item, s.total, s.fire_time, s.token, s.instance
        );
        Ok(Some(format!("hello from item {}", s.item)))
    }
}

/// Orders waiting per item: each fire finds 12 new ones (a stand-in for a table
/// or a queue partitioned by item).
#[derive(Default)]
struct Orders {
    pending: Mutex<HashMap<(u32, String), u32>>,
}

const ORDERS_PER_FIRE: u32 = 12;
const BATCH: u32 = 5;

#[shardcron::async_trait]
impl DataflowJob for Orders {
    type Item = u32;

    async fn fetch(&self, ctx: &JobContext) -> Result<Vec<u32>, JobError> {
        let key = (ctx.sharding.item, ctx.sharding.fire_time.to_rfc3339());
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| JobError("poisoned".into()))?;
        let left = pending.entry(key).or_insert(ORDERS_PER_FIRE);
        let take = (*left).min(BATCH);
        let first = ORDERS_PER_FIRE - *left;
        *left -= take;
        Ok((first..first + take).collect())
    }

    async fn process(&self, ctx: &JobContext, orders: Vec<u32>) -> Result<(), JobError> {
        println!(
            "orders: item {} processed orders {:?} (token {})",
            ctx.sharding.item, orders, ctx.sharding.token
        );
        Ok(())
    }
}

/// Reports each fire of `orders` once, after all its items.
struct Summary;

#[shardcron::async_trait]
impl Listener for Summary {
    async fn call(&self, event: ListenerEvent) -> Result<(), JobError> {
        if let ListenerEvent::AfterAll(_, fire) = event {
            println!(
                "summary: job {} fire {} complete={} items={:?}",
                fire.job, fire.fire_time, fire.complete, fire.items
            );
        }
        Ok(())
    }
}

/// Logs around each run.
struct Audit;

#[shardcron::async_trait]
impl Listener for Audit {
    async fn call(&self, event: ListenerEvent) -> Result<(), JobError> {
        match event {
            ListenerEvent::Before(ctx) => {
                println!(
                    "audit: starting {} item {}",
                    ctx.sharding.job, ctx.sharding.item
                )
            }
            ListenerEvent::After(ctx, outcome) => println!(
                "audit: {} item {} ended {}",
                ctx.sharding.job, ctx.sharding.item, outcome.status
            ),
            ListenerEvent::AfterAll(..) => {}
        }
        Ok(())
    }
}

fn usage(problem: &str) -> NodeError {
    NodeError::Invalid(format!(
        "{problem}\nusage: shardcron-example [--data DIR] [--name NAME] \
         [--etcd URL --namespace NS --history URL]"
    ))
}

#[tokio::main]
async fn main() -> Result<(), NodeError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut opts: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let known = ["--data", "--name", "--etcd", "--namespace", "--history"];
        if !known.contains(&flag.as_str()) {
            return Err(usage(&format!("unknown option {flag:?}")));
        }
        let value = args
            .next()
            .ok_or_else(|| usage(&format!("{flag} needs a value")))?;
        opts.insert(flag, value);
    }

    let mut node = match opts.get("--etcd") {
        None => Node::standalone("example-data"),
        Some(url) => {
            let ns = opts
                .get("--namespace")
                .ok_or_else(|| usage("--namespace is required with --etcd"))?;
            let history = opts
                .get("--history")
                .ok_or_else(|| usage("--history is required with --etcd"))?;
            Node::etcd(url, ns).history(history)
        }
    };
    if let Some(dir) = opts.get("--data") {
        node = node.data_dir(dir);
    }
    if let Some(name) = opts.get("--name") {
        node = node.name(name);
    }

    let node = node
        .handler("hello", Hello)
        .dataflow("orders", Orders::default())
        .listener("summary", Summary)
        .listener("audit", Audit)
        .job(
            Job::every("hello", Duration::from_secs(5))
                .shards(3)
                .kind("hello")
                .before("audit")
                .after("audit"),
        )
        .job(
            Job::every("orders", Duration::from_secs(10))
                .shards(2)
                .kind("orders")
                .streaming(true)
                .timeout(Duration::from_secs(8))
                .after_all("summary", Duration::from_secs(9)),
        )
        .start()
        .await?;
    println!(
        "running as {} (Ctrl-C stops)",
        node.instance().id().unwrap_or_default()
    );
    node.run_until_signal().await
}
