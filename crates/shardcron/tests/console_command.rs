//! `shardcron console`: the console and API of an etcd namespace, served by a
//! process that is not an instance, used with the management commands while an
//! agent runs the jobs.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Node, bin, stderr, stdout};
use shardcron_testkit::{EtcdServer, wait_until, write_script};

const TOKEN: &str = "console-command-test-token";

/// The URL the console logged when it started listening.
fn console_url(node: &Node) -> Option<String> {
    const AT: &str = "url=http://127.0.0.1:";
    let log = node.log();
    let rest = &log[log.find(AT)? + AT.len()..];
    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!port.is_empty()).then(|| format!("http://127.0.0.1:{port}"))
}

/// `shardcron ARGS --server URL` with the token in the environment.
fn remote(url: &str, args: &[&str]) -> std::process::Output {
    bin()
        .args(args)
        .args(["--server", url])
        .env("SHARDCRON_TOKEN", TOKEN)
        .output()
        .expect("run shardcron")
}

fn cluster_node(kind: &str, etcd: &EtcdServer, history: &str, dir: &Path) -> Command {
    let mut c = bin();
    c.arg(kind)
        .args(["--registry", &etcd.url(), "--namespace", "console-test"])
        .args(["--history", history])
        .arg("--data")
        .arg(dir.join(format!("{kind}-data")))
        .env("SHARDCRON_ADMIN_TOKEN", TOKEN);
    c
}

#[test]
fn the_console_command_serves_a_namespace_that_an_agent_runs() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).expect("mkdir");
    write_script(&jobs, "tick.sh", "echo tick $SHARDCRON_ITEM");
    let history = format!("sqlite://{}", dir.path().join("history.db").display());

    let mut agent_cmd = cluster_node("agent", &etcd, &history, dir.path());
    agent_cmd
        .args(["--name", "worker"])
        .env("SHARDCRON_SCRIPT_ALLOW", &jobs);
    let mut agent = Node::start(agent_cmd, &dir.path().join("agent.log"));
    let mut console = Node::start(
        cluster_node("console", &etcd, &history, dir.path()),
        &dir.path().join("console.log"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || console_url(&console).is_some()),
        "the console listens: {}",
        console.log()
    );
    let url = console_url(&console).expect("url");

    // A job applied through the console's API runs on the agent.
    let file = jobs.join("jobs.toml");
    std::fs::write(
        &file,
        format!(
            "[[job]]\nname = \"tick\"\nevery = \"1s\"\nshards = 2\ncommand = [\"{}\"]\n",
            jobs.join("tick.sh").display()
        ),
    )
    .expect("job file");
    let o = remote(&url, &["job", "apply", file.to_str().expect("path")]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    assert!(
        wait_until(Duration::from_secs(30), || {
            let o = remote(
                &url,
                &[
                    "history",
                    "--job",
                    "tick",
                    "--status",
                    "SUCCEEDED",
                    "--json",
                ],
            );
            let out = stdout(&o);
            out.contains("\"item\":0") && out.contains("\"item\":1")
        }),
        "the agent runs the job and the console shows it:\nagent: {}\nconsole: {}",
        agent.log(),
        console.log()
    );

    // The console is not an instance: only the agent is listed.
    let o = remote(&url, &["instance", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let names: Vec<&str> = list["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["worker"], "{list}");

    // Without the token, nothing.
    let o = bin()
        .args([
            "job",
            "list",
            "--server",
            &url,
            "--token",
            "wrong-token-123456",
        ])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    assert!(console.terminate().success(), "{}", console.log());
    assert!(agent.terminate().success(), "{}", agent.log());
}
