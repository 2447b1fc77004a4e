//! Dataflow jobs through the real runtime, on the embedded registry and on a real
//! etcd: fetch then process, one batch per run when not streaming; with
//! `streaming = true`, batch after batch until a fetch is empty, or until the item
//! moves to another instance, is disabled, or the instance shuts down gracefully,
//! always at a batch boundary (nothing fetched is left unprocessed). Errors from
//! `fetch` or `process` fail the run, and retries apply.

mod common;
use common::start_running;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Env, config, create_job, ended, eventually, executions};
use shardcron_core::{ExecutionSource, ExecutionStatus};
use shardcron_runtime::{
    Cluster, DataflowJob, Handlers, Instance, JobContext, JobError, MemoryHistory, Runner,
    SchedulerOptions,
};

const T: Duration = Duration::from_secs(20);

/// What the source saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// A fetch by an execution, and the rows it returned.
    Fetch {
        execution: String,
        item: u32,
        rows: Vec<usize>,
    },
    /// A batch processed (committed) by an execution.
    Processed {
        execution: String,
        item: u32,
        rows: Vec<usize>,
    },
}

#[derive(Debug, Default)]
struct State {
    /// Per item, the first row not yet processed.
    cursor: BTreeMap<u32, usize>,
    calls: Vec<Call>,
}

/// A source of numbered rows per item: `fetch` returns the next `batch` rows not
/// yet processed, `process` takes `work` and then commits them. `rows: None`
/// never runs dry. `fail_fetch_on` / `fail_process_on` fail the given attempt.
#[derive(Clone)]
struct Rows {
    rows: Option<usize>,
    batch: usize,
    work: Duration,
    fail_fetch_on: Option<u32>,
    fail_process_on: Option<u32>,
    state: Arc<Mutex<State>>,
}

impl Rows {
    fn new(rows: Option<usize>, batch: usize, work: Duration) -> Rows {
        Rows {
            rows,
            batch,
            work,
            fail_fetch_on: None,
            fail_process_on: None,
            state: Arc::default(),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("state").calls.clone()
    }

    /// Rows fetched and rows processed for `item`, in order.
    fn fetched_and_processed(&self, item: u32) -> (Vec<usize>, Vec<usize>) {
        let (mut fetched, mut processed) = (Vec::new(), Vec::new());
        for c in self.calls() {
            match c {
                Call::Fetch { item: i, rows, .. } if i == item => fetched.extend(rows),
                Call::Processed { item: i, rows, .. } if i == item => processed.extend(rows),
                _ => {}
            }
        }
        (fetched, processed)
    }

    fn processed_count(&self, item: u32) -> usize {
        self.fetched_and_processed(item).1.len()
    }
}

#[async_trait::async_trait]
impl DataflowJob for Rows {
    type Item = usize;

    async fn fetch(&self, ctx: &JobContext) -> Result<Vec<usize>, JobError> {
        if self.fail_fetch_on == Some(ctx.sharding.attempt) {
            return Err(JobError("source unavailable".into()));
        }
        let mut st = self.state.lock().expect("state");
        let from = *st.cursor.get(&ctx.sharding.item).unwrap_or(&0);
        let to = match self.rows {
            Some(n) => (from + self.batch).min(n),
            None => from + self.batch,
        };
        let rows: Vec<usize> = (from..to).collect();
        st.calls.push(Call::Fetch {
            execution: ctx.sharding.execution_id.clone(),
            item: ctx.sharding.item,
            rows: rows.clone(),
        });
        Ok(rows)
    }

    async fn process(&self, ctx: &JobContext, data: Vec<usize>) -> Result<(), JobError> {
        // Not cancellable on purpose: a wind-down must wait for the batch.
        tokio::time::sleep(self.work).await;
        if self.fail_process_on == Some(ctx.sharding.attempt) {
            return Err(JobError(format!("sink rejected {} rows", data.len())));
        }
        let mut st = self.state.lock().expect("state");
        if let Some(last) = data.last() {
            st.cursor.insert(ctx.sharding.item, last + 1);
        }
        st.calls.push(Call::Processed {
            execution: ctx.sharding.execution_id.clone(),
            item: ctx.sharding.item,
            rows: data,
        });
        Ok(())
    }
}

fn runner(rows: &Rows, h: &Arc<MemoryHistory>) -> Runner {
    Runner {
        handlers: Handlers::new().dataflow("rows", rows.clone()),
        history: h.clone(),
        options: SchedulerOptions::default(),
    }
}

async fn start(env: &Env, name: &str, rows: &Rows, h: &Arc<MemoryHistory>) -> Instance {
    start_running(env, config(name), runner(rows, h)).await
}

async fn trigger(env: &Env, job: &str) {
    Cluster::new(env.connect().await, env.clock())
        .trigger(job, vec![], "test")
        .await
        .expect("trigger");
}

const WIND_DOWN: &str = "stopped: the item is moving or the instance is stopping";

async fn one_fetch_and_one_process_per_run_when_not_streaming(b: Backend) {
    let env = Env::new(b).await;
    let h = Arc::new(MemoryHistory::new());
    let rows = Rows::new(Some(25), 10, Duration::from_millis(10));
    let a = start(&env, "a", &rows, &h).await;
    create_job(
        &env,
        "[[job]]\nname = \"batches\"\nmanual = true\nkind = \"rows\"\n",
    )
    .await;
    for run in 1..=4 {
        trigger(&env, "batches").await;
        eventually(&format!("run {run} ended"), T, || ended(&h).len() == run).await;
    }
    let runs = ended(&h);
    let outputs: Vec<(ExecutionStatus, Option<String>)> =
        runs.iter().map(|r| (r.status, r.output.clone())).collect();
    let out = |s: &str| (ExecutionStatus::Succeeded, Some(s.to_string()));
    assert_eq!(
        outputs,
        vec![
            out("processed 10 item(s) in 1 batch(es); stopped: not streaming"),
            out("processed 10 item(s) in 1 batch(es); stopped: not streaming"),
            out("processed 5 item(s) in 1 batch(es); stopped: not streaming"),
            out("processed 0 item(s) in 0 batch(es); stopped: a fetch came back empty"),
        ]
    );
    // Per run: exactly one fetch, and one process of what it fetched (none when
    // the fetch was empty).
    let calls = rows.calls();
    for (i, r) in runs.iter().enumerate() {
        let mine: Vec<&Call> = calls
            .iter()
            .filter(|c| match c {
                Call::Fetch { execution, .. } | Call::Processed { execution, .. } => {
                    *execution == r.id
                }
            })
            .collect();
        let fetched = match mine.first() {
            Some(Call::Fetch { rows, .. }) => rows.clone(),
            other => panic!("run {i} did not start with a fetch: {other:?}"),
        };
        if fetched.is_empty() {
            assert_eq!(mine.len(), 1, "run {i}: an empty fetch is not processed");
        } else {
            assert_eq!(
                mine.get(1),
                Some(&&Call::Processed {
                    execution: r.id.clone(),
                    item: 0,
                    rows: fetched,
                }),
                "run {i}"
            );
            assert_eq!(mine.len(), 2, "run {i}: one fetch, one process: {mine:?}");
        }
    }
    assert_eq!(rows.fetched_and_processed(0).1, (0..25).collect::<Vec<_>>());
    a.shutdown().await.expect("shutdown");
}

async fn fetch_and_process_errors_fail_the_run_and_are_retried(b: Backend) {
    let env = Env::new(b).await;
    let h = Arc::new(MemoryHistory::new());
    let mut rows = Rows::new(Some(25), 10, Duration::from_millis(10));
    rows.fail_fetch_on = Some(1);
    rows.fail_process_on = Some(2);
    let a = start(&env, "a", &rows, &h).await;
    create_job(
        &env,
        "[[job]]\nname = \"flaky-source\"\nmanual = true\nkind = \"rows\"\nretries = { max = 2, initial = \"100ms\", max_delay = \"200ms\" }\n",
    )
    .await;
    trigger(&env, "flaky-source").await;
    eventually("the third attempt succeeded", T, || {
        ended(&h)
            .iter()
            .any(|r| r.status == ExecutionStatus::Succeeded)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary: Vec<_> = executions(&h)
        .into_iter()
        .map(|r| (r.attempt, r.source, r.status, r.cause, r.output))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                1,
                ExecutionSource::Manual,
                ExecutionStatus::Failed,
                Some("source unavailable".to_string()),
                None
            ),
            (
                2,
                ExecutionSource::Retry,
                ExecutionStatus::Failed,
                Some("sink rejected 10 rows".to_string()),
                None
            ),
            (
                3,
                ExecutionSource::Retry,
                ExecutionStatus::Succeeded,
                None,
                Some("processed 10 item(s) in 1 batch(es); stopped: not streaming".to_string())
            ),
        ]
    );
    // The failed process committed nothing: the retry got the same rows again.
    assert_eq!(rows.fetched_and_processed(0).1, (0..10).collect::<Vec<_>>());
    a.shutdown().await.expect("shutdown");
}

async fn a_streaming_run_processes_everything_and_stops_at_the_empty_fetch(b: Backend) {
    let env = Env::new(b).await;
    let h = Arc::new(MemoryHistory::new());
    let rows = Rows::new(Some(25), 10, Duration::from_millis(50));
    let a = start(&env, "a", &rows, &h).await;
    create_job(
        &env,
        "[[job]]\nname = \"stream\"\nmanual = true\nkind = \"rows\"\nstreaming = true\n",
    )
    .await;
    trigger(&env, "stream").await;
    eventually("the run ended", T, || !ended(&h).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = executions(&h);
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    let run = &runs[0];
    assert_eq!(run.status, ExecutionStatus::Succeeded, "{:?}", run.cause);
    assert_eq!(
        run.output.as_deref(),
        Some("processed 25 item(s) in 3 batch(es); stopped: a fetch came back empty")
    );
    let calls = rows.calls();
    let fetches: Vec<usize> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Fetch { rows, .. } => Some(rows.len()),
            Call::Processed { .. } => None,
        })
        .collect();
    assert_eq!(
        fetches,
        vec![10, 10, 5, 0],
        "three batches, then the empty fetch"
    );
    assert!(
        calls.iter().all(|c| match c {
            Call::Fetch { execution, .. } | Call::Processed { execution, .. } =>
                *execution == run.id,
        }),
        "all in the one run"
    );
    assert_eq!(rows.fetched_and_processed(0).1, (0..25).collect::<Vec<_>>());
    a.shutdown().await.expect("shutdown");
}

/// The ended run of `item`, if any.
fn ended_run(h: &MemoryHistory, item: u32) -> Option<shardcron_core::ExecutionRecord> {
    ended(h).into_iter().find(|r| r.item == item)
}

async fn a_streaming_run_winds_down_when_its_item_moves_or_is_disabled(b: Backend) {
    let env = Env::new(b).await;
    let h = Arc::new(MemoryHistory::new());
    let rows = Rows::new(None, 5, Duration::from_millis(100));
    let a = start(&env, "a", &rows, &h).await;
    create_job(
        &env,
        "[[job]]\nname = \"endless\"\nmanual = true\nshards = 2\nkind = \"rows\"\nstreaming = true\n",
    )
    .await;
    trigger(&env, "endless").await;
    eventually("both items stream on a", T, || {
        rows.processed_count(0) >= 10 && rows.processed_count(1) >= 10
    })
    .await;
    assert!(ended(&h).is_empty(), "{:?}", ended(&h));

    // b joins and takes item 1 (average: one item each).
    let hb = Arc::new(MemoryHistory::new());
    let bb = start(&env, "b", &rows, &hb).await;
    eventually("b owns item 1", T, || bb.my_items("endless") == vec![1]).await;
    eventually("item 1's run on a ended by itself", T, || {
        ended_run(&h, 1).is_some()
    })
    .await;
    let run1 = ended_run(&h, 1).expect("item 1");
    assert_eq!(run1.status, ExecutionStatus::Succeeded, "{:?}", run1.cause);
    let out = run1.output.clone().expect("output");
    assert!(out.ends_with(WIND_DOWN), "{out}");
    let (fetched, processed) = rows.fetched_and_processed(1);
    assert!(!fetched.is_empty());
    assert_eq!(fetched, processed, "every batch fetched was processed");
    assert!(
        out.starts_with(&format!(
            "processed {} item(s) in {} batch(es);",
            processed.len(),
            processed.len() / 5
        )),
        "{out}"
    );
    // Item 0 stays on a and keeps streaming.
    let before = rows.processed_count(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rows.processed_count(0) > before, "item 0 kept going");
    assert!(ended_run(&h, 0).is_none(), "item 0 did not stop");
    assert!(
        executions(&hb).is_empty(),
        "b does not run item 1 again for the fire a ran: {:?}",
        executions(&hb)
    );

    // Disabling item 0 winds its run down too.
    Cluster::new(env.connect().await, env.clock())
        .set_item_enabled("endless", 0, false)
        .await
        .expect("disable item 0");
    eventually("item 0's run ended by itself", T, || {
        ended_run(&h, 0).is_some()
    })
    .await;
    let run0 = ended_run(&h, 0).expect("item 0");
    assert_eq!(run0.status, ExecutionStatus::Succeeded, "{:?}", run0.cause);
    assert!(
        run0.output
            .as_deref()
            .is_some_and(|o| o.ends_with(WIND_DOWN)),
        "{:?}",
        run0.output
    );
    let (fetched, processed) = rows.fetched_and_processed(0);
    assert_eq!(fetched, processed, "every batch fetched was processed");
    bb.shutdown().await.expect("shutdown b");
    a.shutdown().await.expect("shutdown a");
}

async fn a_streaming_run_stops_at_a_batch_boundary_on_graceful_shutdown(b: Backend) {
    let env = Env::new(b).await;
    let h = Arc::new(MemoryHistory::new());
    let rows = Rows::new(None, 5, Duration::from_millis(400));
    let a = start(&env, "a", &rows, &h).await;
    create_job(
        &env,
        "[[job]]\nname = \"endless\"\nmanual = true\nkind = \"rows\"\nstreaming = true\n",
    )
    .await;
    trigger(&env, "endless").await;
    eventually("two batches processed", T, || rows.processed_count(0) >= 10).await;
    // Mid-batch (a batch takes 400 ms).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (fetched_before, _) = rows.fetched_and_processed(0);
    let started = Instant::now();
    a.shutdown().await.expect("shutdown");
    let took = started.elapsed();
    // The shutdown grace is 5 s: a run that had to be cancelled would take it all.
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let runs = executions(&h);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        runs[0].status,
        ExecutionStatus::Succeeded,
        "{:?}",
        runs[0].cause
    );
    assert!(
        runs[0]
            .output
            .as_deref()
            .is_some_and(|o| o.ends_with(WIND_DOWN)),
        "{:?}",
        runs[0].output
    );
    let (fetched, processed) = rows.fetched_and_processed(0);
    assert_eq!(fetched, processed, "every batch fetched was processed");
    assert_eq!(
        fetched, fetched_before,
        "the batch in hand was finished, and no further batch was fetched"
    );
}

on_both_backends!(
    one_fetch_and_one_process_per_run_when_not_streaming,
    fetch_and_process_errors_fail_the_run_and_are_retried,
    a_streaming_run_processes_everything_and_stops_at_the_empty_fetch,
    a_streaming_run_winds_down_when_its_item_moves_or_is_disabled,
    a_streaming_run_stops_at_a_batch_boundary_on_graceful_shutdown,
);
