//! Each mechanism is needed: a scenario that holds with every mechanism in place
//! reports a violation when a test switch removes one of them (failpoints
//! feature). The run-key check is what keeps a new owner from starting an item
//! whose previous run still goes on (I1); self-fencing is what stops a holder whose
//! keep-alives stalled before its fire is failed over (I1); the fire key and the
//! claim's compare-and-advance of `last` each keep a new owner from claiming a fire
//! that its previous owner claimed (I2: either one suffices, so the test removes
//! one, then the other, then both).
//!
//! The switches are process-wide: the tests of this file take a lock, so that they
//! also hold under `cargo test`, which runs them as threads of one process.

mod common;
use common::start_running;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Backend, Env, PausedClaims, Recorder, Seen, StalledHolder, claims_paused_then_join, config,
    create_job, eventually, runner, stall_a_holder,
};
use shardcron_core::ExecutionSource;
use shardcron_runtime::MemoryHistory;
use shardcron_runtime::failpoints::{self, Mechanism};
use shardcron_store::HistoryEvent;
use tokio::sync::{Mutex, MutexGuard};

const T: Duration = Duration::from_secs(20);

async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// Pairs of runs of one item that overlap in time (I1 violations).
fn overlaps(runs: &[Seen]) -> Vec<(Seen, Seen)> {
    let mut runs = runs.to_vec();
    runs.sort_by_key(|r| (r.job.clone(), r.item, r.start));
    runs.windows(2)
        .filter(|w| w[0].job == w[1].job && w[0].item == w[1].item && w[1].start < w[0].end)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

/// One instance runs both items of a job whose runs outlast the period; a second
/// joins and gets one item while its run is still going.
async fn join_while_running() -> Vec<(Seen, Seen)> {
    let env = Env::new(Backend::Memory).await;
    create_job(
        &env,
        "[[job]]\nname = \"long\"\nevery = \"1s\"\nshards = 2\nkind = \"slow\"\nmisfire = \"fire_once\"\n",
    )
    .await;
    let w = Recorder::new(Duration::from_millis(2500));
    let h = Arc::new(MemoryHistory::new());
    let a = start_running(&env, config("a"), runner("slow", &w, h.clone())).await;
    // Both items are running on a (their run keys exist).
    let reg = env.connect().await;
    common::eventually_async("a runs both items", T, || {
        let reg = reg.clone();
        async move {
            reg.get(b"run/long/0").await.expect("get").is_some()
                && reg.get(b"run/long/1").await.expect("get").is_some()
        }
    })
    .await;
    let b = start_running(&env, config("b"), runner("slow", &w, h.clone())).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = w.seen();
    assert!(seen.len() >= 4, "the job ran: {seen:?}");
    overlaps(&seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_run_key_check_a_new_owner_overlaps_the_running_holder() {
    let _g = serial().await;
    let with = join_while_running().await;
    assert!(
        with.is_empty(),
        "with the run-key check: no overlap, got {with:?}"
    );
    failpoints::remove(Mechanism::RunKeyCheck);
    let without = join_while_running().await;
    failpoints::restore(Mechanism::RunKeyCheck);
    assert!(
        !without.is_empty(),
        "without the run-key check the new owner must start while the old run goes on"
    );
}

/// A holder whose keep-alives stall keeps its (long) run; its lease expires and
/// the fire is failed over. Returns whether the holder's run was still going when
/// the failover run started.
async fn stalled_holder_still_running_at_failover() -> bool {
    let env = Env::new(Backend::Memory).await;
    let StalledHolder {
        job, h, a, other, ..
    } = stall_a_holder(&env).await;
    eventually("the fire is failed over", T, || {
        h.events()
            .iter()
            .any(|e| matches!(e, HistoryEvent::Record(r) if r.source == ExecutionSource::Failover))
    })
    .await;
    // The holder's run has ended (it was cancelled) only if it fenced itself.
    let holder_still_running = !job
        .seen()
        .iter()
        .any(|r| r.source == ExecutionSource::Normal);
    drop((a, other));
    holder_still_running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_self_fencing_a_stalled_holder_overlaps_its_failover() {
    let _g = serial().await;
    assert!(
        !stalled_holder_still_running_at_failover().await,
        "with self-fencing the holder stops before the failover"
    );
    failpoints::remove(Mechanism::SelfFence);
    let overlapped = stalled_holder_still_running_at_failover().await;
    failpoints::restore(Mechanism::SelfFence);
    assert!(
        overlapped,
        "without self-fencing the holder's run goes on during the failover run"
    );
}

/// `a` claims both items of a fire and pauses before running them; `b` joins, owns
/// one of them and looks at it while `a` is paused; then `a` runs and releases.
/// Returns how many runs the one fire of each item had (1 each is right).
async fn generation_change_after_claim() -> Vec<usize> {
    let env = Env::new(Backend::Memory).await;
    let PausedClaims {
        job,
        gate,
        scope,
        a,
        b,
        ..
    } = claims_paused_then_join(&env, &format!("paused{}", std::process::id())).await;
    eventually("b owns an item and may fire", T, || {
        !b.my_items("gen").is_empty() && b.skew().allows_firing()
    })
    .await;
    // b evaluates its new item while a's claim is paused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gate.add_permits(2);
    failpoints::clear("after_claim", &scope);
    eventually("both claimed fires ran", T, || job.seen().len() >= 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop((a, b));
    let seen = job.seen();
    (0..2u32)
        .map(|item| seen.iter().filter(|r| r.item == item).count())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fire_key_and_the_last_compare_each_keep_a_fire_to_one_claim() {
    let _g = serial().await;
    // Without the run-key check, `b` may claim while `a`'s claim of the same fire
    // is paused; then only the fire key and `last` stand in its way.
    failpoints::remove(Mechanism::RunKeyCheck);
    let mut outcomes = Vec::new();
    for removed in [
        vec![],
        vec![Mechanism::FireKeyCheck],
        vec![Mechanism::LastCompare],
        vec![Mechanism::FireKeyCheck, Mechanism::LastCompare],
    ] {
        for m in &removed {
            failpoints::remove(*m);
        }
        let runs = generation_change_after_claim().await;
        for m in &removed {
            failpoints::restore(*m);
        }
        outcomes.push((removed, runs));
    }
    failpoints::restore(Mechanism::RunKeyCheck);
    for (removed, runs) in &outcomes[..3] {
        assert_eq!(
            runs,
            &vec![1, 1],
            "with {removed:?} removed, the other guard keeps one claim per fire"
        );
    }
    let (_, both) = &outcomes[3];
    assert!(
        both.iter().any(|n| *n > 1),
        "without the fire key and the last compare, the new owner claims the fire again (I2): {both:?}"
    );
}
