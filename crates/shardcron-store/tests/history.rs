//! The history store kit (tests/kit) on SQLite, a real PostgreSQL 15 and a real
//! MariaDB, each started by the test on a free loopback port in a temporary
//! directory. A server that cannot start fails the test with its log's tail.

#[macro_use]
mod kit;

mod sqlite {
    store_conformance_tests!(crate::kit::Sqlite::start);
}

mod postgres {
    store_conformance_tests!(crate::kit::Postgres::start);
}

mod mariadb {
    store_conformance_tests!(crate::kit::MariaDb::start);
}

/// The child process of the kill -9 cases (does nothing unless started by one).
#[test]
fn kill9_child() {
    kit::kill9_child();
}

/// Nodes that share one SQLite history and start together all get a schema (sqlx
/// takes no migration lock on SQLite; the store serializes with a lock file).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_nodes_starting_together_all_migrate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/shared.db", dir.path().display());
    for round in 0..5 {
        let url = format!("{url}{round}");
        let starts: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { shardcron_store::HistoryStore::connect(&url).await })
            })
            .collect();
        for s in starts {
            let store = s.await.expect("task");
            assert!(store.is_ok(), "round {round}: {:?}", store.err());
        }
    }
}
