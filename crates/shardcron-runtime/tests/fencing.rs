//! Cluster runtime, part 2, continued: a fire that finds its item still running
//! (each misfire policy), a generation change between a claim and its run (with a
//! failpoint), and self-fencing before the lease can expire when keep-alives stall.

mod common;
use common::start_running;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{
    Backend, Env, PausedClaims, Recorder, Seen, StalledHolder, claims_paused_then_join, config,
    create_job, eventually, runner, stall_a_holder,
};
use shardcron_core::execution::SkipReason;
use shardcron_core::{ExecutionSource, ExecutionStatus};
use shardcron_runtime::MemoryHistory;
use shardcron_runtime::failpoints::{self, Action};
use shardcron_store::HistoryEvent;

const T: Duration = Duration::from_secs(20);

fn assert_no_overlap(runs: &[Seen]) {
    let mut runs = runs.to_vec();
    runs.sort_by_key(|r| (r.item, r.start));
    for w in runs.windows(2) {
        if w[0].item == w[1].item {
            assert!(w[1].start >= w[0].end, "I1: overlapping runs {w:?}");
            assert!(w[1].token > w[0].token, "I4: tokens {w:?}");
        }
    }
}

fn skips(h: &MemoryHistory, reason: SkipReason) -> u32 {
    h.events()
        .iter()
        .filter_map(|e| match e {
            HistoryEvent::Record(r)
                if r.status == ExecutionStatus::Skipped
                    && r.skip_reason == Some(reason.clone()) =>
            {
                r.skipped_count
            }
            _ => None,
        })
        .sum()
}

async fn a_fire_that_finds_its_item_running_follows_the_policy(b: Backend) {
    for policy in ["skip", "fire_once", "catch_up"] {
        let env = Env::new(b).await;
        let mut toml = format!(
            "[[job]]\nname = \"overlap\"\nevery = \"1s\"\nshards = 1\nkind = \"slow\"\nmisfire = \"{policy}\"\n"
        );
        if policy == "catch_up" {
            toml.push_str("catch_up_max = 2\n");
        }
        create_job(&env, &toml).await;
        let job = Recorder::new(Duration::from_millis(2500));
        let h = Arc::new(MemoryHistory::new());
        let a = start_running(&env, config("a"), runner("slow", &job, h.clone())).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(a);
        let runs = job.seen();
        assert_no_overlap(&runs);
        assert!(runs.len() >= 2, "{policy}: ran {runs:?}");
        let fires: HashSet<DateTime<Utc>> = runs.iter().map(|r| r.fire).collect();
        assert_eq!(fires.len(), runs.len(), "{policy}: I2, a fire ran twice");
        match policy {
            "skip" => {
                assert!(
                    skips(&h, SkipReason::StillRunning) >= 2,
                    "{policy}: fires during a run are skipped, on record"
                );
                assert!(runs.iter().all(|r| r.source == ExecutionSource::Normal));
            }
            "fire_once" => {
                // Missed while running: once per run-end, the rest skipped.
                assert!(
                    skips(&h, SkipReason::MisfirePolicy) >= 1,
                    "{policy}: missed fires recorded"
                );
            }
            _ => {
                assert!(
                    runs.iter().any(|r| r.source == ExecutionSource::Misfire),
                    "{policy}: missed fires are caught up: {runs:?}"
                );
            }
        }
    }
}

async fn a_generation_change_between_claim_and_run_runs_the_fire_once(b: Backend) {
    let env = Env::new(b).await;
    // `a` pauses right after its claims commit, before the runs start; the
    // generation changes: `b` joins and now owns one of the claimed items.
    let PausedClaims {
        job,
        gate,
        scope,
        a,
        b: bb,
        ..
    } = claims_paused_then_join(&env, &format!("gen{}", std::process::id())).await;
    eventually("b owns an item", T, || !bb.my_items("gen").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(job.seen().is_empty(), "nothing ran while a was paused");
    gate.add_permits(2);
    failpoints::clear("after_claim", &scope);
    eventually("both claimed fires ran", T, || job.seen().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let runs = job.seen();
    assert_eq!(
        runs.len(),
        2,
        "each fire ran once, by its claimant: {runs:?}"
    );
    assert!(
        runs.iter()
            .all(|r| r.instance == a.id().unwrap_or_default())
    );
    assert_no_overlap(&runs);
    drop((a, bb));
}

async fn a_stalled_keep_alive_fences_before_the_lease_can_expire(b: Backend) {
    let env = Env::new(b).await;
    let StalledHolder {
        job,
        h,
        stall,
        a,
        other,
    } = stall_a_holder(&env).await;
    eventually("the stalled instance cancelled its run", T, || {
        job.seen().iter().any(|r| r.cancelled)
    })
    .await;
    let cancelled = std::time::Instant::now();
    let last_ack = stall
        .hooks
        .last_ack
        .lock()
        .expect("ack")
        .expect("an acknowledged keep-alive");
    // The registry cannot expire the lease before last_ack + TTL (2 s).
    assert!(
        cancelled < last_ack + Duration::from_secs(2),
        "fenced {:?} after the last acknowledged keep-alive, at or after the TTL",
        cancelled - last_ack
    );
    let fenced_run = job.seen().into_iter().find(|r| r.cancelled).expect("run");
    eventually("the fire is failed over to the other instance", T, || {
        other
            .id()
            .is_some_and(|id| h.events().iter().any(|e| matches!(e, HistoryEvent::Record(r) if r.source == ExecutionSource::Failover && r.instance == id)))
    })
    .await;
    let failover_start = h
        .events()
        .iter()
        .find_map(|e| match e {
            HistoryEvent::Record(r) if r.source == ExecutionSource::Failover => Some(r.started_at),
            _ => None,
        })
        .expect("failover record");
    assert!(
        failover_start >= fenced_run.end,
        "I1: the failover started after the fenced run stopped"
    );
    drop((a, other));
}

async fn a_delay_schedule_fires_after_each_completion(b: Backend) {
    let env = Env::new(b).await;
    create_job(
        &env,
        "[[job]]\nname = \"delayed\"\ndelay = \"500ms\"\nshards = 1\nkind = \"slow\"\n",
    )
    .await;
    let job = Recorder::new(Duration::from_millis(200));
    let h = Arc::new(MemoryHistory::new());
    let a = start_running(&env, config("a"), runner("slow", &job, h.clone())).await;
    eventually("several runs", T, || job.seen().len() >= 4).await;
    drop(a);
    let runs = job.seen();
    assert_no_overlap(&runs);
    for w in runs.windows(2) {
        let gap = w[1].fire - w[0].end;
        assert!(
            gap >= chrono::Duration::milliseconds(480)
                && gap < chrono::Duration::milliseconds(1500),
            "the next fire is 500 ms after the previous completion, got {gap}: {w:?}"
        );
        assert!(
            w[1].start >= w[1].fire,
            "a fire never starts before its instant"
        );
    }
}

async fn a_crash_after_the_run_and_before_the_release_re_runs_as_failover(b: Backend) {
    let env = Env::new(b).await;
    let scope = format!("rel{}-", std::process::id());
    failpoints::set("before_release", &scope, Action::Hang);
    let job = Recorder::new(Duration::from_millis(50));
    let h = Arc::new(MemoryHistory::new());
    let a = start_running(
        &env,
        config(&scope[..scope.len() - 1]),
        runner("slow", &job, h.clone()),
    )
    .await;
    create_job(
        &env,
        "[[job]]\nname = \"rel\"\nevery = \"1h\"\nshards = 1\nkind = \"slow\"\n",
    )
    .await;
    eventually("the run finished (and hangs before its release)", T, || {
        job.seen().len() == 1
    })
    .await;
    let other = start_running(&env, config("b"), runner("slow", &job, h.clone())).await;
    drop(a); // crash between the end of the run and its release
    eventually("the fire is re-run by failover", T, || {
        job.seen().len() == 2
    })
    .await;
    failpoints::clear("before_release", &scope);
    let runs = job.seen();
    assert_eq!(runs[0].fire, runs[1].fire, "the same fire");
    assert_eq!(runs[0].source, ExecutionSource::Normal);
    assert_eq!(
        runs[1].source,
        ExecutionSource::Failover,
        "I2: the re-run is recorded as such"
    );
    assert!(runs[1].token > runs[0].token, "I4");
    assert_no_overlap(&runs);
    drop(other);
}

on_both_backends!(
    a_fire_that_finds_its_item_running_follows_the_policy,
    a_generation_change_between_claim_and_run_runs_the_fire_once,
    a_stalled_keep_alive_fences_before_the_lease_can_expire,
    a_delay_schedule_fires_after_each_completion,
    a_crash_after_the_run_and_before_the_release_re_runs_as_failover,
);
