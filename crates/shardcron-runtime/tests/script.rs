//! The `script` job kind: what a script sees, what is kept of its output, how it
//! fails, which commands may run, and that none of its processes outlives the run.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Backend, Env, config, create_job, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardcron_core::job::{JobKind, JobName, JobSpec};
use shardcron_core::{ExecutionSource, ExecutionStatus, Schedule, ShardingContext};
use shardcron_runtime::script::{
    ALLOW_ENV, OUTPUT_DRAIN, check_allowed, child_environment, parse_allow_env,
};
use shardcron_runtime::{
    Handlers, Instance, JobContext, JobError, MemoryHistory, Runner, SchedulerOptions, ScriptJob,
    ScriptOptions, SimpleJob,
};
use shardcron_store::HistoryEvent;
use shardcron_testkit::write_script;
use tempfile::TempDir;
use tokio::sync::watch;

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

fn sharding() -> ShardingContext {
    ShardingContext {
        job: "nightly".into(),
        item: 2,
        total: 4,
        item_param: "eu west".into(),
        param: "batch=500 $HOME".into(),
        fire_time: DateTime::parse_from_rfc3339("2026-03-01T10:00:05Z")
            .expect("time")
            .with_timezone(&Utc),
        execution_id: "exec-1".into(),
        instance: "inst-a".into(),
        token: 4242,
        source: ExecutionSource::Failover,
        attempt: 2,
    }
}

/// A context for one run of `command`, and its cancel switch.
fn context(command: Vec<String>) -> (JobContext, watch::Sender<bool>) {
    let spec = JobSpec::new(
        JobName::new("nightly").expect("name"),
        Schedule::Every(Duration::from_secs(60)),
        JobKind::Script { command },
    );
    let (tx, rx) = watch::channel(false);
    (JobContext::new(sharding(), Arc::new(spec), rx), tx)
}

fn job(allow: &Path) -> ScriptJob {
    ScriptJob::new(ScriptOptions::new(vec![allow.to_path_buf()]))
}

/// `/proc/<pid>/environ` or `/proc/self/environ`-style content as a map.
fn parse_environ(bytes: &[u8]) -> BTreeMap<OsString, OsString> {
    bytes
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=').unwrap_or(kv.len());
            let v = kv.get(eq + 1..).unwrap_or_default();
            (
                OsString::from_vec(kv[..eq].to_vec()),
                OsString::from_vec(v.to_vec()),
            )
        })
        .collect()
}

use shardcron_testkit::process_is_dead as is_dead;

async fn dies_within(pid: i32, bound: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    is_dead(pid)
}

/// Wait until a script has written a pid to `path` (written to a temporary name
/// and renamed, so it is complete when it appears).
async fn pid_in(path: &Path) -> i32 {
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILLs processes a failed test may have left behind.
struct Cleanup(Vec<i32>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in &self.0 {
            if !is_dead(*pid) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// Shell lines that start a grandchild that ignores SIGTERM and record its pid and
/// the script's own in `$1/gc` and `$1/pid`.
const START_GRANDCHILD: &str = r#"
(trap '' TERM; exec sleep 1000) &
echo $! > "$1/gc.tmp"; mv "$1/gc.tmp" "$1/gc"
echo $$ > "$1/pid.tmp"; mv "$1/pid.tmp" "$1/pid"
"#;

#[tokio::test]
async fn script_gets_the_context_in_env_and_as_json_last_argument_without_a_shell() {
    let dir = TempDir::new().expect("tempdir");
    let out = TempDir::new().expect("tempdir");
    let path = write_script(
        dir.path(),
        "ctx.sh",
        r#"out="$1"
cp /proc/$$/environ "$out/environ"
pwd -P > "$out/pwd"
readlink /proc/$$/fd/0 > "$out/stdin"
n=0
for a in "$@"; do n=$((n+1)); printf '%s' "$a" > "$out/arg$n"; done
echo $n > "$out/argc"
printf 'hello from %s\n' "$SHARDCRON_JOB"
"#,
    );
    let literal = ["a b; echo injected", "$HOME `id` $(id)", ""];
    let mut command = vec![s(&path), s(out.path())];
    command.extend(literal.iter().map(|a| a.to_string()));
    let (ctx, _cancel) = context(command);
    let expected = ctx.sharding.clone();

    let output = job(dir.path())
        .execute(ctx)
        .await
        .expect("the script succeeds");
    assert_eq!(output.as_deref(), Some("hello from nightly\n"));

    let read = |name: &str| fs::read_to_string(out.path().join(name)).expect(name);
    assert_eq!(
        read("argc").trim(),
        "5",
        "command[1..] plus the JSON argument"
    );
    assert_eq!(read("arg1"), s(out.path()));
    for (i, a) in literal.iter().enumerate() {
        assert_eq!(&read(&format!("arg{}", i + 2)), a, "passed without a shell");
    }
    let json: serde_json::Value = serde_json::from_str(&read("arg5")).expect("JSON argument");
    assert!(json.is_object(), "{json}");
    assert_eq!(json["job"], "nightly");
    assert_eq!(json["item"], 2);
    assert_eq!(json["token"], 4242);
    assert_eq!(json["source"], "FAILOVER");
    let decoded: ShardingContext = serde_json::from_value(json).expect("a ShardingContext");
    assert_eq!(decoded, expected);

    let env = parse_environ(&fs::read(out.path().join("environ")).expect("environ"));
    let want: BTreeMap<OsString, OsString> = expected
        .env_vars()
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(want.len(), 11, "DESIGN.md section 9 lists eleven variables");
    let got: BTreeMap<OsString, OsString> = env
        .into_iter()
        .filter(|(k, _)| k.as_bytes().starts_with(b"SHARDCRON_"))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        got[&OsString::from("SHARDCRON_FIRE_TIME")],
        "2026-03-01T10:00:05Z"
    );
    assert_eq!(got[&OsString::from("SHARDCRON_ITEM_PARAM")], "eu west");

    let canonical_dir = dir.path().canonicalize().expect("canonical");
    assert_eq!(read("pwd").trim_end(), s(&canonical_dir));
    assert_eq!(read("stdin").trim_end(), "/dev/null");
}

/// Also run, as a child process, by
/// `agent_shardcron_variables_do_not_reach_scripts` with `SHARDCRON_*` variables set
/// (setting them here would need `unsafe` `std::env::set_var`).
#[tokio::test]
async fn environment_is_inherited_without_the_agents_shardcron_variables() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(dir.path(), "env.sh", "cp /proc/$$/environ \"$1/environ\"\n");
    let (ctx, _cancel) = context(vec![s(&path), s(dir.path())]);
    let context_vars: BTreeMap<OsString, OsString> = ctx
        .sharding
        .env_vars()
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    job(dir.path())
        .execute(ctx)
        .await
        .expect("the script succeeds");
    let seen = parse_environ(&fs::read(dir.path().join("environ")).expect("environ"));
    let parent: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in &parent {
        if let Some(value) = context_vars.get(k) {
            assert_eq!(
                seen.get(k),
                Some(value),
                "{k:?} is the run's, not the agent's"
            );
        } else if k.as_bytes().starts_with(b"SHARDCRON_") {
            assert_eq!(seen.get(k), None, "{k:?} of the agent reached the script");
        } else {
            assert_eq!(seen.get(k), Some(v), "{k:?} is inherited");
        }
    }
    for k in seen.keys() {
        assert!(
            parent.contains_key(k) || context_vars.contains_key(k),
            "{k:?} came from nowhere"
        );
    }
}

#[test]
fn agent_shardcron_variables_do_not_reach_scripts() {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "environment_is_inherited_without_the_agents_shardcron_variables",
            "--nocapture",
        ])
        .env("SHARDCRON_TEST_SECRET", "s3cret")
        .env("SHARDCRON_TOKEN", "agent-api-token")
        .env(ALLOW_ENV, "/nowhere")
        .env("SCRIPT_TEST_KEPT", "kept")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "the inner test ran: {stdout}");
}

#[test]
fn child_environment_drops_every_shardcron_variable_and_adds_the_context() {
    let parent = vec![
        ("PATH".into(), "/usr/bin".into()),
        ("SHARDCRON_SCRIPT_ALLOW".into(), "/opt".into()),
        ("SHARDCRON_TOKEN".into(), "secret".into()),
        ("shardcron_lower".into(), "kept".into()),
    ];
    let env: BTreeMap<OsString, OsString> =
        child_environment(parent, &sharding()).into_iter().collect();
    assert_eq!(env.get(&OsString::from("PATH")), Some(&"/usr/bin".into()));
    assert_eq!(
        env.get(&OsString::from("shardcron_lower")),
        Some(&"kept".into())
    );
    assert_eq!(env.get(&OsString::from("SHARDCRON_SCRIPT_ALLOW")), None);
    assert_eq!(
        env.get(&OsString::from("SHARDCRON_TOKEN")),
        Some(&"4242".into())
    );
    assert_eq!(env.len(), 2 + 11);
}

fn tail(full: &str, limit: usize) -> String {
    let cut = full.len() - limit;
    format!("[... {cut} earlier bytes not kept]\n{}", &full[cut..])
}

#[tokio::test]
async fn only_the_tail_of_large_output_is_kept_from_both_streams() {
    let dir = TempDir::new().expect("tempdir");
    // Far more than a pipe buffer on both streams: both must be read concurrently.
    let path = write_script(
        dir.path(),
        "loud.sh",
        r#"i=0
while [ $i -lt 20000 ]; do echo "out line $i"; echo "err line $i" >&2; i=$((i+1)); done
"#,
    );
    let (ctx, _cancel) = context(vec![s(&path)]);
    let mut opts = ScriptOptions::new(vec![dir.path().into()]);
    opts.output_limit = 1000;
    let output = ScriptJob::new(opts)
        .execute(ctx)
        .await
        .expect("succeeds")
        .expect("output");
    let full_out: String = (0..20000).map(|i| format!("out line {i}\n")).collect();
    let full_err: String = (0..20000).map(|i| format!("err line {i}\n")).collect();
    assert_eq!(
        output,
        format!(
            "{}--- stderr ---\n{}",
            tail(&full_out, 1000),
            tail(&full_err, 1000)
        )
    );
}

#[tokio::test]
async fn a_cut_in_the_middle_of_a_character_keeps_valid_text() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(dir.path(), "utf8.sh", "printf 'ééééé'\n");
    let (ctx, _cancel) = context(vec![s(&path)]);
    let mut opts = ScriptOptions::new(vec![dir.path().into()]);
    opts.output_limit = 3;
    let output = ScriptJob::new(opts).execute(ctx).await.expect("succeeds");
    assert_eq!(output.as_deref(), Some("[... 8 earlier bytes not kept]\né"));
}

#[tokio::test]
async fn a_silent_script_has_no_output() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(dir.path(), "quiet.sh", "exit 0\n");
    let (ctx, _cancel) = context(vec![s(&path)]);
    assert_eq!(job(dir.path()).execute(ctx).await, Ok(None));
}

#[tokio::test]
async fn a_failing_script_reports_its_exit_status_and_a_bounded_stderr_tail() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(
        dir.path(),
        "fail.sh",
        r#"echo "some output"
i=0
while [ $i -lt 1000 ]; do echo "problem $i" >&2; i=$((i+1)); done
exit 3
"#,
    );
    let (ctx, _cancel) = context(vec![s(&path)]);
    let mut opts = ScriptOptions::new(vec![dir.path().into()]);
    opts.output_limit = 200;
    let JobError(msg) = ScriptJob::new(opts)
        .execute(ctx)
        .await
        .expect_err("exit 3 fails");
    let full_err: String = (0..1000).map(|i| format!("problem {i}\n")).collect();
    assert_eq!(
        msg,
        format!(
            "script {:?} exited with status 3\n--- stderr ---\n{}",
            s(&path),
            tail(&full_err, 200)
        )
    );
}

#[tokio::test]
async fn a_failure_without_stderr_shows_the_stdout_tail() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(dir.path(), "fail.sh", "echo 'only stdout'\nexit 1\n");
    let (ctx, _cancel) = context(vec![s(&path)]);
    let JobError(msg) = job(dir.path()).execute(ctx).await.expect_err("fails");
    assert_eq!(
        msg,
        format!(
            "script {:?} exited with status 1\n--- stdout ---\nonly stdout\n",
            s(&path)
        )
    );
}

#[tokio::test]
async fn a_script_killed_by_a_signal_says_which() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(dir.path(), "die.sh", "echo dying >&2\nkill -KILL $$\n");
    let (ctx, _cancel) = context(vec![s(&path)]);
    let JobError(msg) = job(dir.path()).execute(ctx).await.expect_err("fails");
    assert_eq!(
        msg,
        format!(
            "script {:?} was killed by SIGKILL\n--- stderr ---\ndying\n",
            s(&path)
        )
    );
}

#[test]
fn check_allowed_accepts_executables_inside_and_returns_the_canonical_path() {
    let root = TempDir::new().expect("tempdir");
    let allow = root.path().join("jobs");
    fs::create_dir_all(allow.join("sub")).expect("mkdir");
    let direct = write_script(&allow, "a.sh", "true\n");
    let nested = write_script(&allow.join("sub"), "b.sh", "true\n");
    let link = allow.join("link.sh");
    symlink(&nested, &link).expect("symlink");
    let canonical = |p: &Path| p.canonicalize().expect("canonical");
    for (cmd, resolved) in [(&direct, &direct), (&nested, &nested), (&link, &nested)] {
        assert_eq!(
            check_allowed(&[s(cmd), "arg".into()], std::slice::from_ref(&allow)),
            Ok(canonical(resolved))
        );
    }
    // The allow-list itself may be given through a symlink.
    let alias = root.path().join("alias");
    symlink(&allow, &alias).expect("symlink");
    assert_eq!(
        check_allowed(&[s(&direct)], &[alias]),
        Ok(canonical(&direct))
    );
}

#[test]
fn check_allowed_rejections_name_the_command_and_the_settings() {
    let root = TempDir::new().expect("tempdir");
    let allow = root.path().join("jobs");
    let sibling = root.path().join("jobs-evil");
    fs::create_dir_all(&allow).expect("mkdir");
    fs::create_dir_all(&sibling).expect("mkdir");
    let evil = write_script(&sibling, "evil.sh", "true\n");
    let link = allow.join("innocent.sh");
    symlink(&evil, &link).expect("symlink");
    let plain = allow.join("plain.txt");
    fs::write(&plain, "not a program").expect("write");
    let dirs = std::slice::from_ref(&allow);
    let listed = allow.display().to_string();

    let outside = check_allowed(&["/usr/bin/rm".into(), "-rf".into()], dirs);
    assert_eq!(
        outside,
        Err(format!(
            "command \"/usr/bin/rm\" is outside the allow-listed script directories (SHARDCRON_SCRIPT_ALLOW or scripts.allow): {listed}"
        ))
    );
    let prefix = check_allowed(&[s(&evil)], dirs).expect_err("a sibling with a common prefix");
    assert!(prefix.contains("is outside the allow-listed"), "{prefix}");
    let through_link = check_allowed(&[s(&link)], dirs).expect_err("symlink pointing outside");
    assert!(
        through_link.starts_with(&format!(
            "command {:?} (resolves to {:?}) is outside the allow-listed script directories (SHARDCRON_SCRIPT_ALLOW or scripts.allow)",
            s(&link),
            s(&evil.canonicalize().expect("canonical"))
        )),
        "{through_link}"
    );
    let dotdot = check_allowed(&[format!("{}/../jobs-evil/evil.sh", s(&allow))], dirs)
        .expect_err("a .. path leading outside");
    assert!(dotdot.contains("is outside the allow-listed"), "{dotdot}");

    let relative = check_allowed(&["jobs/run.sh".into()], dirs).expect_err("relative");
    assert!(
        relative.starts_with("command \"jobs/run.sh\" is not an absolute path"),
        "{relative}"
    );
    assert!(
        relative.contains("SHARDCRON_SCRIPT_ALLOW or scripts.allow"),
        "{relative}"
    );
    let empty = check_allowed(&[], dirs).expect_err("empty");
    assert!(empty.starts_with("the script command is empty"), "{empty}");
    let none = check_allowed(&[s(&evil)], &[]).expect_err("nothing allow-listed");
    assert_eq!(
        none,
        format!(
            "command {:?} cannot run: no script directory is allow-listed (set SHARDCRON_SCRIPT_ALLOW or scripts.allow)",
            s(&evil)
        )
    );
    let missing = check_allowed(&[s(&allow.join("missing.sh"))], dirs).expect_err("missing");
    assert!(
        missing.contains("missing.sh\" cannot be run: No such file"),
        "{missing}"
    );
    let not_exec = check_allowed(&[s(&plain)], dirs).expect_err("not executable");
    assert_eq!(
        not_exec,
        format!("command {:?} is not executable", s(&plain))
    );
    let a_dir = check_allowed(&[s(&allow)], dirs).expect_err("a directory");
    assert_eq!(
        a_dir,
        format!("command {:?} is not a regular file", s(&allow))
    );
}

#[test]
fn parse_allow_env_takes_colon_separated_absolute_directories() {
    assert_eq!(
        parse_allow_env("/opt/jobs:/srv/scripts"),
        Ok(vec![
            PathBuf::from("/opt/jobs"),
            PathBuf::from("/srv/scripts")
        ])
    );
    let relative = parse_allow_env("/opt/jobs:scripts").expect_err("relative");
    assert!(
        relative
            .starts_with("SHARDCRON_SCRIPT_ALLOW entry \"scripts\" is not an absolute directory"),
        "{relative}"
    );
    for bad in ["", "/opt/jobs::/srv", "/opt/jobs:"] {
        let e = parse_allow_env(bad).expect_err(bad);
        assert!(
            e.starts_with("SHARDCRON_SCRIPT_ALLOW has an empty entry"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_command_outside_the_allow_list_is_rejected_at_run_time_without_running() {
    let allowed = TempDir::new().expect("tempdir");
    let other = TempDir::new().expect("tempdir");
    let marker = other.path().join("ran");
    let path = write_script(other.path(), "x.sh", &format!("touch {:?}\n", s(&marker)));
    let (ctx, _cancel) = context(vec![s(&path)]);
    let JobError(msg) = job(allowed.path())
        .execute(ctx)
        .await
        .expect_err("rejected");
    assert!(
        msg.contains("is outside the allow-listed script directories"),
        "{msg}"
    );
    assert!(!marker.exists(), "the script must not have run");

    let spec = JobSpec::new(
        JobName::new("h").expect("name"),
        Schedule::Manual,
        JobKind::Handler("h".into()),
    );
    let (_tx, rx) = watch::channel(false);
    let ctx = JobContext::new(sharding(), Arc::new(spec), rx);
    let JobError(msg) = job(allowed.path())
        .execute(ctx)
        .await
        .expect_err("not a script");
    assert!(msg.contains("not a script"), "{msg}");
}

#[tokio::test]
async fn cancel_terms_the_group_and_kills_what_ignores_it() {
    let dir = TempDir::new().expect("tempdir");
    let body =
        format!("trap 'echo term > \"$1/got-term\"; exit 143' TERM\n{START_GRANDCHILD}\nwait\n");
    let path = write_script(dir.path(), "long.sh", &body);
    let (ctx, cancel) = context(vec![s(&path), s(dir.path())]);
    let mut opts = ScriptOptions::new(vec![dir.path().into()]);
    opts.kill_grace = Duration::from_secs(5);
    let run = tokio::spawn(async move { ScriptJob::new(opts).execute(ctx).await });
    let pid = pid_in(&dir.path().join("pid")).await;
    let gc = pid_in(&dir.path().join("gc")).await;
    let _cleanup = Cleanup(vec![pid, gc]);
    assert!(!is_dead(pid) && !is_dead(gc), "both run before the cancel");

    let start = Instant::now();
    cancel.send(true).expect("cancel");
    let r = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends")
        .expect("no panic");
    let JobError(msg) = r.expect_err("a cancelled run fails");
    assert!(
        msg.starts_with(&format!(
            "script {:?} was cancelled; it exited with status 143",
            s(&path)
        )),
        "{msg}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the script obeyed SIGTERM: no need to wait for the grace"
    );
    assert!(dir.path().join("got-term").exists(), "SIGTERM came first");
    assert!(
        dies_within(pid, Duration::from_secs(5)).await,
        "script {pid} survived"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)).await,
        "grandchild {gc}, which ignores SIGTERM, survived"
    );
}

#[tokio::test]
async fn cancel_sigkills_a_script_that_ignores_sigterm_after_the_grace() {
    let dir = TempDir::new().expect("tempdir");
    let body = format!("trap '' TERM\n{START_GRANDCHILD}\nwhile true; do sleep 1; done\n");
    let path = write_script(dir.path(), "stubborn.sh", &body);
    let (ctx, cancel) = context(vec![s(&path), s(dir.path())]);
    let mut opts = ScriptOptions::new(vec![dir.path().into()]);
    let grace = Duration::from_millis(400);
    opts.kill_grace = grace;
    let run = tokio::spawn(async move { ScriptJob::new(opts).execute(ctx).await });
    let pid = pid_in(&dir.path().join("pid")).await;
    let gc = pid_in(&dir.path().join("gc")).await;
    let _cleanup = Cleanup(vec![pid, gc]);

    let start = Instant::now();
    cancel.send(true).expect("cancel");
    let r = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends")
        .expect("no panic");
    assert!(start.elapsed() >= grace, "SIGKILL only after the grace");
    let JobError(msg) = r.expect_err("a cancelled run fails");
    assert!(
        msg.contains("was cancelled; it was killed by SIGKILL"),
        "{msg}"
    );
    assert!(
        dies_within(pid, Duration::from_secs(5)).await,
        "script {pid} survived"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)).await,
        "grandchild {gc} survived"
    );
}

#[tokio::test]
async fn dropping_the_run_kills_its_process_group() {
    let dir = TempDir::new().expect("tempdir");
    let body = format!("trap '' TERM\n{START_GRANDCHILD}\nwhile true; do sleep 1; done\n");
    let path = write_script(dir.path(), "forever.sh", &body);
    let (ctx, cancel) = context(vec![s(&path), s(dir.path())]);
    let j = job(dir.path());
    // A boxed future (async_trait): dropping it drops the run.
    let mut run = j.execute(ctx);
    let (pid, gc) = tokio::select! {
        r = &mut run => panic!("the script ended: {r:?}"),
        pids = async {
            (pid_in(&dir.path().join("pid")).await, pid_in(&dir.path().join("gc")).await)
        } => pids,
    };
    let _cleanup = Cleanup(vec![pid, gc]);
    assert!(!is_dead(pid) && !is_dead(gc));
    // What the scheduler does at a timeout: drop the future, without a cancel.
    drop(run);
    assert!(!*cancel.borrow());
    assert!(
        dies_within(pid, Duration::from_secs(5)).await,
        "script {pid} survived"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)).await,
        "grandchild {gc} survived"
    );
}

#[tokio::test]
async fn background_leftovers_are_killed_when_the_script_exits() {
    let dir = TempDir::new().expect("tempdir");
    // The grandchild also keeps stdout open: the run must not wait for it.
    let body = format!("{START_GRANDCHILD}\necho done\n");
    let path = write_script(dir.path(), "leave.sh", &body);
    let (ctx, _cancel) = context(vec![s(&path), s(dir.path())]);
    let r = tokio::time::timeout(Duration::from_secs(20), job(dir.path()).execute(ctx))
        .await
        .expect("the run ends");
    let gc = pid_in(&dir.path().join("gc")).await;
    let _cleanup = Cleanup(vec![gc]);
    assert_eq!(r, Ok(Some("done\n".into())));
    assert!(
        dies_within(gc, Duration::from_secs(5)).await,
        "leftover {gc} survived"
    );
}

#[tokio::test]
async fn a_process_that_left_the_group_does_not_hold_the_run_open() {
    let dir = TempDir::new().expect("tempdir");
    // setsid: a new session, out of reach of the group kill, holding stdout open.
    // The script exits only once the escape is done (its pid file is written
    // after setsid).
    let path = write_script(
        dir.path(),
        "escape.sh",
        r#"setsid sh -c 'echo $$ > "$1/esc.tmp"; mv "$1/esc.tmp" "$1/esc"; exec sleep 1000' sh "$1" &
while [ ! -f "$1/esc" ]; do sleep 0.01; done
echo done
"#,
    );
    let (ctx, _cancel) = context(vec![s(&path), s(dir.path())]);
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), job(dir.path()).execute(ctx))
        .await
        .expect("the run ends although its stdout is still open");
    let esc = pid_in(&dir.path().join("esc")).await;
    let _cleanup = Cleanup(vec![esc]);
    assert_eq!(r, Ok(Some("done\n".into())));
    assert!(
        start.elapsed() >= OUTPUT_DRAIN,
        "the output was drained for a while"
    );
    assert!(
        !is_dead(esc),
        "documented limit: a process that left the group survives"
    );
}

fn runner(opts: ScriptOptions, history: Arc<MemoryHistory>) -> Runner {
    Runner {
        handlers: Handlers::new().register("script", ScriptJob::new(opts)),
        history,
        options: SchedulerOptions::default(),
    }
}

/// The final update of each execution, by item.
fn outcomes(
    h: &MemoryHistory,
) -> BTreeMap<u32, (String, ExecutionStatus, Option<String>, Option<String>)> {
    let events = h.events();
    let items: BTreeMap<String, u32> = events
        .iter()
        .filter_map(|e| match e {
            HistoryEvent::Record(r) => Some((r.id.clone(), r.item)),
            HistoryEvent::Update(_) => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for e in events {
        if let HistoryEvent::Update(u) = e
            && u.status.is_terminal()
            && let Some(item) = items.get(&u.id)
        {
            out.entry(*item)
                .or_insert((u.id.clone(), u.status, u.output.clone(), u.cause.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_job_runs_on_an_instance_and_its_output_is_recorded() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(
        dir.path(),
        "say.sh",
        "echo \"item $SHARDCRON_ITEM of $SHARDCRON_TOTAL ($SHARDCRON_SOURCE): $1\"\n",
    );
    let env = Env::new(Backend::Memory).await;
    create_job(
        &env,
        &format!(
            "[[job]]\nname = \"say\"\nevery = \"1s\"\nshards = 2\nkind = \"script\"\ncommand = [{:?}, \"hi there\"]\n",
            s(&path)
        ),
    )
    .await;
    let h = Arc::new(MemoryHistory::new());
    let inst = Instance::start_with(
        env.connect().await,
        env.clock(),
        config("a"),
        runner(ScriptOptions::new(vec![dir.path().into()]), h.clone()),
    )
    .await
    .expect("instance starts");
    eventually("both items ran", Duration::from_secs(20), || {
        outcomes(&h).len() == 2
    })
    .await;
    inst.shutdown().await.expect("shutdown");
    for (item, (_, status, output, cause)) in outcomes(&h) {
        assert_eq!(status, ExecutionStatus::Succeeded, "item {item}: {cause:?}");
        assert_eq!(
            output,
            Some(format!("item {item} of 2 (NORMAL): hi there\n")),
            "item {item}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_script_job_leaves_no_process_behind() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_script(
        dir.path(),
        "slow.sh",
        r#"trap '' TERM
(trap '' TERM; exec sleep 1000) &
echo $! > "$1/gc-$SHARDCRON_EXECUTION_ID.tmp"; mv "$1/gc-$SHARDCRON_EXECUTION_ID.tmp" "$1/gc-$SHARDCRON_EXECUTION_ID"
echo $$ > "$1/pid-$SHARDCRON_EXECUTION_ID.tmp"; mv "$1/pid-$SHARDCRON_EXECUTION_ID.tmp" "$1/pid-$SHARDCRON_EXECUTION_ID"
while true; do sleep 1; done
"#,
    );
    let env = Env::new(Backend::Memory).await;
    create_job(
        &env,
        &format!(
            "[[job]]\nname = \"slow\"\nevery = \"1s\"\ntimeout = \"1s\"\nkind = \"script\"\ncommand = [{:?}, {:?}]\n",
            s(&path),
            s(dir.path())
        ),
    )
    .await;
    let h = Arc::new(MemoryHistory::new());
    let inst = Instance::start_with(
        env.connect().await,
        env.clock(),
        config("a"),
        runner(ScriptOptions::new(vec![dir.path().into()]), h.clone()),
    )
    .await
    .expect("instance starts");
    eventually("a run timed out", Duration::from_secs(20), || {
        !outcomes(&h).is_empty()
    })
    .await;
    let (id, status, _, cause) = outcomes(&h).remove(&0).expect("item 0");
    assert_eq!(status, ExecutionStatus::TimedOut, "{cause:?}");
    let pid = pid_in(&dir.path().join(format!("pid-{id}"))).await;
    let gc = pid_in(&dir.path().join(format!("gc-{id}"))).await;
    let _cleanup = Cleanup(vec![pid, gc]);
    assert!(
        dies_within(pid, Duration::from_secs(5)).await,
        "script {pid} survived its timeout"
    );
    assert!(
        dies_within(gc, Duration::from_secs(5)).await,
        "grandchild {gc} survived its run's timeout"
    );
    inst.shutdown().await.expect("shutdown");
    // The runs started after the first one were stopped by the shutdown.
    for entry in fs::read_dir(dir.path()).expect("dir").flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("pid-") || name.starts_with("gc-")) && !name.ends_with(".tmp") {
            let p = pid_in(&entry.path()).await;
            let _cleanup = Cleanup(vec![p]);
            assert!(
                dies_within(p, Duration::from_secs(5)).await,
                "{name}: {p} survived the shutdown"
            );
        }
    }
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_does_not_start_the_script() {
    let dir = TempDir::new().expect("tempdir");
    let marker = dir.path().join("ran");
    let path = write_script(dir.path(), "x.sh", &format!("touch {:?}\n", s(&marker)));
    let (ctx, cancel) = context(vec![s(&path)]);
    cancel.send(true).expect("cancel");
    let JobError(msg) = job(dir.path()).execute(ctx).await.expect_err("cancelled");
    assert_eq!(
        msg,
        format!("script {:?} was cancelled before it started", s(&path))
    );
    assert!(!marker.exists(), "the script must not have run");
}
