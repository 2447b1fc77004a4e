//! The trigger loop, fire claims, releases, failover takeover, manual triggers and
//! cancellation: how every fire of every item runs exactly once.
//!
//! One task per instance holds one timer set for every owned item (no task or
//! thread per job) and sleeps on the [`shardcron_core::Clock`] until the earliest
//! fire. At a fire it reads the item's persisted last fire, decides with
//! [`crate::misfire::decide`], and claims in one transaction:
//!
//! - compares: our instance key's create revision (we are still registered), the
//!   generation's and the job's revisions (our view is current), the item's `last`
//!   revision (nobody decided in between), the fire key absent (one claim per fire,
//!   I2) and the run key absent (one run at a time, I1);
//! - puts: the fire key (bound to the hour's horizon lease), the run key (not bound
//!   to our lease: it outlives us so the fire can be failed over), and `last`.
//!
//! The transaction's revision is the fencing token (I4), given to the job. The
//! release deletes the run key only if it is still ours (compare its revision with
//! the token). A transaction whose answer is lost may have committed: the claimant
//! re-reads the run key and adopts its own claim.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardcron_core::execution::SkipReason;
use shardcron_core::job::{JobSpec, MisfirePolicy};
use shardcron_core::schedule::Schedule;
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus, ShardingContext};
use shardcron_registry::{
    Compare, KeyValue, LeaseId, OpResponse, Registry, RegistryError, Txn, TxnOp,
};
use shardcron_store::{ExecutionUpdate, HistoryEvent, new_execution_id_at};
use tokio::sync::{mpsc, watch};

use crate::cluster::{decode_job, parse_anchor};
use crate::execute::{Handlers, HistorySink, JobContext};
use crate::failpoints;
use crate::instance::{JobPlacement, Shared};
use crate::keys::{self, Key};
use crate::misfire::{self, SkippedRange};
use crate::model::{
    CancelRequest, FailoverEntry, FireClaim, LastFire, RunRecord, TriggerRequest, decode, encode,
};

/// How long a cancelled handler may take to return before its future is dropped.
/// Short, because a self-fenced run must stop well within the fence margin.
pub const CANCEL_GRACE: Duration = Duration::from_millis(200);

/// How the trigger loop behaves.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// A fire claimed later than this after its scheduled instant is a misfire.
    pub misfire_threshold: Duration,
    /// How long the leader waits after a holder disappeared before failing its
    /// run over (at least the holders' fence margin).
    pub lock_delay: Duration,
    /// Longest sleep of the trigger loop between checks.
    pub tick: Duration,
    /// Fire keys live at least this long (their horizon lease is twice this).
    pub dedup_horizon: Duration,
    /// Trigger loops per instance (at least 1). Each owns the jobs whose name
    /// hashes to it and evaluates their due items one at a time, so this many
    /// claims can be in flight at once: the registry's group commit (embedded) or
    /// etcd's pipelining then carries several claims per disk sync.
    pub partitions: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            misfire_threshold: Duration::from_secs(1),
            lock_delay: Duration::from_millis(500),
            tick: Duration::from_millis(50),
            dedup_horizon: Duration::from_secs(3600),
            partitions: 32,
        }
    }
}

/// A run in progress on this instance.
#[derive(Debug)]
pub(crate) struct Running {
    job: String,
    item: u32,
    identity: String,
    cancel: watch::Sender<bool>,
    /// Asks the run to finish soon (its item is moving, the instance stops).
    wind_down: watch::Sender<bool>,
    reason: Arc<Mutex<Option<(ExecutionStatus, String)>>>,
    task: Option<tokio::task::AbortHandle>,
}

/// Runs in progress by execution id, shared with the instance (for draining).
pub(crate) type RunningMap = Arc<Mutex<HashMap<String, Running>>>;

/// What the execution task reports when it ends.
#[derive(Debug)]
struct Done {
    job: String,
    item: u32,
}

/// The trigger loop of one instance.
pub(crate) struct Scheduler {
    /// Which trigger loop this is (of `opts.partitions`).
    partition: usize,
    shared: Arc<Shared>,
    handlers: Arc<Handlers>,
    history: Arc<dyn HistorySink>,
    opts: SchedulerOptions,
    owned: HashSet<(String, u32)>,
    timers: BTreeSet<(DateTime<Utc>, String, u32)>,
    /// When each item's timer is set (the index of `timers`).
    timer_at: HashMap<(String, u32), DateTime<Utc>>,
    /// Items to look at again as soon as possible (blocked by a run, a lost race).
    recheck: BTreeSet<(String, u32)>,
    /// Items whose fire waits because the job is at its `max_concurrent` here, in
    /// the order they started waiting (first come, first served).
    capped: BTreeMap<(String, u32), u64>,
    cap_seq: u64,
    /// Items whose fire waits for a run key to disappear.
    blocked: HashSet<(String, u32)>,
    jobs: HashMap<String, (i64, JobSpec)>,
    running: RunningMap,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    handled_triggers: HashSet<String>,
    horizon: Option<(i64, LeaseId)>,
    /// Items we would own but that are disabled (job or item).
    disabled: HashSet<(String, u32)>,
    /// Disabled items whose `last` has yet to record since when.
    mark_disabled: HashSet<(String, u32)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The lease of the current dedup-horizon bucket (`horizon/{bucket}`), granted
/// (for twice the horizon) by whoever needs it first in the bucket.
pub(crate) async fn horizon_lease(
    shared: &Shared,
    dedup_horizon: Duration,
) -> crate::Result<LeaseId> {
    let secs = i64::try_from(dedup_horizon.as_secs().max(1)).unwrap_or(3600);
    let bucket = shared.clock.wall().timestamp() / secs;
    let key = keys::horizon(bucket);
    if let Some(kv) = shared.registry.get(&key).await? {
        return Ok(kv.lease);
    }
    let lease = shared.registry.lease_grant(dedup_horizon * 2).await?;
    let resp = shared
        .registry
        .txn(
            Txn::new()
                .when(Compare::absent(key.clone()))
                .and_then(TxnOp::put_with_lease(
                    key.clone(),
                    lease.id.to_string().into_bytes(),
                    lease.id,
                ))
                .or_else(TxnOp::get(key)),
        )
        .await?;
    if resp.succeeded {
        return Ok(lease.id);
    }
    let _ = shared.registry.lease_revoke(lease.id).await;
    Ok(first_get(&resp.responses, 0).map_or(lease.id, |kv| kv.lease))
}

/// The fire id of a scheduled fire.
pub fn fire_id(t: DateTime<Utc>) -> String {
    format!("t{}", t.timestamp_millis())
}

fn first_get(resp: &[OpResponse], index: usize) -> Option<KeyValue> {
    match resp.get(index) {
        Some(OpResponse::Get { kvs }) => kvs.first().cloned(),
        _ => None,
    }
}

/// An item's `last` state and its mod revision (0 when absent: a new item, due
/// from `since`).
async fn read_last(
    registry: &dyn Registry,
    job: &str,
    item: u32,
    since: DateTime<Utc>,
) -> crate::Result<(LastFire, i64)> {
    match registry.get(&keys::last(job, item)).await? {
        Some(kv) => Ok((decode::<LastFire>(&kv.key, &kv.value)?, kv.mod_revision)),
        None => Ok((
            LastFire {
                fire: None,
                completed: None,
                since,
                disabled_since: None,
            },
            0,
        )),
    }
}

/// The outcome of a claim attempt.
#[derive(Debug)]
enum Claim {
    /// Claimed.
    Won(Won),
    /// The item is running (the run key exists).
    Busy,
    /// Someone decided this item in between, or our view is stale: look again.
    Retry,
    /// Our identity is gone: fence.
    Fenced,
}

/// A won claim or takeover.
#[derive(Debug)]
struct Won {
    /// The run key's revision: the run's fencing token.
    token: i64,
    execution: String,
    /// The identity the claim was made under (the run key's holder).
    holder: String,
}

impl Scheduler {
    /// Trigger loop `partition` of `opts.partitions`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        handlers: Handlers,
        history: Arc<dyn HistorySink>,
        opts: SchedulerOptions,
        partition: usize,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Scheduler {
            partition,
            shared: shared.clone(),
            handlers: Arc::new(handlers),
            history,
            opts,
            owned: HashSet::new(),
            timers: BTreeSet::new(),
            timer_at: HashMap::new(),
            recheck: BTreeSet::new(),
            capped: BTreeMap::new(),
            cap_seq: 0,
            blocked: HashSet::new(),
            jobs: HashMap::new(),
            running: shared.running.clone(),
            done_tx,
            done_rx,
            handled_triggers: HashSet::new(),
            horizon: None,
            disabled: HashSet::new(),
            mark_disabled: HashSet::new(),
        }
    }

    /// Run until the instance stops.
    pub(crate) async fn run(mut self) {
        let m = self.shared.mirrors();
        let mut gen_rx = m.generation.subscribe();
        let mut jobs_rx = m.jobs.subscribe();
        let mut items_rx = m.items.subscribe();
        let mut runs_rx = m.runs.subscribe();
        let mut fo_rx = m.failovers.subscribe();
        let mut req_rx = m.requests.subscribe();
        let mut sess_rx = self.shared.session_changes();
        let mut stop = self.shared.stop_signal();
        let mut dirty = true;
        let mut identity: Option<String> = None;
        loop {
            if *stop.borrow() {
                // Stopped without draining (the instance was dropped): like a crash,
                // runs end with no record and keep their run keys; the leader fails
                // them over once this identity's lease is gone.
                self.abort_all();
                return;
            }
            if self.shared.draining() {
                // Graceful shutdown: claim nothing new; runs finish and release.
                tokio::select! {
                    _ = stop.changed() => {}
                    Some(_) = self.done_rx.recv() => {}
                    () = tokio::time::sleep(self.opts.tick) => {}
                }
                continue;
            }
            let now_identity = self.shared.current_session().map(|(id, _)| id);
            if now_identity != identity {
                if let Some(old) = &identity {
                    // Self-fence: stop every run of the old identity before anyone
                    // may take over (their run keys stay, for failover).
                    self.fence_runs(old);
                }
                identity = now_identity;
                self.owned.clear();
                self.timers.clear();
                self.timer_at.clear();
                self.capped.clear();
                self.blocked.clear();
                dirty = true;
            }
            if identity.is_some() && self.shared.may_act() {
                if dirty {
                    self.reconcile();
                    dirty = false;
                }
                self.process_disabled().await;
                self.process_due().await;
                self.process_failovers().await;
                self.process_requests().await;
            }
            // Due timers are only served while we may act: otherwise wait a tick
            // (or a change) instead of spinning on a timer that stays due.
            let wait = if identity.is_some() && self.shared.may_act() {
                self.next_wait()
            } else {
                self.opts.tick
            };
            tokio::select! {
                _ = stop.changed() => {}
                _ = sess_rx.changed() => {}
                _ = gen_rx.changed() => dirty = true,
                _ = jobs_rx.changed() => dirty = true,
                _ = items_rx.changed() => dirty = true,
                _ = runs_rx.changed() => self.recheck_blocked(),
                _ = fo_rx.changed() => {}
                _ = req_rx.changed() => {}
                Some(done) = self.done_rx.recv() => {
                    // A slot of the job is free: its capped items may fire now.
                    let waiting: Vec<(String, u32)> = self
                        .capped
                        .keys()
                        .filter(|(j, _)| *j == done.job)
                        .cloned()
                        .collect();
                    self.recheck.extend(waiting);
                    self.recheck.insert((done.job, done.item));
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn next_wait(&self) -> Duration {
        if !self.recheck.is_empty() {
            return Duration::from_millis(1);
        }
        let now = self.shared.clock.wall();
        match self.timers.first() {
            Some((t, _, _)) if *t <= now => Duration::ZERO,
            Some((t, _, _)) => (*t - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(self.opts.tick),
            None => self.opts.tick,
        }
    }

    /// The job as currently stored (decoded once per revision).
    fn job(&mut self, name: &str) -> Option<(i64, JobSpec)> {
        let kv = self.shared.mirrors().jobs.get(&keys::job(name))?;
        if let Some((rev, spec)) = self.jobs.get(name)
            && *rev == kv.mod_revision
        {
            return Some((*rev, spec.clone()));
        }
        let spec = decode_job(&kv.key, &kv.value).ok()?;
        self.jobs
            .insert(name.to_string(), (kv.mod_revision, spec.clone()));
        Some((kv.mod_revision, spec))
    }

    fn can_run(&self, spec: &JobSpec) -> bool {
        self.handlers.can_run(spec)
    }

    /// Recompute which items we own; new ones are looked at now.
    fn reconcile(&mut self) {
        let Some((me, _)) = self.shared.current_session() else {
            return;
        };
        // Every item of a job is in one trigger loop (so that `max_concurrent` is
        // enforced in one place): the one its name hashes to.
        let partitions = self.opts.partitions.max(1) as u64;
        let mine = |name: &[u8]| {
            shardcron_core::hash::stable_hash(name) % partitions == self.partition as u64
        };
        // Hash the raw key first: only this loop's jobs are parsed (a reconcile
        // looks at every job key, in each of the loops).
        let names: Vec<String> = self.shared.mirrors().jobs.read(|m| {
            m.keys()
                .filter(|k| k.strip_prefix(keys::JOBS.as_bytes()).is_some_and(mine))
                .filter_map(|k| match Key::parse(k) {
                    Key::Job(j) => Some(j),
                    _ => None,
                })
                .collect()
        });
        let mut now_owned = HashSet::new();
        let mut now_disabled = HashSet::new();
        for name in names {
            let Some((_, spec)) = self.job(&name) else {
                continue;
            };
            if !self.can_run(&spec) {
                continue;
            }
            // Where the items would run if enabled: their owner also notes when
            // they are disabled, so that the gap is recorded as such.
            let mut as_enabled = spec.clone();
            as_enabled.enabled = true;
            if let JobPlacement::Assigned(a) = self.shared.placement(&as_enabled) {
                let disabled = self.shared.disabled_items(&name);
                for item in a.get(&me).into_iter().flatten() {
                    if spec.enabled && !disabled.contains(item) {
                        now_owned.insert((name.clone(), *item));
                    } else {
                        now_disabled.insert((name.clone(), *item));
                    }
                }
            }
        }
        for key in &now_disabled {
            if !self.disabled.contains(key) {
                self.mark_disabled.insert(key.clone());
            }
        }
        self.disabled = now_disabled;
        for key in &now_owned {
            if !self.owned.contains(key) {
                self.recheck.insert(key.clone());
            }
        }
        self.timers
            .retain(|(_, j, i)| now_owned.contains(&(j.clone(), *i)));
        self.timer_at.retain(|k, _| now_owned.contains(k));
        self.recheck.retain(|k| now_owned.contains(k));
        self.capped.retain(|k, _| now_owned.contains(k));
        self.blocked.retain(|k| now_owned.contains(k));
        if self.owned != now_owned {
            // Pending manual triggers may now name items we own.
            self.handled_triggers.clear();
            // Runs of items that leave us are asked to wind down (streaming
            // dataflow jobs stop fetching).
            for r in lock(&self.running).values() {
                let key = (r.job.clone(), r.item);
                if self.owned.contains(&key) && !now_owned.contains(&key) {
                    let _ = r.wind_down.send(true);
                }
            }
        }
        self.owned = now_owned;
        let owned_jobs: HashSet<&str> = self.owned.iter().map(|(j, _)| j.as_str()).collect();
        self.jobs
            .retain(|name, _| owned_jobs.contains(name.as_str()));
    }

    /// Record in `last` since when newly disabled items are disabled.
    async fn process_disabled(&mut self) {
        let pending: Vec<(String, u32)> = self.mark_disabled.iter().cloned().collect();
        for (job, item) in pending {
            let now = self.shared.clock.wall();
            let done = match read_last(self.shared.registry.as_ref(), &job, item, now).await {
                Ok((last, _)) if last.disabled_since.is_some() => true,
                Ok((last, rev)) => {
                    let marked = LastFire {
                        disabled_since: Some(now),
                        // A never-fired item starts counting from now.
                        fire: last.fire.or(Some(now)),
                        ..last
                    };
                    self.advance_last(&job, item, rev, &marked)
                        .await
                        .unwrap_or(false)
                }
                Err(_) => false,
            };
            if done {
                self.mark_disabled.remove(&(job, item));
            }
        }
    }

    /// Items whose run key just disappeared may have fires waiting.
    /// Items blocked by a run key (of another holder, or a delay schedule waiting
    /// for a completion) are looked at again once that key is gone. Only those:
    /// run keys change on every claim and release.
    fn recheck_blocked(&mut self) {
        let runs = &self.shared.mirrors().runs;
        let freed: Vec<(String, u32)> = self
            .blocked
            .iter()
            .filter(|(job, item)| {
                runs.get(&keys::run(job, *item)).is_none() && !self.running_item(job, *item)
            })
            .cloned()
            .collect();
        for key in freed {
            self.blocked.remove(&key);
            self.recheck.insert(key);
        }
    }

    fn running_of_job(&self, job: &str) -> usize {
        lock(&self.running)
            .values()
            .filter(|r| r.job == job)
            .count()
    }

    fn running_item(&self, job: &str, item: u32) -> bool {
        lock(&self.running)
            .values()
            .any(|r| r.job == job && r.item == item)
    }

    async fn process_due(&mut self) {
        let now = self.shared.clock.wall();
        let mut due: Vec<(String, u32)> = std::mem::take(&mut self.recheck).into_iter().collect();
        let mut seen: HashSet<(String, u32)> = due.iter().cloned().collect();
        while let Some((t, _, _)) = self.timers.first() {
            if *t > now {
                break;
            }
            if let Some((_, j, i)) = self.timers.pop_first() {
                self.timer_at.remove(&(j.clone(), i));
                if seen.insert((j.clone(), i)) {
                    due.push((j, i));
                }
            }
        }
        // Items waiting for a slot of their job go first, longest waiting first.
        due.sort_by_key(|k| self.capped.get(k).copied().unwrap_or(u64::MAX));
        for (job, item) in due {
            if !self.owned.contains(&(job.clone(), item)) || !self.shared.may_act() {
                continue;
            }
            if let Err(e) = self.evaluate(&job, item).await {
                tracing::debug!(job, item, error = %e, "evaluating a fire failed; retrying");
                self.schedule_at(&job, item, now + chrono::Duration::milliseconds(200));
            }
        }
    }

    fn schedule_at(&mut self, job: &str, item: u32, at: DateTime<Utc>) {
        if let Some(old) = self.timer_at.insert((job.to_string(), item), at) {
            self.timers.remove(&(old, job.to_string(), item));
        }
        self.timers.insert((at, job.to_string(), item));
    }

    /// Look at one owned item: claim what is due, record what is skipped, and set
    /// its next timer.
    async fn evaluate(&mut self, job: &str, item: u32) -> crate::Result<()> {
        let Some((job_rev, spec)) = self.job(job) else {
            return Ok(());
        };
        if !spec.enabled {
            return Ok(());
        }
        let skew = self.shared.skew_status();
        if !skew.allows_firing() {
            tracing::warn!(job, item, %skew, "not firing");
            // Publish the verdict now: the leader moves our items elsewhere.
            self.shared.heartbeat_now.notify_one();
            let retry = self.shared.clock.wall() + chrono::Duration::milliseconds(500);
            self.schedule_at(job, item, retry);
            return Ok(());
        }
        let running_here = self.running_item(job, item);
        if !running_here && let Some(cap) = spec.max_concurrent {
            // At most `cap` runs of the job here: a fire beyond waits for one of
            // them to end (then its misfire policy judges it), behind the items
            // that were waiting before it.
            let key = (job.to_string(), item);
            let mine = self.capped.get(&key).copied();
            let ahead = self
                .capped
                .iter()
                .any(|((j, i), seq)| j == job && *i != item && mine.is_none_or(|m| *seq < m));
            if ahead || self.running_of_job(job) >= cap as usize {
                if mine.is_none() {
                    self.cap_seq += 1;
                    self.capped.insert(key, self.cap_seq);
                }
                return Ok(());
            }
            self.capped.remove(&key);
        }
        let now = self.shared.clock.wall();
        let anchor = self
            .shared
            .registry
            .get(&keys::anchor(job))
            .await?
            .and_then(|kv| parse_anchor(&kv.value))
            .unwrap_or(now);
        let (last, last_rev) = read_last(self.shared.registry.as_ref(), job, item, anchor).await?;
        if last.disabled_since.is_some() {
            // Enabled again: every fire of the disabled period is skipped, on record
            // with its reason (not missed: nothing runs for it).
            let d = match &spec.schedule {
                Schedule::Manual | Schedule::Delay(_) => misfire::Decision::default(),
                schedule => misfire::decide(
                    schedule,
                    anchor,
                    last.fire,
                    last.since,
                    now,
                    MisfirePolicy::Skip,
                    self.opts.misfire_threshold,
                ),
            };
            let mut cleared = LastFire {
                disabled_since: None,
                ..last.clone()
            };
            if let Some(range) = &d.skipped {
                cleared.fire = Some(range.last);
            }
            if self.advance_last(job, item, last_rev, &cleared).await?
                && let Some(range) = d.skipped
            {
                self.record_skip(&spec, item, &range, SkipReason::Disabled);
            }
            self.recheck.insert((job.to_string(), item));
            return Ok(());
        }
        let decision = match &spec.schedule {
            Schedule::Manual => return Ok(()),
            Schedule::Delay(d) => {
                let due = last.completed.map_or(last.since, |c| {
                    c + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX)
                });
                if due > now {
                    self.schedule_at(job, item, due);
                    return Ok(());
                }
                if last.fire.is_some_and(|f| f >= due) {
                    // Decided already and not completed yet: wait for completion
                    // (the run key's disappearance).
                    self.blocked.insert((job.to_string(), item));
                    return Ok(());
                }
                misfire::Decision {
                    run: vec![(due, ExecutionSource::Normal)],
                    skipped: None,
                    next: None,
                }
            }
            schedule => misfire::decide(
                schedule,
                anchor,
                last.fire,
                last.since,
                now,
                spec.misfire,
                self.opts.misfire_threshold,
            ),
        };
        if let Some(next) = decision.next {
            self.schedule_at(job, item, next);
        }
        let Some(&(fire_time, source)) = decision.run.first() else {
            if let Some(range) = decision.skipped {
                let new_last = LastFire {
                    fire: Some(range.last),
                    ..last.clone()
                };
                if self.advance_last(job, item, last_rev, &new_last).await? {
                    self.record_skip(&spec, item, &range, SkipReason::MisfirePolicy);
                } else {
                    self.recheck.insert((job.to_string(), item));
                }
            }
            return Ok(());
        };
        let new_last = LastFire {
            fire: Some(fire_time),
            ..last.clone()
        };
        let claim = if running_here {
            // Our own run of this item is still going: the fire finds it running.
            Claim::Busy
        } else {
            self.claim(
                &spec,
                job_rev,
                item,
                &fire_id(fire_time),
                fire_time,
                source,
                Some((last_rev, &new_last)),
            )
            .await?
        };
        match claim {
            Claim::Won(won) => {
                if let Some(range) = decision.skipped {
                    self.record_skip(&spec, item, &range, SkipReason::MisfirePolicy);
                }
                self.start_run(&spec, item, fire_time, source, 1, won);
            }
            Claim::Busy => {
                // Decided again when the run key that blocks it disappears.
                self.blocked.insert((job.to_string(), item));
                if spec.misfire == MisfirePolicy::Skip {
                    // A fire that finds its item still running is dropped, on record;
                    // so are the missed fires decided with it.
                    let last_decided = decision.run.last().map_or(fire_time, |(f, _)| *f);
                    let range = SkippedRange {
                        first: decision.skipped.as_ref().map_or(fire_time, |s| s.first),
                        last: last_decided,
                        count: decision.skipped.as_ref().map_or(0, |s| s.count)
                            + decision.run.len() as u64,
                        capped: false,
                    };
                    let skipped_last = LastFire {
                        fire: Some(last_decided),
                        ..last.clone()
                    };
                    if self
                        .advance_last(job, item, last_rev, &skipped_last)
                        .await?
                    {
                        self.record_skip(&spec, item, &range, SkipReason::StillRunning);
                    }
                }
                // fire_once and catch_up: `last` is left alone, so the missed fires
                // are decided again when the run key disappears.
            }
            Claim::Retry => {
                self.recheck.insert((job.to_string(), item));
            }
            Claim::Fenced => {
                if let Some((me, _)) = self.shared.current_session() {
                    self.shared
                        .fence_identity(&me, "a claim found the instance key gone");
                }
            }
        }
        Ok(())
    }

    /// The revision of the generation our view of ownership comes from; claims and
    /// takeovers compare it, so nobody acts on a stale view.
    fn generation_revision(&self) -> i64 {
        self.shared
            .mirrors()
            .generation
            .get(&keys::generation())
            .map_or(0, |kv| kv.mod_revision)
    }

    /// Compare-and-set the item's `last` state.
    async fn advance_last(
        &self,
        job: &str,
        item: u32,
        last_rev: i64,
        new_last: &LastFire,
    ) -> crate::Result<bool> {
        let Some((me, reg_rev)) = self.shared.current_session() else {
            return Ok(false);
        };
        let key = keys::last(job, item);
        let value = encode(new_last);
        let sent = self
            .shared
            .registry
            .txn(
                when_registered(Txn::new(), &me, reg_rev)
                    .when(Compare::mod_revision_is(key.clone(), last_rev))
                    .and_then(TxnOp::put(key.clone(), value.clone())),
            )
            .await;
        match sent {
            Ok(resp) => Ok(resp.succeeded),
            Err(RegistryError::Unavailable(e)) => {
                // The answer was lost; the write may have committed. If `last` now
                // holds what we wrote, it did: say so, or the caller would not
                // record the fires it skipped, and the next look would find them
                // decided already (found by the ambiguous-commit fault test).
                tracing::warn!(job, item, error = %e, "answer lost while advancing the last fire; checking whether it committed");
                for _ in 0..50 {
                    match self.shared.registry.get(&key).await {
                        Ok(kv) => {
                            return Ok(kv.is_some_and(|kv| {
                                kv.mod_revision > last_rev && kv.value == value
                            }));
                        }
                        Err(RegistryError::Unavailable(_)) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if self.shared.current_session().is_none_or(|(id, _)| id != me) {
                        break;
                    }
                }
                Err(RegistryError::Unavailable(e).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The lease that this hour's fire keys are bound to.
    async fn horizon_lease(&mut self) -> crate::Result<LeaseId> {
        let secs = i64::try_from(self.opts.dedup_horizon.as_secs().max(1)).unwrap_or(3600);
        let bucket = self.shared.clock.wall().timestamp() / secs;
        if let Some((b, lease)) = self.horizon
            && b == bucket
        {
            return Ok(lease);
        }
        let id = horizon_lease(&self.shared, self.opts.dedup_horizon).await?;
        self.horizon = Some((bucket, id));
        Ok(id)
    }

    /// Claim one fire of one item in one transaction. With `last`, also compare
    /// and advance the item's last-fire state (scheduled fires); without, it is a
    /// manual fire that leaves `last` alone.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &mut self,
        spec: &JobSpec,
        job_rev: i64,
        item: u32,
        fire: &str,
        fire_time: DateTime<Utc>,
        source: ExecutionSource,
        last: Option<(i64, &LastFire)>,
    ) -> crate::Result<Claim> {
        let Some((me, reg_rev)) = self.shared.current_session() else {
            return Ok(Claim::Fenced);
        };
        let job = spec.name.as_str();
        let gen_rev = self.generation_revision();
        let horizon = self.horizon_lease().await?;
        let now = self.shared.clock.wall();
        let execution = new_execution_id_at(now);
        let run = RunRecord {
            holder: me.clone(),
            holder_rev: reg_rev,
            fire: fire.to_string(),
            fire_time,
            execution: execution.clone(),
            attempt: 1,
            source,
            total: spec.shards,
            claimed_at: now,
        };
        let run_key = keys::run(job, item);
        let fire_key = keys::fire(job, item, fire);
        let mut txn = when_registered(Txn::new(), &me, reg_rev)
            .when(Compare::mod_revision_is(keys::generation(), gen_rev))
            .when(Compare::mod_revision_is(keys::job(job), job_rev))
            .and_then(TxnOp::put_with_lease(
                fire_key.clone(),
                encode(&FireClaim {
                    holder: me.clone(),
                    execution: execution.clone(),
                }),
                horizon,
            ))
            .and_then(TxnOp::put(run_key.clone(), encode(&run)))
            .or_else(TxnOp::get(run_key.clone()))
            .or_else(TxnOp::get(keys::instance(&me)))
            .or_else(TxnOp::get(fire_key.clone()));
        if !failpoints::removed(failpoints::Mechanism::RunKeyCheck) {
            txn = txn.when(Compare::absent(run_key.clone()));
        }
        if !failpoints::removed(failpoints::Mechanism::FireKeyCheck) {
            txn = txn.when(Compare::absent(fire_key.clone()));
        }
        if let Some((last_rev, new_last)) = last
            && !failpoints::removed(failpoints::Mechanism::LastCompare)
        {
            let last_key = keys::last(job, item);
            txn = txn
                .when(Compare::mod_revision_is(last_key.clone(), last_rev))
                .and_then(TxnOp::put(last_key, encode(new_last)));
        }
        let resp = match self.shared.registry.txn(txn).await {
            Ok(r) => r,
            Err(RegistryError::Unavailable(e)) => {
                // The answer was lost; the claim may have committed. Adopt it if so.
                tracing::warn!(job, item, error = %e, "claim answer lost; checking whether it committed");
                return self.adopt(job, item, fire, &me).await;
            }
            Err(e) => return Err(e.into()),
        };
        if resp.succeeded {
            return Ok(Claim::Won(Won {
                token: resp.revision,
                execution,
                holder: me,
            }));
        }
        if first_get(&resp.responses, 1).is_none_or(|kv| kv.create_revision != reg_rev) {
            return Ok(Claim::Fenced);
        }
        if first_get(&resp.responses, 0).is_some() {
            return Ok(Claim::Busy);
        }
        Ok(Claim::Retry)
    }

    /// After a lost answer: is the run key ours for this fire?
    /// A failover entry whose run key is gone or was replaced (the holder
    /// released it after all, racing the leader, and a later fire claimed the
    /// item) can never be taken over: delete it, so that it does not block the
    /// item's later failovers (found by the simulation: the item stayed stuck).
    async fn drop_stale_failover(
        &self,
        job: &str,
        item: u32,
        entry: &FailoverEntry,
        entry_rev: i64,
    ) -> crate::Result<()> {
        let run_key = keys::run(job, item);
        let current = self
            .shared
            .registry
            .get(&run_key)
            .await?
            .map(|kv| kv.mod_revision);
        if current == Some(entry.run_revision) {
            return Ok(());
        }
        // The run key must still be as we saw it.
        let unchanged = match current {
            Some(rev) => Compare::mod_revision_is(run_key, rev),
            None => Compare::absent(run_key),
        };
        let fo_key = keys::failover(job, item);
        let resp = self
            .shared
            .registry
            .txn(
                Txn::new()
                    .when(Compare::mod_revision_is(fo_key.clone(), entry_rev))
                    .when(unchanged)
                    .and_then(TxnOp::delete(fo_key)),
            )
            .await?;
        if resp.succeeded {
            tracing::info!(job, item, fire = %entry.run.fire, "dropped a stale failover entry (its run key was released or replaced)");
        }
        Ok(())
    }

    /// After a takeover whose answer was lost: the run key's revision (the
    /// token) if it holds our takeover of execution `execution`.
    async fn adopt_takeover(&self, job: &str, item: u32, execution: &str, me: &str) -> Option<i64> {
        for _ in 0..50 {
            match self.shared.registry.get(&keys::run(job, item)).await {
                Ok(Some(kv)) => {
                    let run: RunRecord = decode(&kv.key, &kv.value).ok()?;
                    return (run.holder == me && run.execution == execution)
                        .then_some(kv.mod_revision);
                }
                Ok(None) => return None,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            if self.shared.current_session().is_none_or(|(id, _)| id != me) {
                return None;
            }
        }
        None
    }

    async fn adopt(&self, job: &str, item: u32, fire: &str, me: &str) -> crate::Result<Claim> {
        for _ in 0..50 {
            match self.shared.registry.get(&keys::run(job, item)).await {
                Ok(Some(kv)) => {
                    let run: RunRecord = decode(&kv.key, &kv.value)?;
                    if run.holder == me && run.fire == fire {
                        tracing::info!(job, item, fire, "adopted a claim whose answer was lost");
                        return Ok(Claim::Won(Won {
                            token: kv.mod_revision,
                            execution: run.execution,
                            holder: run.holder,
                        }));
                    }
                    return Ok(Claim::Busy);
                }
                Ok(None) => return Ok(Claim::Retry),
                Err(RegistryError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Claim::Retry)
    }

    fn record_skip(&self, spec: &JobSpec, item: u32, range: &SkippedRange, reason: SkipReason) {
        self.record_skip_of(spec, item, range, reason, ExecutionSource::Normal);
    }

    /// A SKIPPED record of fires of `source` (a manual trigger that found its
    /// item running is MANUAL, so that people see their trigger was refused).
    fn record_skip_of(
        &self,
        spec: &JobSpec,
        item: u32,
        range: &SkippedRange,
        reason: SkipReason,
        source: ExecutionSource,
    ) {
        let Some((me, _)) = self.shared.current_session() else {
            return;
        };
        let now = self.shared.clock.wall();
        tracing::info!(job = %spec.name, item, count = range.count, %reason, "fires skipped");
        self.history.record(HistoryEvent::Record(ExecutionRecord {
            id: new_execution_id_at(now),
            job: spec.name.as_str().to_string(),
            item,
            total: spec.shards,
            fire_time: range.first,
            fire_time_end: (range.count > 1).then_some(range.last),
            skipped_count: Some(u32::try_from(range.count).unwrap_or(u32::MAX)),
            started_at: now,
            ended_at: Some(now),
            instance: me,
            host: crate::instance::host_name(),
            source,
            status: ExecutionStatus::Skipped,
            skip_reason: Some(reason),
            attempt: 0,
            token: 0,
            cause: None,
            output: None,
        }));
    }

    /// Start the execution of a claimed fire in its own task.
    #[allow(clippy::too_many_arguments)]
    fn start_run(
        &mut self,
        spec: &JobSpec,
        item: u32,
        fire_time: DateTime<Utc>,
        source: ExecutionSource,
        attempt: u32,
        won: Won,
    ) {
        let Won {
            token,
            execution,
            holder: me,
        } = won;
        // Only under the identity that won: an answer that arrives after that
        // identity was fenced (a delayed or adopted one) would otherwise start the
        // run under the new identity, while the leader fails the dead holder's run
        // key over to the item's owner, which may be this instance again: the fire
        // would run twice, overlapping (I1; found by the simulation). The run key
        // is left for that failover.
        if self
            .shared
            .current_session()
            .is_none_or(|(current, _)| current != me)
        {
            tracing::info!(job = %spec.name, item, holder = %me, token, "won under an identity that is no longer ours; the run is left for failover");
            return;
        }
        let Some(handler) = self.handlers.for_kind(&spec.kind) else {
            return;
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        // A run started while the instance drains winds down from the start.
        let (wind_down_tx, wind_down_rx) = watch::channel(self.shared.draining());
        let reason = Arc::new(Mutex::new(None));
        lock(&self.running).insert(
            execution.clone(),
            Running {
                job: spec.name.as_str().to_string(),
                item,
                identity: me.clone(),
                cancel: cancel_tx,
                wind_down: wind_down_tx,
                reason: reason.clone(),
                task: None,
            },
        );
        let sharding = ShardingContext {
            job: spec.name.as_str().to_string(),
            item,
            total: spec.shards,
            item_param: spec.shard_params.get(&item).cloned().unwrap_or_default(),
            param: spec.param.clone(),
            fire_time,
            execution_id: execution.clone(),
            instance: me.clone(),
            token,
            source,
            attempt,
        };
        let task = RunTask {
            shared: self.shared.clone(),
            history: self.history.clone(),
            running: self.running.clone(),
            done: self.done_tx.clone(),
            timeout: spec.timeout,
            handlers: self.handlers.clone(),
            dedup_horizon: self.opts.dedup_horizon,
        };
        let spec = Arc::new(spec.clone());
        let signals = Signals {
            cancel: cancel_rx,
            wind_down: wind_down_rx,
            reason,
        };
        let handle = tokio::spawn(task.run(handler, spec, sharding, signals));
        if let Some(r) = lock(&self.running).get_mut(&execution) {
            r.task = Some(handle.abort_handle());
        }
    }

    /// Stop every run task at once, recording nothing (a crash).
    fn abort_all(&self) {
        abort_all(&self.running);
    }

    /// Self-fence: cancel every run of an identity whose lease is untrusted.
    fn fence_runs(&self, identity: &str) {
        fence_runs(&self.running, identity);
    }

    /// Take over failed-over runs of items we own.
    async fn process_failovers(&mut self) {
        let entries: Vec<KeyValue> = self
            .shared
            .mirrors()
            .failovers
            .read(|m| m.values().cloned().collect());
        for kv in entries {
            let Some((job, item)) = keys::job_item(&kv.key, keys::FAILOVERS) else {
                continue;
            };
            if !self.owned.contains(&(job.clone(), item)) {
                continue;
            }
            let Ok(entry) = decode::<FailoverEntry>(&kv.key, &kv.value) else {
                continue;
            };
            if let Err(e) = self.take_over(&job, item, &entry, kv.mod_revision).await {
                tracing::debug!(job, item, error = %e, "failover takeover failed");
            }
        }
    }

    async fn take_over(
        &mut self,
        job: &str,
        item: u32,
        entry: &FailoverEntry,
        entry_rev: i64,
    ) -> crate::Result<()> {
        let Some((me, reg_rev)) = self.shared.current_session() else {
            return Ok(());
        };
        let Some((_, spec)) = self.job(job) else {
            return Ok(());
        };
        let gen_rev = self.generation_revision();
        let now = self.shared.clock.wall();
        let execution = new_execution_id_at(now);
        let run = RunRecord {
            holder: me.clone(),
            holder_rev: reg_rev,
            execution: execution.clone(),
            source: ExecutionSource::Failover,
            claimed_at: now,
            ..entry.run.clone()
        };
        let fo_key = keys::failover(job, item);
        let run_key = keys::run(job, item);
        let sent = self
            .shared
            .registry
            .txn(
                when_registered(Txn::new(), &me, reg_rev)
                    .when(Compare::mod_revision_is(keys::generation(), gen_rev))
                    .when(Compare::mod_revision_is(fo_key.clone(), entry_rev))
                    .when(Compare::mod_revision_is(
                        run_key.clone(),
                        entry.run_revision,
                    ))
                    .and_then(TxnOp::put(run_key, encode(&run)))
                    .and_then(TxnOp::delete(fo_key)),
            )
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // The takeover may have committed with its answer lost: the
                // failover entry is gone then, and nobody else would run the fire.
                // Adopt it if the run key is ours.
                let Some(token) = self.adopt_takeover(job, item, &execution, &me).await else {
                    return Err(e.into());
                };
                tracing::info!(job, item, fire = %run.fire, token, "adopted a takeover whose answer was lost");
                shardcron_registry::TxnResponse {
                    succeeded: true,
                    revision: token,
                    responses: Vec::new(),
                }
            }
        };
        if resp.succeeded {
            tracing::info!(job, item, fire = %run.fire, token = resp.revision, "took over a failed-over run");
            self.start_run(
                &spec,
                item,
                run.fire_time,
                ExecutionSource::Failover,
                run.attempt,
                Won {
                    token: resp.revision,
                    execution,
                    holder: me,
                },
            );
        }
        if !resp.succeeded {
            self.drop_stale_failover(job, item, entry, entry_rev)
                .await?;
        }
        Ok(())
    }

    /// Manual triggers and cancel requests.
    async fn process_requests(&mut self) {
        let reqs: Vec<(Vec<u8>, KeyValue)> = self
            .shared
            .mirrors()
            .requests
            .read(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        for (k, kv) in reqs {
            match Key::parse(&k) {
                Key::TriggerRequest(id) if !self.handled_triggers.contains(&id) => {
                    let Ok(req) = decode::<TriggerRequest>(&k, &kv.value) else {
                        continue;
                    };
                    if self.trigger(&req).await {
                        self.handled_triggers.insert(id);
                    }
                }
                Key::CancelRequest(execution) => {
                    let Ok(req) = decode::<CancelRequest>(&k, &kv.value) else {
                        continue;
                    };
                    let found = {
                        let running = lock(&self.running);
                        running.get(&execution).map(|r| {
                            *lock(&r.reason) = Some((
                                ExecutionStatus::Cancelled,
                                format!("cancel requested by {}", req.requested_by),
                            ));
                            let _ = r.cancel.send(true);
                        })
                    };
                    if found.is_some() {
                        let _ = self.shared.registry.delete(&k).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// Claim the manual fire of every owned item the request names. Returns whether
    /// the request is done with (on this instance).
    async fn trigger(&mut self, req: &TriggerRequest) -> bool {
        let Some((job_rev, spec)) = self.job(&req.job) else {
            // The request can arrive before the job does (separate watches): keep
            // it pending for a while; a request for a deleted job is dropped.
            let age = self.shared.clock.wall() - req.requested_at;
            return age > chrono::Duration::minutes(5);
        };
        let items: Vec<u32> = if req.items.is_empty() {
            (0..spec.shards).collect()
        } else {
            req.items.clone()
        };
        let fire = format!("m{}", req.id);
        let mut all_done = true;
        for item in items {
            if !self.owned.contains(&(req.job.clone(), item)) {
                continue;
            }
            // Processed again after an ownership change: a fire claimed already
            // (by us or a previous owner) is done with.
            match self
                .shared
                .registry
                .get(&keys::fire(&req.job, item, &fire))
                .await
            {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => {
                    all_done = false;
                    continue;
                }
            }
            match self
                .claim(
                    &spec,
                    job_rev,
                    item,
                    &fire,
                    req.requested_at,
                    ExecutionSource::Manual,
                    None,
                )
                .await
            {
                Ok(Claim::Won(won)) => self.start_run(
                    &spec,
                    item,
                    req.requested_at,
                    ExecutionSource::Manual,
                    1,
                    won,
                ),
                Ok(Claim::Busy) => {
                    let range = SkippedRange {
                        first: req.requested_at,
                        last: req.requested_at,
                        count: 1,
                        capped: false,
                    };
                    self.record_skip_of(
                        &spec,
                        item,
                        &range,
                        SkipReason::StillRunning,
                        ExecutionSource::Manual,
                    );
                }
                Ok(Claim::Retry) => {
                    // Either claimed already (fire key exists) or a stale view.
                    let claimed = self
                        .shared
                        .registry
                        .get(&keys::fire(&req.job, item, &fire))
                        .await
                        .ok()
                        .flatten()
                        .is_some();
                    all_done &= claimed;
                }
                Ok(Claim::Fenced) | Err(_) => all_done = false,
            }
        }
        all_done
    }
}

/// Stop every run task at once, recording nothing (a crash: the instance was
/// dropped). Also called by the instance's drop itself, so that runs stop even
/// while the trigger loop is blocked in a registry call.
pub(crate) fn abort_all(running: &Mutex<HashMap<String, Running>>) {
    let mut running = lock(running);
    for r in running.values() {
        if let Some(t) = &r.task {
            t.abort();
        }
    }
    running.clear();
}

/// Self-fence: cancel every run of `identity`. Called by the fence itself (so
/// that a trigger loop blocked in a registry call cannot delay it) and again by
/// the trigger loop when it sees the identity change (harmless: idempotent).
pub(crate) fn fence_runs(running: &Mutex<HashMap<String, Running>>, identity: &str) {
    for r in lock(running).values().filter(|r| r.identity == identity) {
        *lock(&r.reason) = Some((
            ExecutionStatus::Cancelled,
            "the instance fenced itself (its lease could no longer be trusted)".into(),
        ));
        let _ = r.cancel.send(true);
    }
}

/// Cancel the runs of a draining instance that did not finish within the grace
/// period; they keep their run keys and are failed over.
pub(crate) fn cancel_for_shutdown(running: &Mutex<HashMap<String, Running>>) {
    for r in lock(running).values() {
        *lock(&r.reason) = Some((
            ExecutionStatus::Cancelled,
            "the instance shut down before the run finished; it will be failed over".into(),
        ));
        let _ = r.cancel.send(true);
    }
}

/// Ask every run to wind down (the instance is draining).
pub(crate) fn wind_down_all(running: &Mutex<HashMap<String, Running>>) {
    for r in lock(running).values() {
        let _ = r.wind_down.send(true);
    }
}

/// One execution: run the handler, record the outcome, release the run key.
struct RunTask {
    shared: Arc<Shared>,
    history: Arc<dyn HistorySink>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    done: mpsc::UnboundedSender<Done>,
    timeout: Option<Duration>,
    handlers: Arc<Handlers>,
    dedup_horizon: Duration,
}

/// What a run task listens to.
struct Signals {
    cancel: watch::Receiver<bool>,
    wind_down: watch::Receiver<bool>,
    reason: Arc<Mutex<Option<(ExecutionStatus, String)>>>,
}

impl RunTask {
    /// Run a claimed fire: its attempts (the first, then retries with backoff
    /// while they fail or time out), then release the item.
    async fn run(
        self,
        handler: Arc<dyn crate::execute::SimpleJob>,
        spec: Arc<JobSpec>,
        ctx: ShardingContext,
        signals: Signals,
    ) {
        let cancel = signals.cancel.clone();
        let started = self.shared.clock.wall();
        failpoints::hit("after_claim", &ctx.instance).await;
        let claimed = ctx.clone();
        let mut ctx = ctx;
        let (status, fenced, end) = loop {
            let (status, fenced, end) = self.attempt(&handler, &spec, &ctx, &signals).await;
            let retry = matches!(status, ExecutionStatus::Failed | ExecutionStatus::TimedOut)
                && ctx.attempt <= spec.retries.max
                && !fenced
                && !*cancel.borrow()
                && !self.shared.draining();
            if !retry {
                break (status, fenced, end);
            }
            let delay = retry_delay(&spec.retries, ctx.attempt);
            tracing::info!(job = %ctx.job, item = ctx.item, attempt = ctx.attempt, ?delay, "retrying after a failed attempt");
            let mut c = cancel.clone();
            let cancelled = tokio::select! {
                () = tokio::time::sleep(delay) => false,
                () = wait_cancelled(&mut c) => true,
            };
            if cancelled || self.shared.draining() {
                break (status, fenced, end);
            }
            // The next attempt is a new execution (its own history row) of the same
            // claim: same fire, same run key, same token.
            let next = new_execution_id_at(self.shared.clock.wall());
            {
                let mut running = lock(&self.running);
                if let Some(r) = running.remove(&ctx.execution_id) {
                    running.insert(next.clone(), r);
                }
            }
            ctx.execution_id = next;
            ctx.attempt += 1;
            ctx.source = ExecutionSource::Retry;
        };
        failpoints::hit("before_release", &ctx.instance).await;
        // A run stopped by self-fencing keeps its run key: the leader fails the fire
        // over once our old identity is gone. Any other ending releases it.
        let keep_for_failover =
            status == ExecutionStatus::Cancelled && (fenced || self.shared.draining());
        if !keep_for_failover {
            self.release_until_done(&claimed, end).await;
        }
        lock(&self.running).remove(&ctx.execution_id);
        if !keep_for_failover
            && !fenced
            && spec
                .listeners
                .iter()
                .any(|l| l.on == shardcron_core::job::ListenerWhen::AfterAll)
        {
            tokio::spawn(
                crate::listeners::FinishedItem {
                    shared: self.shared.clone(),
                    handlers: self.handlers.clone(),
                    spec: spec.clone(),
                    fire_time: ctx.fire_time,
                    started,
                    item: ctx.item,
                    status,
                    instance: ctx.instance.clone(),
                    dedup_horizon: self.dedup_horizon,
                }
                .run(),
            );
        }
        let _ = self.done.send(Done {
            job: ctx.job,
            item: ctx.item,
        });
    }

    /// One attempt: record it RUNNING, run the handler under the timeout and the
    /// cancel signal, record its outcome. Returns the outcome, whether our identity
    /// was fenced meanwhile, and the end time.
    async fn attempt(
        &self,
        handler: &Arc<dyn crate::execute::SimpleJob>,
        spec: &Arc<JobSpec>,
        ctx: &ShardingContext,
        signals: &Signals,
    ) -> (ExecutionStatus, bool, DateTime<Utc>) {
        let cancel = signals.cancel.clone();
        let reason = &signals.reason;
        let start = self.shared.clock.wall();
        self.history.record(HistoryEvent::Record(ExecutionRecord {
            id: ctx.execution_id.clone(),
            job: ctx.job.clone(),
            item: ctx.item,
            total: ctx.total,
            fire_time: ctx.fire_time,
            fire_time_end: None,
            skipped_count: None,
            started_at: start,
            ended_at: None,
            instance: ctx.instance.clone(),
            host: crate::instance::host_name(),
            source: ctx.source,
            status: ExecutionStatus::Running,
            skip_reason: None,
            attempt: ctx.attempt,
            token: ctx.token,
            cause: None,
            output: None,
        }));
        let job_ctx = JobContext::new(ctx.clone(), spec.clone(), cancel.clone())
            .with_wind_down(signals.wind_down.clone());
        let listener_ctx = job_ctx.clone();
        let cancel_flag = cancel.clone();
        let cancelled = {
            let c = JobContext::new(ctx.clone(), spec.clone(), cancel);
            async move { c.cancelled().await }
        };
        let timeout = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending::<()>().await,
            }
        };
        let handlers = &self.handlers;
        let handler_run = async move {
            if !spec.listeners.is_empty() {
                crate::listeners::before(handlers, &job_ctx).await?;
            }
            handler.execute(job_ctx).await
        };
        tokio::pin!(handler_run);
        let (status, cause, output) = tokio::select! {
            r = &mut handler_run => match r {
                Ok(out) => (ExecutionStatus::Succeeded, None, out),
                Err(e) => (ExecutionStatus::Failed, Some(e.0), None),
            },
            () = cancelled => {
                // Cooperative first: the handler sees the signal and may return
                // within the grace; after it, its future is dropped.
                let _ = tokio::time::timeout(CANCEL_GRACE, &mut handler_run).await;
                let (s, why) = lock(reason)
                    .clone()
                    .unwrap_or((ExecutionStatus::Cancelled, "cancelled".into()));
                (s, Some(why), None)
            }
            () = timeout => (
                ExecutionStatus::TimedOut,
                Some(format!("ran longer than its timeout of {:?}", self.timeout.unwrap_or_default())),
                None,
            ),
        };
        // A handler that gave up because it was asked to stop ended by cancellation,
        // whatever it returned.
        let (status, cause, output) =
            if *cancel_flag.borrow() && status != ExecutionStatus::Succeeded {
                let (s, why) = lock(reason)
                    .clone()
                    .unwrap_or((ExecutionStatus::Cancelled, "cancelled".into()));
                (s, Some(why), output)
            } else {
                (status, cause, output)
            };
        let fenced = self
            .shared
            .current_session()
            .is_none_or(|(id, _)| id != ctx.instance);
        let end = self.shared.clock.wall();
        let summary = format!(
            "job={} item={} fire={} source={} attempt={} token={} status={} took={}ms{}",
            ctx.job,
            ctx.item,
            ctx.fire_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ctx.source,
            ctx.attempt,
            ctx.token,
            status,
            (end - start).num_milliseconds(),
            cause
                .as_deref()
                .map(|c| format!(" cause={:?}", c.lines().next().unwrap_or_default()))
                .unwrap_or_default()
        );
        if status == ExecutionStatus::Succeeded {
            tracing::info!("execution finished: {summary}");
        } else {
            tracing::warn!("execution finished: {summary}");
        }
        let outcome = crate::execute::Outcome {
            status,
            cause: cause.clone(),
        };
        self.history.record(HistoryEvent::Update(ExecutionUpdate {
            id: ctx.execution_id.clone(),
            status,
            at: end,
            ended_at: Some(end),
            cause,
            output,
            message: None,
        }));
        if !spec.listeners.is_empty() && !fenced {
            crate::listeners::after(&self.handlers, &listener_ctx, &outcome).await;
        }
        (status, fenced, end)
    }

    /// Release, retrying failures (an unreachable registry, a lost answer) until
    /// it is done or the instance stops. A run key left behind by a live holder
    /// would block its item for good (failover only takes the runs of dead
    /// holders), and one left by a fenced holder would make failover run a fire
    /// that completed (found by the etcd-down fault test). Releasing after a
    /// fence is safe: the release compares the run key with our token, so it
    /// does nothing once another instance took the run over. Retries wake at once
    /// when the instance registers again (the registry is back), to get in before
    /// the leader's lock delay runs out.
    async fn release_until_done(&self, ctx: &ShardingContext, completed: DateTime<Utc>) {
        let mut delay = Duration::from_millis(50);
        let mut sessions = self.shared.session_changes();
        loop {
            match self.release(ctx, completed).await {
                Ok(()) => return,
                Err(e) => {
                    if self.shared.is_stopping() {
                        tracing::warn!(job = %ctx.job, item = ctx.item, error = %e, "release failed; the run key is left for failover");
                        return;
                    }
                    tracing::debug!(job = %ctx.job, item = ctx.item, error = %e, ?delay, "release failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = sessions.changed() => {}
                    }
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    /// Delete the run key if it is still ours (its revision is our token) and record
    /// the completion time in `last`.
    async fn release(&self, ctx: &ShardingContext, completed: DateTime<Utc>) -> crate::Result<()> {
        let run_key = keys::run(&ctx.job, ctx.item);
        let last_key = keys::last(&ctx.job, ctx.item);
        for _ in 0..20 {
            let (mut state, last_rev) =
                read_last(self.shared.registry.as_ref(), &ctx.job, ctx.item, completed).await?;
            if ctx.source != ExecutionSource::Manual {
                state.completed = Some(completed);
            }
            let resp = self
                .shared
                .registry
                .txn(
                    Txn::new()
                        .when(Compare::mod_revision_is(run_key.clone(), ctx.token))
                        .when(Compare::mod_revision_is(last_key.clone(), last_rev))
                        .and_then(TxnOp::delete(run_key.clone()))
                        .and_then(TxnOp::put(last_key.clone(), encode(&state)))
                        .or_else(TxnOp::get(run_key.clone())),
                )
                .await?;
            if resp.succeeded {
                return Ok(());
            }
            if first_get(&resp.responses, 0).is_none_or(|kv| kv.mod_revision != ctx.token) {
                // Not ours any more (failed over): leave it alone.
                return Ok(());
            }
        }
        Err(crate::Error::Conflict(
            "the item's last-fire state kept changing".into(),
        ))
    }
}

/// Leader duty: fail over runs whose holder is gone. A run key whose holder's
/// instance key has been absent for the lock delay becomes a failover entry (or,
/// with `failover = false`, is cleared); its execution is recorded LOST.
pub(crate) async fn fail_over_dead_runs(
    shared: &Arc<Shared>,
    token: i64,
    history: Option<&Arc<dyn HistorySink>>,
    lock_delay: Duration,
    dead_since: &mut HashMap<Vec<u8>, shardcron_core::MonoTime>,
) -> crate::Result<()> {
    let m = shared.mirrors();
    let runs: Vec<KeyValue> = m.runs.read(|r| r.values().cloned().collect());
    let now = shared.clock.mono();
    let mut still_dead = HashSet::new();
    for kv in runs {
        let Ok(run) = decode::<RunRecord>(&kv.key, &kv.value) else {
            continue;
        };
        let holder_live = m
            .instances
            .get(&keys::instance(&run.holder))
            .is_some_and(|i| i.create_revision == run.holder_rev);
        if holder_live {
            continue;
        }
        let Some((job, item)) = keys::job_item(&kv.key, keys::RUNS) else {
            continue;
        };
        if m.failovers.get(&keys::failover(&job, item)).is_some() {
            continue;
        }
        still_dead.insert(kv.key.clone());
        let since = *dead_since.entry(kv.key.clone()).or_insert(now);
        if now.duration_since(since) < lock_delay {
            continue;
        }
        let failover = m
            .jobs
            .get(&keys::job(&job))
            .and_then(|j| decode_job(&j.key, &j.value).ok())
            .is_none_or(|spec| spec.failover);
        let mut txn = Txn::new()
            .when(Compare::create_revision_is(keys::leader(), token))
            .when(Compare::mod_revision_is(kv.key.clone(), kv.mod_revision))
            .when(Compare::create_revision_is(keys::instance(&run.holder), 0));
        txn = if failover {
            txn.and_then(TxnOp::put(
                keys::failover(&job, item),
                encode(&FailoverEntry {
                    run: run.clone(),
                    run_revision: kv.mod_revision,
                    at: shared.clock.wall(),
                }),
            ))
        } else {
            txn.and_then(TxnOp::delete(kv.key.clone()))
        };
        let resp = shared.registry.txn(txn).await?;
        if resp.succeeded {
            let at = shared.clock.wall();
            let cause = format!(
                "its holder {} lost its lease{}",
                run.holder,
                if failover {
                    "; failed over"
                } else {
                    "; failover is off"
                }
            );
            tracing::warn!(job, item, holder = %run.holder, failover, "run of a dead holder");
            // A full record from the run key: the holder's own records may have died
            // with it (kill -9 loses the last flush), and the run is still accounted
            // for. A real outcome the holder did record wins over LOST in the store.
            let Some(history) = history else {
                dead_since.remove(&kv.key);
                continue;
            };
            history.record(HistoryEvent::Record(ExecutionRecord {
                id: run.execution.clone(),
                job: job.clone(),
                item,
                total: run.total,
                fire_time: run.fire_time,
                fire_time_end: None,
                skipped_count: None,
                started_at: run.claimed_at,
                ended_at: Some(at),
                instance: run.holder.clone(),
                host: String::new(),
                source: run.source,
                status: ExecutionStatus::Lost,
                skip_reason: None,
                attempt: run.attempt,
                token: kv.mod_revision,
                cause: Some(cause),
                output: None,
            }));
            dead_since.remove(&kv.key);
        }
    }
    dead_since.retain(|k, _| still_dead.contains(k));
    Ok(())
}

/// Leader duty: fires of a job that no live instance may run are recorded SKIPPED
/// (`no_eligible_instance`) as they fall due, and the items' `last` advanced (with
/// the leader token compared), so that an instance that becomes eligible later
/// does not run them as missed.
pub(crate) async fn skip_unplaced(
    shared: &Arc<Shared>,
    token: i64,
    history: &Arc<dyn HistorySink>,
    spec: &JobSpec,
) -> crate::Result<()> {
    if !spec.enabled || matches!(spec.schedule, Schedule::Manual | Schedule::Delay(_)) {
        return Ok(());
    }
    let job = spec.name.as_str();
    let now = shared.clock.wall();
    let anchor = shared
        .registry
        .get(&keys::anchor(job))
        .await?
        .and_then(|kv| parse_anchor(&kv.value))
        .unwrap_or(now);
    for item in 0..spec.shards {
        let key = keys::last(job, item);
        let (last, rev) = read_last(shared.registry.as_ref(), job, item, anchor).await?;
        // Every fire due now is skipped: nobody may run it.
        let d = misfire::decide(
            &spec.schedule,
            anchor,
            last.fire,
            last.since,
            now,
            MisfirePolicy::Skip,
            Duration::ZERO,
        );
        let Some(range) = d.skipped else { continue };
        let advanced = LastFire {
            fire: Some(range.last),
            ..last
        };
        let resp = shared
            .registry
            .txn(
                Txn::new()
                    .when(Compare::create_revision_is(keys::leader(), token))
                    .when(Compare::mod_revision_is(key.clone(), rev))
                    .and_then(TxnOp::put(key, encode(&advanced))),
            )
            .await?;
        if resp.succeeded {
            history.record(HistoryEvent::Record(ExecutionRecord {
                id: new_execution_id_at(now),
                job: job.to_string(),
                item,
                total: spec.shards,
                fire_time: range.first,
                fire_time_end: (range.count > 1).then_some(range.last),
                skipped_count: Some(u32::try_from(range.count).unwrap_or(u32::MAX)),
                started_at: now,
                ended_at: Some(now),
                instance: String::new(),
                host: String::new(),
                source: ExecutionSource::Normal,
                status: ExecutionStatus::Skipped,
                skip_reason: Some(SkipReason::NoEligibleInstance),
                attempt: 0,
                token: 0,
                cause: Some("no live instance matches the job's labels and kind".into()),
                output: None,
            }));
        }
    }
    Ok(())
}

/// Compare the instance's registration (its key's create revision): a claim,
/// takeover or release must prove that its instance is still registered.
fn when_registered(txn: Txn, me: &str, reg_rev: i64) -> Txn {
    if failpoints::removed(failpoints::Mechanism::RegistrationCompare) {
        return txn;
    }
    txn.when(Compare::create_revision_is(keys::instance(me), reg_rev))
}

/// The delay before retry number `attempt` (1 = the first retry): `initial`
/// doubled per attempt, at most `max_delay`, with "equal jitter" (a random point in
/// the upper half), so that items failing together do not retry in lockstep.
fn retry_delay(policy: &shardcron_core::job::RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(policy.max_delay).max(Duration::from_millis(1));
    let half = d / 2;
    half + d.mul_f64(rand::random::<f64>() * 0.5)
}

/// Resolves when `rx` turns true (or its sender is gone).
async fn wait_cancelled(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
