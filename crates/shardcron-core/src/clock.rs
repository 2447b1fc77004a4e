//! The one source of time for shardcron.
//!
//! Two kinds of time are kept apart on purpose: *wall* time (UTC, used for fire
//! instants and shown to people) and *monotonic* time (used for lease deadlines and
//! timeouts, never goes backwards). Tests use [`ManualClock`] to pause, advance and
//! skew either one.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// A point on a monotonic clock, measured from an arbitrary per-clock origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(Duration);

impl MonoTime {
    /// The origin of the clock.
    pub const ZERO: MonoTime = MonoTime(Duration::ZERO);

    /// A time `d` after the origin.
    pub fn from_duration(d: Duration) -> Self {
        MonoTime(d)
    }

    /// Time elapsed since the origin.
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        MonoTime(self.0.saturating_add(d))
    }

    /// `self - d`, saturating at the origin.
    pub fn saturating_sub(self, d: Duration) -> Self {
        MonoTime(self.0.saturating_sub(d))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn duration_since(self, earlier: MonoTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for MonoTime {
    type Output = MonoTime;
    fn add(self, rhs: Duration) -> MonoTime {
        self.saturating_add(rhs)
    }
}

/// Where every component takes its time from.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Current wall-clock time in UTC.
    fn wall(&self) -> DateTime<Utc>;
    /// Current monotonic time.
    fn mono(&self) -> MonoTime;
}

/// A shared, dynamically typed clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clocks of the machine.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }

    /// A shared system clock.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn mono(&self) -> MonoTime {
        MonoTime(self.origin.elapsed())
    }
}

#[derive(Debug)]
struct ManualState {
    wall: DateTime<Utc>,
    mono: MonoTime,
    skew: chrono::Duration,
}

/// A clock that only moves when told to. Cloning shares the same time.
///
/// `advance` moves both wall and monotonic time; `set_skew` shifts only the wall time
/// this clock reports (as a misconfigured NTP would), leaving monotonic time alone.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

impl ManualClock {
    /// A clock reading `wall`, with monotonic time at its origin.
    pub fn new(wall: DateTime<Utc>) -> Self {
        ManualClock {
            state: Arc::new(Mutex::new(ManualState {
                wall,
                mono: MonoTime::ZERO,
                skew: chrono::Duration::zero(),
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ManualState) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Move wall and monotonic time forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.with(|s| {
            s.mono = s.mono.saturating_add(d);
            s.wall += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        });
    }

    /// Shift the reported wall time by `skew` (positive: ahead) without moving
    /// monotonic time.
    pub fn set_skew(&self, skew: chrono::Duration) {
        self.with(|s| s.skew = skew);
    }
}

impl Clock for ManualClock {
    fn wall(&self) -> DateTime<Utc> {
        self.with(|s| s.wall + s.skew)
    }
    fn mono(&self) -> MonoTime {
        self.with(|s| s.mono)
    }
}

/// The system clock with an adjustable offset on its wall time only, as a machine
/// with a misconfigured NTP would have. For tests of the clock-skew guard.
#[derive(Debug, Clone, Default)]
pub struct SkewedClock {
    inner: SystemClock,
    skew: Arc<Mutex<chrono::Duration>>,
}

impl SkewedClock {
    /// A system clock with no skew yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the offset added to wall time (positive: ahead).
    pub fn set_skew(&self, skew: chrono::Duration) {
        match self.skew.lock() {
            Ok(mut g) => *g = skew,
            Err(p) => *p.into_inner() = skew,
        }
    }
}

impl Clock for SkewedClock {
    fn wall(&self) -> DateTime<Utc> {
        let skew = match self.skew.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        self.inner.wall() + skew
    }
    fn mono(&self) -> MonoTime {
        self.inner.mono()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advances_and_skews_wall_only() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        let c = ManualClock::new(start);
        c.advance(Duration::from_secs(5));
        assert_eq!(c.mono(), MonoTime::from_duration(Duration::from_secs(5)));
        assert_eq!(c.wall(), start + chrono::Duration::seconds(5));
        c.set_skew(chrono::Duration::minutes(-5));
        assert_eq!(
            c.wall(),
            start + chrono::Duration::seconds(5) - chrono::Duration::minutes(5)
        );
        assert_eq!(c.mono(), MonoTime::from_duration(Duration::from_secs(5)));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.mono();
        let b = c.mono();
        assert!(b >= a);
    }
}
