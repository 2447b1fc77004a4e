//! The history store test kit: every case runs unchanged on SQLite, PostgreSQL
//! and MariaDB. A backend hands the kit a [`TestDb`] (a fresh, empty database it
//! can stop and start); `store_conformance_tests!` gives every case its own
//! `#[test]` per backend.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use shardcron_core::execution::SkipReason;
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus};
use shardcron_store::{
    Backend, ExecutionQuery, ExecutionUpdate, HistoryEvent, HistoryStore, HistoryWriter, SortKey,
    StoreError, StoreOptions, WriterOptions,
};
use shardcron_testkit::{MariaDbServer, PostgresServer};

/// A database for one case.
pub(crate) trait TestDb: Send + Sync + 'static {
    /// Which backend.
    fn backend(&self) -> Backend;
    /// The URL of a fresh, empty database.
    fn url(&self) -> String;
    /// Make the database unavailable (stop the server; for SQLite, hold an
    /// exclusive lock on the file) until [`TestDb::start`].
    fn stop(&self);
    /// Make it available again (same data).
    fn start(&self);
    /// A URL of this backend where nothing answers, with a password in it.
    fn unreachable_url(&self) -> String;
    /// The password in [`TestDb::url`], to check that no message shows it.
    fn password(&self) -> Option<String>;
}

pub(crate) type Factory = fn() -> Arc<dyn TestDb>;
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// ---------------------------------------------------------------------------
// Backends

pub(crate) struct Sqlite {
    dir: tempfile::TempDir,
    lock: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Sqlite {
    pub(crate) fn start() -> Arc<dyn TestDb> {
        Arc::new(Sqlite {
            dir: tempfile::tempdir().expect("tempdir"),
            lock: Mutex::new(None),
        })
    }
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("db").join("history.db")
    }
}

impl TestDb for Sqlite {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
    fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }
    fn stop(&self) {
        // Another connection takes the write lock and keeps it: every write of the
        // store then fails after its busy timeout, as with a database that hangs.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let path = self.path();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                    .await
                    .expect("locking connection");
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .expect("exclusive lock");
                ready_tx.send(()).expect("signal locked");
                let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
                sqlx::query("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("release lock");
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sqlite lock taken");
        *self.lock.lock().expect("lock") = Some(tx);
    }
    fn start(&self) {
        if let Some(tx) = self.lock.lock().expect("lock").take() {
            let _ = tx.send(());
        }
    }
    fn unreachable_url(&self) -> String {
        // A path that cannot be created.
        "sqlite:///proc/shardcron-no-such-dir/history.db".into()
    }
    fn password(&self) -> Option<String> {
        None
    }
}

pub(crate) struct Postgres(Mutex<PostgresServer>);

impl Postgres {
    pub(crate) fn start() -> Arc<dyn TestDb> {
        Arc::new(Postgres(Mutex::new(PostgresServer::start())))
    }
}

impl TestDb for Postgres {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn url(&self) -> String {
        self.0.lock().expect("lock").url()
    }
    fn stop(&self) {
        self.0.lock().expect("lock").stop();
    }
    fn start(&self) {
        self.0.lock().expect("lock").restart();
    }
    fn unreachable_url(&self) -> String {
        format!(
            "postgres://shardcron:Unreachable-Secret-1@127.0.0.1:{}/shardcron",
            shardcron_testkit::free_port()
        )
    }
    fn password(&self) -> Option<String> {
        Some(self.0.lock().expect("lock").password().to_string())
    }
}

pub(crate) struct MariaDb(Mutex<MariaDbServer>);

impl MariaDb {
    pub(crate) fn start() -> Arc<dyn TestDb> {
        Arc::new(MariaDb(Mutex::new(MariaDbServer::start())))
    }
}

impl TestDb for MariaDb {
    fn backend(&self) -> Backend {
        Backend::MySql
    }
    fn url(&self) -> String {
        self.0.lock().expect("lock").url()
    }
    fn stop(&self) {
        self.0.lock().expect("lock").stop();
    }
    fn start(&self) {
        self.0.lock().expect("lock").restart();
    }
    fn unreachable_url(&self) -> String {
        format!(
            "mysql://shardcron:Unreachable-Secret-1@127.0.0.1:{}/shardcron",
            shardcron_testkit::free_port()
        )
    }
    fn password(&self) -> Option<String> {
        Some(self.0.lock().expect("lock").password().to_string())
    }
}

// ---------------------------------------------------------------------------
// Running cases

/// How long a whole case may take.
pub(crate) const CASE_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) fn run_case(name: &str, make: Factory, case: fn(Arc<dyn TestDb>) -> BoxFuture<()>) {
    let db = make();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        if tokio::time::timeout(CASE_TIMEOUT, case(db)).await.is_err() {
            panic!("case {name} did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

async fn blocking(f: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(f).await.expect("blocking task");
}

/// Store options for tests: SQLite gives up on a lock after 1 s.
pub(crate) fn options() -> StoreOptions {
    StoreOptions {
        sqlite_busy_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
        ..StoreOptions::default()
    }
}

async fn connect(db: &Arc<dyn TestDb>) -> HistoryStore {
    HistoryStore::connect_with(&db.url(), options())
        .await
        .unwrap_or_else(|e| panic!("connect to the test database: {e}"))
}

fn writer_options(dir: &std::path::Path) -> WriterOptions {
    WriterOptions {
        write_timeout: Duration::from_secs(5),
        retry_max: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(5),
        ..WriterOptions::new(dir)
    }
}

// ---------------------------------------------------------------------------
// Records

/// A fixed base time with a microsecond part, so precision is checked.
pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T10:00:00.123456Z")
        .expect("valid time")
        .with_timezone(&Utc)
}

pub(crate) fn at(ms: i64) -> DateTime<Utc> {
    t0() + TimeDelta::milliseconds(ms)
}

pub(crate) fn running(
    id: &str,
    job: &str,
    item: u32,
    instance: &str,
    start_ms: i64,
) -> ExecutionRecord {
    ExecutionRecord {
        id: id.into(),
        job: job.into(),
        item,
        total: 8,
        fire_time: at(start_ms - 5),
        fire_time_end: None,
        skipped_count: None,
        started_at: at(start_ms),
        ended_at: None,
        instance: instance.into(),
        host: "host-a".into(),
        source: ExecutionSource::Normal,
        status: ExecutionStatus::Running,
        skip_reason: None,
        attempt: 1,
        token: 1000 + i64::from(item),
        cause: None,
        output: None,
    }
}

pub(crate) fn finished(
    r: &ExecutionRecord,
    status: ExecutionStatus,
    dur_ms: i64,
) -> ExecutionRecord {
    let mut r = r.clone();
    r.status = status;
    r.ended_at = Some(r.started_at + TimeDelta::milliseconds(dur_ms));
    if status != ExecutionStatus::Succeeded {
        r.cause = Some(format!("{status} cause"));
    }
    r
}

pub(crate) fn update(id: &str, status: ExecutionStatus, at_ms: i64) -> HistoryEvent {
    HistoryEvent::Update(ExecutionUpdate {
        output: Some(format!("output of {id}")),
        ..ExecutionUpdate::finished(id, status, at(at_ms))
    })
}

fn q() -> ExecutionQuery {
    ExecutionQuery {
        limit: 10_000,
        ..ExecutionQuery::default()
    }
}

async fn all_ids(store: &HistoryStore, mut query: ExecutionQuery) -> Vec<String> {
    query.limit = 10_000;
    store
        .query(&query)
        .await
        .expect("query")
        .items
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// Every transition in feed order as (execution id, state).
async fn feed(store: &HistoryStore) -> Vec<(String, ExecutionStatus)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.transitions_after(after, 10_000).await.expect("feed");
        let Some(last) = page.last() else {
            // Where a feed that wants only new transitions starts: the end.
            let end = store.last_transition_seq().await.expect("feed position");
            assert_eq!(end, after, "last_transition_seq is the newest seq");
            assert!(
                store
                    .transitions_after(end, 10)
                    .await
                    .expect("feed")
                    .is_empty()
            );
            break;
        };
        after = last.seq;
        out.extend(
            page.into_iter()
                .map(|e| (e.execution_id, e.transition.state)),
        );
    }
    out
}

/// The (id, state) a transition of `e` shows in the feed.
fn feed_entry(e: &HistoryEvent) -> (String, ExecutionStatus) {
    match e {
        HistoryEvent::Record(r) => (r.id.clone(), r.status),
        HistoryEvent::Update(u) => (u.id.clone(), u.status),
    }
}

// ---------------------------------------------------------------------------
// Cases

/// Connecting twice migrates twice without harm; an empty store answers queries.
pub(crate) async fn connect_migrates_idempotently(db: Arc<dyn TestDb>) {
    let a = connect(&db).await;
    let b = connect(&db).await;
    assert_eq!(a.backend(), db.backend());
    b.migrate().await.expect("third migration is a no-op");
    assert!(a.query(&q()).await.expect("query").items.is_empty());
    assert_eq!(a.count(&q()).await.expect("count"), 0);
    assert!(a.execution("nope").await.expect("read").is_none());
    if let Some(pw) = db.password() {
        assert!(
            !a.url().contains(&pw),
            "url() masks the password: {}",
            a.url()
        );
        assert!(a.url().contains("***"));
        let debug = format!("{a:?}");
        assert!(!debug.contains(&pw), "Debug shows the password: {debug}");
    }
}

/// Every field survives the round trip at microsecond precision, on every
/// database; SKIPPED ranges keep their reason and count; text is cleaned.
pub(crate) async fn round_trip_every_field(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let mut a = running("rt-a", "orders", 3, "inst-1", 0);
    a.source = ExecutionSource::Failover;
    a.attempt = 2;
    a.token = i64::MAX - 7;
    a.fire_time = DateTime::parse_from_rfc3339("2026-03-01T09:59:59.999999Z")
        .expect("time")
        .with_timezone(&Utc);
    let a_done = {
        let mut d = finished(&a, ExecutionStatus::Failed, 1234);
        d.output = Some("ünïcødé ✓ and a NUL \0 byte".into());
        d
    };
    let mut skipped = running("rt-s", "orders", 4, "inst-1", 10);
    skipped.status = ExecutionStatus::Skipped;
    skipped.skip_reason = Some(SkipReason::MisfirePolicy);
    skipped.fire_time_end = Some(at(60_000));
    skipped.skipped_count = Some(12);
    skipped.token = 0;
    let long_id = "x".repeat(64);
    let mut long = running(&long_id, &"j".repeat(255), u32::MAX, &"i".repeat(255), 20);
    long.total = u32::MAX;
    let writer_dir = tempfile::tempdir().expect("tempdir");
    let writer = HistoryWriter::start(store.clone(), writer_options(writer_dir.path()))
        .await
        .expect("writer");
    for e in [
        HistoryEvent::Record(a.clone()),
        HistoryEvent::Record(a_done.clone()),
        HistoryEvent::Record(skipped.clone()),
        HistoryEvent::Record(long.clone()),
    ] {
        writer.record(e).expect("record");
    }
    writer.flush(Duration::from_secs(30)).await.expect("flush");
    let got = store
        .execution("rt-a")
        .await
        .expect("read")
        .expect("present");
    let mut want = a_done.clone();
    want.output = Some("ünïcødé ✓ and a NUL \u{FFFD} byte".into());
    assert_eq!(got.record, want);
    let states: Vec<_> = got.transitions.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        vec![ExecutionStatus::Running, ExecutionStatus::Failed]
    );
    assert_eq!(got.transitions[0].at, a.started_at);
    assert_eq!(got.transitions[1].at, a_done.ended_at.expect("end"));
    assert_eq!(got.transitions[1].message.as_deref(), Some("FAILED cause"));
    let s = store
        .execution("rt-s")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(s.record, skipped);
    assert_eq!(
        s.transitions[0].message.as_deref(),
        Some("misfire_policy (12 fires)")
    );
    let l = store
        .execution(&long_id)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(l.record, long);
    // Refused before queueing: nothing any database could store.
    let err = writer
        .record(HistoryEvent::Record(running(
            &"y".repeat(65),
            "j",
            0,
            "i",
            0,
        )))
        .expect_err("too long id");
    assert!(matches!(err, StoreError::InvalidEvent(_)), "{err}");
    writer.shutdown().await.expect("shutdown");
}

/// An update that lands before its record is kept and merged: the execution
/// ends up complete and in its final state, whichever order the two arrive in.
pub(crate) async fn update_before_record_is_kept(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let r = running("ub-1", "job", 1, "inst", 0);
    store
        .write(&[update("ub-1", ExecutionStatus::Succeeded, 500)])
        .await
        .expect("update first");
    assert!(
        store.execution("ub-1").await.expect("read").is_none(),
        "an update alone does not make an execution visible"
    );
    assert_eq!(store.count(&q()).await.expect("count"), 0);
    store
        .write(&[HistoryEvent::Record(r.clone())])
        .await
        .expect("record later");
    let got = store
        .execution("ub-1")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(got.record.status, ExecutionStatus::Succeeded);
    assert_eq!(got.record.job, "job");
    assert_eq!(got.record.started_at, r.started_at);
    assert_eq!(got.record.ended_at, Some(at(500)));
    assert_eq!(got.record.output.as_deref(), Some("output of ub-1"));
    assert_eq!(got.transitions.len(), 2);
    // Same events, natural order, other id: same result.
    let mut r2 = r.clone();
    r2.id = "ub-2".into();
    store
        .write(&[
            HistoryEvent::Record(r2),
            update("ub-2", ExecutionStatus::Succeeded, 500),
        ])
        .await
        .expect("natural order");
    let mut got2 = store
        .execution("ub-2")
        .await
        .expect("read")
        .expect("present")
        .record;
    got2.id = "ub-1".into();
    got2.output = Some("output of ub-1".into());
    assert_eq!(got2, got.record);
}

/// Replaying events (a crash after commit, before the spool was truncated)
/// adds no row and no transition, in any batching.
pub(crate) async fn replay_is_idempotent(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let mut events = Vec::new();
    for i in 0..300 {
        let r = running(&format!("rp-{i:04}"), "job", i % 8, "inst", i64::from(i));
        events.push(HistoryEvent::Record(r));
        if i % 2 == 0 {
            events.push(update(
                &format!("rp-{i:04}"),
                ExecutionStatus::Succeeded,
                i64::from(i) + 100,
            ));
        }
    }
    store.write(&events).await.expect("first write");
    let rows = store.query(&q()).await.expect("query").items;
    let transitions = feed(&store).await;
    assert_eq!(rows.len(), 300);
    assert_eq!(transitions.len(), events.len());
    store.write(&events).await.expect("replay whole");
    for chunk in events.chunks(7) {
        store.write(chunk).await.expect("replay in pieces");
    }
    // Replaying only the records (an older prefix) does not undo the updates.
    let records: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, HistoryEvent::Record(_)))
        .cloned()
        .collect();
    store.write(&records).await.expect("replay records");
    assert_eq!(store.query(&q()).await.expect("query").items, rows);
    assert_eq!(feed(&store).await, transitions);
}

/// Filters, sort orders, offset and keyset paging agree with a model.
pub(crate) async fn queries_filter_sort_and_page(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let statuses = [
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::Running,
        ExecutionStatus::TimedOut,
    ];
    let sources = [
        ExecutionSource::Normal,
        ExecutionSource::Retry,
        ExecutionSource::Manual,
    ];
    let mut model = Vec::new();
    for i in 0..240u32 {
        let job = ["alpha", "beta", "gamma"][(i % 3) as usize];
        let inst = ["i-1", "i-2"][(i % 2) as usize];
        // Start times collide in pairs, so the id tie-break matters.
        let mut r = running(
            &format!("q-{i:04}"),
            job,
            i % 5,
            inst,
            i64::from(i / 2) * 1000,
        );
        r.fire_time = at(10_000_000 - i64::from(i) * 997 % 100_000);
        r.source = sources[(i % 3) as usize];
        let s = statuses[(i % 4) as usize];
        if s != ExecutionStatus::Running {
            r = finished(&r, s, i64::from(i));
        }
        model.push(r);
    }
    let events: Vec<_> = model.iter().cloned().map(HistoryEvent::Record).collect();
    store.write(&events).await.expect("write");

    let sorted = |mut v: Vec<ExecutionRecord>, key: SortKey, asc: bool| {
        v.sort_by(|a, b| {
            let ka = match key {
                SortKey::StartedAt => a.started_at,
                SortKey::FireTime => a.fire_time,
            };
            let kb = match key {
                SortKey::StartedAt => b.started_at,
                SortKey::FireTime => b.fire_time,
            };
            (ka, &a.id).cmp(&(kb, &b.id))
        });
        if !asc {
            v.reverse();
        }
        v.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let check = |query: ExecutionQuery, pred: &dyn Fn(&ExecutionRecord) -> bool| {
        let want = sorted(
            model.iter().filter(|r| pred(r)).cloned().collect(),
            query.sort,
            query.ascending,
        );
        (query, want)
    };
    let cases = vec![
        check(q(), &|_| true),
        check(
            ExecutionQuery {
                job: Some("beta".into()),
                ..q()
            },
            &|r| r.job == "beta",
        ),
        check(
            ExecutionQuery {
                job: Some("alpha".into()),
                item: Some(3),
                ascending: true,
                ..q()
            },
            &|r| r.job == "alpha" && r.item == 3,
        ),
        check(
            ExecutionQuery {
                instance: Some("i-2".into()),
                statuses: vec![ExecutionStatus::Failed, ExecutionStatus::Running],
                ..q()
            },
            &|r| {
                r.instance == "i-2"
                    && matches!(r.status, ExecutionStatus::Failed | ExecutionStatus::Running)
            },
        ),
        check(
            ExecutionQuery {
                sources: vec![ExecutionSource::Retry],
                started_from: Some(at(20_000)),
                started_to: Some(at(80_000)),
                ..q()
            },
            &|r| {
                r.source == ExecutionSource::Retry
                    && r.started_at >= at(20_000)
                    && r.started_at < at(80_000)
            },
        ),
        check(
            ExecutionQuery {
                fire_from: Some(at(9_950_000)),
                fire_to: Some(at(9_990_000)),
                sort: SortKey::FireTime,
                ascending: true,
                ..q()
            },
            &|r| r.fire_time >= at(9_950_000) && r.fire_time < at(9_990_000),
        ),
        check(
            ExecutionQuery {
                sort: SortKey::FireTime,
                ..q()
            },
            &|_| true,
        ),
    ];
    for (query, want) in cases {
        assert!(
            !want.is_empty(),
            "the model selects something for {query:?}"
        );
        assert_eq!(all_ids(&store, query.clone()).await, want, "{query:?}");
        assert_eq!(
            store.count(&query).await.expect("count"),
            want.len() as u64,
            "count {query:?}"
        );
        // Offset paging and keyset paging, 7 at a time, give the same list.
        let mut by_offset = Vec::new();
        let mut by_key = Vec::new();
        let mut after = None;
        for page in 0.. {
            let p = store
                .query(&ExecutionQuery {
                    limit: 7,
                    offset: page * 7,
                    ..query.clone()
                })
                .await
                .expect("offset page");
            let done = p.items.len() < 7;
            by_offset.extend(p.items.into_iter().map(|r| r.id));
            let k = store
                .query(&ExecutionQuery {
                    limit: 7,
                    after: after.clone(),
                    ..query.clone()
                })
                .await
                .expect("keyset page");
            by_key.extend(k.items.into_iter().map(|r| r.id));
            after = k.next;
            if done {
                assert!(after.is_none() || by_key.len() == want.len());
                break;
            }
        }
        assert_eq!(by_offset, want, "offset paging {query:?}");
        assert_eq!(by_key, want, "keyset paging {query:?}");
    }
    // A default page is 100 rows.
    let p = store
        .query(&ExecutionQuery::default())
        .await
        .expect("default page");
    assert_eq!(p.items.len(), 100);
    assert!(p.next.is_some());
}

/// Per-job counts, success rate, percentiles, skipped fires and last run.
pub(crate) async fn job_summary_is_correct(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let mut events = Vec::new();
    // 100 runs of "sum" lasting 1..=100 ms: 90 succeeded, 5 failed, 5 timed out.
    for i in 1..=100i64 {
        let r = running(&format!("s-{i:03}"), "sum", 0, "inst", i * 1000);
        let s = match i {
            1..=90 => ExecutionStatus::Succeeded,
            91..=95 => ExecutionStatus::Failed,
            _ => ExecutionStatus::TimedOut,
        };
        events.push(HistoryEvent::Record(finished(&r, s, i)));
    }
    // Before the window: does not count.
    events.push(HistoryEvent::Record(finished(
        &running("s-old", "sum", 0, "inst", -10_000_000),
        ExecutionStatus::Failed,
        5,
    )));
    // A lost run and one still running, both in the window, newest of all.
    events.push(HistoryEvent::Record({
        let mut r = running("s-lost", "sum", 1, "inst", 200_000);
        r.status = ExecutionStatus::Lost;
        r
    }));
    let last = running("s-run", "sum", 2, "inst", 300_000);
    events.push(HistoryEvent::Record(last.clone()));
    // Skipped: one range of 12 fires, one single, and a later one that is not
    // the "last run".
    for (id, n, ms) in [
        ("s-k1", Some(12), 50_000),
        ("s-k2", None, 60_000),
        ("s-k3", Some(3), 400_000),
    ] {
        let mut r = running(id, "sum", 3, "inst", ms);
        r.status = ExecutionStatus::Skipped;
        r.skip_reason = Some(SkipReason::StillRunning);
        r.skipped_count = n;
        events.push(HistoryEvent::Record(r));
    }
    // Another job does not leak in.
    events.push(HistoryEvent::Record(finished(
        &running("other", "other", 0, "inst", 5000),
        ExecutionStatus::Failed,
        9999,
    )));
    store.write(&events).await.expect("write");
    let s = store.job_summary("sum", at(0)).await.expect("summary");
    let count = |st: ExecutionStatus| {
        s.counts
            .iter()
            .find(|(c, _)| *c == st)
            .map(|(_, n)| *n)
            .expect("every status listed")
    };
    assert_eq!(s.counts.len(), ExecutionStatus::ALL.len());
    assert_eq!(count(ExecutionStatus::Succeeded), 90);
    assert_eq!(count(ExecutionStatus::Failed), 5);
    assert_eq!(count(ExecutionStatus::TimedOut), 5);
    assert_eq!(count(ExecutionStatus::Lost), 1);
    assert_eq!(count(ExecutionStatus::Running), 1);
    assert_eq!(count(ExecutionStatus::Skipped), 3);
    assert_eq!(s.skipped_fires, 12 + 1 + 3);
    let rate = s.success_rate.expect("rate");
    assert!((rate - 90.0 / 101.0).abs() < 1e-9, "{rate}");
    assert_eq!(s.p50, Some(Duration::from_millis(50)));
    assert_eq!(s.p99, Some(Duration::from_millis(99)));
    assert_eq!(s.last.as_ref().map(|r| r.id.as_str()), Some("s-run"));
    assert_eq!(s.last, Some(last));
    let empty = store.job_summary("nothing", at(0)).await.expect("summary");
    assert_eq!(empty.success_rate, None);
    assert_eq!(empty.p50, None);
    assert!(empty.last.is_none());
}

/// Marking a dead instance LOST touches exactly its RUNNING executions, records
/// the transition, and a real outcome that lands later still wins.
pub(crate) async fn mark_instance_lost(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let mut events = Vec::new();
    for i in 0..30u32 {
        let inst = if i % 3 == 0 { "dead-1" } else { "alive-2" };
        let r = running(&format!("ml-{i:03}"), "job", i % 8, inst, i64::from(i));
        events.push(HistoryEvent::Record(if i % 2 == 0 {
            r
        } else {
            finished(&r, ExecutionStatus::Succeeded, 10)
        }));
    }
    // An update-only placeholder of the dead instance's id space: not a record.
    events.push(update("ml-placeholder", ExecutionStatus::Running, 5));
    store.write(&events).await.expect("write");
    let want: Vec<String> = (0..30u32)
        .filter(|i| i % 3 == 0 && i % 2 == 0)
        .map(|i| format!("ml-{i:03}"))
        .collect();
    let got = store
        .mark_instance_lost("dead-1", at(100_000), "instance dead-1 expired")
        .await
        .expect("mark lost");
    assert_eq!(got, want);
    for id in &want {
        let d = store.execution(id).await.expect("read").expect("present");
        assert_eq!(d.record.status, ExecutionStatus::Lost, "{id}");
        assert_eq!(d.record.cause.as_deref(), Some("instance dead-1 expired"));
        let last = d.transitions.last().expect("transition");
        assert_eq!(last.state, ExecutionStatus::Lost);
        assert_eq!(last.at, at(100_000));
    }
    let lost = store
        .query(&ExecutionQuery {
            statuses: vec![ExecutionStatus::Lost],
            ..q()
        })
        .await
        .expect("query");
    assert_eq!(lost.items.len(), want.len(), "nothing else became LOST");
    let alive_running = store
        .count(&ExecutionQuery {
            instance: Some("alive-2".into()),
            statuses: vec![ExecutionStatus::Running],
            ..q()
        })
        .await
        .expect("count");
    assert_eq!(alive_running, 10, "the live instance is untouched");
    assert!(
        store
            .mark_instance_lost("dead-1", at(100_001), "again")
            .await
            .expect("second call")
            .is_empty()
    );
    // The holder's own (spooled) outcome arrives afterwards: it wins over LOST.
    store
        .write(&[update(&want[0], ExecutionStatus::Succeeded, 50_000)])
        .await
        .expect("late outcome");
    let d = store
        .execution(&want[0])
        .await
        .expect("read")
        .expect("present");
    assert_eq!(d.record.status, ExecutionStatus::Succeeded);
    // And its late RUNNING record (replayed from a spool) does not revive it.
    store
        .write(&[HistoryEvent::Record(running(
            &want[1], "job", 0, "dead-1", 0,
        ))])
        .await
        .expect("late running");
    let d = store
        .execution(&want[1])
        .await
        .expect("read")
        .expect("present");
    assert_eq!(d.record.status, ExecutionStatus::Lost);
}

/// Retention deletes by age in bounded batches until done, with transitions.
pub(crate) async fn retention_deletes_in_batches(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let mut events = Vec::new();
    for i in 0..1100i64 {
        let r = running(&format!("old-{i:05}"), "job", 0, "inst", -1_000_000 + i);
        events.push(HistoryEvent::Record(r));
        events.push(update(
            &format!("old-{i:05}"),
            ExecutionStatus::Succeeded,
            0,
        ));
    }
    for i in 0..50i64 {
        events.push(HistoryEvent::Record(running(
            &format!("new-{i:03}"),
            "job",
            0,
            "inst",
            10 + i,
        )));
    }
    for chunk in events.chunks(1000) {
        store.write(chunk).await.expect("write");
    }
    assert_eq!(feed(&store).await.len(), 1100 * 2 + 50);
    let deleted = store
        .delete_older_than(at(0), 300)
        .await
        .expect("retention");
    assert_eq!(deleted, 1100);
    let left = all_ids(&store, q()).await;
    assert_eq!(left.len(), 50);
    assert!(left.iter().all(|id| id.starts_with("new-")));
    let f = feed(&store).await;
    assert_eq!(f.len(), 50, "transitions of deleted executions are gone");
    assert_eq!(store.delete_older_than(at(0), 300).await.expect("again"), 0);
}

/// The writer batches a stream of starts and finishes into the database;
/// `flush` waits for it; stats count it.
pub(crate) async fn writer_batches_and_flushes(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = HistoryWriter::start(store.clone(), writer_options(dir.path()))
        .await
        .expect("writer");
    let n = 3000;
    let mut expected = Vec::new();
    for i in 0..n {
        let id = format!("w-{i:05}");
        let e = HistoryEvent::Record(running(&id, "job", (i % 8) as u32, "inst", i));
        expected.push(feed_entry(&e));
        writer.record(e).expect("record");
        if i >= 10 {
            let e = update(&format!("w-{:05}", i - 10), ExecutionStatus::Succeeded, i);
            expected.push(feed_entry(&e));
            writer.record(e).expect("record");
        }
    }
    writer.flush(Duration::from_secs(60)).await.expect("flush");
    let stats = writer.stats();
    assert_eq!(stats.recorded, expected.len() as u64);
    assert_eq!(stats.written, expected.len() as u64);
    assert_eq!(stats.queued, 0);
    assert_eq!(stats.spooled, 0);
    assert!(stats.db_available);
    assert!(
        stats.batches < expected.len() as u64 / 4,
        "events are batched: {} batches for {} events",
        stats.batches,
        expected.len()
    );
    assert_eq!(store.count(&q()).await.expect("count"), n as u64);
    let succeeded = store
        .count(&ExecutionQuery {
            statuses: vec![ExecutionStatus::Succeeded],
            ..q()
        })
        .await
        .expect("count");
    assert_eq!(succeeded, n as u64 - 10);
    assert_eq!(feed(&store).await, expected, "recorded order is kept");
    let final_stats = writer.shutdown().await.expect("shutdown");
    assert_eq!(final_stats.spooled, 0);
}

/// The database stops for several seconds mid-stream: the writer keeps
/// accepting records, spools them, and once the database is back every record
/// is there, in order, none twice.
pub(crate) async fn database_down_mid_stream(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = HistoryWriter::start(store.clone(), writer_options(dir.path()))
        .await
        .expect("writer");
    let mut expected = Vec::new();
    let mut i = 0i64;
    let record = |writer: &HistoryWriter, expected: &mut Vec<_>, i: &mut i64| {
        let id = format!("d-{:06}", *i);
        let e = HistoryEvent::Record(running(&id, "job", (*i % 8) as u32, "inst", *i));
        expected.push(feed_entry(&e));
        let started = Instant::now();
        writer.record(e).expect("record");
        if *i >= 5 {
            let e = update(&format!("d-{:06}", *i - 5), ExecutionStatus::Succeeded, *i);
            expected.push(feed_entry(&e));
            writer.record(e).expect("record");
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "record() must not wait: took {:?}",
            started.elapsed()
        );
        *i += 1;
    };
    // Up: a steady stream.
    for _ in 0..400 {
        record(&writer, &mut expected, &mut i);
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    writer
        .flush(Duration::from_secs(30))
        .await
        .expect("flush while up");
    let db2 = db.clone();
    blocking(move || db2.stop()).await;
    // Down for several seconds, records keep coming.
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_secs(4) {
        for _ in 0..20 {
            record(&writer, &mut expected, &mut i);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = writer.stats();
    assert!(!s.db_available, "the writer noticed the outage: {s:?}");
    assert!(s.spooled > 0, "records went to the spool: {s:?}");
    assert!(
        s.queued < 2000,
        "records do not pile up in memory during an outage: {s:?}"
    );
    assert!(s.spool_bytes > 0);
    assert!(
        s.spool_age.is_some_and(|a| a >= Duration::from_secs(1)),
        "the spool's age is reported: {s:?}"
    );
    if let Some(pw) = db.password() {
        assert!(
            !s.last_error.as_deref().unwrap_or_default().contains(&pw),
            "errors never show the password"
        );
    }
    let db2 = db.clone();
    blocking(move || db2.start()).await;
    // Back up, still recording.
    for _ in 0..200 {
        record(&writer, &mut expected, &mut i);
    }
    writer
        .flush(Duration::from_secs(120))
        .await
        .expect("flush after outage");
    let s = writer.stats();
    assert!(s.db_available);
    assert_eq!(s.spooled, 0);
    assert_eq!(s.queued, 0);
    let f = feed(&store).await;
    assert_eq!(f.len(), expected.len(), "no transition missing or doubled");
    assert_eq!(f, expected, "every record, in recorded order");
    assert_eq!(store.count(&q()).await.expect("count"), i as u64);
    let ids: HashSet<String> = all_ids(&store, q()).await.into_iter().collect();
    assert_eq!(ids.len(), i as usize, "no duplicate rows");
    writer.shutdown().await.expect("shutdown");
}

/// A graceful shutdown while the database is down leaves everything in the
/// spool; the next writer on the same spool writes it, before anything new.
pub(crate) async fn shutdown_spools_and_next_start_replays(db: Arc<dyn TestDb>) {
    let store = connect(&db).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db2 = db.clone();
    blocking(move || db2.stop()).await;
    let writer = HistoryWriter::start(store.clone(), writer_options(dir.path()))
        .await
        .expect("writer");
    let mut expected = Vec::new();
    for i in 0..500i64 {
        let e = HistoryEvent::Record(running(&format!("s-{i:04}"), "job", 0, "inst", i));
        expected.push(feed_entry(&e));
        writer.record(e).expect("record");
    }
    let stats = writer.shutdown().await.expect("shutdown");
    assert_eq!(
        stats.spooled, 500,
        "shutdown leaves everything in the spool"
    );
    drop(writer);
    let db2 = db.clone();
    blocking(move || db2.start()).await;
    let writer = HistoryWriter::start(store.clone(), writer_options(dir.path()))
        .await
        .expect("second writer");
    assert_eq!(writer.stats().spooled, 500, "the spool is found at start");
    let e = update("s-0000", ExecutionStatus::Succeeded, 1000);
    expected.push(feed_entry(&e));
    writer.record(e).expect("record");
    writer.flush(Duration::from_secs(60)).await.expect("flush");
    assert_eq!(feed(&store).await, expected);
    assert_eq!(writer.stats().spooled, 0);
    assert_eq!(
        store
            .execution("s-0000")
            .await
            .expect("read")
            .expect("present")
            .record
            .status,
        ExecutionStatus::Succeeded
    );
    writer.shutdown().await.expect("shutdown");
}

/// Wrong URLs, unreachable servers, a wrong password and a failed migration
/// give errors that name the URL, mask the password and say why.
pub(crate) async fn bad_urls_and_unreachable_servers(db: Arc<dyn TestDb>) {
    for (url, kind) in [
        ("redis://u:Secret-XYZ@127.0.0.1:6379/0", "unknown scheme"),
        ("postgres://u:Secret-XYZ@127.0.0.1:notaport/db", "port"),
        ("sqlite://", "missing file path"),
        ("mysql:Secret-XYZ", "expected SCHEME://"),
        ("", "expected sqlite://PATH"),
    ] {
        let err = HistoryStore::connect_with(url, options())
            .await
            .expect_err("bad url");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::BadUrl { .. }), "{url}: {msg}");
        assert!(msg.contains(kind), "{url}: {msg}");
        assert!(!msg.contains("Secret-XYZ"), "{url}: password shown: {msg}");
    }
    let url = db.unreachable_url();
    let started = Instant::now();
    let err = HistoryStore::connect_with(&url, options())
        .await
        .expect_err("unreachable");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{msg}");
    assert!(
        msg.contains(&shardcron_store::mask_url(&url)),
        "names the URL: {msg}"
    );
    assert!(
        !msg.contains("Unreachable-Secret-1"),
        "password shown: {msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "fails in time");
    if let Some(pw) = db.password() {
        // Right server, wrong password.
        let wrong = db.url().replace(&pw, "Wrong-Password-2");
        let err = HistoryStore::connect_with(&wrong, options())
            .await
            .expect_err("wrong password");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Connect { .. }), "{msg}");
        assert!(
            !msg.contains("Wrong-Password-2") && !msg.contains(&pw),
            "{msg}"
        );
        assert!(msg.contains("***"), "{msg}");
    }
    // A table in the way: the migration fails and says so.
    let url = db.url();
    let bad_table = "CREATE TABLE shardcron_executions (x INTEGER)";
    match db.backend() {
        Backend::Sqlite => {
            let path = std::path::PathBuf::from(url.trim_start_matches("sqlite://"));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .expect("raw connect");
            sqlx::query(bad_table)
                .execute(&pool)
                .await
                .expect("bad table");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.expect("raw connect");
            sqlx::query(bad_table)
                .execute(&pool)
                .await
                .expect("bad table");
            pool.close().await;
        }
        Backend::MySql => {
            let pool = sqlx::MySqlPool::connect(&url).await.expect("raw connect");
            sqlx::query(bad_table)
                .execute(&pool)
                .await
                .expect("bad table");
            pool.close().await;
        }
    }
    let err = HistoryStore::connect_with(&url, options())
        .await
        .expect_err("migration must fail");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Migrate { .. }), "{msg}");
    assert!(msg.contains("migration failed"), "{msg}");
    assert!(msg.contains(&shardcron_store::mask_url(&url)), "{msg}");
    if let Some(pw) = db.password() {
        assert!(!msg.contains(&pw), "{msg}");
    }
}

// ---------------------------------------------------------------------------
// kill -9 of the writer's process

const KILL9_URL: &str = "SHARDCRON_STORE_KILL9_URL";
const KILL9_SPOOL: &str = "SHARDCRON_STORE_KILL9_SPOOL";
const KILL9_EVENTS: i64 = 2000;

fn kill9_event(i: i64) -> HistoryEvent {
    if i % 2 == 0 {
        HistoryEvent::Record(running(&format!("k-{:05}", i / 2), "job", 0, "inst", i))
    } else {
        update(&format!("k-{:05}", i / 2), ExecutionStatus::Succeeded, i)
    }
}

/// The child half: connects, waits for "go" (the parent stops the database in
/// between), records, waits until everything is spooled, says so, and waits to
/// be killed.
pub(crate) fn kill9_child() {
    let (Ok(url), Ok(spool)) = (std::env::var(KILL9_URL), std::env::var(KILL9_SPOOL)) else {
        return; // Only does something when started by the parent case.
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = HistoryStore::connect_with(&url, options())
            .await
            .expect("child connect");
        let writer = HistoryWriter::start(store, writer_options(std::path::Path::new(&spool)))
            .await
            .expect("child writer");
        println!("KILL9 connected");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).expect("read go");
        for i in 0..KILL9_EVENTS {
            writer.record(kill9_event(i)).expect("record");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while writer.stats().spooled < KILL9_EVENTS as u64 {
            assert!(
                Instant::now() < deadline,
                "not spooled: {:?}",
                writer.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("KILL9 spooled {}", writer.stats().spooled);
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

/// The next line from the child that starts with `prefix`.
fn wait_for(rx: &mut std::sync::mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // libtest prints "test NAME ... " on the same line first.
            Ok(line) if line.contains(prefix) => {
                return line[line.find(prefix).unwrap_or(0)..].to_string();
            }
            Ok(_) => {}
            Err(e) => panic!("child writer did not say {prefix:?}: {e}"),
        }
    }
}

/// The parent half: the writer's process is killed with records in the spool;
/// the next start on the same spool writes them all.
pub(crate) async fn kill9_with_records_in_the_spool(db: Arc<dyn TestDb>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["kill9_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(KILL9_URL, db.url())
        .env(KILL9_SPOOL, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child writer");
    shardcron_testkit::reap_with_this_process(child.id());
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut rx = rx;
    wait_for(&mut rx, "KILL9 connected");
    let db2 = db.clone();
    blocking(move || db2.stop()).await;
    writeln!(stdin, "go").expect("tell child to go");
    stdin.flush().expect("flush");
    let line = wait_for(&mut rx, "KILL9 spooled");
    assert_eq!(line, format!("KILL9 spooled {KILL9_EVENTS}"));
    child.kill().expect("kill -9 the writer"); // SIGKILL
    child.wait().expect("reap");

    let db2 = db.clone();
    blocking(move || db2.start()).await;
    let store = connect(&db).await;
    assert_eq!(
        store.count(&q()).await.expect("count"),
        0,
        "nothing landed before"
    );
    let writer = HistoryWriter::start(store.clone(), writer_options(dir.path()))
        .await
        .expect("writer after kill -9");
    assert_eq!(writer.stats().spooled, KILL9_EVENTS as u64);
    writer.flush(Duration::from_secs(60)).await.expect("replay");
    let want: Vec<_> = (0..KILL9_EVENTS)
        .map(|i| feed_entry(&kill9_event(i)))
        .collect();
    assert_eq!(feed(&store).await, want, "every spooled record, in order");
    let by_status: BTreeMap<String, u64> = BTreeMap::from([(
        "SUCCEEDED".to_string(),
        store
            .count(&ExecutionQuery {
                statuses: vec![ExecutionStatus::Succeeded],
                ..q()
            })
            .await
            .expect("count"),
    )]);
    assert_eq!(by_status["SUCCEEDED"], KILL9_EVENTS as u64 / 2);
    writer.shutdown().await.expect("shutdown");
}

/// Expands to one `#[test]` per case for the backend made by `$make`.
macro_rules! store_conformance_tests {
    ($make:expr) => {
        store_conformance_tests!(@cases $make, [
            connect_migrates_idempotently,
            round_trip_every_field,
            update_before_record_is_kept,
            replay_is_idempotent,
            queries_filter_sort_and_page,
            job_summary_is_correct,
            mark_instance_lost,
            retention_deletes_in_batches,
            writer_batches_and_flushes,
            database_down_mid_stream,
            shutdown_spools_and_next_start_replays,
            bad_urls_and_unreachable_servers,
            kill9_with_records_in_the_spool,
        ]);
    };
    (@cases $make:expr, [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                crate::kit::run_case(
                    ::std::stringify!($case),
                    $make,
                    |db| ::std::boxed::Box::pin(crate::kit::$case(db)),
                );
            }
        )*
    };
}
