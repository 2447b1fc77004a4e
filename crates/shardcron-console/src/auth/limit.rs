//! Login rate limiting: at most [`MAX_FAILURES`] failed logins per [`WINDOW`] per
//! client address and per user name, counted by this node (in memory).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use shardcron_core::clock::MonoTime;

/// Failures allowed in a window before logins are refused.
pub(crate) const MAX_FAILURES: usize = 5;
/// The sliding window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Above this many keys, forget the ones with no failure in the window.
const PRUNE_ABOVE: usize = 4096;

/// Recent failures per key (`ip:...`, `user:...`).
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    failures: HashMap<String, VecDeque<MonoTime>>,
}

impl Limiter {
    /// How long until one of `keys` may try again, if any is over the limit.
    pub(crate) fn retry_after(&mut self, keys: &[String], now: MonoTime) -> Option<Duration> {
        let mut wait: Option<Duration> = None;
        for key in keys {
            let Some(times) = self.failures.get_mut(key) else {
                continue;
            };
            expire(times, now);
            if times.len() >= MAX_FAILURES {
                // The window reopens when the oldest failure that keeps it full
                // leaves it.
                let oldest = times[times.len() - MAX_FAILURES];
                let w = (oldest + WINDOW).duration_since(now);
                wait = Some(wait.map_or(w, |x| x.max(w)));
            }
        }
        wait
    }

    /// Start a login attempt: refused with the wait if a key is over the limit,
    /// else counted as a failure until [`Limiter::refund`]ed.
    pub(crate) fn begin(&mut self, keys: &[String], now: MonoTime) -> Option<Duration> {
        let wait = self.retry_after(keys, now);
        if wait.is_none() {
            self.fail(keys, now);
        }
        wait
    }

    /// Take back the failure counted by [`Limiter::begin`] at `at` (the login
    /// succeeded).
    pub(crate) fn refund(&mut self, keys: &[String], at: MonoTime) {
        for key in keys {
            if let Some(times) = self.failures.get_mut(key) {
                if let Some(i) = times.iter().rposition(|t| *t == at) {
                    times.remove(i);
                }
                if times.is_empty() {
                    self.failures.remove(key);
                }
            }
        }
    }

    /// Count a failed login against every key.
    pub(crate) fn fail(&mut self, keys: &[String], now: MonoTime) {
        if self.failures.len() > PRUNE_ABOVE {
            self.failures.retain(|_, times| {
                expire(times, now);
                !times.is_empty()
            });
        }
        for key in keys {
            let times = self.failures.entry(key.clone()).or_default();
            expire(times, now);
            times.push_back(now);
            while times.len() > MAX_FAILURES {
                times.pop_front();
            }
        }
    }
}

/// Drop the failures older than the window.
fn expire(times: &mut VecDeque<MonoTime>, now: MonoTime) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> MonoTime {
        MonoTime::from_duration(Duration::from_secs(secs))
    }

    #[test]
    fn five_failures_a_minute_then_wait() {
        let mut l = Limiter::default();
        let k = vec!["ip:1".to_owned(), "user:a".to_owned()];
        for i in 0..5 {
            assert_eq!(l.retry_after(&k, at(100 + i)), None);
            l.fail(&k, at(100 + i));
        }
        assert_eq!(l.retry_after(&k, at(105)), Some(Duration::from_secs(55)));
        // Another address is limited through the user name, and the other way.
        assert!(l.retry_after(&["user:a".to_owned()], at(105)).is_some());
        assert!(
            l.retry_after(&["ip:1".to_owned(), "user:b".to_owned()], at(105))
                .is_some()
        );
        assert_eq!(
            l.retry_after(&["ip:2".to_owned(), "user:b".to_owned()], at(105)),
            None
        );
        // The first failure leaves the window at 160.
        assert!(l.retry_after(&k, at(159)).is_some());
        assert_eq!(l.retry_after(&k, at(160)), None);
        l.fail(&k, at(160));
        assert_eq!(l.retry_after(&k, at(160)), Some(Duration::from_secs(1)));
    }

    #[test]
    fn successes_are_refunded() {
        let mut l = Limiter::default();
        let k = vec!["user:a".to_owned()];
        for i in 0..20 {
            assert_eq!(l.begin(&k, at(i)), None);
            l.refund(&k, at(i));
        }
        for i in 0..5 {
            assert_eq!(l.begin(&k, at(100 + i)), None);
        }
        assert!(l.begin(&k, at(105)).is_some());
        assert!(l.failures.get("user:a").is_some_and(|t| t.len() == 5));
    }

    #[test]
    fn prunes_idle_keys() {
        let mut l = Limiter::default();
        for i in 0..=PRUNE_ABOVE {
            l.fail(&[format!("user:{i}")], at(0));
        }
        l.fail(&["user:new".to_owned()], at(61));
        assert_eq!(l.failures.len(), 1);
    }
}
