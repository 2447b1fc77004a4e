//! What a job receives when it runs ([`ShardingContext`]) and what the history keeps
//! about each run ([`ExecutionRecord`]).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why an execution happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionSource {
    /// A fire of the schedule, on time.
    Normal,
    /// A fire that could not run on time and ran later under the misfire policy.
    Misfire,
    /// A re-run of a fire whose holder died.
    Failover,
    /// A further attempt after a failed attempt.
    Retry,
    /// A trigger requested through the API, the CLI or the console.
    Manual,
}

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Claimed and started, not finished.
    Running,
    /// Finished without error.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped because it ran past its timeout.
    TimedOut,
    /// Stopped by a cancel request, a shutdown or a self-fence.
    Cancelled,
    /// Its holder died or was fenced before it finished; its outcome is unknown.
    Lost,
    /// The fire did not run; the record says why.
    Skipped,
}

impl ExecutionStatus {
    /// Whether the execution has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecutionStatus::Running)
    }
}

macro_rules! upper_enum_text {
    ($ty:ty, $what:literal, [$($variant:ident => $text:literal),+ $(,)?]) => {
        impl $ty {
            /// The upper-case name used in history, environment variables and the API.
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_uppercase().as_str() {
                    $($text => Ok(<$ty>::$variant),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " {:?}, expected one of {}"),
                        s,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

upper_enum_text!(ExecutionSource, "source", [
    Normal => "NORMAL", Misfire => "MISFIRE", Failover => "FAILOVER", Retry => "RETRY", Manual => "MANUAL",
]);
upper_enum_text!(ExecutionStatus, "status", [
    Running => "RUNNING", Succeeded => "SUCCEEDED", Failed => "FAILED", TimedOut => "TIMED_OUT",
    Cancelled => "CANCELLED", Lost => "LOST", Skipped => "SKIPPED",
]);

/// Why a fire did not run (the reason on a SKIPPED record).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The misfire policy (`skip`, or `fire_once`/`catch_up` past their allowance)
    /// dropped the fire.
    MisfirePolicy,
    /// The previous run of the item was still going.
    StillRunning,
    /// The job or the item was disabled.
    Disabled,
    /// No live instance matches the job's labels.
    NoEligibleInstance,
    /// The instance's clock was too far from the cluster's.
    ClockSkew,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::MisfirePolicy => "misfire_policy",
            SkipReason::StillRunning => "still_running",
            SkipReason::Disabled => "disabled",
            SkipReason::NoEligibleInstance => "no_eligible_instance",
            SkipReason::ClockSkew => "clock_skew",
        })
    }
}

/// Everything a job is told about the run it is asked to do. Scripts receive the
/// same fields as `SHARDCRON_*` environment variables and as one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardingContext {
    /// Job name.
    pub job: String,
    /// This run's sharding item, `0..total`.
    pub item: u32,
    /// Number of sharding items of the job.
    pub total: u32,
    /// The parameter configured for this item in `shard_params`, or empty.
    pub item_param: String,
    /// The job's `param`, or empty.
    pub param: String,
    /// The scheduled fire time (not the time the run started).
    pub fire_time: DateTime<Utc>,
    /// Unique id of this execution.
    pub execution_id: String,
    /// Identity of the instance running it.
    pub instance: String,
    /// The fencing token: increases with every claim of this item.
    pub token: i64,
    /// Why this run happened.
    pub source: ExecutionSource,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
}

impl ShardingContext {
    /// The environment variables a script job receives (DESIGN.md section 9).
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SHARDCRON_JOB", self.job.clone()),
            ("SHARDCRON_ITEM", self.item.to_string()),
            ("SHARDCRON_TOTAL", self.total.to_string()),
            ("SHARDCRON_ITEM_PARAM", self.item_param.clone()),
            ("SHARDCRON_PARAM", self.param.clone()),
            (
                "SHARDCRON_FIRE_TIME",
                self.fire_time
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
            ("SHARDCRON_EXECUTION_ID", self.execution_id.clone()),
            ("SHARDCRON_INSTANCE", self.instance.clone()),
            ("SHARDCRON_TOKEN", self.token.to_string()),
            ("SHARDCRON_SOURCE", self.source.to_string()),
            ("SHARDCRON_ATTEMPT", self.attempt.to_string()),
        ]
    }
}

/// One row of the execution history: one item of one fire (or, for SKIPPED, possibly
/// a range of fires of one item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// Unique id.
    pub id: String,
    /// Job name.
    pub job: String,
    /// Sharding item.
    pub item: u32,
    /// Number of items the job had at this fire.
    pub total: u32,
    /// Scheduled fire time (for a SKIPPED range, the first skipped fire).
    pub fire_time: DateTime<Utc>,
    /// For a SKIPPED record covering several fires: the last skipped fire.
    pub fire_time_end: Option<DateTime<Utc>>,
    /// For a SKIPPED record: how many fires it covers.
    pub skipped_count: Option<u32>,
    /// When the run started (the record's creation for SKIPPED).
    pub started_at: DateTime<Utc>,
    /// When the run ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Identity of the instance (per process start).
    pub instance: String,
    /// Host name of the instance.
    pub host: String,
    /// Why it ran.
    pub source: ExecutionSource,
    /// Where it is.
    pub status: ExecutionStatus,
    /// For SKIPPED: why.
    pub skip_reason: Option<SkipReason>,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
    /// Fencing token of the claim (0 for SKIPPED records, which claim nothing).
    pub token: i64,
    /// For FAILED, TIMED_OUT, CANCELLED and LOST: why.
    pub cause: Option<String>,
    /// The last part of the run's output.
    pub output: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_explained() {
        for s in ExecutionSource::ALL {
            assert_eq!(s.as_str().parse::<ExecutionSource>(), Ok(*s));
        }
        for s in ExecutionStatus::ALL {
            assert_eq!(s.as_str().parse::<ExecutionStatus>(), Ok(*s));
            assert_eq!(
                serde_json::to_string(s).ok(),
                Some(format!("\"{}\"", s.as_str()))
            );
        }
        let err = "DONE".parse::<ExecutionStatus>().err().unwrap_or_default();
        assert!(err.contains("unknown status \"DONE\""), "{err}");
        assert!(err.contains("TIMED_OUT"), "{err}");
    }

    #[test]
    fn context_env_has_every_contract_variable() {
        let ctx = ShardingContext {
            job: "orders".into(),
            item: 3,
            total: 8,
            item_param: "eu".into(),
            param: "p".into(),
            fire_time: DateTime::parse_from_rfc3339("2026-03-01T10:00:05Z")
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_default(),
            execution_id: "e1".into(),
            instance: "i1".into(),
            token: 42,
            source: ExecutionSource::Failover,
            attempt: 2,
        };
        let env: std::collections::HashMap<_, _> = ctx.env_vars().into_iter().collect();
        assert_eq!(env["SHARDCRON_ITEM"], "3");
        assert_eq!(env["SHARDCRON_FIRE_TIME"], "2026-03-01T10:00:05Z");
        assert_eq!(env["SHARDCRON_TOKEN"], "42");
        assert_eq!(env["SHARDCRON_SOURCE"], "FAILOVER");
        assert_eq!(env.len(), 11);
    }
}
