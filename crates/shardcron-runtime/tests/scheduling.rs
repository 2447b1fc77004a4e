//! Cluster runtime, part 2, on the embedded registry and on a real etcd: every fire
//! runs once (I2), never overlapping (I1), with increasing tokens (I4); a holder
//! killed mid-run is failed over with a higher token and its run recorded LOST; an
//! ambiguous commit is adopted; a manual trigger runs once per item; cancel works;
//! misfire policies after downtime and for overlap.

mod common;
use common::start_running;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Backend, Env, Recorder, Seen, config, create_job, eventually, runner};
use shardcron_core::execution::SkipReason;
use shardcron_core::{ExecutionSource, ExecutionStatus};
use shardcron_registry::conformance::{Hooks, Intercept};
use shardcron_registry::{RegistryError, Result, Txn, TxnOp, TxnResponse};
use shardcron_runtime::{Cluster, HistorySink, Instance, MemoryHistory};
use shardcron_store::HistoryEvent;

const T: Duration = Duration::from_secs(20);

async fn start_runner(env: &Env, name: &str, w: &Recorder, h: Arc<dyn HistorySink>) -> Instance {
    start_running(env, config(name), runner("witness", w, h)).await
}

/// I1 and I2 and I4 over a log: no two runs of an item overlap, no (item, fire) runs
/// twice unless the second is a FAILOVER, and tokens increase per item in start order.
fn check_invariants(seen: &[Seen]) {
    let mut by_item: BTreeMap<(String, u32), Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        by_item.entry((s.job.clone(), s.item)).or_default().push(s);
    }
    for (key, mut runs) in by_item {
        runs.sort_by_key(|s| s.start);
        for w in runs.windows(2) {
            assert!(
                w[1].start >= w[0].end || w[0].cancelled,
                "I1: runs of {key:?} overlap: {:?} and {:?}",
                w[0],
                w[1]
            );
            assert!(
                w[1].token > w[0].token,
                "I4: tokens of {key:?} do not increase: {w:?}"
            );
        }
        let mut fires = HashSet::new();
        for r in &runs {
            if r.source != ExecutionSource::Failover {
                assert!(
                    fires.insert(r.fire),
                    "I2: fire {} of {key:?} claimed twice",
                    r.fire
                );
            }
        }
    }
}

fn statuses(h: &MemoryHistory) -> Vec<(String, ExecutionStatus)> {
    h.events()
        .into_iter()
        .map(|e| match e {
            HistoryEvent::Record(r) => (r.id, r.status),
            HistoryEvent::Update(u) => (u.id, u.status),
        })
        .collect()
}

async fn every_fire_runs_once_across_racing_instances(b: Backend) {
    let env = Env::new(b).await;
    create_job(
        &env,
        "[[job]]\nname = \"tick\"\nevery = \"1s\"\nshards = 4\nkind = \"witness\"\n",
    )
    .await;
    let w = Recorder::new(Duration::from_millis(100));
    let h = Arc::new(MemoryHistory::new());
    let a = start_runner(&env, "a", &w, h.clone()).await;
    let bb = start_runner(&env, "b", &w, h.clone()).await;
    let c = start_runner(&env, "c", &w, h.clone()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop((a, bb, c));
    let seen = w.seen();
    check_invariants(&seen);
    for item in 0..4 {
        let mut fires: Vec<DateTime<Utc>> = seen
            .iter()
            .filter(|s| s.item == item)
            .map(|s| s.fire)
            .collect();
        fires.sort();
        assert!(
            fires.len() >= 3,
            "item {item} ran {} times in 5 s",
            fires.len()
        );
        for p in fires.windows(2) {
            assert_eq!(
                (p[1] - p[0]).num_milliseconds(),
                1000,
                "I3: item {item} has a gap between {} and {}",
                p[0],
                p[1]
            );
        }
    }
    assert!(
        seen.iter().all(|s| s.source == ExecutionSource::Normal),
        "all on time"
    );
    let instances: HashSet<&String> = seen.iter().map(|s| &s.instance).collect();
    assert!(
        instances.len() >= 2,
        "the items are spread over the instances: {instances:?}"
    );
}

async fn a_holder_killed_mid_run_is_failed_over_with_a_higher_token(b: Backend) {
    let env = Env::new(b).await;
    let w = Recorder::new(Duration::from_secs(3600));
    let h = Arc::new(MemoryHistory::new());
    let a = start_runner(&env, "a", &w, h.clone()).await;
    let bb = start_runner(&env, "b", &w, h.clone()).await;
    create_job(
        &env,
        "[[job]]\nname = \"long\"\nevery = \"1h\"\nshards = 1\nkind = \"witness\"\n",
    )
    .await;
    let reg = env.connect().await;
    common::eventually_async("the run starts", T, || {
        let reg = reg.clone();
        async move { reg.get(b"run/long/0").await.expect("get").is_some() }
    })
    .await;
    let run = reg.get(b"run/long/0").await.expect("get").expect("run");
    let v: serde_json::Value = serde_json::from_slice(&run.value).expect("json");
    let holder = v["holder"].as_str().unwrap_or_default().to_string();
    let first_token = reg
        .get(b"run/long/0")
        .await
        .expect("get")
        .expect("run")
        .mod_revision;
    let (dead, survivor) = if a.id().as_deref() == Some(holder.as_str()) {
        (a, bb)
    } else {
        (bb, a)
    };
    drop(dead); // a crash: no release, no revoke
    common::eventually_async("the run key now belongs to the survivor", T, || {
        let reg = reg.clone();
        let id = survivor.id().unwrap_or_default();
        async move {
            reg.get(b"run/long/0")
                .await
                .expect("get")
                .is_some_and(|kv| {
                    serde_json::from_slice::<serde_json::Value>(&kv.value)
                        .is_ok_and(|v| v["holder"] == id.as_str() && v["source"] == "FAILOVER")
                })
        }
    })
    .await;
    let kv = reg.get(b"run/long/0").await.expect("get").expect("run");
    assert!(
        kv.mod_revision > first_token,
        "I4: the failover claim has a higher token"
    );
    let lost: Vec<_> = statuses(&h)
        .into_iter()
        .filter(|(_, s)| *s == ExecutionStatus::Lost)
        .collect();
    assert_eq!(lost.len(), 1, "the dead run is recorded LOST: {lost:?}");
    drop(survivor);
}

async fn failover_off_clears_the_run_and_records_it_lost(b: Backend) {
    let env = Env::new(b).await;
    let w = Recorder::new(Duration::from_secs(3600));
    let h = Arc::new(MemoryHistory::new());
    let a = start_runner(&env, "a", &w, h.clone()).await;
    create_job(
        &env,
        "[[job]]\nname = \"nofo\"\nevery = \"1h\"\nshards = 1\nkind = \"witness\"\nfailover = false\n",
    )
    .await;
    let reg = env.connect().await;
    common::eventually_async("the run starts", T, || {
        let reg = reg.clone();
        async move { reg.get(b"run/nofo/0").await.expect("get").is_some() }
    })
    .await;
    let bb = start_runner(&env, "b", &w, h.clone()).await;
    drop(a);
    common::eventually_async("the run key is cleared", T, || {
        let reg = reg.clone();
        async move { reg.get(b"run/nofo/0").await.expect("get").is_none() }
    })
    .await;
    eventually("LOST recorded", T, || {
        statuses(&h)
            .iter()
            .any(|(_, s)| *s == ExecutionStatus::Lost)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !w.seen()
            .iter()
            .any(|s| s.source == ExecutionSource::Failover),
        "no failover run with failover = false"
    );
    drop(bb);
}

async fn a_manual_trigger_runs_once_per_item_and_cancel_stops_a_run(b: Backend) {
    let env = Env::new(b).await;
    let w = Recorder::new(Duration::from_millis(50));
    let h = Arc::new(MemoryHistory::new());
    let a = start_runner(&env, "a", &w, h.clone()).await;
    let bb = start_runner(&env, "b", &w, h.clone()).await;
    create_job(
        &env,
        "[[job]]\nname = \"manual\"\nmanual = true\nshards = 3\nkind = \"witness\"\n",
    )
    .await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    eventually("items placed", T, || {
        a.my_items("manual").len() + bb.my_items("manual").len() == 3
    })
    .await;
    cluster
        .trigger("manual", vec![], "tester")
        .await
        .expect("trigger");
    eventually("three manual runs", T, || w.seen().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = w.seen();
    assert_eq!(seen.len(), 3, "once per item: {seen:?}");
    assert!(seen.iter().all(|s| s.source == ExecutionSource::Manual));
    let items: HashSet<u32> = seen.iter().map(|s| s.item).collect();
    assert_eq!(items.len(), 3);

    // Cancel: a long run stops and ends CANCELLED.
    let slow = Recorder::new(Duration::from_secs(3600));
    let h2 = Arc::new(MemoryHistory::new());
    let c = start_runner(&env, "c", &slow, h2.clone()).await;
    drop(a);
    drop(bb);
    create_job(
        &env,
        "[[job]]\nname = \"slow\"\nmanual = true\nshards = 1\nkind = \"witness\"\n",
    )
    .await;
    eventually("c owns slow", T, || c.my_items("slow") == vec![0]).await;
    cluster
        .trigger("slow", vec![0], "tester")
        .await
        .expect("trigger");
    eventually("the slow run started", T, || {
        statuses(&h2)
            .iter()
            .any(|(_, s)| *s == ExecutionStatus::Running)
    })
    .await;
    let exec = statuses(&h2)
        .into_iter()
        .find(|(_, s)| *s == ExecutionStatus::Running)
        .map(|(id, _)| id)
        .expect("execution id");
    cluster.cancel(&exec, "tester").await.expect("cancel");
    eventually("cancelled", T, || {
        statuses(&h2)
            .iter()
            .any(|(id, s)| *id == exec && *s == ExecutionStatus::Cancelled)
    })
    .await;
    let reg = env.connect().await;
    common::eventually_async("run key released", T, || {
        let reg = reg.clone();
        async move { reg.get(b"run/slow/0").await.expect("get").is_none() }
    })
    .await;
    drop(c);
}

async fn misfire_policies_after_a_whole_cluster_restart(b: Backend) {
    for policy in ["fire_once", "skip", "catch_up"] {
        let env = Env::new(b).await;
        let name = policy.replace('_', "-");
        let mut toml = format!(
            "[[job]]\nname = \"{name}\"\nevery = \"1s\"\nshards = 1\nkind = \"witness\"\nmisfire = \"{policy}\"\n"
        );
        if policy == "catch_up" {
            toml.push_str("catch_up_max = 3\n");
        }
        create_job(&env, &toml).await;
        let w = Recorder::new(Duration::from_millis(10));
        let h = Arc::new(MemoryHistory::new());
        let a = start_runner(&env, "a", &w, h.clone()).await;
        eventually("it runs", T, || w.seen().len() >= 2).await;
        // The whole cluster goes away for 5 s (the registry keeps `last`).
        a.shutdown().await.expect("shutdown");
        let before = w.seen().len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let restart = Utc::now();
        let h2 = Arc::new(MemoryHistory::new());
        let a2 = start_runner(&env, "a", &w, h2.clone()).await;
        eventually("decided after the restart", T, || {
            h2.events().iter().any(
                |e| matches!(e, HistoryEvent::Record(r) if r.status == ExecutionStatus::Skipped),
            )
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(a2);
        let after: Vec<Seen> = w.seen().into_iter().skip(before).collect();
        let misfires = after
            .iter()
            .filter(|s| s.source == ExecutionSource::Misfire)
            .count();
        let on_time_at_restart = after
            .iter()
            .filter(|s| s.source == ExecutionSource::Normal && s.fire <= restart)
            .count();
        let skipped: u64 = h2
            .events()
            .iter()
            .filter_map(|e| match e {
                HistoryEvent::Record(r) if r.status == ExecutionStatus::Skipped => {
                    r.skipped_count.map(u64::from)
                }
                _ => None,
            })
            .sum();
        match policy {
            "fire_once" => {
                assert_eq!(
                    misfires + on_time_at_restart,
                    1,
                    "fire_once runs once: {after:?}"
                );
                assert!(skipped >= 3, "fire_once skips the rest: {skipped}");
            }
            "skip" => {
                assert_eq!(misfires, 0, "skip runs no missed fire: {after:?}");
                assert!(skipped >= 4, "skip records every missed fire: {skipped}");
            }
            _ => {
                assert_eq!(misfires, 3, "catch_up runs up to its cap: {after:?}");
                assert!(skipped >= 1, "older ones are skipped: {skipped}");
            }
        }
        // Every fire missed in the ~5 s gap is accounted for: run or skipped (I3).
        let accounted = skipped as usize + misfires + on_time_at_restart;
        assert!(
            (5..=7).contains(&accounted),
            "{policy}: {skipped} skipped + {misfires} misfire + {on_time_at_restart} on-time runs should cover the ~5-6 due fires"
        );
        check_invariants(&w.seen());
    }
}

async fn an_ambiguous_commit_is_adopted_not_claimed_twice(b: Backend) {
    let env = Env::new(b).await;
    create_job(
        &env,
        "[[job]]\nname = \"amb\"\nevery = \"1h\"\nshards = 1\nkind = \"witness\"\n",
    )
    .await;
    let w = Recorder::new(Duration::from_millis(50));
    let h = Arc::new(MemoryHistory::new());
    let lossy = Arc::new(Intercept {
        inner: env.connect().await,
        hooks: LoseFirstClaimAnswer {
            lost: Mutex::new(false),
        },
    });
    let a = Instance::start_with(
        lossy.clone(),
        env.clock(),
        config("a"),
        runner("witness", &w, h.clone()),
    )
    .await
    .expect("start");
    eventually("the fire ran", T, || !w.seen().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        *lossy.hooks.lost.lock().expect("flag"),
        "the answer of the claim was lost"
    );
    let seen = w.seen();
    assert_eq!(seen.len(), 1, "run exactly once: {seen:?}");
    let reg = env.connect().await;
    assert!(
        reg.get(b"run/amb/0").await.expect("get").is_none(),
        "not left stuck"
    );
    drop(a);
}

/// Lets the first claim transaction commit, then reports it as failed: the answer
/// was lost after the commit.
#[derive(Debug)]
struct LoseFirstClaimAnswer {
    lost: Mutex<bool>,
}

impl Hooks for LoseFirstClaimAnswer {
    fn after_txn(&self, txn: &Txn, outcome: Result<TxnResponse>) -> Result<TxnResponse> {
        let is_claim = txn
            .then
            .iter()
            .any(|op| matches!(op, TxnOp::Put { key, .. } if key.starts_with(b"run/")));
        if is_claim && outcome.as_ref().is_ok_and(|r| r.succeeded) {
            let mut lost = self.lost.lock().expect("flag");
            if !*lost {
                *lost = true;
                return Err(RegistryError::Unavailable("answer lost (test)".into()));
            }
        }
        outcome
    }
}

async fn fires_of_a_disabled_job_or_item_are_skipped_on_record_not_caught_up(b: Backend) {
    let env = Env::new(b).await;
    create_job(
        &env,
        "[[job]]\nname = \"pause\"\nevery = \"1s\"\nshards = 2\nkind = \"witness\"\nmisfire = \"catch_up\"\ncatch_up_max = 100\n",
    )
    .await;
    let w = Recorder::new(Duration::from_millis(10));
    let h = Arc::new(MemoryHistory::new());
    let a = start_runner(&env, "a", &w, h.clone()).await;
    let cluster = Cluster::new(env.connect().await, env.clock());
    eventually("it runs", T, || w.seen().len() >= 2).await;
    cluster
        .set_job_enabled("pause", false)
        .await
        .expect("disable");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = w.seen().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.seen().len(), before, "nothing runs while disabled");
    cluster
        .set_job_enabled("pause", true)
        .await
        .expect("enable");
    eventually("the disabled period is recorded", T, || {
        h.events().iter().any(
            |e| matches!(e, HistoryEvent::Record(r) if r.skip_reason == Some(SkipReason::Disabled)),
        )
    })
    .await;
    eventually("runs resume", T, || w.seen().len() >= before + 2).await;
    let resumed: Vec<Seen> = w.seen().into_iter().skip(before).collect();
    assert!(
        resumed.iter().all(|s| s.source == ExecutionSource::Normal),
        "no catch-up of the disabled period: {resumed:?}"
    );
    let disabled: u32 = h
        .events()
        .iter()
        .filter_map(|e| match e {
            HistoryEvent::Record(r) if r.skip_reason == Some(SkipReason::Disabled) => {
                r.skipped_count
            }
            _ => None,
        })
        .sum();
    assert!(
        disabled >= 4,
        "about 3 s x 2 items of fires recorded as disabled, got {disabled}"
    );

    // One item disabled: only that item stops, and its gap is recorded too.
    cluster
        .set_item_enabled("pause", 1, false)
        .await
        .expect("disable item");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let since = Utc::now() - chrono::Duration::milliseconds(1500);
    let recent: Vec<Seen> = w.seen().into_iter().filter(|s| s.start > since).collect();
    assert!(
        recent.iter().all(|s| s.item == 0),
        "item 1 does not run: {recent:?}"
    );
    assert!(recent.iter().any(|s| s.item == 0), "item 0 runs");
    cluster
        .set_item_enabled("pause", 1, true)
        .await
        .expect("enable item");
    eventually("item 1's gap recorded", T, || {
        h.events().iter().any(|e| matches!(e, HistoryEvent::Record(r) if r.item == 1 && r.skip_reason == Some(SkipReason::Disabled) && r.started_at > since))
    })
    .await;
    check_invariants(&w.seen());
    drop(a);
}

async fn fires_without_an_eligible_instance_are_skipped_on_record(b: Backend) {
    let env = Env::new(b).await;
    let w = Recorder::new(Duration::from_millis(10));
    let h = Arc::new(MemoryHistory::new());
    let a = start_runner(&env, "a", &w, h.clone()).await;
    create_job(
        &env,
        "[[job]]\nname = \"ap\"\nevery = \"1s\"\nshards = 1\nkind = \"witness\"\nlabels = { region = \"ap\" }\nmisfire = \"catch_up\"\ncatch_up_max = 100\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let no_eligible = || -> u32 {
        h.events()
            .iter()
            .filter_map(|e| match e {
                HistoryEvent::Record(r)
                    if r.skip_reason == Some(SkipReason::NoEligibleInstance) =>
                {
                    r.skipped_count
                }
                _ => None,
            })
            .sum()
    };
    assert!(
        no_eligible() >= 2,
        "fires with no eligible instance are recorded: {}",
        no_eligible()
    );
    assert!(w.seen().is_empty());
    let mut cfg = config("ap1");
    cfg.labels = std::collections::BTreeMap::from([("region".to_string(), "ap".to_string())]);
    let ap = start_running(&env, cfg, runner("witness", &w, h.clone())).await;
    eventually("an eligible instance runs it", T, || w.seen().len() >= 2).await;
    // A fire recorded as skipped never runs, although the policy is catch_up. (A
    // fire that fell due in the last second before ap1 joined may not have been
    // recorded by the leader yet; ap1 then runs it late, which is allowed.)
    let skipped: Vec<(DateTime<Utc>, DateTime<Utc>)> = h
        .events()
        .iter()
        .filter_map(|e| match e {
            HistoryEvent::Record(r) if r.skip_reason == Some(SkipReason::NoEligibleInstance) => {
                Some((r.fire_time, r.fire_time_end.unwrap_or(r.fire_time)))
            }
            _ => None,
        })
        .collect();
    for run in w.seen() {
        assert!(
            !skipped
                .iter()
                .any(|(a, b)| run.fire >= *a && run.fire <= *b),
            "a fire recorded as skipped ran: {run:?}, skipped {skipped:?}"
        );
    }
    let late = w
        .seen()
        .iter()
        .filter(|s| s.source != ExecutionSource::Normal)
        .count();
    assert!(
        late <= 2,
        "at most the fires of the last second run late: {:?}",
        w.seen()
    );
    drop((a, ap));
}

/// An instance whose clock jumps 5 minutes ahead refuses to fire; the leader
/// leaves it out of the generation, so its items move and every fire still runs
/// once, on time, elsewhere; none of the skewed clock's future fires runs.
async fn a_skewed_instance_hands_its_items_over_and_no_fire_is_lost(b: Backend) {
    let env = Env::new(b).await;
    create_job(
        &env,
        "[[job]]\nname = \"tick\"\nevery = \"1s\"\nshards = 6\nkind = \"witness\"\n",
    )
    .await;
    let w = Recorder::new(Duration::from_millis(50));
    let h = Arc::new(MemoryHistory::new());
    let a = start_runner(&env, "a", &w, h.clone()).await;
    let bb = start_runner(&env, "b", &w, h.clone()).await;
    let skewed = shardcron_core::SkewedClock::new();
    let c = Instance::start_with(
        env.connect().await,
        Arc::new(skewed.clone()),
        config("c"),
        runner("witness", &w, h.clone()),
    )
    .await
    .expect("c starts");
    let c_id = c.id().expect("c registered");
    eventually("c runs items", T, || {
        w.seen().iter().any(|s| s.instance == c_id)
    })
    .await;
    skewed.set_skew(chrono::Duration::minutes(5));
    let in_generation = |i: &Instance| {
        i.generation()
            .is_some_and(|g| g.members.iter().any(|m| m.id == c_id))
    };
    eventually("c is left out of the generation", T, || !in_generation(&a)).await;
    // Let the handover settle, then watch a window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let to = Utc::now() - chrono::Duration::milliseconds(500);
    let seen = w.seen();
    check_invariants(&seen);
    assert!(
        seen.iter()
            .all(|s| s.fire <= s.start + chrono::Duration::seconds(1)),
        "no fire of the future (the skewed clock's) ran: {:?}",
        seen.iter().filter(|s| s.fire > s.start).collect::<Vec<_>>()
    );
    for item in 0..6 {
        let fires: Vec<DateTime<Utc>> = {
            let mut f: Vec<_> = seen
                .iter()
                .filter(|s| s.item == item && s.fire >= from && s.fire <= to)
                .map(|s| s.fire)
                .collect();
            f.sort();
            f
        };
        assert!(
            fires.len() >= 3,
            "item {item} ran {} times in the window",
            fires.len()
        );
        for p in fires.windows(2) {
            assert_eq!(
                (p[1] - p[0]).num_milliseconds(),
                1000,
                "item {item} lost a fire between {} and {}",
                p[0],
                p[1]
            );
        }
    }
    assert!(
        seen.iter()
            .filter(|s| s.start >= from)
            .all(|s| s.instance != c_id),
        "the skewed instance ran nothing after its items moved"
    );
    skewed.set_skew(chrono::Duration::zero());
    eventually("c is back once its clock is right", T, || in_generation(&a)).await;
    drop((a, bb, c));
}

on_both_backends!(
    a_skewed_instance_hands_its_items_over_and_no_fire_is_lost,
    every_fire_runs_once_across_racing_instances,
    a_holder_killed_mid_run_is_failed_over_with_a_higher_token,
    failover_off_clears_the_run_and_records_it_lost,
    a_manual_trigger_runs_once_per_item_and_cancel_stops_a_run,
    misfire_policies_after_a_whole_cluster_restart,
    an_ambiguous_commit_is_adopted_not_claimed_twice,
    fires_of_a_disabled_job_or_item_are_skipped_on_record_not_caught_up,
    fires_without_an_eligible_instance_are_skipped_on_record,
);
