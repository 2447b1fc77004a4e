//! Helpers shared by the fault-injection suites (`faults.rs`, `faults_netns.rs`,
//! `faults_grpc.rs`): times, an agent's log and `/health`, waits around fires
//! (a moment between runs, a fire completed without a victim) and the checks of a
//! fenced agent.

use std::fs;
use std::net::SocketAddr;
use std::ops::Range;
use std::thread;
use std::time::Duration;

use super::{Cluster, Run, now_ns, ns, rfc3339_ns, wait_full_fires};

pub(crate) const SEC: i64 = 1_000_000_000;
pub(crate) const MS: i64 = 1_000_000;
/// The agents' lease TTL (the harness's `--lease-ttl`, etcd's minimum).
pub(crate) const TTL: Duration = Duration::from_secs(2);
/// The misfire policy under which every fire runs.
pub(crate) const CATCH_UP: &str = r#"{ policy = "catch_up", max = 50 }"#;

/// Nanoseconds as whole milliseconds (for the measurements the scenarios print).
pub(crate) fn ms(d: i64) -> i64 {
    d / MS
}

/// Sleep until `d` after `t0_ns` (wall-clock nanoseconds); at once if that has
/// passed.
pub(crate) fn sleep_past(t0_ns: i64, d: Duration) {
    let left = t0_ns + ns(d) - now_ns();
    if left > 0 {
        thread::sleep(Duration::from_nanos(u64::try_from(left).expect("ns")));
    }
}

/// etcd's client address (its first member's).
pub(crate) fn etcd_addr(c: &Cluster) -> SocketAddr {
    let endpoint = &c.etcd.endpoints()[0];
    endpoint
        .split_once("://")
        .map_or(endpoint.as_str(), |(_, addr)| addr)
        .parse()
        .unwrap_or_else(|e| panic!("etcd endpoint {endpoint}: {e}"))
}

/// The log of the running agent `name` (all of it).
pub(crate) fn agent_log(c: &mut Cluster, name: &str) -> String {
    let i = c.live(name).expect("agent runs");
    fs::read_to_string(&c.agents[i].log).unwrap_or_default()
}

/// The timestamp of an agent log line, and the line, for the first line after
/// `from` (a byte offset) that contains `needle`.
pub(crate) fn log_event(log: &str, from: usize, needle: &str) -> Option<(i64, String)> {
    log[from..]
        .lines()
        .find(|l| l.contains(needle))
        .and_then(|l| Some((rfc3339_ns(l.split(' ').next()?)?, l.to_string())))
}

/// Wait (up to `timeout`) until the agent `name` answers /health with `status`
/// (and, for 200, with an instance id other than `not`); returns the instance id
/// it reports (always one for 200).
pub(crate) fn wait_health(
    c: &mut Cluster,
    name: &str,
    status: u16,
    not: Option<&str>,
    timeout: Duration,
) -> Option<String> {
    c.wait_for(
        &format!("agent {name} to answer /health with {status}"),
        timeout,
        |c| {
            let i = c.live(name)?;
            let h = c.agents[i].health()?;
            let id_ok = status != 200 || (h.instance.is_some() && h.instance.as_deref() != not);
            (h.status == status && id_ok).then_some(h.instance)
        },
    )
}

/// Start the agents `names`, wait for a leader and for two fires of `job`
/// completed on all its `items`; returns when the agents were started and the
/// first of `names` that is not the leader (the victim of a fault).
pub(crate) fn start_and_pick_a_victim<'a>(
    c: &mut Cluster,
    names: &[&'a str],
    job: &str,
    items: u32,
) -> (i64, &'a str) {
    c.start(names);
    let t_ready = now_ns();
    let leader = c.wait_leader(None, Duration::from_secs(20));
    wait_full_fires(c, job, items, t_ready, 2, 60);
    let victim = names
        .iter()
        .copied()
        .find(|n| *n != leader)
        .expect("a non-leader");
    (t_ready, victim)
}

/// Wait until no run of `job` (every `every_s` seconds) is in flight, the last one
/// ended at least 300 ms ago, and the time is `phase_ms` after a fire instant;
/// returns a fire instant (the grid's anchor).
///
/// The 300 ms: the witness logs a run's end before its agent records the
/// completion in etcd. A run that ends while its agent is cut off from etcd
/// cannot record its completion: its run key stays behind, the other agents fail
/// it over once the agent's lease expires, and the fire runs again (recorded as
/// FAILOVER), which a scenario that checks that every fire runs once must avoid.
/// A cut right after a witness `end` hits that limit: the TCP proxy scenario of
/// `faults.rs` once cut 7 ms after one.
pub(crate) fn between_runs(c: &mut Cluster, job: &str, every_s: i64, phase_ms: Range<i64>) -> i64 {
    c.wait_for(
        &format!("a moment between runs of {job}"),
        Duration::from_secs(40),
        |c| {
            let log = c.log();
            let anchor = log.of_job(job).map(|r| r.fire_ns).max()?;
            let phase = (now_ns() - anchor).rem_euclid(every_s * SEC) / MS;
            let last_end = log.of_job(job).filter_map(|r| r.end_ns).max()?;
            let idle = log.of_job(job).all(Run::ended) && now_ns() - last_end >= 300 * MS;
            (idle && phase_ms.contains(&phase)).then_some(anchor)
        },
    )
}

/// Wait for a fire of `job` at or after `after_ns` that completed on all its
/// `items` with no run on the agent `victim`; returns its fire instant and when
/// the last of its runs started.
pub(crate) fn wait_fire_without(
    c: &mut Cluster,
    job: &str,
    items: u32,
    victim: &str,
    after_ns: i64,
) -> (i64, i64) {
    c.wait_for(
        "a fire completed on all items without the victim",
        Duration::from_secs(30),
        |c| {
            let log = c.log();
            log.completed(job)
                .range(after_ns..)
                .filter(|(_, done)| done.len() == items as usize)
                .map(|(f, _)| *f)
                .find(|f| {
                    log.of_job(job)
                        .filter(|r| r.fire_ns == *f)
                        .all(|r| Cluster::name_of(&r.instance) != victim)
                })
                .map(|f| {
                    let runs = log.of_job(job).filter(|r| r.fire_ns == f);
                    let last_start = runs.map(|r| r.start_ns).max().unwrap_or(f);
                    (f, last_start)
                })
        },
    )
}

/// The agent `victim`, cut off since before `t_fenced`, is still fenced: no run of
/// it started after `t_fenced` and it still answers /health with 503.
pub(crate) fn assert_still_fenced(c: &mut Cluster, victim: &str, t_fenced: i64) {
    let during = c
        .log()
        .runs
        .iter()
        .filter(|r| Cluster::name_of(&r.instance) == victim && r.start_ns > t_fenced)
        .count();
    assert_eq!(during, 0, "the fenced victim started runs while cut off");
    let vi = c.live(victim).expect("victim runs");
    assert_eq!(
        c.agents[vi].health().map(|h| h.status),
        Some(503),
        "still fenced at the end of the partition"
    );
}
