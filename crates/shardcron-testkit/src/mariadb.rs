//! A real MariaDB (Debian's `mariadb-server`: `mariadb-install-db` and
//! `/usr/sbin/mariadbd`) for tests: a fresh data dir in a temporary directory, a
//! free loopback port and a unix socket in that directory, a database and a user
//! with a generated password (grant tables on, as in production), killed on drop,
//! and stoppable and startable again on the same data dir and port.
//!
//! The server runs as the `mysql` system user (the child process switches user
//! before exec, so the process we hold *is* the server).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::postgres::{generated_password, give_to, run_as, system_user};
use crate::{find_binary, free_port, port_open, tail, wait_until};

/// Logged by mariadbd once it accepts connections (again after every start).
const READY: &str = "ready for connections";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The database and user the fixture creates.
const USER: &str = "shardcron";
const DATABASE: &str = "shardcron";

/// A running MariaDB server. Dropping it kills the server.
#[derive(Debug)]
pub struct MariaDbServer {
    port: u16,
    password: String,
    data_dir: PathBuf,
    socket: PathBuf,
    init_file: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    // Kept last so the directory outlives the process while dropping.
    dir: tempfile::TempDir,
}

fn binary(name: &str) -> Result<PathBuf, String> {
    find_binary(name).ok_or_else(|| {
        format!(
            "{name} not found on PATH or in /usr/bin, /usr/sbin: install Debian's \
             mariadb-server (scripts/test.sh installs it when missing)"
        )
    })
}

fn count_ready(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(READY)
        .count()
}

impl MariaDbServer {
    /// Start a fresh server; panics with the reason and the log's tail if it does
    /// not come up within 60 s. A port clash with another test is retried with a new
    /// port.
    pub fn start() -> MariaDbServer {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start() {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("MariaDB did not start: {last_err}");
    }

    fn try_start() -> Result<MariaDbServer, String> {
        let (uid, gid) = system_user("mysql")?;
        let dir = tempfile::Builder::new()
            .prefix("shardcron-mariadb-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        give_to(dir.path(), uid, gid)?;
        let data_dir = dir.path().join("data");
        let mut install = Command::new(binary("mariadb-install-db")?);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir.display()))
            .args([
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
                // Smaller redo log: a fresh data dir is written much faster.
                "--innodb-log-file-size=16M",
            ])
            .current_dir(dir.path());
        run_as(install, uid, gid, "mariadb-install-db")?;

        // Runs at every start (idempotent): the test user with a password, with
        // rights on its database only.
        let password = generated_password();
        let init_file = dir.path().join("init.sql");
        let mut sql = format!("CREATE DATABASE IF NOT EXISTS `{DATABASE}`;\n");
        for host in ["127.0.0.1", "localhost"] {
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{USER}'@'{host}';\n"
            ));
        }
        std::fs::write(&init_file, sql)
            .map_err(|e| format!("write {}: {e}", init_file.display()))?;
        give_to(&init_file, uid, gid)?;

        let mut server = MariaDbServer {
            port: free_port(),
            password,
            socket: dir.path().join("mariadb.sock"),
            log: dir.path().join("mariadb.log"),
            init_file,
            data_dir,
            child: None,
            dir,
        };
        server.spawn()?;
        server.wait_ready(0)?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let (uid, gid) = system_user("mysql")?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("clone log: {e}"))?;
        let child = Command::new(binary("mariadbd")?)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir.display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mariadb.pid").display()
            ))
            .arg(format!("--init-file={}", self.init_file.display()))
            .arg("--skip-name-resolve")
            .arg("--innodb-log-file-size=16M")
            .current_dir(self.dir.path())
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn mariadbd: {e}"))?;
        crate::reap_with_this_process(child.id());
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, before: usize) -> Result<(), String> {
        let log = self.log.clone();
        let port = self.port;
        let ok = wait_until(START_TIMEOUT, || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return true; // exited: reported below
            }
            count_ready(&log) > before && port_open(port)
        });
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            self.child = None;
            return Err(format!(
                "mariadbd exited with {status}; log tail:\n{}",
                tail(&self.log, 30)
            ));
        }
        if !ok {
            return Err(format!(
                "mariadbd not ready within {START_TIMEOUT:?}; log tail:\n{}",
                tail(&self.log, 30)
            ));
        }
        Ok(())
    }

    /// `mysql://shardcron:PASSWORD@127.0.0.1:PORT/shardcron`.
    pub fn url(&self) -> String {
        format!(
            "mysql://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket the server also listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The user the tests log in as (all rights on [`MariaDbServer::database`]).
    pub fn user(&self) -> &str {
        USER
    }

    /// The generated password of [`MariaDbServer::user`].
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
            kill(pid, sig).unwrap_or_else(|e| panic!("kill -{sig} mariadbd: {e}"));
        }
    }

    /// Stop the server cleanly (SIGTERM) and wait for it to exit. The data dir and
    /// port stay reserved for [`MariaDbServer::restart`].
    pub fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        if let Some(mut c) = self.child.take() {
            let exited = wait_until(STOP_TIMEOUT, || matches!(c.try_wait(), Ok(Some(_))));
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "mariadbd did not stop within {STOP_TIMEOUT:?}; log tail:\n{}",
                    tail(&self.log, 30)
                );
            }
        }
    }

    /// kill -9 the server (InnoDB recovers on the next start) and reap it.
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
            "restart of mariadbd while it runs; stop it first"
        );
        let before = count_ready(&self.log);
        let port = self.port;
        wait_until(Duration::from_secs(10), || !port_open(port));
        self.spawn()
            .and_then(|()| self.wait_ready(before))
            .unwrap_or_else(|e| panic!("mariadbd restart failed: {e}"));
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        self.kill9();
    }
}
