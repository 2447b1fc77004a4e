//! The registry conformance kit run against the embedded backend, in memory and
//! persisted to a data dir (which adds the write-ahead log to every operation).

use shardcron_registry::{MemoryRegistry, MemoryRegistryOptions};

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

shardcron_registry::delegate_registry!(Persistent, registry);

/// `run_all` is the entry point for backends that want one test: check it runs
/// the kit to the end (on the in-memory backend, with fewer model cases).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_passes_on_memory() {
    shardcron_registry::conformance::run_all(shardcron_registry::conformance::factory(|| async {
        MemoryRegistry::new()
    }))
    .await;
}
