//! Network namespaces for partition tests: a [`Netns`] is a fresh namespace
//! joined to the root namespace by a veth pair, deleted on drop.
//!
//! ```text
//!   root namespace                      namespace NAME
//!   HOST_IF 10.a.b.1/30  <-- veth -->   NS_IF 10.a.b.2/30, lo up
//! ```
//!
//! A process started with [`Netns::command`] sees only `lo` and `NS_IF`: it
//! reaches a server of the root namespace at [`Netns::host_ip`] (the server must
//! listen on that address), and nothing else. [`Netns::cut`] makes every packet
//! between the two ends vanish, in both directions, with no error and no reset
//! on either side, until [`Netns::heal`]: a real partition, where a TCP
//! connection hangs and its peer must notice on its own.
//!
//! How the cut works. This kernel has no tc classifiers or actions (no `matchall`,
//! `u32` or `gact`) and the machine has no iptables, and taking a link down is not
//! a silent drop: an admin-down host side removes its route, so the host would
//! send to 10.a.b.2 through its default route, and a down namespace side gives
//! its processes "network unreachable" at once. Instead both ends have
//! *permanent* neighbour (ARP) entries for each other, so no ARP ever runs; the
//! cut rewrites both entries to unused MAC addresses. Every frame then still
//! leaves its sender normally (the sender's kernel sees a successful transmit,
//! TCP backs off as it would over a dead network) and is discarded by the
//! receiving end, whose MAC it does not carry. The heal writes the real MACs
//! back; established connections resume with their next retransmission.
//!
//! Names hold the test process's id and a counter, and each namespace gets its
//! own /30 derived from both in 10.0.0.0/8 (checked against the addresses in
//! use), so parallel tests do not clash. A creation that fails panics with the
//! failing command and its stderr: a test that needs a namespace never skips.
//! Drop deletes the veth pair and the namespace (also while unwinding from a
//! panic), and a small watcher deletes them if the test process dies without
//! running destructors (SIGKILL by a test timeout).

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::find_binary;

/// Counter of namespaces made by this process (part of their names and subnets).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// MAC addresses nobody has (locally administered), written into the neighbour
/// entries while cut.
const NOWHERE_HOST: &str = "02:5c:00:00:00:01";
const NOWHERE_NS: &str = "02:5c:00:00:00:02";

/// A network namespace with a veth pair to the root namespace; see the module
/// documentation. Deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    host_mac: String,
    ns_mac: String,
    cut: AtomicBool,
}

fn ip_binary() -> std::path::PathBuf {
    find_binary("ip").unwrap_or_else(|| panic!("`ip` (iproute2) not found: netns tests need it"))
}

/// Run `ip ARGS`; panics with the command and its stderr when it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new(ip_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {} (network namespace tests need root / CAP_NET_ADMIN)",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `ip ARGS`, ignoring failure (cleanup).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new(ip_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The /30 number `index` of 10.0.0.0/8: (network, host side .1, namespace side .2).
fn subnet(index: u32) -> (Ipv4Addr, Ipv4Addr, Ipv4Addr) {
    let base = (10u32 << 24) | ((index % (1 << 22)) << 2);
    (
        Ipv4Addr::from(base),
        Ipv4Addr::from(base + 1),
        Ipv4Addr::from(base + 2),
    )
}

/// IPv4 addresses configured in the root namespace, each with its prefix length.
fn addresses_in_use() -> Vec<(Ipv4Addr, u32)> {
    ip(&["-4", "-o", "addr", "show"])
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            let (a, p) = words.next()?.split_once('/')?;
            Some((a.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

/// Whether the /30 at `net` overlaps a configured address's network.
fn overlaps(net: Ipv4Addr, used: &[(Ipv4Addr, u32)]) -> bool {
    let ours = u32::from(net);
    used.iter().any(|&(a, plen)| {
        let plen = plen.min(30);
        let mask = if plen == 0 {
            0
        } else {
            u32::MAX << (32 - plen)
        };
        (u32::from(a) & mask) == (ours & mask)
    })
}

impl Netns {
    /// Create a namespace and its veth pair, both ends up with their addresses and
    /// permanent neighbour entries, `lo` up inside. Panics (with the failing
    /// command's stderr) when that is not possible.
    pub fn create() -> Netns {
        let pid = std::process::id();
        let used = addresses_in_use();
        for _ in 0..64 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("shardcron-{pid}-{n}");
            let host_if = format!("sc{pid}x{n}h");
            let ns_if = format!("sc{pid}x{n}n");
            let (net, host_ip, ns_ip) = subnet((pid % 65_536) * 64 + n % 64);
            // A leftover of an earlier process with our pid, or a subnet in use:
            // take the next number.
            let leftover = std::path::Path::new("/var/run/netns").join(&name).exists()
                || std::path::Path::new("/sys/class/net")
                    .join(&host_if)
                    .exists();
            if leftover || overlaps(net, &used) {
                continue;
            }
            return Self::make(name, host_if, ns_if, host_ip, ns_ip);
        }
        panic!("no free name and 10.x.y.z/30 subnet for a network namespace after 64 tries");
    }

    fn make(
        name: String,
        host_if: String,
        ns_if: String,
        host_ip: Ipv4Addr,
        ns_ip: Ipv4Addr,
    ) -> Netns {
        ip(&["netns", "add", &name]);
        // From here on Drop cleans up whatever was made, also if a step panics.
        let mut me = Netns {
            name,
            host_if,
            ns_if,
            host_ip,
            ns_ip,
            host_mac: String::new(),
            ns_mac: String::new(),
            cut: AtomicBool::new(false),
        };
        me.cleanup_when_this_process_dies();
        let (name, host_if, ns_if) = (me.name.clone(), me.host_if.clone(), me.ns_if.clone());
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        in_ns(&["link", "set", &ns_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        me.host_mac = mac_of(&ip(&["-o", "link", "show", "dev", &host_if]));
        me.ns_mac = mac_of(&in_ns(&["-o", "link", "show", "dev", &ns_if]));
        me.set_neighbours(&me.host_mac, &me.ns_mac);
        me
    }

    /// Point each end's (permanent) neighbour entry for the other end at
    /// `host_mac` (as the namespace sees the host) and `ns_mac` (as the host
    /// sees the namespace).
    fn set_neighbours(&self, host_mac: &str, ns_mac: &str) {
        let ns_ip = self.ns_ip.to_string();
        let host_ip = self.host_ip.to_string();
        ip(&[
            "neigh",
            "replace",
            &ns_ip,
            "lladdr",
            ns_mac,
            "dev",
            &self.host_if,
            "nud",
            "permanent",
        ]);
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "neigh",
            "replace",
            &host_ip,
            "lladdr",
            host_mac,
            "dev",
            &self.ns_if,
            "nud",
            "permanent",
        ]);
    }

    fn cleanup_when_this_process_dies(&self) {
        let me = std::process::id();
        let ip = ip_binary();
        let ip = ip.display();
        let script = format!(
            "while kill -0 {me} 2>/dev/null && [ -e /var/run/netns/{name} ]; do sleep 0.5; done; \
             {ip} link del {host_if} 2>/dev/null; {ip} netns del {name} 2>/dev/null",
            name = self.name,
            host_if = self.host_if,
        );
        // Best effort: without sh, Drop still cleans up after a normal end or a panic.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// The namespace's name (`ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root namespace's end of the veth pair.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The address of the root namespace's end (10.a.b.1): what processes in the
    /// namespace connect to.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The address of the namespace's end (10.a.b.2).
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// A command running `program` inside the namespace (`ip netns exec NAME
    /// program`; ip execs the program, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(ip_binary());
        cmd.arg("netns").arg("exec").arg(&self.name).arg(program);
        cmd
    }

    /// A TCP connection to `addr` opened from inside the namespace (e.g. to
    /// 127.0.0.1:PORT of a server in it). A short-lived thread joins the
    /// namespace and connects; the socket keeps the namespace it was made in.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path)?;
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                TcpStream::connect_timeout(&addr, timeout)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the connecting thread panicked")))
        })
    }

    /// Partition: from now on every packet between the namespace and the root
    /// namespace vanishes silently, in both directions (see the module docs).
    pub fn cut(&self) {
        self.set_neighbours(NOWHERE_HOST, NOWHERE_NS);
        self.cut.store(true, Ordering::SeqCst);
    }

    /// End the partition: packets flow again.
    pub fn heal(&self) {
        self.set_neighbours(&self.host_mac, &self.ns_mac);
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the link is cut now.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// `ip neigh` of both ends, for evidence in messages: what each end sends
    /// its frames to.
    pub fn neighbours(&self) -> String {
        let host = ip(&["neigh", "show", "dev", &self.host_if]);
        let ns = ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "neigh",
            "show",
            "dev",
            &self.ns_if,
        ]);
        format!(
            "host {} ({}): {}; namespace {} ({}): {}",
            self.host_if,
            self.host_mac,
            host.trim(),
            self.ns_if,
            self.ns_mac,
            ns.trim()
        )
    }
}

/// The `link/ether` address in `ip -o link show` output.
fn mac_of(link: &str) -> String {
    let mut words = link.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no link/ether address in `ip link` output: {link}"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        ip_quiet(&["link", "del", &self.host_if]);
        ip_quiet(&["netns", "del", &self.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_distinct_slash_30s_in_10_8() {
        assert_eq!(
            subnet(0),
            (
                Ipv4Addr::new(10, 0, 0, 0),
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2)
            )
        );
        assert_eq!(subnet(65_535 * 64 + 63).0, Ipv4Addr::new(10, 255, 255, 252));
        assert!(overlaps(
            Ipv4Addr::new(10, 1, 2, 4),
            &[(Ipv4Addr::new(10, 1, 2, 5), 30)]
        ));
        assert!(overlaps(
            Ipv4Addr::new(10, 1, 2, 4),
            &[(Ipv4Addr::new(10, 9, 9, 9), 8)]
        ));
        assert!(!overlaps(
            Ipv4Addr::new(10, 1, 2, 4),
            &[
                (Ipv4Addr::new(10, 1, 2, 9), 30),
                (Ipv4Addr::new(127, 0, 0, 1), 8),
                (Ipv4Addr::new(192, 0, 2, 2), 24)
            ]
        ));
    }
}
