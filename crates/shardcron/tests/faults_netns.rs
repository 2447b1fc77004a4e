//! A real network partition (issue 10, DESIGN.md sections 5 and 11): three
//! `shardcron agent` processes of the real binary, each in a network namespace of
//! its own (`ip netns` and a veth pair per agent, made and deleted by the test;
//! `shardcron_testkit::Netns`), reach a real etcd that also listens on the veths'
//! host ends. One agent's link is cut for 3 x TTL and then healed.
//!
//! Unlike the TCP proxy of `faults.rs`, whose cut closes the sockets (the client
//! sees a reset at once), this cut makes every packet vanish in both directions:
//! the agent's open HTTP/2 connection to etcd hangs with no error, a new
//! connection gets no answer, and the agent's etcd client must notice on its own
//! (request timeouts, HTTP/2 keep-alive pings). After the heal, the hung
//! connection resumes or is replaced, and the test measures how long the agent
//! takes to be healthy again.
//!
//! Checked: the victim fences itself (/health 503, and its log says so); no run of
//! it starts after it fenced; a fire completes on all items without it; after the
//! heal it is healthy again within 15 s, registers under a new identity exactly
//! once (a session that fences itself right after the heal fails the test: the
//! lease keeper once scheduled its first renewal past the fence point after a
//! slow registration) and runs items again; the checker finds no violation of
//! I1-I5 over the whole run (`catch_up`: every fire runs). The
//! fault itself is checked too: before the cut the victim's etcd connections go
//! through its veth; during the cut a connection from its namespace to etcd times
//! out (no refusal, no "unreachable"); after the heal it connects again. The
//! measured times are printed (`cargo nextest run -p shardcron --test
//! faults_netns --no-capture`); `SHARDCRON_NETNS_PARTITION_S=30` measures a
//! longer partition.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2; without them the test fails with the
//! failing `ip` command's error instead of skipping.

#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use shardcron_testkit::Netns;
use support::faults::{
    CATCH_UP, SEC, TTL, agent_log, assert_still_fenced, between_runs, etcd_addr, ms, sleep_past,
    start_and_pick_a_victim, wait_fire_without, wait_health,
};
use support::{Cluster, Expect, grid, job, now_ns, summary, wait_full_fires};

/// The longest the victim may take, after the heal, to be healthy again. Its
/// etcd client must notice a dead connection on its own; a bound of a few
/// keep-alive periods would hide a client that only recovers by luck.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

/// How long the partition lasts: 3 x TTL, or `SHARDCRON_NETNS_PARTITION_S`
/// seconds (at least 3 x TTL) to measure longer ones.
fn partition_length() -> Duration {
    std::env::var("SHARDCRON_NETNS_PARTITION_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(3 * TTL, |s| Duration::from_secs_f64(s).max(3 * TTL))
}

/// Established TCP connections, seen from inside `ns`, to `host_ip`:`port`
/// (parsed from the namespace's /proc/net/tcp).
fn connections_to(ns: &Netns, host_ip: Ipv4Addr, port: u16) -> usize {
    let out = ns
        .command("cat")
        .arg("/proc/net/tcp")
        .output()
        .expect("read /proc/net/tcp in the namespace");
    assert!(out.status.success(), "cat /proc/net/tcp in the namespace");
    // /proc/net/tcp prints an IPv4 address as the hex of its in-memory (network
    // order) bytes read as a native u32; the port is big-endian hex.
    let want = format!("{:08X}:{port:04X}", u32::from_ne_bytes(host_ip.octets()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == want && f[3] == "01"
        })
        .count()
}

/// Lines of `log` after byte `from` at WARN or ERROR level.
fn warnings(log: &str, from: usize) -> Vec<String> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

/// One agent partitioned from etcd (a real, silent partition) for 3 x TTL, then
/// healed: it fences, its items move, it rejoins and runs items again within
/// [`RECOVERY_BOUND`] of the heal (I1, I3, I5).
#[test]
fn a_netns_partitioned_agent_fences_its_items_move_and_it_rejoins_after_the_heal() {
    let started = Instant::now();
    let names = ["n1", "n2", "n3"];
    let mut c = Cluster::with_netns("netns-partition", &job("grid", 2, 6, "1", CATCH_UP), &names);
    let port = etcd_addr(&c).port();
    let (t_ready, victim) = start_and_pick_a_victim(&mut c, &names, "grid", 6);
    let old_id = c.instance(victim);
    let ns = c.netns_for[victim].clone();
    let etcd_at = SocketAddr::from((ns.host_ip(), port));
    let before = connections_to(&ns, ns.host_ip(), port);
    assert!(
        before > 0,
        "the victim talks to etcd at {etcd_at} through its veth"
    );
    // Cut between runs: a run that ends while its agent is cut off (before the
    // fence) is run again afterwards (see `between_runs`).
    between_runs(&mut c, "grid", 2, 1100..1600);
    let log_offset = agent_log(&mut c, victim).len();
    let t_cut = now_ns();
    ns.cut();
    wait_health(&mut c, victim, 503, None, Duration::from_secs(30));
    let t_fenced = now_ns();

    // The fault is real: from the victim's namespace, etcd does not answer at all
    // (a timeout: no refusal, no unreachable error).
    let t_probe = Instant::now();
    let probe = ns.connect(etcd_at, Duration::from_secs(1));
    assert!(
        matches!(&probe, Err(e) if e.kind() == ErrorKind::TimedOut),
        "a connection to etcd from the cut namespace must time out, got {probe:?} after {:?}; \
         {}",
        t_probe.elapsed(),
        ns.neighbours()
    );

    // Its items move: a fire after the cut completes on all items without it.
    let moved = wait_fire_without(&mut c, "grid", 6, victim, t_cut);
    sleep_past(t_cut, partition_length());
    // Still partitioned: no run of the victim started after it fenced, it still
    // says 503, and it still cannot reach etcd.
    assert_still_fenced(&mut c, victim, t_fenced);
    assert!(ns.is_cut(), "the link is still cut: {}", ns.neighbours());
    let cut_log = agent_log(&mut c, victim);
    let complaints = warnings(&cut_log, log_offset);
    assert!(
        !complaints.is_empty(),
        "the victim's log shows that it lost etcd"
    );

    let heal_offset = cut_log.len();
    let t_heal = now_ns();
    ns.heal();
    let new_id = wait_health(&mut c, victim, 200, Some(&old_id), Duration::from_secs(90))
        .expect("a healthy agent reports its instance id");
    let t_rejoined = now_ns();
    assert_ne!(new_id, old_id, "it rejoins under a new identity");
    ns.connect(etcd_at, Duration::from_secs(2))
        .expect("after the heal the namespace reaches etcd again");
    assert!(
        connections_to(&ns, ns.host_ip(), port) > 0,
        "the victim is connected to etcd through its veth again"
    );
    // Runs under any new identity count: a session that fenced itself right after
    // the heal was replaced by the next registration.
    let running_id = c.wait_for(
        "the rejoined victim to run items",
        Duration::from_secs(30),
        |c| {
            c.log()
                .instances_after("grid", t_heal)
                .into_iter()
                .find(|i| Cluster::name_of(i) == victim && *i != old_id)
        },
    );
    let t_runs = now_ns();
    let vi = c.live(victim).expect("victim runs");
    c.agents[vi].instance = Some(running_id.clone());
    wait_full_fires(&mut c, "grid", 6, t_runs, 2, 60);
    let log_text = agent_log(&mut c, victim);
    assert!(
        log_text.contains("fencing: the lease can no longer be trusted"),
        "the victim's log says it fenced itself"
    );
    eprintln!(
        "netns partition: cut for {} ms; the victim fenced (/health 503) {} ms after the cut; \
         the first fire run wholly without it was {} ms after the cut, its last item starting \
         {} ms after the fire instant; after the heal it was healthy again in {} ms and ran \
         items {} ms after the heal",
        ms(t_heal - t_cut),
        ms(t_fenced - t_cut),
        ms(moved.0 - t_cut),
        ms(moved.1 - moved.0),
        ms(t_rejoined - t_heal),
        ms(t_runs - t_heal)
    );
    eprintln!(
        "netns partition: {} WARN/ERROR line(s) of the victim from the cut to the heal; \
         the first: {:?}",
        complaints.len(),
        complaints.first()
    );
    // Sessions after the heal: one is expected. More means a new session fenced
    // itself (the registry's lease keeper once scheduled its first renewal a whole
    // TTL/3 after a slow registration, past the fence point).
    let after_heal = log_text.get(heal_offset..).unwrap_or_default();
    let sessions: Vec<&str> = after_heal
        .lines()
        .filter(|l| l.contains("registered instance="))
        .collect();
    let refenced: Vec<&str> = after_heal
        .lines()
        .filter(|l| l.contains("fencing: the lease can no longer be trusted"))
        .collect();
    eprintln!(
        "netns partition: after the heal the victim registered {} time(s) (first healthy as \
         {new_id}, ran items as {running_id}) and fenced {} time(s)",
        sessions.len(),
        refenced.len()
    );
    assert!(
        refenced.is_empty(),
        "a session of the victim registered after the heal fenced itself:\n{}\n{}",
        refenced.join("\n"),
        c.diagnostics()
    );
    assert!(
        Duration::from_nanos(u64::try_from(t_rejoined - t_heal).expect("after the heal"))
            <= RECOVERY_BOUND,
        "the victim took {} ms after the heal to be healthy again (bound {RECOVERY_BOUND:?})\n{}",
        ms(t_rejoined - t_heal),
        c.diagnostics()
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
    summary("netns partition", started, &report);
}
