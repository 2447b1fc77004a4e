//! Keeping a lease alive, and knowing locally when it can no longer be trusted.
//!
//! [`LeaseKeeper`] renews a lease every TTL/3 on any [`Registry`] and tracks its
//! *local deadline* on the monotonic clock: the send time of the last acknowledged
//! keep-alive plus the TTL the registry answered with. The registry cannot have
//! expired the lease before that instant (it started counting no earlier than we
//! sent), so an instance that stops acting on the lease by its deadline (minus a
//! margin for clock drift between machines) never acts after another instance may
//! have taken over. That is the basis of self-fencing.
//!
//! Renewals are scheduled from the same instant: TTL/3 after the send time of the
//! last acknowledged request (the grant's, for the first renewal), not after its
//! answer came or the keeper started. A grant answered late, or a slow step
//! between the grant and the keeper's start (the instance key's transaction),
//! would otherwise push the first renewal past the fence point (deadline minus
//! margin), and the new session would fence itself before renewing at all.
//!
//! Losing the lease is always reported as a [`LeaseEvent::Lost`], never silently:
//! when the registry says the lease is gone, or when the deadline passes without an
//! acknowledged keep-alive (e.g. the registry is unreachable).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardcron_core::MonoTime;
use shardcron_core::clock::SharedClock;
use tokio::sync::{mpsc, watch};

use crate::{Lease, Registry, RegistryError};

/// What happened to a kept lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease is gone or can no longer be trusted; the keeper has stopped.
    Lost {
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct State {
    deadline: MonoTime,
    lost: Option<String>,
}

/// Renews one lease in the background. Dropping it stops the renewals (without
/// revoking the lease).
#[derive(Debug)]
pub struct LeaseKeeper {
    lease: Lease,
    clock: SharedClock,
    state: Arc<Mutex<State>>,
    stop: watch::Sender<bool>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match state.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl LeaseKeeper {
    /// Keep `lease` alive. `granted_at` is the monotonic time at which the grant
    /// request was sent (the first deadline is `granted_at + ttl`). Must be called
    /// inside a tokio runtime.
    pub fn start(
        registry: Arc<dyn Registry>,
        lease: Lease,
        granted_at: MonoTime,
        clock: SharedClock,
    ) -> (LeaseKeeper, mpsc::UnboundedReceiver<LeaseEvent>) {
        let state = Arc::new(Mutex::new(State {
            deadline: granted_at + lease.ttl,
            lost: None,
        }));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(keep_alive_loop(
            registry,
            lease,
            granted_at,
            clock.clone(),
            state.clone(),
            events_tx,
            stop_rx,
        ));
        (
            LeaseKeeper {
                lease,
                clock,
                state,
                stop: stop_tx,
            },
            events_rx,
        )
    }

    /// The lease being kept.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The local deadline: the lease cannot have expired before this instant.
    pub fn deadline(&self) -> MonoTime {
        lock(&self.state).deadline
    }

    /// How long until the deadline minus `margin` (zero if already past).
    pub fn remaining(&self, margin: Duration) -> Duration {
        self.deadline()
            .saturating_sub(margin)
            .duration_since(self.clock.mono())
    }

    /// Whether the lease can still be trusted with `margin` to spare: not lost and
    /// `now + margin < deadline`.
    pub fn is_valid(&self, margin: Duration) -> bool {
        let st = lock(&self.state);
        st.lost.is_none() && self.clock.mono() + margin < st.deadline
    }

    /// Why the lease was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        lock(&self.state).lost.clone()
    }

    /// Stop renewing (the lease then expires after its TTL unless revoked).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn keep_alive_loop(
    registry: Arc<dyn Registry>,
    lease: Lease,
    granted_at: MonoTime,
    clock: SharedClock,
    state: Arc<Mutex<State>>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let period = (lease.ttl / 3).max(Duration::from_millis(50));
    let retry = (lease.ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    // Renew TTL/3 after the send time of the last acknowledged request (at once
    // if that is already past).
    let mut wait = (granted_at + period).duration_since(clock.mono());
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if *stop.borrow() {
            return;
        }
        let deadline = lock(&state).deadline;
        let sent = clock.mono();
        if sent >= deadline {
            lose(
                &state,
                &events,
                "no keep-alive was acknowledged before the lease's deadline",
            );
            return;
        }
        // Never wait for an answer past the deadline: by then the lease is untrusted.
        let budget = deadline.duration_since(sent).min(period);
        match tokio::time::timeout(budget, registry.lease_keep_alive(lease.id)).await {
            Ok(Ok(ttl)) => {
                lock(&state).deadline = sent + ttl;
                wait = (sent + period).duration_since(clock.mono());
            }
            Ok(Err(RegistryError::LeaseNotFound(_))) => {
                lose(
                    &state,
                    &events,
                    "the registry no longer has the lease (expired or revoked)",
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = lease.id, error = %e, "lease keep-alive failed; retrying");
                wait = retry;
            }
            Err(_) => {
                tracing::warn!(lease = lease.id, "lease keep-alive unanswered; retrying");
                wait = retry;
            }
        }
        if clock.mono() >= lock(&state).deadline {
            lose(
                &state,
                &events,
                "no keep-alive was acknowledged before the lease's deadline",
            );
            return;
        }
    }
}

fn lose(state: &Mutex<State>, events: &mpsc::UnboundedSender<LeaseEvent>, reason: &str) {
    tracing::warn!(reason, "lease lost");
    lock(state).lost = Some(reason.to_string());
    let _ = events.send(LeaseEvent::Lost {
        reason: reason.to_string(),
    });
}
