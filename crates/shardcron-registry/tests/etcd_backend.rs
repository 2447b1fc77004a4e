//! What only the etcd backend has to get right, against a real etcd: watches that
//! survive an etcd kill -9 and a disconnect with compaction, lease expiry, auth, TLS
//! with client certificates, and errors that name the endpoint.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shardcron_registry::{
    EtcdOptions, EtcdRegistry, EtcdTls, EventKind, RangeRequest, Registry, RegistryError,
    WatchStream,
};
use shardcron_testkit::{EtcdConfig, EtcdServer, TcpProxy, TestCerts, free_port};

async fn connect(endpoints: Vec<String>, ns: &str) -> EtcdRegistry {
    EtcdRegistry::connect(EtcdOptions::new(endpoints, ns))
        .await
        .expect("connect to the test etcd")
}

/// Collect put events until `n` have arrived (or panic after `timeout`).
async fn collect_puts(w: &mut WatchStream, n: usize, timeout: Duration) -> Vec<(Vec<u8>, i64)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Ok(batch))) => {
                for e in batch {
                    if e.kind == EventKind::Put {
                        got.push((e.kv.key.clone(), e.kv.mod_revision));
                    }
                }
            }
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", got.len()),
            Ok(None) => panic!("watch ended after {} events", got.len()),
            Err(_) => panic!(
                "only {} of {n} events arrived within {timeout:?}",
                got.len()
            ),
        }
    }
    got
}

/// Retry `op` until it succeeds (etcd may still be coming back).
async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what} kept failing: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_etcd_kill9_and_restart_without_lost_or_repeated_events() {
    let mut etcd = EtcdServer::start();
    let reg = connect(etcd.endpoints(), "/watch-restart").await;
    let mut w = reg.watch(b"k/", 0).await.expect("watch");
    for i in 0..50 {
        reg.put(format!("k/{i:03}").as_bytes(), b"v", None)
            .await
            .expect("put before restart");
    }
    let first = collect_puts(&mut w, 50, Duration::from_secs(10)).await;

    etcd.kill9(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart(0);

    for i in 50..100 {
        let key = format!("k/{i:03}");
        retry("put after restart", || reg.put(key.as_bytes(), b"v", None)).await;
    }
    let second = collect_puts(&mut w, 50, Duration::from_secs(30)).await;
    let all: Vec<_> = first.into_iter().chain(second).collect();
    let keys: Vec<String> = all
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    let expected: Vec<String> = (0..100).map(|i| format!("k/{i:03}")).collect();
    assert_eq!(keys, expected, "every event exactly once, in order");
    assert!(
        all.windows(2).all(|p| p[0].1 < p[1].1),
        "revisions strictly increase"
    );
    // Nothing further (no repeated events) arrives.
    if let Ok(Some(Ok(batch))) = tokio::time::timeout(Duration::from_millis(500), w.next()).await {
        panic!("unexpected extra events after the restart: {batch:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_a_disconnect_ends_the_watch_with_compacted_and_a_relist_recovers() {
    let etcd = EtcdServer::start();
    let target: SocketAddr = etcd.endpoints()[0]
        .trim_start_matches("http://")
        .parse()
        .expect("endpoint addr");
    let proxy = TcpProxy::start(target);
    let mut opts = EtcdOptions::new(vec![format!("http://{}", proxy.addr())], "/compact");
    opts.request_timeout = Duration::from_secs(2);
    let watcher = EtcdRegistry::connect(opts)
        .await
        .expect("connect via proxy");
    let writer = connect(etcd.endpoints(), "/compact").await;

    let mut w = watcher.watch(b"k/", 0).await.expect("watch");
    writer.put(b"k/a", b"1", None).await.expect("put");
    collect_puts(&mut w, 1, Duration::from_secs(10)).await;

    proxy.cut();
    for i in 0..10 {
        writer
            .put(format!("k/{i}").as_bytes(), b"2", None)
            .await
            .expect("put while the watcher is cut off");
    }
    let rev = writer.current_revision().await.expect("revision");
    writer.compact(rev).await.expect("compact");
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();

    // The watch resumes from a compacted revision: it must say so, not skip silently.
    let err = match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
        Ok(Some(Ok(batch))) => panic!("events after compaction must not arrive: {batch:?}"),
        Ok(Some(Err(e))) => e,
        Ok(None) => panic!("watch ended without an error"),
        Err(_) => panic!("no compaction error within 20 s of healing"),
    };
    assert!(
        matches!(err, RegistryError::Compacted { compacted, .. } if compacted >= rev),
        "{err}"
    );

    // The re-list path: read everything, then watch from the read's revision + 1.
    let list = watcher
        .range(RangeRequest::prefix(b"k/".to_vec()))
        .await
        .expect("re-list");
    assert_eq!(list.count, 11, "a + 0..9");
    let mut w = watcher
        .watch(b"k/", list.revision + 1)
        .await
        .expect("re-watch");
    writer.put(b"k/after", b"3", None).await.expect("put");
    let got = collect_puts(&mut w, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].0, b"k/after".to_vec());
    assert!(
        proxy.connections() >= 2,
        "the watcher reconnected through the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_disappears_when_its_lease_is_no_longer_kept_alive() {
    let etcd = EtcdServer::start();
    let reg = connect(etcd.endpoints(), "/lease").await;
    let lease = reg
        .lease_grant(Duration::from_secs(2))
        .await
        .expect("grant");
    reg.put(b"member", b"me", Some(lease.id))
        .await
        .expect("put");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        reg.lease_keep_alive(lease.id).await.expect("keep-alive");
    }
    assert!(
        reg.get(b"member").await.expect("get").is_some(),
        "alive while kept alive"
    );
    let stopped = Instant::now();
    let gone = loop {
        if reg.get(b"member").await.expect("get").is_none() {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "key still there 10 s after keep-alives stopped (TTL 2 s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("lease expiry observed {gone:?} after the last keep-alive (TTL 2 s)");
    assert!(
        gone >= Duration::from_millis(1500),
        "not removed early: {gone:?}"
    );
    assert!(matches!(
        reg.lease_keep_alive(lease.id).await,
        Err(RegistryError::LeaseNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_a_wrong_password_fails_clearly_and_the_right_one_works() {
    let etcd = EtcdServer::start();
    {
        let mut admin = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .expect("admin connect");
        admin
            .user_add("root", "right-password", None)
            .await
            .expect("add root");
        admin
            .user_grant_role("root", "root")
            .await
            .expect("grant root");
        admin.auth_enable().await.expect("enable auth");
    }
    let mut bad = EtcdOptions::new(etcd.endpoints(), "/auth");
    bad.user = Some("root".into());
    bad.password = Some("wrong-password".into());
    let err = EtcdRegistry::connect(bad)
        .await
        .expect_err("a wrong password must fail");
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Auth(_)), "{err:?}");
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(
        msg.contains(&etcd.endpoints()[0]),
        "names the endpoint: {msg}"
    );
    assert!(
        !msg.contains("wrong-password"),
        "never prints the password: {msg}"
    );

    let mut good = EtcdOptions::new(etcd.endpoints(), "/auth");
    good.user = Some("root".into());
    good.password = Some("right-password".into());
    let reg = EtcdRegistry::connect(good)
        .await
        .expect("the right password works");
    reg.put(b"k", b"v", None).await.expect("put with auth");
    assert_eq!(
        reg.get(b"k").await.expect("get").map(|kv| kv.value),
        Some(b"v".to_vec())
    );
    let mut w = reg.watch(b"k", 0).await.expect("watch with auth");
    reg.put(b"k", b"w", None).await.expect("put");
    collect_puts(&mut w, 1, Duration::from_secs(10)).await;

    // Without credentials at all, the cluster refuses the requests.
    let anon = EtcdRegistry::connect(EtcdOptions::new(etcd.endpoints(), "/auth")).await;
    match anon {
        Err(e) => assert!(matches!(e, RegistryError::Auth(_)), "{e}"),
        Ok(r) => {
            let e = r.put(b"k", b"x", None).await.expect_err("anonymous put");
            assert!(matches!(e, RegistryError::Auth(_)), "{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_works_and_a_client_without_one_is_refused() {
    let certs = TestCerts::generate();
    let etcd = EtcdServer::start_with(EtcdConfig {
        members: 1,
        tls: Some(certs.clone()),
        ..EtcdConfig::default()
    });
    let read = |p: &std::path::Path| std::fs::read(p).expect("read certificate");
    let mut opts = EtcdOptions::from_url(&etcd.url(), "/tls").expect("etcds url");
    opts.tls = Some(EtcdTls {
        ca_pem: read(&certs.ca_cert),
        cert_pem: Some(read(&certs.client_cert)),
        key_pem: Some(read(&certs.client_key)),
        domain: None,
    });
    assert!(opts.endpoints[0].starts_with("https://"));
    let reg = EtcdRegistry::connect(opts.clone())
        .await
        .expect("TLS with a client certificate connects");
    reg.put(b"k", b"v", None).await.expect("put over TLS");
    assert!(reg.get(b"k").await.expect("get").is_some());

    let mut no_cert = opts;
    no_cert.connect_timeout = Duration::from_secs(3);
    if let Some(t) = no_cert.tls.as_mut() {
        t.cert_pem = None;
        t.key_pem = None;
    }
    let err = EtcdRegistry::connect(no_cert)
        .await
        .expect_err("no client certificate: refused");
    assert!(
        err.to_string().contains("127.0.0.1"),
        "names the endpoint: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_named_and_a_dead_member_among_live_ones_is_tolerated() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut opts = EtcdOptions::new(vec![dead.clone()], "/x");
    opts.connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = EtcdRegistry::connect(opts)
        .await
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails within the connect timeout"
    );
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{msg}");
    assert!(msg.contains(&dead), "names the endpoint: {msg}");

    let etcd = EtcdServer::start();
    let mut opts = EtcdOptions::new(vec![dead, etcd.endpoints()[0].clone()], "/x");
    opts.connect_timeout = Duration::from_secs(2);
    let reg = EtcdRegistry::connect(opts)
        .await
        .expect("one live endpoint is enough");
    retry("put with one dead endpoint", || reg.put(b"k", b"v", None)).await;
}
