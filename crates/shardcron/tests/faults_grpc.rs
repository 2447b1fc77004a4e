//! Fault injection at the gRPC level (DESIGN.md sections 5 and 11, issue 10),
//! against the real `shardcron agent` binary and a real etcd: each agent talks to
//! etcd through its own [`GrpcProxy`], an HTTP/2-aware proxy that can disturb one
//! kind of call while every other call on the same HTTP/2 connection keeps working
//! (a TCP proxy cannot: etcd's gRPC multiplexes every call over one connection).
//!
//! 1. *Keep-alive stalled while other calls still work*: the agent's lease
//!    keep-alive stream stops moving in both directions (held, not closed); reads,
//!    transactions and watches go on. The agent must fence itself on its local
//!    lease deadline, before etcd could expire the lease; its items move; it
//!    rejoins once the stall ends. A variant first delays the keep-alive answers,
//!    then stalls the requests: the late answer to an abandoned keep-alive must
//!    not count as the answer to a later one (it did: the agent fenced only after
//!    etcd expired its lease; fixed in the etcd backend).
//! 2. *Ambiguous commits*: the answers of an agent's claim and release
//!    transactions are lost after etcd applied them (the client gets UNAVAILABLE),
//!    several in a row, around fire instants; then the answers of any of its
//!    transactions. The agent retries: no fire runs twice, no claim is doubled,
//!    no item is left stuck.
//!
//! 3. *A lost answer of a skip*: the transaction that records a skipped fire in
//!    the item's state commits but its answer is lost; the SKIPPED record must
//!    still be written (it was not: a product bug found here, fixed).
//!
//! Each scenario checks the invariants I1-I5 with the checker of `support` (the
//! witness log, the schedules, the history) allowing no violation, checks from
//! the proxy's counters that its fault really happened, and prints what it
//! measured (`cargo nextest run -p shardcron --test faults_grpc --no-capture`).

#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use shardcron_testkit::GrpcProxy;
use shardcron_testkit::grpc_proxy::{KV_TXN, LEASE_KEEP_ALIVE};
use support::faults::{
    CATCH_UP, MS, SEC, TTL, agent_log, etcd_addr, log_event, ms, sleep_past,
    start_and_pick_a_victim,
};
use support::{Cluster, Expect, grid, now_ns, ns, summary, wait_full_fires};

/// The agents' fence margin: `shardcron agent` uses max(TTL / 5, 200 ms).
const FENCE_MARGIN: Duration = Duration::from_millis(400);
/// What the fence logs.
const FENCING: &str = "fencing: the lease can no longer be trusted";

fn job(name: &str, every_s: u64, shards: u32, run_s: &str) -> String {
    support::job_table(
        name,
        "./witness.sh",
        every_s,
        shards,
        run_s,
        "60s",
        CATCH_UP,
    )
}

fn system_ns(t: std::time::SystemTime) -> i64 {
    ns(t.duration_since(UNIX_EPOCH).expect("after 1970"))
}

/// One proxy per agent name, each agent's registry URL pointing at its proxy.
fn proxies(c: &mut Cluster, names: &[&str]) -> BTreeMap<String, GrpcProxy> {
    let target = etcd_addr(c);
    let mut out = BTreeMap::new();
    for name in names {
        let p = GrpcProxy::start(target);
        c.registry_for
            .insert((*name).to_string(), format!("etcd://{}", p.addr()));
        out.insert((*name).to_string(), p);
    }
    out
}

/// Poll the agent `name`'s /health every 10 ms until it answers `status`; returns
/// when it did (a fenced agent that registers again at once is 503 only briefly).
fn poll_health(c: &mut Cluster, name: &str, status: u16, timeout: Duration) -> i64 {
    let i = c.live(name).expect("agent runs");
    let deadline = Instant::now() + timeout;
    loop {
        if c.agents[i].health().is_some_and(|h| h.status == status) {
            return now_ns();
        }
        assert!(
            Instant::now() < deadline,
            "agent {name} did not answer /health with {status} within {timeout:?}\n{}",
            c.diagnostics()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Lines of `log` after `from` containing `needle`.
fn count_lines(log: &str, from: usize, needle: &str) -> usize {
    log[from..].lines().filter(|l| l.contains(needle)).count()
}

/// Sleep until `ms_before` milliseconds before the next fire instant of `job`
/// (every `every_s` seconds) that is at least `ms_before + 200` ms away; returns
/// that fire instant.
fn sleep_until_before_next_fire(c: &Cluster, job: &str, every_s: i64, ms_before: i64) -> i64 {
    let anchor = c
        .log()
        .of_job(job)
        .map(|r| r.fire_ns)
        .max()
        .expect("the job ran");
    let every = every_s * SEC;
    let now = now_ns();
    let mut fire = anchor + ((now - anchor).div_euclid(every) + 1) * every;
    while fire - ms_before * MS - now < 200 * MS {
        fire += every;
    }
    let wait = fire - ms_before * MS - now_ns();
    thread::sleep(Duration::from_nanos(
        u64::try_from(wait.max(0)).expect("ns"),
    ));
    fire
}

/// How the keep-alive stream of the victim is disturbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// Both directions held from the start.
    Both,
    /// First only the answers are held, long enough for the lease keeper to give
    /// up on one call whose request reached etcd; then the requests are held and
    /// the answers released, so that the stale answer arrives while nothing new
    /// reaches etcd.
    AnswersThenRequests,
}

/// Scenario 1: the keep-alive stream of a non-leader agent stalls (both
/// directions held) while its other calls keep working. It must fence itself on
/// its local lease deadline (last acknowledged keep-alive's send time + TTL -
/// margin), strictly before etcd could expire the lease (the last keep-alive
/// etcd received + TTL), and not because the registry told it the lease was gone;
/// its items move to the others; after the stall it rejoins and runs items again.
#[test]
fn a_stalled_keepalive_fences_the_agent_before_its_lease_expires() {
    keepalive_stall("ka-stall", Stall::Both);
}

/// Scenario 1b: the keep-alive answers are delayed, then the requests stall
/// ([`Stall::AnswersThenRequests`]). The agent must not take the late answer to
/// a request it gave up on for the answer to a later one: that stretched its
/// lease deadline past etcd's expiry, and it fenced only when etcd deleted its
/// instance key (a product bug found by this scenario, fixed in the etcd
/// backend's `lease_keep_alive`).
#[test]
fn a_late_keepalive_answer_does_not_stretch_the_lease_deadline() {
    keepalive_stall("ka-late", Stall::AnswersThenRequests);
}

fn keepalive_stall(test: &str, how: Stall) {
    let started = Instant::now();
    let mut c = Cluster::new(test, &job("grid", 2, 6, "1"));
    let names = ["n1", "n2", "n3"];
    let proxies = proxies(&mut c, &names);
    let (t_ready, victim) = start_and_pick_a_victim(&mut c, &names, "grid", 6);
    let old_id = c.instance(victim);
    let proxy = &proxies[victim];
    let before = proxy.stats();
    assert!(
        before.calls_of(LEASE_KEEP_ALIVE) > 0 && before.last_keepalive_response.is_some(),
        "the victim keeps its lease alive through its proxy: {before:?}"
    );
    let log_from = agent_log(&mut c, victim).len();

    let t_stall = now_ns();
    let t_requests_held = match how {
        Stall::Both => {
            proxy.stall_keepalives(true);
            t_stall
        }
        Stall::AnswersThenRequests => {
            proxy.stall_keepalives_in(false, true);
            // The keeper sends every TTL / 3; its call gives up after TTL / 3 and
            // it retries TTL / 10 later: switch in between.
            let deadline = Instant::now() + TTL;
            while proxy.stats().keepalive_responses_held == before.keepalive_responses_held {
                assert!(
                    Instant::now() < deadline,
                    "no keep-alive answer was held: {:?}\n{}",
                    proxy.stats(),
                    c.diagnostics()
                );
                thread::sleep(Duration::from_millis(2));
            }
            thread::sleep(TTL / 3 + Duration::from_millis(90));
            proxy.stall_keepalives_in(true, false);
            now_ns()
        }
    };
    let t_503 = poll_health(&mut c, victim, 503, 3 * TTL);
    let at_fence = proxy.stats();
    // The agent marks itself fenced (/health 503) just before it logs why.
    let (t_fence, fence_line) = c.wait_for(
        "the victim's log to say it fenced itself",
        Duration::from_secs(5),
        |c| log_event(&agent_log(c, victim), log_from, FENCING),
    );

    // The fault happened: keep-alives held, nothing reached etcd after the stall
    // began, and the other calls went on.
    assert!(
        at_fence.keepalive_requests_held > before.keepalive_requests_held,
        "keep-alive messages were held: {at_fence:?}"
    );
    let last_sent = system_ns(
        at_fence
            .last_keepalive_request
            .expect("a keep-alive reached etcd before the stall"),
    );
    assert!(
        last_sent <= t_requests_held,
        "no keep-alive reached etcd once requests were held ({} ms after)",
        ms(last_sent - t_requests_held)
    );
    if how == Stall::AnswersThenRequests {
        assert!(
            last_sent > t_stall,
            "a keep-alive whose answer was held had reached etcd"
        );
    }
    let other_calls =
        at_fence.calls_other_than(LEASE_KEEP_ALIVE) - before.calls_other_than(LEASE_KEEP_ALIVE);
    let txns = at_fence.calls_of(KV_TXN) - before.calls_of(KV_TXN);
    assert!(
        txns > 0,
        "the victim's transactions went on during the stall: {at_fence:?}"
    );
    // It fenced on its own deadline, before etcd could expire the lease.
    let lease_expiry = last_sent + ns(TTL);
    assert!(
        t_fence < lease_expiry,
        "the victim fenced {} ms after etcd could have expired its lease: {fence_line}",
        ms(t_fence - lease_expiry)
    );
    assert!(
        fence_line.contains("deadline"),
        "the fence came from the local lease deadline, not from the registry: {fence_line}"
    );

    // Hold the stall for 3 x TTL in all; then release it.
    sleep_past(t_stall, 3 * TTL);
    let during = proxy.stats();
    let log_text = agent_log(&mut c, victim);
    let fences: Vec<&str> = log_text[log_from..]
        .lines()
        .filter(|l| l.contains(FENCING))
        .collect();
    let fences_during = fences.len();
    // It fenced once: while keep-alives hang it registers no new identity (one
    // would take items and fence again a TTL later; the registration waits for an
    // acknowledged keep-alive of its new lease).
    assert_eq!(
        fences_during, 1,
        "the victim fenced {fences_during} times during the stall: {fences:#?}"
    );
    assert!(
        fences[0].contains("deadline"),
        "the fence during the stall came from the registry, not the local deadline: {}",
        fences[0]
    );
    let t_release = now_ns();
    proxy.stall_keepalives(false);
    // Its items moved: a fire between the fence and the release completed on
    // every item (none can be on the fenced identity, which started nothing after
    // its fence).
    let moved = c.wait_for(
        "a fire of the stall completed on all items",
        Duration::from_secs(30),
        |c| {
            c.log()
                .completed("grid")
                .range(t_fence..t_release)
                .find(|(_, items)| items.len() == 6)
                .map(|(f, _)| *f)
        },
    );
    let log = c.log();
    let stale = log
        .runs
        .iter()
        .filter(|r| r.instance == old_id && r.start_ns > t_fence)
        .count();
    assert_eq!(
        stale, 0,
        "the fenced identity started no run after its fence"
    );
    // Runs cut by a fence of the victim are re-run as FAILOVER.
    let failovers: Vec<i64> = log
        .of_job("grid")
        .filter(|r| r.source == "FAILOVER" && r.start_ns > t_stall)
        .map(|r| r.start_ns)
        .collect();
    // It rejoins under a new identity, and that identity keeps its lease and runs
    // items: it stays healthy with the same id for longer than a TTL.
    let (new_id, t_runs) = c.wait_for(
        "the victim to rejoin and run items after the stall",
        Duration::from_secs(40),
        |c| {
            let i = c.live(victim)?;
            let h = c.agents[i].health()?;
            let id = h.instance.filter(|_| h.status == 200)?;
            let runs = c
                .log()
                .of_job("grid")
                .filter(|r| r.instance == id && r.start_ns > t_release)
                .map(|r| r.start_ns)
                .min()?;
            (id != old_id).then_some((id, runs))
        },
    );
    thread::sleep(TTL + TTL / 2);
    let vi = c.live(victim).expect("victim runs");
    let h = c.agents[vi].health().expect("victim answers /health");
    assert_eq!(
        (h.status, h.instance.as_deref()),
        (200, Some(new_id.as_str())),
        "after the stall the victim keeps its new identity"
    );
    let after = proxy.stats();
    assert!(
        after.last_keepalive_response > during.last_keepalive_response,
        "keep-alives are answered again"
    );
    wait_full_fires(&mut c, "grid", 6, t_runs, 2, 60);

    eprintln!(
        "{test} ({how:?}): the victim fenced {} ms after the stall began ({} ms after the last \
         keep-alive etcd received; /health 503 seen after {} ms), {} ms before etcd could \
         expire its lease (TTL {} ms, fence margin {} ms); {} other calls ({} Txn) went through \
         its proxy between the stall and the fence; {} keep-alive messages held; it fenced {} \
         time(s) during the {} ms stall; the first fire after its first fence that completed on \
         every item was {} ms after the stall began; {} run(s) re-run as FAILOVER during or \
         after the stall, the first {} ms after the first fence; after the release, an \
         identity that kept its lease started a run {} ms later",
        ms(t_fence - t_stall),
        ms(t_fence - last_sent),
        ms(t_503 - t_stall),
        ms(lease_expiry - t_fence),
        TTL.as_millis(),
        FENCE_MARGIN.as_millis(),
        other_calls,
        txns,
        during.keepalive_requests_held + during.keepalive_responses_held,
        fences_during,
        ms(t_release - t_stall),
        ms(moved - t_stall),
        failovers.len(),
        failovers.iter().min().map_or(-1, |f| ms(f - t_fence)),
        ms(t_runs - t_release),
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
    summary(test, started, &report);
}

/// Scenario 2: ambiguous commits. A non-leader agent's transactions on the job's
/// run keys (its claims and releases) lose their answers after etcd applied
/// them, several in a row from just before a fire instant; then, in a second
/// round, any of its transactions (heartbeats included). The runtime re-reads
/// the run key after a lost claim answer and adopts its own claim; a lost
/// release is retried and finds the run key gone. No fire runs twice, no claim
/// is doubled, nothing is stuck, and the agent is never fenced for it.
#[test]
fn ambiguous_commits_are_adopted_and_never_claimed_twice() {
    let started = Instant::now();
    let mut c = Cluster::new("ambiguous", &job("grid", 2, 6, "0.5"));
    let names = ["n1", "n2", "n3"];
    let proxies = proxies(&mut c, &names);
    // The scheduler's debug lines show the release retries.
    let filter = "info,shardcron_runtime::scheduler=debug";
    c.start(&["n1"]);
    for name in ["n2", "n3"] {
        let reg = c.registry_for[name].clone();
        c.spawn_agent(name, &reg, filter, &[]);
    }
    for name in ["n2", "n3"] {
        c.wait_healthy(name, Duration::from_secs(30));
    }
    let t_ready = now_ns();
    let leader = c.wait_leader(None, Duration::from_secs(20));
    wait_full_fires(&mut c, "grid", 6, t_ready, 2, 60);
    let victim = ["n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a non-leader started with debug logs");
    let id = c.instance(victim);
    let proxy = &proxies[victim];
    let log_from = agent_log(&mut c, victim).len();

    // Round 1: claims and releases (every txn that names a run key of the job).
    let needle = format!("{}/run/grid/", c.namespace);
    let round1: u64 = 6;
    let fire1 = sleep_until_before_next_fire(&c, "grid", 2, 300);
    proxy.lose_next_txn_answers_matching(round1, needle.as_bytes());
    let t_armed1 = now_ns();
    c.wait_for("round 1 of lost answers", Duration::from_secs(30), |_| {
        (proxy.answers_to_lose() == 0).then_some(())
    });
    let t_done1 = now_ns();
    let lost1 = proxy.stats().answers_lost;
    assert_eq!(lost1, round1, "round 1 lost {round1} answers");

    // Round 2: any transaction of the victim.
    let round2: u64 = 8;
    sleep_until_before_next_fire(&c, "grid", 2, 300);
    proxy.lose_next_txn_answers(round2);
    c.wait_for("round 2 of lost answers", Duration::from_secs(30), |_| {
        (proxy.answers_to_lose() == 0).then_some(())
    });
    let t_done2 = now_ns();
    let stats = proxy.stats();
    assert_eq!(stats.answers_lost, round1 + round2);

    // Afterwards the job keeps running on every item, the victim included, and
    // the victim was never fenced: an ambiguous commit is not a lost lease.
    wait_full_fires(&mut c, "grid", 6, t_done2, 3, 60);
    let victim_runs_after = c
        .log()
        .of_job("grid")
        .filter(|r| r.instance == id && r.start_ns > t_done2)
        .count();
    assert!(
        victim_runs_after > 0,
        "the victim runs items after the lost answers\n{}",
        c.diagnostics()
    );
    let vi = c.live(victim).expect("victim runs");
    let h = c.agents[vi].health().expect("victim answers /health");
    assert_eq!(
        (h.status, h.instance.as_deref()),
        (200, Some(id.as_str())),
        "the victim kept its identity"
    );
    let log_text = agent_log(&mut c, victim);
    assert_eq!(
        count_lines(&log_text, log_from, FENCING),
        0,
        "the victim did not fence itself"
    );
    let claims_lost = count_lines(&log_text, log_from, "claim answer lost");
    let adopted = count_lines(&log_text, log_from, "adopted a claim whose answer was lost");
    let release_retries = count_lines(&log_text, log_from, "release failed; retrying");
    assert!(
        claims_lost > 0 && adopted == claims_lost,
        "lost claim answers were each adopted (lost {claims_lost}, adopted {adopted})\n{}",
        c.diagnostics()
    );
    assert!(
        release_retries > 0,
        "a release whose answer was lost was retried"
    );
    // The runs of the adopted claims ran once, with the claim's token.
    let adopted_runs: Vec<_> = c
        .log()
        .of_job("grid")
        .filter(|r| r.instance == id && r.fire_ns >= fire1 && r.start_ns <= t_done1 + SEC)
        .map(|r| (r.item, r.fire_ns, r.token))
        .collect();

    eprintln!(
        "ambiguous commits: round 1 lost {lost1} answers of run-key transactions in {} ms from \
         {} ms before a fire; round 2 lost {round2} answers of any transaction in {} ms; the \
         victim logged {claims_lost} lost claim answer(s), adopted {adopted}, retried \
         {release_retries} release(s); victim runs around round 1 (item, fire, token): {:?}; \
         {} Txn calls through its proxy in all",
        ms(t_done1 - t_armed1),
        ms(fire1 - t_armed1),
        ms(t_done2 - t_done1),
        adopted_runs
            .iter()
            .map(|(i, f, t)| format!("({i}, +{} ms, {t})", ms(f - fire1)))
            .collect::<Vec<_>>(),
        stats.calls_of(KV_TXN),
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
    summary("ambiguous commits", started, &report);
}

/// A SKIPPED record survives a lost answer of the transaction that advances the
/// item's last-fire state.
///
/// With misfire `skip`, a fire that finds its item still running is dropped: the
/// scheduler advances `last/{job}/{item}` in one transaction and then records
/// the fire SKIPPED (reason StillRunning). When that transaction's answer was
/// lost after it committed, the scheduler used to return the error and look at
/// the item again 200 ms later; by then `last` already said the fire was
/// decided, so the SKIPPED record was never written: the fire was silently lost
/// (I3; this test found it). Now a lost answer is ambiguous, as for claims: the
/// scheduler re-reads `last` and, if it holds the value just written, goes on as
/// if the transaction had succeeded.
#[test]
fn a_lost_answer_of_a_skip_still_records_the_skipped_fire() {
    let started = Instant::now();
    let jobs = support::job_table("slow", "./witness.sh", 2, 1, "3", "60s", r#""skip""#);
    let mut c = Cluster::new("lost-skip", &jobs);
    let proxies = proxies(&mut c, &["n1"]);
    c.start(&["n1"]);
    let t_ready = now_ns();
    c.wait_leader(None, Duration::from_secs(20));
    wait_full_fires(&mut c, "slow", 1, t_ready, 2, 60);
    let skips_before = c.history().iter().filter(|h| h.status == "SKIPPED").count();
    assert!(
        skips_before > 0,
        "fires that find the item running are SKIPPED"
    );
    // Only the transaction that advances `last` alone (a claim and a release
    // also name the run key).
    let ns = c.namespace.clone();
    let last = format!("{ns}/last/slow/").into_bytes();
    let run = format!("{ns}/run/slow/").into_bytes();
    let contains = |h: &[u8], n: &[u8]| h.windows(n.len()).any(|w| w == n);
    let proxy = &proxies["n1"];
    proxy.lose_next_txn_answers_where(1, move |req| contains(req, &last) && !contains(req, &run));
    c.wait_for(
        "the answer of a skip's transaction to be lost",
        Duration::from_secs(30),
        |_| (proxy.stats().answers_lost == 1).then_some(()),
    );
    let t_lost = now_ns();
    wait_full_fires(&mut c, "slow", 1, t_lost, 2, 60);
    let t_stop = now_ns();
    c.stop_all();
    let report = c.check(&Expect {
        jobs: vec![grid("slow", 2, 1)],
        from_ns: t_ready,
        to_ns: t_stop - 4 * SEC,
        allow_skipped: true,
        killed: BTreeSet::new(),
    });
    summary("lost skip answer", started, &report);
}
