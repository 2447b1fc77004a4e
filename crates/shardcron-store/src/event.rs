//! What the runtime tells the history ([`HistoryEvent`]), how events are checked
//! before they are queued, and how several events about one execution merge into
//! one row (the same rule the SQL upserts apply, so that the order in which events
//! reach the database does not change the result).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shardcron_core::{ExecutionRecord, ExecutionStatus};

use crate::id::MAX_ID_LEN;
use crate::{Result, StoreError};

/// Longest job, instance and host name, in characters.
pub const MAX_NAME_LEN: usize = 255;
/// Longest stored output tail, in bytes; longer output keeps its end.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Longest stored failure cause, in bytes; longer causes keep their start.
pub const MAX_CAUSE_BYTES: usize = 64 << 10;
/// Longest stored transition message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 10;

/// One thing that happened to an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// The whole record: a new execution (usually RUNNING), a SKIPPED record, or
    /// a complete record written at once (a LOST record from the failover path).
    /// Upserted by id; also adds a transition to the record's status.
    Record(ExecutionRecord),
    /// A change of status of an execution recorded before (or whose record is
    /// still on its way: the update is kept and merged when the record lands).
    Update(ExecutionUpdate),
}

impl HistoryEvent {
    /// The execution this event is about.
    pub fn execution_id(&self) -> &str {
        match self {
            HistoryEvent::Record(r) => &r.id,
            HistoryEvent::Update(u) => &u.id,
        }
    }
}

/// A change of status, with what is known at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionUpdate {
    /// The execution.
    pub id: String,
    /// The new status.
    pub status: ExecutionStatus,
    /// When the change happened (the transition's time).
    pub at: DateTime<Utc>,
    /// When the run ended, for terminal statuses.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it failed, timed out, was cancelled or lost.
    pub cause: Option<String>,
    /// The last part of the run's output.
    pub output: Option<String>,
    /// A note for the transition (defaults to the cause).
    pub message: Option<String>,
}

impl ExecutionUpdate {
    /// A terminal update at `at` with `ended_at = at`.
    pub fn finished(id: impl Into<String>, status: ExecutionStatus, at: DateTime<Utc>) -> Self {
        ExecutionUpdate {
            id: id.into(),
            status,
            at,
            ended_at: Some(at),
            cause: None,
            output: None,
            message: None,
        }
    }
}

/// Microseconds since the Unix epoch: how every time is stored.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The stored microseconds back as a time (out-of-range values clamp, which only
/// a hand-edited row can produce).
pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How strongly a status claims to be the last word: a known outcome beats LOST
/// (the holder finished after all), LOST beats RUNNING, and within a rank the later
/// time wins.
pub(crate) fn status_rank(s: ExecutionStatus) -> i64 {
    match s {
        ExecutionStatus::Running => 0,
        ExecutionStatus::Lost => 1,
        _ => 2,
    }
}

const ORDER_TIME_BITS: u32 = 52;

/// Rank and time in one sortable integer (`rank << 52 | micros`), so that every
/// dialect can compare "which status wins" on one column. 52 bits of microseconds
/// reach the year 2112; times outside clamp.
pub(crate) fn status_order(s: ExecutionStatus, at_micros: i64) -> i64 {
    let t = at_micros.clamp(0, (1i64 << ORDER_TIME_BITS) - 1);
    (status_rank(s) << ORDER_TIME_BITS) | t
}

/// Cut `s` to at most `max` bytes on a char boundary, keeping the start.
pub(crate) fn keep_start(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Cut `s` to at most `max` bytes on a char boundary, keeping the end.
fn keep_end(s: &mut String, max: usize) {
    if s.len() > max {
        let mut start = s.len() - max;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s.drain(..start);
    }
}

/// PostgreSQL's text cannot hold NUL; a script's output can.
pub(crate) fn no_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

fn clean_text(s: &mut Option<String>, max: usize, keep_tail: bool) {
    if let Some(s) = s {
        no_nul(s);
        if keep_tail {
            keep_end(s, max);
        } else {
            keep_start(s, max);
        }
    }
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.chars().count() > MAX_ID_LEN {
        return Err(StoreError::InvalidEvent(format!(
            "execution id must be 1-{MAX_ID_LEN} characters, got {} ({id:.80?})",
            id.chars().count()
        )));
    }
    if id.contains('\0') {
        return Err(StoreError::InvalidEvent(format!(
            "execution id {id:?} contains a NUL character"
        )));
    }
    Ok(())
}

fn check_name(what: &str, id: &str, s: &str) -> Result<()> {
    if s.chars().count() > MAX_NAME_LEN || s.contains('\0') {
        return Err(StoreError::InvalidEvent(format!(
            "execution {id}: {what} must be at most {MAX_NAME_LEN} characters without NUL, \
             got {s:.80?}"
        )));
    }
    Ok(())
}

/// Refuse what no database would take (so that one bad event can never block the
/// queue or the spool), and trim long text to the stored limits.
pub(crate) fn validate(event: &mut HistoryEvent) -> Result<()> {
    match event {
        HistoryEvent::Record(r) => {
            check_id(&r.id)?;
            if r.job.is_empty() {
                return Err(StoreError::InvalidEvent(format!(
                    "execution {}: job is empty",
                    r.id
                )));
            }
            check_name("job", &r.id, &r.job)?;
            check_name("instance", &r.id, &r.instance)?;
            check_name("host", &r.id, &r.host)?;
            clean_text(&mut r.cause, MAX_CAUSE_BYTES, false);
            clean_text(&mut r.output, MAX_OUTPUT_BYTES, true);
        }
        HistoryEvent::Update(u) => {
            check_id(&u.id)?;
            clean_text(&mut u.cause, MAX_CAUSE_BYTES, false);
            clean_text(&mut u.output, MAX_OUTPUT_BYTES, true);
            clean_text(&mut u.message, MAX_MESSAGE_BYTES, false);
        }
    }
    Ok(())
}

/// One row of `shardcron_executions` as written: the record's columns plus
/// `has_record` (0 for a row made by an update whose record has not landed) and
/// `status_order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) has_record: bool,
    pub(crate) job: String,
    pub(crate) item: i64,
    pub(crate) total: i64,
    pub(crate) fire_time: i64,
    pub(crate) fire_time_end: Option<i64>,
    pub(crate) skipped_count: Option<i64>,
    pub(crate) started_at: i64,
    pub(crate) ended_at: Option<i64>,
    pub(crate) instance: String,
    pub(crate) host: String,
    pub(crate) source: &'static str,
    pub(crate) status: &'static str,
    pub(crate) skip_reason: Option<String>,
    pub(crate) attempt: i64,
    pub(crate) token: i64,
    pub(crate) cause: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) status_order: i64,
}

/// One row of `shardcron_transitions` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransitionRow {
    pub(crate) execution_id: String,
    pub(crate) state: &'static str,
    pub(crate) at: i64,
    pub(crate) message: Option<String>,
}

/// The time a record's status refers to: its end if it has one, else its start.
fn record_status_time(r: &ExecutionRecord) -> i64 {
    micros(r.ended_at.unwrap_or(r.started_at))
}

fn record_message(r: &ExecutionRecord) -> Option<String> {
    if let Some(reason) = &r.skip_reason {
        let mut m = reason.to_string();
        if let Some(n) = r.skipped_count.filter(|n| *n > 1) {
            m.push_str(&format!(" ({n} fires)"));
        }
        return Some(m);
    }
    let mut m = r.cause.clone();
    clean_text(&mut m, MAX_MESSAGE_BYTES, false);
    m
}

impl Row {
    fn from_record(r: &ExecutionRecord) -> Row {
        Row {
            id: r.id.clone(),
            has_record: true,
            job: r.job.clone(),
            item: i64::from(r.item),
            total: i64::from(r.total),
            fire_time: micros(r.fire_time),
            fire_time_end: r.fire_time_end.map(micros),
            skipped_count: r.skipped_count.map(i64::from),
            started_at: micros(r.started_at),
            ended_at: r.ended_at.map(micros),
            instance: r.instance.clone(),
            host: r.host.clone(),
            source: r.source.as_str(),
            status: r.status.as_str(),
            skip_reason: r.skip_reason.as_ref().map(ToString::to_string),
            attempt: i64::from(r.attempt),
            token: r.token,
            cause: r.cause.clone(),
            output: r.output.clone(),
            status_order: status_order(r.status, record_status_time(r)),
        }
    }

    /// The row an update makes on its own: identity columns are placeholders
    /// (`has_record = false`) until the record lands.
    fn from_update(u: &ExecutionUpdate) -> Row {
        let at = micros(u.at);
        Row {
            id: u.id.clone(),
            has_record: false,
            job: String::new(),
            item: 0,
            total: 0,
            fire_time: at,
            fire_time_end: None,
            skipped_count: None,
            started_at: at,
            ended_at: u.ended_at.map(micros),
            instance: String::new(),
            host: String::new(),
            source: shardcron_core::ExecutionSource::Normal.as_str(),
            status: u.status.as_str(),
            skip_reason: None,
            attempt: 0,
            token: 0,
            cause: u.cause.clone(),
            output: u.output.clone(),
            status_order: status_order(u.status, at),
        }
    }

    /// Merge a later-arriving row into this one, exactly as the SQL upsert does:
    /// identity columns come from whichever row has the record (the newer one if
    /// both); status columns from the row with the higher `status_order` (the newer
    /// one on a tie), keeping the other's values where the winner has none.
    pub(crate) fn merge(&mut self, new: Row) {
        let wins = new.status_order >= self.status_order;
        let (win_cause, lose_cause) = (new.cause, self.cause.take());
        let (win_output, lose_output) = (new.output, self.output.take());
        let (win_end, lose_end) = (new.ended_at, self.ended_at.take());
        if wins {
            self.status = new.status;
            self.status_order = new.status_order;
            self.cause = win_cause.or(lose_cause);
            self.output = win_output.or(lose_output);
            self.ended_at = win_end.or(lose_end);
        } else {
            self.cause = lose_cause.or(win_cause);
            self.output = lose_output.or(win_output);
            self.ended_at = lose_end.or(win_end);
        }
        if new.has_record {
            self.has_record = true;
            self.job = new.job;
            self.item = new.item;
            self.total = new.total;
            self.fire_time = new.fire_time;
            self.fire_time_end = new.fire_time_end;
            self.skipped_count = new.skipped_count;
            self.started_at = new.started_at;
            self.instance = new.instance;
            self.host = new.host;
            self.source = new.source;
            self.skip_reason = new.skip_reason;
            self.attempt = new.attempt;
            self.token = new.token;
        }
    }
}

/// The rows a batch of events writes: one execution row per id (merged, in the
/// order ids first appear) and one transition per event, in event order.
pub(crate) fn rows_of<'a>(
    events: impl IntoIterator<Item = &'a HistoryEvent>,
) -> (Vec<Row>, Vec<TransitionRow>) {
    let events = events.into_iter();
    let n = events.size_hint().0;
    let mut rows: Vec<Row> = Vec::with_capacity(n);
    let mut index: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(n);
    let mut transitions = Vec::with_capacity(n);
    for e in events {
        let (row, tr) = match e {
            HistoryEvent::Record(r) => (
                Row::from_record(r),
                TransitionRow {
                    execution_id: r.id.clone(),
                    state: r.status.as_str(),
                    at: record_status_time(r),
                    message: record_message(r),
                },
            ),
            HistoryEvent::Update(u) => (
                Row::from_update(u),
                TransitionRow {
                    execution_id: u.id.clone(),
                    state: u.status.as_str(),
                    at: micros(u.at),
                    message: u.message.clone().or_else(|| {
                        let mut m = u.cause.clone();
                        clean_text(&mut m, MAX_MESSAGE_BYTES, false);
                        m
                    }),
                },
            ),
        };
        transitions.push(tr);
        match index.get(e.execution_id()) {
            Some(&i) => rows[i].merge(row),
            None => {
                index.insert(e.execution_id(), rows.len());
                rows.push(row);
            }
        }
    }
    (rows, transitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcron_core::ExecutionSource;
    use shardcron_core::execution::SkipReason;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("valid time")
    }

    fn running(id: &str) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            job: "j".into(),
            item: 1,
            total: 2,
            fire_time: t(0),
            fire_time_end: None,
            skipped_count: None,
            started_at: t(1),
            ended_at: None,
            instance: "i".into(),
            host: "h".into(),
            source: ExecutionSource::Normal,
            status: ExecutionStatus::Running,
            skip_reason: None,
            attempt: 1,
            token: 7,
            cause: None,
            output: None,
        }
    }

    #[test]
    fn merge_is_order_independent_for_record_and_update() {
        let rec = HistoryEvent::Record(running("a"));
        let mut done = ExecutionUpdate::finished("a", ExecutionStatus::Succeeded, t(5));
        done.output = Some("ok".into());
        let upd = HistoryEvent::Update(done);
        let (a, ta) = rows_of(&[rec.clone(), upd.clone()]);
        let (b, tb) = rows_of(&[upd, rec]);
        assert_eq!(a, b);
        assert_eq!(a[0].status, "SUCCEEDED");
        assert_eq!(a[0].job, "j");
        assert_eq!(a[0].output.as_deref(), Some("ok"));
        assert_eq!(ta.len(), 2);
        assert_eq!(tb.len(), 2);
    }

    #[test]
    fn known_outcome_beats_lost_and_lost_beats_running() {
        let lost = HistoryEvent::Update(ExecutionUpdate {
            cause: Some("holder died".into()),
            ..ExecutionUpdate::finished("a", ExecutionStatus::Lost, t(50))
        });
        let ok = HistoryEvent::Update(ExecutionUpdate::finished(
            "a",
            ExecutionStatus::Succeeded,
            t(10),
        ));
        let (rows, _) = rows_of(&[HistoryEvent::Record(running("a")), lost.clone()]);
        assert_eq!(rows[0].status, "LOST");
        let (rows, _) = rows_of(&[lost, ok]);
        assert_eq!(rows[0].status, "SUCCEEDED");
        assert_eq!(rows[0].cause.as_deref(), Some("holder died"));
    }

    #[test]
    fn validation_refuses_bad_ids_and_trims_text() {
        let mut r = running(&"x".repeat(65));
        assert!(validate(&mut HistoryEvent::Record(r.clone())).is_err());
        r.id = "ok".into();
        r.output = Some(format!("{}\0end", "é".repeat(MAX_OUTPUT_BYTES)));
        let mut e = HistoryEvent::Record(r);
        validate(&mut e).expect("valid");
        let HistoryEvent::Record(r) = e else {
            unreachable!()
        };
        let out = r.output.unwrap_or_default();
        assert!(out.len() <= MAX_OUTPUT_BYTES);
        assert!(out.ends_with("\u{FFFD}end"), "keeps the tail, without NUL");
    }

    #[test]
    fn skipped_range_message_names_reason_and_count() {
        let mut r = running("s");
        r.status = ExecutionStatus::Skipped;
        r.skip_reason = Some(SkipReason::MisfirePolicy);
        r.skipped_count = Some(12);
        let (_, tr) = rows_of(&[HistoryEvent::Record(r)]);
        assert_eq!(tr[0].message.as_deref(), Some("misfire_policy (12 fires)"));
    }
}
