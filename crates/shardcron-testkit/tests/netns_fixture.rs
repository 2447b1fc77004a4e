//! The network namespace fixture: isolation, a silent cut in both directions, the
//! heal, and cleanup on drop.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use shardcron_testkit::Netns;

#[test]
fn a_namespace_reaches_the_host_end_only_and_a_cut_drops_packets_silently_until_healed() {
    let ns = Netns::create();
    let (name, host_if) = (ns.name().to_string(), ns.host_if().to_string());
    assert!(Path::new("/var/run/netns").join(&name).exists());

    // Inside, only lo and the namespace's end exist, with its address.
    let out = ns
        .command("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("ip in the namespace");
    assert!(out.status.success());
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(addrs.contains(&format!("{}/30", ns.ns_ip())), "{addrs}");
    assert!(addrs.contains("127.0.0.1/8"), "lo is up: {addrs}");
    assert_eq!(addrs.lines().count(), 2, "{addrs}");

    // A server of the root namespace on loopback is not reachable from inside
    // (the connection is the namespace's own loopback: refused) ...
    let lo = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let e = ns
        .connect(lo.local_addr().expect("addr"), Duration::from_secs(1))
        .expect_err("the root namespace's loopback is not the namespace's");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // ... one on the host end is.
    let host = TcpListener::bind(SocketAddr::from((ns.host_ip(), 0))).expect("bind host end");
    let addr = host.local_addr().expect("addr");
    let mut client = ns
        .connect(addr, Duration::from_secs(2))
        .expect("connect to the host end");
    let (mut server, peer) = host.accept().expect("accept");
    assert_eq!(peer.ip(), ns.ns_ip());
    client.write_all(b"a").expect("write");
    let mut b = [0u8; 1];
    server.read_exact(&mut b).expect("read");

    // Cut: a new connection times out (no refusal, no unreachable error), and
    // bytes on the established one do not arrive.
    ns.cut();
    assert!(ns.is_cut());
    let t = Instant::now();
    let e = ns
        .connect(addr, Duration::from_millis(1500))
        .expect_err("no connection while cut");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() >= Duration::from_millis(1400), "{e}");
    client
        .write_all(b"b")
        .expect("a write succeeds locally while cut");
    server
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let e = server.read_exact(&mut b).expect_err("nothing arrives");
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );

    // Heal: the held byte arrives (retransmitted) on the same connection.
    ns.heal();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    server
        .read_exact(&mut b)
        .expect("the byte arrives after the heal");
    assert_eq!(&b, b"b");
    ns.connect(addr, Duration::from_secs(2))
        .expect("new connections work again");

    drop(ns);
    assert!(!Path::new("/var/run/netns").join(&name).exists());
    assert!(!Path::new("/sys/class/net").join(&host_if).exists());
}
