//! Helpers shared by the tests that run the `shardcron` binary as a user runs it:
//! the command with a clean environment, its output, and a running node.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardcron_testkit::reap_with_this_process;

/// The binary under test, without the `SHARDCRON_*` variables of the environment
/// the tests run in: settings must come from the test.
pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shardcron"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDCRON_") {
            c.env_remove(k);
        }
    }
    // `standalone` serves the console on 127.0.0.1:8080 by default: tests run
    // side by side, so any free port unless a test binds one itself.
    c.env("SHARDCRON_BIND", "127.0.0.1:0");
    c
}

/// `shardcron standalone --config CONFIG --data DATA`, to add to.
pub(crate) fn standalone(config: &Path, data: &Path) -> Command {
    let mut c = bin();
    c.args(["standalone", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data);
    c
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert exit code 2 and a stderr message that contains every `needle`.
pub(crate) fn assert_invalid(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should contain {n:?}: {err}");
    }
}

/// A temporary directory and an empty `jobs` directory in it.
pub(crate) fn tempdir_with_jobs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).expect("mkdir");
    (dir, jobs)
}

/// A running node whose stderr goes to a file; killed with the test.
#[derive(Debug)]
pub(crate) struct Node {
    child: Child,
    log: PathBuf,
}

impl Node {
    pub(crate) fn start(mut cmd: Command, log: &Path) -> Node {
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

    /// What the node wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and its exit status once it stopped, which it must within 10 s.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(10))
    }

    /// SIGTERM, and its exit status once it stopped, which it must within `limit`.
    pub(crate) fn terminate_within(&mut self, limit: Duration) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "shardcron did not stop within {} s of SIGTERM:\n{}",
            limit.as_secs(),
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
