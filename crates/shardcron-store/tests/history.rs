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
