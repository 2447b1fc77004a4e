//! The `script` job kind: run an allow-listed executable for one item of one fire,
//! and make sure none of its processes outlives the run.
//!
//! # What a run is
//!
//! A job `kind = "script"`, `command = ["/opt/jobs/sync.sh", "--fast"]` runs
//! `/opt/jobs/sync.sh --fast '<context JSON>'`:
//!
//! - **No shell**: the argv is passed to `execve` as is; nothing is interpolated. The
//!   program is the canonical path of `command[0]` (symlinks resolved, the path that
//!   [`check_allowed`] approved), its arguments are `command[1..]` followed by one
//!   last argument: the [`ShardingContext`] as a JSON object.
//! - **Environment**: the agent's environment minus every variable whose name starts
//!   with `SHARDCRON_` (those hold the agent's own settings and secrets), plus the
//!   context variables of [`ShardingContext::env_vars`] (`SHARDCRON_JOB`,
//!   `SHARDCRON_ITEM`, ... `SHARDCRON_ATTEMPT`, DESIGN.md section 9). See
//!   [`child_environment`].
//! - **Working directory**: the directory that contains the program (its canonical
//!   path). **stdin** is `/dev/null`.
//! - **Output**: stdout and stderr are read concurrently while the script runs, and
//!   only the last [`ScriptOptions::output_limit`] bytes of each are kept (never
//!   more in memory). When bytes were dropped, the kept part starts with a line
//!   `[... N earlier bytes not kept]` and begins at a character boundary; the text
//!   is decoded as UTF-8, lossily. The output of a run is the stdout tail, followed,
//!   when stderr is not empty, by a line `--- stderr ---` and the stderr tail.
//! - **Outcome**: exit status 0 is success, with that output (`None` when both
//!   streams were empty). Any other exit status, or death by a signal, is a
//!   [`JobError`] whose message says the status or the signal, followed by the
//!   stderr tail (or, if stderr was empty, the stdout tail), bounded as above.
//!
//! # Allow-list
//!
//! Commands run only from allow-listed directories (`SHARDCRON_SCRIPT_ALLOW`,
//! [`parse_allow_env`], or the config's `scripts.allow`): `command[0]` must be an
//! absolute path to an executable regular file whose canonical path is inside one
//! of the canonicalized directories ([`check_allowed`]). The check is done again at
//! every run, because a job may come from the API or from another agent's config.
//!
//! # Processes never outlive the run (DESIGN.md section 6)
//!
//! Every run is started in a new process group (`process_group(0)`), whose id is
//! the pid of the process the executor started (the *leader*). Everything the
//! script starts stays in that group unless it leaves it on purpose.
//!
//! - **Cancel** ([`JobContext::cancelled`]: cancel requests, shutdown, self-fencing):
//!   SIGTERM to the group, then, if the leader has not exited after
//!   [`ScriptOptions::kill_grace`], SIGKILL to the group.
//! - **The run's future is dropped** (the scheduler drops it at the job's timeout,
//!   and [`CANCEL_GRACE`] after a cancel): a guard owned by the future SIGKILLs the
//!   group in its `Drop` unless the leader has already been reaped.
//! - **The leader exits by itself**, successfully or not: the run is over, so the
//!   group is SIGKILLed too, which ends background processes the script left
//!   behind. A dedicated thread per run waits for the leader with
//!   `waitid(WNOWAIT)`, kills the group and only then reaps the leader: while the
//!   leader is an unreaped zombie its pid, hence the group id, cannot be reused, so
//!   no signal can ever reach an unrelated group.
//! - After the leader's exit, the output still in the pipes is read until EOF, for
//!   at most [`OUTPUT_DRAIN`] (a process that escaped the group may hold the pipes
//!   open forever).
//!
//! # kill -9 of the agent: the lifeline supervisor
//!
//! None of the above runs if the agent is killed with SIGKILL. Linux's
//! `PR_SET_PDEATHSIG` is not used: it reaches only the direct child, not the
//! group; it fires when the *thread* that forked the child exits, and tokio's
//! worker and blocking threads come and go, which would kill runs spuriously; and it
//! can only be set between fork and exec (`pre_exec`, which is `unsafe`, forbidden
//! in this workspace). Instead, when [`ScriptOptions::supervisor`] is set, the
//! executor starts `<program> <args...> -- <command> <args...> <json>` (the
//! `shardcron __supervise` hidden subcommand, [`supervise_main`]) as the group
//! leader, with its stdin connected to a pipe whose write end only the agent holds
//! (close-on-exec, so no other child inherits it) for as long as the run lasts.
//! The supervisor starts the real command in the same group (stdin `/dev/null`,
//! stdout and stderr inherited, so the agent captures them) and waits:
//!
//! - the command exits: the supervisor exits with its exit code, or 128 + the
//!   signal that killed it (the agent then kills the group's leftovers as above);
//! - EOF or an error on its stdin: the agent died (the kernel closes the write end
//!   of a process killed by any signal) or dropped the run: SIGKILL to the whole
//!   group, the supervisor included;
//! - SIGTERM: forwarded once to the group (the executor, when cancelling a
//!   supervised run, sends SIGTERM to the supervisor only, so every process gets
//!   exactly one; later SIGTERMs, including the echo of its own, are ignored).
//!
//! # Limits
//!
//! - A process that leaves the group (`setsid`, `setpgid`, a daemonizing double
//!   fork into a new session) escapes all of this; only a cgroup (e.g. systemd's
//!   `KillMode=control-group`) contains such processes. Its output after the
//!   leader's exit is not waited for beyond [`OUTPUT_DRAIN`].
//! - Without a supervisor (library use), a kill -9 of the agent leaves the run and
//!   its group running; the guard and the cancel path cover everything else.
//! - With a supervisor, leftovers of a command that already exited are killed by
//!   the agent right after the supervisor's exit; an agent killed in between
//!   leaves them running.
//! - Under the scheduler, a cancelled run's future is dropped after
//!   [`CANCEL_GRACE`], so a script gets at most that long between SIGTERM and
//!   SIGKILL whatever `kill_grace` says; the default `kill_grace`
//!   ([`DEFAULT_KILL_GRACE`]) is shorter, so that the executor itself completes
//!   the SIGTERM/SIGKILL sequence and reaps the script.
//!
//! [`CANCEL_GRACE`]: crate::scheduler::CANCEL_GRACE

use crate::tail::Tail;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, IsTerminal, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{Pid, getpgrp, getpid, setpgid};
use shardcron_core::ShardingContext;
use shardcron_core::job::JobKind;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::execute::{JobContext, JobError, SimpleJob, kind_name};

/// The environment variable that lists the allow-listed script directories.
pub const ALLOW_ENV: &str = "SHARDCRON_SCRIPT_ALLOW";

/// The prefix of the variables that are not passed on from the agent's environment.
pub const ENV_PREFIX: &str = "SHARDCRON_";

/// The hidden subcommand of the `shardcron` binary that runs [`supervise_main`].
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";

/// Default of [`ScriptOptions::output_limit`]: 16 KiB of each stream.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024;

/// Default of [`ScriptOptions::kill_grace`]: 150 ms, shorter than the scheduler's
/// [`CANCEL_GRACE`](crate::scheduler::CANCEL_GRACE) (200 ms), so that a cancelled
/// run is SIGKILLed and reaped by the executor before the scheduler drops it.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_millis(150);

const _: () = assert!(
    DEFAULT_KILL_GRACE.as_millis() < crate::scheduler::CANCEL_GRACE.as_millis(),
    "the default kill grace must fit in the scheduler's cancel grace"
);

/// How long the output pipes are still read after the script's process group was
/// killed: long enough for what is buffered, bounded in case a process that left
/// the group holds them open.
pub const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// Exit code of the supervisor for bad usage (DESIGN.md section 9).
const EXIT_USAGE: u8 = 2;
/// Exit code of the supervisor when the command cannot be executed (as shells do).
const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Exit code of the supervisor when the command is not found (as shells do).
const EXIT_NOT_FOUND: u8 = 127;

/// How script jobs are run on this instance.
#[derive(Debug, Clone)]
pub struct ScriptOptions {
    /// Directories whose executables may run (absolute; canonicalized when
    /// checked). Empty: no script may run.
    pub allow: Vec<PathBuf>,
    /// The lifeline supervisor that kills a run's process group when the agent
    /// dies; `None` runs the command directly (a kill -9 of the agent then leaves
    /// the run going).
    pub supervisor: Option<Supervisor>,
    /// Bytes kept of the end of each of stdout and stderr
    /// ([`DEFAULT_OUTPUT_LIMIT`]).
    pub output_limit: usize,
    /// Time between SIGTERM and SIGKILL when a run is cancelled
    /// ([`DEFAULT_KILL_GRACE`]).
    pub kill_grace: Duration,
}

impl ScriptOptions {
    /// Run commands from the `allow` directories, directly (no supervisor), with
    /// the default output limit and kill grace.
    pub fn new(allow: Vec<PathBuf>) -> Self {
        ScriptOptions {
            allow,
            supervisor: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }
}

impl Default for ScriptOptions {
    /// No allow-listed directory (every script is rejected until some are set).
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// The program that supervises a run: started as
/// `<program> <args...> -- <command> <args...> <json>`, it must behave as
/// [`supervise_main`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervisor {
    /// Path of the supervisor executable.
    pub program: PathBuf,
    /// Arguments before the `--` that precedes the command.
    pub args: Vec<OsString>,
}

impl Supervisor {
    /// The `shardcron` binary at `program`, through its hidden
    /// [`SUPERVISE_SUBCOMMAND`].
    pub fn shardcron(program: impl Into<PathBuf>) -> Self {
        Supervisor {
            program: program.into(),
            args: vec![SUPERVISE_SUBCOMMAND.into()],
        }
    }

    /// The running executable (which must be the `shardcron` binary) as supervisor.
    pub fn current_exe() -> io::Result<Self> {
        Ok(Self::shardcron(std::env::current_exe()?))
    }
}

/// Parse the value of `SHARDCRON_SCRIPT_ALLOW`: colon-separated absolute
/// directories. Empty or relative entries are errors that name the variable.
pub fn parse_allow_env(value: &str) -> Result<Vec<PathBuf>, String> {
    value
        .split(':')
        .enumerate()
        .map(|(i, entry)| {
            if entry.is_empty() {
                Err(format!(
                    "{ALLOW_ENV} has an empty entry (entry {} of {value:?}); it takes colon-separated absolute directories",
                    i + 1
                ))
            } else if !Path::new(entry).is_absolute() {
                Err(format!(
                    "{ALLOW_ENV} entry {entry:?} is not an absolute directory; it takes colon-separated absolute directories"
                ))
            } else {
                Ok(PathBuf::from(entry))
            }
        })
        .collect()
}

/// Check that `command` may run: `command[0]` is an absolute path to an existing
/// executable regular file whose canonical path (symlinks resolved) lies inside one
/// of the canonicalized `allow` directories. Returns that canonical path.
pub fn check_allowed(command: &[String], allow: &[PathBuf]) -> Result<PathBuf, String> {
    let settings = format!("{ALLOW_ENV} or scripts.allow");
    let Some(first) = command.first() else {
        return Err(
            "the script command is empty: `command` needs at least the absolute path of the program to run"
                .into(),
        );
    };
    let path = Path::new(first);
    if !path.is_absolute() {
        return Err(format!(
            "command {first:?} is not an absolute path: a script command must name its program by absolute path, inside a directory allow-listed by {settings}"
        ));
    }
    if allow.is_empty() {
        return Err(format!(
            "command {first:?} cannot run: no script directory is allow-listed (set {settings})"
        ));
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| format!("command {first:?} cannot be run: {e}"))?;
    let inside = allow.iter().any(|dir| {
        dir.canonicalize()
            .is_ok_and(|dir| canonical.starts_with(dir))
    });
    if !inside {
        let resolved = if canonical.as_path() == path {
            String::new()
        } else {
            format!(" (resolves to {:?})", canonical.display().to_string())
        };
        let dirs: Vec<String> = allow.iter().map(|d| d.display().to_string()).collect();
        return Err(format!(
            "command {first:?}{resolved} is outside the allow-listed script directories ({settings}): {}",
            dirs.join(", ")
        ));
    }
    let meta = canonical
        .metadata()
        .map_err(|e| format!("command {first:?} cannot be run: {e}"))?;
    if !meta.is_file() {
        return Err(format!("command {first:?} is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("command {first:?} is not executable"));
    }
    Ok(canonical)
}

/// The environment of a script: `parent` (the agent's environment) minus every
/// variable whose name starts with [`ENV_PREFIX`], plus the context variables of
/// [`ShardingContext::env_vars`].
pub fn child_environment(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    ctx: &ShardingContext,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = parent
        .into_iter()
        .filter(|(k, _)| !k.as_bytes().starts_with(ENV_PREFIX.as_bytes()))
        .collect();
    env.extend(
        ctx.env_vars()
            .into_iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    env
}

/// Runs `script` jobs (register it as `"script"`); see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct ScriptJob {
    options: ScriptOptions,
}

impl ScriptJob {
    /// A script executor with these options.
    pub fn new(options: ScriptOptions) -> Self {
        ScriptJob { options }
    }

    /// Its options.
    pub fn options(&self) -> &ScriptOptions {
        &self.options
    }
}

#[async_trait::async_trait]
impl SimpleJob for ScriptJob {
    async fn execute(&self, ctx: JobContext) -> Result<Option<String>, JobError> {
        let JobKind::Script { command } = &ctx.spec.kind else {
            return Err(JobError(format!(
                "job {} is of kind {:?}, not a script",
                ctx.sharding.job,
                kind_name(&ctx.spec.kind)
            )));
        };
        let json = serde_json::to_string(&ctx.sharding)
            .map_err(|e| JobError(format!("cannot encode the run's context as JSON: {e}")))?;
        self.run_command(command, &ctx, json).await
    }
}

impl ScriptJob {
    /// Run `command` (argv) as a script of `ctx`'s run: allow-list, environment
    /// (plus [`JobContext::extra_env`]), `json` as the last argument, process
    /// group, output tails, cancellation. Listeners' commands run this way too.
    pub async fn run_command(
        &self,
        command: &[String],
        ctx: &JobContext,
        json: String,
    ) -> Result<Option<String>, JobError> {
        let program = check_allowed(command, &self.options.allow).map_err(JobError)?;
        if ctx.is_cancelled() {
            return Err(JobError(format!(
                "script {:?} was cancelled before it started",
                command[0]
            )));
        }
        let opts = &self.options;
        let run = Run::start(opts, &program, &command[1..], ctx, json)?;
        run.finish(ctx, opts, &command[0]).await
    }
}

/// A process group and whether its leader has been reaped (after which its id may
/// be reused and must not be signalled any more).
#[derive(Debug)]
struct Group {
    pgid: Pid,
    reaped: Mutex<bool>,
}

impl Group {
    fn state(&self) -> MutexGuard<'_, bool> {
        self.reaped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signal every process of the group, unless the run is over.
    fn signal(&self, sig: Signal) {
        let reaped = self.state();
        if !*reaped {
            let _ = killpg(self.pgid, sig);
        }
    }

    /// Signal the leader only, unless the run is over.
    fn signal_leader(&self, sig: Signal) {
        let reaped = self.state();
        if !*reaped {
            let _ = kill(self.pgid, sig);
        }
    }
}

/// Kills the group when the run's future is dropped before the leader was reaped,
/// then closes the lifeline.
#[derive(Debug)]
struct KillOnDrop {
    group: Arc<Group>,
    _lifeline: Option<ChildStdin>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.group.signal(Signal::SIGKILL);
    }
}

/// One started run.
struct Run {
    guard: KillOnDrop,
    exit: oneshot::Receiver<io::Result<ExitStatus>>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    supervised: bool,
}

impl Run {
    fn start(
        opts: &ScriptOptions,
        program: &Path,
        args: &[String],
        ctx: &JobContext,
        json: String,
    ) -> Result<Run, JobError> {
        let mut cmd = match &opts.supervisor {
            Some(s) => {
                let mut c = Command::new(&s.program);
                c.args(&s.args).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .arg(json)
            .env_clear()
            .envs(child_environment(std::env::vars_os(), &ctx.sharding))
            .envs(ctx.extra_env().iter().map(|(k, v)| (k, v)))
            .stdin(if opts.supervisor.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = program.parent() {
            cmd.current_dir(dir);
        }

        // The reaper thread exists before the process does, so that a process is
        // never started without someone to kill its group and reap it.
        let (to_reaper, reaper_rx) = mpsc::channel::<(Arc<Group>, Child)>();
        let (exit_tx, exit) = oneshot::channel();
        std::thread::Builder::new()
            .name("shardcron-script".into())
            .spawn(move || {
                if let Ok((group, child)) = reaper_rx.recv() {
                    let _ = exit_tx.send(reap(&group, child));
                }
            })
            .map_err(|e| JobError(format!("cannot start a thread for the script: {e}")))?;

        let mut child = cmd.spawn().map_err(|e| match &opts.supervisor {
            Some(s) => JobError(format!(
                "cannot start the script supervisor {}: {e}",
                s.program.display()
            )),
            None => JobError(format!("cannot start {}: {e}", program.display())),
        })?;
        let group = Arc::new(Group {
            // A pid_t returned as u32: the conversion is exact.
            pgid: Pid::from_raw(child.id() as i32),
            reaped: Mutex::new(false),
        });
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let guard = KillOnDrop {
            group: group.clone(),
            _lifeline: child.stdin.take(),
        };
        // The reaper lives until it has the child: this cannot fail, but if it
        // did, the guard still kills the group.
        let _ = to_reaper.send((group, child));
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(JobError("the script's output pipes are missing".into()));
        };
        let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))
            .map_err(|e| JobError(format!("cannot read the script's stdout: {e}")))?;
        let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))
            .map_err(|e| JobError(format!("cannot read the script's stderr: {e}")))?;
        Ok(Run {
            guard,
            exit,
            stdout,
            stderr,
            supervised: opts.supervisor.is_some(),
        })
    }

    /// Capture the output until the leader exits (or, cancelled, is stopped), then
    /// judge the run.
    async fn finish(
        self,
        ctx: &JobContext,
        opts: &ScriptOptions,
        name: &str,
    ) -> Result<Option<String>, JobError> {
        let Run {
            guard,
            mut exit,
            stdout,
            stderr,
            supervised,
        } = self;
        let mut out = Tail::new(opts.output_limit);
        let mut err = Tail::new(opts.output_limit);
        let (status, cancelled) = {
            let reading = async {
                tokio::join!(pump(stdout, &mut out), pump(stderr, &mut err));
            };
            tokio::pin!(reading);
            let mut read_all = false;
            let mut cancelled = false;
            let status = tokio::select! {
                s = wait_exit(&mut exit, reading.as_mut(), &mut read_all) => s,
                () = ctx.cancelled() => {
                    cancelled = true;
                    if supervised {
                        guard.group.signal_leader(Signal::SIGTERM);
                    } else {
                        guard.group.signal(Signal::SIGTERM);
                    }
                    let graceful = tokio::time::timeout(
                        opts.kill_grace,
                        wait_exit(&mut exit, reading.as_mut(), &mut read_all),
                    )
                    .await;
                    match graceful {
                        Ok(s) => s,
                        Err(_) => {
                            guard.group.signal(Signal::SIGKILL);
                            wait_exit(&mut exit, reading.as_mut(), &mut read_all).await
                        }
                    }
                }
            };
            if !read_all {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, reading).await;
            }
            (status, cancelled)
        };
        drop(guard);
        let status = status.map_err(|e| JobError(format!("lost track of script {name:?}: {e}")))?;
        if status.success() && !cancelled {
            let mut text = out.text();
            if !err.is_empty() {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str("--- stderr ---\n");
                text.push_str(&err.text());
            }
            return Ok((!text.is_empty()).then_some(text));
        }
        let mut msg = if cancelled {
            format!(
                "script {name:?} was cancelled; it {}",
                describe(status, supervised)
            )
        } else {
            format!("script {name:?} {}", describe(status, supervised))
        };
        let (label, tail) = if err.is_empty() {
            ("stdout", &out)
        } else {
            ("stderr", &err)
        };
        if !tail.is_empty() {
            let _ = write!(msg, "\n--- {label} ---\n{}", tail.text());
        }
        Err(JobError(msg))
    }
}

/// Wait for the leader's exit status while reading output (the script would block
/// on a full pipe otherwise).
async fn wait_exit<F: Future<Output = ()>>(
    exit: &mut oneshot::Receiver<io::Result<ExitStatus>>,
    mut reading: Pin<&mut F>,
    read_all: &mut bool,
) -> io::Result<ExitStatus> {
    loop {
        tokio::select! {
            s = &mut *exit => {
                return s.unwrap_or_else(|_| Err(io::Error::other("the reaper thread ended without a status")));
            }
            () = reading.as_mut(), if !*read_all => *read_all = true,
        }
    }
}

/// On the reaper thread: wait until the leader has exited without reaping it, kill
/// what is left of its group while its pid (the group id) is still reserved, then
/// reap it.
fn reap(group: &Group, mut child: Child) -> io::Result<ExitStatus> {
    loop {
        match waitid(
            Id::Pid(group.pgid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Err(Errno::EINTR) => continue,
            Ok(_) => break,
            // Not waitable (should not happen: we own the child); reap below.
            Err(_) => break,
        }
    }
    let mut reaped = group.state();
    let _ = killpg(group.pgid, Signal::SIGKILL);
    let status = child.wait();
    *reaped = true;
    status
}

/// Read a stream to its end, keeping its tail.
async fn pump(mut rx: pipe::Receiver, tail: &mut Tail) {
    let mut buf = vec![0u8; 8192];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn describe(status: ExitStatus, supervised: bool) -> String {
    if let Some(code) = status.code() {
        let sig = code
            .checked_sub(128)
            .and_then(|s| Signal::try_from(s).ok())
            .filter(|_| supervised);
        match sig {
            Some(sig) => format!("exited with status {code} (128 + {sig}: killed by {sig})"),
            None => format!("exited with status {code}"),
        }
    } else if let Some(sig) = status.signal() {
        let name =
            Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.to_string());
        if supervised {
            format!("was killed by {name} (its supervisor process)")
        } else {
            format!("was killed by {name}")
        }
    } else {
        format!("ended with {status}")
    }
}

/// The `shardcron __supervise -- <command> <args...>` process (see the
/// [module docs](self)); `args` are the arguments after `__supervise`.
///
/// Runs `command` in its own process group (becoming the group's leader first if
/// it is not one already) with stdin `/dev/null` and stdout/stderr inherited, and
/// returns its exit code (128 + signal if it was killed). Its own stdin is the
/// lifeline: at EOF or a read error it SIGKILLs its whole process group, itself
/// included. The first SIGTERM it receives is forwarded to the group. Exits with 2
/// on bad usage (including a terminal as stdin, which is no lifeline), and with
/// 127 or 126 when the command is not found or cannot be executed.
pub fn supervise_main(args: Vec<OsString>) -> ExitCode {
    match supervise(args) {
        Ok(code) => ExitCode::from(code),
        Err((code, msg)) => {
            eprintln!("shardcron {SUPERVISE_SUBCOMMAND}: {msg}");
            ExitCode::from(code)
        }
    }
}

fn supervise(args: Vec<OsString>) -> Result<u8, (u8, String)> {
    let usage = |what: &str| {
        (
            EXIT_USAGE,
            format!(
                "{what}; usage: shardcron {SUPERVISE_SUBCOMMAND} -- PROGRAM [ARGS...] with a pipe as stdin"
            ),
        )
    };
    let mut args = args.into_iter();
    if args.next().is_none_or(|a| a != "--") {
        return Err(usage("expected `--` before the command"));
    }
    let program = args.next().ok_or_else(|| usage("missing the command"))?;
    let rest: Vec<OsString> = args.collect();
    if io::stdin().is_terminal() {
        return Err(usage("stdin is a terminal, not the lifeline pipe"));
    }
    // Killing "our group" must never reach whoever started us.
    if getpgrp() != getpid() {
        setpgid(Pid::from_raw(0), Pid::from_raw(0))
            .map_err(|e| (1, format!("cannot create a process group: {e}")))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start: {e}")))?;
    let code = rt.block_on(supervise_command(program, rest));
    rt.shutdown_background();
    code
}

async fn supervise_command(program: OsString, args: Vec<OsString>) -> Result<u8, (u8, String)> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before the command exists, so that SIGTERM never kills the supervisor alone.
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| (1, format!("cannot handle SIGTERM: {e}")))?;
    let mut child = tokio::process::Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| {
            let code = if e.kind() == io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            };
            (
                code,
                format!("cannot run {:?}: {e}", program.to_string_lossy()),
            )
        })?;
    std::thread::Builder::new()
        .name("lifeline".into())
        .spawn(watch_lifeline)
        .map_err(|e| {
            let _ = killpg(getpgrp(), Signal::SIGKILL);
            (1, format!("cannot watch the lifeline: {e}"))
        })?;
    let mut forwarded = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| (1, format!("cannot wait for the command: {e}")))?;
                return Ok(exit_code(status));
            }
            Some(()) = term.recv(), if !forwarded => {
                forwarded = true;
                let _ = killpg(getpgrp(), Signal::SIGTERM);
            }
        }
    }
}

/// Block on stdin until EOF or an error (the agent is gone or dropped the run),
/// then kill the whole group, the supervisor included.
fn watch_lifeline() {
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = killpg(getpgrp(), Signal::SIGKILL);
    // Not reached: SIGKILL to our own group ends this process too.
    std::process::exit(137);
}

fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
