//! A real etcd (Debian's `etcd-server`, 3.4) for tests: one member or a cluster,
//! plain or TLS, killed on drop, restartable on the same data dir and ports.

use std::fs::OpenOptions;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::tls::TestCerts;
use crate::{find_binary, free_port, port_open, tail, wait_until};

/// How to start etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Number of members (1 if 0).
    pub members: usize,
    /// Serve clients over TLS with these certificates (and require client
    /// certificates signed by the same CA).
    pub tls: Option<TestCerts>,
    /// Addresses, besides 127.0.0.1, on which every member also serves clients
    /// (on the same port), e.g. the host end of a [`crate::Netns`] so that
    /// processes in the namespace reach etcd. Each must be configured before etcd
    /// starts. Clients there need explicit endpoints ([`EtcdServer::url_on`]):
    /// the advertised client URLs stay on 127.0.0.1. With TLS, the server
    /// certificate must name the address.
    pub client_ips: Vec<IpAddr>,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd, single member or cluster. Dropping it kills every member.
#[derive(Debug)]
pub struct EtcdServer {
    members: Vec<Member>,
    tls: Option<TestCerts>,
    client_ips: Vec<IpAddr>,
    token: String,
    // Kept last so the directories outlive the processes while dropping.
    dir: tempfile::TempDir,
}

/// Logged by etcd 3.4 (zap logger) once it serves clients, plain or TLS.
const READY: &str = "serving client traffic";
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn etcd_binary() -> PathBuf {
    find_binary("etcd").unwrap_or_else(|| {
        panic!(
            "etcd binary not found on PATH or in /usr/bin: install Debian's etcd-server \
             (scripts/test.sh installs it when missing)"
        )
    })
}

fn count_ready(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(READY)
        .count()
}

impl EtcdServer {
    /// Start a single plain member.
    pub fn start() -> EtcdServer {
        Self::start_with(EtcdConfig::default())
    }

    /// Start a plain cluster of `n` members.
    pub fn cluster(n: usize) -> EtcdServer {
        Self::start_with(EtcdConfig {
            members: n,
            ..EtcdConfig::default()
        })
    }

    /// Start etcd as configured; panics (with the log's tail) if it does not become
    /// ready within 30 s. Port clashes with other tests are retried with new ports.
    pub fn start_with(config: EtcdConfig) -> EtcdServer {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&config) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("etcd did not start: {last_err}");
    }

    fn try_start(config: &EtcdConfig) -> Result<EtcdServer, String> {
        let n = config.members.max(1);
        let dir = tempfile::Builder::new()
            .prefix("shardcron-etcd-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let token = format!("t{}", free_port());
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let mut server = EtcdServer {
            members,
            tls: config.tls.clone(),
            client_ips: config.client_ips.clone(),
            token,
            dir,
        };
        for i in 0..n {
            server.spawn(i, true)?;
        }
        for i in 0..n {
            server.wait_ready(i, 0)?;
        }
        Ok(server)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize, new_cluster: bool) -> Result<(), String> {
        let scheme = self.scheme();
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("open {}: {e}", m.log.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("clone log: {e}"))?;
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let listen_urls = std::iter::once(client_url.clone())
            .chain(self.client_ips.iter().map(|ip| {
                format!(
                    "{scheme}://{}",
                    std::net::SocketAddr::new(*ip, m.client_port)
                )
            }))
            .collect::<Vec<_>>()
            .join(",");
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&listen_urls)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg(if new_cluster { "new" } else { "existing" })
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_cert)
                .arg("--client-cert-auth");
        }
        let child = cmd.spawn().map_err(|e| format!("spawn etcd: {e}"))?;
        crate::reap_with_this_process(child.id());
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Wait until member `i` has logged readiness more than `before` times.
    fn wait_ready(&mut self, i: usize, before: usize) -> Result<(), String> {
        let ok = wait_until(START_TIMEOUT, || {
            let m = &mut self.members[i];
            if let Some(child) = m.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return true; // exited: reported below
            }
            count_ready(&m.log) > before && port_open(m.client_port)
        });
        let m = &mut self.members[i];
        let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            m.child = None;
            return Err(format!(
                "etcd member {} exited with {status}; log tail:\n{}",
                m.name,
                tail(&m.log, 30)
            ));
        }
        if !ok {
            return Err(format!(
                "etcd member {} not ready within {START_TIMEOUT:?}; log tail:\n{}",
                m.name,
                tail(&m.log, 30)
            ));
        }
        Ok(())
    }

    /// Client endpoints (`http://127.0.0.1:PORT` or `https://...`), one per member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    /// The registry URL: `etcd://127.0.0.1:P1,127.0.0.1:P2` (`etcds://` with TLS).
    pub fn url(&self) -> String {
        let hosts = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",");
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{hosts}")
    }

    /// The registry URL for clients that reach etcd at `ip` (one of
    /// [`EtcdConfig::client_ips`]): `etcd://IP:P1,IP:P2` (`etcds://` with TLS).
    pub fn url_on(&self, ip: IpAddr) -> String {
        assert!(
            self.client_ips.contains(&ip),
            "etcd does not listen on {ip}: add it to EtcdConfig::client_ips"
        );
        let hosts = self
            .members
            .iter()
            .map(|m| std::net::SocketAddr::new(ip, m.client_port).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{hosts}")
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members (never true).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The log file of member `i`.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// The temporary directory holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn signal(&self, i: usize, sig: Signal) {
        if let Some(pid) = self.pid(i) {
            let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
            kill(pid, sig).unwrap_or_else(|e| panic!("kill -{sig} etcd member {i}: {e}"));
        }
    }

    /// kill -9 member `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        self.signal(i, Signal::SIGKILL);
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.wait();
        }
    }

    /// Start member `i` again on its data dir and ports; waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "restart of etcd member {i} while it runs; kill9 it first"
        );
        let before = count_ready(&self.members[i].log);
        // The old process's ports may linger a moment after a kill.
        let port = self.members[i].client_port;
        wait_until(Duration::from_secs(5), || !port_open(port));
        self.spawn(i, false)
            .and_then(|()| self.wait_ready(i, before))
            .unwrap_or_else(|e| panic!("etcd restart failed: {e}"));
    }

    /// SIGSTOP member `i`.
    pub fn pause(&self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
    }

    /// SIGCONT member `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, Signal::SIGCONT);
    }

    /// The certificates, if the server uses TLS.
    pub fn tls(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.resume(i);
            self.kill9(i);
        }
    }
}
