//! Alerts from an instance's execution history: [`AlertSink`].
//!
//! An [`AlertSink`] sits between an instance and its history writer (it is the
//! [`HistorySink`] of the instance's `Runner`). It forwards every event to the
//! writer unchanged, and turns the events that call for an alert into
//! [`Alert`]s for an [`AlertSender`]:
//!
//! | event | alert |
//! |---|---|
//! | a FAILED, TIMED_OUT or LOST status (a record, or an update of a run it saw start) | `FAILED`, `TIMED_OUT`, `LOST` |
//! | a SKIPPED record (not for a disabled job or item) | `MISFIRE` |
//! | a RUNNING record started late by the misfire policy | `MISFIRE` |
//! | a RUNNING record started by failover | `FAILOVER` |
//!
//! A run's outcome arrives as an update that carries only the new status and its
//! cause, so the sink remembers each RUNNING record (by execution id, at most
//! [`DEFAULT_MAX_WATCHED`] of them, the oldest forgotten first) until its terminal
//! update, and makes the alert from the record with the update applied. Alerts are
//! emitted by the instance that records the event: the one that ran the execution,
//! or the leader for the LOST record of a run whose holder died.
//!
//! Channels: the job's `alerts` list (the names of the node's channels; all of
//! them when the job has none, none when it is empty), keeping those whose `on`
//! has the alert's kind. The job is looked up with the function given to
//! [`AlertSink::set_job_lookup`]; before one is set, or for a job it does not know,
//! every channel is used.
//!
//! Recording never blocks and never fails: the alert is queued
//! ([`AlertSender::send_to`]) and delivered in the background.
//!
//! [`Alerting`] is how a node uses it: it starts the sender, puts the sink in front
//! of the history writer, looks jobs up in the instance, and lets queued alerts
//! drain at shutdown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use shardcron_alert::{
    Alert, AlertConfig, AlertKind, AlertSender, MAX_CAUSE_CHARS, SenderOptions, StartError,
};
use shardcron_core::job::JobSpec;
use shardcron_core::{ExecutionRecord, ExecutionStatus};
use shardcron_runtime::{HistorySink, Instance};
use shardcron_store::{ExecutionUpdate, HistoryEvent};

/// Longest wait of [`Alerting::shutdown`] for queued alerts to be delivered.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Most RUNNING records an [`AlertSink`] remembers by default.
pub const DEFAULT_MAX_WATCHED: usize = 100_000;

/// Most (job, channel name) pairs warned about: a job naming a channel the node
/// does not have is logged once per pair, up to this many pairs.
const MAX_WARNED: usize = 1024;

/// Finds a job's current spec by name.
pub type JobLookup = Arc<dyn Fn(&str) -> Option<JobSpec> + Send + Sync>;

/// A [`HistorySink`] that forwards every event and sends the alerts they call for.
/// See the [module documentation](self).
pub struct AlertSink {
    inner: Arc<dyn HistorySink>,
    sender: AlertSender,
    channels: Arc<[AlertConfig]>,
    /// The channels that accept each kind, in [`AlertKind::ALL`] order.
    by_kind: Vec<(AlertKind, Arc<[AlertConfig]>)>,
    lookup: RwLock<Option<JobLookup>>,
    watched: Mutex<Watched>,
    warned: Mutex<HashSet<(String, String)>>,
}

impl fmt::Debug for AlertSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.channels.iter().map(|c| c.name.as_str()).collect();
        f.debug_struct("AlertSink")
            .field("inner", &self.inner)
            .field("channels", &names)
            .field("watched", &self.watched_runs())
            .field("job_lookup", &read(&self.lookup).is_some())
            .finish_non_exhaustive()
    }
}

impl AlertSink {
    /// A sink that forwards to `inner` and sends alerts through `sender` to
    /// `channels` (the node's channels; `sender` delivers to whatever it is given).
    pub fn new(
        inner: Arc<dyn HistorySink>,
        channels: Vec<AlertConfig>,
        sender: AlertSender,
    ) -> AlertSink {
        let by_kind = AlertKind::ALL
            .iter()
            .map(|&k| {
                let accepting: Arc<[AlertConfig]> =
                    channels.iter().filter(|c| c.accepts(k)).cloned().collect();
                (k, accepting)
            })
            .collect();
        AlertSink {
            inner,
            sender,
            channels: channels.into(),
            by_kind,
            lookup: RwLock::new(None),
            watched: Mutex::new(Watched::new(DEFAULT_MAX_WATCHED)),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// Remember at most `max` RUNNING records (at least 1) instead of
    /// [`DEFAULT_MAX_WATCHED`].
    pub fn with_max_watched(self, max: usize) -> AlertSink {
        *lock(&self.watched) = Watched::new(max);
        self
    }

    /// Where jobs are looked up for their `alerts` from now on, e.g. an instance's
    /// [`shardcron_runtime::Instance::job`].
    pub fn set_job_lookup(&self, lookup: JobLookup) {
        *self.lookup.write().unwrap_or_else(|e| e.into_inner()) = Some(lookup);
    }

    /// The sender (for its counters, and to flush it at shutdown).
    pub fn sender(&self) -> &AlertSender {
        &self.sender
    }

    /// The node's channels.
    pub fn channels(&self) -> &[AlertConfig] {
        &self.channels
    }

    /// How many RUNNING records are remembered now.
    pub fn watched_runs(&self) -> usize {
        lock(&self.watched).by_id.len()
    }

    /// The alert `event` calls for, if any; updates the remembered runs.
    fn alert_for(&self, event: &HistoryEvent) -> Option<Alert> {
        match event {
            HistoryEvent::Record(r) => {
                if r.status == ExecutionStatus::Running {
                    let mut kept = r.clone();
                    kept.output = None;
                    lock(&self.watched).insert(kept);
                } else {
                    lock(&self.watched).remove(&r.id);
                }
                Alert::from_record(r)
            }
            HistoryEvent::Update(u) => {
                if u.status == ExecutionStatus::Running {
                    return None;
                }
                let Some(mut record) = lock(&self.watched).remove(&u.id) else {
                    if alerting_status(u.status) {
                        tracing::debug!(
                            target: "shardcron::alert",
                            execution_id = %u.id,
                            status = %u.status,
                            "no alert: the execution's start was not seen here (or was forgotten)"
                        );
                    }
                    return None;
                };
                apply(&mut record, u);
                Alert::from_record(&record)
            }
        }
    }

    /// The channels that hear about `alert`.
    fn channels_for(&self, alert: &Alert) -> Arc<[AlertConfig]> {
        let accepting = self
            .by_kind
            .iter()
            .find(|(k, _)| *k == alert.kind)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let lookup = read(&self.lookup).clone();
        let Some(names) = lookup
            .and_then(|find| find(&alert.job))
            .and_then(|spec| spec.alerts)
        else {
            return accepting;
        };
        for name in &names {
            if !self.channels.iter().any(|c| &c.name == name) {
                self.warn_unknown(&alert.job, name);
            }
        }
        accepting
            .iter()
            .filter(|c| names.contains(&c.name))
            .cloned()
            .collect()
    }

    fn warn_unknown(&self, job: &str, name: &str) {
        let mut warned = lock(&self.warned);
        if warned.len() >= MAX_WARNED || !warned.insert((job.to_owned(), name.to_owned())) {
            return;
        }
        let known: Vec<&str> = self.channels.iter().map(|c| c.name.as_str()).collect();
        tracing::warn!(
            target: "shardcron::alert",
            job,
            channel = name,
            known = %known.join(", "),
            "the job's alerts name a channel this node does not have; its alerts skip it here"
        );
    }

    fn dispatch(&self, alert: Alert) {
        let channels = self.channels_for(&alert);
        if channels.is_empty() {
            tracing::debug!(
                target: "shardcron::alert",
                job = %alert.job,
                kind = alert.kind.as_str(),
                execution_id = %alert.execution_id,
                "no channel hears about this alert"
            );
            return;
        }
        let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
        tracing::debug!(
            target: "shardcron::alert",
            job = %alert.job,
            item = alert.item,
            kind = alert.kind.as_str(),
            execution_id = %alert.execution_id,
            channels = %names.join(","),
            "alert queued"
        );
        self.sender.send_to(alert, channels);
    }
}

impl HistorySink for AlertSink {
    fn record(&self, event: HistoryEvent) {
        // Nothing here may stop the event from reaching the history: a panic (of a
        // lookup function, say) loses the alert, not the record.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if let Some(alert) = self.alert_for(&event) {
                self.dispatch(alert);
            }
        }));
        if outcome.is_err() {
            tracing::error!(
                target: "shardcron::alert",
                execution_id = %event.execution_id(),
                "making an alert panicked; the alert is lost, the record is kept"
            );
        }
        self.inner.record(event);
    }
}

/// A node's alerting: its channels' [`AlertSink`] in front of its history, or just
/// the history when it has no channels.
///
/// ```text
/// let alerting = Alerting::start(channels, Arc::new(writer.clone()))?;
/// let runner = Runner { history: alerting.sink(), .. };
/// let instance = Instance::start_with(.., runner).await?;
/// alerting.set_instance(&instance);
/// // ... at shutdown:
/// instance.shutdown().await?;
/// alerting.shutdown().await;
/// ```
#[derive(Debug, Clone)]
pub struct Alerting {
    history: Arc<dyn HistorySink>,
    sink: Option<Arc<AlertSink>>,
}

impl Alerting {
    /// Starts delivery to `channels` with the default [`SenderOptions`], in front
    /// of `history`; with no channels, nothing starts. Logs the channels (names and
    /// types: their URLs hold tokens). Needs a tokio runtime when there are
    /// channels.
    pub fn start(
        channels: Vec<AlertConfig>,
        history: Arc<dyn HistorySink>,
    ) -> Result<Alerting, StartError> {
        Alerting::start_with(channels, history, SenderOptions::default())
    }

    /// [`Alerting::start`] with these sender options.
    pub fn start_with(
        channels: Vec<AlertConfig>,
        history: Arc<dyn HistorySink>,
        options: SenderOptions,
    ) -> Result<Alerting, StartError> {
        if channels.is_empty() {
            return Ok(Alerting {
                history,
                sink: None,
            });
        }
        let sender = AlertSender::start(channels.clone(), options)?;
        tracing::info!(
            target: "shardcron::alert",
            count = channels.len(),
            channels = %describe(&channels),
            "alert channels configured"
        );
        let sink = Arc::new(AlertSink::new(history.clone(), channels, sender));
        Ok(Alerting {
            history,
            sink: Some(sink),
        })
    }

    /// Where the instance records its history (the `Runner`'s `history`).
    pub fn sink(&self) -> Arc<dyn HistorySink> {
        match &self.sink {
            Some(sink) => sink.clone(),
            None => self.history.clone(),
        }
    }

    /// The alert sink, when there are channels.
    pub fn alert_sink(&self) -> Option<&Arc<AlertSink>> {
        self.sink.as_ref()
    }

    /// Look jobs up in `instance`'s mirror from now on (through a
    /// [`shardcron_runtime::JobReader`], which does not hold the instance and
    /// keeps answering while it shuts down).
    pub fn set_instance(&self, instance: &Instance) {
        let Some(sink) = &self.sink else {
            return;
        };
        let reader = instance.job_reader();
        sink.set_job_lookup(Arc::new(move |name: &str| reader.job(name)));
    }

    /// Lets queued alerts go out, for at most [`DRAIN_TIMEOUT`]; whether all did.
    /// Logs the counters.
    pub async fn shutdown(&self) -> bool {
        let Some(sink) = &self.sink else {
            return true;
        };
        let sender = sink.sender();
        let drained = sender.flush(DRAIN_TIMEOUT).await;
        let stats = sender.stats();
        if drained {
            tracing::info!(
                target: "shardcron::alert",
                delivered = stats.delivered,
                failed = stats.failed,
                dropped = stats.dropped,
                "alerts sent"
            );
        } else {
            tracing::warn!(
                target: "shardcron::alert",
                pending = stats.pending,
                delivered = stats.delivered,
                failed = stats.failed,
                dropped = stats.dropped,
                "alerts still undelivered after {DRAIN_TIMEOUT:?} are abandoned"
            );
        }
        drained
    }
}

/// `name (type), ...`: what may be logged of channels.
pub fn describe(channels: &[AlertConfig]) -> String {
    let parts: Vec<String> = channels
        .iter()
        .map(|c| format!("{} ({})", c.name, c.channel.type_name()))
        .collect();
    parts.join(", ")
}

/// The statuses that give an alert.
fn alerting_status(s: ExecutionStatus) -> bool {
    matches!(
        s,
        ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Lost
    )
}

/// The record as the update leaves it (what the store's merge does, for the fields
/// an alert uses).
fn apply(record: &mut ExecutionRecord, u: &ExecutionUpdate) {
    record.status = u.status;
    if u.ended_at.is_some() {
        record.ended_at = u.ended_at;
    }
    if let Some(cause) = &u.cause {
        // The alert keeps MAX_CAUSE_CHARS; one more lets it mark the cut.
        record.cause = Some(match cause.char_indices().nth(MAX_CAUSE_CHARS + 1) {
            Some((at, _)) => cause[..at].to_owned(),
            None => cause.clone(),
        });
    }
}

/// RUNNING records by execution id, bounded, oldest forgotten first.
struct Watched {
    max: usize,
    next: u64,
    by_id: HashMap<String, (u64, ExecutionRecord)>,
    order: BTreeMap<u64, String>,
    forgotten: u64,
}

impl Watched {
    fn new(max: usize) -> Watched {
        Watched {
            max: max.max(1),
            next: 0,
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            forgotten: 0,
        }
    }

    fn insert(&mut self, record: ExecutionRecord) {
        self.remove(&record.id);
        while self.by_id.len() >= self.max {
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            self.by_id.remove(&id);
            self.forgotten += 1;
            if self.forgotten == 1 || self.forgotten.is_multiple_of(10_000) {
                tracing::warn!(
                    target: "shardcron::alert",
                    max = self.max,
                    forgotten_total = self.forgotten,
                    "too many running executions to watch for alerts: forgot the oldest"
                );
            }
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, record.id.clone());
        self.by_id.insert(record.id.clone(), (seq, record));
    }

    fn remove(&mut self, id: &str) -> Option<ExecutionRecord> {
        let (seq, record) = self.by_id.remove(id)?;
        self.order.remove(&seq);
        Some(record)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use shardcron_alert::SenderOptions;
    use shardcron_core::execution::SkipReason;
    use shardcron_core::job::{JobKind, JobName};
    use shardcron_core::{ExecutionSource, Schedule};
    use shardcron_runtime::MemoryHistory;
    use shardcron_testkit::capture::{Behaviour, HttpServer, accept_all, http_server};

    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn running(id: &str, job: &str, source: ExecutionSource) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            job: job.into(),
            item: 1,
            total: 2,
            fire_time: t(0),
            fire_time_end: None,
            skipped_count: None,
            started_at: t(1),
            ended_at: None,
            instance: "node-a#1".into(),
            host: "h".into(),
            source,
            status: ExecutionStatus::Running,
            skip_reason: None,
            attempt: 2,
            token: 7,
            cause: None,
            output: None,
        }
    }

    fn start(id: &str, job: &str) -> HistoryEvent {
        HistoryEvent::Record(running(id, job, ExecutionSource::Normal))
    }

    fn finish(id: &str, status: ExecutionStatus, cause: Option<&str>) -> HistoryEvent {
        HistoryEvent::Update(ExecutionUpdate {
            cause: cause.map(str::to_owned),
            output: Some("some output".into()),
            ..ExecutionUpdate::finished(id, status, t(5))
        })
    }

    /// Webhook channels `name` posting to `/name`, each with its `on` list.
    async fn sink(channels: &[(&str, &str)]) -> (HttpServer, Arc<MemoryHistory>, AlertSink) {
        let server = http_server(Behaviour {
            fail_first: 0,
            ok_status: 204,
            ok_body: String::new(),
            validator: accept_all(),
            echo_on_failure: false,
        })
        .await;
        let toml: String = channels
            .iter()
            .map(|(name, on)| {
                format!(
                    "[[alert]]\nname = \"{name}\"\ntype = \"webhook\"\non = {on}\nurl = \"{}/{name}\"\n",
                    server.base
                )
            })
            .collect();
        let configs = AlertConfig::document_from_toml(&toml).unwrap_or_else(|e| panic!("{e}"));
        let options = SenderOptions {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..SenderOptions::default()
        };
        let sender = AlertSender::start(configs.clone(), options).expect("sender");
        let history = Arc::new(MemoryHistory::new());
        let sink = AlertSink::new(history.clone(), configs, sender);
        (server, history, sink)
    }

    /// Every delivered alert as (channel, kind, execution id), after the queue drained.
    async fn delivered(
        server: &HttpServer,
        sink: &AlertSink,
    ) -> BTreeSet<(String, String, String)> {
        assert!(
            sink.sender().flush(Duration::from_secs(20)).await,
            "not delivered"
        );
        server
            .requests()
            .iter()
            .map(|r| {
                let v = r.json();
                (
                    r.path.trim_start_matches('/').to_owned(),
                    v["kind"].as_str().unwrap_or("").to_owned(),
                    v["execution_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    fn set(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
        items
            .iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
            .collect()
    }

    const ALL: &str = r#"["failed", "timed_out", "misfire", "failover", "lost"]"#;

    #[tokio::test]
    async fn forwards_every_event_and_alerts_on_the_right_ones() {
        let (server, history, sink) = sink(&[("a", ALL)]).await;
        let mut lost = running("e5", "j", ExecutionSource::Normal);
        lost.status = ExecutionStatus::Lost;
        lost.ended_at = Some(t(9));
        lost.cause = Some("its holder node-b lost its lease; failed over".into());
        let mut skipped = running("e7", "j", ExecutionSource::Normal);
        skipped.status = ExecutionStatus::Skipped;
        skipped.skip_reason = Some(SkipReason::MisfirePolicy);
        skipped.skipped_count = Some(3);
        let mut disabled = skipped.clone();
        disabled.id = "e8".into();
        disabled.skip_reason = Some(SkipReason::Disabled);
        let events = vec![
            start("e1", "j"),
            finish("e1", ExecutionStatus::Failed, Some("exit code 3")),
            start("e2", "j"),
            finish("e2", ExecutionStatus::Succeeded, None),
            start("e3", "j"),
            finish("e3", ExecutionStatus::TimedOut, Some("ran longer than 1s")),
            start("e4", "j"),
            finish("e4", ExecutionStatus::Cancelled, Some("cancelled")),
            HistoryEvent::Record(lost),
            HistoryEvent::Record(running("e6", "j", ExecutionSource::Failover)),
            HistoryEvent::Record(running("e9", "j", ExecutionSource::Misfire)),
            HistoryEvent::Record(skipped),
            HistoryEvent::Record(disabled),
            // An outcome whose start was never seen: nothing to name the job by.
            finish("e99", ExecutionStatus::Failed, Some("?")),
        ];
        for e in &events {
            sink.record(e.clone());
        }
        assert_eq!(history.events(), events, "forwarded unchanged, in order");
        assert_eq!(
            delivered(&server, &sink).await,
            set(&[
                ("a", "FAILED", "e1"),
                ("a", "TIMED_OUT", "e3"),
                ("a", "LOST", "e5"),
                ("a", "FAILOVER", "e6"),
                ("a", "MISFIRE", "e9"),
                ("a", "MISFIRE", "e7"),
            ])
        );
        // e6 and e9 are still running; the rest ended.
        assert_eq!(sink.watched_runs(), 2);

        // The FAILED alert is the RUNNING record with the update applied.
        let failed = server
            .requests()
            .into_iter()
            .map(|r| r.json())
            .find(|v| v["execution_id"] == "e1")
            .unwrap_or_default();
        assert_eq!(failed["job"], "j");
        assert_eq!(failed["item"], 1);
        assert_eq!(failed["attempt"], 2);
        assert_eq!(failed["instance"], "node-a#1");
        assert_eq!(failed["cause"], "exit code 3");
        assert_eq!(failed["fire_time"], "2027-01-15T08:00:00Z");
    }

    fn job(name: &str, alerts: Option<&[&str]>) -> JobSpec {
        let mut spec = JobSpec::new(
            JobName::new(name).unwrap_or_else(|e| panic!("{e}")),
            Schedule::Manual,
            JobKind::Script {
                command: vec!["/bin/true".into()],
            },
        );
        spec.alerts = alerts.map(|a| a.iter().map(|s| (*s).to_owned()).collect());
        spec
    }

    fn fail(sink: &AlertSink, id: &str, job: &str, status: ExecutionStatus) {
        sink.record(start(id, job));
        sink.record(finish(id, status, Some("boom")));
    }

    #[tokio::test]
    async fn channels_follow_the_jobs_alerts_and_on() {
        let (server, _history, sink) =
            sink(&[("a", ALL), ("b", r#"["timed_out"]"#), ("c", ALL)]).await;
        // No lookup yet: every channel that accepts the kind.
        fail(&sink, "x1", "quiet", ExecutionStatus::Failed);
        sink.set_job_lookup(Arc::new(|name: &str| match name {
            "named" => Some(job(name, Some(&["b", "c", "ghost"]))),
            "quiet" => Some(job(name, Some(&[]))),
            "default" => Some(job(name, None)),
            _ => None,
        }));
        fail(&sink, "n1", "named", ExecutionStatus::Failed);
        fail(&sink, "n2", "named", ExecutionStatus::TimedOut);
        fail(&sink, "q1", "quiet", ExecutionStatus::Failed);
        fail(&sink, "q2", "quiet", ExecutionStatus::TimedOut);
        fail(&sink, "d1", "default", ExecutionStatus::Failed);
        fail(&sink, "u1", "unknown", ExecutionStatus::TimedOut);
        assert_eq!(
            delivered(&server, &sink).await,
            set(&[
                ("a", "FAILED", "x1"),
                ("c", "FAILED", "x1"),
                ("c", "FAILED", "n1"),
                ("b", "TIMED_OUT", "n2"),
                ("c", "TIMED_OUT", "n2"),
                ("a", "FAILED", "d1"),
                ("c", "FAILED", "d1"),
                ("a", "TIMED_OUT", "u1"),
                ("b", "TIMED_OUT", "u1"),
                ("c", "TIMED_OUT", "u1"),
            ])
        );
        assert_eq!(sink.watched_runs(), 0);
    }

    #[tokio::test]
    async fn watched_runs_are_bounded_oldest_first() {
        let (server, history, sink) = sink(&[("a", ALL)]).await;
        let sink = sink.with_max_watched(2);
        for id in ["r1", "r2", "r3"] {
            sink.record(start(id, "j"));
        }
        assert_eq!(sink.watched_runs(), 2);
        for id in ["r1", "r2", "r3"] {
            sink.record(finish(id, ExecutionStatus::Failed, Some("boom")));
        }
        assert_eq!(
            delivered(&server, &sink).await,
            set(&[("a", "FAILED", "r2"), ("a", "FAILED", "r3")]),
            "r1 was forgotten"
        );
        assert_eq!(sink.watched_runs(), 0);
        assert_eq!(history.events().len(), 6);
    }

    #[test]
    fn without_channels_the_history_is_used_directly() {
        let history = Arc::new(MemoryHistory::new());
        let alerting = Alerting::start(Vec::new(), history.clone()).expect("no runtime needed");
        assert!(alerting.alert_sink().is_none());
        alerting.sink().record(start("e1", "j"));
        assert_eq!(history.events(), [start("e1", "j")]);
        let channels = AlertConfig::document_from_toml("[[alert]]\nname = \"l\"\ntype = \"log\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            Alerting::start(channels, history),
            Err(StartError::NoRuntime)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_are_looked_up_in_the_instance_also_after_it_stopped() {
        use shardcron_core::clock::SystemClock;
        use shardcron_registry::{MemoryRegistry, Registry};
        use shardcron_runtime::{Handlers, InstanceConfig, Runner, SchedulerOptions};

        let (server, history, sink) = sink(&[("a", ALL)]).await;
        // The same channels and server, through Alerting this time.
        let channels = sink.channels().to_vec();
        drop(sink);
        let alerting = Alerting::start(channels, history.clone()).unwrap_or_else(|e| panic!("{e}"));
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let clock = SystemClock::shared();
        let runner = Runner {
            handlers: Handlers::new(),
            history: alerting.sink(),
            options: SchedulerOptions::default(),
        };
        let instance = Instance::start_with(
            registry.clone(),
            clock.clone(),
            InstanceConfig::new(),
            runner,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        alerting.set_instance(&instance);
        let cluster = shardcron_runtime::Cluster::new(registry, clock);
        cluster
            .create_job(&job("quiet", Some(&[])))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t0 = std::time::Instant::now();
        while instance.job("quiet").is_none() {
            assert!(t0.elapsed() < Duration::from_secs(10), "job not seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Some(sink) = alerting.alert_sink() else {
            panic!("no sink")
        };
        fail(sink, "i1", "quiet", ExecutionStatus::Failed);
        fail(sink, "i2", "other", ExecutionStatus::Failed);

        instance.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        // The instance has stopped; its last view of the jobs still knows "quiet".
        fail(sink, "i3", "quiet", ExecutionStatus::Failed);
        fail(sink, "i4", "other", ExecutionStatus::TimedOut);
        assert!(alerting.shutdown().await);
        assert_eq!(
            delivered(&server, sink).await,
            set(&[("a", "FAILED", "i2"), ("a", "TIMED_OUT", "i4")])
        );
    }

    #[tokio::test]
    async fn a_panicking_lookup_loses_the_alert_not_the_record() {
        let (server, history, sink) = sink(&[("a", ALL)]).await;
        sink.set_job_lookup(Arc::new(|name: &str| {
            if name == "bad" {
                panic!("lookup failed");
            }
            None
        }));
        fail(&sink, "p1", "bad", ExecutionStatus::Failed);
        fail(&sink, "p2", "good", ExecutionStatus::Failed);
        assert_eq!(history.events().len(), 4);
        assert_eq!(
            delivered(&server, &sink).await,
            set(&[("a", "FAILED", "p2")])
        );
        assert!(format!("{sink:?}").contains("channels: [\"a\"]"));
    }
}
