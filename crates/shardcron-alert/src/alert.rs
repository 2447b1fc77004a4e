//! What an alert says: [`AlertKind`] and [`Alert`].

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shardcron_core::execution::SkipReason;
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus};

/// Longest cause an alert carries, in characters; a longer one keeps its start and
/// is marked as cut.
pub const MAX_CAUSE_CHARS: usize = 1000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    /// A run finished with an error.
    Failed,
    /// A run was stopped by its timeout.
    TimedOut,
    /// A fire was skipped or ran late under the misfire policy.
    Misfire,
    /// A fire was re-run on another instance because its holder died.
    Failover,
    /// A run's holder died or was fenced; its outcome is unknown.
    Lost,
}

impl AlertKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [AlertKind] = &[
        AlertKind::Failed,
        AlertKind::TimedOut,
        AlertKind::Misfire,
        AlertKind::Failover,
        AlertKind::Lost,
    ];

    /// The upper-case name used in payloads: `FAILED`, `TIMED_OUT`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Failed => "FAILED",
            AlertKind::TimedOut => "TIMED_OUT",
            AlertKind::Misfire => "MISFIRE",
            AlertKind::Failover => "FAILOVER",
            AlertKind::Lost => "LOST",
        }
    }

    /// The lower-case name used in config files (`on = ["failed", "timed_out"]`).
    pub fn config_name(self) -> &'static str {
        match self {
            AlertKind::Failed => "failed",
            AlertKind::TimedOut => "timed_out",
            AlertKind::Misfire => "misfire",
            AlertKind::Failover => "failover",
            AlertKind::Lost => "lost",
        }
    }

    /// Whether the default log level of this kind is `error` (else `warn`).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            AlertKind::Failed | AlertKind::TimedOut | AlertKind::Lost
        )
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlertKind {
    type Err = String;

    /// Either name, in any case.
    fn from_str(s: &str) -> Result<AlertKind, String> {
        AlertKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = AlertKind::ALL.iter().map(|k| k.config_name()).collect();
                format!(
                    "unknown alert kind {s:?}, expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// One event about one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// What happened.
    pub kind: AlertKind,
    /// Job name.
    pub job: String,
    /// Sharding item.
    pub item: u32,
    /// Scheduled fire time.
    pub fire_time: DateTime<Utc>,
    /// Identity of the instance the execution belongs to.
    pub instance: String,
    /// Execution id.
    pub execution_id: String,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
    /// Why; at most [`MAX_CAUSE_CHARS`] characters once queued (see
    /// [`Alert::bound_cause`]).
    pub cause: String,
}

impl Alert {
    /// The alert a history record calls for, if any:
    ///
    /// - FAILED, TIMED_OUT and LOST records give alerts of those kinds;
    /// - a SKIPPED record (other than for a disabled job) gives MISFIRE;
    /// - a RUNNING record started late by the misfire policy gives MISFIRE, and one
    ///   started by failover gives FAILOVER;
    /// - anything else (success, cancel, an ordinary start) gives none.
    pub fn from_record(record: &ExecutionRecord) -> Option<Alert> {
        let cause = record.cause.clone().unwrap_or_default();
        let (kind, cause) = match record.status {
            ExecutionStatus::Failed => (AlertKind::Failed, cause),
            ExecutionStatus::TimedOut => (AlertKind::TimedOut, cause),
            ExecutionStatus::Lost => (AlertKind::Lost, cause),
            ExecutionStatus::Skipped => match &record.skip_reason {
                Some(SkipReason::Disabled) => return None,
                reason => {
                    let count = record.skipped_count.unwrap_or(1);
                    let mut text = format!("{count} fire(s) skipped");
                    if let Some(r) = reason {
                        text.push_str(&format!(" ({r})"));
                    }
                    if let Some(end) = record.fire_time_end {
                        text.push_str(&format!(", last at {}", rfc3339(end)));
                    }
                    if !cause.is_empty() {
                        text.push_str(": ");
                        text.push_str(&cause);
                    }
                    (AlertKind::Misfire, text)
                }
            },
            ExecutionStatus::Running => match record.source {
                ExecutionSource::Misfire => (
                    AlertKind::Misfire,
                    format!(
                        "fire ran late under the misfire policy, started {}",
                        rfc3339(record.started_at)
                    ),
                ),
                ExecutionSource::Failover => (
                    AlertKind::Failover,
                    format!("fire re-run by failover on {}", record.instance),
                ),
                _ => return None,
            },
            ExecutionStatus::Succeeded | ExecutionStatus::Cancelled => return None,
        };
        let mut alert = Alert {
            kind,
            job: record.job.clone(),
            item: record.item,
            fire_time: record.fire_time,
            instance: record.instance.clone(),
            execution_id: record.id.clone(),
            attempt: record.attempt,
            cause,
        };
        alert.bound_cause();
        Some(alert)
    }

    /// Cuts the cause to [`MAX_CAUSE_CHARS`] characters, marking the cut.
    pub fn bound_cause(&mut self) {
        if let Some((at, _)) = self.cause.char_indices().nth(MAX_CAUSE_CHARS) {
            self.cause.truncate(at);
            self.cause.push_str(" …[cut]");
        }
    }

    /// One line for people, without links: `shardcron FAILED: job "x" item 3, fire
    /// 2026-03-01T10:00:05Z, instance i1, attempt 2, execution e1: cause`. Control
    /// characters of the cause become spaces.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "shardcron {}: job {:?} item {}, fire {}, instance {}, attempt {}, execution {}",
            self.kind,
            self.job,
            self.item,
            rfc3339(self.fire_time),
            self.instance,
            self.attempt,
            self.execution_id
        );
        if !self.cause.is_empty() {
            s.push_str(": ");
            s.extend(
                self.cause
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c }),
            );
        }
        s
    }

    /// Several lines for chat messages and mail bodies, one field per line.
    pub fn text(&self) -> String {
        let mut s = format!(
            "shardcron alert: {}\njob: {}\nitem: {}\nfire time: {}\ninstance: {}\nexecution: {}\nattempt: {}",
            self.kind,
            self.job,
            self.item,
            rfc3339(self.fire_time),
            self.instance,
            self.execution_id,
            self.attempt
        );
        if !self.cause.is_empty() {
            s.push_str("\ncause: ");
            s.push_str(&self.cause);
        }
        s
    }

    /// The JSON a generic webhook receives: every field (`fire_time` in RFC 3339,
    /// `kind` upper-case) plus `summary`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "job": self.job,
            "item": self.item,
            "fire_time": rfc3339(self.fire_time),
            "instance": self.instance,
            "execution_id": self.execution_id,
            "attempt": self.attempt,
            "cause": self.cause,
            "summary": self.summary(),
        })
    }
}

pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: ExecutionStatus, source: ExecutionSource) -> ExecutionRecord {
        let t = DateTime::parse_from_rfc3339("2026-03-01T10:00:05Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        ExecutionRecord {
            id: "e1".into(),
            job: "orders".into(),
            item: 3,
            total: 4,
            fire_time: t,
            fire_time_end: None,
            skipped_count: None,
            started_at: t,
            ended_at: None,
            instance: "i1".into(),
            host: "h".into(),
            source,
            status,
            skip_reason: None,
            attempt: 2,
            token: 7,
            cause: Some("exit code 3".into()),
            output: None,
        }
    }

    #[test]
    fn records_map_to_kinds() {
        use ExecutionSource as S;
        use ExecutionStatus as St;
        let kind = |st, so| Alert::from_record(&record(st, so)).map(|a| a.kind);
        assert_eq!(kind(St::Failed, S::Failover), Some(AlertKind::Failed));
        assert_eq!(kind(St::TimedOut, S::Normal), Some(AlertKind::TimedOut));
        assert_eq!(kind(St::Lost, S::Normal), Some(AlertKind::Lost));
        assert_eq!(kind(St::Skipped, S::Normal), Some(AlertKind::Misfire));
        assert_eq!(kind(St::Running, S::Misfire), Some(AlertKind::Misfire));
        assert_eq!(kind(St::Running, S::Failover), Some(AlertKind::Failover));
        assert_eq!(kind(St::Running, S::Normal), None);
        assert_eq!(kind(St::Succeeded, S::Normal), None);
        assert_eq!(kind(St::Cancelled, S::Normal), None);
        let mut r = record(St::Skipped, S::Normal);
        r.skip_reason = Some(SkipReason::Disabled);
        assert_eq!(Alert::from_record(&r), None);
        r.skip_reason = Some(SkipReason::StillRunning);
        r.skipped_count = Some(5);
        let a = Alert::from_record(&r).unwrap_or_else(|| panic!("no alert"));
        assert!(
            a.cause.starts_with("5 fire(s) skipped (still_running)"),
            "{}",
            a.cause
        );
    }

    #[test]
    fn fields_and_summary() {
        let a = Alert::from_record(&record(ExecutionStatus::Failed, ExecutionSource::Retry))
            .unwrap_or_else(|| panic!("no alert"));
        assert_eq!(
            a.summary(),
            "shardcron FAILED: job \"orders\" item 3, fire 2026-03-01T10:00:05Z, instance i1, attempt 2, execution e1: exit code 3"
        );
        let j = a.to_json();
        assert_eq!(j["kind"], "FAILED");
        assert_eq!(j["fire_time"], "2026-03-01T10:00:05Z");
        assert_eq!(j["attempt"], 2);
        assert!(a.text().contains("\ncause: exit code 3"));
    }

    #[test]
    fn cause_is_bounded() {
        let mut a = Alert::from_record(&record(ExecutionStatus::Failed, ExecutionSource::Normal))
            .unwrap_or_else(|| panic!("no alert"));
        a.cause = "é".repeat(MAX_CAUSE_CHARS + 50);
        a.bound_cause();
        assert!(a.cause.ends_with(" …[cut]"));
        assert_eq!(
            a.cause.chars().count(),
            MAX_CAUSE_CHARS + " …[cut]".chars().count()
        );
        let short = "x".repeat(MAX_CAUSE_CHARS);
        a.cause = short.clone();
        a.bound_cause();
        assert_eq!(a.cause, short);
    }

    #[test]
    fn kind_names() {
        for k in AlertKind::ALL {
            assert_eq!(k.config_name().parse::<AlertKind>().ok(), Some(*k));
            assert_eq!(k.as_str().parse::<AlertKind>().ok(), Some(*k));
        }
        let e = "oops".parse::<AlertKind>().err().unwrap_or_default();
        assert!(e.contains("timed_out"), "{e}");
    }
}
