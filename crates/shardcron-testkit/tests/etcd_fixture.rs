//! The etcd fixture itself: starts, answers, restarts on its data dir, clusters.

use std::io::{Read, Write};
use std::net::TcpStream;

use shardcron_testkit::EtcdServer;

/// The member's HTTP health endpoint, read over plain TCP.
fn healthy(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://");
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

#[test]
fn single_member_starts_restarts_and_dies_with_the_fixture() {
    let mut etcd = EtcdServer::start();
    let ep = etcd.endpoints()[0].clone();
    assert!(healthy(&ep), "fresh etcd at {ep} is healthy");
    let pid = etcd.pid(0).expect("running");
    etcd.kill9(0);
    assert!(!healthy(&ep));
    etcd.restart(0);
    assert!(healthy(&ep), "restarted etcd is healthy");
    assert_ne!(etcd.pid(0), Some(pid));
    let pid = etcd.pid(0).expect("running");
    drop(etcd);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "etcd process {pid} is gone after drop"
    );
}

#[test]
fn three_member_cluster_is_healthy() {
    let etcd = EtcdServer::cluster(3);
    assert_eq!(etcd.len(), 3);
    for ep in etcd.endpoints() {
        assert!(healthy(&ep), "{ep} healthy");
    }
    assert!(etcd.url().starts_with("etcd://127.0.0.1:"));
}
