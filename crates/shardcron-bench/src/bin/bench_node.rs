//! Benchmarks of the real `shardcron` binary (release build, next to this one in
//! the target directory): idle memory and threads of `standalone` and `agent`,
//! start to ready, start to first fire, and failover after a kill -9 of the
//! holder through a real etcd with a 5 s lease TTL.
//!
//! ```text
//! cargo build --release -p shardcron -p shardcron-bench
//! target/release/bench_node [--rounds N]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shardcron_bench::{Latencies, machine, ms};
use shardcron_testkit::{EtcdServer, free_port, reap_with_this_process};

fn shardcron_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me
        .parent()
        .context("the bench binary has no directory")?
        .join("shardcron");
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p shardcron -p shardcron-bench",
            bin.display()
        );
    }
    Ok(bin)
}

/// A node process, killed when dropped.
struct Node {
    child: Child,
}

impl Node {
    fn spawn(args: &[String], env: &[(&str, String)], log: &Path) -> Result<Node> {
        let mut cmd = Command::new(shardcron_bin()?);
        cmd.args(args)
            .env("SHARDCRON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        reap_with_this_process(child.id());
        Ok(Node { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_field(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn terminate(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("node did not stop after SIGTERM")
    }

    fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("timed out waiting for {what}")
}

/// A witness script: appends `<unix ns> <instance> <source>` to `log`, then
/// sleeps `sleep` seconds.
fn witness(dir: &Path, log: &Path, sleep: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("witness.sh");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\necho \"$(date +%s%N) $SHARDCRON_INSTANCE $SHARDCRON_SOURCE\" >> {}\nsleep {sleep}\n",
            log.display()
        ),
    )?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn witness_lines(log: &Path) -> Vec<(u128, String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.parse().ok()?,
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect()
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Idle RSS and threads of standalone (no jobs) and of an agent on etcd.
fn idle(etcd: &EtcdServer, dir: &Path) -> Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    let port = free_port();
    let data = dir.join("idle-standalone");
    let node = Node::spawn(
        &[
            "standalone".into(),
            "--data".into(),
            s(&data),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[],
        &dir.join("idle-standalone.log"),
    )?;
    wait_for("standalone health", Duration::from_secs(20), || {
        healthy(port)
    })?;
    std::thread::sleep(Duration::from_secs(5));
    out.push((
        "standalone, no jobs".into(),
        node.status_field("VmRSS:").unwrap_or(0),
        node.status_field("Threads:").unwrap_or(0),
    ));
    node.terminate()?;
    let port = free_port();
    let node = Node::spawn(
        &[
            "agent".into(),
            "--registry".into(),
            etcd.url(),
            "--namespace".into(),
            "idle".into(),
            "--history".into(),
            format!("sqlite://{}", s(&dir.join("idle-agent.db"))),
            "--data".into(),
            s(&dir.join("idle-agent")),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[],
        &dir.join("idle-agent.log"),
    )?;
    wait_for("agent health", Duration::from_secs(20), || healthy(port))?;
    std::thread::sleep(Duration::from_secs(5));
    out.push((
        "agent (etcd), no jobs".into(),
        node.status_field("VmRSS:").unwrap_or(0),
        node.status_field("Threads:").unwrap_or(0),
    ));
    node.terminate()?;
    Ok(out)
}

/// Spawn to /health 200, and spawn to the first (overdue) fire's script start.
fn start_times(dir: &Path, rounds: usize) -> Result<(Latencies, Latencies)> {
    let jobs = dir.join("start-jobs");
    std::fs::create_dir_all(&jobs)?;
    let log = dir.join("start-witness.log");
    witness(&jobs, &log, "0")?;
    let config = jobs.join("shardcron.toml");
    std::fs::write(
        &config,
        "[[job]]\nname = \"due\"\nevery = \"1s\"\ncommand = [\"./witness.sh\"]\nmisfire = \"fire_once\"\n",
    )?;
    let data = dir.join("start-data");
    // Create the job once.
    let port = free_port();
    let node = Node::spawn(
        &[
            "standalone".into(),
            "--config".into(),
            s(&config),
            "--data".into(),
            s(&data),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[],
        &dir.join("start-0.log"),
    )?;
    wait_for("a first fire", Duration::from_secs(20), || {
        !witness_lines(&log).is_empty()
    })?;
    node.terminate()?;
    let (mut ready, mut first) = (Latencies::new(), Latencies::new());
    for round in 0..rounds {
        // Down for 1.5 s: a fire is overdue when the node starts again.
        std::thread::sleep(Duration::from_millis(1500));
        let before = witness_lines(&log).len();
        let port = free_port();
        let spawned_ns = unix_ns();
        let spawned = Instant::now();
        let node = Node::spawn(
            &[
                "standalone".into(),
                "--data".into(),
                s(&data),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--script-allow".into(),
                s(&jobs),
            ],
            &[],
            &dir.join(format!("start-{}.log", round + 1)),
        )?;
        let up = wait_for("health", Duration::from_secs(20), || healthy(port))?;
        ready.push(up - spawned);
        wait_for("the overdue fire", Duration::from_secs(20), || {
            witness_lines(&log).len() > before
        })?;
        let fired_ns = witness_lines(&log)[before].0;
        first.push(Duration::from_nanos(
            u64::try_from(fired_ns.saturating_sub(spawned_ns)).unwrap_or(u64::MAX),
        ));
        node.terminate()?;
    }
    Ok((ready, first))
}

/// Kill -9 of the holder of a long run; time to the FAILOVER run's start.
fn failover(etcd: &EtcdServer, dir: &Path, rounds: usize) -> Result<Latencies> {
    let mut out = Latencies::new();
    for round in 0..rounds {
        let rdir = dir.join(format!("failover-{round}"));
        let jobs = rdir.join("jobs");
        std::fs::create_dir_all(&jobs)?;
        let log = rdir.join("witness.log");
        witness(&jobs, &log, "60")?;
        let config = jobs.join("shardcron.toml");
        std::fs::write(
            &config,
            "[[job]]\nname = \"long\"\nevery = \"1h\"\ncommand = [\"./witness.sh\"]\n",
        )?;
        let ns = format!("failover-{round}");
        let history = format!("sqlite://{}", s(&rdir.join("history.db")));
        let agent = |name: &str, port: u16| -> Result<Node> {
            Node::spawn(
                &[
                    "agent".into(),
                    "--registry".into(),
                    etcd.url(),
                    "--namespace".into(),
                    ns.clone(),
                    "--history".into(),
                    history.clone(),
                    "--config".into(),
                    s(&config),
                    "--data".into(),
                    s(&rdir.join(name)),
                    "--name".into(),
                    name.into(),
                    "--lease-ttl".into(),
                    "5s".into(),
                    "--bind".into(),
                    format!("127.0.0.1:{port}"),
                ],
                &[],
                &rdir.join(format!("{name}.log")),
            )
        };
        let (p1, p2) = (free_port(), free_port());
        let n1 = agent("n1", p1)?;
        wait_for("n1 health", Duration::from_secs(20), || healthy(p1))?;
        let n2 = agent("n2", p2)?;
        wait_for("n2 health", Duration::from_secs(20), || healthy(p2))?;
        wait_for("the first run", Duration::from_secs(20), || {
            !witness_lines(&log).is_empty()
        })?;
        let (_, holder, _) = witness_lines(&log)[0].clone();
        std::thread::sleep(Duration::from_millis(500));
        let (victim, survivor) = if holder.starts_with("n1-") {
            (n1, n2)
        } else {
            (n2, n1)
        };
        let killed_ns = unix_ns();
        victim.kill9()?;
        wait_for("the failover run", Duration::from_secs(30), || {
            witness_lines(&log).iter().any(|l| l.2 == "FAILOVER")
        })?;
        let (at, _, _) = witness_lines(&log)
            .into_iter()
            .find(|l| l.2 == "FAILOVER")
            .context("failover line")?;
        out.push(Duration::from_nanos(
            u64::try_from(at.saturating_sub(killed_ns)).unwrap_or(u64::MAX),
        ));
        // Its failover run sleeps 60 s; a graceful stop would wait for it.
        survivor.kill9()?;
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>())
        .transpose()?
        .unwrap_or(5);
    shardcron_bin()?;
    let dir = tempfile::tempdir()?;
    let etcd = EtcdServer::start();
    println!("# bench_node ({})\n", machine());
    println!("command: `target/release/bench_node --rounds {rounds}`\n");

    let idle = idle(&etcd, dir.path())?;
    println!("| idle node | RSS | threads | target |");
    println!("|---|---|---|---|");
    for (what, rss_kb, threads) in &idle {
        println!(
            "| {what} | {:.1} MB | {threads} | <= 20 MB RSS |",
            *rss_kb as f64 / 1024.0
        );
    }

    let (mut ready, mut first) = start_times(dir.path(), rounds)?;
    println!("\n| start (standalone, {rounds} restarts) | p50 | max | target |");
    println!("|---|---|---|---|");
    println!(
        "| spawn -> /health 200 | {} ms | {} ms | |",
        ms(ready.quantile(0.5)),
        ms(ready.max())
    );
    println!(
        "| spawn -> first fire (an overdue fire, its script started) | {} ms | {} ms | <= 200 ms |",
        ms(first.quantile(0.5)),
        ms(first.max())
    );

    let fo_rounds = rounds.min(3);
    let mut fo = failover(&etcd, dir.path(), fo_rounds)?;
    println!(
        "\n| failover after kill -9 of the holder (etcd, TTL 5 s, {fo_rounds} rounds) | p50 | max | target |"
    );
    println!("|---|---|---|---|");
    println!(
        "| kill -> FAILOVER run's script started | {} ms | {} ms | <= 6000 ms (TTL + 1 s) |",
        ms(fo.quantile(0.5)),
        ms(fo.max())
    );
    Ok(())
}
