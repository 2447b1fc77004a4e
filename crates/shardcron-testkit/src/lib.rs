//! Test fixtures that start real servers on free loopback ports in temporary
//! directories, and stop them when dropped.
//!
//! [`capture`] has loopback servers that record what alert channels send (HTTP
//! and SMTP); [`browser`] drives a real headless Chromium for page tests.
//!
//! A fixture whose server cannot start panics with the reason and the tail of the
//! server's log: a test that needs a server never skips silently.

pub mod browser;
pub mod capture;
pub mod etcd;
pub mod grpc_proxy;
pub mod mariadb;
pub mod netns;
pub mod postgres;
pub mod proxy;
pub mod tls;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use etcd::{EtcdConfig, EtcdServer};
pub use grpc_proxy::{GrpcProxy, GrpcProxyStats};
pub use mariadb::MariaDbServer;
pub use netns::Netns;
pub use postgres::PostgresServer;
pub use proxy::TcpProxy;
pub use tls::TestCerts;

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local addr").port()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Make sure `child_pid` dies when this (test) process dies, even by SIGKILL (a
/// test timeout), when no destructor runs: a tiny shell loop watches our pid.
pub fn reap_with_this_process(child_pid: u32) {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {child_pid} 2>/dev/null; do sleep 0.5; done; \
         kill -CONT {child_pid} 2>/dev/null; kill -9 {child_pid} 2>/dev/null"
    );
    // Best effort: if sh is missing, the fixture's Drop still kills the child.
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Write an executable (mode 0755) `#!/bin/sh` script `dir/name`: the shebang
/// line, then `body`, ending with a newline (added when `body` has none).
/// Returns its path.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let end = if body.ends_with('\n') { "" } else { "\n" };
    std::fs::write(&path, format!("#!/bin/sh\n{body}{end}"))
        .unwrap_or_else(|e| panic!("write script {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod script {}: {e}", path.display()));
    path
}

/// Find an executable on PATH or in the usual system directories.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(Into::into))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether process `pid` is gone, or a zombie (dead, waiting for a reaper that in
/// a container may never come).
pub fn process_is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}
