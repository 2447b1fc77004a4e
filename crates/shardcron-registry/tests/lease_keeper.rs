//! The lease keeper on both backends: renewals keep keys alive, the local deadline
//! moves with acknowledged keep-alives, and a lost lease is reported as an event
//! (revoked by someone else; registry unreachable).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcron_core::clock::SystemClock;
use shardcron_registry::{
    EtcdOptions, EtcdRegistry, LeaseEvent, LeaseKeeper, MemoryRegistry, Registry,
};
use shardcron_testkit::{EtcdServer, TcpProxy};

async fn kept_alive_past_ttl_and_revocation_is_reported(reg: Arc<dyn Registry>) {
    let clock = SystemClock::shared();
    let sent = clock.mono();
    let lease = reg
        .lease_grant(Duration::from_secs(2))
        .await
        .expect("grant");
    reg.put(b"member", b"x", Some(lease.id)).await.expect("put");
    let (keeper, mut events) = LeaseKeeper::start(reg.clone(), lease, sent, clock.clone());
    let first_deadline = keeper.deadline();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        reg.get(b"member").await.expect("get").is_some(),
        "kept alive for 2.5 x TTL"
    );
    assert!(
        keeper.deadline() > first_deadline,
        "the deadline moved forward"
    );
    assert!(keeper.is_valid(Duration::from_millis(100)));
    assert!(keeper.remaining(Duration::ZERO) <= Duration::from_secs(2));

    // Someone else revokes it: reported within about TTL/3.
    let revoked = Instant::now();
    reg.lease_revoke(lease.id).await.expect("revoke");
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a lost event within 5 s")
        .expect("event");
    assert!(
        matches!(ev, LeaseEvent::Lost { ref reason } if reason.contains("no longer has")),
        "{ev:?}"
    );
    eprintln!("revocation noticed after {:?}", revoked.elapsed());
    assert!(!keeper.is_valid(Duration::ZERO));
    assert!(keeper.lost_reason().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeper_keeps_alive_and_reports_revocation() {
    kept_alive_past_ttl_and_revocation_is_reported(Arc::new(MemoryRegistry::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keeper_keeps_alive_and_reports_revocation() {
    let etcd = EtcdServer::start();
    let reg = EtcdRegistry::connect(EtcdOptions::new(etcd.endpoints(), "/keeper"))
        .await
        .expect("connect");
    kept_alive_past_ttl_and_revocation_is_reported(Arc::new(reg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_makes_the_lease_lost_at_its_local_deadline() {
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(
        etcd.endpoints()[0]
            .trim_start_matches("http://")
            .parse()
            .expect("addr"),
    );
    let mut opts = EtcdOptions::new(vec![format!("http://{}", proxy.addr())], "/keeper");
    opts.request_timeout = Duration::from_secs(1);
    let reg: Arc<dyn Registry> = Arc::new(EtcdRegistry::connect(opts).await.expect("connect"));
    let clock = SystemClock::shared();
    let sent = clock.mono();
    let lease = reg
        .lease_grant(Duration::from_secs(3))
        .await
        .expect("grant");
    let (keeper, mut events) = LeaseKeeper::start(reg.clone(), lease, sent, clock.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = keeper.deadline();
    proxy.cut();
    let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("a lost event")
        .expect("event");
    let at = clock.mono();
    assert!(
        matches!(ev, LeaseEvent::Lost { ref reason } if reason.contains("deadline")),
        "{ev:?}"
    );
    assert!(at >= deadline, "not reported before the deadline");
    assert!(
        at.duration_since(deadline) < Duration::from_secs(2),
        "reported promptly after the deadline: {:?} late",
        at.duration_since(deadline)
    );
    assert!(!keeper.is_valid(Duration::ZERO));
}

/// A lease whose grant was sent a while before the keeper started (a slow grant,
/// or a slow registration transaction after it: e.g. right after a partition
/// heals) is renewed at once, not a whole period after the start: the first
/// deadline counts from the grant's send time, so waiting a period could pass the
/// fence point (deadline minus margin) before the first keep-alive is even sent.
/// Found by `faults_netns`: an agent registered 0.95 s after its grant was sent
/// (TTL 2 s, margin 0.4 s) and fenced itself before its first keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_started_keeper_renews_before_the_fence_point() {
    let reg: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let clock = SystemClock::shared();
    let ttl = Duration::from_secs(2);
    let margin = Duration::from_millis(400);
    // The grant was sent 1.2 s ago: the first deadline is 0.8 s away, its fence
    // point 0.4 s.
    let sent = clock.mono();
    let lease = reg.lease_grant(ttl).await.expect("grant");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (keeper, _events) = LeaseKeeper::start(reg.clone(), lease, sent, clock.clone());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(
            keeper.is_valid(margin),
            "the lease passed its fence point {:?} after the keeper started (deadline in {:?})",
            start.elapsed(),
            keeper.remaining(Duration::ZERO)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
