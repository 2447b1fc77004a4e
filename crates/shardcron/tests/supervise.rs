//! `shardcron __supervise`, the lifeline supervisor of script runs: it passes the
//! command's status and output through, forwards SIGTERM to the run's process
//! group, and kills the group when its stdin (the lifeline held by the agent)
//! closes, including when the agent is killed with SIGKILL.

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcron_core::job::{JobKind, JobName, JobSpec};
use shardcron_core::{ExecutionSource, Schedule, ShardingContext};
use shardcron_runtime::script::{ScriptJob, ScriptOptions, Supervisor};
use shardcron_runtime::{JobContext, JobError, SimpleJob};
use shardcron_testkit::write_script;
use tempfile::TempDir;
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_shardcron");

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

use shardcron_testkit::process_is_dead as is_dead;

fn dies_within(pid: i32, bound: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if is_dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    is_dead(pid)
}

/// Wait until a script has written a pid to `path` (written to a temporary name
/// and renamed, so it is complete when it appears).
fn pid_in(path: &Path) -> i32 {
    let start = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            return text.trim().parse().expect("a pid");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} was not written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (asynchronously: the run is polled meanwhile) until a script has written
/// these files.
async fn files_appear(dir: &Path, names: &[&str]) {
    let start = Instant::now();
    while !names.iter().all(|n| dir.join(n).exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{names:?} were not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -s {sig} {pid}");
}

/// SIGKILLs processes a failed test may have left behind.
struct Cleanup(Vec<i32>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in &self.0 {
            if !is_dead(*pid) {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Shell lines that start a grandchild that ignores SIGTERM and record its pid,
/// the script's and its parent's (the supervisor) in `$1/gc`, `$1/pid`, `$1/ppid`.
const START_GRANDCHILD: &str = r#"
(trap '' TERM; exec sleep 1000) &
echo $! > "$1/gc.tmp"; mv "$1/gc.tmp" "$1/gc"
echo $PPID > "$1/ppid.tmp"; mv "$1/ppid.tmp" "$1/ppid"
echo $$ > "$1/pid.tmp"; mv "$1/pid.tmp" "$1/pid"
"#;

/// `shardcron __supervise -- <command...>` in its own process group, with a piped
/// stdin (the lifeline) as the agent starts it.
fn supervise(command: &[String], stdout: Stdio) -> Child {
    Command::new(BIN)
        .arg("__supervise")
        .arg("--")
        .args(command)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the supervisor")
}

#[test]
fn the_supervisor_passes_arguments_output_and_exit_status_through() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(
        dir.path(),
        "say.sh",
        "for a in \"$@\"; do echo \"arg:$a\"; done\necho oops >&2\nexit 7\n",
    );
    let mut child = supervise(
        &[s(&path), "a b".into(), "$HOME".into(), "--".into()],
        Stdio::piped(),
    );
    // Held while waiting: `wait*` would close it, and a closed lifeline kills.
    let lifeline = child.stdin.take();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "arg:a b\narg:$HOME\narg:--\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    let killed = write_script(dir.path(), "die.sh", "kill -s KILL $$\n");
    let mut child = supervise(&[s(&killed)], Stdio::piped());
    let lifeline2 = child.stdin.take();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(128 + 9), "128 + SIGKILL");
    drop((lifeline, lifeline2));
}

#[test]
fn the_supervisor_rejects_bad_usage_and_missing_commands() {
    let out = Command::new(BIN)
        .args(["__supervise", "/bin/true"])
        .stdin(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected `--` before the command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["__supervise", "--", "/nonexistent/run.sh"])
        .stdin(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot run \"/nonexistent/run.sh\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn closing_the_lifeline_kills_the_command_and_its_grandchildren() {
    let dir = TempDir::new().expect("tempdir");
    let body = format!("trap '' TERM\n{START_GRANDCHILD}\nwhile true; do sleep 1; done\n");
    let path = write_script(dir.path(), "forever.sh", &body);
    let mut sup = supervise(&[s(&path), s(dir.path())], Stdio::null());
    let pid = pid_in(&dir.path().join("pid"));
    let gc = pid_in(&dir.path().join("gc"));
    let _cleanup = Cleanup(vec![pid, gc, sup.id() as i32]);
    assert_eq!(pid_in(&dir.path().join("ppid")), sup.id() as i32);
    assert!(!is_dead(pid) && !is_dead(gc));

    drop(sup.stdin.take());
    let status = sup.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(9),
        "the supervisor killed its own group"
    );
    assert!(
        dies_within(pid, Duration::from_secs(5)),
        "script {pid} survived"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)),
        "grandchild {gc} survived"
    );
}

#[test]
fn sigterm_to_the_supervisor_reaches_the_whole_group() {
    let dir = TempDir::new().expect("tempdir");
    // The grandchild does not ignore SIGTERM here: it dies only if the signal is
    // forwarded to the group (after the script's exit, nothing else kills it).
    let path = write_script(
        dir.path(),
        "term.sh",
        r#"trap 'echo term > "$1/got-term"; exit 143' TERM
sleep 1000 &
echo $! > "$1/gc.tmp"; mv "$1/gc.tmp" "$1/gc"
echo $$ > "$1/pid.tmp"; mv "$1/pid.tmp" "$1/pid"
wait
"#,
    );
    let mut sup = supervise(&[s(&path), s(dir.path())], Stdio::null());
    let pid = pid_in(&dir.path().join("pid"));
    let gc = pid_in(&dir.path().join("gc"));
    let _cleanup = Cleanup(vec![pid, gc, sup.id() as i32]);

    let lifeline = sup.stdin.take();
    signal(sup.id() as i32, "TERM");
    let status = sup.wait().expect("wait");
    drop(lifeline);
    assert_eq!(status.code(), Some(143), "the script's own exit status");
    assert!(dir.path().join("got-term").exists());
    assert!(
        dies_within(gc, Duration::from_secs(5)),
        "grandchild {gc} got no SIGTERM"
    );
}

#[test]
fn a_holder_of_the_lifeline_killed_with_sigkill_leaves_no_run_behind() {
    let dir = TempDir::new().expect("tempdir");
    let body = format!("trap '' TERM\n{START_GRANDCHILD}\nwhile true; do sleep 1; done\n");
    let path = write_script(dir.path(), "forever.sh", &body);
    // An intermediate shell holds the only write end of a FIFO that is the
    // supervisor's stdin, as the agent holds the lifeline pipe. The supervisor is
    // started as a plain background job, in the shell's process group: it must
    // make its own group and not kill the shell's.
    let holder = Command::new("sh")
        .arg("-c")
        .arg(
            r#"mkfifo "$1/lifeline"
"$2" __supervise -- "$3" "$1" < "$1/lifeline" &
exec 3> "$1/lifeline"
wait"#,
        )
        .args(["sh", &s(dir.path()), BIN, &s(&path)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the holder");
    let mut holder = HolderGuard(holder);
    let pid = pid_in(&dir.path().join("pid"));
    let gc = pid_in(&dir.path().join("gc"));
    let sup = pid_in(&dir.path().join("ppid"));
    let _cleanup = Cleanup(vec![pid, gc, sup]);
    assert!(
        !is_dead(holder.0.id() as i32),
        "the supervisor spared the holder's group"
    );

    holder.0.kill().expect("SIGKILL the holder");
    let _ = holder.0.wait();
    assert!(
        dies_within(sup, Duration::from_secs(5)),
        "supervisor {sup} survived"
    );
    assert!(
        dies_within(pid, Duration::from_secs(5)),
        "script {pid} survived"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)),
        "grandchild {gc} survived"
    );
}

struct HolderGuard(Child);

impl Drop for HolderGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sharding() -> ShardingContext {
    ShardingContext {
        job: "nightly".into(),
        item: 1,
        total: 2,
        item_param: String::new(),
        param: String::new(),
        fire_time: chrono::DateTime::UNIX_EPOCH,
        execution_id: "exec-1".into(),
        instance: "inst-a".into(),
        token: 7,
        source: ExecutionSource::Normal,
        attempt: 1,
    }
}

fn context(command: Vec<String>) -> (JobContext, watch::Sender<bool>) {
    let spec = JobSpec::new(
        JobName::new("nightly").expect("name"),
        Schedule::Manual,
        JobKind::Script { command },
    );
    let (tx, rx) = watch::channel(false);
    (JobContext::new(sharding(), Arc::new(spec), rx), tx)
}

fn supervised(allow: &Path) -> ScriptJob {
    let mut opts = ScriptOptions::new(vec![allow.to_path_buf()]);
    opts.supervisor = Some(Supervisor::shardcron(BIN));
    ScriptJob::new(opts)
}

#[tokio::test]
async fn supervised_runs_report_output_and_failures_like_direct_ones() {
    let dir = TempDir::new().expect("tempdir");
    let ok = write_script(
        dir.path(),
        "ok.sh",
        "echo \"$SHARDCRON_JOB item $SHARDCRON_ITEM: $1\"\necho note >&2\n",
    );
    let (ctx, _c) = context(vec![s(&ok), "x y".into()]);
    assert_eq!(
        supervised(dir.path()).execute(ctx).await,
        Ok(Some("nightly item 1: x y\n--- stderr ---\nnote\n".into()))
    );
    let fail = write_script(dir.path(), "fail.sh", "echo bad >&2\nexit 3\n");
    let (ctx, _c) = context(vec![s(&fail)]);
    assert_eq!(
        supervised(dir.path()).execute(ctx).await,
        Err(JobError(format!(
            "script {:?} exited with status 3\n--- stderr ---\nbad\n",
            s(&fail)
        )))
    );
    let die = write_script(dir.path(), "die.sh", "kill -s KILL $$\n");
    let (ctx, _c) = context(vec![s(&die)]);
    assert_eq!(
        supervised(dir.path()).execute(ctx).await,
        Err(JobError(format!(
            "script {:?} exited with status 137 (128 + SIGKILL: killed by SIGKILL)",
            s(&die)
        )))
    );
}

#[tokio::test]
async fn a_cancelled_supervised_run_gets_one_sigterm_then_its_group_is_killed() {
    let dir = TempDir::new().expect("tempdir");
    // The trap does not exit, and the script lingers a little after the first
    // SIGTERM: a second one would be recorded too.
    let body = format!(
        "trap 'echo term >> \"$1/terms\"' TERM\n{START_GRANDCHILD}\nwait\n\
         i=0; while [ $i -lt 5 ]; do sleep 0.1; i=$((i+1)); done\nexit 143\n"
    );
    let path = write_script(dir.path(), "long.sh", &body);
    let (ctx, cancel) = context(vec![s(&path), s(dir.path())]);
    let mut opts = ScriptOptions::new(vec![dir.path().to_path_buf()]);
    opts.supervisor = Some(Supervisor::shardcron(BIN));
    opts.kill_grace = Duration::from_secs(5);
    let job = ScriptJob::new(opts);
    let run = tokio::spawn(async move { job.execute(ctx).await });
    files_appear(dir.path(), &["pid", "gc", "ppid"]).await;
    let pid = pid_in(&dir.path().join("pid"));
    let gc = pid_in(&dir.path().join("gc"));
    let sup = pid_in(&dir.path().join("ppid"));
    let _cleanup = Cleanup(vec![pid, gc, sup]);

    cancel.send(true).expect("cancel");
    let r = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends")
        .expect("no panic");
    let JobError(msg) = r.expect_err("cancelled");
    assert!(
        msg.contains("was cancelled; it exited with status 143"),
        "{msg}"
    );
    let terms = fs::read_to_string(dir.path().join("terms")).expect("SIGTERM reached the script");
    assert_eq!(
        terms, "term\n",
        "one SIGTERM, not one from the agent and one forwarded"
    );
    assert!(
        dies_within(sup, Duration::from_secs(5)),
        "supervisor {sup} survived"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)),
        "grandchild {gc} survived"
    );
}

#[tokio::test]
async fn dropping_a_supervised_run_kills_its_group() {
    let dir = TempDir::new().expect("tempdir");
    let body = format!("trap '' TERM\n{START_GRANDCHILD}\nwhile true; do sleep 1; done\n");
    let path = write_script(dir.path(), "forever.sh", &body);
    let (ctx, _cancel) = context(vec![s(&path), s(dir.path())]);
    let job = supervised(dir.path());
    let mut run = job.execute(ctx);
    tokio::select! {
        r = &mut run => panic!("the script ended: {r:?}"),
        () = files_appear(dir.path(), &["pid", "gc", "ppid"]) => {}
    }
    let pid = pid_in(&dir.path().join("pid"));
    let gc = pid_in(&dir.path().join("gc"));
    let sup = pid_in(&dir.path().join("ppid"));
    let _cleanup = Cleanup(vec![pid, gc, sup]);
    drop(run);
    assert!(
        dies_within(sup, Duration::from_secs(5)),
        "supervisor {sup} survived"
    );
    assert!(
        dies_within(pid, Duration::from_secs(5)),
        "script {pid} survived"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)),
        "grandchild {gc} survived"
    );
}

const AGENT_DIR: &str = "SUPERVISE_TEST_AGENT_DIR";

/// Also run, as a child process killed with SIGKILL, by
/// `an_agent_killed_with_sigkill_leaves_no_run_behind`: with `AGENT_DIR` set, it
/// is that agent, and runs a script that never ends.
#[tokio::test]
async fn a_supervised_run_as_the_agent_runs_it() {
    let Some(dir) = std::env::var_os(AGENT_DIR).map(PathBuf::from) else {
        let dir = TempDir::new().expect("tempdir");
        let path = write_script(dir.path(), "ok.sh", "echo fine\n");
        let (ctx, _c) = context(vec![s(&path)]);
        assert_eq!(
            supervised(dir.path()).execute(ctx).await,
            Ok(Some("fine\n".into()))
        );
        return;
    };
    let path = dir.join("forever.sh");
    let (ctx, _c) = context(vec![s(&path), s(&dir)]);
    let r = supervised(&dir).execute(ctx).await;
    panic!("the endless script ended: {r:?}");
}

#[test]
fn an_agent_killed_with_sigkill_leaves_no_run_behind() {
    let dir = TempDir::new().expect("tempdir");
    let body = format!("trap '' TERM\n{START_GRANDCHILD}\nwhile true; do sleep 1; done\n");
    write_script(dir.path(), "forever.sh", &body);
    let agent = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "a_supervised_run_as_the_agent_runs_it",
            "--nocapture",
        ])
        .env(AGENT_DIR, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let mut agent = HolderGuard(agent);
    let pid = pid_in(&dir.path().join("pid"));
    let gc = pid_in(&dir.path().join("gc"));
    let sup = pid_in(&dir.path().join("ppid"));
    let _cleanup = Cleanup(vec![pid, gc, sup]);
    assert!(!is_dead(sup) && !is_dead(pid) && !is_dead(gc));

    agent.0.kill().expect("kill -9 the agent");
    let _ = agent.0.wait();
    assert!(
        dies_within(sup, Duration::from_secs(5)),
        "supervisor {sup} survived the agent"
    );
    assert!(
        dies_within(pid, Duration::from_secs(5)),
        "script {pid} survived the agent"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)),
        "grandchild {gc} survived the agent"
    );
}
