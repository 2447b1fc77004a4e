//! Fault injection against the real `shardcron agent` binary and a real etcd
//! (DESIGN.md sections 5 and 11, issue 10): SIGSTOP of an item holder with and
//! without its scripts, a partition of one agent from etcd (a userspace TCP proxy
//! per agent), etcd kill -9 and restart, and etcd down for 30 s. Each scenario
//! checks the invariants I1-I5 with the checker of `support` (the witness log, the
//! schedules, the history), checks that its fault really happened, and prints what
//! it measured (`eprintln`: `cargo nextest run -p shardcron --test faults
//! --no-capture` shows the numbers).
//!
//! Scenario 2 uses a token-checking sink ([`TokenSink`]): a tiny HTTP service the
//! job writes its fencing token to, which rejects and counts tokens lower than the
//! highest it has seen. The test at the end checks that a run ending while etcd
//! is down completes once (this suite found it running twice).

#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardcron_testkit::TcpProxy;
use support::faults::{
    CATCH_UP, MS, SEC, TTL, agent_log, assert_still_fenced, between_runs, etcd_addr, log_event, ms,
    sleep_past, start_and_pick_a_victim, wait_fire_without, wait_health,
};
use support::{
    Cluster, Expect, Kind, Run, Violation, grid, now_ns, pid_alive, run_by_id, summary,
    wait_full_fires, wait_inflight,
};

const FIRE_ONCE: &str = r#""fire_once""#;

// ---------------------------------------------------------------------------
// Jobs and waits
// ---------------------------------------------------------------------------

/// A script job running `command` every `every_s` seconds on `shards` items; each
/// run lasts `run_s` seconds.
fn job_with(
    name: &str,
    command: &str,
    every_s: u64,
    shards: u32,
    run_s: &str,
    misfire: &str,
) -> String {
    support::job_table(name, command, every_s, shards, run_s, "60s", misfire)
}

fn job(name: &str, every_s: u64, shards: u32, run_s: &str, misfire: &str) -> String {
    job_with(name, "./witness.sh", every_s, shards, run_s, misfire)
}

/// The first run of this fire of this item with source FAILOVER, once it ended.
fn wait_failover_done(c: &mut Cluster, of: &Run) -> Run {
    c.wait_for(
        "a FAILOVER run of the stale fire to complete",
        Duration::from_secs(40),
        |c| {
            c.log()
                .of_job(&of.job)
                .find(|r| {
                    r.item == of.item
                        && r.fire_ns == of.fire_ns
                        && r.source == "FAILOVER"
                        && r.ended()
                })
                .cloned()
        },
    )
}

// ---------------------------------------------------------------------------
// Stopping processes
// ---------------------------------------------------------------------------

/// (state, parent pid) of a process, from /proc.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every live descendant of `root`.
fn descendants(root: i32) -> BTreeSet<i32> {
    let mut parent: BTreeMap<i32, i32> = BTreeMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok())
            && let Some((state, ppid)) = proc_stat(pid)
            && !matches!(state, 'Z' | 'X')
        {
            parent.insert(pid, ppid);
        }
    }
    let mut out = BTreeSet::new();
    let mut grew = true;
    while grew {
        grew = false;
        for (&pid, &ppid) in &parent {
            if (ppid == root || out.contains(&ppid)) && out.insert(pid) {
                grew = true;
            }
        }
    }
    out
}

fn send(pid: i32, sig: Signal) {
    // A process that exited meanwhile is fine (ESRCH).
    let _ = kill(Pid::from_raw(pid), sig);
}

fn stopped(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(s, _)| s == 'T' || s == 't')
}

/// Processes held with SIGSTOP; SIGCONT on [`Frozen::thaw`] or drop (so that a
/// failing test leaves nothing stopped behind).
#[derive(Debug)]
struct Frozen {
    root: i32,
    pids: BTreeSet<i32>,
    thawed: bool,
}

impl Frozen {
    /// SIGSTOP `root`, and with `tree` all its descendants, repeatedly until every
    /// one of them is stopped (a child may fork until it is stopped itself).
    fn stop(root: i32, tree: bool) -> Frozen {
        send(root, Signal::SIGSTOP);
        let mut f = Frozen {
            root,
            pids: BTreeSet::from([root]),
            thawed: false,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if tree {
                for pid in descendants(root) {
                    if f.pids.insert(pid) {
                        send(pid, Signal::SIGSTOP);
                    }
                }
            }
            let all_stopped = f
                .pids
                .iter()
                .all(|&p| stopped(p) || !pid_alive(p) || proc_stat(p).is_none());
            let settled = !tree || descendants(root).is_subset(&f.pids);
            if all_stopped && settled {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "could not stop {root} and its descendants: {:?}",
                f.pids
                    .iter()
                    .map(|&p| (p, proc_stat(p)))
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGCONT everything stopped, the root first.
    fn thaw(&mut self) {
        if self.thawed {
            return;
        }
        self.thawed = true;
        send(self.root, Signal::SIGCONT);
        for &p in &self.pids {
            send(p, Signal::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

// ---------------------------------------------------------------------------
// The token-checking sink
// ---------------------------------------------------------------------------

/// One write the sink received.
#[derive(Debug, Clone)]
struct SinkWrite {
    job: String,
    item: u32,
    token: i64,
    at_ns: i64,
    accepted: bool,
    /// The highest token of (job, item) when the write arrived.
    highest: Option<i64>,
}

#[derive(Debug, Default)]
struct SinkState {
    highest: BTreeMap<(String, u32), i64>,
    writes: Vec<SinkWrite>,
}

/// A tiny HTTP service on 127.0.0.1 that jobs write to with their fencing token
/// (`POST /write?job=J&item=I&token=T`): it keeps the highest token per (job, item)
/// and rejects (409) a token lower than that, counting the rejections. This is
/// what DESIGN.md I4 asks of a downstream system that wants to be safe against a
/// stale writer.
#[derive(Debug)]
struct TokenSink {
    port: u16,
    state: Arc<Mutex<SinkState>>,
    stop: Arc<AtomicBool>,
}

impl TokenSink {
    fn start() -> TokenSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let port = listener.local_addr().expect("sink addr").port();
        let state = Arc::new(Mutex::new(SinkState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stp.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let st = st.clone();
                    thread::spawn(move || serve_sink(conn, &st));
                }
            }
        });
        TokenSink { port, state, stop }
    }

    fn writes(&self) -> Vec<SinkWrite> {
        self.state.lock().expect("sink state").writes.clone()
    }

    fn rejections(&self) -> Vec<SinkWrite> {
        self.writes().into_iter().filter(|w| !w.accepted).collect()
    }
}

impl Drop for TokenSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_sink(mut conn: TcpStream, state: &Mutex<SinkState>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let target = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("");
    let query: BTreeMap<&str, &str> = target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let parsed = (|| {
        let job = query.get("job")?.to_string();
        let item = query.get("item")?.parse::<u32>().ok()?;
        let token = query.get("token")?.parse::<i64>().ok()?;
        Some((job, item, token))
    })();
    let (code, body) = match parsed {
        None => ("400 Bad Request", "bad request\n"),
        Some((job, item, token)) => {
            let mut s = state.lock().expect("sink state");
            let highest = s.highest.get(&(job.clone(), item)).copied();
            let accepted = highest.is_none_or(|h| token >= h);
            if accepted {
                s.highest.insert((job.clone(), item), token);
            }
            s.writes.push(SinkWrite {
                job,
                item,
                token,
                at_ns: now_ns(),
                accepted,
                highest,
            });
            if accepted {
                ("200 OK", "ok\n")
            } else {
                ("409 Conflict", "stale token\n")
            }
        }
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A job script that runs the witness and, while it runs, writes its token to the
/// sink every ~100 ms from a background process of the run's process group.
fn write_sink_witness(root: &Path, sink_port: u16) -> String {
    let path = root.join("sink-witness.sh");
    let witness = root.join("witness.sh");
    fs::write(
        &path,
        format!(
            r#"#!/bin/sh
# Written by shardcron's fault tests: the witness, plus a writer that sends this
# run's fencing token to the token-checking sink every ~100 ms while it runs.
PATH=/usr/bin:/bin
export PATH
(
  while :; do
    curl -s -o /dev/null -m 1 -X POST "http://127.0.0.1:{sink_port}/write?job=$SHARDCRON_JOB&item=$SHARDCRON_ITEM&token=$SHARDCRON_TOKEN"
    sleep 0.1
  done
) &
WRITER=$!
'{witness}' "$@"
RC=$?
kill "$WRITER" 2>/dev/null
wait "$WRITER" 2>/dev/null
exit $RC
"#,
            witness = witness.display()
        ),
    )
    .expect("write sink witness");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    "./sink-witness.sh".into()
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Scenario 1: SIGSTOP of an item holder together with its script's processes
/// (the agent and every descendant: the supervisor, the witness, its ticking child)
/// for 2 x TTL, then SIGCONT. Meanwhile its lease expires and another agent fails
/// the run over with a higher token. On resuming, the holder finds its lease
/// deadline long past and fences itself before it writes anything with its stale
/// identity (its log: the fence first, no claim, release or heartbeat before it),
/// cancels the stale run (whose run key the failover already took) and registers
/// again under a new identity. I2 and I4 hold; the stale run's history record is
/// CANCELLED by the fence (or LOST).
///
/// I1 is scoped to live, connected instances: a stopped process is neither. The
/// stale run's processes resume together with the agent, so they may tick for the
/// moment it takes the agent to kill them while the failover run is running: that
/// overlap is allowed only within 1 s of SIGCONT.
#[test]
fn sigstop_of_a_holder_and_its_scripts_for_two_ttls() {
    let started = Instant::now();
    // A run lasts longer than the pause: its `sleep` ends on the monotonic clock,
    // which runs on while stopped, so a shorter run would log its end right after
    // SIGCONT instead of being stopped by the fence.
    let mut c = Cluster::new("sigstop-group", &job("long", 12, 3, "7", FIRE_ONCE));
    c.start(&["n1", "n2", "n3"]);
    let t_ready = now_ns();
    let leader = c.wait_leader(None, Duration::from_secs(20));

    let stale = wait_inflight(&mut c, "long", 3, t_ready, |name| name != leader);
    let victim = Cluster::name_of(&stale.instance).to_string();
    let i = c.live(&victim).expect("victim runs");
    let agent_pid = i32::try_from(c.agents[i].pid).expect("pid");
    let log_before = agent_log(&mut c, &victim).len();

    let t_stop = now_ns();
    let mut frozen = Frozen::stop(agent_pid, true);
    // The fault happened: the agent and the run's processes are all stopped.
    let run_pids = run_by_id(&c, &stale.exec_id).pids;
    assert!(
        run_pids.is_subset(&frozen.pids),
        "the run's processes {run_pids:?} are among the stopped {:?}",
        frozen.pids
    );
    // Every one still there is stopped (a short-lived child of the witness, such
    // as its `date`, may have exited between being found and being stopped), the
    // agent and at least one of the run's processes among them.
    assert!(
        stopped(agent_pid)
            && run_pids.iter().any(|&p| stopped(p))
            && frozen
                .pids
                .iter()
                .all(|&p| stopped(p) || !pid_alive(p) || proc_stat(p).is_none()),
        "all stopped: {:?}",
        frozen
            .pids
            .iter()
            .map(|&p| (p, proc_stat(p)))
            .collect::<Vec<_>>()
    );
    thread::sleep(2 * TTL);
    assert!(
        frozen.pids.iter().all(|&p| stopped(p)),
        "still stopped after 2 x TTL"
    );
    let t_cont = now_ns();
    frozen.thaw();

    // While stopped, the stale run did not tick.
    let r = run_by_id(&c, &stale.exec_id);
    assert!(
        r.last_tick_ns
            .is_none_or(|t| t < t_stop + 300 * MS || t >= t_cont),
        "the stopped run ticked while stopped: {r:?}"
    );
    // Its processes are killed promptly after SIGCONT and it never ends.
    c.wait_for(
        "the stale run's processes to be gone",
        Duration::from_secs(10),
        |c| {
            let r = run_by_id(c, &stale.exec_id);
            r.pids.iter().all(|p| !pid_alive(*p)).then_some(())
        },
    );
    let r = run_by_id(&c, &stale.exec_id);
    assert!(
        !r.ended(),
        "the stale run logged its end after SIGCONT: {r:?}"
    );
    let stale_after_cont = r.last_ns() - t_cont;
    assert!(
        stale_after_cont <= SEC,
        "the stale run was seen {} ms after SIGCONT: {r:?}",
        ms(stale_after_cont)
    );

    let failover = wait_failover_done(&mut c, &stale);
    assert!(failover.token > stale.token, "{failover:?} vs {stale:?}");
    assert_ne!(Cluster::name_of(&failover.instance), victim);
    // The victim's log after SIGCONT: it fences itself at once (its lease deadline
    // passed while it was stopped), before any registry write of its stale
    // identity: no claim, no release, no heartbeat; the stale run is cancelled and
    // keeps its run key (already failed over); then it registers a new identity.
    let log = agent_log(&mut c, &victim);
    let (t_fence, fence_line) = log_event(&log, log_before, "fencing: the lease can no longer")
        .unwrap_or_else(|| {
            panic!(
                "the agent fenced itself after SIGCONT:\n{}",
                &log[log_before..]
            )
        });
    let (t_cancel, cancel_line) = log_event(
        &log,
        log_before,
        &format!("token={} status=CANCELLED", stale.token),
    )
    .unwrap_or_else(|| panic!("the stale run was cancelled:\n{}", &log[log_before..]));
    let (t_reg, reg_line) = log_event(&log, log_before, "registered instance=")
        .unwrap_or_else(|| panic!("the agent registered again:\n{}", &log[log_before..]));
    assert!(
        t_fence <= t_cancel && t_fence <= t_reg,
        "fenced first:\n{}",
        &log[log_before..]
    );
    assert!(
        !reg_line.contains(&format!("instance={}", stale.instance)),
        "a new identity: {reg_line}"
    );
    let before_fence: Vec<&str> = log[log_before..]
        .lines()
        .take_while(|l| !l.contains("fencing: the lease"))
        .filter(|l| l.contains("claim") || l.contains("took over") || l.contains("release"))
        .collect();
    assert!(
        before_fence.is_empty(),
        "registry writes of the stale identity before its fence: {before_fence:?}"
    );
    assert!(
        t_fence - t_cont <= SEC,
        "fenced {} ms after SIGCONT",
        ms(t_fence - t_cont)
    );
    eprintln!(
        "sigstop holder+scripts: stopped {} processes for {} ms; failover run started {} ms \
         after SIGSTOP (token {} -> {}); after SIGCONT the agent fenced in {} ms, cancelled \
         the stale run in {} ms (its last tick: {} ms after SIGCONT) and registered a new \
         identity in {} ms\n  {fence_line}\n  {cancel_line}\n  {reg_line}",
        frozen.pids.len(),
        ms(t_cont - t_stop),
        ms(failover.start_ns - t_stop),
        stale.token,
        failover.token,
        ms(t_fence - t_cont),
        ms(t_cancel - t_cont),
        ms(stale_after_cont),
        ms(t_reg - t_cont),
    );

    let next = stale.fire_ns + 12 * SEC;
    wait_full_fires(&mut c, "long", 3, next, 1, 60);
    c.stop_all();

    let history = c.history();
    let lost = history
        .iter()
        .find(|h| h.id == stale.exec_id)
        .unwrap_or_else(|| panic!("no history record of the stale run {}", stale.exec_id));
    assert!(
        lost.status == "LOST"
            || (lost.status == "CANCELLED" && lost.line.contains("the instance fenced itself")),
        "the stale run is LOST or CANCELLED by the fence: {}",
        lost.line
    );
    eprintln!("  the stale run's history record: {}", lost.status);
    let report = c.check_allowing(
        &Expect {
            jobs: vec![grid("long", 12, 3)],
            from_ns: stale.fire_ns.min(t_ready),
            to_ns: next,
            allow_skipped: true,
            killed: BTreeSet::new(),
        },
        |v| v.kind == Kind::Overlap && v.evidence.first() == Some(&stale.start_line),
    );
    assert!(report.fires_checked >= 6, "{report}");
    summary("sigstop holder+scripts", started, &report);
}

/// Scenario 2: SIGSTOP of the agent only, while its script keeps running. This is
/// the limit of self-fencing: a stopped agent cannot stop its children, so when its
/// lease expires and another agent fails the fire over, **two runs of the item
/// overlap in time** (the stale one keeps ticking after the failover run started:
/// the checker reports exactly that I1 overlap and nothing else). Fencing tokens are
/// the answer for downstream systems: the stale run writes with its old token after
/// the failover run wrote with a higher one, and the token-checking sink rejects
/// and counts those writes. After SIGCONT the agent fences itself and kills the
/// stale run promptly.
#[test]
fn sigstop_of_the_agent_only_overlaps_and_the_sink_rejects_the_stale_writer() {
    let started = Instant::now();
    let sink = TokenSink::start();
    let mut c = Cluster::new("sigstop-agent", "");
    let command = write_sink_witness(&c.root, sink.port);
    fs::write(&c.config, job_with("sunk", &command, 12, 3, "8", FIRE_ONCE)).expect("config");
    c.start(&["n1", "n2", "n3"]);
    let t_ready = now_ns();
    let leader = c.wait_leader(None, Duration::from_secs(20));

    let stale = wait_inflight(&mut c, "sunk", 3, t_ready, |name| name != leader);
    let victim = Cluster::name_of(&stale.instance).to_string();
    let i = c.live(&victim).expect("victim runs");
    let agent_pid = i32::try_from(c.agents[i].pid).expect("pid");

    let t_stop = now_ns();
    let mut frozen = Frozen::stop(agent_pid, false);
    assert!(stopped(agent_pid), "the agent is stopped");
    let run_pids = run_by_id(&c, &stale.exec_id).pids;
    assert!(
        run_pids.iter().all(|&p| pid_alive(p) && !stopped(p)),
        "the run's processes keep running: {:?}",
        run_pids
            .iter()
            .map(|&p| (p, proc_stat(p)))
            .collect::<Vec<_>>()
    );

    // Held until the failover run has started and the sink rejected the stale
    // writer (and at least 2 x TTL).
    let failover = c.wait_for(
        "a FAILOVER run of the stale fire, while the agent is stopped",
        Duration::from_secs(30),
        |c| {
            c.log()
                .of_job("sunk")
                .find(|r| {
                    r.item == stale.item && r.fire_ns == stale.fire_ns && r.source == "FAILOVER"
                })
                .cloned()
        },
    );
    c.wait_for(
        "the sink to reject a stale write",
        Duration::from_secs(10),
        |_| (!sink.rejections().is_empty()).then_some(()),
    );
    let hold = Duration::from_nanos(u64::try_from(now_ns() - t_stop).expect("elapsed"));
    if hold < 2 * TTL {
        thread::sleep(2 * TTL - hold);
    }
    assert!(stopped(agent_pid), "the agent is still stopped");
    let r = run_by_id(&c, &stale.exec_id);
    assert!(
        !r.ended(),
        "the stale run ended while its agent was stopped (make the run longer): {r:?}"
    );
    let t_cont = now_ns();
    frozen.thaw();

    c.wait_for(
        "the stale run's processes to be gone",
        Duration::from_secs(10),
        |c| {
            let r = run_by_id(c, &stale.exec_id);
            r.pids.iter().all(|p| !pid_alive(*p)).then_some(())
        },
    );
    let r = run_by_id(&c, &stale.exec_id);
    assert!(!r.ended(), "the stale run was killed, not ended: {r:?}");
    let stale_after_cont = r.last_ns() - t_cont;
    let overlap = r.last_ns() - failover.start_ns;
    assert!(
        overlap > 0,
        "the stale run ran on after the failover run started: {r:?} {failover:?}"
    );
    assert!(
        stale_after_cont <= SEC,
        "the stale run was seen {} ms after SIGCONT",
        ms(stale_after_cont)
    );

    // The sink: the stale token was rejected once the failover token was written,
    // and nothing else was.
    let failover = wait_failover_done(&mut c, &stale);
    let writes = sink.writes();
    let rejected = sink.rejections();
    for w in &rejected {
        assert!(
            w.job == "sunk"
                && w.item == stale.item
                && w.token == stale.token
                && w.highest == Some(failover.token)
                && w.at_ns >= failover.start_ns,
            "only the stale writer is rejected, after the failover run wrote: {w:?} \
             (stale {stale:?}, failover {failover:?})"
        );
    }
    let first_failover_write = writes
        .iter()
        .find(|w| w.item == stale.item && w.token == failover.token)
        .map(|w| w.at_ns)
        .expect("the failover run wrote to the sink");
    let stale_accepted_after = writes
        .iter()
        .filter(|w| w.token == stale.token && w.accepted && w.at_ns > first_failover_write)
        .count();
    assert_eq!(stale_accepted_after, 0, "{writes:?}");
    eprintln!(
        "sigstop agent only: failover run started {} ms after SIGSTOP (token {} -> {}); the \
         two runs overlapped for {} ms; the sink rejected {} stale write(s) of {} in all; \
         the stale run was last seen {} ms after SIGCONT",
        ms(failover.start_ns - t_stop),
        stale.token,
        failover.token,
        ms(overlap),
        rejected.len(),
        writes.len(),
        ms(stale_after_cont)
    );

    let next = stale.fire_ns + 12 * SEC;
    wait_full_fires(&mut c, "sunk", 3, next, 1, 60);
    c.stop_all();
    drop(sink);

    let expect = Expect {
        jobs: vec![grid("sunk", 12, 3)],
        from_ns: stale.fire_ns.min(t_ready),
        to_ns: next,
        allow_skipped: true,
        killed: BTreeSet::new(),
    };
    let is_the_overlap = |v: &Violation| {
        v.kind == Kind::Overlap
            && v.evidence.first() == Some(&stale.start_line)
            && v.evidence.last() == Some(&failover.start_line)
    };
    let report = c.check_allowing(&expect, is_the_overlap);
    assert_eq!(
        report
            .violations
            .iter()
            .filter(|v| v.kind == Kind::Overlap)
            .count(),
        1,
        "exactly the overlap of the stale run with the failover run: {report}"
    );
    summary("sigstop agent only", started, &report);
}

/// Scenario 3: one agent partitioned from etcd for 3 x TTL, then healed (every
/// agent talks to etcd through its own TCP proxy; the victim's is cut: open
/// connections closed, new ones refused). The victim fences itself (/health 503),
/// its items move to the others, and after the heal it registers again and gets
/// items back. With `catch_up`, every fire runs exactly once (I1, I2, I3, I4) and
/// all items run again on the three agents (I5).
#[test]
fn a_partitioned_agent_fences_its_items_move_and_it_rejoins() {
    let started = Instant::now();
    let mut c = Cluster::new("partition", &job("grid", 2, 6, "1", CATCH_UP));
    let target = etcd_addr(&c);
    let names = ["n1", "n2", "n3"];
    let mut proxies = BTreeMap::new();
    for name in names {
        let p = TcpProxy::start(target);
        c.registry_for
            .insert(name.into(), format!("etcd://{}", p.addr()));
        proxies.insert(name, p);
    }
    let (t_ready, victim) = start_and_pick_a_victim(&mut c, &names, "grid", 6);
    let old_id = c.instance(victim);
    let proxy = &proxies[victim];
    assert!(
        proxy.connections() > 0,
        "the victim talks through its proxy"
    );
    // Cut between runs: a run that ends while its agent is cut off (before the
    // fence) is run again afterwards (see `between_runs`).
    between_runs(&mut c, "grid", 2, 1100..1600);
    let t_cut = now_ns();
    proxy.cut();
    wait_health(&mut c, victim, 503, None, Duration::from_secs(30));
    let t_fenced = now_ns();
    // Its items move: a fire after the cut completes on all items without it.
    let moved = wait_fire_without(&mut c, "grid", 6, victim, t_cut);
    sleep_past(t_cut, 3 * TTL);
    // Still partitioned: no run of the victim started after it fenced.
    assert_still_fenced(&mut c, victim, t_fenced);
    let before_heal = proxy.connections();
    let t_heal = now_ns();
    proxy.heal();
    let new_id = wait_health(&mut c, victim, 200, Some(&old_id), Duration::from_secs(30))
        .expect("instance id");
    let t_rejoined = now_ns();
    assert_ne!(new_id, old_id, "it rejoins under a new identity");
    assert!(proxy.connections() > before_heal, "it reconnected");
    c.wait_for(
        "the rejoined victim to run items",
        Duration::from_secs(30),
        |c| {
            c.log()
                .instances_after("grid", t_heal)
                .contains(&new_id)
                .then_some(())
        },
    );
    let t_runs = now_ns();
    wait_full_fires(&mut c, "grid", 6, t_runs, 2, 60);
    let log_text = agent_log(&mut c, victim);
    assert!(
        log_text.contains("fencing: the lease can no longer be trusted"),
        "the victim's log says it fenced itself"
    );
    eprintln!(
        "partition: cut for {} ms; the victim fenced (/health 503) {} ms after the cut; the \
         first fire run wholly without it was {} ms after the cut, its last item starting {} \
         ms after the fire instant; after the heal it was healthy again in {} ms and ran \
         items {} ms after the heal",
        ms(t_heal - t_cut),
        ms(t_fenced - t_cut),
        ms(moved.0 - t_cut),
        ms(moved.1 - moved.0),
        ms(t_rejoined - t_heal),
        ms(t_runs - t_heal)
    );
    let t_stop = now_ns();
    c.stop_all();
    let report = c.check(&Expect {
        jobs: vec![grid("grid", 2, 6)],
        from_ns: t_ready,
        to_ns: t_stop - 3 * SEC,
        allow_skipped: false,
        killed: BTreeSet::new(),
    });
    summary("partition", started, &report);
}

/// Scenario 4: etcd kill -9 and restart on the same data dir, with a run in
/// flight. The agents lose their keep-alives while etcd is down; once it is back,
/// the cluster runs again and every run interrupted by the outage is failed over
/// within (restart time + TTL + 1 s) of the kill.
#[test]
fn etcd_kill9_and_restart_fails_over_within_restart_plus_ttl() {
    let started = Instant::now();
    let mut c = Cluster::new("etcd-restart", &job("long", 10, 3, "5", FIRE_ONCE));
    c.start(&["n1", "n2", "n3"]);
    let t_ready = now_ns();
    c.wait_leader(None, Duration::from_secs(20));
    let inflight = wait_inflight(&mut c, "long", 3, t_ready, |_| true);

    let etcd_pid = i32::try_from(c.etcd.pid(0).expect("etcd runs")).expect("pid");
    let t_kill = now_ns();
    c.etcd.kill9(0);
    assert!(!pid_alive(etcd_pid), "etcd is dead");
    c.etcd.restart(0);
    let t_up = now_ns();
    let restart = t_up - t_kill;

    // What became of every run in flight at the kill: it ended (no fence), or it
    // was failed over.
    let log = c.log();
    let interrupted: Vec<Run> = log
        .of_job("long")
        .filter(|r| r.start_ns < t_kill && r.end_ns.is_none_or(|e| e > t_kill))
        .cloned()
        .collect();
    assert!(
        interrupted.iter().any(|r| r.exec_id == inflight.exec_id),
        "{inflight:?}"
    );
    let mut failovers = Vec::new();
    for r in &interrupted {
        let outcome = c.wait_for(
            "the run in flight to end or be failed over",
            Duration::from_secs(40),
            |c| {
                let log = c.log();
                let me = log.runs.iter().find(|x| x.exec_id == r.exec_id)?.clone();
                if me.ended() {
                    return Some((me, None));
                }
                let f = log
                    .of_job("long")
                    .find(|x| x.item == r.item && x.fire_ns == r.fire_ns && x.source == "FAILOVER")
                    .cloned();
                f.map(|f| (me, Some(f)))
            },
        );
        if let (_, Some(f)) = outcome {
            failovers.push((r.clone(), f));
        }
    }
    let bound = restart + i64::try_from(TTL.as_nanos()).expect("ns") + SEC;
    for (r, f) in &failovers {
        let took = f.start_ns - t_kill;
        eprintln!(
            "etcd restart: item {} fire token {} failed over as token {} {} ms after the kill \
             ({} ms after etcd was ready); bound restart + TTL + 1 s = {} ms",
            r.item,
            r.token,
            f.token,
            ms(took),
            ms(f.start_ns - t_up),
            ms(bound)
        );
        assert!(
            took <= bound,
            "failover {} ms after the kill, bound {} ms",
            ms(took),
            ms(bound)
        );
    }
    // The cluster runs again: a fire after the restart completes on every item.
    let t_after = now_ns();
    wait_full_fires(&mut c, "long", 3, t_up, 1, 60);
    let first_full = c
        .log()
        .completed("long")
        .range(t_up..)
        .find(|(_, items)| items.len() == 3)
        .map(|(f, _)| *f)
        .expect("a full fire");
    eprintln!(
        "etcd restart: etcd was down and restarted in {} ms; {} of {} runs in flight were \
         failed over, the others ended normally; first full fire {} ms after etcd was ready \
         (waited {} ms)",
        ms(restart),
        failovers.len(),
        interrupted.len(),
        ms(first_full - t_up),
        ms(now_ns() - t_after)
    );
    let t_stop = now_ns();
    c.stop_all();
    let report = c.check(&Expect {
        jobs: vec![grid("long", 10, 3)],
        from_ns: inflight.fire_ns.min(t_ready),
        to_ns: t_stop - 6 * SEC,
        allow_skipped: true,
        killed: BTreeSet::new(),
    });
    summary("etcd restart", started, &report);
}

/// Scenario 5: etcd down for 30 s (kill -9 between runs, wait, restart on the
/// same data dir). Every agent fences itself (/health 503) while
/// etcd is down and no fire is claimed without a valid lease: no witness start
/// line during the outage. Once etcd is back, the `fire_once` misfire policy
/// applies: for each item exactly one run (source MISFIRE) of the latest missed
/// fire, and the earlier missed fires recorded SKIPPED.
///
/// `fire_once` runs the *on-time* fire (NORMAL) instead of a MISFIRE one when the
/// agents are back within the misfire threshold (1 s) of a fire; etcd is restarted
/// just after a fire instant so that the recovery (etcd's restart alone takes more
/// than a second) always ends past the threshold and well before the next fire.
#[test]
fn etcd_down_for_30s_claims_nothing_and_fires_once_afterwards() {
    const EVERY: i64 = 8;
    let started = Instant::now();
    let mut c = Cluster::new("etcd-down", &job("grid", 8, 4, "0.5", FIRE_ONCE));
    c.start(&["n1", "n2"]);
    let t_ready = now_ns();
    c.wait_leader(None, Duration::from_secs(20));
    wait_full_fires(&mut c, "grid", 4, t_ready, 1, 60);
    // Kill etcd between runs: a run that ends while etcd is down is the subject of
    // the last test.
    let anchor = between_runs(&mut c, "grid", EVERY, 1000..EVERY * 1000 - 2000);

    let etcd_pid = i32::try_from(c.etcd.pid(0).expect("etcd runs")).expect("pid");
    let t_kill = now_ns();
    c.etcd.kill9(0);
    assert!(!pid_alive(etcd_pid), "etcd is dead");
    let etcd_port = etcd_addr(&c).port();
    // Every agent fences itself.
    for name in ["n1", "n2"] {
        wait_health(&mut c, name, 503, None, Duration::from_secs(30));
    }
    let t_all_fenced = now_ns();
    // Down for 30 s, then until 200..700 ms after a fire instant.
    loop {
        assert!(
            !shardcron_testkit::port_open(etcd_port),
            "etcd is down for the whole outage"
        );
        let now = now_ns();
        let phase = (now - anchor).rem_euclid(EVERY * SEC);
        if now - t_kill >= 30 * SEC && (200 * MS..700 * MS).contains(&phase) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let t_restart = now_ns();
    let latest_missed = t_restart - (t_restart - anchor).rem_euclid(EVERY * SEC);
    c.etcd.restart(0);
    let t_up = now_ns();

    // No claim while etcd was down: runs started in the outage were claimed before
    // the kill (their start lines follow the claim by a few ms).
    let log = c.log();
    let during: Vec<&Run> = log
        .runs
        .iter()
        .filter(|r| r.start_ns > t_kill + 500 * MS && r.start_ns < t_restart)
        .collect();
    assert!(
        during.is_empty(),
        "runs started while etcd was down: {during:?}"
    );

    // The missed fires: one MISFIRE run per item, of the latest missed fire.
    let misfires: BTreeMap<u32, Vec<Run>> =
        c.wait_for("one MISFIRE run per item", Duration::from_secs(40), |c| {
            let mut by_item: BTreeMap<u32, Vec<Run>> = BTreeMap::new();
            for r in c
                .log()
                .of_job("grid")
                .filter(|r| r.source == "MISFIRE" && r.ended())
            {
                by_item.entry(r.item).or_default().push(r.clone());
            }
            (by_item.len() == 4).then_some(by_item)
        });
    let t_misfired = misfires
        .values()
        .flatten()
        .map(|r| r.start_ns)
        .max()
        .unwrap_or_default();
    wait_full_fires(&mut c, "grid", 4, t_up, 1, 60);
    let t_stop = now_ns();
    c.stop_all();

    let history = c.history();
    for (item, runs) in &misfires {
        assert_eq!(runs.len(), 1, "item {item}: one MISFIRE run: {runs:?}");
        let r = &runs[0];
        assert_eq!(
            r.fire_ns, latest_missed,
            "item {item}: the MISFIRE run is of the latest missed fire: {r:?}"
        );
        let h = history
            .iter()
            .find(|h| h.id == r.exec_id)
            .unwrap_or_else(|| panic!("no history record of {r:?}"));
        assert_eq!(
            (h.status.as_str(), h.source.as_str()),
            ("SUCCEEDED", "MISFIRE"),
            "{}",
            h.line
        );
        let skipped: Vec<_> = history
            .iter()
            .filter(|h| {
                h.job == "grid"
                    && h.item == *item
                    && h.status == "SKIPPED"
                    && h.fire_ns > t_kill - EVERY * SEC
            })
            .collect();
        assert_eq!(
            skipped.len(),
            1,
            "item {item}: the earlier missed fires are one SKIPPED record: {skipped:?}"
        );
    }
    eprintln!(
        "etcd down: all agents fenced {} ms after the kill; etcd down {} ms, ready {} ms \
         after its restart; one MISFIRE run per item ({} items) started within {} ms of \
         etcd being ready",
        ms(t_all_fenced - t_kill),
        ms(t_restart - t_kill),
        ms(t_up - t_restart),
        misfires.len(),
        ms(t_misfired - t_up)
    );
    let report = c.check(&Expect {
        jobs: vec![grid("grid", 8, 4)],
        from_ns: t_ready,
        to_ns: t_stop - 3 * SEC,
        allow_skipped: true,
        killed: BTreeSet::new(),
    });
    assert!(report.skipped_fires >= 4 * 2, "{report}");
    summary("etcd down 30 s", started, &report);
}

/// A run that **ends while its agent cannot reach etcd** (etcd down, or the agent
/// cut off, before the agent fences itself) cannot release its run key at once.
/// This suite found that it then gave up ("the run key is left for failover"),
/// and once etcd was back the leader failed the completed fire over: it ran a
/// second time as FAILOVER (I2: "completed 2 times"). The holder now keeps
/// retrying the release (safe after a fence: it compares the run key with its
/// token) and retries as soon as it registers again, before the leader's lock
/// delay runs out; the fire completes once.
///
/// Reproduction: runs of 0.5 s; etcd kill -9 0.1-0.3 s into a fire's runs; etcd
/// down 5 s (past the agents' fence); restart; the next fire completes.
#[test]
fn a_run_that_ends_while_etcd_is_down_does_not_run_again() {
    let started = Instant::now();
    let mut c = Cluster::new("etcd-down-mid-run", &job("grid", 4, 2, "0.5", FIRE_ONCE));
    c.start(&["n1", "n2"]);
    let t_ready = now_ns();
    c.wait_leader(None, Duration::from_secs(20));
    wait_full_fires(&mut c, "grid", 2, t_ready, 1, 60);
    let inflight = wait_inflight(&mut c, "grid", 1, now_ns(), |_| true);
    let t_kill = now_ns();
    c.etcd.kill9(0);
    for name in ["n1", "n2"] {
        wait_health(&mut c, name, 503, None, Duration::from_secs(30));
    }
    let r = run_by_id(&c, &inflight.exec_id);
    assert!(
        r.end_ns.is_some_and(|e| e > t_kill),
        "the run ended while etcd was down: {r:?}"
    );
    sleep_past(t_kill, Duration::from_secs(5));
    c.etcd.restart(0);
    let t_up = now_ns();
    wait_full_fires(&mut c, "grid", 2, t_up, 1, 60);
    let t_stop = now_ns();
    c.stop_all();
    let report = c.check(&Expect {
        jobs: vec![grid("grid", 4, 2)],
        from_ns: t_ready,
        to_ns: t_stop - 3 * SEC,
        allow_skipped: true,
        killed: BTreeSet::new(),
    });
    summary("run ending while etcd is down", started, &report);
}
