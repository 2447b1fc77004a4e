//! `shardcron standalone`, `shardcron agent` (settings only) and `shardcron
//! history`, run as a user runs them: a config file with script jobs, executions
//! in the history, restarts that keep jobs, /health, SIGTERM, and bad settings
//! refused with exit code 2 naming the flag or key.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use shardcron_testkit::{free_port, reap_with_this_process, wait_until};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shardcron"));
    // Settings must come from the test, not from the environment it runs in.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDCRON_") {
            c.env_remove(k);
        }
    }
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_invalid(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should contain {n:?}: {err}");
    }
}

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// A running node whose stderr goes to a file; killed with the test.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Node {
    fn start(mut cmd: Command, log: &Path) -> Node {
        let f = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start shardcron");
        reap_with_this_process(child.id());
        Node {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "shardcron did not stop within 10 s of SIGTERM:\n{}",
            self.log()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shardcron history --json` rows.
fn history(db: &Path, extra: &[&str]) -> Vec<Value> {
    let url = format!("sqlite://{}", db.display());
    let o = bin()
        .args(["history", "--history", &url, "--json", "--limit", "1000"])
        .args(extra)
        .output()
        .expect("run history");
    assert!(o.status.success(), "history failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

#[test]
fn standalone_runs_script_jobs_records_them_and_keeps_jobs_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).expect("mkdir");
    write_script(
        &jobs,
        "hello.sh",
        r#"echo "item=$SHARDCRON_ITEM param=$SHARDCRON_ITEM_PARAM token=$SHARDCRON_TOKEN fire=$SHARDCRON_FIRE_TIME"
eval "last=\${$#}"
echo "json=$last""#,
    );
    let config = jobs.join("shardcron.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            r#"
[settings]
name = "solo"

[[job]]
name = "hello"
every = "1s"
shards = 2
shard_params = "0=a,1=b"
command = ["./hello.sh"]

# Calls the node's own /health.
[[job]]
name = "self-check"
every = "1s"
http = {{ url = "http://127.0.0.1:{port}/health", accept = [200] }}
"#
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let mut cmd = bin();
    cmd.args(["standalone", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .args(["--bind", &format!("127.0.0.1:{port}")]);
    let node = Node::start(cmd, &dir.path().join("1.log"));
    assert!(
        wait_until(Duration::from_secs(20), || http_get(port, "/health")
            .is_some_and(|(c, _)| c == 200)),
        "/health answers 200: {}",
        node.log()
    );
    let (_, body) = http_get(port, "/health").expect("health");
    let health: Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(health["name"], "solo");
    assert_eq!(health["leader"], true);
    let db = data.join("history.db");
    assert!(
        wait_until(Duration::from_secs(20), || db.exists()
            && history(&db, &["--status", "SUCCEEDED"]).len() >= 4),
        "executions reach the history: {}",
        node.log()
    );
    assert!(
        node.log().contains("execution finished: job=hello"),
        "{}",
        node.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || history(
            &db,
            &["--job", "self-check"]
        )
        .iter()
        .any(|r| r["status"] == "SUCCEEDED"
            && r["output"]
                .as_str()
                .is_some_and(|o| o.contains("\"leader\":true")))),
        "an http job ran against /health and kept its answer: {}",
        node.log()
    );
    let status = node.terminate();
    assert!(status.success(), "SIGTERM stops it with exit 0: {status:?}");

    let rows = history(&db, &["--job", "hello"]);
    for r in &rows {
        assert_eq!(r["status"], "SUCCEEDED", "{r}");
        let item = r["item"].as_u64().expect("item");
        let out = r["output"].as_str().expect("output");
        let param = if item == 0 { "a" } else { "b" };
        assert!(
            out.contains(&format!("item={item} param={param} token={}", r["token"])),
            "the script saw its context: {out}"
        );
        let json = out.split("json=").nth(1).expect("json arg").trim();
        let ctx: Value = serde_json::from_str(json).expect("last argument is JSON");
        assert_eq!(ctx["item"], r["item"]);
        assert_eq!(ctx["token"], r["token"]);
    }
    let before = rows.len();

    // Restart without the config file: the job lives in the embedded registry.
    let mut cmd = bin();
    cmd.args(["standalone", "--data"])
        .arg(&data)
        .env("SHARDCRON_SCRIPT_ALLOW", &jobs);
    let node = Node::start(cmd, &dir.path().join("2.log"));
    assert!(
        wait_until(Duration::from_secs(20), || history(
            &db,
            &["--job", "hello"]
        )
        .len()
            >= before + 4),
        "the job keeps running after a restart without the file: {}",
        node.log()
    );
    assert!(node.terminate().success());
    // Table output has a header and the job's rows.
    let o = bin()
        .args([
            "history",
            "--history",
            &format!("sqlite://{}", db.display()),
        ])
        .args(["--job", "hello", "--limit", "3"])
        .output()
        .expect("history table");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(table.starts_with("STARTED"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
}

#[test]
fn bad_settings_are_refused_with_exit_2_naming_the_flag_or_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = bin();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run")
    };
    assert_invalid(
        &run(&["standalone", "--data", data, "--weight", "0"], &[]),
        &["--weight"],
    );
    assert_invalid(
        &run(&["standalone", "--data", data, "--lease-ttl", "1s"], &[]),
        &["--lease-ttl", "at least 2s"],
    );
    assert_invalid(
        &run(&["standalone", "--data", data, "--labels", "role"], &[]),
        &["--labels", "KEY=VALUE"],
    );
    assert_invalid(
        &run(
            &["standalone", "--data", data],
            &[("SHARDCRON_WEIGHT", "many")],
        ),
        &["--weight"],
    );
    assert_invalid(
        &run(&["standalone", "--data", data, "--name", "bad name!"], &[]),
        &["name"],
    );
    assert_invalid(&run(&["agent", "--data", data], &[]), &["--registry"]);
    assert_invalid(
        &run(
            &[
                "agent",
                "--data",
                data,
                "--registry",
                "etcd://x:1",
                "--namespace",
                "n",
            ],
            &[],
        ),
        &["--history"],
    );
    assert_invalid(
        &run(
            &[
                "agent",
                "--data",
                data,
                "--registry",
                "http:/nope",
                "--namespace",
                "n",
                "--history",
                "sqlite://x.db",
            ],
            &[],
        ),
        &["--registry"],
    );

    // Config file settings: the key is named, every problem is listed.
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[settings]\nweight = 0\nlease_ttl = \"1s\"\ncolour = \"red\"\n[scripts]\nallow = 3\n",
    )
    .expect("config");
    let cfg = config.to_str().expect("utf-8");
    assert_invalid(
        &run(&["standalone", "--data", data, "--config", cfg], &[]),
        &[
            "settings.weight: must be between 1 and 10000",
            "settings.lease_ttl: must be at least 2s",
            "settings.colour: unknown setting",
            "scripts.allow: expected a list of directories",
        ],
    );

    // A script outside the allow-list is refused at start, naming job, command and setting.
    let other = tempfile::tempdir().expect("tempdir");
    let outside = write_script(other.path(), "x.sh", "true");
    std::fs::write(
        &config,
        format!(
            "[[job]]\nname = \"escape\"\nevery = \"1s\"\ncommand = [\"{}\"]\n",
            outside.display()
        ),
    )
    .expect("config");
    assert_invalid(
        &run(&["standalone", "--data", data, "--config", cfg], &[]),
        &["job \"escape\"", "x.sh", "SHARDCRON_SCRIPT_ALLOW"],
    );
    // ... and allowed when its directory is allow-listed (the node then starts: stop it).
    let mut cmd = bin();
    cmd.args(["standalone", "--data", data, "--config", cfg])
        .env("SHARDCRON_SCRIPT_ALLOW", other.path());
    let node = Node::start(cmd, &dir.path().join("ok.log"));
    assert!(
        wait_until(Duration::from_secs(20), || node
            .log()
            .contains("shardcron is running")),
        "{}",
        node.log()
    );
    assert!(node.terminate().success());
    assert_invalid(
        &run(
            &["standalone", "--data", data, "--config", cfg],
            &[("SHARDCRON_SCRIPT_ALLOW", "relative/dir")],
        ),
        &["SHARDCRON_SCRIPT_ALLOW"],
    );

    // history: bad filters are usage errors; a missing database is a failure.
    let db = format!("sqlite://{}/none.db", dir.path().display());
    assert_invalid(
        &run(&["history", "--history", &db, "--status", "DONE"], &[]),
        &["--status", "DONE"],
    );
    let o = run(&["history", "--history", &db], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no history database"), "{}", stderr(&o));
    assert_invalid(
        &run(&["history", "--history", "ftp://x"], &[]),
        &["--history"],
    );
}
