//! Which fires of an item run, and which are recorded as skipped, given the item's
//! persisted last fire, the clock, and the job's misfire policy.
//!
//! A fire is *on time* when it is claimed within the misfire threshold of its
//! scheduled instant. Fires that were missed (the holder was down, the cluster was
//! restarted, the instance was paused) are decided by the policy:
//! - `fire_once` (default): the latest missed fire runs once, with source MISFIRE;
//!   the earlier ones are recorded as one SKIPPED range;
//! - `skip`: every missed fire is recorded as SKIPPED; the next fire runs on time;
//! - `catch_up { max }`: the latest `max` missed fires run in order, with source
//!   MISFIRE; older ones beyond the cap are recorded as one SKIPPED range.
//!
//! The decision is a pure function of persisted state, so every instance that takes
//! over an item decides the same way, and a restart of the whole cluster loses
//! nothing: each due fire ends as run or as recorded skipped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shardcron_core::ExecutionSource;
use shardcron_core::job::MisfirePolicy;
use shardcron_core::schedule::Schedule;

/// Most fires counted one by one in a gap (a cron schedule that fires every second
/// and was missed for weeks); beyond it the skipped count is a lower bound.
pub const MAX_SCAN: u64 = 1_000_000;

/// A range of fires recorded as one SKIPPED record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRange {
    /// First skipped fire.
    pub first: DateTime<Utc>,
    /// Last skipped fire.
    pub last: DateTime<Utc>,
    /// How many fires (at least this many when `capped`).
    pub count: u64,
    /// The count stopped at [`MAX_SCAN`].
    pub capped: bool,
}

/// What to do for one item now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Fires to run now, oldest first, with their source.
    pub run: Vec<(DateTime<Utc>, ExecutionSource)>,
    /// Fires that will not run.
    pub skipped: Option<SkippedRange>,
    /// The next fire after everything decided here (None: the schedule is over).
    pub next: Option<DateTime<Utc>>,
}

/// Fires of `schedule` in `(after, until]`: the first `keep_first` and the last
/// `keep_last` of them, and how many there are in all (capped at [`MAX_SCAN`]).
fn fires_between(
    schedule: &Schedule,
    anchor: DateTime<Utc>,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    keep_last: usize,
) -> (Option<DateTime<Utc>>, Vec<DateTime<Utc>>, u64, bool) {
    if let Schedule::Every(interval) = schedule {
        // Arithmetic: no scan, however long the gap.
        let Some(first) = schedule.next_after(after, anchor) else {
            return (None, Vec::new(), 0, false);
        };
        if first > until {
            return (None, Vec::new(), 0, false);
        }
        let step = i64::try_from(interval.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1);
        let span = (until - first).num_nanoseconds().unwrap_or(i64::MAX);
        let count = u64::try_from(span / step).unwrap_or(0) + 1;
        let mut last = Vec::new();
        let take = (keep_last as u64).min(count);
        for k in (count - take)..count {
            let offset = i64::try_from(k)
                .ok()
                .and_then(|k| k.checked_mul(step))
                .map(chrono::Duration::nanoseconds);
            if let Some(o) = offset {
                last.push(first + o);
            }
        }
        return (Some(first), last, count, false);
    }
    let mut first = None;
    let mut last = std::collections::VecDeque::with_capacity(keep_last + 1);
    let mut count = 0u64;
    let mut at = after;
    while let Some(f) = schedule.next_after(at, anchor) {
        if f > until {
            break;
        }
        first.get_or_insert(f);
        count += 1;
        last.push_back(f);
        if last.len() > keep_last {
            last.pop_front();
        }
        if count >= MAX_SCAN {
            return (first, last.into(), count, true);
        }
        at = f;
    }
    (first, last.into(), count, false)
}

/// Decide what an item does at `now`.
///
/// `last_fire` is the item's persisted last decided fire (claimed or skipped);
/// `None` means the item has never fired, and only fires after `since` (the job's
/// creation or the item's first assignment) are due.
pub fn decide(
    schedule: &Schedule,
    anchor: DateTime<Utc>,
    last_fire: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: MisfirePolicy,
    threshold: Duration,
) -> Decision {
    // Fires strictly after `after` are candidates. A new item starts with the fire
    // at `since` included (an `every` schedule fires at its anchor).
    let after = last_fire.unwrap_or(since - chrono::Duration::nanoseconds(1));
    // Keep the latest missed fires the policy may run, plus a possible on-time one.
    let keep = match policy {
        MisfirePolicy::CatchUp { max } => usize::try_from(max)
            .unwrap_or(usize::MAX)
            .max(1)
            .saturating_add(1),
        _ => 2,
    };
    let (first, last, count, capped) = fires_between(schedule, anchor, after, now, keep);
    let next_after_now = schedule.next_after(now, anchor);
    let Some(first) = first else {
        return Decision {
            run: Vec::new(),
            skipped: None,
            next: next_after_now,
        };
    };
    let threshold = chrono::Duration::from_std(threshold).unwrap_or(chrono::Duration::MAX);
    let latest = last.last().copied().unwrap_or(first);
    // The latest due fire is on time if it is within the threshold; every other
    // due fire was missed and is subject to the policy.
    let on_time = (now - latest <= threshold).then_some(latest);
    let missed_count = count - u64::from(on_time.is_some());
    if missed_count == 0 {
        return Decision {
            run: on_time
                .map(|f| vec![(f, ExecutionSource::Normal)])
                .unwrap_or_default(),
            skipped: None,
            next: next_after_now,
        };
    }
    // The kept tail of the due fires, without the on-time one: the latest missed.
    let mut missed_tail = last.clone();
    if on_time.is_some() {
        missed_tail.pop();
    }
    let mut run: Vec<(DateTime<Utc>, ExecutionSource)> = match policy {
        MisfirePolicy::Skip => Vec::new(),
        // Run once for everything missed: the on-time fire if there is one, else
        // the latest missed fire.
        MisfirePolicy::FireOnce if on_time.is_some() => Vec::new(),
        MisfirePolicy::FireOnce => missed_tail
            .last()
            .map(|f| vec![(*f, ExecutionSource::Misfire)])
            .unwrap_or_default(),
        MisfirePolicy::CatchUp { max } => {
            let keep = usize::try_from(max).unwrap_or(usize::MAX);
            let skip = missed_tail.len().saturating_sub(keep);
            missed_tail[skip..]
                .iter()
                .map(|f| (*f, ExecutionSource::Misfire))
                .collect()
        }
    };
    if let Some(f) = on_time {
        run.push((f, ExecutionSource::Normal));
    }
    let missed_run = run
        .iter()
        .filter(|(_, s)| *s == ExecutionSource::Misfire)
        .count() as u64;
    let skipped = (missed_count > missed_run).then(|| {
        // The skipped fires are the oldest missed ones: from `first` up to the fire
        // before the first one that runs (or the last missed one when none runs).
        let last_skipped = match run.first() {
            None => latest,
            Some((first_run, _)) => prev_fire(schedule, anchor, after, *first_run).unwrap_or(first),
        };
        SkippedRange {
            first,
            last: last_skipped,
            count: missed_count - missed_run,
            capped,
        }
    });
    Decision {
        run,
        skipped,
        next: next_after_now,
    }
}

/// The last fire strictly before `before` (and strictly after `after`).
fn prev_fire(
    schedule: &Schedule,
    anchor: DateTime<Utc>,
    after: DateTime<Utc>,
    before: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if let Schedule::Every(interval) = schedule {
        let step = chrono::Duration::from_std(*interval).ok()?;
        let p = before - step;
        return (p > after).then_some(p);
    }
    let until = before - chrono::Duration::nanoseconds(1);
    let (_, last, _, _) = fires_between(schedule, anchor, after, until, 1);
    last.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcron_core::schedule::CronSchedule;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    const TH: Duration = Duration::from_secs(1);

    fn every(secs: u64) -> Schedule {
        Schedule::Every(Duration::from_secs(secs))
    }

    #[test]
    fn an_on_time_fire_runs_normally() {
        let d = decide(
            &every(10),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:10Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:00:20.300Z"),
            MisfirePolicy::FireOnce,
            TH,
        );
        assert_eq!(
            d.run,
            vec![(t("2026-01-01T00:00:20Z"), ExecutionSource::Normal)]
        );
        assert_eq!(d.skipped, None);
        assert_eq!(d.next, Some(t("2026-01-01T00:00:30Z")));
    }

    #[test]
    fn nothing_due_gives_the_next_fire() {
        let d = decide(
            &every(10),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:20Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:00:25Z"),
            MisfirePolicy::FireOnce,
            TH,
        );
        assert!(d.run.is_empty() && d.skipped.is_none());
        assert_eq!(d.next, Some(t("2026-01-01T00:00:30Z")));
    }

    #[test]
    fn fire_once_runs_the_latest_missed_fire_and_skips_the_rest_as_one_range() {
        // Down from 00:00:10 to 00:01:05: fires at 20, 30, ..., 60 were missed.
        let d = decide(
            &every(10),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:10Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:01:05Z"),
            MisfirePolicy::FireOnce,
            TH,
        );
        assert_eq!(
            d.run,
            vec![(t("2026-01-01T00:01:00Z"), ExecutionSource::Misfire)]
        );
        assert_eq!(
            d.skipped,
            Some(SkippedRange {
                first: t("2026-01-01T00:00:20Z"),
                last: t("2026-01-01T00:00:50Z"),
                count: 4,
                capped: false
            })
        );
    }

    #[test]
    fn skip_records_every_missed_fire_and_runs_none() {
        let d = decide(
            &every(10),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:10Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:01:05Z"),
            MisfirePolicy::Skip,
            TH,
        );
        assert!(d.run.is_empty());
        assert_eq!(d.skipped.as_ref().map(|s| s.count), Some(5));
        assert_eq!(
            d.skipped.as_ref().map(|s| s.last),
            Some(t("2026-01-01T00:01:00Z"))
        );
        // A single late fire is skipped too.
        let d = decide(
            &every(10),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:10Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:00:25Z"),
            MisfirePolicy::Skip,
            TH,
        );
        assert!(d.run.is_empty());
        assert_eq!(d.skipped.map(|s| s.count), Some(1));
    }

    #[test]
    fn catch_up_runs_the_latest_max_in_order_and_skips_older_ones() {
        let d = decide(
            &every(10),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:10Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:01:05Z"),
            MisfirePolicy::CatchUp { max: 3 },
            TH,
        );
        let runs: Vec<_> = d.run.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            runs,
            vec![
                t("2026-01-01T00:00:40Z"),
                t("2026-01-01T00:00:50Z"),
                t("2026-01-01T00:01:00Z")
            ]
        );
        assert!(d.run.iter().all(|(_, s)| *s == ExecutionSource::Misfire));
        assert_eq!(
            d.skipped,
            Some(SkippedRange {
                first: t("2026-01-01T00:00:20Z"),
                last: t("2026-01-01T00:00:30Z"),
                count: 2,
                capped: false
            })
        );
        // Within the cap, nothing is skipped.
        let d = decide(
            &every(10),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:10Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:00:35Z"),
            MisfirePolicy::CatchUp { max: 10 },
            TH,
        );
        assert_eq!(d.run.len(), 2);
        assert_eq!(d.skipped, None);
    }

    #[test]
    fn an_on_time_fire_after_a_gap_runs_normally_and_the_gap_follows_the_policy() {
        // Down from 00:00:10 to 00:01:00.2: fires 20..50 were missed, 60 is on time.
        let run = |policy| {
            decide(
                &every(10),
                t("2026-01-01T00:00:00Z"),
                Some(t("2026-01-01T00:00:10Z")),
                t("2026-01-01T00:00:00Z"),
                t("2026-01-01T00:01:00.200Z"),
                policy,
                TH,
            )
        };
        let on_time = (t("2026-01-01T00:01:00Z"), ExecutionSource::Normal);
        let d = run(MisfirePolicy::FireOnce);
        assert_eq!(d.run, vec![on_time]);
        assert_eq!(d.skipped.map(|s| s.count), Some(4));
        let d = run(MisfirePolicy::Skip);
        assert_eq!(d.run, vec![on_time]);
        assert_eq!(d.skipped.map(|s| s.count), Some(4));
        let d = run(MisfirePolicy::CatchUp { max: 2 });
        assert_eq!(
            d.run,
            vec![
                (t("2026-01-01T00:00:40Z"), ExecutionSource::Misfire),
                (t("2026-01-01T00:00:50Z"), ExecutionSource::Misfire),
                on_time
            ]
        );
        assert_eq!(
            d.skipped.map(|s| (s.first, s.last, s.count)),
            Some((t("2026-01-01T00:00:20Z"), t("2026-01-01T00:00:30Z"), 2))
        );
    }

    #[test]
    fn a_new_item_fires_at_its_anchor_and_not_before_since() {
        let anchor = t("2026-01-01T00:00:00Z");
        let d = decide(
            &every(10),
            anchor,
            None,
            anchor,
            t("2026-01-01T00:00:00.200Z"),
            MisfirePolicy::FireOnce,
            TH,
        );
        assert_eq!(d.run, vec![(anchor, ExecutionSource::Normal)]);
    }

    #[test]
    fn cron_gaps_are_scanned_and_day_long_every_gaps_are_counted_arithmetically() {
        let cron = Schedule::Cron(
            CronSchedule::parse("0 * * * * *", None).unwrap_or_else(|e| panic!("{e}")),
        );
        let d = decide(
            &cron,
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:00Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T01:00:30Z"),
            MisfirePolicy::FireOnce,
            TH,
        );
        assert_eq!(
            d.run,
            vec![(t("2026-01-01T01:00:00Z"), ExecutionSource::Misfire)]
        );
        assert_eq!(
            d.skipped.as_ref().map(|s| (s.count, s.last)),
            Some((59, t("2026-01-01T00:59:00Z")))
        );
        let d = decide(
            &Schedule::Every(Duration::from_millis(100)),
            t("2026-01-01T00:00:00Z"),
            Some(t("2026-01-01T00:00:00Z")),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-31T00:00:00Z"),
            MisfirePolicy::Skip,
            TH,
        );
        // The fire at `now` itself is on time and runs; the rest were missed.
        assert_eq!(d.skipped.map(|s| s.count), Some(30 * 86_400 * 10 - 1));
        assert_eq!(
            d.run,
            vec![(t("2026-01-31T00:00:00Z"), ExecutionSource::Normal)]
        );
    }
}
