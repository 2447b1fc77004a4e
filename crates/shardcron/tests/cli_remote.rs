//! The management commands over the REST API (`shardcron job list|get|apply|rm|
//! enable|disable|trigger`, `shardcron instance ...`, `shardcron execution
//! cancel`, `shardcron history --server`), run as a user runs them: argument
//! errors exit 2 naming the flag without any server; then every command against
//! a `shardcron standalone` serving the API with an admin token from
//! SHARDCRON_ADMIN_TOKEN. The token never shows in any output.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Node, assert_invalid, bin, standalone, stderr, stdout, tempdir_with_jobs};
use serde_json::Value;
use shardcron_core::job::JobFile;
use shardcron_testkit::{free_port, wait_until, write_script};

/// How long a node has to do what the test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// `shardcron ARGS` with no server or token in the environment.
fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run shardcron")
}

/// Commands that talk to a server, with a placeholder for an argument.
const REMOTE_COMMANDS: &[&[&str]] = &[
    &["job", "list"],
    &["job", "get", "a"],
    &["job", "rm", "a"],
    &["job", "enable", "a"],
    &["job", "disable", "a", "--items", "0"],
    &["job", "trigger", "a"],
    &["instance", "list"],
    &["instance", "enable", "n"],
    &["instance", "disable", "n"],
    &["instance", "shutdown", "x"],
    &["execution", "cancel", "x"],
];

#[test]
fn argument_errors_exit_2_naming_the_flag_without_a_server() {
    // No server, or no token, or a server that is not an http URL.
    for cmd in REMOTE_COMMANDS {
        assert_invalid(&run(cmd), &["--server (or SHARDCRON_SERVER)"]);
        let mut with_server = cmd.to_vec();
        with_server.extend(["--server", "http://127.0.0.1:1"]);
        assert_invalid(&run(&with_server), &["--token (or SHARDCRON_TOKEN)"]);
        let mut bad_server = cmd.to_vec();
        bad_server.extend(["--server", "localhost:8080", "--token", "t"]);
        assert_invalid(&run(&bad_server), &["--server", "http://"]);
    }
    // The environment variables count as the flags.
    let o = bin()
        .args(["job", "list"])
        .env("SHARDCRON_SERVER", "ftp://x")
        .env("SHARDCRON_TOKEN", "t")
        .output()
        .expect("run");
    assert_invalid(&o, &["--server (or SHARDCRON_SERVER)"]);

    let server = ["--server", "http://127.0.0.1:1", "--token", "t"];
    let with = |args: &[&str]| {
        let mut v = args.to_vec();
        v.extend(server);
        run(&v)
    };
    assert_invalid(
        &with(&["job", "trigger", "a", "--items", "0,x"]),
        &["--items"],
    );
    assert_invalid(&with(&["job", "get", "not a name"]), &["NAME"]);
    // history: one of --history and --server, filters checked before any request.
    assert_invalid(&run(&["history"]), &["--history", "--server"]);
    assert_invalid(
        &with(&["history", "--history", "sqlite:///nowhere.db"]),
        &["--history", "--server", "not both"],
    );
    assert_invalid(&with(&["history", "--by-fire-time"]), &["--by-fire-time"]);
    assert_invalid(&with(&["history", "--status", "DONE"]), &["--status"]);

    // A bad job file is reported in full before any request (the server does not
    // exist: no connection error shows).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[job]]\nname = \"broken\"\nevery = \"soon\"\nshards = 0\ncommand = [\"/bin/true\"]\n",
    )
    .expect("write");
    let o = with(&["job", "apply", file.to_str().expect("utf-8")]);
    assert_invalid(&o, &["broken", "every", "shards"]);
    assert!(!stderr(&o).contains("connect"), "{}", stderr(&o));
}

#[test]
fn an_unreachable_server_exits_1_naming_it_and_never_the_token() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let token = "do-not-print-this-token-4242";
    for cmd in REMOTE_COMMANDS.iter().chain([&["history"][..]].iter()) {
        let o = bin()
            .args(*cmd)
            .args(["--server", &url, "--token", token])
            .output()
            .expect("run");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(err.contains(&url), "{cmd:?} names the server: {err}");
        assert!(!err.contains(token) && !stdout(&o).contains(token), "{err}");
    }
    // Help shows the variable, not its value.
    let o = bin()
        .args(["job", "list", "--help"])
        .env("SHARDCRON_TOKEN", token)
        .output()
        .expect("help");
    assert!(o.status.success());
    assert!(stdout(&o).contains("SHARDCRON_TOKEN"), "{}", stdout(&o));
    assert!(!stdout(&o).contains(token), "{}", stdout(&o));
}

/// The CLI pointed at one node with one token.
struct Remote {
    url: String,
    token: String,
    /// The direct-database URL of the same node's history.
    history: String,
}

impl Remote {
    /// `shardcron ARGS` with SHARDCRON_SERVER and SHARDCRON_TOKEN set; the token
    /// must not show in its output.
    fn run(&self, args: &[&str]) -> Output {
        let o = bin()
            .args(args)
            .env("SHARDCRON_SERVER", &self.url)
            .env("SHARDCRON_TOKEN", &self.token)
            .output()
            .expect("run shardcron");
        assert!(
            !stdout(&o).contains(&self.token) && !stderr(&o).contains(&self.token),
            "{args:?} printed the token"
        );
        o
    }

    /// Run and require exit 0; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed ({:?}): {}",
            o.status.code(),
            stderr(&o)
        );
        stdout(&o)
    }

    /// Run with --json and require exit 0; the JSON answer.
    fn json(&self, args: &[&str]) -> Value {
        let mut v = args.to_vec();
        v.push("--json");
        let out = self.ok(&v);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// Run and require exit 1; stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        stderr(&o)
    }

    /// `history --server ... --json` rows.
    fn history(&self, extra: &[&str]) -> Vec<Value> {
        let mut v = vec!["history", "--json", "--limit", "1000"];
        v.extend(extra);
        self.ok(&v)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn job(&self, name: &str) -> Value {
        self.json(&["job", "get", name])
    }

    fn instances(&self) -> Vec<Value> {
        self.json(&["instance", "list"])["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Poll `cond` (a few times a second: each poll runs the binary) until `WAIT`.
fn eventually(what: &str, node: &Node, mut cond: impl FnMut() -> bool) {
    let ok = wait_until(WAIT, || {
        let held = cond();
        if !held {
            std::thread::sleep(Duration::from_millis(200));
        }
        held
    });
    assert!(ok, "{what}; node log:\n{}", node.log());
}

fn random_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("cli-test-{nanos:x}-{:x}", std::process::id())
}

fn jobs_file(dir: &Path, description: &str) -> String {
    let echo = dir.join("echo.sh");
    let sleep = dir.join("sleep.sh");
    format!(
        r#"
[[job]]
name = "alpha"
description = "{description}"
cron = "0 0 1 1 *"
shards = 2
command = ["{}"]

[[job]]
name = "sleeper"
manual = true
command = ["{}"]
"#,
        echo.display(),
        sleep.display()
    )
}

#[test]
fn every_management_command_works_against_a_standalone_node() {
    let (dir, jobs) = tempdir_with_jobs();
    write_script(&jobs, "echo.sh", r#"echo "alpha item=$SHARDCRON_ITEM""#);
    write_script(&jobs, "sleep.sh", "exec sleep 120");
    let config = jobs.join("shardcron.toml");
    std::fs::write(&config, "[settings]\nname = \"solo\"\n").expect("config");
    let data = dir.path().join("data");
    let port = free_port();
    let token = random_token();
    let mut cmd = standalone(&config, &data);
    cmd.args(["--bind", &format!("127.0.0.1:{port}")])
        .env("SHARDCRON_ADMIN_TOKEN", &token)
        .env("SHARDCRON_SCRIPT_ALLOW", &jobs);
    let node = Node::start(cmd, &dir.path().join("node.log"));
    let r = Remote {
        url: format!("http://127.0.0.1:{port}"),
        token: token.clone(),
        history: format!("sqlite://{}", data.join("history.db").display()),
    };
    eventually("the API answers job list", &node, || {
        r.run(&["job", "list"]).status.success()
    });

    // A wrong token: exit 1, a clear message, and the token not echoed.
    let wrong = "wrong-token-0123456789abcdef";
    let o = bin()
        .args(["job", "list", "--server", &r.url, "--token", wrong])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the server refused the token"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains(wrong), "{}", stderr(&o));

    // A bad job file: exit 2 with every problem, and nothing created (the good
    // job of the same file included).
    let bad = jobs.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}\n[[job]]\nname = \"broken\"\nevery = \"soon\"\nshards = 0\ncommand = [\"/bin/true\"]\n",
            jobs_file(&jobs, "first")
        ),
    )
    .expect("write");
    let o = r.run(&["job", "apply", bad.to_str().expect("utf-8")]);
    assert_invalid(&o, &["broken", "every", "shards"]);
    let listed = r.json(&["job", "list"]);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "{listed}");

    // apply: created, then unchanged, then updated where the file changed.
    let file = jobs.join("jobs.toml");
    let file_arg = file.to_str().expect("utf-8");
    std::fs::write(&file, jobs_file(&jobs, "first")).expect("write");
    let out = r.ok(&["job", "apply", file_arg]);
    assert_eq!(out, "alpha: created\nsleeper: created\n");
    let out = r.ok(&["job", "apply", file_arg]);
    assert_eq!(out, "alpha: unchanged\nsleeper: unchanged\n");
    std::fs::write(&file, jobs_file(&jobs, "second")).expect("write");
    let out = r.ok(&["job", "apply", file_arg, "--json"]);
    let results: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(results.len(), 2, "{out}");
    assert_eq!(
        (&results[0]["name"], &results[0]["result"]),
        (&"alpha".into(), &"updated".into())
    );
    assert_eq!(results[1]["result"], "unchanged", "{out}");

    // list: a table and the API's JSON.
    let table = r.ok(&["job", "list"]);
    let head = table.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "SCHEDULE",
        "SHARDS",
        "ENABLED",
        "RUNNING",
        "LAST STATUS",
        "NEXT FIRE",
    ] {
        assert!(head.contains(col), "{table}");
    }
    let alpha_line = table
        .lines()
        .find(|l| l.starts_with("alpha "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(alpha_line.contains("yes"), "{table}");
    assert!(alpha_line.contains("cron 0 0 1 1 *"), "{table}");
    assert!(alpha_line.trim_end().ends_with('Z'), "a next fire: {table}");
    assert!(table.lines().any(|l| l.starts_with("sleeper ")), "{table}");
    let mut names: Vec<String> = r.json(&["job", "list"])["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["alpha", "sleeper"]);

    // get: the job file form (it reads back), with the items and their owner.
    eventually("both items of alpha have an owner", &node, || {
        r.job("alpha")["items"].as_array().is_some_and(|items| {
            items.len() == 2 && items.iter().all(|i| i["owner_name"] == "solo")
        })
    });
    let got = r.ok(&["job", "get", "alpha"]);
    let parsed = JobFile::from_toml(&got).unwrap_or_else(|e| panic!("{e}:\n{got}"));
    assert_eq!(parsed.jobs.len(), 1, "{got}");
    assert_eq!(parsed.jobs[0].name.as_str(), "alpha");
    assert_eq!(parsed.jobs[0].shards, 2);
    assert_eq!(parsed.jobs[0].description, "second");
    assert!(got.contains("# items:") && got.contains("solo ("), "{got}");
    assert_eq!(r.job("alpha")["job"]["name"], "alpha");
    let err = r.fails(&["job", "get", "nope"]);
    assert!(err.contains("job \"nope\" not found"), "{err}");

    // trigger one item; its execution shows in history --server, which prints
    // exactly what the direct mode prints.
    let out = r.ok(&["job", "trigger", "alpha", "--items", "1"]);
    assert!(out.contains("triggered"), "{out}");
    eventually("the triggered item ran", &node, || {
        r.history(&["--job", "alpha", "--source", "MANUAL"])
            .iter()
            .any(|e| e["item"] == 1 && e["status"] == "SUCCEEDED")
    });
    for extra in [
        &[][..],
        &["--json"][..],
        &["--status", "SUCCEEDED", "--item", "1"][..],
    ] {
        let mut remote = vec!["history", "--job", "alpha"];
        remote.extend(extra);
        let mut direct = remote.clone();
        direct.extend(["--history", &r.history]);
        // Read twice in a row: equal once no run of alpha moves in between.
        let (mut a, mut b) = (String::new(), String::new());
        let same = wait_until(WAIT, || {
            let o = bin().args(&direct).output().expect("history direct");
            assert!(o.status.success(), "{}", stderr(&o));
            (a, b) = (r.ok(&remote), stdout(&o));
            a == b
        });
        assert!(same, "{extra:?}: --server printed\n{a}\nthe database\n{b}");
    }
    let table = r.ok(&["history", "--job", "alpha"]);
    assert!(table.starts_with("STARTED"), "{table}");
    assert!(table.contains("MANUAL"), "{table}");
    // An item the job does not have: invalid input naming the flag.
    assert_invalid(
        &r.run(&["job", "trigger", "alpha", "--items", "5"]),
        &["--items"],
    );

    // disable and enable the job, then one item.
    r.ok(&["job", "disable", "alpha"]);
    assert_eq!(r.job("alpha")["job"]["enabled"], false);
    let table = r.ok(&["job", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alpha ") && l.contains(" no ")),
        "{table}"
    );
    r.ok(&["job", "enable", "alpha"]);
    assert_eq!(r.job("alpha")["job"]["enabled"], true);
    let out = r.ok(&["job", "disable", "alpha", "--items", "1"]);
    assert!(out.contains("item 1: disabled"), "{out}");
    let items = r.job("alpha")["items"].clone();
    assert_eq!(
        (&items[0]["enabled"], &items[1]["enabled"]),
        (&true.into(), &false.into()),
        "{items}"
    );
    r.ok(&["job", "enable", "alpha", "--items", "1"]);
    assert_eq!(r.job("alpha")["items"][1]["enabled"], true);
    let err = r.fails(&["job", "disable", "alpha", "--items", "7"]);
    assert!(err.contains("item 7 of job \"alpha\""), "{err}");

    // instances: list, disable, enable.
    let table = r.ok(&["instance", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("solo ")), "{table}");
    let instances = r.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0]["name"], "solo");
    let id = instances[0]["id"].as_str().expect("id").to_owned();
    r.ok(&["instance", "disable", "solo"]);
    assert_eq!(r.instances()[0]["enabled"], false);
    r.ok(&["instance", "enable", "solo"]);
    assert_eq!(r.instances()[0]["enabled"], true);
    let err = r.fails(&["instance", "disable", "nobody"]);
    assert!(err.contains("not found"), "{err}");

    // cancel a running execution of the job that sleeps.
    r.ok(&["job", "trigger", "sleeper"]);
    let mut running = String::new();
    eventually("the sleeper runs", &node, || {
        match r
            .history(&["--job", "sleeper", "--status", "RUNNING"])
            .first()
        {
            Some(e) => {
                running = e["id"].as_str().unwrap_or_default().to_owned();
                true
            }
            None => false,
        }
    });
    let out = r.ok(&["execution", "cancel", &running]);
    assert!(out.contains("cancel requested"), "{out}");
    eventually("the sleeper is cancelled", &node, || {
        r.history(&["--job", "sleeper"])
            .iter()
            .any(|e| e["id"] == running.as_str() && e["status"] == "CANCELLED")
    });
    // Not running any more: refused (exit 1).
    r.fails(&["execution", "cancel", &running]);

    // rm.
    assert_eq!(r.ok(&["job", "rm", "alpha"]), "alpha: deleted\n");
    let listed = r.json(&["job", "list"]);
    let names: Vec<&str> = listed["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(names, ["sleeper"]);
    let err = r.fails(&["job", "rm", "alpha"]);
    assert!(err.contains("job \"alpha\" not found"), "{err}");

    // Last: ask the instance to stop.
    let out = r.ok(&["instance", "shutdown", &id]);
    assert!(out.contains("shutdown requested"), "{out}");
    drop(node);
}
