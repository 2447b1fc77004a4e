//! The registry conformance kit, unchanged, against a real etcd started by the test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use shardcron_registry::conformance::{Factory, factory};
use shardcron_registry::{EtcdOptions, EtcdRegistry};
use shardcron_testkit::EtcdServer;

/// A factory over one etcd per test: every registry it makes gets a namespace of its
/// own, and the server lives as long as the factory.
fn etcd_factory() -> Factory {
    let server = Arc::new(EtcdServer::start());
    let next = Arc::new(AtomicU64::new(0));
    factory(move || {
        let endpoints = server.endpoints();
        let n = next.fetch_add(1, Ordering::SeqCst);
        let server = server.clone();
        async move {
            let reg = EtcdRegistry::connect(EtcdOptions::new(
                endpoints,
                format!("/shardcron-conformance/{n}"),
            ))
            .await
            .expect("connect to the test etcd");
            KeepServer {
                registry: reg,
                _server: server,
            }
        }
    })
}

/// An [`EtcdRegistry`] that keeps its etcd alive for as long as it is used.
#[derive(Debug)]
struct KeepServer {
    registry: EtcdRegistry,
    _server: Arc<EtcdServer>,
}

shardcron_registry::delegate_registry!(KeepServer, registry);

shardcron_registry::registry_conformance_tests!(etcd_factory());
