//! Cluster runtime, part 1, on the embedded registry and on a real etcd: election
//! and re-election, generations on join / leave / disable / weight change, label
//! targeting, every operation, re-registration after a lost lease, the clock-skew
//! guard, the key schema, job files, and O(1) writes for a join in a 100,000-job
//! namespace.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, Env, bulk_jobs, config, eventually, eventually_async, start};
use shardcron_core::SkewedClock;
use shardcron_core::job::{JobFile, JobSpec};
use shardcron_registry::conformance::{Hooks, Intercept};
use shardcron_registry::{Registry, Result, Txn, TxnOp, TxnResponse};
use shardcron_runtime::{
    ApplyOutcome, Cluster, Error, Instance, InstanceEvent, JobPlacement, SkewStatus,
};

const T: Duration = Duration::from_secs(15);

fn job(toml: &str) -> JobSpec {
    JobFile::from_toml(toml)
        .expect("valid job")
        .jobs
        .into_iter()
        .next()
        .expect("one job")
}

fn leaders(instances: &[&Instance]) -> usize {
    instances.iter().filter(|i| i.is_leader()).count()
}

fn members(i: &Instance) -> Vec<String> {
    i.generation()
        .map(|g| g.members.into_iter().map(|m| m.id).collect())
        .unwrap_or_default()
}

async fn election_and_reelection(b: Backend) {
    let env = Env::new(b).await;
    let a = start(&env, config("a")).await;
    let bb = start(&env, config("b")).await;
    let c = start(&env, config("c")).await;
    eventually("exactly one leader", T, || leaders(&[&a, &bb, &c]) == 1).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    let (first, token1) = cluster.leader().await.expect("read").expect("a leader");
    // Graceful shutdown of the leader: its key goes with its lease, another takes over.
    let mut rest: Vec<Instance> = Vec::new();
    for i in [a, bb, c] {
        if i.id().as_deref() == Some(first.instance.as_str()) {
            i.shutdown().await.expect("graceful shutdown");
        } else {
            rest.push(i);
        }
    }
    let took = eventually("a new leader after a graceful leave", T, || {
        leaders(&[&rest[0], &rest[1]]) == 1
    })
    .await;
    eprintln!("re-election after graceful shutdown: {took:?}");
    let (second, token2) = cluster.leader().await.expect("read").expect("a leader");
    assert_ne!(second.instance, first.instance);
    assert!(token2 > token1, "leader tokens increase");
    // A crash (no revoke): the survivor takes over once the lease expires.
    let (leader, other): (Instance, Instance) = {
        let x = rest.remove(0);
        let y = rest.remove(0);
        if x.is_leader() { (x, y) } else { (y, x) }
    };
    let crashed = Instant::now();
    drop(leader);
    let took = eventually("the survivor leads after a crash", T, || other.is_leader()).await;
    eprintln!("re-election after a crash (TTL 2 s): {took:?}");
    assert!(crashed.elapsed() >= Duration::from_millis(500));
    let (_, token3) = cluster.leader().await.expect("read").expect("a leader");
    assert!(token3 > token2);
}

async fn generations_follow_join_leave_disable_and_weight(b: Backend) {
    let env = Env::new(b).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    let a = start(&env, config("a")).await;
    let a_id = a.id().expect("id");
    eventually("generation [a]", T, || members(&a) == vec![a_id.clone()]).await;
    let bb = start(&env, config("b")).await;
    let b_id = bb.id().expect("id");
    eventually("generation [a, b] in join order", T, || {
        members(&a) == vec![a_id.clone(), b_id.clone()] && members(&bb) == members(&a)
    })
    .await;
    let n1 = a.generation().expect("gen").number;

    cluster
        .set_instance_enabled("b", false)
        .await
        .expect("disable b");
    eventually("disabled b leaves the generation", T, || {
        members(&a) == vec![a_id.clone()]
    })
    .await;
    cluster
        .set_instance_enabled("b", true)
        .await
        .expect("enable b");
    eventually("enabled b is back", T, || {
        members(&a) == vec![a_id.clone(), b_id.clone()]
    })
    .await;

    bb.set_weight(3).expect("weight");
    eventually("weight change published", T, || {
        a.generation()
            .is_some_and(|g| g.members.iter().any(|m| m.id == b_id && m.weight == 3))
    })
    .await;

    bb.shutdown().await.expect("leave");
    eventually("b left", T, || members(&a) == vec![a_id.clone()]).await;
    assert!(
        a.generation().expect("gen").number > n1 + 2,
        "each change is a generation"
    );
}

async fn assignments_are_computed_locally_and_reach_a_new_instance_fast(b: Backend) {
    let env = Env::new(b).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    cluster
        .create_job(&job(
            "[[job]]\nname = \"orders\"\nevery = \"5s\"\nshards = 8\ncommand = [\"/bin/true\"]\n",
        ))
        .await
        .expect("create job");
    let a = start(&env, config("a")).await;
    let bb = start(&env, config("b")).await;
    eventually("a and b share the items", T, || {
        let (x, y) = (a.my_items("orders"), bb.my_items("orders"));
        x.len() == 4 && y.len() == 4 && x.iter().all(|i| !y.contains(i))
    })
    .await;
    assert_eq!(
        a.placement("orders"),
        bb.placement("orders"),
        "same view everywhere"
    );
    let c = start(&env, config("c")).await;
    let registered = Instant::now();
    let took = eventually("the new instance gets items", T, || {
        !c.my_items("orders").is_empty()
    })
    .await;
    eprintln!("new instance got items {took:?} after registering");
    assert!(
        registered.elapsed() < Duration::from_secs(5),
        "generous bound; the measured time goes to the benchmark"
    );
    eventually("all three cover every item once", T, || {
        let mut all: Vec<u32> = [&a, &bb, &c]
            .iter()
            .flat_map(|i| i.my_items("orders"))
            .collect();
        all.sort_unstable();
        all == (0..8).collect::<Vec<_>>()
    })
    .await;

    // A change of schedule is seen live.
    let mut spec = cluster
        .get_job("orders")
        .await
        .expect("get")
        .expect("job")
        .spec;
    spec.schedule = shardcron_core::Schedule::Every(Duration::from_secs(7));
    cluster.update_job(&spec, None).await.expect("update");
    eventually("every instance sees the new schedule", T, || {
        [&a, &bb, &c].iter().all(|i| {
            i.job("orders").is_some_and(|j| {
                j.schedule == shardcron_core::Schedule::Every(Duration::from_secs(7))
            })
        })
    })
    .await;
    // A change of shard count takes effect live.
    let mut spec = cluster
        .get_job("orders")
        .await
        .expect("get")
        .expect("job")
        .spec;
    spec.shards = 12;
    cluster.update_job(&spec, None).await.expect("update");
    eventually("12 items now", T, || {
        [&a, &bb, &c]
            .iter()
            .map(|i| i.my_items("orders").len())
            .sum::<usize>()
            == 12
    })
    .await;
}

async fn labels_select_instances_and_no_eligible_instance_is_reported(b: Backend) {
    let env = Env::new(b).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    let mut eu = config("eu");
    eu.labels = BTreeMap::from([("region".into(), "eu".into())]);
    let mut us = config("us");
    us.labels = BTreeMap::from([("region".into(), "us".into())]);
    let e = start(&env, eu).await;
    let u = start(&env, us).await;
    cluster
        .create_job(&job(
            "[[job]]\nname = \"eu-only\"\nevery = \"5s\"\nshards = 4\ncommand = [\"/bin/true\"]\nlabels = { region = \"eu\" }\n",
        ))
        .await
        .expect("create");
    cluster
        .create_job(&job(
            "[[job]]\nname = \"ap-only\"\nevery = \"5s\"\nshards = 2\ncommand = [\"/bin/true\"]\nlabels = { region = \"ap\" }\n",
        ))
        .await
        .expect("create");
    cluster
        .create_job(&job(
            "[[job]]\nname = \"rust\"\nevery = \"5s\"\nkind = \"sync-orders\"\n",
        ))
        .await
        .expect("create");
    eventually("eu job only on the eu instance", T, || {
        e.my_items("eu-only").len() == 4 && u.my_items("eu-only").is_empty()
    })
    .await;
    eventually("ap job has no eligible instance", T, || {
        e.placement("ap-only") == Some(JobPlacement::NoEligibleInstance)
    })
    .await;
    // A handler job needs an instance that registered the handler.
    eventually(
        "a handler job without the handler has no eligible instance",
        T,
        || u.placement("rust") == Some(JobPlacement::NoEligibleInstance),
    )
    .await;
}

async fn operations_are_watched_live(b: Backend) {
    let env = Env::new(b).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    cluster
        .create_job(&job(
            "[[job]]\nname = \"ops\"\nevery = \"5s\"\nshards = 4\ncommand = [\"/bin/true\"]\n",
        ))
        .await
        .expect("create");
    let a = start(&env, config("a")).await;
    let bb = start(&env, config("b")).await;
    eventually("items assigned", T, || {
        a.my_items("ops").len() + bb.my_items("ops").len() == 4
    })
    .await;

    cluster
        .set_job_enabled("ops", false)
        .await
        .expect("disable job");
    eventually("job disabled everywhere", T, || {
        a.placement("ops") == Some(JobPlacement::Disabled)
            && bb.placement("ops") == Some(JobPlacement::Disabled)
    })
    .await;
    cluster
        .set_job_enabled("ops", true)
        .await
        .expect("enable job");
    eventually("job enabled", T, || {
        a.my_items("ops").len() + bb.my_items("ops").len() == 4
    })
    .await;

    cluster
        .set_item_enabled("ops", 2, false)
        .await
        .expect("disable item");
    eventually("item 2 disabled", T, || {
        !a.my_items("ops").contains(&2)
            && !bb.my_items("ops").contains(&2)
            && a.my_items("ops").len() + bb.my_items("ops").len() == 3
    })
    .await;
    assert!(matches!(
        cluster.set_item_enabled("ops", 9, false).await,
        Err(Error::Invalid(m)) if m.contains("item")
    ));
    cluster
        .set_item_enabled("ops", 2, true)
        .await
        .expect("enable item");
    eventually("item 2 back", T, || {
        a.my_items("ops").len() + bb.my_items("ops").len() == 4
    })
    .await;

    let req = cluster
        .trigger("ops", vec![], "tester")
        .await
        .expect("trigger");
    eventually("every instance sees the trigger request", T, || {
        [&a, &bb].iter().all(|i| {
            i.pending_triggers()
                .iter()
                .any(|t| t.id == req && t.job == "ops")
        })
    })
    .await;
    let req2 = cluster
        .trigger("ops", vec![1], "tester")
        .await
        .expect("trigger");
    assert_ne!(req, req2, "each trigger has its own id");
    assert!(matches!(
        cluster.trigger("nope", vec![], "t").await,
        Err(Error::NotFound(_))
    ));

    cluster.cancel("exec-123", "tester").await.expect("cancel");
    eventually("cancel request seen", T, || {
        a.pending_cancels().contains(&"exec-123".to_string())
    })
    .await;

    let b_id = bb.id().expect("id");
    let mut b_events = bb.events();
    cluster
        .shutdown_instance(&b_id, "tester")
        .await
        .expect("shutdown request");
    tokio::time::timeout(T, bb.shutdown_requested())
        .await
        .expect("the target sees its shutdown request");
    let mut saw = false;
    while let Ok(ev) = b_events.try_recv() {
        saw |= ev == InstanceEvent::ShutdownRequested;
    }
    assert!(saw);
    // The target carried it out itself: a graceful shutdown, which revoked its
    // lease, so it left the generation at once.
    assert!(bb.is_stopped());
    assert!(a.id().is_some(), "the other instance is untouched");
    eventually("b is gone", T, || members(&a).len() == 1).await;
    // Garbage collection: a shutdown request for an identity that no longer
    // exists is removed by the leader.
    let reg = env.connect().await;
    reg.put(b"requests/shutdown/ghost-1", b"{}", None)
        .await
        .expect("put");
    eventually_async("the leader removes requests of dead instances", T, || {
        let reg = reg.clone();
        async move {
            reg.get(b"requests/shutdown/ghost-1")
                .await
                .expect("get")
                .is_none()
        }
    })
    .await;
    assert!(matches!(
        cluster.shutdown_instance("nobody-1", "t").await,
        Err(Error::NotFound(_))
    ));
}

async fn a_lost_lease_fences_and_re_registers_under_a_new_identity(b: Backend) {
    let env = Env::new(b).await;
    let a = start(&env, config("a")).await;
    let other = start(&env, config("b")).await;
    let mut events = a.events();
    let old = a.id().expect("id");
    let reg = env.connect().await;
    let kv = reg
        .get(format!("instances/{old}").as_bytes())
        .await
        .expect("get")
        .expect("instance key");
    reg.lease_revoke(kv.lease)
        .await
        .expect("revoke a's lease behind its back");
    let mut fenced = false;
    let mut new_id = None;
    let deadline = Instant::now() + T;
    while new_id.is_none() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Ok(InstanceEvent::Fenced { id, .. })) if id == old => fenced = true,
            Ok(Ok(InstanceEvent::Registered { id })) => new_id = Some(id),
            _ => {}
        }
    }
    assert!(fenced, "the instance fenced itself");
    let new_id = new_id.expect("registered again");
    assert_ne!(new_id, old);
    eventually("the new identity is in the generation", T, || {
        members(&other).contains(&new_id) && !members(&other).contains(&old)
    })
    .await;
    assert!(a.id().is_some(), "it did not shut down");
}

async fn the_skew_guard_refuses_an_instance_whose_clock_is_off(b: Backend) {
    let env = Env::new(b).await;
    let skewed = SkewedClock::new();
    let a = start(&env, config("a")).await;
    let bb = start(&env, config("b")).await;
    let c = Instance::start(env.connect().await, Arc::new(skewed.clone()), config("c"))
        .await
        .expect("start c");
    eventually("all in sync at first", T, || {
        [&a, &bb, &c].iter().all(|i| i.skew().allows_firing())
    })
    .await;
    skewed.set_skew(chrono::Duration::minutes(5));
    eventually(
        "the skewed instance refuses to fire",
        T,
        || matches!(c.skew(), SkewStatus::TooFar { skew_ms, .. } if skew_ms > 200_000),
    )
    .await;
    assert!(
        a.skew().allows_firing() && bb.skew().allows_firing(),
        "the others are fine"
    );
    let c_id = c.id().expect("c is registered");
    eventually(
        "the leader leaves the skewed instance out of the generation (its items move)",
        T,
        || !members(&a).contains(&c_id) && members(&a).len() == 2,
    )
    .await;
    skewed.set_skew(chrono::Duration::minutes(-5));
    eventually(
        "behind is refused too",
        T,
        || matches!(c.skew(), SkewStatus::TooFar { skew_ms, .. } if skew_ms < -200_000),
    )
    .await;
    skewed.set_skew(chrono::Duration::zero());
    eventually("corrected clock fires again", T, || {
        c.skew().allows_firing()
    })
    .await;
    eventually("and is back in the generation", T, || {
        members(&a).contains(&c_id)
    })
    .await;
    let msg = SkewStatus::TooFar {
        skew_ms: 300_000,
        bound_ms: 2000,
    }
    .to_string();
    assert!(msg.contains("refusing to fire"), "{msg}");
}

async fn a_newer_key_schema_is_refused_and_bad_values_are_named(b: Backend) {
    let env = Env::new(b).await;
    let reg = env.connect().await;
    reg.put(b"schema", br#"{"major":2,"minor":0}"#, None)
        .await
        .expect("put");
    let err = Instance::start(env.connect().await, env.clock(), config("a"))
        .await
        .expect_err("newer schema");
    assert!(
        matches!(err, Error::SchemaTooNew { found_major: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade shardcron"), "{err}");
    reg.put(b"schema", b"not json", None).await.expect("put");
    let err = Instance::start(env.connect().await, env.clock(), config("a"))
        .await
        .expect_err("bad value");
    assert!(err.to_string().contains("\"schema\""), "{err}");
    reg.put(b"schema", br#"{"major":1,"minor":7}"#, None)
        .await
        .expect("put");
    let a = Instance::start(env.connect().await, env.clock(), config("a"))
        .await
        .expect("same major, newer minor: fine");
    // A malformed job in the registry is skipped with an error, not a crash.
    reg.put(b"jobs/broken", b"{\"name\":\"broken\",\"shards\":0}", None)
        .await
        .expect("put");
    assert_eq!(a.placement("broken"), None);
    let cluster = Cluster::new(reg, env.clock());
    let (_, bad) = cluster.list_jobs().await.expect("list");
    assert!(
        bad.iter().any(|e| e.to_string().contains("jobs/broken")),
        "{bad:?}"
    );
}

async fn job_files_apply_as_create_if_absent(b: Backend) {
    let env = Env::new(b).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    let v1 = job("[[job]]\nname = \"f\"\nevery = \"5s\"\ncommand = [\"/bin/true\"]\n");
    assert_eq!(
        cluster.apply_job(&v1).await.expect("apply"),
        ApplyOutcome::Created
    );
    assert_eq!(
        cluster.apply_job(&v1).await.expect("apply"),
        ApplyOutcome::Unchanged
    );
    let v2 = job("[[job]]\nname = \"f\"\nevery = \"9s\"\ncommand = [\"/bin/true\"]\n");
    assert_eq!(
        cluster.apply_job(&v2).await.expect("apply"),
        ApplyOutcome::Conflict
    );
    let stored = cluster.get_job("f").await.expect("get").expect("job");
    assert_eq!(stored.spec, v1, "a conflict keeps the registry copy");
    assert!(stored.anchor.is_some(), "an anchor is set at creation");
    let v3 =
        job("[[job]]\nname = \"f\"\nevery = \"9s\"\ncommand = [\"/bin/true\"]\noverwrite = true\n");
    assert_eq!(
        cluster.apply_job(&v3).await.expect("apply"),
        ApplyOutcome::Overwritten
    );
    assert_eq!(
        cluster.apply_job(&v3).await.expect("apply"),
        ApplyOutcome::Unchanged
    );
    cluster.delete_job("f").await.expect("delete");
    assert!(cluster.get_job("f").await.expect("get").is_none());
    assert!(matches!(
        cluster.delete_job("f").await,
        Err(Error::NotFound(_))
    ));
}

/// Counts the keys written (puts and deletes that happened) through a registry.
#[derive(Debug)]
struct CountWrites {
    writes: Arc<AtomicU64>,
    job_writes: Arc<AtomicU64>,
}

impl CountWrites {
    fn count(&self, key: &[u8]) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if key.starts_with(b"jobs/") || key.starts_with(b"items/") || key.starts_with(b"anchors/") {
            self.job_writes.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait::async_trait]
impl Hooks for CountWrites {
    fn on_write(&self, key: &[u8]) {
        self.count(key);
    }

    fn after_txn(&self, txn: &Txn, outcome: Result<TxnResponse>) -> Result<TxnResponse> {
        if let Ok(resp) = &outcome {
            let ops = if resp.succeeded {
                &txn.then
            } else {
                &txn.otherwise
            };
            for op in ops {
                match op {
                    TxnOp::Put { key, .. } | TxnOp::Delete { key } => self.count(key),
                    TxnOp::DeletePrefix { prefix } => self.count(prefix),
                    _ => {}
                }
            }
        }
        outcome
    }
}

async fn a_join_in_a_100k_job_namespace_writes_a_constant_number_of_keys(b: Backend) {
    let env = Env::new(b).await;
    let writes = Arc::new(AtomicU64::new(0));
    let job_writes = Arc::new(AtomicU64::new(0));
    let counted = |inner: Arc<dyn Registry>| -> Arc<dyn Registry> {
        Arc::new(Intercept {
            inner,
            hooks: CountWrites {
                writes: writes.clone(),
                job_writes: job_writes.clone(),
            },
        })
    };
    let reg = env.connect().await;
    let started = Instant::now();
    bulk_jobs(reg.as_ref(), 100_000, |i| {
        let name = format!("job-{i:06}");
        let body = format!(
            r#"{{"name":"{name}","every":"1m","shards":4,"kind":"script","command":["/bin/true"]}}"#
        );
        (name, body)
    })
    .await;
    eprintln!("wrote 100,000 jobs in {:?}", started.elapsed());
    let mut cfg = config("a");
    cfg.heartbeat_interval = Duration::from_secs(1);
    let a = Instance::start(counted(env.connect().await), env.clock(), cfg.clone())
        .await
        .expect("a");
    cfg.name = "b".into();
    let bb = Instance::start(counted(env.connect().await), env.clock(), cfg.clone())
        .await
        .expect("b");
    // Liveness bounds, not performance checks: each instance decodes 100,000
    // jobs at start, which a loaded CI machine (tests run side by side) can make
    // slow; about 10 s on a quiet one.
    eventually("two members", Duration::from_secs(150), || {
        members(&a).len() == 2
    })
    .await;
    eventually_async("jobs visible", Duration::from_secs(150), || async {
        a.placement("job-099999").is_some()
    })
    .await;
    writes.store(0, Ordering::SeqCst);
    job_writes.store(0, Ordering::SeqCst);
    let window = Instant::now();
    cfg.name = "c".into();
    let c = Instance::start(counted(env.connect().await), env.clock(), cfg)
        .await
        .expect("c");
    eventually("c is in the generation", Duration::from_secs(60), || {
        members(&a).len() == 3 && members(&bb).len() == 3
    })
    .await;
    eventually(
        "c owns items of the last job",
        Duration::from_secs(60),
        || !c.my_items("job-099999").is_empty() || !c.my_items("job-000000").is_empty(),
    )
    .await;
    let elapsed = window.elapsed();
    let total = writes.load(Ordering::SeqCst);
    eprintln!(
        "a join in a 100,000-job namespace: {total} keys written in {elapsed:?} (heartbeats included)"
    );
    assert_eq!(
        job_writes.load(Ordering::SeqCst),
        0,
        "no per-job key is written"
    );
    // Registration (1), the generation (1), and heartbeats of three instances at one
    // per second during the window.
    let heartbeats = 3 * (elapsed.as_secs() + 1);
    assert!(total <= 4 + heartbeats, "{total} writes for one join");
}

on_both_backends!(
    election_and_reelection,
    generations_follow_join_leave_disable_and_weight,
    assignments_are_computed_locally_and_reach_a_new_instance_fast,
    labels_select_instances_and_no_eligible_instance_is_reported,
    operations_are_watched_live,
    a_lost_lease_fences_and_re_registers_under_a_new_identity,
    the_skew_guard_refuses_an_instance_whose_clock_is_off,
    a_newer_key_schema_is_refused_and_bad_values_are_named,
    job_files_apply_as_create_if_absent,
    a_join_in_a_100k_job_namespace_writes_a_constant_number_of_keys,
);

/// SIGTERM (as `kill` or a service manager sends it) makes `run_until_shutdown`
/// stop gracefully: the lease is revoked, so the instance key disappears at once
/// instead of after the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_and_revokes_the_lease() {
    let env = Env::new(Backend::Memory).await;
    let mut cfg = config("term");
    cfg.lease_ttl = Duration::from_secs(30);
    let a = start(&env, cfg).await;
    let id = a.id().expect("id");
    let reg = env.connect().await;
    assert!(
        reg.get(format!("instances/{id}").as_bytes())
            .await
            .expect("get")
            .is_some()
    );
    let task = tokio::spawn(a.run_until_shutdown());
    // Let the task install its signal handlers before the signal is sent (without
    // them SIGTERM would end this test process, failing the test loudly).
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM)
        .expect("send SIGTERM to ourselves");
    tokio::time::timeout(T, task)
        .await
        .expect("shut down within the bound")
        .expect("task")
        .expect("graceful shutdown");
    assert!(
        reg.get(format!("instances/{id}").as_bytes())
            .await
            .expect("get")
            .is_none(),
        "the lease was revoked (the TTL is 30 s)"
    );
}
