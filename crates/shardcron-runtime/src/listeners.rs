//! Job listeners: `before` and `after` each execution on the instance that runs
//! it, and `after_all`, once per fire across the cluster (distribute-once).
//!
//! # `after_all`
//!
//! Every item of a fire that reaches its final status (after its last attempt;
//! not when it stops to be failed over) writes a marker `after-all/{job}/{fire}/
//! items/{item}` holding its status, then counts the markers of the fire. The
//! instance whose marker completes the set (every item not disabled) creates the
//! claim `after-all/{job}/{fire}/claim` if it is absent, in one compare-and-put:
//! only one instance can create it, so the listeners run once. Each instance that
//! wrote a marker also waits until the fire time (or, for a fire that ran late,
//! the item's start) plus the listener's `wait`; if the
//! claim is still absent then (an item was skipped, lost without failover, or is
//! still running), it tries the same create and, winning, runs the listeners with
//! the items finished so far (`complete = false`). Markers and claims carry the
//! dedup horizon lease, so they disappear on their own.
//!
//! Delivery is at most once: an instance that dies while running the listener
//! does not hand it over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardcron_core::ShardingContext;
use shardcron_core::execution::{ExecutionSource, ExecutionStatus};
use shardcron_core::job::{JobSpec, ListenerAction, ListenerSpec, ListenerWhen};
use shardcron_registry::{Compare, LeaseId, RangeRequest, Txn, TxnOp};
use tokio::sync::watch;

use crate::execute::{FireSummary, Handlers, JobContext, JobError, ListenerEvent, Outcome};
use crate::instance::Shared;
use crate::keys;

/// The listeners of `spec` that run `on`.
pub(crate) fn of(spec: &JobSpec, on: ListenerWhen) -> impl Iterator<Item = &ListenerSpec> {
    spec.listeners.iter().filter(move |l| l.on == on)
}

/// How a listener is named in logs and errors.
fn describe(l: &ListenerSpec) -> String {
    match &l.action {
        ListenerAction::Command(c) => format!("{} listener {:?}", l.on.as_str(), c[0]),
        ListenerAction::Handler(h) => format!("{} listener {h:?}", l.on.as_str()),
    }
}

/// A cancel signal that never fires. Its sender lives as long as the process: a
/// receiver whose sender is gone reads as cancelled ([`JobContext::cancelled`]
/// resolves at once), which would stop a listener's command as soon as it started.
fn never_cancelled() -> watch::Receiver<bool> {
    static NEVER: std::sync::LazyLock<watch::Sender<bool>> =
        std::sync::LazyLock::new(|| watch::channel(false).0);
    NEVER.subscribe()
}

/// A context whose cancel signal never fires: listeners are bounded by their
/// timeout, not by the run's cancellation (an `after` listener of a cancelled run
/// still runs).
fn detached(ctx: &JobContext) -> JobContext {
    let mut fresh = JobContext::new(ctx.sharding.clone(), ctx.spec.clone(), never_cancelled());
    fresh = fresh.with_extra_env(ctx.extra_env().to_vec());
    fresh
}

/// Run one listener under its timeout.
pub(crate) async fn run(
    handlers: &Handlers,
    l: &ListenerSpec,
    event: ListenerEvent,
) -> Result<(), JobError> {
    let what = describe(l);
    let call = async {
        match &l.action {
            ListenerAction::Handler(name) => match handlers.get_listener(name) {
                Some(listener) => listener.call(event).await,
                None => Err(JobError(format!(
                    "no Rust listener {name:?} is registered on this instance"
                ))),
            },
            ListenerAction::Command(command) => {
                let Some(scripts) = handlers.script_runner() else {
                    return Err(JobError("this instance does not run scripts".into()));
                };
                let (ctx, json) = command_context(event)?;
                scripts.run_command(command, &ctx, json).await.map(|_| ())
            }
        }
    };
    match tokio::time::timeout(l.timeout, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(JobError(format!("{what} failed: {e}"))),
        Err(_) => Err(JobError(format!(
            "{what} ran longer than its timeout of {:?}",
            l.timeout
        ))),
    }
}

/// The context and JSON argument a `command` listener gets for `event`.
fn command_context(event: ListenerEvent) -> Result<(JobContext, String), JobError> {
    match event {
        ListenerEvent::Before(ctx) => {
            let ctx =
                detached(&ctx).with_extra_env(vec![("SHARDCRON_LISTENER".into(), "before".into())]);
            let json = json_of(&ctx.sharding)?;
            Ok((ctx, json))
        }
        ListenerEvent::After(ctx, outcome) => {
            let mut env = vec![
                ("SHARDCRON_LISTENER".to_owned(), "after".to_owned()),
                ("SHARDCRON_STATUS".to_owned(), outcome.status.to_string()),
            ];
            if let Some(cause) = &outcome.cause {
                env.push(("SHARDCRON_CAUSE".to_owned(), bounded(cause)));
            }
            let ctx = detached(&ctx).with_extra_env(env);
            let json = json_of(&ctx.sharding)?;
            Ok((ctx, json))
        }
        ListenerEvent::AfterAll(spec, summary) => {
            let sharding = ShardingContext {
                job: summary.job.clone(),
                item: 0,
                total: summary.total,
                item_param: String::new(),
                param: spec.param.clone(),
                fire_time: summary.fire_time,
                execution_id: String::new(),
                instance: summary.instance.clone(),
                token: 0,
                source: ExecutionSource::Normal,
                attempt: 1,
            };
            let items: Vec<String> = summary
                .items
                .iter()
                .map(|(i, s)| format!("{i}={s}"))
                .collect();
            let env = vec![
                ("SHARDCRON_LISTENER".to_owned(), "after_all".to_owned()),
                ("SHARDCRON_ITEMS".to_owned(), items.join(",")),
                (
                    "SHARDCRON_COMPLETE".to_owned(),
                    summary.complete.to_string(),
                ),
                // Not about one item or execution.
                ("SHARDCRON_ITEM".to_owned(), String::new()),
                ("SHARDCRON_ITEM_PARAM".to_owned(), String::new()),
                ("SHARDCRON_EXECUTION_ID".to_owned(), String::new()),
                ("SHARDCRON_TOKEN".to_owned(), String::new()),
                ("SHARDCRON_ATTEMPT".to_owned(), String::new()),
            ];
            let json = serde_json::json!({
                "job": summary.job,
                "fire_time": summary.fire_time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                "total": summary.total,
                "items": summary.items.iter().map(|(i, s)| (i.to_string(), s.to_string())).collect::<BTreeMap<_, _>>(),
                "complete": summary.complete,
                "instance": summary.instance,
            })
            .to_string();
            let ctx = JobContext::new(sharding, spec, never_cancelled()).with_extra_env(env);
            Ok((ctx, json))
        }
    }
}

/// A cause short enough for an environment variable.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(4096) {
        Some((at, _)) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// JSON for a listener's last argument.
fn json_of<T: serde::Serialize>(value: &T) -> Result<String, JobError> {
    serde_json::to_string(value)
        .map_err(|e| JobError(format!("cannot encode the listener's context: {e}")))
}

/// Run every `before` listener in order; the first failure fails the attempt.
pub(crate) async fn before(handlers: &Handlers, ctx: &JobContext) -> Result<(), JobError> {
    for l in of(&ctx.spec, ListenerWhen::Before) {
        run(handlers, l, ListenerEvent::Before(ctx.clone())).await?;
    }
    Ok(())
}

/// Run every `after` listener in order; failures are logged.
pub(crate) async fn after(handlers: &Handlers, ctx: &JobContext, outcome: &Outcome) {
    for l in of(&ctx.spec, ListenerWhen::After) {
        if let Err(e) = run(
            handlers,
            l,
            ListenerEvent::After(ctx.clone(), outcome.clone()),
        )
        .await
        {
            tracing::warn!(job = %ctx.sharding.job, item = ctx.sharding.item, execution = %ctx.sharding.execution_id, error = %e, "listener failed");
        }
    }
}

fn fire_prefix(job: &str, fire_time: DateTime<Utc>) -> String {
    format!(
        "{}{job}/{}/",
        keys::AFTER_ALL,
        crate::scheduler::fire_id(fire_time)
    )
}

/// What the `after_all` path needs from the run that finished.
pub(crate) struct FinishedItem {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handlers: Arc<Handlers>,
    pub(crate) spec: Arc<JobSpec>,
    pub(crate) fire_time: DateTime<Utc>,
    /// When the item's run started (its claim).
    pub(crate) started: DateTime<Utc>,
    pub(crate) item: u32,
    pub(crate) status: ExecutionStatus,
    pub(crate) instance: String,
    pub(crate) dedup_horizon: Duration,
}

impl FinishedItem {
    /// Record the item's end and run the `after_all` listeners if it completes
    /// the fire; otherwise wait for the fire's `wait` and run them then if nobody
    /// has. Runs in its own task.
    pub(crate) async fn run(self) {
        let Some(wait) = of(&self.spec, ListenerWhen::AfterAll).map(|l| l.wait).max() else {
            return;
        };
        let job = self.spec.name.as_str().to_owned();
        let prefix = fire_prefix(&job, self.fire_time);
        let lease = match crate::scheduler::horizon_lease(&self.shared, self.dedup_horizon).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(job = %job, error = %e, "cannot record an item's end for the after_all listeners");
                return;
            }
        };
        let marker = format!("{prefix}items/{}", self.item).into_bytes();
        if let Err(e) = self
            .shared
            .registry
            .put(&marker, self.status.to_string().as_bytes(), Some(lease))
            .await
        {
            tracing::warn!(job = %job, error = %e, "cannot record an item's end for the after_all listeners");
            return;
        }
        match self.try_claim(&prefix, lease, false).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(job = %job, error = %e, "after_all: cannot read the fire's items")
            }
        }
        // From the fire time, or from the start of a fire that ran late (a misfire
        // run at start-up): its items start about together then.
        let deadline =
            self.fire_time.max(self.started) + chrono::Duration::from_std(wait).unwrap_or_default();
        let left = (deadline - self.shared.clock.wall())
            .to_std()
            .unwrap_or_default();
        tokio::time::sleep(left).await;
        if let Err(e) = self.try_claim(&prefix, lease, true).await {
            tracing::warn!(job = %job, error = %e, "after_all: cannot read the fire's items");
        }
    }

    /// Count the fire's markers; when they are complete (or `waited`), create the
    /// claim and, having created it, run the listeners. Returns whether the
    /// listeners ran or had already run.
    async fn try_claim(&self, prefix: &str, lease: LeaseId, waited: bool) -> crate::Result<bool> {
        let claim = format!("{prefix}claim").into_bytes();
        let items_prefix = format!("{prefix}items/");
        let resp = self
            .shared
            .registry
            .range(RangeRequest::prefix(items_prefix.clone().into_bytes()))
            .await?;
        let mut items = BTreeMap::new();
        for kv in &resp.kvs {
            let item = std::str::from_utf8(&kv.key)
                .ok()
                .and_then(|k| k.strip_prefix(&items_prefix))
                .and_then(|i| i.parse::<u32>().ok());
            let status = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.parse::<ExecutionStatus>().ok());
            if let (Some(i), Some(s)) = (item, status) {
                items.insert(i, s);
            }
        }
        let job = self.spec.name.as_str();
        let disabled = self.shared.disabled_items(job);
        let complete =
            (0..self.spec.shards).all(|i| disabled.contains(&i) || items.contains_key(&i));
        if !complete && !waited {
            return Ok(false);
        }
        let won =
            self.shared
                .registry
                .txn(Txn::new().when(Compare::absent(claim.clone())).and_then(
                    TxnOp::put_with_lease(claim, self.instance.clone().into_bytes(), lease),
                ))
                .await?
                .succeeded;
        if !won {
            return Ok(true);
        }
        let summary = FireSummary {
            job: job.to_owned(),
            fire_time: self.fire_time,
            total: self.spec.shards,
            items,
            complete,
            instance: self.instance.clone(),
        };
        tracing::info!(job, fire = %self.fire_time, complete, "running after_all listeners");
        for l in of(&self.spec, ListenerWhen::AfterAll) {
            let event = ListenerEvent::AfterAll(self.spec.clone(), summary.clone());
            if let Err(e) = run(&self.handlers, l, event).await {
                tracing::warn!(job, fire = %self.fire_time, error = %e, "listener failed");
            }
        }
        Ok(true)
    }
}
