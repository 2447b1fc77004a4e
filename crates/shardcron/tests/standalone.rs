//! `shardcron standalone`, `shardcron agent` (settings only) and `shardcron
//! history`, run as a user runs them: a config file with script jobs, executions
//! in the history, restarts that keep jobs, /health, SIGTERM, and bad settings
//! refused with exit code 2 naming the flag or key.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{Node, assert_invalid, bin, standalone, stderr, tempdir_with_jobs};
use serde_json::Value;
use shardcron_testkit::{free_port, wait_until, write_script};

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
    let (dir, jobs) = tempdir_with_jobs();
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
    let mut cmd = standalone(&config, &data);
    cmd.args(["--bind", &format!("127.0.0.1:{port}")]);
    let mut node = Node::start(cmd, &dir.path().join("1.log"));
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
    let mut node = Node::start(cmd, &dir.path().join("2.log"));
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
    let mut node = Node::start(cmd, &dir.path().join("ok.log"));
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

/// RFC 3339 time `secs` from now, for one-off (`at`) jobs.
fn in_secs(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn time_of(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("a time: {v}"))
}

/// Retries, a timeout that kills a script's children, `max_concurrent`, and
/// before/after/after_all listeners, configured in a job file as a user would.
#[test]
fn standalone_runs_job_policies_and_listeners_from_a_job_file() {
    let (dir, jobs) = tempdir_with_jobs();
    // Fails twice, then succeeds (the count is kept next to the script).
    write_script(
        &jobs,
        "flaky.sh",
        r#"n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count
echo "attempt $SHARDCRON_ATTEMPT (run $n)"
[ $n -ge 3 ] || exit 4"#,
    );
    // Starts a grandchild that would outlive it, then hangs.
    write_script(
        &jobs,
        "slow.sh",
        "sleep 300 &\necho $! > grandchild.pid\nsleep 300",
    );
    write_script(&jobs, "busy.sh", "sleep 0.6");
    write_script(&jobs, "work.sh", "echo working on $SHARDCRON_ITEM");
    write_script(
        &jobs,
        "listen.sh",
        r#"echo "$SHARDCRON_LISTENER fire=$SHARDCRON_FIRE_TIME item=$SHARDCRON_ITEM status=$SHARDCRON_STATUS items=$SHARDCRON_ITEMS complete=$SHARDCRON_COMPLETE" >> listen.log"#,
    );
    let config = jobs.join("shardcron.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[job]]
name = "flaky"
at = "{at}"
command = ["./flaky.sh"]
retries = {{ max = 3, initial = "200ms", max_delay = "1s" }}

[[job]]
name = "slow"
at = "{at}"
command = ["./slow.sh"]
timeout = "1s"

[[job]]
name = "capped"
every = "1s"
shards = 3
max_concurrent = 1
misfire = "skip"
command = ["./busy.sh"]

[[job]]
name = "listened"
every = "2s"
shards = 2
command = ["./work.sh"]

[[job.listeners]]
on = "before"
command = ["./listen.sh"]

[[job.listeners]]
on = "after"
command = ["./listen.sh"]

[[job.listeners]]
on = "after_all"
command = ["./listen.sh"]
wait = "20s"
"#,
            // Far enough ahead that the node is up before: the first attempt
            // is an ordinary fire, not a misfire.
            at = in_secs(6)
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let mut node = Node::start(standalone(&config, &data), &dir.path().join("node.log"));
    let db = data.join("history.db");
    let listen_log = jobs.join("listen.log");
    let after_all_lines = || {
        std::fs::read_to_string(&listen_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("after_all"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(40), || db.exists()
            && history(&db, &["--job", "flaky", "--status", "SUCCEEDED"]).len()
                == 1
            && !history(&db, &["--job", "slow", "--status", "TIMED_OUT"])
                .is_empty()
            && history(&db, &["--job", "capped"]).len() >= 6
            && after_all_lines() >= 3),
        "the jobs ran: {}",
        node.log()
    );
    // Let the runs in flight finish, then stop.
    std::thread::sleep(Duration::from_secs(1));
    assert!(node.terminate().success());

    // Retries: attempts 1 and 2 failed, the third (source RETRY) succeeded, one
    // token for all three.
    let mut flaky = history(&db, &["--job", "flaky"]);
    flaky.sort_by_key(|r| r["attempt"].as_u64());
    let shape: Vec<(u64, &str, &str)> = flaky
        .iter()
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap_or(0),
                r["status"].as_str().unwrap_or(""),
                r["source"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (1, "FAILED", "NORMAL"),
            (2, "FAILED", "RETRY"),
            (3, "SUCCEEDED", "RETRY")
        ],
        "{flaky:?}"
    );
    assert!(flaky.iter().all(|r| r["token"] == flaky[0]["token"]));
    assert!(
        flaky[0]["cause"].as_str().is_some_and(|c| c.contains("4")),
        "the cause names the exit code: {}",
        flaky[0]
    );

    // Timeout: TIMED_OUT, and the script's background child is gone too.
    let slow = history(&db, &["--job", "slow"]);
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert_eq!(slow[0]["status"], "TIMED_OUT");
    let pid: i32 = std::fs::read_to_string(jobs.join("grandchild.pid"))
        .expect("grandchild pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        wait_until(Duration::from_secs(5), || {
            shardcron_testkit::process_is_dead(pid)
        }),
        "the timed-out script's child {pid} was killed"
    );

    // max_concurrent = 1: no two runs of `capped` overlap on this instance.
    let mut spans: Vec<_> = history(&db, &["--job", "capped"])
        .iter()
        .filter(|r| !r["ended_at"].is_null() && r["status"] == "SUCCEEDED")
        .map(|r| (time_of(&r["started_at"]), time_of(&r["ended_at"])))
        .collect();
    spans.sort();
    assert!(spans.len() >= 5, "{spans:?}");
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "two runs overlap: {w:?}");
    }

    // Listeners: per fire, before and after for each item, then one after_all
    // with both items' statuses, written after both `after` lines.
    let log = std::fs::read_to_string(&listen_log).expect("listener log");
    let mut fires: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for line in log.lines() {
        let fire = line
            .split(" fire=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .expect("fire");
        fires.entry(fire.to_owned()).or_default().push(line);
    }
    let mut complete_fires = 0;
    for (fire, lines) in &fires {
        let all: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("after_all"))
            .map(|(i, _)| i)
            .collect();
        assert!(all.len() <= 1, "after_all ran twice for {fire}: {lines:?}");
        let Some(&at) = all.first() else { continue };
        complete_fires += 1;
        let all_line = lines[at];
        assert!(
            all_line.contains("items=0=SUCCEEDED,1=SUCCEEDED complete=true"),
            "{all_line}"
        );
        for item in 0..2 {
            let before = lines
                .iter()
                .position(|l| l.starts_with(&format!("before fire={fire} item={item} ")))
                .unwrap_or_else(|| panic!("before for item {item} of {fire}: {lines:?}"));
            let after = lines
                .iter()
                .position(|l| {
                    l.starts_with(&format!("after fire={fire} item={item} status=SUCCEEDED"))
                })
                .unwrap_or_else(|| panic!("after for item {item} of {fire}: {lines:?}"));
            assert!(before < after && after < at, "order in {fire}: {lines:?}");
        }
    }
    assert!(complete_fires >= 3, "{log}");
}
