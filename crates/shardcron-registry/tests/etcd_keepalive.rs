//! The etcd backend's keep-alive must only report an answer to *its own*
//! request. The `LeaseKeeper` computes the lease's local deadline from the send
//! time of the call that succeeded; a call answered by the response to an
//! earlier, abandoned request (the keeper times calls out and drops them) would
//! push that deadline past etcd's real expiry.
//!
//! Found with the gRPC proxy of the testkit: hold the keep-alive answers, let a
//! call time out (its request reached etcd), then hold the requests and release
//! the answers: the next call used to read the stale answer and report success
//! although etcd never saw its request.

use std::net::SocketAddr;
use std::time::Duration;

use shardcron_registry::{EtcdOptions, EtcdRegistry, Registry};
use shardcron_testkit::{EtcdServer, GrpcProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_is_never_acknowledged_by_the_answer_to_an_abandoned_one() {
    let etcd = EtcdServer::start();
    let target: SocketAddr = etcd.endpoints()[0]
        .trim_start_matches("http://")
        .parse()
        .expect("etcd endpoint");
    let proxy = GrpcProxy::start(target);
    let reg = EtcdRegistry::connect(EtcdOptions::new(
        vec![format!("http://{}", proxy.addr())],
        "/ka",
    ))
    .await
    .expect("connect through the proxy");
    let lease = reg
        .lease_grant(Duration::from_secs(5))
        .await
        .expect("grant");
    reg.lease_keep_alive(lease.id)
        .await
        .expect("a keep-alive through the proxy");

    // A call whose request reaches etcd but whose answer is held: abandoned, as
    // the keeper abandons a call that takes longer than its budget.
    proxy.stall_keepalives_in(false, true);
    let abandoned =
        tokio::time::timeout(Duration::from_millis(500), reg.lease_keep_alive(lease.id)).await;
    assert!(abandoned.is_err(), "no answer while answers are held");
    let reached = proxy.stats();
    assert_eq!(reached.keepalive_responses_held, 1, "{reached:?}");

    // Now requests are held and answers flow: the held (stale) answer arrives,
    // but nothing this call sends reaches etcd.
    proxy.stall_keepalives_in(true, false);
    let next =
        tokio::time::timeout(Duration::from_millis(1500), reg.lease_keep_alive(lease.id)).await;
    let after = proxy.stats();
    assert_eq!(
        after.last_keepalive_request, reached.last_keepalive_request,
        "no keep-alive request reached etcd after the abandoned one"
    );
    assert!(
        !matches!(next, Ok(Ok(_))),
        "a keep-alive whose request never reached etcd was reported acknowledged: {next:?}"
    );

    // Once the path is clear again, keep-alives work (on a fresh stream).
    proxy.stall_keepalives(false);
    let ttl = reg
        .lease_keep_alive(lease.id)
        .await
        .expect("a keep-alive after the stall");
    assert!(ttl > Duration::ZERO);
}
