//! The clock-skew guard.
//!
//! Every instance writes its wall-clock time into its instance key as a heartbeat.
//! When another instance's heartbeat arrives (by watch, milliseconds after it was
//! written), the difference between its wall time and ours is an observation of
//! the offset between the two clocks. Our skew is estimated against the cluster:
//! minus the median of the offsets to every other instance, with our own (zero)
//! included; in a cluster of two or fewer, against the leader (the leader then
//! trusts itself). An instance whose estimated skew exceeds the bound refuses to
//! fire and says why; it checks before its first claim and on every claim.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardcron_core::MonoTime;

/// One observation of another instance's clock.
#[derive(Debug, Clone, Copy)]
struct Observation {
    /// Their wall time minus ours, in milliseconds, when their heartbeat arrived.
    offset_ms: i64,
    /// Our wall time then.
    wall: DateTime<Utc>,
    /// Our monotonic time then.
    at: MonoTime,
}

impl Observation {
    /// Their offset now: the observed one, corrected by how far our wall clock
    /// has moved away from our monotonic clock since (a jump of our own clock
    /// shows at once, without waiting for their next heartbeat).
    fn offset_now(&self, now: MonoTime, wall: DateTime<Utc>) -> i64 {
        let elapsed = chrono::Duration::from_std(now.duration_since(self.at)).unwrap_or_default();
        let drift = (wall - (self.wall + elapsed)).num_milliseconds();
        self.offset_ms - drift
    }
}

/// The guard's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkewStatus {
    /// Within the bound (estimated skew in ms, positive = our clock is ahead).
    Ok {
        /// Estimated skew.
        skew_ms: i64,
    },
    /// Beyond the bound: this instance must not fire.
    TooFar {
        /// Estimated skew.
        skew_ms: i64,
        /// The bound.
        bound_ms: i64,
    },
    /// Other instances exist but none of their heartbeats has been seen yet.
    Unknown,
}

impl SkewStatus {
    /// Whether firing is allowed.
    pub fn allows_firing(&self) -> bool {
        matches!(self, SkewStatus::Ok { .. })
    }
}

impl std::fmt::Display for SkewStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkewStatus::Ok { skew_ms } => write!(f, "clock within bounds (skew {skew_ms} ms)"),
            SkewStatus::TooFar { skew_ms, bound_ms } => write!(
                f,
                "this instance's clock is {skew_ms} ms off the cluster's (bound {bound_ms} ms); \
                 refusing to fire until it is corrected"
            ),
            SkewStatus::Unknown => f.write_str("clock skew not yet known (no heartbeat seen)"),
        }
    }
}

/// Observations of the other instances' clocks.
#[derive(Debug, Default)]
pub struct SkewGuard {
    seen: HashMap<String, Observation>,
    last_heartbeat: HashMap<String, DateTime<Utc>>,
}

impl SkewGuard {
    /// Record that instance `id`'s heartbeat `heartbeat` arrived when our wall
    /// clock read `now` (only new heartbeats count).
    pub fn observe(
        &mut self,
        id: &str,
        heartbeat: DateTime<Utc>,
        now: DateTime<Utc>,
        at: MonoTime,
    ) {
        if self.last_heartbeat.get(id) == Some(&heartbeat) {
            return;
        }
        self.last_heartbeat.insert(id.to_string(), heartbeat);
        self.seen.insert(
            id.to_string(),
            Observation {
                offset_ms: (heartbeat - now).num_milliseconds(),
                wall: now,
                at,
            },
        );
    }

    /// Forget instances that are gone.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.seen.retain(|id, _| live(id));
        self.last_heartbeat.retain(|id, _| live(id));
    }

    /// The verdict. `others` are the live instances other than us, `leader` the
    /// leader's id (None if unknown, Some(ours) if we lead); `now` and `wall` are
    /// our monotonic and wall clocks now; observations older than `max_age` are
    /// ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn status(
        &self,
        others: &[String],
        me: &str,
        leader: Option<&str>,
        now: MonoTime,
        wall: DateTime<Utc>,
        max_age: Duration,
        bound: Duration,
    ) -> SkewStatus {
        let bound_ms = i64::try_from(bound.as_millis()).unwrap_or(i64::MAX);
        if others.is_empty() {
            return SkewStatus::Ok { skew_ms: 0 };
        }
        let fresh = |id: &str| {
            self.seen
                .get(id)
                .filter(|o| now.duration_since(o.at) <= max_age)
                .map(|o| o.offset_now(now, wall))
        };
        let offset = if others.len() < 2 {
            match leader {
                Some(l) if l == me => return SkewStatus::Ok { skew_ms: 0 },
                Some(l) => match fresh(l) {
                    Some(o) => o,
                    None => return SkewStatus::Unknown,
                },
                None => return SkewStatus::Unknown,
            }
        } else {
            let mut offsets: Vec<i64> = others.iter().filter_map(|id| fresh(id)).collect();
            if offsets.is_empty() {
                return SkewStatus::Unknown;
            }
            offsets.push(0);
            offsets.sort_unstable();
            offsets[offsets.len() / 2]
        };
        let skew_ms = -offset;
        if skew_ms.abs() > bound_ms {
            SkewStatus::TooFar { skew_ms, bound_ms }
        } else {
            SkewStatus::Ok { skew_ms }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    #[test]
    fn an_instance_ahead_of_the_majority_sees_itself_ahead() {
        let mut g = SkewGuard::default();
        let at = MonoTime::ZERO;
        // We are 300 s ahead: the others' heartbeats look 300 s old.
        g.observe("b", t(0), t(300), at);
        g.observe("c", t(0), t(300), at);
        let others = vec!["b".to_string(), "c".to_string()];
        let s = g.status(
            &others,
            "a",
            Some("b"),
            at,
            t(300),
            Duration::from_secs(10),
            Duration::from_secs(2),
        );
        assert_eq!(
            s,
            SkewStatus::TooFar {
                skew_ms: 300_000,
                bound_ms: 2000
            }
        );
        assert!(!s.allows_firing());
    }

    #[test]
    fn one_skewed_peer_does_not_fence_the_majority() {
        let mut g = SkewGuard::default();
        let at = MonoTime::ZERO;
        g.observe("b", t(300), t(0), at); // b is ahead
        g.observe("c", t(0), t(0), at);
        let others = vec!["b".to_string(), "c".to_string()];
        let s = g.status(
            &others,
            "a",
            None,
            at,
            t(0),
            Duration::from_secs(10),
            Duration::from_secs(2),
        );
        assert_eq!(s, SkewStatus::Ok { skew_ms: 0 });
    }

    #[test]
    fn two_instances_compare_with_the_leader_and_stale_observations_expire() {
        let mut g = SkewGuard::default();
        g.observe("lead", t(0), t(-300), MonoTime::ZERO); // we are behind
        let others = vec!["lead".to_string()];
        let bound = Duration::from_secs(2);
        let s = g.status(
            &others,
            "a",
            Some("lead"),
            MonoTime::ZERO,
            t(-300),
            Duration::from_secs(10),
            bound,
        );
        assert_eq!(
            s,
            SkewStatus::TooFar {
                skew_ms: -300_000,
                bound_ms: 2000
            }
        );
        // As leader we trust ourselves.
        let s = g.status(
            &others,
            "a",
            Some("a"),
            MonoTime::ZERO,
            t(-300),
            Duration::from_secs(10),
            bound,
        );
        assert!(s.allows_firing());
        let later = MonoTime::from_duration(Duration::from_secs(60));
        let s = g.status(
            &others,
            "a",
            Some("lead"),
            later,
            t(-240),
            Duration::from_secs(10),
            bound,
        );
        assert_eq!(s, SkewStatus::Unknown);
    }

    #[test]
    fn a_jump_of_our_own_clock_shows_before_the_next_heartbeat() {
        let mut g = SkewGuard::default();
        g.observe("b", t(0), t(0), MonoTime::ZERO);
        g.observe("c", t(0), t(0), MonoTime::ZERO);
        let others = vec!["b".to_string(), "c".to_string()];
        let one_s = MonoTime::from_duration(Duration::from_secs(1));
        let status = |wall| {
            g.status(
                &others,
                "a",
                Some("b"),
                one_s,
                wall,
                Duration::from_secs(10),
                Duration::from_secs(2),
            )
        };
        // One second later by both clocks: fine.
        assert_eq!(status(t(1)), SkewStatus::Ok { skew_ms: 0 });
        // Our wall clock jumped 5 minutes ahead within that second.
        assert_eq!(
            status(t(301)),
            SkewStatus::TooFar {
                skew_ms: 300_000,
                bound_ms: 2000
            }
        );
    }
}
