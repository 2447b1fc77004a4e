//! When a job fires.
//!
//! SKELETON: the public API below is fixed; bodies are being implemented.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// Why a schedule was refused. Messages do not name the job field; the job
/// validator prefixes them with `cron:`, `tz:`, `every:` and so on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression could not be parsed.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression as given.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not an IANA zone name.
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\" or \"UTC\")")]
    TimeZone(String),
    /// A fixed rate or delay of zero.
    #[error("must be greater than zero")]
    ZeroInterval,
}

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    tz: Tz,
}

impl CronSchedule {
    /// Parse `expr` (5, 6 or 7 fields) in zone `tz` (UTC when `None`).
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let _ = (expr, tz);
        todo!()
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first fire instant strictly after `after`, or `None` if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = after;
        todo!()
    }
}

/// Parse an IANA time zone name.
pub fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    let _ = name;
    todo!()
}

/// A job's schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Cron expression in a time zone.
    Cron(CronSchedule),
    /// Fixed rate: fires at `anchor + k * interval`, k = 0, 1, 2, ...
    Every(Duration),
    /// Fixed delay after the item's previous completion.
    Delay(Duration),
    /// Once, at this instant.
    At(DateTime<Utc>),
    /// Only when triggered through the API, the CLI or the console.
    Manual,
}

impl Schedule {
    /// The first fire instant strictly after `after`. `anchor` is the job's persisted
    /// start instant, used by `Every` only. `Delay` and `Manual` have no calendar
    /// and return `None` (see [`Schedule::next_delay_fire`]).
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = (after, anchor);
        todo!()
    }

    /// For `Delay`: the fire that follows a completion at `completed`.
    pub fn next_delay_fire(&self, completed: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = completed;
        todo!()
    }
}
