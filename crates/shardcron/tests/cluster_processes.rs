//! Multi-process tests of the real `shardcron agent` binary against a real etcd
//! (DESIGN.md sections 5, 6, 11): kill -9 of an item holder and of the leader,
//! graceful shutdown, a rolling restart and a scale-out, each checked against the
//! invariants I1-I5 from the witness script's log and the history (see
//! `support`). Each test starts its own etcd, agents and directories.

// Not every helper of the shared support module is used here.
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{
    Cluster, Expect, Run, grid, job, now_ns, pid_alive, run_by_id, summary, wait_full_fires,
    wait_inflight,
};

const SEC: i64 = 1_000_000_000;
const FIRE_ONCE: &str = r#""fire_once""#;
const CATCH_UP: &str = r#"{ policy = "catch_up", max = 50 }"#;

/// After a kill -9 of its agent, a run's processes die (the supervisor kills its
/// process group) and it never logs its end.
fn assert_run_killed(c: &mut Cluster, run: &Run, t_kill: i64) {
    c.wait_for(
        "the killed run's script and ticking child to be gone",
        Duration::from_secs(5),
        |c| {
            let r = run_by_id(c, &run.exec_id);
            r.pids.iter().all(|p| !pid_alive(*p)).then_some(())
        },
    );
    let r = run_by_id(c, &run.exec_id);
    assert!(
        !r.ended(),
        "the run went on after its agent was killed -9 and ended {} ms after the kill \
         (its process group was not killed): {r:?}",
        (r.end_ns.unwrap_or_default() - t_kill) / 1_000_000
    );
}

/// Scenario 1: kill -9 of the holder of an item mid-run. The fire is re-run as
/// FAILOVER with a higher token on another agent; the dead run is LOST in the
/// history; its processes (the script and its ticking child) were killed by the
/// supervisor, and none of them ticked after the failover run started.
#[test]
fn kill9_of_an_item_holder_fails_its_run_over_and_kills_its_processes() {
    let started = Instant::now();
    let mut c = Cluster::new("kill9-holder", &job("long", 10, 3, "4", FIRE_ONCE));
    c.start(&["n1", "n2", "n3"]);
    let t_ready = now_ns();
    let leader = c.wait_leader(None, Duration::from_secs(20));

    // A run of a non-leader, 0.5 s in: its child has been ticking.
    let victim_run = wait_inflight(&mut c, "long", 5, t_ready, |name| name != leader);
    let victim = Cluster::name_of(&victim_run.instance).to_string();
    let t_kill = now_ns();
    let pid = c.kill9(&victim);
    assert!(!pid_alive(i32::try_from(pid).expect("pid")));
    // The supervisor kills the run's process group when the agent dies.
    assert_run_killed(&mut c, &victim_run, t_kill);

    let failover = c.wait_for(
        "a FAILOVER run of the killed fire to complete",
        Duration::from_secs(30),
        |c| {
            c.log()
                .of_job("long")
                .find(|r| {
                    r.item == victim_run.item
                        && r.fire_ns == victim_run.fire_ns
                        && r.source == "FAILOVER"
                        && r.ended()
                })
                .cloned()
        },
    );
    let dead = run_by_id(&c, &victim_run.exec_id);
    assert!(!dead.ended(), "the killed run logged an end: {dead:?}");
    assert!(
        failover.token > dead.token,
        "failover token {} <= dead token {}",
        failover.token,
        dead.token
    );
    assert_ne!(Cluster::name_of(&failover.instance), victim);
    assert!(
        dead.last_ns() < failover.start_ns,
        "the killed run was seen {} ms after the failover run started",
        (dead.last_ns() - failover.start_ns) / 1_000_000
    );

    // The next fire runs on every item, the dead agent's included.
    let next = victim_run.fire_ns + 10 * SEC;
    wait_full_fires(&mut c, "long", 3, next, 1, 40);
    c.stop_all();

    let lost = c
        .history()
        .into_iter()
        .find(|h| h.id == victim_run.exec_id)
        .unwrap_or_else(|| panic!("no history record of the killed run {}", victim_run.exec_id));
    assert_eq!(lost.status, "LOST", "{}", lost.line);
    let report = c.check(&Expect {
        jobs: vec![grid("long", 10, 3)],
        from_ns: victim_run.fire_ns.min(t_ready),
        to_ns: next,
        allow_skipped: true,
        killed: c.killed.clone(),
    });
    assert!(report.fires_checked >= 6, "{report}");
    summary("kill9 holder", started, &report);
}

/// Scenario 2: kill -9 of the leader in the middle of one of its runs, and a new
/// agent joins at once (during the leaderless window). A new leader takes over,
/// fails the killed run over, the joining agent gets items, and no fire is doubled
/// or lost beyond what `fire_once` records as SKIPPED.
#[test]
fn kill9_of_the_leader_while_an_agent_joins() {
    let started = Instant::now();
    let mut c = Cluster::new("kill9-leader", &job("grid", 2, 6, "1.2", FIRE_ONCE));
    c.start(&["n1", "n2", "n3"]);
    let t_ready = now_ns();
    let leader = c.wait_leader(None, Duration::from_secs(20));
    wait_full_fires(&mut c, "grid", 6, t_ready, 2, 40);

    // Mid-run of one of the leader's items, so that the new leader also has a
    // run to fail over.
    let t_full = now_ns();
    let killed_run = wait_inflight(&mut c, "grid", 2, t_full, |name| name == leader);
    let t_fault = now_ns();
    let pid = c.kill9(&leader);
    c.spawn("n4");
    assert!(!pid_alive(i32::try_from(pid).expect("pid")));
    assert_run_killed(&mut c, &killed_run, t_fault);

    let new_leader = c.wait_leader(Some(&leader), Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    let n4 = c
        .wait_healthy("n4", Duration::from_secs(30))
        .instance
        .expect("instance id");
    c.wait_for("n4 to run items", Duration::from_secs(30), |c| {
        c.log()
            .instances_after("grid", t_fault)
            .contains(&n4)
            .then_some(())
    });
    let t_settled = now_ns();
    wait_full_fires(&mut c, "grid", 6, t_settled, 3, 40);
    let live: BTreeSet<String> = c.live_names().iter().map(|n| c.instance(n)).collect();
    let ran = c.log().instances_after("grid", t_settled + 2 * SEC);
    assert!(
        ran.is_subset(&live),
        "after the reassignment only live instances run items: {ran:?} vs {live:?}"
    );
    let t_stop = now_ns();
    c.stop_all();

    let failover = c.log().of_job("grid").any(|r| {
        r.item == killed_run.item && r.fire_ns == killed_run.fire_ns && r.source == "FAILOVER"
    });
    assert!(
        failover,
        "the leader's run in flight was failed over: {killed_run:?}"
    );
    let report = c.check(&Expect {
        jobs: vec![grid("grid", 2, 6)],
        from_ns: t_ready,
        to_ns: t_stop - 3 * SEC,
        allow_skipped: true,
        killed: c.killed.clone(),
    });
    summary("kill9 leader", started, &report);
}

/// Scenario 3: SIGTERM of an agent with a run in flight. The run finishes
/// (SUCCEEDED), the agent exits 0, its items move to the others, and with
/// `catch_up` every fire runs exactly once: no SKIPPED, no LOST, no FAILOVER.
#[test]
fn sigterm_lets_running_runs_finish_and_hands_items_over() {
    let started = Instant::now();
    let mut c = Cluster::new("sigterm", &job("grid", 2, 4, "1.5", CATCH_UP));
    c.start(&["n1", "n2", "n3"]);
    let t_ready = now_ns();
    wait_full_fires(&mut c, "grid", 4, t_ready, 1, 40);

    let inflight = wait_inflight(&mut c, "grid", 3, t_ready, |_| true);
    let victim = Cluster::name_of(&inflight.instance).to_string();
    let victim_instance = inflight.instance.clone();
    let t_term = now_ns();
    let status = c.sigterm(&victim);
    let t_exit = now_ns();
    assert!(status.success(), "agent {victim} exited with {status}");

    let log = c.log();
    let of_victim: Vec<&Run> = log
        .runs
        .iter()
        .filter(|r| r.instance == victim_instance)
        .collect();
    let draining: Vec<&Run> = of_victim
        .iter()
        .copied()
        .filter(|r| r.start_ns < t_term && r.end_ns.is_some_and(|e| e > t_term))
        .collect();
    assert!(
        draining.iter().any(|r| r.exec_id == inflight.exec_id),
        "the run in flight at SIGTERM finished after it: {:?}",
        run_by_id(&c, &inflight.exec_id)
    );
    for r in &of_victim {
        assert!(
            r.ended(),
            "a run of the stopped agent did not finish: {r:?}"
        );
        assert!(r.start_ns < t_exit, "{r:?}");
    }

    wait_full_fires(&mut c, "grid", 4, t_exit, 2, 40);
    let t_stop = now_ns();
    c.stop_all();

    let history = c.history();
    for r in &draining {
        let h = history
            .iter()
            .find(|h| h.id == r.exec_id)
            .unwrap_or_else(|| panic!("no history record of {r:?}"));
        assert_eq!(h.status, "SUCCEEDED", "{}", h.line);
    }
    assert!(
        history.iter().all(|h| h.status != "LOST"),
        "nothing is lost in a graceful handover"
    );
    assert!(
        c.log().runs.iter().all(|r| r.source != "FAILOVER"),
        "nothing is failed over in a graceful handover"
    );
    let report = c.check(&Expect {
        jobs: vec![grid("grid", 2, 4)],
        from_ns: t_ready,
        to_ns: t_stop - 3 * SEC,
        allow_skipped: false,
        killed: BTreeSet::new(),
    });
    summary("sigterm handover", started, &report);
}

/// Scenario 4: rolling restart of all three agents, one by one (SIGTERM in the
/// middle of one of its runs, start a new process with the same name, wait for its
/// health). Over the whole window every fire on the grid ran exactly once.
#[test]
fn rolling_restart_loses_no_fire() {
    let started = Instant::now();
    let mut c = Cluster::new("rolling", &job("grid", 2, 6, "1", CATCH_UP));
    let old: BTreeSet<String> = c.start(&["n1", "n2", "n3"]).into_iter().collect();
    let t_ready = now_ns();
    wait_full_fires(&mut c, "grid", 6, t_ready, 1, 40);

    let mut new = BTreeSet::new();
    for name in ["n1", "n2", "n3"] {
        let before = c.instance(name);
        // Stop it in the middle of one of its runs: the run drains, then its items
        // move to the others, then some come back to the new process.
        let t = now_ns();
        let inflight = wait_inflight(&mut c, "grid", 2, t, |n| n == name);
        let status = c.sigterm(name);
        assert!(status.success(), "agent {name} exited with {status}");
        c.spawn(name);
        let after = c
            .wait_healthy(name, Duration::from_secs(30))
            .instance
            .expect("instance id");
        assert_ne!(after, before, "a restart registers a new identity");
        assert!(
            run_by_id(&c, &inflight.exec_id).ended(),
            "{inflight:?} drained"
        );
        new.insert(after);
        let t = now_ns();
        wait_full_fires(&mut c, "grid", 6, t, 1, 40);
    }
    let t_all = now_ns();
    wait_full_fires(&mut c, "grid", 6, t_all, 2, 40);
    let ran = c.log().instances_after("grid", t_all);
    assert!(ran.is_subset(&new), "{ran:?} run by old instances {old:?}?");
    let t_stop = now_ns();
    c.stop_all();

    assert!(
        c.history().iter().all(|h| h.status != "LOST"),
        "nothing is lost in a rolling restart"
    );
    let report = c.check(&Expect {
        jobs: vec![grid("grid", 2, 6)],
        from_ns: t_ready,
        to_ns: t_stop - 3 * SEC,
        allow_skipped: false,
        killed: BTreeSet::new(),
    });
    summary("rolling restart", started, &report);
}

/// Scenario 5: one agent runs everything; two more join and all three end up
/// running items, with the grid complete throughout.
#[test]
fn new_agents_pick_up_items() {
    let started = Instant::now();
    let mut c = Cluster::new("scale-out", &job("grid", 2, 6, "0.3", CATCH_UP));
    let first = c.start(&["n1"]);
    let t_ready = now_ns();
    wait_full_fires(&mut c, "grid", 6, t_ready, 2, 40);
    assert_eq!(
        c.log().instances_after("grid", t_ready),
        first.iter().cloned().collect::<BTreeSet<_>>()
    );

    let mut all: BTreeSet<String> = first.into_iter().collect();
    all.extend(c.start(&["n2", "n3"]));
    let t_join = now_ns();
    let spread = c.wait_for(
        "a fire whose items ran on all three agents",
        Duration::from_secs(40),
        |c| {
            let log = c.log();
            let completed = log.completed("grid");
            completed
                .range(t_join..)
                .filter(|(_, items)| items.len() == 6)
                .map(|(fire, _)| *fire)
                .find(|fire| {
                    let ran: BTreeSet<String> = log
                        .of_job("grid")
                        .filter(|r| r.fire_ns == *fire && r.ended())
                        .map(|r| r.instance.clone())
                        .collect();
                    ran == all
                })
        },
    );
    wait_full_fires(&mut c, "grid", 6, spread + 2 * SEC, 2, 40);
    let t_stop = now_ns();
    c.stop_all();

    let report = c.check(&Expect {
        jobs: vec![grid("grid", 2, 6)],
        from_ns: t_ready,
        to_ns: t_stop - 3 * SEC,
        allow_skipped: false,
        killed: BTreeSet::new(),
    });
    summary("scale-out", started, &report);
}
