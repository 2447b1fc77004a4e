//! The audit log on SQLite, a real PostgreSQL and a real MariaDB (started by the
//! test kit in tests/kit, one fresh database per case).

#[allow(unused_macros)]
#[macro_use]
mod kit;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use shardcron_store::{
    AuditEntry, AuditQuery, Backend, DEFAULT_AUDIT_PAGE, ExecutionQuery, HistoryEvent,
    HistoryStore, MAX_AUDIT_ACTION_LEN, MAX_AUDIT_ACTOR_LEN, MAX_AUDIT_DETAIL_BYTES,
    MAX_AUDIT_TARGET_LEN,
};

use crate::kit::{TestDb, at, options, running};

async fn connect(db: &Arc<dyn TestDb>) -> HistoryStore {
    HistoryStore::connect_with(&db.url(), options())
        .await
        .unwrap_or_else(|e| panic!("connect to the test database: {e}"))
}

fn entry(at: DateTime<Utc>, actor: &str, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        at,
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        detail: json!({"n": target}),
    }
}

fn query(limit: u32, offset: u64) -> AuditQuery {
    AuditQuery {
        limit,
        offset,
        ..AuditQuery::default()
    }
}

fn targets(entries: &[AuditEntry]) -> Vec<String> {
    entries.iter().map(|e| e.target.clone()).collect()
}

/// Entries come back as written (microsecond times, JSON details), newest first
/// with ties in reverse recording order, filtered by actor and action, in pages
/// whose `next_offset` is set exactly when more entries follow.
pub(crate) async fn audit_round_trip_filters_and_pages(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let empty = store.audit(&AuditQuery::default()).await.expect("empty");
    assert!(empty.entries.is_empty());
    assert_eq!(empty.next_offset, None);

    let detail = json!({
        "job": "orders",
        "changes": {"shards": [4, 8], "every": "5s"},
        "note": "ünïcødé ✓ 𝄞",
        "nul": "a\u{0}b",
        "big": i64::MAX,
        "float": 1.5,
        "none": null,
    });
    let first = AuditEntry {
        at: at(0),
        actor: "alice".into(),
        action: "job.update".into(),
        target: "orders".into(),
        detail: detail.clone(),
    };
    store.record_audit(&first).await.expect("record");
    let page = store.audit(&AuditQuery::default()).await.expect("read");
    assert_eq!(page.entries, vec![first.clone()], "every field round-trips");
    assert_eq!(page.next_offset, None);

    // 25 more: t = 1..=25 ms, actors alternate, every fifth is a delete; two
    // entries share a time (the later recorded comes first).
    for i in 1..=25i64 {
        let actor = if i % 2 == 0 { "bob" } else { "token:ci" };
        let action = if i % 5 == 0 {
            "job.delete"
        } else {
            "job.update"
        };
        store
            .record_audit(&entry(at(i), actor, action, &format!("t{i:02}")))
            .await
            .expect("record");
    }
    store
        .record_audit(&entry(at(25), "bob", "job.update", "t25b"))
        .await
        .expect("record");

    let all = store.audit(&query(1000, 0)).await.expect("all");
    let mut want: Vec<String> = (1..=25).rev().map(|i| format!("t{i:02}")).collect();
    want.insert(0, "t25b".into());
    want.push("orders".into());
    assert_eq!(
        targets(&all.entries),
        want,
        "newest first, ties by recording"
    );
    assert_eq!(all.next_offset, None);
    assert_eq!(all.entries[0].at, at(25));
    assert_eq!(all.entries[1].detail, json!({"n": "t25"}));

    // Pages of 10 over 27 entries: 10, 10, 7.
    let mut offset = 0;
    let mut paged = Vec::new();
    let mut offsets = Vec::new();
    loop {
        let page = store.audit(&query(10, offset)).await.expect("page");
        assert!(page.entries.len() <= 10);
        paged.extend(targets(&page.entries));
        offsets.push(page.next_offset);
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(offsets, vec![Some(10), Some(20), None]);
    assert_eq!(paged, want, "pages add up to the whole log");
    // A page that ends exactly at the last entry has no next page.
    let exact = store.audit(&query(7, 20)).await.expect("exact");
    assert_eq!(exact.entries.len(), 7);
    assert_eq!(exact.next_offset, None);
    let beyond = store.audit(&query(10, 1000)).await.expect("beyond");
    assert!(beyond.entries.is_empty());
    assert_eq!(beyond.next_offset, None);
    // limit 0 is the default page; a huge limit is capped.
    let default = store.audit(&query(0, 0)).await.expect("default");
    assert_eq!(default.entries.len(), 27.min(DEFAULT_AUDIT_PAGE as usize));
    let huge = store.audit(&query(u32::MAX, 0)).await.expect("huge");
    assert_eq!(huge.entries.len(), 27);

    // Filters.
    let bob = store
        .audit(&AuditQuery {
            actor: Some("bob".into()),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .expect("bob");
    assert_eq!(bob.entries.len(), 13);
    assert!(bob.entries.iter().all(|e| e.actor == "bob"));
    assert_eq!(bob.entries[0].target, "t25b");
    let deletes = store
        .audit(&AuditQuery {
            action: Some("job.delete".into()),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .expect("deletes");
    assert_eq!(
        targets(&deletes.entries),
        ["t25", "t20", "t15", "t10", "t05"]
    );
    let both = store
        .audit(&AuditQuery {
            actor: Some("bob".into()),
            action: Some("job.delete".into()),
            limit: 2,
            offset: 0,
        })
        .await
        .expect("both");
    assert_eq!(targets(&both.entries), ["t20", "t10"]);
    assert_eq!(both.next_offset, None);
    let page2 = store
        .audit(&AuditQuery {
            actor: Some("token:ci".into()),
            action: Some("job.update".into()),
            limit: 3,
            offset: 3,
        })
        .await
        .expect("filtered page");
    assert_eq!(targets(&page2.entries), ["t17", "t13", "t11"]);
    assert_eq!(page2.next_offset, Some(6));
    // Exact comparison: no case folding, no prefix match.
    for actor in ["BOB", "bo", "bob "] {
        let none = store
            .audit(&AuditQuery {
                actor: Some(actor.into()),
                ..AuditQuery::default()
            })
            .await
            .expect("no match");
        assert!(none.entries.is_empty(), "{actor:?} matched");
    }
}

/// Values longer than the columns are cut (by characters, 4-byte ones
/// included), NUL is replaced, a huge detail is replaced by its start as JSON:
/// recording never fails on them.
pub(crate) async fn audit_long_values_are_cut(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let huge = json!({"blob": "é".repeat(MAX_AUDIT_DETAIL_BYTES), "n": 1});
    let e = AuditEntry {
        at: at(0),
        actor: "𝄞".repeat(1000),
        action: format!("a\0{}", "b".repeat(500)),
        target: "ü".repeat(5000),
        detail: huge.clone(),
    };
    store.record_audit(&e).await.expect("long values are cut");
    let got = store
        .audit(&AuditQuery::default())
        .await
        .expect("read")
        .entries;
    assert_eq!(got.len(), 1);
    let got = &got[0];
    assert_eq!(got.actor, "𝄞".repeat(MAX_AUDIT_ACTOR_LEN));
    assert_eq!(
        got.action,
        format!("a\u{FFFD}{}", "b".repeat(MAX_AUDIT_ACTION_LEN - 2))
    );
    assert_eq!(got.target, "ü".repeat(MAX_AUDIT_TARGET_LEN));
    assert_eq!(got.detail["truncated"], true);
    assert_eq!(got.detail["bytes"], huge.to_string().len());
    let start = got.detail["text"].as_str().expect("the start as text");
    assert!(huge.to_string().starts_with(start));
    assert!(got.detail.to_string().len() <= MAX_AUDIT_DETAIL_BYTES);
    // Exactly at the limits: kept whole.
    let e = AuditEntry {
        at: at(1),
        actor: "a".repeat(MAX_AUDIT_ACTOR_LEN),
        action: "b".repeat(MAX_AUDIT_ACTION_LEN),
        target: "c".repeat(MAX_AUDIT_TARGET_LEN),
        detail: json!("d".repeat(MAX_AUDIT_DETAIL_BYTES - 2)),
    };
    store.record_audit(&e).await.expect("record");
    let got = store
        .audit(&AuditQuery::default())
        .await
        .expect("read")
        .entries;
    assert_eq!(got[0], e);
    // Empty values are fine too.
    let e = AuditEntry {
        at: at(2),
        actor: String::new(),
        action: String::new(),
        target: String::new(),
        detail: serde_json::Value::Null,
    };
    store.record_audit(&e).await.expect("record");
    assert_eq!(
        store.audit(&query(1, 0)).await.expect("read").entries,
        vec![e]
    );
}

/// A database made before the audit log (only the history migration applied,
/// with history in it) gets the table at the next connect and keeps its history.
pub(crate) async fn audit_table_is_added_to_an_existing_history(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    store
        .write(&[HistoryEvent::Record(running("old-1", "job", 0, "inst", 0))])
        .await
        .expect("write history");
    store
        .record_audit(&entry(at(0), "alice", "job.create", "job"))
        .await
        .expect("record");
    store.close().await;
    // Back to the schema of the previous version.
    let undo = [
        "DROP TABLE shardcron_audit",
        "DELETE FROM _sqlx_migrations WHERE version = 20261201000001",
    ];
    let url = db.url();
    match db.backend() {
        Backend::Sqlite => {
            let path = url.trim_start_matches("sqlite://").to_string();
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
            )
            .await
            .expect("raw connect");
            for sql in undo {
                sqlx::query(sql).execute(&pool).await.expect(sql);
            }
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.expect("raw connect");
            for sql in undo {
                sqlx::query(sql).execute(&pool).await.expect(sql);
            }
            pool.close().await;
        }
        Backend::MySql => {
            let pool = sqlx::MySqlPool::connect(&url).await.expect("raw connect");
            for sql in undo {
                sqlx::query(sql).execute(&pool).await.expect(sql);
            }
            pool.close().await;
        }
    }
    let store = connect(&db).await;
    assert!(
        store
            .audit(&AuditQuery::default())
            .await
            .expect("the table is back")
            .entries
            .is_empty()
    );
    store
        .record_audit(&entry(at(1), "bob", "job.delete", "job"))
        .await
        .expect("record after the upgrade");
    assert_eq!(
        store
            .audit(&AuditQuery::default())
            .await
            .expect("read")
            .entries
            .len(),
        1
    );
    let history = store
        .query(&ExecutionQuery::default())
        .await
        .expect("history");
    assert_eq!(history.items.len(), 1, "the history is kept");
    assert_eq!(history.items[0].id, "old-1");
}

/// One `#[test]` per audit case for the backend made by `$make`.
macro_rules! audit_tests {
    ($make:expr) => {
        audit_tests!(@cases $make, [
            audit_round_trip_filters_and_pages,
            audit_long_values_are_cut,
            audit_table_is_added_to_an_existing_history,
        ]);
    };
    (@cases $make:expr, [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                crate::kit::run_case(
                    ::std::stringify!($case),
                    $make,
                    |db| ::std::boxed::Box::pin(crate::$case(db)),
                );
            }
        )*
    };
}

mod sqlite {
    audit_tests!(crate::kit::Sqlite::start);
}

mod postgres {
    audit_tests!(crate::kit::Postgres::start);
}

mod mariadb {
    audit_tests!(crate::kit::MariaDb::start);
}
