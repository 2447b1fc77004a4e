//! The namespace mirror: watches are hints. A compaction while the mirror's watch
//! is cut off (on a real etcd) leads to a re-list that brings it back in line, and
//! the periodic reconcile re-lists even when no event says so.

use std::sync::Arc;
use std::time::Duration;

use shardcron_registry::{EtcdOptions, EtcdRegistry, MemoryRegistry, Registry};
use shardcron_runtime::mirror::Mirror;
use shardcron_testkit::{EtcdServer, TcpProxy};
use tokio::sync::watch;

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not true within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_a_disconnect_makes_the_mirror_relist() {
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(
        etcd.endpoints()[0]
            .trim_start_matches("http://")
            .parse()
            .expect("addr"),
    );
    let mut opts = EtcdOptions::new(vec![format!("http://{}", proxy.addr())], "/mirror");
    opts.request_timeout = Duration::from_secs(2);
    let via_proxy: Arc<dyn Registry> =
        Arc::new(EtcdRegistry::connect(opts).await.expect("connect"));
    let writer = EtcdRegistry::connect(EtcdOptions::new(etcd.endpoints(), "/mirror"))
        .await
        .expect("connect");
    writer.put(b"k/1", b"one", None).await.expect("put");
    let (_stop_tx, stop) = watch::channel(false);
    let m = Mirror::spawn(via_proxy, b"k/", Duration::from_secs(600), stop);
    m.synced().await;
    eventually("k/1 mirrored", || m.get(b"k/1").is_some()).await;
    let relists = m.relists();

    proxy.cut();
    writer.put(b"k/2", b"two", None).await.expect("put");
    writer.delete(b"k/1").await.expect("delete");
    let rev = writer.current_revision().await.expect("rev");
    writer.compact(rev).await.expect("compact");
    proxy.heal();

    eventually("the mirror re-listed and caught up", || {
        m.relists() > relists && m.get(b"k/1").is_none() && m.get(b"k/2").is_some()
    })
    .await;
    assert!(m.revision() >= rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reconcile_relists_and_events_are_applied_once() {
    let reg = MemoryRegistry::new();
    let (stop_tx, stop) = watch::channel(false);
    let m = Mirror::spawn(
        Arc::new(reg.clone()),
        b"k/",
        Duration::from_millis(200),
        stop,
    );
    m.synced().await;
    for i in 0..50 {
        reg.put(format!("k/{i}").as_bytes(), b"v", None)
            .await
            .expect("put");
    }
    eventually("50 keys", || m.read(|map| map.len()) == 50).await;
    let before = m.relists();
    eventually("reconciled at least twice", || m.relists() >= before + 2).await;
    assert_eq!(m.read(|map| map.len()), 50);
    let kv = reg.get(b"k/7").await.expect("get").expect("k/7");
    assert_eq!(m.get(b"k/7"), Some(kv), "metadata mirrored exactly");
    stop_tx.send(true).expect("stop");
}
