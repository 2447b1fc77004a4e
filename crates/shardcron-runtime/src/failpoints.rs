//! Failpoints at crash-sensitive steps, compiled in only with the `failpoints`
//! feature (tests). Without it, [`hit`] is an empty inline function.
//!
//! Points: `after_claim` (a claim has committed, the run has not started) and
//! `before_release` (the run has ended, its run key is not yet released).

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
