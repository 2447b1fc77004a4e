//! A real PostgreSQL 15 (Debian's `postgresql-15`, binaries in
//! `/usr/lib/postgresql/15/bin`) for tests: a fresh cluster in a temporary
//! directory on a free loopback port, with a generated password, killed on drop,
//! and stoppable and startable again on the same data dir and port.
//!
//! PostgreSQL refuses to run as root, so `initdb` and `postgres` run as the
//! `postgres` system user (the child process itself switches user before exec, so
//! the process we hold *is* the server and killing it kills the server).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{free_port, port_open, tail, wait_until};

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const POSTGRES_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Logged by the postmaster once it accepts connections (also after a restart).
const READY: &str = "database system is ready to accept connections";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The database and user the fixture creates.
const USER: &str = "shardcron";
const DATABASE: &str = "shardcron";

/// A running PostgreSQL server. Dropping it kills the server.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    password: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    // Kept last so the directory outlives the process while dropping.
    dir: tempfile::TempDir,
}

/// The uid and gid of a system user, for running a server as that user.
pub(crate) fn system_user(name: &str) -> Result<(u32, u32), String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(format!(
            "system user {name:?} does not exist (is the server package installed?)"
        )),
        Err(e) => Err(format!("cannot look up system user {name:?}: {e}")),
    }
}

/// A random password of letters and digits (no quoting issues in URLs or SQL).
pub(crate) fn generated_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mix in time and a counter so
    // that two fixtures in one process differ too.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let mut out = String::with_capacity(24);
    for round in 0..3u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u64(round);
        let mut v = h.finish();
        for _ in 0..8 {
            out.push(ALPHABET[(v % ALPHABET.len() as u64) as usize] as char);
            v /= ALPHABET.len() as u64;
        }
    }
    out
}

/// Give `path` to `uid:gid` (the server user must own or reach its directories).
pub(crate) fn give_to(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("chown {} to {uid}:{gid}: {e}", path.display()))
}

/// Run a short setup command as `uid:gid` to completion, failing with its output.
pub(crate) fn run_as(mut cmd: Command, uid: u32, gid: u32, what: &str) -> Result<(), String> {
    let out = cmd
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed with {}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn count_ready(log: &Path, marker: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(marker)
        .count()
}

impl PostgresServer {
    /// Start a fresh server; panics with the reason and the log's tail if it does
    /// not come up within 60 s. A port clash with another test is retried with a new
    /// port.
    pub fn start() -> PostgresServer {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start() {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("PostgreSQL did not start: {last_err}");
    }

    fn binary(name: &str) -> Result<PathBuf, String> {
        let p = Path::new(POSTGRES_BIN_DIR).join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{} not found: install Debian's postgresql-15",
                p.display()
            ))
        }
    }

    fn try_start() -> Result<PostgresServer, String> {
        let (uid, gid) = system_user("postgres")?;
        let dir = tempfile::Builder::new()
            .prefix("shardcron-pg-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        give_to(dir.path(), uid, gid)?;
        let password = generated_password();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))
            .map_err(|e| format!("write {}: {e}", pwfile.display()))?;
        give_to(&pwfile, uid, gid)?;
        let data_dir = dir.path().join("data");
        let mut initdb = Command::new(Self::binary("initdb")?);
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", USER, "-E", "UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            // Password authentication everywhere, as in production.
            .args(["--auth-host=scram-sha-256", "--auth-local=scram-sha-256"])
            .current_dir(dir.path());
        run_as(initdb, uid, gid, "initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        let mut server = PostgresServer {
            port: free_port(),
            password,
            log: dir.path().join("postgres.log"),
            data_dir,
            child: None,
            dir,
        };
        server.spawn()?;
        server.wait_ready(0)?;
        let mut createdb = Command::new(Self::binary("createdb")?);
        createdb
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
                "-U",
                USER,
            ])
            .arg(DATABASE)
            .env("PGPASSWORD", &server.password)
            .current_dir(server.dir.path());
        run_as(createdb, uid, gid, "createdb")?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let (uid, gid) = system_user("postgres")?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("clone log: {e}"))?;
        let child = Command::new(Self::binary("postgres")?)
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            // The unix socket goes into the temp dir, not /var/run/postgresql.
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .current_dir(self.dir.path())
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn postgres: {e}"))?;
        crate::reap_with_this_process(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Wait until the log shows readiness more than `before` times and the port
    /// accepts connections.
    fn wait_ready(&mut self, before: usize) -> Result<(), String> {
        let log = self.log.clone();
        let port = self.port;
        let ok = wait_until(START_TIMEOUT, || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return true; // exited: reported below
            }
            count_ready(&log, READY) > before && port_open(port)
        });
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            self.child = None;
            return Err(format!(
                "postgres exited with {status}; log tail:\n{}",
                tail(&self.log, 30)
            ));
        }
        if !ok {
            return Err(format!(
                "postgres not ready within {START_TIMEOUT:?}; log tail:\n{}",
                tail(&self.log, 30)
            ));
        }
        Ok(())
    }

    /// `postgres://shardcron:PASSWORD@127.0.0.1:PORT/shardcron`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the tests log in as (a superuser of this cluster).
    pub fn user(&self) -> &str {
        USER
    }

    /// The generated password of [`PostgresServer::user`].
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The database the fixture created for the tests.
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// The server's process id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process runs (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The temporary directory holding the data dir, the socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
            kill(pid, sig).unwrap_or_else(|e| panic!("kill -{sig} postgres: {e}"));
        }
    }

    /// Stop the server cleanly (a "fast" shutdown: clients are disconnected) and
    /// wait for it to exit. The data dir and port stay reserved for
    /// [`PostgresServer::restart`].
    pub fn stop(&mut self) {
        self.signal(Signal::SIGINT);
        if let Some(mut c) = self.child.take() {
            let exited = wait_until(STOP_TIMEOUT, || matches!(c.try_wait(), Ok(Some(_))));
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "postgres did not stop within {STOP_TIMEOUT:?}; log tail:\n{}",
                    tail(&self.log, 30)
                );
            }
        }
    }

    /// kill -9 the server (it recovers from its WAL on the next start) and reap it.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Start the server again on its data dir and port; waits until it is ready
    /// and panics with the log's tail if it does not come up.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart of postgres while it runs; stop it first"
        );
        let before = count_ready(&self.log, READY);
        let port = self.port;
        // After a kill -9 the children of the postmaster may hold the port a moment.
        wait_until(Duration::from_secs(10), || !port_open(port));
        self.spawn()
            .and_then(|()| self.wait_ready(before))
            .unwrap_or_else(|e| panic!("postgres restart failed: {e}"));
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        // SIGQUIT: immediate shutdown, the postmaster takes its backends with it
        // (a SIGKILL of the postmaster alone would orphan them for a moment).
        self.signal(Signal::SIGQUIT);
        if let Some(mut c) = self.child.take() {
            if !wait_until(Duration::from_secs(5), || {
                matches!(c.try_wait(), Ok(Some(_)))
            }) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}
