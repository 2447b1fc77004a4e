//! Runs the example application as a user would: standalone, then two processes
//! on a real etcd sharing one history, and checks what they did.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardcron_store::{ExecutionQuery, HistoryStore, MAX_PAGE};
use shardcron_testkit::{EtcdServer, reap_with_this_process};

const EXE: &str = env!("CARGO_BIN_EXE_shardcron-example");

/// One running example process; its output goes to a file.
struct App {
    child: Child,
    out: std::path::PathBuf,
}

impl App {
    fn start(args: &[&str], dir: &Path, name: &str) -> App {
        let out = dir.join(format!("{name}.out"));
        let file = std::fs::File::create(&out).expect("output file");
        let child = Command::new(EXE)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start the example");
        reap_with_this_process(child.id());
        App { child, out }
    }

    fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.out) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM, then the exit status (within 20 s).
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn rows(url: &str, job: &str) -> Vec<shardcron::core::ExecutionRecord> {
    let Ok(store) = HistoryStore::connect(url).await else {
        return Vec::new();
    };
    let page = store
        .query(&ExecutionQuery {
            job: Some(job.into()),
            limit: MAX_PAGE,
            ascending: true,
            ..Default::default()
        })
        .await
        .map(|p| p.items)
        .unwrap_or_default();
    store.close().await;
    page
}

/// Wait until `check` passes (it returns what is missing otherwise).
async fn until<F, Fut>(what: &str, apps: &[&App], timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let missing = match check().await {
            Ok(()) => return,
            Err(m) => m,
        };
        if Instant::now() > deadline {
            let outs: Vec<String> = apps.iter().map(|a| a.output()).collect();
            panic!(
                "{what}: {missing}\n--- output ---\n{}",
                outs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The `orders` fires whose two items both drained their 12 orders.
fn drained_fires(rows: &[shardcron::core::ExecutionRecord]) -> BTreeSet<String> {
    let mut per_fire: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for r in rows {
        if r.status == shardcron::core::ExecutionStatus::Succeeded
            && r.output.as_deref().is_some_and(|o| {
                o.contains("processed 12 item(s) in 3 batch(es); stopped: a fetch came back empty")
            })
        {
            per_fire
                .entry(r.fire_time.to_rfc3339())
                .or_default()
                .insert(r.item);
        }
    }
    per_fire
        .into_iter()
        .filter(|(_, items)| items.len() == 2)
        .map(|(f, _)| f)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_runs_simple_dataflow_and_listener_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = App::start(&["--data", "data"], dir.path(), "standalone");
    let url = format!("sqlite://{}", dir.path().join("data/history.db").display());

    until(
        "hello runs on its 3 items",
        &[&app],
        Duration::from_secs(30),
        || async {
            let items: BTreeSet<u32> = rows(&url, "hello")
                .await
                .iter()
                .filter(|r| {
                    r.status == shardcron::core::ExecutionStatus::Succeeded
                        && r.output.as_deref() == Some(&format!("hello from item {}", r.item))
                })
                .map(|r| r.item)
                .collect();
            if items.len() == 3 {
                Ok(())
            } else {
                Err(format!("items seen: {items:?}"))
            }
        },
    )
    .await;
    until(
        "orders drains both items in one streaming run each",
        &[&app],
        Duration::from_secs(40),
        || async {
            let fires = drained_fires(&rows(&url, "orders").await);
            if fires.is_empty() {
                Err("no fire drained yet".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    until(
        "the after_all listener reports a complete fire",
        &[&app],
        Duration::from_secs(20),
        || async {
            if app.output().contains("summary: job orders")
                && app.output().contains("complete=true")
            {
                Ok(())
            } else {
                Err("no summary line".into())
            }
        },
    )
    .await;
    let out = app.output();
    assert!(out.contains("audit: starting hello item"), "{out}");
    assert!(out.contains("ended SUCCEEDED"), "{out}");
    let status = app.stop();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_etcd_share_the_items_and_report_each_fire_once() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("history.db").display());
    let args = |name: &'static str, data: &'static str| {
        vec![
            "--etcd".to_owned(),
            etcd.url(),
            "--namespace".to_owned(),
            "example".to_owned(),
            "--history".to_owned(),
            url.clone(),
            "--name".to_owned(),
            name.to_owned(),
            "--data".to_owned(),
            data.to_owned(),
        ]
    };
    let a_args = args("a", "data-a");
    let b_args = args("b", "data-b");
    let a = App::start(
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
        "a",
    );
    let b = App::start(
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
        "b",
    );

    until(
        "hello fires run on both instances",
        &[&a, &b],
        Duration::from_secs(40),
        || async {
            let rows = rows(&url, "hello").await;
            let hosts: BTreeSet<String> = rows
                .iter()
                .filter(|r| r.status == shardcron::core::ExecutionStatus::Succeeded)
                .map(|r| r.instance.split('-').next().unwrap_or_default().to_owned())
                .collect();
            let mut per_fire: BTreeMap<String, usize> = BTreeMap::new();
            for r in &rows {
                *per_fire.entry(r.fire_time.to_rfc3339()).or_default() += 1;
            }
            if hosts.len() >= 2 && per_fire.values().filter(|n| **n == 3).count() >= 2 {
                Ok(())
            } else {
                Err(format!("instances {hosts:?}, rows per fire {per_fire:?}"))
            }
        },
    )
    .await;
    until(
        "orders fires drain both items",
        &[&a, &b],
        Duration::from_secs(40),
        || async {
            if drained_fires(&rows(&url, "orders").await).len() >= 2 {
                Ok(())
            } else {
                Err("fewer than 2 drained fires".into())
            }
        },
    )
    .await;
    // Let the last listener calls land, then stop both.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (out_a, out_b) = (a.output(), b.output());
    assert!(a.stop().success());
    assert!(b.stop().success());

    // Every hello fire ran each item exactly once, across both instances.
    let mut seen: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for r in rows(&url, "hello").await {
        *seen.entry((r.fire_time.to_rfc3339(), r.item)).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a hello item ran twice: {seen:?}"
    );

    // The after_all summary of each drained fire is printed once in all.
    let summaries: Vec<&str> = out_a
        .lines()
        .chain(out_b.lines())
        .filter(|l| l.starts_with("summary: job orders"))
        .collect();
    let mut per_fire: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &summaries {
        let fire = l
            .split(" fire ")
            .nth(1)
            .and_then(|r| r.split(" complete").next());
        *per_fire.entry(fire.unwrap_or_default()).or_default() += 1;
    }
    assert!(!per_fire.is_empty(), "no summary:\n{out_a}\n---\n{out_b}");
    assert!(
        per_fire.values().all(|n| *n == 1),
        "a fire was reported twice: {per_fire:?}"
    );
}
