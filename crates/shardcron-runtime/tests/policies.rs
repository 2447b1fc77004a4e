//! Execution policies through the real runtime, on the embedded registry and on a
//! real etcd: retries with backoff (each attempt its own record, source RETRY,
//! attempt number, the claim's token), retries that run out, timeouts (TIMED_OUT,
//! retried too), and the per-instance cap on concurrent runs of a job.

mod common;
use common::start_running;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Env, Recorder, config, create_job, eventually, executions, runner};
use shardcron_core::{ExecutionSource, ExecutionStatus};
use shardcron_runtime::{
    Cluster, Handlers, Instance, JobContext, JobError, MemoryHistory, Runner, SchedulerOptions,
    SimpleJob,
};

const T: Duration = Duration::from_secs(20);

/// Fails attempts below `succeed_at` (0: always fails); sleeps `work` first.
struct Flaky {
    succeed_at: u32,
    work: Duration,
}

#[async_trait::async_trait]
impl SimpleJob for Flaky {
    async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError> {
        tokio::select! {
            () = tokio::time::sleep(self.work) => {}
            () = ctx.cancelled() => return Err(JobError("cancelled".into())),
        }
        let attempt = ctx.sharding.attempt;
        if self.succeed_at != 0 && attempt >= self.succeed_at {
            Ok(Some(format!("ok at attempt {attempt}")))
        } else {
            Err(JobError(format!("attempt {attempt} failed")))
        }
    }
}

async fn start_flaky(env: &Env, job: Flaky, h: &Arc<MemoryHistory>) -> Instance {
    start_running(
        env,
        config("a"),
        Runner {
            handlers: Handlers::new().register("flaky", job),
            history: h.clone(),
            options: SchedulerOptions::default(),
        },
    )
    .await
}

async fn a_retry_succeeds_on_the_third_attempt(b: Backend) {
    let env = Env::new(b).await;
    let h = Arc::new(MemoryHistory::new());
    let a = start_flaky(
        &env,
        Flaky {
            succeed_at: 3,
            work: Duration::from_millis(10),
        },
        &h,
    )
    .await;
    create_job(
        &env,
        "[[job]]\nname = \"flaky\"\nmanual = true\nkind = \"flaky\"\nretries = { max = 3, initial = \"200ms\", max_delay = \"1s\" }\n",
    )
    .await;
    Cluster::new(env.connect().await, env.clock())
        .trigger("flaky", vec![], "test")
        .await
        .expect("trigger");
    eventually("three attempts, the last one succeeded", T, || {
        executions(&h)
            .iter()
            .any(|r| r.status == ExecutionStatus::Succeeded)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runs = executions(&h);
    let summary: Vec<(u32, ExecutionSource, ExecutionStatus)> = runs
        .iter()
        .map(|r| (r.attempt, r.source, r.status))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, ExecutionSource::Manual, ExecutionStatus::Failed),
            (2, ExecutionSource::Retry, ExecutionStatus::Failed),
            (3, ExecutionSource::Retry, ExecutionStatus::Succeeded),
        ],
        "no fourth attempt after the success"
    );
    assert!(
        runs.iter()
            .all(|r| r.token == runs[0].token && r.fire_time == runs[0].fire_time)
    );
    assert_eq!(runs[0].cause.as_deref(), Some("attempt 1 failed"));
    // Backoff: the first retry waits 100-200 ms (200 ms with jitter in the upper
    // half), the second 200-400 ms.
    let gap =
        |i: usize| (runs[i].started_at - runs[i - 1].ended_at.expect("ended")).num_milliseconds();
    assert!(gap(1) >= 100, "first backoff {} ms", gap(1));
    assert!(gap(2) >= 200, "second backoff {} ms", gap(2));
    drop(a);
}

async fn retries_run_out_and_timeouts_are_retried(b: Backend) {
    let env = Env::new(b).await;
    let h = Arc::new(MemoryHistory::new());
    let a = start_flaky(
        &env,
        Flaky {
            succeed_at: 0,
            work: Duration::from_secs(30),
        },
        &h,
    )
    .await;
    create_job(
        &env,
        "[[job]]\nname = \"stuck\"\nmanual = true\nkind = \"flaky\"\ntimeout = \"300ms\"\nretries = { max = 2, initial = \"50ms\", max_delay = \"100ms\" }\n",
    )
    .await;
    Cluster::new(env.connect().await, env.clock())
        .trigger("stuck", vec![], "test")
        .await
        .expect("trigger");
    eventually("three timed-out attempts", T, || {
        executions(&h)
            .iter()
            .filter(|r| r.status == ExecutionStatus::TimedOut)
            .count()
            == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = executions(&h);
    assert_eq!(
        runs.len(),
        3,
        "max = 2: one attempt and two retries, no more: {runs:?}"
    );
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for r in &runs {
        assert_eq!(r.status, ExecutionStatus::TimedOut);
        assert!(
            r.cause.as_deref().is_some_and(|c| c.contains("timeout")),
            "{:?}",
            r.cause
        );
    }
    // The item was released: another trigger runs again.
    Cluster::new(env.connect().await, env.clock())
        .trigger("stuck", vec![], "test")
        .await
        .expect("trigger again");
    eventually("a fourth execution starts", T, || executions(&h).len() >= 4).await;
    drop(a);
}

async fn max_concurrent_caps_the_runs_of_a_job_on_an_instance(b: Backend) {
    let env = Env::new(b).await;
    let w = Recorder::new(Duration::from_millis(600));
    let h = Arc::new(MemoryHistory::new());
    create_job(
        &env,
        "[[job]]\nname = \"capped\"\nevery = \"1s\"\nshards = 3\nkind = \"slow\"\nmax_concurrent = 1\n",
    )
    .await;
    let a = start_running(&env, config("a"), runner("slow", &w, h.clone())).await;
    eventually("every item ran at least once", T, || {
        (0..3).all(|i| w.seen().iter().any(|s| s.item == i))
    })
    .await;
    drop(a);
    let mut runs = w.seen();
    runs.sort_by_key(|r| r.start);
    for pair in runs.windows(2) {
        assert!(
            pair[1].start >= pair[0].end,
            "two runs of the job at once on one instance with max_concurrent = 1: {pair:?}"
        );
    }
}

on_both_backends!(
    a_retry_succeeds_on_the_third_attempt,
    retries_run_out_and_timeouts_are_retried,
    max_concurrent_caps_the_runs_of_a_job_on_an_instance,
);
