//! The registry conformance kit run against the embedded backend, in memory and
//! persisted to a data dir (which adds the write-ahead log to every operation).

use std::time::Duration;

use shardcron_registry::{
    DeleteResponse, KeyValue, Lease, LeaseId, MemoryRegistry, MemoryRegistryOptions, RangeRequest,
    RangeResponse, Registry, Result, Revision, Txn, TxnResponse, WatchStream,
};

mod in_memory {
    use shardcron_registry::MemoryRegistry;
    use shardcron_registry::conformance::factory;

    shardcron_registry::registry_conformance_tests!(factory(|| async { MemoryRegistry::new() }));
}

mod persistent {
    use shardcron_registry::conformance::factory;

    shardcron_registry::registry_conformance_tests!(factory(|| async {
        super::Persistent::open()
    }));
}

/// A [`MemoryRegistry`] persisted to a temporary directory that lives exactly as
/// long as the registry (the kit only sees an `Arc<dyn Registry>`, so the
/// directory has to travel with it).
#[derive(Debug)]
struct Persistent {
    registry: MemoryRegistry,
    _dir: tempfile::TempDir,
}

impl Persistent {
    fn open() -> Persistent {
        let dir = tempfile::tempdir().expect("a temporary data dir should be created");
        let registry = MemoryRegistry::with_options(MemoryRegistryOptions {
            data_dir: Some(dir.path().to_path_buf()),
            // Durability across a machine crash is not what is tested here, and
            // fsync per write would make the concurrency case slow.
            sync: false,
            ..Default::default()
        })
        .expect("a registry on an empty data dir should open");
        Persistent {
            registry,
            _dir: dir,
        }
    }
}

#[async_trait::async_trait]
impl Registry for Persistent {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.registry.get(key).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.registry.range(req).await
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        self.registry.put(key, value, lease).await
    }

    async fn delete(&self, key: &[u8]) -> Result<DeleteResponse> {
        self.registry.delete(key).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.registry.txn(txn).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease> {
        self.registry.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        self.registry.lease_keep_alive(id).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.registry.lease_revoke(id).await
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<Option<Duration>> {
        self.registry.lease_time_to_live(id).await
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream> {
        self.registry.watch(prefix, from_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.registry.compact(revision).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.registry.current_revision().await
    }
}

/// `run_all` is the entry point for backends that want one test: check it runs
/// the kit to the end (on the in-memory backend, with fewer model cases).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_passes_on_memory() {
    shardcron_registry::conformance::run_all(shardcron_registry::conformance::factory(|| async {
        MemoryRegistry::new()
    }))
    .await;
}
