//! Registry benchmark: create-if-absent transaction throughput and latency through
//! `EtcdRegistry` and through the raw `etcd-client` against the same etcd, in one
//! run, at concurrency 1, 16 and 64; the same through `MemoryRegistry` (in memory,
//! and persisted with a synced write-ahead log). Also the time a leased key takes to
//! disappear after its keep-alives stop (TTL 2 s).
//!
//! ```sh
//! cargo run --release -p shardcron-bench --bin bench_registry -- [SECONDS_PER_RUN]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shardcron_bench::{Latencies, machine, ms};
use shardcron_registry::{
    Compare, EtcdOptions, EtcdRegistry, MemoryRegistry, MemoryRegistryOptions, Registry, Txn, TxnOp,
};
use shardcron_testkit::EtcdServer;

const CONCURRENCY: [usize; 3] = [1, 16, 64];

/// One measured configuration.
struct Row {
    client: &'static str,
    concurrency: usize,
    ops: u64,
    secs: f64,
    lat: Latencies,
}

/// Run `op(task, seq)` from `concurrency` tasks for `dur`; collect latencies.
async fn drive<F, Fut>(concurrency: usize, dur: Duration, op: F) -> Result<(u64, f64, Latencies)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let op = op.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::new();
            let mut seq = 0u64;
            while start.elapsed() < dur {
                let t0 = Instant::now();
                let won = op(t, seq).await?;
                lat.push(t0.elapsed());
                if !won {
                    bail!("create-if-absent of a fresh key did not win");
                }
                seq += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Latencies::new();
    for t in tasks {
        all.extend(t.await.context("benchmark task panicked")??);
    }
    Ok((
        done.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        all,
    ))
}

async fn bench_trait(
    name: &'static str,
    reg: Arc<dyn Registry>,
    run: &str,
    concurrency: usize,
    dur: Duration,
) -> Result<Row> {
    let run = run.to_string();
    let (ops, secs, lat) = drive(concurrency, dur, move |t, seq| {
        let reg = reg.clone();
        let key = format!("bench/{run}/{t}/{seq}").into_bytes();
        async move {
            let resp = reg
                .txn(
                    Txn::new()
                        .when(Compare::absent(key.clone()))
                        .and_then(TxnOp::put(key, b"claimed".to_vec())),
                )
                .await?;
            Ok(resp.succeeded)
        }
    })
    .await?;
    Ok(Row {
        client: name,
        concurrency,
        ops,
        secs,
        lat,
    })
}

async fn bench_raw(
    client: etcd_client::Client,
    run: &str,
    concurrency: usize,
    dur: Duration,
) -> Result<Row> {
    let run = run.to_string();
    let (ops, secs, lat) = drive(concurrency, dur, move |t, seq| {
        let mut kv = client.kv_client();
        // The same key layout (namespace prefix included) as through the trait.
        let key = format!("/bench-raw/bench/{run}/{t}/{seq}").into_bytes();
        async move {
            let txn = etcd_client::Txn::new()
                .when(vec![etcd_client::Compare::create_revision(
                    key.clone(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then(vec![etcd_client::TxnOp::put(
                    key,
                    b"claimed".to_vec(),
                    None,
                )]);
            Ok(kv.txn(txn).await?.succeeded())
        }
    })
    .await?;
    Ok(Row {
        client: "raw etcd-client",
        concurrency,
        ops,
        secs,
        lat,
    })
}

fn print_rows(rows: &mut [Row]) {
    println!("| client | concurrency | txn/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows.iter_mut() {
        let tput = r.ops as f64 / r.secs;
        println!(
            "| {} | {} | {:.0} | {} | {} |",
            r.client,
            r.concurrency,
            tput,
            ms(r.lat.quantile(0.5)),
            ms(r.lat.quantile(0.99))
        );
    }
}

async fn lease_expiry(reg: &EtcdRegistry) -> Result<Duration> {
    let lease = reg.lease_grant(Duration::from_secs(2)).await?;
    reg.put(b"bench/lease", b"x", Some(lease.id)).await?;
    reg.lease_keep_alive(lease.id).await?;
    let stopped = Instant::now();
    while reg.get(b"bench/lease").await?.is_some() {
        if stopped.elapsed() > Duration::from_secs(30) {
            bail!("leased key still present 30 s after keep-alives stopped");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(stopped.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("SECONDS_PER_RUN must be a whole number")?
        .unwrap_or(5);
    let dur = Duration::from_secs(secs);
    println!("machine: {}", machine());
    println!(
        "etcd: {}",
        std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    );
    println!("{secs} s per round; create-if-absent txn of a fresh key per operation\n");

    let etcd = EtcdServer::start();
    let ours = EtcdRegistry::connect(EtcdOptions::new(etcd.endpoints(), "/bench-ours"))
        .await
        .context("connect EtcdRegistry")?;
    let ours: Arc<dyn Registry> = Arc::new(ours);
    let raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .context("connect raw etcd-client")?;

    // Rounds alternate which client goes first, so that neither always meets a
    // fresher (or busier) etcd; the table shows each client's median round.
    const ROUNDS: usize = 3;
    let mut etcd_rows = Vec::new();
    let mut ratios = Vec::new();
    for (i, &c) in CONCURRENCY.iter().enumerate() {
        let mut ours_rounds = Vec::new();
        let mut raw_rounds = Vec::new();
        for round in 0..ROUNDS {
            let run = format!("r{i}-{round}");
            if (i + round) % 2 == 0 {
                raw_rounds.push(bench_raw(raw.clone(), &run, c, dur).await?);
                ours_rounds.push(bench_trait("EtcdRegistry", ours.clone(), &run, c, dur).await?);
            } else {
                ours_rounds.push(bench_trait("EtcdRegistry", ours.clone(), &run, c, dur).await?);
                raw_rounds.push(bench_raw(raw.clone(), &run, c, dur).await?);
            }
        }
        let median = |mut rows: Vec<Row>| {
            rows.sort_by(|a, b| (a.ops as f64 / a.secs).total_cmp(&(b.ops as f64 / b.secs)));
            rows.swap_remove(rows.len() / 2)
        };
        let raw_m = median(raw_rounds);
        let ours_m = median(ours_rounds);
        ratios.push((
            c,
            100.0 * (ours_m.ops as f64 / ours_m.secs) / (raw_m.ops as f64 / raw_m.secs).max(1e-9),
        ));
        etcd_rows.push(raw_m);
        etcd_rows.push(ours_m);
    }
    println!("### etcd (one member on loopback), median of {ROUNDS} rounds\n");
    print_rows(&mut etcd_rows);
    println!();
    for (c, pct) in ratios {
        println!("concurrency {c}: EtcdRegistry at {pct:.1}% of the raw client's throughput");
    }

    let mut mem_rows = Vec::new();
    let mem: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let dir = tempfile::tempdir().context("tempdir")?;
    let persisted: Arc<dyn Registry> = Arc::new(
        MemoryRegistry::with_options(MemoryRegistryOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
        .context("open persisted MemoryRegistry")?,
    );
    for (i, &c) in CONCURRENCY.iter().enumerate() {
        let run = format!("m{i}");
        mem_rows.push(bench_trait("MemoryRegistry (in memory)", mem.clone(), &run, c, dur).await?);
        mem_rows.push(
            bench_trait(
                "MemoryRegistry (persisted, fsync)",
                persisted.clone(),
                &run,
                c,
                dur,
            )
            .await?,
        );
    }
    println!("\n### embedded registry\n");
    print_rows(&mut mem_rows);

    let reg = EtcdRegistry::connect(EtcdOptions::new(etcd.endpoints(), "/bench-lease")).await?;
    let mut expiries = Vec::new();
    for _ in 0..3 {
        expiries.push(lease_expiry(&reg).await?);
    }
    println!(
        "\nleased key removed after its keep-alives stopped (TTL 2 s), 3 runs: {}",
        expiries
            .iter()
            .map(|d| format!("{} ms", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
