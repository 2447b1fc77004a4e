//! Failpoints at crash-sensitive steps, compiled in only with the `failpoints`
//! feature (tests). Without it, [`hit`] is an empty inline function.
//!
//! Points: `after_claim` (a claim has committed, the run has not started) and
//! `before_release` (the run has ended, its run key is not yet released).
//!
//! Removal switches ([`Mechanism`], feature `failpoints` only): a test removes one
//! coordination mechanism and checks that its scenario then reports a violation,
//! which shows that the scenario really depends on that mechanism.

/// A coordination mechanism that a test can remove (see [`remove`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// The claim's "run key absent" compare (one run at a time per item, I1).
    RunKeyCheck,
    /// The claim/takeover/release compare on the instance's registration.
    RegistrationCompare,
    /// Self-fencing: stopping claims and cancelling runs when the lease is not
    /// trusted any more.
    SelfFence,
    /// The claim's "fire key absent" compare (one claim per fire, I2).
    FireKeyCheck,
    /// The claim's compare-and-advance of the item's last-fire state (I2).
    LastCompare,
}

impl Mechanism {
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    fn bit(self) -> u8 {
        match self {
            Mechanism::RunKeyCheck => 1,
            Mechanism::RegistrationCompare => 2,
            Mechanism::SelfFence => 4,
            Mechanism::FireKeyCheck => 8,
            Mechanism::LastCompare => 16,
        }
    }
}

#[cfg(feature = "failpoints")]
static REMOVED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Remove a mechanism for the whole process (tests only).
#[cfg(feature = "failpoints")]
pub fn remove(m: Mechanism) {
    REMOVED.fetch_or(m.bit(), std::sync::atomic::Ordering::SeqCst);
}

/// Put a removed mechanism back.
#[cfg(feature = "failpoints")]
pub fn restore(m: Mechanism) {
    REMOVED.fetch_and(!m.bit(), std::sync::atomic::Ordering::SeqCst);
}

/// Whether a test removed `m`.
#[cfg(feature = "failpoints")]
pub(crate) fn removed(m: Mechanism) -> bool {
    REMOVED.load(std::sync::atomic::Ordering::SeqCst) & m.bit() != 0
}

/// Without the feature, nothing is ever removed.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn removed(_m: Mechanism) -> bool {
    false
}

#[cfg(feature = "failpoints")]
mod enabled {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use tokio::sync::Semaphore;

    /// What a failpoint does when hit.
    #[derive(Debug, Clone)]
    pub enum Action {
        /// Wait until the semaphore grants a permit (the test releases it).
        Pause(Arc<Semaphore>),
        /// Never return (the task is stuck, as a crashed process would be).
        Hang,
    }

    fn points() -> &'static Mutex<HashMap<String, Action>> {
        static P: OnceLock<Mutex<HashMap<String, Action>>> = OnceLock::new();
        P.get_or_init(Default::default)
    }

    /// Arm a failpoint (for every instance in the process whose id starts with
    /// `scope`; the empty scope matches all).
    pub fn set(name: &str, scope: &str, action: Action) {
        if let Ok(mut p) = points().lock() {
            p.insert(format!("{name}@{scope}"), action);
        }
    }

    /// Disarm a failpoint.
    pub fn clear(name: &str, scope: &str) {
        if let Ok(mut p) = points().lock() {
            p.remove(&format!("{name}@{scope}"));
        }
    }

    pub(crate) async fn hit(name: &str, instance: &str) {
        let action = points().lock().ok().and_then(|p| {
            p.iter()
                .find(|(k, _)| {
                    k.split_once('@')
                        .is_some_and(|(n, scope)| n == name && instance.starts_with(scope))
                })
                .map(|(_, a)| a.clone())
        });
        match action {
            None => {}
            Some(Action::Pause(s)) => {
                if let Ok(permit) = s.acquire().await {
                    permit.forget();
                }
            }
            Some(Action::Hang) => std::future::pending::<()>().await,
        }
    }
}

#[cfg(feature = "failpoints")]
pub use enabled::{Action, clear, set};

#[cfg(feature = "failpoints")]
pub(crate) use enabled::hit;

/// Without the feature, failpoints cost nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) async fn hit(_name: &str, _instance: &str) {}
