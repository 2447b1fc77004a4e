//! The gRPC proxy itself, with a real etcd and the `etcd-client` crate the
//! registry uses: every call goes through; a keep-alive stall holds only the
//! keep-alive stream; a lost Txn answer was applied all the same; dropping the
//! proxy stops it.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use shardcron_testkit::grpc_proxy::{KV_TXN, LEASE_KEEP_ALIVE};
use shardcron_testkit::{EtcdServer, GrpcProxy};

fn target(etcd: &EtcdServer) -> SocketAddr {
    etcd.endpoints()[0]
        .trim_start_matches("http://")
        .parse()
        .expect("etcd endpoint")
}

async fn connect(proxy: &GrpcProxy) -> Client {
    Client::connect([proxy.addr()], None)
        .await
        .expect("connect through the proxy")
}

fn put_if_absent(key: &str) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, "v", None)])
}

#[tokio::test]
async fn a_keepalive_stall_holds_only_the_keepalive_stream() {
    let etcd = EtcdServer::start();
    let proxy = GrpcProxy::start(target(&etcd));
    let mut client = connect(&proxy).await;
    client.put("a", "1", None).await.expect("put");
    let got = client.get("a", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");

    let lease = client.lease_grant(5, None).await.expect("grant");
    let (mut keeper, mut stream) = client.lease_keep_alive(lease.id()).await.expect("open");
    keeper.keep_alive().await.expect("send");
    let first = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("an answer before the stall")
        .expect("stream")
        .expect("message");
    assert!(first.ttl() > 0);
    let before = proxy.stats();
    assert!(before.last_keepalive_request.is_some() && before.last_keepalive_response.is_some());

    proxy.stall_keepalives(true);
    let mut watch_client = client.watch_client();
    let mut events = watch_client
        .watch("w", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .expect("watch during the stall");
    keeper.keep_alive().await.expect("send during the stall");
    let stalled = tokio::time::timeout(Duration::from_millis(1500), stream.message()).await;
    assert!(stalled.is_err(), "no keep-alive answer during the stall");
    // Everything else still works, on the same connection.
    client
        .put("w1", "x", None)
        .await
        .expect("put during the stall");
    assert_eq!(
        client.get("a", None).await.expect("get").kvs()[0].value(),
        b"1"
    );
    let resp = client.txn(put_if_absent("t1")).await.expect("txn");
    assert!(resp.succeeded());
    let event = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(m)) = events.message().await {
            if !m.events().is_empty() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(event, Ok(true), "a watch event during the stall");
    let during = proxy.stats();
    assert_eq!(during.keepalive_requests_held, 1, "{during:?}");
    assert_eq!(
        during.last_keepalive_request, before.last_keepalive_request,
        "nothing reached etcd"
    );
    assert_eq!(during.calls_of(LEASE_KEEP_ALIVE), 1, "{during:?}");
    assert!(during.calls_other_than(LEASE_KEEP_ALIVE) >= 5, "{during:?}");

    // Released: the held message goes on, on the same stream.
    proxy.stall_keepalives(false);
    let late = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("the held keep-alive answered after the stall")
        .expect("stream")
        .expect("message");
    assert!(late.ttl() > 0, "the lease is alive");
    let after = proxy.stats();
    assert!(after.last_keepalive_request > before.last_keepalive_request);
    assert_eq!(
        after.calls_of(LEASE_KEEP_ALIVE),
        1,
        "the stream was not reopened"
    );
}

#[tokio::test]
async fn a_lost_txn_answer_was_applied_and_the_client_gets_unavailable() {
    let etcd = EtcdServer::start();
    let proxy = GrpcProxy::start(target(&etcd));
    let mut client = connect(&proxy).await;
    for (i, key) in ["claim/1", "claim/2"].into_iter().enumerate() {
        proxy.lose_next_txn_answers_matching(1, b"claim/");
        // Not matching: answered.
        let r = client
            .txn(put_if_absent(&format!("other{i}")))
            .await
            .expect("txn");
        assert!(r.succeeded());
        let err = client
            .txn(put_if_absent(key))
            .await
            .expect_err("the answer is lost");
        match err {
            etcd_client::Error::GRpcStatus(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(proxy.answers_to_lose(), 0);
        // ... but the txn was applied: a retry of the same compare fails.
        let got = client.get(key, None).await.expect("get");
        assert_eq!(got.kvs().len(), 1, "{key} was committed");
        let again = client.txn(put_if_absent(key)).await.expect("retry");
        assert!(!again.succeeded(), "the retry sees the first commit");
    }
    let stats = proxy.stats();
    assert_eq!(stats.answers_lost, 2, "{stats:?}");
    assert_eq!(stats.calls_of(KV_TXN), 6, "{stats:?}");

    proxy.lose_next_txn_answers(1);
    assert!(client.txn(put_if_absent("any")).await.is_err());
    assert!(client.txn(put_if_absent("any2")).await.is_ok());
    assert_eq!(proxy.stats().answers_lost, 3);

    // A predicate: "claim/" but not "claim/keep".
    let has = |h: &[u8], n: &[u8]| h.windows(n.len()).any(|w| w == n);
    proxy.lose_next_txn_answers_where(1, move |req| {
        has(req, b"claim/") && !has(req, b"claim/keep")
    });
    assert!(client.txn(put_if_absent("claim/keep")).await.is_ok());
    assert!(client.txn(put_if_absent("claim/3")).await.is_err());
    assert_eq!(proxy.stats().answers_lost, 4);
}

#[tokio::test]
async fn after_an_etcd_restart_the_client_reconnects_through_the_proxy() {
    let mut etcd = EtcdServer::start();
    let proxy = GrpcProxy::start(target(&etcd));
    let mut client = connect(&proxy).await;
    client.put("k", "v", None).await.expect("put");
    etcd.kill9(0);
    etcd.restart(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), client.get("k", None)).await
        {
            assert_eq!(r.kvs()[0].value(), b"v");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer through the proxy after the etcd restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.stats().connections >= 2, "the client reconnected");
}

#[tokio::test]
async fn dropping_the_proxy_stops_it() {
    let etcd = EtcdServer::start();
    let proxy = GrpcProxy::start(target(&etcd));
    let mut client = connect(&proxy).await;
    client.put("k", "v", None).await.expect("put");
    let port = proxy.port();
    drop(proxy);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on the proxy's port"
    );
    let r = tokio::time::timeout(Duration::from_secs(3), client.get("k", None)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a call through a dropped proxy does not succeed"
    );
}
