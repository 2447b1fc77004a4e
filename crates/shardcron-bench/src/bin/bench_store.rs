//! `bench_store`: sustained execution-history writes per second through
//! [`HistoryWriter`] on SQLite, PostgreSQL 15 and MariaDB, side by side.
//!
//! Each database is started fresh (SQLite: a file in a temporary directory;
//! PostgreSQL and MariaDB: the test fixtures, default durability settings). Two
//! workloads run on each:
//!
//! - `complete`: one finished record per execution (one row and one transition);
//! - `start+finish`: a RUNNING record, then its SUCCEEDED update a little later
//!   (one row, two transitions: what the runtime writes per run).
//!
//! The producer records as fast as the writer drains (it only pauses while more
//! than `--window` events are queued, so that the number measures the database,
//! not the spool), and the clock stops when `flush` confirms everything is
//! committed. The latency of `record` itself is measured on every call.
//!
//! ```text
//! cargo run --release -p shardcron-bench --bin bench_store -- [--executions N]
//!     [--batch N] [--window N] [--only sqlite,postgres,mysql]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{TimeDelta, Utc};
use shardcron_bench::{Latencies, disks, machine, markdown_table, ms, thousands};
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus};
use shardcron_store::{
    Backend, ExecutionUpdate, HistoryEvent, HistoryStore, HistoryWriter, WriterOptions,
    new_execution_id,
};
use shardcron_testkit::{MariaDbServer, PostgresServer};

#[derive(Debug, Clone)]
struct Args {
    executions: u64,
    batch: usize,
    window: usize,
    only: Vec<Backend>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        executions: 200_000,
        batch: 1000,
        window: 10_000,
        only: vec![Backend::Sqlite, Backend::Postgres, Backend::MySql],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--executions" => args.executions = value("--executions")?.parse()?,
            "--batch" => args.batch = value("--batch")?.parse()?,
            "--window" => args.window = value("--window")?.parse()?,
            "--only" => {
                args.only = value("--only")?
                    .split(',')
                    .map(|s| match s.trim() {
                        "sqlite" => Ok(Backend::Sqlite),
                        "postgres" => Ok(Backend::Postgres),
                        "mysql" | "mariadb" => Ok(Backend::MySql),
                        other => bail!("unknown database {other:?} (sqlite, postgres, mysql)"),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "-h" | "--help" => {
                println!(
                    "bench_store [--executions N (200000)] [--batch N (1000)] \
                     [--window N (10000)] [--only sqlite,postgres,mysql]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

/// A database for one run; dropping it stops the server.
enum Database {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresServer),
    MariaDb(MariaDbServer),
}

impl Database {
    fn start(backend: Backend) -> anyhow::Result<Database> {
        Ok(match backend {
            Backend::Sqlite => Database::Sqlite(tempfile::tempdir()?),
            Backend::Postgres => Database::Postgres(PostgresServer::start()),
            Backend::MySql => Database::MariaDb(MariaDbServer::start()),
        })
    }

    fn url(&self) -> String {
        match self {
            Database::Sqlite(dir) => {
                format!("sqlite://{}", dir.path().join("history.db").display())
            }
            Database::Postgres(s) => s.url(),
            Database::MariaDb(s) => s.url(),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "SQLite (WAL, synchronous=NORMAL)",
            Database::Postgres(_) => "PostgreSQL 15",
            Database::MariaDb(_) => "MariaDB 10.11",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Complete,
    StartFinish,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Complete => "complete",
            Workload::StartFinish => "start+finish",
        }
    }
}

#[derive(Debug)]
struct Outcome {
    database: &'static str,
    workload: Workload,
    executions: u64,
    events: u64,
    elapsed: Duration,
    batches: u64,
    record_p99: Duration,
    record_max: Duration,
}

fn record_for(i: u64, id: String) -> ExecutionRecord {
    let now = Utc::now();
    ExecutionRecord {
        id,
        job: format!("job-{:03}", i % 500),
        item: (i % 16) as u32,
        total: 16,
        fire_time: now,
        fire_time_end: None,
        skipped_count: None,
        started_at: now,
        ended_at: None,
        instance: "bench-instance-01HX".into(),
        host: "bench-host".into(),
        source: ExecutionSource::Normal,
        status: ExecutionStatus::Running,
        skip_reason: None,
        attempt: 1,
        token: i as i64,
        cause: None,
        output: Some("ok\n".into()),
    }
}

async fn run_one(db: &Database, workload: Workload, args: &Args) -> anyhow::Result<Outcome> {
    let store = HistoryStore::connect(&db.url())
        .await
        .with_context(|| format!("connect to {}", db.label()))?;
    let spool = tempfile::tempdir()?;
    let writer = HistoryWriter::start(
        store.clone(),
        WriterOptions {
            batch_size: args.batch,
            spool_threshold: args.window * 4,
            ..WriterOptions::new(spool.path())
        },
    )
    .await?;
    let mut samples = Latencies::new();
    let mut timed = |e: HistoryEvent| -> anyhow::Result<()> {
        let t = Instant::now();
        writer.record(e)?;
        samples.push(t.elapsed());
        Ok(())
    };
    // Finishes lag starts by this many executions.
    const LAG: usize = 64;
    let mut pending: std::collections::VecDeque<String> = Default::default();
    let started = Instant::now();
    for i in 0..args.executions {
        let id = new_execution_id();
        let mut r = record_for(i, id.clone());
        match workload {
            Workload::Complete => {
                r.status = ExecutionStatus::Succeeded;
                r.ended_at = Some(r.started_at + TimeDelta::milliseconds(3));
                timed(HistoryEvent::Record(r))?;
            }
            Workload::StartFinish => {
                timed(HistoryEvent::Record(r))?;
                pending.push_back(id);
                if pending.len() > LAG
                    && let Some(done) = pending.pop_front()
                {
                    timed(HistoryEvent::Update(ExecutionUpdate::finished(
                        done,
                        ExecutionStatus::Succeeded,
                        Utc::now(),
                    )))?;
                }
            }
        }
        if i % 256 == 0 {
            while writer.stats().queued > args.window {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
    }
    for done in pending.drain(..) {
        timed(HistoryEvent::Update(ExecutionUpdate::finished(
            done,
            ExecutionStatus::Succeeded,
            Utc::now(),
        )))?;
    }
    writer
        .flush(Duration::from_secs(600))
        .await
        .context("flush")?;
    let elapsed = started.elapsed();
    let stats = writer.shutdown().await?;
    if stats.spooled != 0 || stats.written != stats.recorded {
        bail!("not everything was written: {stats:?}");
    }
    let rows = store
        .count(&shardcron_store::ExecutionQuery::default())
        .await?;
    if rows != args.executions {
        bail!("{rows} rows in the database, expected {}", args.executions);
    }
    store.close().await;
    Ok(Outcome {
        database: db.label(),
        workload,
        executions: args.executions,
        events: stats.written,
        elapsed,
        batches: stats.batches,
        record_p99: samples.quantile(0.99),
        record_max: samples.max(),
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    println!("bench_store on {}, disk: {}", machine(), disks());
    println!(
        "{} executions per run, batch {}, window {}\n",
        thousands(args.executions),
        args.batch,
        args.window
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut outcomes = Vec::new();
    for backend in &args.only {
        for workload in [Workload::Complete, Workload::StartFinish] {
            // A fresh database for each run, so that every run starts empty.
            let db = Database::start(*backend)?;
            let o = runtime.block_on(run_one(&db, workload, &args))?;
            println!(
                "{:<34} {:<13} {:>10} rows/s {:>10} events/s  ({} events in {:.2} s)",
                o.database,
                o.workload.name(),
                thousands((o.executions as f64 / o.elapsed.as_secs_f64()) as u64),
                thousands((o.events as f64 / o.elapsed.as_secs_f64()) as u64),
                thousands(o.events),
                o.elapsed.as_secs_f64()
            );
            outcomes.push(o);
        }
    }
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let secs = o.elapsed.as_secs_f64();
            vec![
                o.database.to_string(),
                o.workload.name().to_string(),
                thousands(o.executions),
                thousands(o.events),
                format!("{secs:.2}"),
                thousands((o.executions as f64 / secs) as u64),
                thousands((o.events as f64 / secs) as u64),
                format!("{:.0}", o.events as f64 / o.batches.max(1) as f64),
                ms(o.record_p99),
                ms(o.record_max),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        markdown_table(
            &[
                "database",
                "workload",
                "executions",
                "events",
                "seconds",
                "rows/s",
                "events/s",
                "events/batch",
                "record() p99 ms",
                "record() max ms",
            ],
            &rows,
        )
    );
    Ok(())
}
