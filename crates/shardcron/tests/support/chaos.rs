//! Helpers for the fault scenarios of `faults_cluster.rs` (issue 10): agents
//! started with options the plain [`Cluster::spawn`] does not give (another
//! registry URL, e.g. through a [`shardcron_testkit::TcpProxy`]; extra
//! environment, e.g. libfaketime or an admin token; a log filter), the REST API
//! with a token, etcd's leader and revision through its HTTP endpoints, and
//! slices of the witness log and the history for checks over part of a run.

// Each test binary that declares `mod support` uses only some of these.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shardcron_testkit::EtcdServer;

use super::{Cluster, HistoryRow, Run, WitnessLog, parse_history, shardcron_bin};

/// The admin API token the agents started with [`SpawnOpts::admin`] accept.
pub(crate) const ADMIN_TOKEN: &str = "faults-cluster-admin-token";

/// libfaketime's preload library (Debian's `libfaketime`, pulled in by `faketime`).
pub(crate) const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How to start an agent beyond [`Cluster::spawn`].
#[derive(Debug, Clone, Default)]
pub(crate) struct SpawnOpts {
    /// The registry URL (default: the cluster's etcd).
    pub(crate) registry: Option<String>,
    /// Extra environment variables.
    pub(crate) env: Vec<(String, String)>,
    /// The `--log` filter (default `info`).
    pub(crate) log: Option<String>,
}

impl SpawnOpts {
    /// Accept [`ADMIN_TOKEN`] on the API.
    pub(crate) fn admin(mut self) -> Self {
        self.env
            .push(("SHARDCRON_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
        self
    }

    /// Run the agent with its wall clock shifted by `offset` (libfaketime syntax,
    /// e.g. `+5m`), the monotonic clock left alone. Only the `shardcron` process
    /// is faked: its jobs' scripts (which inherit LD_PRELOAD) read the real clock,
    /// so the witness log stays on one clock. The variables rather than the
    /// `faketime` wrapper: the wrapper forks, so its pid is not the agent's.
    pub(crate) fn faketime(mut self, offset: &str) -> Self {
        for (k, v) in [
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_ONLY_CMDS", "shardcron"),
        ] {
            self.env.push((k.into(), v.into()));
        }
        self
    }
}

/// Spawn an agent as [`Cluster::spawn`] does, with `opts`. Returns its index.
pub(crate) fn spawn_with(c: &mut Cluster, name: &str, opts: &SpawnOpts) -> usize {
    let registry = opts.registry.clone().unwrap_or_else(|| c.etcd.url());
    c.spawn_agent(
        name,
        &registry,
        opts.log.as_deref().unwrap_or("info"),
        &opts.env,
    )
}

/// Spawn with `opts` and wait (30 s) until healthy; returns the instance id. A
/// port clash is retried like [`Cluster::start`] does.
pub(crate) fn start_with(c: &mut Cluster, name: &str, opts: &SpawnOpts) -> String {
    for _ in 0..3 {
        let i = spawn_with(c, name, opts);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !c.agents[i].running() {
                break;
            }
            if let Some(h) = c.agents[i].health()
                && h.status == 200
                && let Some(id) = h.instance
            {
                c.agents[i].instance = Some(id.clone());
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "agent {name} not healthy within 30 s\n{}",
                c.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = fs::read_to_string(&c.agents[i].log).unwrap_or_default();
        assert!(
            log.contains("cannot listen"),
            "agent {name} exited before it was healthy:\n{}",
            c.diagnostics()
        );
    }
    panic!(
        "agent {name} could not find a free port\n{}",
        c.diagnostics()
    );
}

/// The API port of the running agent `name`.
pub(crate) fn api_port(c: &mut Cluster, name: &str) -> u16 {
    let i = c
        .live(name)
        .unwrap_or_else(|| panic!("agent {name} is not running"));
    c.agents[i].port
}

/// The whole log of every process of agent `name` (all its starts).
pub(crate) fn agent_logs(c: &Cluster, name: &str) -> String {
    c.agents
        .iter()
        .filter(|a| a.name == name)
        .map(|a| fs::read_to_string(&a.log).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every agent's log, concatenated, each line prefixed with the agent's name.
pub(crate) fn all_agent_logs(c: &Cluster) -> String {
    let mut s = String::new();
    for a in &c.agents {
        for l in fs::read_to_string(&a.log).unwrap_or_default().lines() {
            s.push_str(&a.name);
            s.push_str(": ");
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// One HTTP/1.1 request on 127.0.0.1:`port`: (status, body).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `/api/instances` of agent `name` (started with [`SpawnOpts::admin`]).
pub(crate) fn api_instances(c: &mut Cluster, name: &str) -> Option<Vec<serde_json::Value>> {
    let port = api_port(c, name);
    let (status, body) = http(port, "GET", "/api/instances", Some(ADMIN_TOKEN), None)?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("instances")?.as_array().cloned()
}

/// `shardcron job apply FILE` against agent `name`'s API, with [`ADMIN_TOKEN`];
/// panics unless it succeeds. Returns its stdout.
pub(crate) fn job_apply(c: &mut Cluster, name: &str, file: &Path) -> String {
    let port = api_port(c, name);
    let o = Command::new(shardcron_bin())
        .args(["job", "apply"])
        .arg(file)
        .args(["--server", &format!("http://127.0.0.1:{port}")])
        .env("SHARDCRON_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run shardcron job apply");
    assert!(
        o.status.success(),
        "shardcron job apply failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// History rows from `shardcron history --json` with extra filter arguments;
/// panics if the answer may have been cut at the 10,000-row limit.
pub(crate) fn history_where(c: &Cluster, args: &[&str]) -> Vec<HistoryRow> {
    let o = Command::new(shardcron_bin())
        .args(["history", "--history", &c.history_url])
        .args(["--json", "--limit", "10000"])
        .args(args)
        .output()
        .expect("run shardcron history");
    assert!(
        o.status.success(),
        "shardcron history {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows = parse_history(&String::from_utf8_lossy(&o.stdout))
        .unwrap_or_else(|e| panic!("bad shardcron history output: {e}"));
    assert!(rows.len() < 10_000, "history {args:?} hit the row limit");
    rows
}

/// Every history record, when there may be more than 10,000 (the history
/// command's row limit): one query per instance id in `instances` and item in
/// `0..items`, and one per status for records without an instance, merged by id.
pub(crate) fn history_all(
    c: &Cluster,
    instances: &BTreeSet<String>,
    items: u32,
) -> Vec<HistoryRow> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut add = |rows: Vec<HistoryRow>| {
        for r in rows {
            if seen.insert(r.id.clone()) {
                out.push(r);
            }
        }
    };
    for id in instances {
        for item in 0..items {
            add(history_where(
                c,
                &["--instance", id, "--item", &item.to_string()],
            ));
        }
    }
    add(history_where(c, &["--status", "SKIPPED"]));
    add(history_where(c, &["--status", "LOST"]));
    out
}

/// A copy of `log` with only the runs `keep` selects (problems kept).
pub(crate) fn log_where(log: &WitnessLog, keep: impl Fn(&Run) -> bool) -> WitnessLog {
    WitnessLog {
        runs: log.runs.iter().filter(|r| keep(r)).cloned().collect(),
        problems: log.problems.clone(),
        lines: log.lines,
    }
}

// ---------------------------------------------------------------------------
// etcd through its HTTP endpoints (no etcdctl needed)
// ---------------------------------------------------------------------------

/// The client ports of the members of `etcd`.
pub(crate) fn etcd_ports(etcd: &EtcdServer) -> Vec<u16> {
    etcd.endpoints()
        .iter()
        .map(|e| {
            e.rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| panic!("bad etcd endpoint {e}"))
        })
        .collect()
}

/// Whether the member on `port` says it is the leader (`etcd_server_is_leader 1`
/// in its /metrics); None if it does not answer.
pub(crate) fn etcd_is_leader(port: u16) -> Option<bool> {
    let (status, body) = http(port, "GET", "/metrics", None, None)?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with("etcd_server_is_leader "))
        .map(|l| l.trim_end().ends_with(" 1"))
}

/// The index of the one member that says it leads, if exactly one does among
/// those that answer, and at least `quorum` answer.
pub(crate) fn etcd_leader(etcd: &EtcdServer, quorum: usize) -> Option<usize> {
    let answers: Vec<(usize, bool)> = etcd_ports(etcd)
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| etcd_is_leader(p).map(|l| (i, l)))
        .collect();
    let leaders: Vec<usize> = answers.iter().filter(|a| a.1).map(|a| a.0).collect();
    (answers.len() >= quorum && leaders.len() == 1).then(|| leaders[0])
}

/// The store's current revision, through the member on `port` (gRPC gateway).
pub(crate) fn etcd_revision(port: u16) -> i64 {
    // A range of the key "\0" (base64 "AA=="): only the header matters.
    let (status, body) = http(
        port,
        "POST",
        "/v3/kv/range",
        None,
        Some(r#"{"key":"AA=="}"#),
    )
    .unwrap_or_else(|| panic!("etcd on port {port} did not answer a range"));
    assert_eq!(status, 200, "range: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("range JSON");
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {body}"))
}

/// Compact the store at `revision` (physically), through the member on `port`.
pub(crate) fn etcd_compact(port: u16, revision: i64) {
    let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
    let (status, answer) = http(port, "POST", "/v3/kv/compaction", None, Some(&body))
        .unwrap_or_else(|| panic!("etcd on port {port} did not answer a compaction"));
    assert_eq!(status, 200, "compaction at {revision}: {answer}");
}
