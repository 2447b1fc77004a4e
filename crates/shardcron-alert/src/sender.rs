//! [`AlertSender`]: a bounded queue in front of a background task that delivers each
//! alert to its channels, with retries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::alert::Alert;
use crate::channel::{self, AttemptError};
use crate::config::AlertConfig;
use crate::secret::scrub;

/// How an [`AlertSender`] queues and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderOptions {
    /// Most alerts waiting for delivery; when full, the oldest is dropped. At least 1.
    pub queue_capacity: usize,
    /// Most alerts being delivered at once (each to all its channels). At least 1.
    pub max_in_flight: usize,
    /// Attempts per alert and channel, the first included. At least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles with each further attempt.
    pub initial_backoff: Duration,
    /// Upper bound of a delay.
    pub max_backoff: Duration,
    /// Longest one attempt may take (connect, send, answer).
    pub attempt_timeout: Duration,
}

impl Default for SenderOptions {
    /// 1024 queued, 8 in flight, 5 attempts, 1 s doubling up to 1 min, 10 s per
    /// attempt.
    fn default() -> Self {
        SenderOptions {
            queue_capacity: 1024,
            max_in_flight: 8,
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl SenderOptions {
    /// The delay after failed attempt `attempt` (1-based): `initial_backoff *
    /// 2^(attempt-1)`, capped at `max_backoff`, then multiplied by a random factor in
    /// `[0.75, 1.25)` (jitter, so that many instances do not retry in step) and capped
    /// again.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let factor: f64 = rand::random_range(0.75..1.25);
        base.mul_f64(factor).min(self.max_backoff)
    }
}

/// Counts since the sender started, per alert and channel except `dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlertStats {
    /// Deliveries that succeeded (one per alert and channel).
    pub delivered: u64,
    /// Deliveries given up: attempts exhausted or a permanent error.
    pub failed: u64,
    /// Alerts dropped unsent because the queue was full.
    pub dropped: u64,
    /// Attempts that failed (whether retried or not).
    pub failed_attempts: u64,
    /// Alerts queued or being delivered now.
    pub pending: u64,
}

/// Why an [`AlertSender`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `start` was called outside a tokio runtime.
    #[error("alert sender: must be started inside a tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built.
    #[error("alert sender: cannot build the HTTP client: {0}")]
    Http(String),
}

/// Sends alerts without ever blocking the caller.
///
/// [`AlertSender::send`] puts the alert in a bounded queue and returns at once. When
/// the queue is full, the **oldest** queued alert is dropped to make room (a burst of
/// alerts keeps its latest news), [`AlertStats::dropped`] is counted, and a WARN is
/// logged (at most one per second, with the total dropped so far).
///
/// A background task takes alerts from the queue and delivers each one to every
/// channel whose `on` list has its kind, channels in parallel and up to
/// [`SenderOptions::max_in_flight`] alerts at once. Each delivery makes up to
/// [`SenderOptions::max_attempts`] attempts, each bounded by
/// [`SenderOptions::attempt_timeout`], with [`SenderOptions::backoff`] between them;
/// transient failures (network errors, timeouts, HTTP 408/425/429/5xx, DingTalk and
/// WeCom `errcode`s, SMTP 4xx) are retried, permanent ones (other HTTP 4xx, SMTP 5xx)
/// are not. Each failed attempt is logged at WARN and a delivery given up at ERROR,
/// naming the channel, its type and its redacted target; error texts have every
/// secret of the channel replaced with `<redacted>`.
///
/// Clones share the queue. When the last clone is dropped the task finishes what
/// is queued and stops; use [`AlertSender::flush`] to wait for that.
#[derive(Debug, Clone)]
pub struct AlertSender {
    shared: Arc<Shared>,
    _close: Arc<CloseOnDrop>,
}

#[derive(Debug)]
struct Shared {
    options: SenderOptions,
    channels: Arc<[AlertConfig]>,
    http: reqwest::Client,
    queue: Mutex<QueueState>,
    wake: Notify,
    idle: Notify,
    closed: AtomicBool,
    pending: AtomicUsize,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    failed_attempts: AtomicU64,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Queued>,
    last_drop_warning: Option<Instant>,
}

#[derive(Debug)]
struct Queued {
    alert: Alert,
    channels: Arc<[AlertConfig]>,
}

#[derive(Debug)]
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

impl AlertSender {
    /// Starts the delivery task on the current tokio runtime, with `channels` as the
    /// channels of [`AlertSender::send`]. Option values below their minimum are
    /// raised to it.
    pub fn start(
        channels: Vec<AlertConfig>,
        options: SenderOptions,
    ) -> Result<AlertSender, StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let options = SenderOptions {
            queue_capacity: options.queue_capacity.max(1),
            max_in_flight: options.max_in_flight.max(1),
            max_attempts: options.max_attempts.max(1),
            ..options
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("shardcron-alert/", env!("CARGO_PKG_VERSION")))
            // A redirect could carry the request (and its tokens) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.attempt_timeout)
            .build()
            .map_err(|e| StartError::Http(e.without_url().to_string()))?;
        let shared = Arc::new(Shared {
            channels: channels.into(),
            http,
            queue: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            closed: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            options,
        });
        handle.spawn(run(shared.clone()));
        Ok(AlertSender {
            _close: Arc::new(CloseOnDrop(shared.clone())),
            shared,
        })
    }

    /// Queues `alert` for the sender's channels; never blocks, never fails. An alert
    /// that no channel accepts is not queued. The cause is bounded first
    /// ([`Alert::bound_cause`]).
    pub fn send(&self, alert: Alert) {
        let channels = self.shared.channels.clone();
        self.send_to(alert, channels);
    }

    /// Like [`AlertSender::send`], to the given channels instead (e.g. the alerts of
    /// one job's spec).
    pub fn send_to(&self, mut alert: Alert, channels: Arc<[AlertConfig]>) {
        if !channels.iter().any(|c| c.accepts(alert.kind)) {
            return;
        }
        alert.bound_cause();
        let shared = &self.shared;
        let mut q = shared.lock_queue();
        shared.pending.fetch_add(1, Ordering::SeqCst);
        if q.items.len() >= shared.options.queue_capacity
            && let Some(old) = q.items.pop_front()
        {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            let total = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = Instant::now();
            if q.last_drop_warning
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                q.last_drop_warning = Some(now);
                tracing::warn!(
                    target: "shardcron::alert",
                    dropped_total = total,
                    capacity = shared.options.queue_capacity,
                    job = %old.alert.job,
                    kind = old.alert.kind.as_str(),
                    "alert queue full: dropped the oldest alert"
                );
            }
        }
        q.items.push_back(Queued { alert, channels });
        drop(q);
        shared.wake.notify_one();
    }

    /// The counters so far.
    pub fn stats(&self) -> AlertStats {
        let s = &self.shared;
        AlertStats {
            delivered: s.delivered.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::SeqCst) as u64,
        }
    }

    /// Waits until nothing is queued or being delivered, at most `timeout`; whether
    /// that point was reached.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.shared.pending.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.shared.pending.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock leaves the queue consistent: take it anyway.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn done(&self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.idle.notify_waiters();
    }
}

async fn run(shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.options.max_in_flight));
    loop {
        let next = shared.lock_queue().items.pop_front();
        let Some(queued) = next else {
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            shared.wake.notified().await;
            continue;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            deliver_all(&shared, &queued).await;
            drop(slot);
            shared.done();
        });
    }
}

async fn deliver_all(shared: &Shared, queued: &Queued) {
    let deliveries = queued
        .channels
        .iter()
        .filter(|c| c.accepts(queued.alert.kind))
        .map(|c| deliver(shared, c, &queued.alert));
    futures_join_all(deliveries).await;
}

/// Runs the futures concurrently on this task.
async fn futures_join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

async fn deliver(shared: &Shared, config: &AlertConfig, alert: &Alert) {
    let options = &shared.options;
    let channel = &config.channel;
    let target = channel.target();
    let secrets = channel.secret_values();
    for attempt in 1..=options.max_attempts {
        let result = tokio::time::timeout(
            options.attempt_timeout,
            channel::attempt(&shared.http, &config.name, channel, alert, &secrets),
        )
        .await
        .unwrap_or_else(|_| {
            Err(AttemptError::Transient(format!(
                "no answer within {:?}",
                options.attempt_timeout
            )))
        });
        let error = match result {
            Ok(()) => {
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    target: "shardcron::alert",
                    channel = %config.name,
                    r#type = channel.type_name(),
                    target = %target,
                    attempt,
                    job = %alert.job,
                    kind = alert.kind.as_str(),
                    "alert delivered"
                );
                return;
            }
            Err(e) => e,
        };
        shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let message = scrub(error.message(), &secrets);
        let last = attempt == options.max_attempts || matches!(error, AttemptError::Permanent(_));
        if last {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                target: "shardcron::alert",
                channel = %config.name,
                r#type = channel.type_name(),
                target = %target,
                attempt,
                job = %alert.job,
                kind = alert.kind.as_str(),
                error = %message,
                "alert delivery failed; giving up"
            );
            return;
        }
        let delay = options.backoff(attempt);
        tracing::warn!(
            target: "shardcron::alert",
            channel = %config.name,
            r#type = channel.type_name(),
            target = %target,
            attempt,
            job = %alert.job,
            kind = alert.kind.as_str(),
            error = %message,
            retry_in_ms = delay.as_millis() as u64,
            "alert delivery attempt failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let o = SenderOptions {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..SenderOptions::default()
        };
        for _ in 0..200 {
            for (attempt, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)] {
                let d = o.backoff(attempt).as_secs_f64();
                assert!(
                    d >= base * 0.75 && d < (base * 1.25_f64).min(10.0) + 1e-9,
                    "{attempt}: {d}"
                );
            }
            let d = o.backoff(40).as_secs_f64();
            assert!((7.5..=10.0).contains(&d), "{d}");
        }
        let spread: std::collections::BTreeSet<u128> =
            (0..50).map(|_| o.backoff(1).as_micros()).collect();
        assert!(spread.len() > 1, "no jitter");
    }

    #[test]
    fn start_needs_a_runtime() {
        assert!(matches!(
            AlertSender::start(Vec::new(), SenderOptions::default()),
            Err(StartError::NoRuntime)
        ));
    }
}
