//! Support for the multi-process cluster tests (DESIGN.md section 11):
//! - a *harness* that runs the real `shardcron agent` binary against a real etcd,
//!   each agent with its own data dir, log file and `/health` port, all sharing one
//!   SQLite history file;
//! - a *witness* script, the jobs' command, that appends one line per event to a
//!   log: the run's start, a tick every ~100 ms from a child process while the run
//!   lasts, and its end;
//! - a *checker* of the invariants I1-I5 (section 5) over that log, the jobs'
//!   schedules and the history, reporting every violation with its evidence.
//!
//! Log lines (fields separated by one space; `fire` is SHARDCRON_FIRE_TIME):
//! ```text
//! start JOB ITEM FIRE INSTANCE TOKEN SOURCE EXECUTION_ID TIME_NS PID
//! tick  JOB ITEM FIRE TOKEN TIME_NS PID
//! end   JOB ITEM FIRE INSTANCE TOKEN SOURCE EXECUTION_ID TIME_NS PID
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardcron_testkit::{EtcdConfig, EtcdServer, Netns, free_port, reap_with_this_process, tail};

pub(crate) mod chaos;
pub(crate) mod faults;

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// Wall-clock nanoseconds since the epoch (the witness uses `date +%s%N`).
pub(crate) fn now_ns() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_nanos()).expect("ns fit i64")
}

/// A duration in nanoseconds.
pub(crate) fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).expect("duration fits i64 ns")
}

/// An RFC 3339 instant as nanoseconds since the epoch.
pub(crate) fn rfc3339_ns(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .timestamp_nanos_opt()
}

fn show_ns(t: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------
// Witness script
// ---------------------------------------------------------------------------

/// The witness script, logging to `log`; `script` is its own absolute path (it
/// starts itself again as the ticking child). A run sleeps SHARDCRON_PARAM seconds.
pub(crate) fn witness_script(script: &Path, log: &Path) -> String {
    format!(
        r#"#!/bin/sh
# Written by shardcron's cluster tests. One line per event, each a small O_APPEND
# write: start, a tick every ~100 ms from a child process (a grandchild of the
# supervisor) while the run lasts, end. The run sleeps SHARDCRON_PARAM seconds.
PATH=/usr/bin:/bin
export PATH
LOG='{log}'
SELF='{script}'
if [ "$1" = "__tick" ]; then
  while :; do
    echo "tick $2 $3 $4 $5 $(date +%s%N) $$" >> "$LOG"
    sleep 0.1
  done
fi
J="${{SHARDCRON_JOB:--}}"
I="${{SHARDCRON_ITEM:--}}"
F="${{SHARDCRON_FIRE_TIME:--}}"
INST="${{SHARDCRON_INSTANCE:--}}"
TOK="${{SHARDCRON_TOKEN:--}}"
SRC="${{SHARDCRON_SOURCE:--}}"
EXEC="${{SHARDCRON_EXECUTION_ID:--}}"
echo "start $J $I $F $INST $TOK $SRC $EXEC $(date +%s%N) $$" >> "$LOG"
"$SELF" __tick "$J" "$I" "$F" "$TOK" &
TICKER=$!
sleep "${{SHARDCRON_PARAM:-0.3}}"
kill "$TICKER" 2>/dev/null
wait "$TICKER" 2>/dev/null
echo "end $J $I $F $INST $TOK $SRC $EXEC $(date +%s%N) $$" >> "$LOG"
"#,
        log = log.display(),
        script = script.display()
    )
}

// ---------------------------------------------------------------------------
// The witness log, parsed
// ---------------------------------------------------------------------------

/// One run as the witness saw it.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) job: String,
    pub(crate) item: u32,
    pub(crate) fire_ns: i64,
    pub(crate) instance: String,
    pub(crate) token: i64,
    pub(crate) source: String,
    pub(crate) exec_id: String,
    pub(crate) start_ns: i64,
    pub(crate) end_ns: Option<i64>,
    pub(crate) last_tick_ns: Option<i64>,
    pub(crate) ticks: usize,
    /// The script's pid and its ticking children's.
    pub(crate) pids: BTreeSet<i32>,
    /// `L<n>: <line>` of its start, for evidence.
    pub(crate) start_line: String,
    /// `L<n>: <line>` of its last event.
    pub(crate) last_line: String,
}

impl Run {
    /// The last moment anything of this run was seen (start, tick or end).
    pub(crate) fn last_ns(&self) -> i64 {
        self.start_ns
            .max(self.end_ns.unwrap_or(i64::MIN))
            .max(self.last_tick_ns.unwrap_or(i64::MIN))
    }

    pub(crate) fn ended(&self) -> bool {
        self.end_ns.is_some()
    }

    fn key(&self) -> (String, u32, i64, i64) {
        (self.job.clone(), self.item, self.fire_ns, self.token)
    }

    fn evidence(&self) -> Vec<String> {
        let mut v = vec![self.start_line.clone()];
        if self.last_line != self.start_line {
            v.push(self.last_line.clone());
        }
        if !self.ended() {
            v.push("(no end)".into());
        }
        v
    }
}

/// The parsed witness log: runs in start order, and lines that make no sense.
#[derive(Debug, Clone, Default)]
pub(crate) struct WitnessLog {
    pub(crate) runs: Vec<Run>,
    pub(crate) problems: Vec<Violation>,
    pub(crate) lines: usize,
}

impl WitnessLog {
    /// Runs of `job`.
    pub(crate) fn of_job<'a>(&'a self, job: &'a str) -> impl Iterator<Item = &'a Run> + 'a {
        self.runs.iter().filter(move |r| r.job == job)
    }

    /// Fire -> items whose run of that fire reached its end.
    pub(crate) fn completed(&self, job: &str) -> BTreeMap<i64, BTreeSet<u32>> {
        let mut out: BTreeMap<i64, BTreeSet<u32>> = BTreeMap::new();
        for r in self.of_job(job).filter(|r| r.ended()) {
            out.entry(r.fire_ns).or_default().insert(r.item);
        }
        out
    }

    /// How many fires at or after `after_ns` completed for every one of `items`.
    pub(crate) fn full_fires_after(&self, job: &str, items: u32, after_ns: i64) -> usize {
        self.completed(job)
            .range(after_ns..)
            .filter(|(_, done)| done.len() == items as usize)
            .count()
    }

    /// Instances that ran (started) `job` runs whose fire is at or after `after_ns`.
    pub(crate) fn instances_after(&self, job: &str, after_ns: i64) -> BTreeSet<String> {
        self.of_job(job)
            .filter(|r| r.fire_ns >= after_ns)
            .map(|r| r.instance.clone())
            .collect()
    }
}

type RunKey = (String, u32, i64, i64);

/// Parse the witness log. Only complete lines count (a line still being written
/// has no newline yet).
pub(crate) fn parse_log(text: &str) -> WitnessLog {
    let mut out = WitnessLog::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut by_key: BTreeMap<RunKey, usize> = BTreeMap::new();
    for (n, line) in complete.lines().enumerate() {
        out.lines += 1;
        let tag = format!("L{}: {line}", n + 1);
        let f: Vec<&str> = line.split(' ').collect();
        let bad = |why: &str| Violation::new(Kind::Malformed, why, vec![tag.clone()]);
        let num = |s: &str| s.parse::<i64>().ok();
        match f.first().copied() {
            Some("start") if f.len() == 10 => {
                let (Ok(item), Some(fire_ns), Some(token), Some(t), Ok(pid)) = (
                    f[2].parse::<u32>(),
                    rfc3339_ns(f[3]),
                    num(f[5]),
                    num(f[8]),
                    f[9].parse::<i32>(),
                ) else {
                    out.problems.push(bad("a start line with a bad field"));
                    continue;
                };
                let run = Run {
                    job: f[1].to_string(),
                    item,
                    fire_ns,
                    instance: f[4].to_string(),
                    token,
                    source: f[6].to_string(),
                    exec_id: f[7].to_string(),
                    start_ns: t,
                    end_ns: None,
                    last_tick_ns: None,
                    ticks: 0,
                    pids: BTreeSet::from([pid]),
                    start_line: tag.clone(),
                    last_line: tag.clone(),
                };
                if let Some(&prev) = by_key.get(&run.key()) {
                    let mut evidence = vec![out.runs[prev].start_line.clone(), tag.clone()];
                    evidence.dedup();
                    out.problems.push(Violation::new(
                        Kind::Doubled,
                        format!(
                            "I2: one claim (job {} item {} fire {} token {}) started twice",
                            run.job,
                            run.item,
                            show_ns(run.fire_ns),
                            run.token
                        ),
                        evidence,
                    ));
                }
                by_key.insert(run.key(), out.runs.len());
                out.runs.push(run);
            }
            Some("tick") if f.len() == 7 => {
                let (Ok(item), Some(fire_ns), Some(token), Some(t), Ok(pid)) = (
                    f[2].parse::<u32>(),
                    rfc3339_ns(f[3]),
                    num(f[4]),
                    num(f[5]),
                    f[6].parse::<i32>(),
                ) else {
                    out.problems.push(bad("a tick line with a bad field"));
                    continue;
                };
                let Some(&i) = by_key.get(&(f[1].to_string(), item, fire_ns, token)) else {
                    out.problems
                        .push(bad("a tick of a run that never logged its start"));
                    continue;
                };
                let r = &mut out.runs[i];
                r.ticks += 1;
                r.pids.insert(pid);
                if r.last_tick_ns.is_none_or(|l| t > l) {
                    r.last_tick_ns = Some(t);
                }
                if t >= r.last_ns() {
                    r.last_line = tag.clone();
                }
            }
            Some("end") if f.len() == 10 => {
                let (Ok(item), Some(fire_ns), Some(token), Some(t)) =
                    (f[2].parse::<u32>(), rfc3339_ns(f[3]), num(f[5]), num(f[8]))
                else {
                    out.problems.push(bad("an end line with a bad field"));
                    continue;
                };
                let Some(&i) = by_key.get(&(f[1].to_string(), item, fire_ns, token)) else {
                    out.problems
                        .push(bad("the end of a run that never logged its start"));
                    continue;
                };
                let r = &mut out.runs[i];
                if r.end_ns.is_some() {
                    out.problems.push(bad("a second end of one run"));
                    continue;
                }
                r.end_ns = Some(t);
                if t >= r.last_ns() {
                    r.last_line = tag.clone();
                }
            }
            _ => out.problems.push(bad("not a start, tick or end line")),
        }
    }
    out.runs.sort_by_key(|r| r.start_ns);
    out
}

// ---------------------------------------------------------------------------
// History rows (`shardcron history --json`)
// ---------------------------------------------------------------------------

/// The fields of a history record the checker uses.
#[derive(Debug, Clone)]
pub(crate) struct HistoryRow {
    pub(crate) id: String,
    pub(crate) job: String,
    pub(crate) item: u32,
    pub(crate) fire_ns: i64,
    /// For a SKIPPED range: its last fire.
    pub(crate) fire_end_ns: Option<i64>,
    pub(crate) status: String,
    pub(crate) source: String,
    pub(crate) token: i64,
    pub(crate) instance: String,
    /// When the execution ended, if it did.
    pub(crate) ended_ns: Option<i64>,
    /// The JSON line, for evidence.
    pub(crate) line: String,
}

impl HistoryRow {
    /// Whether this row is a SKIPPED record covering `fire_ns`.
    fn skips(&self, fire_ns: i64) -> bool {
        self.status == "SKIPPED" && self.fire_ns <= fire_ns && fire_ns <= self.last_fire_ns()
    }

    fn last_fire_ns(&self) -> i64 {
        self.fire_end_ns.unwrap_or(self.fire_ns)
    }

    fn evidence(&self) -> String {
        format!("history: {}", self.line)
    }

    /// Whether this row accounts for a run that died unfinished: LOST (the
    /// leader's record of a dead holder's run), or CANCELLED by the holder's own
    /// fence (a live holder that stopped trusting its lease records the truth
    /// itself, and the store keeps a holder's outcome over the leader's LOST; the
    /// fire is failed over all the same, which the checker requires separately).
    fn records_an_unfinished_run(&self) -> bool {
        self.status == "LOST"
            || (self.status == "CANCELLED" && self.line.contains("the instance fenced itself"))
    }
}

/// Parse `shardcron history --json` output (one JSON object per line).
pub(crate) fn parse_history(text: &str) -> Result<Vec<HistoryRow>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let time = |k: &str| s(k).as_deref().and_then(rfc3339_ns);
        let row = HistoryRow {
            id: s("id").ok_or_else(|| format!("no id: {line}"))?,
            job: s("job").ok_or_else(|| format!("no job: {line}"))?,
            item: v
                .get("item")
                .and_then(serde_json::Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| format!("no item: {line}"))?,
            fire_ns: time("fire_time").ok_or_else(|| format!("no fire_time: {line}"))?,
            fire_end_ns: time("fire_time_end"),
            status: s("status").ok_or_else(|| format!("no status: {line}"))?,
            source: s("source").ok_or_else(|| format!("no source: {line}"))?,
            token: v
                .get("token")
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| format!("no token: {line}"))?,
            instance: s("instance").unwrap_or_default(),
            ended_ns: time("ended_at"),
            line: line.to_string(),
        };
        out.push(row);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Checker
// ---------------------------------------------------------------------------

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A log line that is not a well-formed event of a known run.
    Malformed,
    /// A job that never ran at all.
    NoRuns,
    /// A fire that is not on the job's `every` grid (or an item out of range).
    OffGrid,
    /// I3: a fire of an item in the window that no run completed and no SKIPPED
    /// record accounts for.
    Lost,
    /// I2: a fire of an item completed more than once, or claimed again other than
    /// by failover.
    Doubled,
    /// I1: two runs of one item alive at the same time.
    Overlap,
    /// I4: tokens of an item not strictly increasing in start order.
    TokenOrder,
    /// A run that started and never ended, with no later FAILOVER run of its fire
    /// with a higher token.
    NoFailover,
    /// A run that died unfinished whose history record is not LOST.
    NotLostInHistory,
    /// A run that completed (on an instance that was not killed) without a
    /// SUCCEEDED history record that agrees with it.
    NotInHistory,
    /// A SUCCEEDED history record that no witness run matches.
    Phantom,
    /// A RUNNING history record of an instance that was not killed, after the end.
    StuckRunning,
    /// A SKIPPED record where the policy must not skip.
    UnexpectedSkip,
    /// A fire both recorded SKIPPED and run.
    SkippedButRan,
}

/// One violation and its evidence (log lines `L<n>: ...`, history rows).
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    pub(crate) kind: Kind,
    pub(crate) what: String,
    pub(crate) evidence: Vec<String>,
}

impl Violation {
    fn new(kind: Kind, what: impl Into<String>, evidence: Vec<String>) -> Self {
        Violation {
            kind,
            what: what.into(),
            evidence,
        }
    }
}

/// A job whose fires the checker expects: `every` on a fixed grid, `items` items.
#[derive(Debug, Clone)]
pub(crate) struct JobGrid {
    pub(crate) job: String,
    pub(crate) every: Duration,
    pub(crate) items: u32,
}

/// What the checker expects.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub(crate) jobs: Vec<JobGrid>,
    /// Fires in `[from_ns, to_ns]` must each be completed once per item.
    pub(crate) from_ns: i64,
    pub(crate) to_ns: i64,
    /// Whether SKIPPED records account for fires (misfire `fire_once`/`skip`); with
    /// `catch_up` every fire must run and a SKIPPED record is a violation.
    pub(crate) allow_skipped: bool,
    /// Instances killed with -9: their last history records may be lost (a kill -9
    /// may lose the last flush), so their completed runs are not looked up.
    pub(crate) killed: BTreeSet<String>,
}

/// The checker's findings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) violations: Vec<Violation>,
    /// (fire, item) pairs checked for completeness.
    pub(crate) fires_checked: usize,
    /// Fires accounted for by SKIPPED records.
    pub(crate) skipped_fires: usize,
    pub(crate) runs: usize,
}

impl Report {
    pub(crate) fn kinds(&self) -> BTreeSet<Kind> {
        self.violations.iter().map(|v| v.kind).collect()
    }

    pub(crate) fn has(&self, kind: Kind) -> bool {
        self.violations.iter().any(|v| v.kind == kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} violation(s); {} runs, {} (fire, item) pairs checked, {} accounted as SKIPPED",
            self.violations.len(),
            self.runs,
            self.fires_checked,
            self.skipped_fires
        )?;
        for v in &self.violations {
            writeln!(f, "- {:?}: {}", v.kind, v.what)?;
            for e in &v.evidence {
                writeln!(f, "    {e}")?;
            }
        }
        Ok(())
    }
}

fn div_floor(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

fn div_ceil(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// Check the invariants over the witness log and the history.
///
/// How long before its agent's fence a script's `end` line may come and the run
/// still count as cut by the fence (see [`fence_raced_exits`]).
const FENCE_RACE: i64 = 500_000_000;

/// The witness log with the runs whose exit raced their agent's fence counted as
/// unfinished: the script wrote `end` but its agent fenced before it saw the
/// process exit, so it recorded the run CANCELLED ("the instance fenced itself")
/// and left the fire to failover, which runs it again. The product cannot know
/// that such a run finished; the history is the truth. Only an `end` at most
/// [`FENCE_RACE`] before the record's end counts; anything else stays a
/// completed run (and the history's disagreement a violation).
fn fence_raced_exits(log: &WitnessLog, history: &[HistoryRow]) -> WitnessLog {
    let by_id: BTreeMap<&str, &HistoryRow> = history.iter().map(|h| (h.id.as_str(), h)).collect();
    let mut out = log.clone();
    for r in &mut out.runs {
        let Some(end) = r.end_ns else { continue };
        let raced = by_id.get(r.exec_id.as_str()).is_some_and(|h| {
            h.status == "CANCELLED"
                && h.records_an_unfinished_run()
                && h.ended_ns
                    .is_some_and(|e| end <= e && e - end <= FENCE_RACE)
        });
        if raced {
            r.end_ns = None;
        }
    }
    out
}

/// The witness script always succeeds, so a fire of an item is done once exactly
/// when one of its runs logged `end`; retries do not occur in these tests and a
/// second completed run of a fire is a doubled fire.
pub(crate) fn check(log: &WitnessLog, history: &[HistoryRow], expect: &Expect) -> Report {
    let raced = fence_raced_exits(log, history);
    let log = &raced;
    let mut report = Report {
        violations: log.problems.clone(),
        runs: log.runs.len(),
        ..Report::default()
    };
    let v = &mut report.violations;

    // Grids and completeness (I3, I5), per job.
    for grid in &expect.jobs {
        let every = ns(grid.every);
        let runs: Vec<&Run> = log.of_job(&grid.job).collect();
        let Some(anchor) = runs.iter().map(|r| r.fire_ns).min() else {
            v.push(Violation::new(
                Kind::NoRuns,
                format!("job {} never ran", grid.job),
                vec![],
            ));
            continue;
        };
        for r in &runs {
            if (r.fire_ns - anchor).rem_euclid(every) != 0 {
                v.push(Violation::new(
                    Kind::OffGrid,
                    format!(
                        "fire {} of job {} is not on its {:?} grid (phase of {})",
                        show_ns(r.fire_ns),
                        grid.job,
                        grid.every,
                        show_ns(anchor)
                    ),
                    vec![r.start_line.clone()],
                ));
            }
            if r.item >= grid.items {
                v.push(Violation::new(
                    Kind::OffGrid,
                    format!(
                        "item {} of job {} is outside 0..{}",
                        r.item, grid.job, grid.items
                    ),
                    vec![r.start_line.clone()],
                ));
            }
        }
        let skips: Vec<&HistoryRow> = history
            .iter()
            .filter(|h| h.job == grid.job && h.status == "SKIPPED")
            .collect();
        if !expect.allow_skipped {
            for h in &skips {
                if h.last_fire_ns() >= expect.from_ns && h.fire_ns <= expect.to_ns {
                    v.push(Violation::new(
                        Kind::UnexpectedSkip,
                        format!(
                            "job {} item {}: fires {}..{} SKIPPED, but this policy runs every fire",
                            h.job,
                            h.item,
                            show_ns(h.fire_ns),
                            show_ns(h.last_fire_ns())
                        ),
                        vec![h.evidence()],
                    ));
                }
            }
        }
        let first = div_ceil(expect.from_ns - anchor, every);
        let last = div_floor(expect.to_ns - anchor, every);
        for k in first..=last {
            let fire = anchor + k * every;
            for item in 0..grid.items {
                report.fires_checked += 1;
                let of_fire: Vec<&&Run> = runs
                    .iter()
                    .filter(|r| r.item == item && r.fire_ns == fire)
                    .collect();
                let done = of_fire.iter().filter(|r| r.ended()).count();
                let skipped: Vec<&&HistoryRow> = skips
                    .iter()
                    .filter(|h| h.item == item && h.skips(fire))
                    .collect();
                if done > 0 && !skipped.is_empty() {
                    let mut evidence: Vec<String> =
                        of_fire.iter().map(|r| r.start_line.clone()).collect();
                    evidence.extend(skipped.iter().map(|h| h.evidence()));
                    v.push(Violation::new(
                        Kind::SkippedButRan,
                        format!(
                            "job {} item {} fire {} ran and is recorded SKIPPED",
                            grid.job,
                            item,
                            show_ns(fire)
                        ),
                        evidence,
                    ));
                }
                if done == 0 {
                    if !skipped.is_empty() && expect.allow_skipped {
                        report.skipped_fires += 1;
                        continue;
                    }
                    let mut evidence: Vec<String> =
                        of_fire.iter().flat_map(|r| r.evidence()).collect();
                    evidence.extend(skipped.iter().map(|h| h.evidence()));
                    if evidence.is_empty() {
                        evidence.push("(no run and no SKIPPED record)".into());
                    }
                    v.push(Violation::new(
                        Kind::Lost,
                        format!(
                            "I3: job {} item {} fire {} never completed",
                            grid.job,
                            item,
                            show_ns(fire)
                        ),
                        evidence,
                    ));
                }
            }
        }
    }

    // Per fire of an item (I2): at most one completed run, and a re-run only by
    // failover of an unfinished one, with a higher token.
    let mut by_fire: BTreeMap<(String, u32, i64), Vec<&Run>> = BTreeMap::new();
    for r in &log.runs {
        by_fire
            .entry((r.job.clone(), r.item, r.fire_ns))
            .or_default()
            .push(r);
    }
    for ((job, item, fire), runs) in &by_fire {
        let done: Vec<&&Run> = runs.iter().filter(|r| r.ended()).collect();
        if done.len() > 1 {
            v.push(Violation::new(
                Kind::Doubled,
                format!(
                    "I2: job {job} item {item} fire {} completed {} times",
                    show_ns(*fire),
                    done.len()
                ),
                runs.iter().flat_map(|r| r.evidence()).collect(),
            ));
        }
        // runs are in start order.
        for (i, r) in runs.iter().enumerate().skip(1) {
            let earlier_unfinished = runs[..i].iter().any(|p| !p.ended());
            if r.source != "FAILOVER" || !earlier_unfinished {
                v.push(Violation::new(
                    Kind::Doubled,
                    format!(
                        "I2: job {job} item {item} fire {} claimed again with source {}{}",
                        show_ns(*fire),
                        r.source,
                        if earlier_unfinished {
                            " (a re-run of a dead run must be FAILOVER)"
                        } else {
                            " after it had completed"
                        }
                    ),
                    runs[..=i].iter().map(|r| r.start_line.clone()).collect(),
                ));
            }
        }
        for (i, dead) in runs.iter().enumerate().filter(|(_, r)| !r.ended()) {
            let taken_over = runs[i + 1..]
                .iter()
                .any(|r| r.source == "FAILOVER" && r.token > dead.token);
            if !taken_over {
                v.push(Violation::new(
                    Kind::NoFailover,
                    format!(
                        "job {job} item {item} fire {}: a run died unfinished and no FAILOVER run with a higher token followed",
                        show_ns(*fire)
                    ),
                    runs.iter().flat_map(|r| r.evidence()).collect(),
                ));
            }
        }
    }

    // Per item: no overlap (I1) and strictly increasing tokens (I4), in start order.
    let mut by_item: BTreeMap<(String, u32), Vec<&Run>> = BTreeMap::new();
    for r in &log.runs {
        by_item.entry((r.job.clone(), r.item)).or_default().push(r);
    }
    for ((job, item), runs) in &by_item {
        let mut latest: Option<&Run> = None;
        for pair in runs.windows(2) {
            if pair[1].token <= pair[0].token {
                v.push(Violation::new(
                    Kind::TokenOrder,
                    format!(
                        "I4: job {job} item {item}: token {} started after token {}",
                        pair[1].token, pair[0].token
                    ),
                    vec![pair[0].start_line.clone(), pair[1].start_line.clone()],
                ));
            }
        }
        for r in runs {
            if let Some(p) = latest
                && r.start_ns <= p.last_ns()
            {
                v.push(Violation::new(
                    Kind::Overlap,
                    format!(
                        "I1: job {job} item {item}: a run started {} ms before the previous one's last sign of life",
                        (p.last_ns() - r.start_ns) / 1_000_000
                    ),
                    vec![
                        p.start_line.clone(),
                        p.last_line.clone(),
                        r.start_line.clone(),
                    ],
                ));
            }
            if latest.is_none_or(|p| r.last_ns() > p.last_ns()) {
                latest = Some(r);
            }
        }
    }

    // History agrees with the witness.
    let by_id: BTreeMap<&str, &HistoryRow> = history.iter().map(|h| (h.id.as_str(), h)).collect();
    let jobs: BTreeSet<&str> = expect.jobs.iter().map(|g| g.job.as_str()).collect();
    for r in &log.runs {
        let row = by_id.get(r.exec_id.as_str());
        if !r.ended() {
            if row.is_none_or(|h| !h.records_an_unfinished_run()) {
                v.push(Violation::new(
                    Kind::NotLostInHistory,
                    format!(
                        "job {} item {} fire {}: a run died unfinished and its history record is {}",
                        r.job,
                        r.item,
                        show_ns(r.fire_ns),
                        row.map_or("missing".to_string(), |h| h.status.clone())
                    ),
                    [r.start_line.clone()]
                        .into_iter()
                        .chain(row.map(|h| h.evidence()))
                        .collect(),
                ));
            }
        } else if !expect.killed.contains(&r.instance) {
            let agrees = row.is_some_and(|h| {
                h.status == "SUCCEEDED"
                    && h.token == r.token
                    && h.source == r.source
                    && h.item == r.item
                    && h.fire_ns == r.fire_ns
            });
            if !agrees {
                v.push(Violation::new(
                    Kind::NotInHistory,
                    format!(
                        "job {} item {} fire {}: completed, but history has {}",
                        r.job,
                        r.item,
                        show_ns(r.fire_ns),
                        row.map_or("no record".to_string(), |h| format!(
                            "{} {} token {}",
                            h.status, h.source, h.token
                        ))
                    ),
                    [r.start_line.clone()]
                        .into_iter()
                        .chain(row.map(|h| h.evidence()))
                        .collect(),
                ));
            }
        }
    }
    let seen: BTreeSet<&str> = log.runs.iter().map(|r| r.exec_id.as_str()).collect();
    for h in history.iter().filter(|h| jobs.contains(h.job.as_str())) {
        if h.status == "SUCCEEDED" && !seen.contains(h.id.as_str()) {
            v.push(Violation::new(
                Kind::Phantom,
                format!(
                    "history says job {} item {} fire {} succeeded, but the witness never ran it",
                    h.job,
                    h.item,
                    show_ns(h.fire_ns)
                ),
                vec![h.evidence()],
            ));
        }
        if h.status == "RUNNING" && !expect.killed.contains(&h.instance) {
            v.push(Violation::new(
                Kind::StuckRunning,
                format!(
                    "history still says RUNNING for job {} item {} fire {} after every agent stopped",
                    h.job,
                    h.item,
                    show_ns(h.fire_ns)
                ),
                vec![h.evidence()],
            ));
        }
    }
    report
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Whether `pid` is a live process (a zombie or a missing one is not).
pub(crate) fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn signal(pid: u32, sig: Signal) -> nix::Result<()> {
    kill(
        Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
        sig,
    )
}

/// What `/health` says.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    pub(crate) status: u16,
    pub(crate) instance: Option<String>,
    pub(crate) leader: bool,
}

/// `GET path` on 127.0.0.1:`port` over a plain TcpStream: (status, body). With
/// `netns`, that is the namespace's loopback (the connection is opened inside it).
fn http_get(netns: Option<&Netns>, port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_millis(500);
    let mut s = match netns {
        None => TcpStream::connect_timeout(&addr, timeout).ok()?,
        Some(ns) => ns.connect(addr, timeout).ok()?,
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// One `shardcron agent` process.
#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
    /// Its instance id, once `/health` reported it.
    pub(crate) instance: Option<String>,
    /// The network namespace it runs in, if any (its port is on that
    /// namespace's loopback).
    pub(crate) netns: Option<Arc<Netns>>,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Agent {
    pub(crate) fn running(&mut self) -> bool {
        if self.exited.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.exited = Some(s);
        }
        self.exited.is_none()
    }

    pub(crate) fn health(&self) -> Option<Health> {
        let (status, body) = http_get(self.netns.as_deref(), self.port, "/health")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(Health {
            status,
            instance: v
                .get("instance")
                .and_then(|i| i.as_str())
                .map(str::to_string),
            leader: v
                .get("leader")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.running() {
            let _ = signal(self.pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A test cluster: one etcd, agents of the real binary, a config dir with the
/// witness, one SQLite history shared by the agents.
///
/// SQLite rather than PostgreSQL: it is the design's default, needs no server per
/// test, and the store opens it in WAL mode with a 5 s busy timeout, which is
/// plenty for a handful of agents writing small batches; a write that still fails
/// goes to the agent's spool and is replayed, so contention cannot drop records.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) etcd: EtcdServer,
    pub(crate) root: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) witness_log: PathBuf,
    pub(crate) history_url: String,
    pub(crate) namespace: String,
    /// Every agent process started, oldest first.
    pub(crate) agents: Vec<Agent>,
    /// Instance ids of agents killed with -9.
    pub(crate) killed: BTreeSet<String>,
    /// Registry URL per agent name, instead of etcd's own (e.g. through a proxy).
    pub(crate) registry_for: BTreeMap<String, String>,
    /// Network namespace per agent name: the agent runs inside it (`ip netns
    /// exec`), reaches etcd at the namespace's host end (etcd must listen there:
    /// [`Cluster::with_netns`]) unless `registry_for` says otherwise, and its
    /// /health is asked from inside.
    pub(crate) netns_for: BTreeMap<String, Arc<Netns>>,
    lease_ttl: String,
    dir: Option<tempfile::TempDir>,
}

/// The binary under test.
pub(crate) fn shardcron_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shardcron")
}

impl Cluster {
    /// Start etcd and write the config (`jobs`: `[[job]]` tables whose command is
    /// `["./witness.sh"]`) and the witness into a fresh directory. Agents are
    /// started separately.
    pub(crate) fn new(test: &str, jobs: &str) -> Cluster {
        Self::new_with_etcd(test, jobs, EtcdConfig::default())
    }

    /// [`Cluster::new`], but each agent of `names` runs in a network namespace of
    /// its own ([`Cluster::netns_for`]), and etcd also serves clients on the
    /// namespaces' host ends.
    pub(crate) fn with_netns(test: &str, jobs: &str, names: &[&str]) -> Cluster {
        let netns: BTreeMap<String, Arc<Netns>> = names
            .iter()
            .map(|n| (n.to_string(), Arc::new(Netns::create())))
            .collect();
        let mut c = Self::new_with_etcd(
            test,
            jobs,
            EtcdConfig {
                client_ips: netns.values().map(|ns| ns.host_ip().into()).collect(),
                ..EtcdConfig::default()
            },
        );
        c.netns_for = netns;
        c
    }

    /// [`Cluster::new`] with etcd started as `etcd` says.
    pub(crate) fn new_with_etcd(test: &str, jobs: &str, etcd: EtcdConfig) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shardcron-{test}-"))
            .tempdir()
            .expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical tempdir");
        let witness_log = root.join("witness.log");
        let script = root.join("witness.sh");
        fs::write(&script, witness_script(&script, &witness_log)).expect("write witness");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod witness");
        fs::write(&witness_log, "").expect("create witness log");
        let config = root.join("shardcron.toml");
        fs::write(&config, jobs).expect("write config");
        fs::create_dir_all(root.join("agents")).expect("agents dir");
        let etcd = EtcdServer::start_with(etcd);
        Cluster {
            etcd,
            config,
            witness_log,
            history_url: format!("sqlite://{}", root.join("history.db").display()),
            namespace: format!("ns-{test}"),
            agents: Vec::new(),
            killed: BTreeSet::new(),
            registry_for: BTreeMap::new(),
            netns_for: BTreeMap::new(),
            lease_ttl: "2s".into(),
            root,
            dir: Some(dir),
        }
    }

    /// Spawn an agent named `name` (not waiting for it); a restarted name reuses its
    /// data dir. Returns its index in `agents`.
    pub(crate) fn spawn(&mut self, name: &str) -> usize {
        let registry = match (self.registry_for.get(name), self.netns_for.get(name)) {
            (Some(r), _) => r.clone(),
            (None, Some(ns)) => self.etcd.url_on(ns.host_ip().into()),
            (None, None) => self.etcd.url(),
        };
        self.spawn_agent(name, &registry, "info", &[])
    }

    /// Spawn an agent named `name` on `registry` with the `--log` filter `log` and
    /// extra environment `env` (not waiting for it); a restarted name reuses its
    /// data dir. Returns its index in `agents`.
    pub(crate) fn spawn_agent(
        &mut self,
        name: &str,
        registry: &str,
        log_filter: &str,
        env: &[(String, String)],
    ) -> usize {
        assert!(self.live(name).is_none(), "agent {name} is already running");
        let seq = self.agents.iter().filter(|a| a.name == name).count();
        let log = self.root.join("agents").join(format!("{name}.{seq}.log"));
        let data = self.root.join("agents").join(format!("{name}.data"));
        let port = free_port();
        let out = fs::File::create(&log).expect("agent log");
        let err = out.try_clone().expect("agent log");
        let netns = self.netns_for.get(name).cloned();
        let mut cmd = match &netns {
            Some(ns) => ns.command(shardcron_bin()),
            None => Command::new(shardcron_bin()),
        };
        cmd.arg("agent")
            .arg("--registry")
            .arg(registry)
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("--history")
            .arg(&self.history_url)
            .arg("--config")
            .arg(&self.config)
            .arg("--data")
            .arg(&data)
            .arg("--name")
            .arg(name)
            .arg("--lease-ttl")
            .arg(&self.lease_ttl)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log")
            .arg(log_filter)
            .current_dir(&self.root)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn shardcron agent");
        let pid = child.id();
        reap_with_this_process(pid);
        self.agents.push(Agent {
            name: name.to_string(),
            port,
            pid,
            log,
            instance: None,
            netns,
            child,
            exited: None,
        });
        self.agents.len() - 1
    }

    /// The running agent named `name`.
    pub(crate) fn live(&mut self, name: &str) -> Option<usize> {
        (0..self.agents.len()).find(|&i| self.agents[i].name == name && self.agents[i].running())
    }

    fn live_index(&mut self, name: &str) -> usize {
        self.live(name)
            .unwrap_or_else(|| panic!("agent {name} is not running\n{}", self.diagnostics()))
    }

    /// Names of the running agents.
    pub(crate) fn live_names(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &mut self.agents {
            if a.running() {
                out.push(a.name.clone());
            }
        }
        out
    }

    /// Wait until agent `i` answers 200 on /health; its instance id is recorded.
    /// A port clash (another test took the port) is retried on a new port.
    fn wait_healthy_index(&mut self, mut i: usize, timeout: Duration) -> Health {
        let deadline = Instant::now() + timeout;
        let mut respawns = 0;
        loop {
            if !self.agents[i].running() {
                let name = self.agents[i].name.clone();
                let log = tail(&self.agents[i].log, 40);
                if log.contains("cannot listen") && respawns < 3 {
                    respawns += 1;
                    i = self.spawn(&name);
                    continue;
                }
                panic!(
                    "agent {name} exited with {:?} before it was healthy; log tail:\n{log}",
                    self.agents[i].exited
                );
            }
            if let Some(h) = self.agents[i].health()
                && h.status == 200
                && h.instance.is_some()
            {
                self.agents[i].instance.clone_from(&h.instance);
                return h;
            }
            if Instant::now() > deadline {
                panic!(
                    "agent {} not healthy within {timeout:?}\n{}",
                    self.agents[i].name,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the running agent `name` is healthy.
    pub(crate) fn wait_healthy(&mut self, name: &str, timeout: Duration) -> Health {
        let i = self.live_index(name);
        self.wait_healthy_index(i, timeout)
    }

    /// Start agents and wait until each is healthy; returns their instance ids.
    ///
    /// The very first agent of a cluster starts alone: agents that create the
    /// SQLite history schema at the same moment race (sqlx takes no lock on
    /// SQLite: "table shardcron_executions already exists", exit 1). Once the
    /// schema exists, starts run concurrently.
    pub(crate) fn start(&mut self, names: &[&str]) -> Vec<String> {
        let mut names = names.iter();
        let mut ids = Vec::new();
        if self.agents.is_empty()
            && let Some(first) = names.next()
        {
            let i = self.spawn(first);
            let h = self.wait_healthy_index(i, Duration::from_secs(30));
            ids.push(h.instance.expect("healthy means an instance id"));
        }
        let idx: Vec<usize> = names.map(|n| self.spawn(n)).collect();
        ids.extend(idx.into_iter().map(|i| {
            self.wait_healthy_index(i, Duration::from_secs(30))
                .instance
                .expect("healthy means an instance id")
        }));
        ids
    }

    /// The instance id of the running agent `name`.
    pub(crate) fn instance(&mut self, name: &str) -> String {
        let i = self.live_index(name);
        self.agents[i]
            .instance
            .clone()
            .unwrap_or_else(|| panic!("agent {name} has not been healthy yet"))
    }

    /// The name of the agent an instance id belongs to (ids are `NAME-LEASE`).
    pub(crate) fn name_of(instance: &str) -> &str {
        instance.rsplit_once('-').map_or(instance, |(n, _)| n)
    }

    /// Names of running agents whose /health says leader.
    pub(crate) fn leaders(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &mut self.agents {
            if a.running()
                && let Some(h) = a.health()
                && h.status == 200
                && h.leader
            {
                out.push(a.name.clone());
            }
        }
        out
    }

    /// Wait until exactly one running agent, other than `not`, says it is leader.
    pub(crate) fn wait_leader(&mut self, not: Option<&str>, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.leaders();
            if l.len() == 1 && Some(l[0].as_str()) != not {
                return l[0].clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no single leader (other than {not:?}) within {timeout:?}: {l:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9 the agent `name`, reap it, and check its pid is gone. Returns the pid.
    pub(crate) fn kill9(&mut self, name: &str) -> u32 {
        let i = self.live_index(name);
        let a = &mut self.agents[i];
        if let Some(id) = &a.instance {
            self.killed.insert(id.clone());
        }
        signal(a.pid, Signal::SIGKILL).expect("kill -9 agent");
        let status = a.child.wait().expect("reap agent");
        a.exited = Some(status);
        assert!(
            !pid_alive(i32::try_from(a.pid).expect("pid")),
            "agent {name} (pid {}) is still alive after kill -9",
            a.pid
        );
        a.pid
    }

    /// SIGTERM the agent `name` and wait (up to 45 s) for it to exit; returns its
    /// exit status.
    pub(crate) fn sigterm(&mut self, name: &str) -> ExitStatus {
        let i = self.live_index(name);
        signal(self.agents[i].pid, Signal::SIGTERM).expect("SIGTERM agent");
        self.wait_exit(i, Duration::from_secs(45))
    }

    fn wait_exit(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while self.agents[i].running() {
            if Instant::now() > deadline {
                panic!(
                    "agent {} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.agents[i].name,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.agents[i].exited.expect("exited")
    }

    /// SIGTERM every running agent at once and wait for all; each must exit 0.
    pub(crate) fn stop_all(&mut self) {
        let live: Vec<usize> = (0..self.agents.len())
            .filter(|&i| self.agents[i].running())
            .collect();
        for &i in &live {
            signal(self.agents[i].pid, Signal::SIGTERM).expect("SIGTERM agent");
        }
        for i in live {
            let status = self.wait_exit(i, Duration::from_secs(45));
            assert!(
                status.success(),
                "agent {} exited with {status} after SIGTERM; log tail:\n{}",
                self.agents[i].name,
                tail(&self.agents[i].log, 30)
            );
        }
    }

    /// The witness log as it is now.
    pub(crate) fn log(&self) -> WitnessLog {
        parse_log(&fs::read_to_string(&self.witness_log).unwrap_or_default())
    }

    /// Every history record, through `shardcron history --json`.
    pub(crate) fn history(&self) -> Vec<HistoryRow> {
        let o = Command::new(shardcron_bin())
            .args(["history", "--history", &self.history_url])
            .args(["--json", "--limit", "10000"])
            .output()
            .expect("run shardcron history");
        assert!(
            o.status.success(),
            "shardcron history failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        parse_history(&String::from_utf8_lossy(&o.stdout))
            .unwrap_or_else(|e| panic!("bad shardcron history output: {e}"))
    }

    /// Poll `f` every 100 ms until it gives a value; panic with diagnostics after
    /// `timeout`.
    pub(crate) fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Cluster) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Check the invariants over the whole log and history (call after
    /// [`Cluster::stop_all`]); panics with every violation.
    pub(crate) fn check(&self, expect: &Expect) -> Report {
        self.check_allowing(expect, |_| false)
    }

    /// [`Cluster::check`], allowing the violations `allowed` accepts: panics with
    /// the others. The report's violations are the allowed ones.
    pub(crate) fn check_allowing(
        &self,
        expect: &Expect,
        allowed: impl Fn(&Violation) -> bool,
    ) -> Report {
        let report = check(&self.log(), &self.history(), expect);
        let bad: Vec<Violation> = report
            .violations
            .iter()
            .filter(|v| !allowed(v))
            .cloned()
            .collect();
        if !bad.is_empty() {
            let shown = Report {
                violations: bad,
                ..report
            };
            panic!(
                "invariants violated:\n{shown}\nwitness log: {}\n{}",
                self.witness_log.display(),
                self.diagnostics()
            );
        }
        report
    }

    /// Tails of every agent's log and where the files are.
    pub(crate) fn diagnostics(&self) -> String {
        let mut s = format!("test dir: {}\n", self.root.display());
        for a in &self.agents {
            s.push_str(&format!(
                "--- agent {} pid {} instance {:?} exited {:?} log {}:\n{}\n",
                a.name,
                a.pid,
                a.instance,
                a.exited,
                a.log.display(),
                tail(&a.log, 15)
            ));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first (their Drop kills them), then etcd.
        self.agents.clear();
        let keep = std::thread::panicking() || std::env::var_os("SHARDCRON_TEST_KEEP").is_some();
        if keep && let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            eprintln!(
                "kept the test directory (SHARDCRON_TEST_KEEP or a failure): {}",
                kept.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Jobs, waits and checks shared by the multi-process test files
// ---------------------------------------------------------------------------

/// A script job `[[job]]` table running `command` every `every_s` seconds on
/// `shards` items; each run lasts `run_s` seconds (the witness's param) and may
/// take `timeout` at most.
pub(crate) fn job_table(
    name: &str,
    command: &str,
    every_s: u64,
    shards: u32,
    run_s: &str,
    timeout: &str,
    misfire: &str,
) -> String {
    format!(
        r#"
[[job]]
name = "{name}"
every = "{every_s}s"
shards = {shards}
param = "{run_s}"
command = ["{command}"]
timeout = "{timeout}"
failover = true
misfire = {misfire}
"#
    )
}

/// A script job running the witness every `every_s` seconds on `shards` items;
/// each run lasts `run_s` seconds (timeout 30 s).
pub(crate) fn job(name: &str, every_s: u64, shards: u32, run_s: &str, misfire: &str) -> String {
    job_table(name, "./witness.sh", every_s, shards, run_s, "30s", misfire)
}

/// The grid the checker expects of `name`: a fire every `every_s` seconds on
/// `items` items.
pub(crate) fn grid(name: &str, every_s: u64, items: u32) -> JobGrid {
    JobGrid {
        job: name.into(),
        every: Duration::from_secs(every_s),
        items,
    }
}

/// Wait (at most `wait_s` seconds) until `n` fires of `job` at or after
/// `after_ns` completed on all `items`.
pub(crate) fn wait_full_fires(
    c: &mut Cluster,
    job: &str,
    items: u32,
    after_ns: i64,
    n: usize,
    wait_s: u64,
) {
    c.wait_for(
        &format!("{n} fire(s) of {job} completed on all {items} items"),
        Duration::from_secs(wait_s),
        |c| (c.log().full_fires_after(job, items, after_ns) >= n).then_some(()),
    );
}

/// The run in the log with this execution id.
pub(crate) fn run_by_id(c: &Cluster, exec_id: &str) -> Run {
    c.log()
        .runs
        .into_iter()
        .find(|r| r.exec_id == exec_id)
        .unwrap_or_else(|| panic!("no run {exec_id} in the witness log"))
}

/// A run of `job` still going, at least `ticks` ticks in, started after
/// `after_ns`, on a running agent (its current instance) whose name `pick` likes.
pub(crate) fn wait_inflight(
    c: &mut Cluster,
    job: &str,
    ticks: usize,
    after_ns: i64,
    pick: impl Fn(&str) -> bool,
) -> Run {
    c.wait_for(
        &format!("a run of {job} in flight on a chosen agent"),
        Duration::from_secs(40),
        |c| {
            let log = c.log();
            let candidates: Vec<Run> = log
                .of_job(job)
                .filter(|r| !r.ended() && r.ticks >= ticks && r.start_ns >= after_ns)
                .cloned()
                .collect();
            candidates.into_iter().find(|r| {
                let name = Cluster::name_of(&r.instance);
                pick(name)
                    && c.live(name).is_some_and(|i| {
                        c.agents[i].instance.as_deref() == Some(r.instance.as_str())
                    })
            })
        },
    )
}

/// Panic with every violation of `report` and the cluster's diagnostics.
pub(crate) fn assert_clean(c: &Cluster, what: &str, report: &Report) {
    assert!(
        report.violations.is_empty(),
        "{what}: invariants violated:\n{report}\nwitness log: {}\n{}",
        c.witness_log.display(),
        c.diagnostics()
    );
}

/// Print what a scenario checked and how long it took, and every violation the
/// scenario allowed (see [`Cluster::check_allowing`]).
pub(crate) fn summary(test: &str, started: Instant, report: &Report) {
    let allowed = match report.violations.len() {
        0 => String::new(),
        n => format!(", {n} violation(s) allowed by the scenario"),
    };
    eprintln!(
        "{test}: {} runs, {} (fire, item) pairs checked, {} SKIPPED on record{allowed}, in \
         {:.1} s",
        report.runs,
        report.fires_checked,
        report.skipped_fires,
        started.elapsed().as_secs_f64()
    );
    for v in &report.violations {
        eprintln!("  allowed: {:?}: {}", v.kind, v.what);
    }
}

// ---------------------------------------------------------------------------
// The checker catches each violation
// ---------------------------------------------------------------------------

#[cfg(test)]
mod checker_tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    /// 2026-01-01T00:00:00Z
    const T0: i64 = 1_767_225_600 * S;

    fn fire(k: i64) -> String {
        show_ns(T0 + k * 2 * S)
    }

    /// A run: start at `start` s (after T0), ticks every 0.5 s, end at `end` s.
    #[allow(clippy::too_many_arguments)]
    fn run(
        out: &mut String,
        item: u32,
        k: i64,
        inst: &str,
        token: i64,
        source: &str,
        start: f64,
        end: Option<f64>,
        last_tick: f64,
    ) {
        let at = |s: f64| T0 + (s * 1e9) as i64;
        let f = fire(k);
        let exec = format!("e-{item}-{k}-{token}");
        out.push_str(&format!(
            "start job {item} {f} {inst} {token} {source} {exec} {} 100\n",
            at(start)
        ));
        let mut t = start;
        while t <= last_tick {
            out.push_str(&format!("tick job {item} {f} {token} {} 101\n", at(t)));
            t += 0.5;
        }
        if let Some(e) = end {
            out.push_str(&format!(
                "end job {item} {f} {inst} {token} {source} {exec} {} 100\n",
                at(e)
            ));
        }
    }

    fn row(item: u32, k: i64, token: i64, status: &str, source: &str, inst: &str) -> HistoryRow {
        HistoryRow {
            id: format!("e-{item}-{k}-{token}"),
            job: "job".into(),
            item,
            fire_ns: T0 + k * 2 * S,
            fire_end_ns: None,
            status: status.into(),
            source: source.into(),
            token,
            instance: inst.into(),
            ended_ns: None,
            line: format!("{status} item {item} fire {k} token {token}"),
        }
    }

    fn expect(allow_skipped: bool) -> Expect {
        Expect {
            jobs: vec![JobGrid {
                job: "job".into(),
                every: Duration::from_secs(2),
                items: 2,
            }],
            from_ns: T0,
            to_ns: T0 + 4 * S,
            allow_skipped,
            killed: BTreeSet::new(),
        }
    }

    /// Fires 0, 1, 2 of items 0 and 1, each run by one instance, all recorded.
    fn clean() -> (String, Vec<HistoryRow>) {
        let mut log = String::new();
        let mut hist = Vec::new();
        let mut token = 10;
        for k in 0..3 {
            for item in 0..2 {
                token += 1;
                let s = (k * 2) as f64 + 0.01;
                run(
                    &mut log,
                    item,
                    k,
                    "a-1",
                    token,
                    "NORMAL",
                    s,
                    Some(s + 1.0),
                    s + 0.9,
                );
                hist.push(row(item, k, token, "SUCCEEDED", "NORMAL", "a-1"));
            }
        }
        (log, hist)
    }

    fn checked(log: &str, hist: &[HistoryRow], e: &Expect) -> Report {
        check(&parse_log(log), hist, e)
    }

    #[test]
    fn a_clean_log_passes() {
        let (log, hist) = clean();
        let r = checked(&log, &hist, &expect(false));
        assert!(r.violations.is_empty(), "{r}");
        assert_eq!(r.fires_checked, 6);
        assert_eq!(r.runs, 6);
    }

    #[test]
    fn a_proper_failover_passes() {
        // Item 0, fire 3: the holder b-1 dies after 1 s; c-1 re-runs it as FAILOVER
        // after the last tick, with a higher token; history says LOST.
        let (mut log, mut hist) = clean();
        run(&mut log, 0, 3, "b-1", 20, "NORMAL", 6.01, None, 7.0);
        run(&mut log, 0, 3, "c-1", 25, "FAILOVER", 9.5, Some(10.5), 10.4);
        hist.push(row(0, 3, 20, "LOST", "NORMAL", "b-1"));
        hist.push(row(0, 3, 25, "SUCCEEDED", "FAILOVER", "c-1"));
        let mut e = expect(false);
        e.killed.insert("b-1".into());
        let r = checked(&log, &hist, &e);
        assert!(r.violations.is_empty(), "{r}");
    }

    /// Item 0, fire 3: b-1's script logs `end` at 7.0 s, but b-1 fenced just
    /// then, before it saw the exit, and recorded the run CANCELLED; c-1 re-runs
    /// the fire as FAILOVER. Within the race window that is a cut run, not a fire
    /// completed twice; an `end` long before the fence is.
    #[test]
    fn an_exit_that_raced_the_fence_counts_as_unfinished() {
        let checked_with = |cancelled_at: f64| {
            let (mut log, mut hist) = clean();
            run(&mut log, 0, 3, "b-1", 20, "NORMAL", 6.01, Some(7.0), 6.9);
            run(&mut log, 0, 3, "c-1", 25, "FAILOVER", 9.5, Some(10.5), 10.4);
            let mut cancelled = row(0, 3, 20, "CANCELLED", "NORMAL", "b-1");
            cancelled.ended_ns = Some(T0 + (cancelled_at * 1e9) as i64);
            cancelled.line =
                r#"{"cause":"the instance fenced itself (its lease could no longer be trusted)"}"#
                    .into();
            hist.push(cancelled);
            hist.push(row(0, 3, 25, "SUCCEEDED", "FAILOVER", "c-1"));
            checked(&log, &hist, &expect(false))
        };
        let r = checked_with(7.2);
        assert!(r.violations.is_empty(), "{r}");
        let r = checked_with(9.0);
        assert!(r.has(Kind::Doubled), "{r}");
    }

    #[test]
    fn a_missing_fire_is_lost_unless_skipped_on_record() {
        let (log, hist) = clean();
        // Drop item 1's run of fire 1.
        let f = fire(1);
        let log: String = log
            .lines()
            .filter(|l| !(l.contains(&format!("job 1 {f} "))))
            .map(|l| format!("{l}\n"))
            .collect();
        let hist: Vec<HistoryRow> = hist
            .into_iter()
            .filter(|h| !(h.item == 1 && h.fire_ns == T0 + 2 * S))
            .collect();
        let r = checked(&log, &hist, &expect(true));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Lost]), "{r}");
        assert!(
            r.to_string()
                .contains("item 1 fire 2026-01-01T00:00:02.000Z"),
            "{r}"
        );

        // A SKIPPED record accounts for it when the policy allows skipping ...
        let mut skipped = hist.clone();
        let mut s = row(1, 1, 0, "SKIPPED", "NORMAL", "");
        s.id = "skip".into();
        skipped.push(s);
        let r = checked(&log, &skipped, &expect(true));
        assert!(r.violations.is_empty(), "{r}");
        assert_eq!(r.skipped_fires, 1);
        // ... and is itself a violation when it does not (catch_up).
        let r = checked(&log, &skipped, &expect(false));
        assert_eq!(
            r.kinds(),
            BTreeSet::from([Kind::Lost, Kind::UnexpectedSkip]),
            "{r}"
        );
    }

    #[test]
    fn a_fire_run_twice_is_doubled() {
        let (mut log, mut hist) = clean();
        run(&mut log, 0, 2, "b-1", 30, "NORMAL", 5.5, Some(5.9), 5.8);
        hist.push(row(0, 2, 30, "SUCCEEDED", "NORMAL", "b-1"));
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Doubled]), "{r}");
        assert!(r.to_string().contains("completed 2 times"), "{r}");
        assert!(r.to_string().contains("after it had completed"), "{r}");
    }

    #[test]
    fn the_same_claim_started_twice_is_doubled() {
        let (mut log, hist) = clean();
        let first = log.lines().next().unwrap_or_default().to_string();
        log.push_str(&first);
        log.push('\n');
        let r = checked(&log, &hist, &expect(false));
        assert!(r.has(Kind::Doubled), "{r}");
        assert!(r.to_string().contains("started twice"), "{r}");
    }

    #[test]
    fn a_tick_of_a_killed_run_after_the_failover_started_is_an_overlap() {
        // The killed run's child kept ticking until 10 s: the failover run started
        // at 9.5 s.
        let (mut log, mut hist) = clean();
        run(&mut log, 0, 3, "b-1", 20, "NORMAL", 6.01, None, 10.0);
        run(&mut log, 0, 3, "c-1", 25, "FAILOVER", 9.5, Some(10.5), 10.4);
        hist.push(row(0, 3, 20, "LOST", "NORMAL", "b-1"));
        hist.push(row(0, 3, 25, "SUCCEEDED", "FAILOVER", "c-1"));
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Overlap]), "{r}");
        let text = r.to_string();
        assert!(
            text.contains("tick job 0"),
            "the evidence shows the late tick: {r}"
        );
    }

    #[test]
    fn overlapping_normal_runs_are_an_overlap() {
        let (mut log, mut hist) = clean();
        // Fire 3 of item 1 starts while fire 2 (4.01 .. 5.01) still runs.
        run(&mut log, 1, 3, "b-1", 40, "NORMAL", 4.5, Some(6.5), 6.4);
        hist.push(row(1, 3, 40, "SUCCEEDED", "NORMAL", "b-1"));
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Overlap]), "{r}");
    }

    #[test]
    fn a_token_that_does_not_increase_is_reported() {
        let (mut log, mut hist) = clean();
        run(&mut log, 1, 3, "a-1", 12, "NORMAL", 6.01, Some(7.0), 6.9);
        hist.push(row(1, 3, 12, "SUCCEEDED", "NORMAL", "a-1"));
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::TokenOrder]), "{r}");
    }

    #[test]
    fn a_dead_run_without_failover_is_reported() {
        let (mut log, mut hist) = clean();
        run(&mut log, 0, 3, "b-1", 20, "NORMAL", 6.01, None, 7.0);
        hist.push(row(0, 3, 20, "LOST", "NORMAL", "b-1"));
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::NoFailover]), "{r}");

        // A re-run that is not FAILOVER, or has a lower token, does not count.
        let mut log2 = log.clone();
        run(&mut log2, 0, 3, "c-1", 25, "NORMAL", 9.5, Some(10.5), 10.4);
        let mut hist2 = hist.clone();
        hist2.push(row(0, 3, 25, "SUCCEEDED", "NORMAL", "c-1"));
        let r = checked(&log2, &hist2, &expect(false));
        assert!(r.has(Kind::NoFailover) && r.has(Kind::Doubled), "{r}");

        let mut log3 = log.clone();
        run(
            &mut log3,
            0,
            3,
            "c-1",
            19,
            "FAILOVER",
            9.5,
            Some(10.5),
            10.4,
        );
        let mut hist3 = hist;
        hist3.push(row(0, 3, 19, "SUCCEEDED", "FAILOVER", "c-1"));
        let r = checked(&log3, &hist3, &expect(false));
        assert!(r.has(Kind::NoFailover) && r.has(Kind::TokenOrder), "{r}");
    }

    #[test]
    fn a_dead_run_not_lost_in_history_is_reported() {
        let (mut log, mut hist) = clean();
        run(&mut log, 0, 3, "b-1", 20, "NORMAL", 6.01, None, 7.0);
        run(&mut log, 0, 3, "c-1", 25, "FAILOVER", 9.5, Some(10.5), 10.4);
        hist.push(row(0, 3, 20, "RUNNING", "NORMAL", "b-1"));
        hist.push(row(0, 3, 25, "SUCCEEDED", "FAILOVER", "c-1"));
        let mut e = expect(false);
        e.killed.insert("b-1".into());
        let r = checked(&log, &hist, &e);
        assert_eq!(r.kinds(), BTreeSet::from([Kind::NotLostInHistory]), "{r}");
        // Without a record at all, too.
        hist.retain(|h| h.token != 20);
        let r = checked(&log, &hist, &e);
        assert_eq!(r.kinds(), BTreeSet::from([Kind::NotLostInHistory]), "{r}");
        // CANCELLED by its holder's own fence is the truth told by a live holder:
        // accepted; CANCELLED for another reason is not.
        let mut fenced = row(0, 3, 20, "CANCELLED", "NORMAL", "b-1");
        fenced.line.push_str(
            r#" "cause":"the instance fenced itself (its lease could no longer be trusted)""#,
        );
        hist.push(fenced);
        assert!(checked(&log, &hist, &e).violations.is_empty());
        hist.retain(|h| h.token != 20);
        hist.push(row(0, 3, 20, "CANCELLED", "NORMAL", "b-1"));
        let r = checked(&log, &hist, &e);
        assert_eq!(r.kinds(), BTreeSet::from([Kind::NotLostInHistory]), "{r}");
    }

    #[test]
    fn history_that_disagrees_with_the_witness_is_reported() {
        let (log, mut hist) = clean();
        hist[0].status = "FAILED".into();
        hist.remove(1);
        hist.push(row(1, 7, 99, "SUCCEEDED", "NORMAL", "a-1"));
        hist.push(row(0, 8, 98, "RUNNING", "NORMAL", "a-1"));
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(
            r.kinds(),
            BTreeSet::from([Kind::NotInHistory, Kind::Phantom, Kind::StuckRunning]),
            "{r}"
        );
        assert_eq!(
            r.violations
                .iter()
                .filter(|v| v.kind == Kind::NotInHistory)
                .count(),
            2,
            "{r}"
        );
        // Runs of killed instances may have lost their last records.
        let mut e = expect(false);
        e.killed.insert("a-1".into());
        let r = checked(&log, &hist, &e);
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Phantom]), "{r}");
    }

    #[test]
    fn a_fire_off_the_grid_is_reported() {
        let (mut log, mut hist) = clean();
        let f = show_ns(T0 + 5 * S);
        log.push_str(&format!(
            "start job 0 {f} a-1 50 NORMAL x {} 1\n",
            T0 + 6 * S
        ));
        log.push_str(&format!("end job 0 {f} a-1 50 NORMAL x {} 1\n", T0 + 7 * S));
        let mut h = row(0, 0, 50, "SUCCEEDED", "NORMAL", "a-1");
        h.id = "x".into();
        h.fire_ns = T0 + 5 * S;
        hist.push(h);
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::OffGrid]), "{r}");
    }

    #[test]
    fn a_fire_skipped_and_run_is_reported() {
        let (log, mut hist) = clean();
        let mut s = row(0, 1, 0, "SKIPPED", "NORMAL", "");
        s.id = "skip".into();
        s.fire_end_ns = Some(T0 + 4 * S);
        hist.push(s);
        let r = checked(&log, &hist, &expect(true));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::SkippedButRan]), "{r}");
        assert_eq!(r.violations.len(), 2, "fires 1 and 2 of item 0: {r}");
    }

    #[test]
    fn malformed_lines_and_orphans_are_reported() {
        let (mut log, hist) = clean();
        log.push_str("start job 0 not-a-time a-1 1 NORMAL x 1 1\n");
        log.push_str(&format!("tick job 1 {} 77 {} 5\n", fire(0), T0));
        log.push_str("garbage\n");
        log.push_str("start job 0 partial"); // no newline: still being written
        let r = checked(&log, &hist, &expect(false));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Malformed]), "{r}");
        assert_eq!(r.violations.len(), 3, "{r}");
    }

    #[test]
    fn a_job_that_never_ran_is_reported() {
        let r = checked("", &[], &expect(true));
        assert_eq!(r.kinds(), BTreeSet::from([Kind::NoRuns]), "{r}");
    }

    #[test]
    fn the_witness_script_logs_start_ticks_and_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("witness.sh");
        let log = dir.path().join("w.log");
        fs::write(&script, witness_script(&script, &log)).expect("write");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let f = fire(0);
        let status = Command::new(&script)
            .arg("{\"json\":\"context\"}")
            .env("SHARDCRON_JOB", "job")
            .env("SHARDCRON_ITEM", "1")
            .env("SHARDCRON_FIRE_TIME", &f)
            .env("SHARDCRON_INSTANCE", "a-1")
            .env("SHARDCRON_TOKEN", "42")
            .env("SHARDCRON_SOURCE", "NORMAL")
            .env("SHARDCRON_EXECUTION_ID", "e1")
            .env("SHARDCRON_PARAM", "0.45")
            .status()
            .expect("run witness");
        assert!(status.success());
        let parsed = parse_log(&fs::read_to_string(&log).expect("read log"));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.runs.len(), 1);
        let r = &parsed.runs[0];
        assert_eq!((r.job.as_str(), r.item, r.token), ("job", 1, 42));
        assert_eq!(r.fire_ns, T0);
        assert!(r.ended());
        assert!(r.ticks >= 2, "ticks: {}", r.ticks);
        assert!(r.pids.len() >= 2, "script and ticker pids: {:?}", r.pids);
        let (s, e) = (r.start_ns, r.end_ns.unwrap_or_default());
        assert!(e - s >= 400_000_000, "slept ~0.45 s: {}", e - s);
        assert!(
            r.last_tick_ns.is_some_and(|t| t <= e),
            "ticks stop before the end"
        );
        for pid in &r.pids {
            assert!(!pid_alive(*pid), "pid {pid} outlived the run");
        }
    }
}
