//! [`HistoryStore`]: a connection pool to one of the three databases, the
//! schema, batched idempotent writes, and the console's queries.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shardcron_core::execution::SkipReason;
use shardcron_core::{ExecutionRecord, ExecutionSource, ExecutionStatus};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ColumnIndex, Decode, Type};

use crate::audit::{
    AuditEntry, AuditPage, AuditQuery, MAX_AUDIT_ACTION_LEN, MAX_AUDIT_ACTOR_LEN,
    MAX_AUDIT_TARGET_LEN, clean_field, detail_text, detail_value,
};
use crate::event::{HistoryEvent, from_micros, micros, rows_of, status_order};
use crate::sql::{
    AUDIT, EXECUTIONS, Migrations, RECORD_COLUMNS, Sql, TRANSITIONS, Val, bigint, chunk_len,
    insert_transitions, upsert_executions,
};
use crate::url::{StoreUrl, Target};
use crate::{Backend, Result, StoreError};

/// How to connect.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections in the pool (SQLite in memory always uses one).
    pub max_connections: u32,
    /// How long connecting, or waiting for a free connection, may take.
    pub connect_timeout: Duration,
    /// How long SQLite waits for a lock held by another connection or process.
    pub sqlite_busy_timeout: Duration,
    /// Create or upgrade the schema on connect.
    pub migrate: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(5),
            migrate: true,
        }
    }
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of each backend (sqlx's
/// queries are typed by database, the SQL text is shared).
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
            Db::MySql($pool) => $body,
        }
    };
}

/// `sqlx::query($sql.text)` with every value of `$sql.args` bound.
macro_rules! query {
    ($sql:expr) => {{
        let mut q = sqlx::query(&$sql.text);
        for v in $sql.args.iter().cloned() {
            q = match v {
                Val::Int(x) => q.bind(x),
                Val::OptInt(x) => q.bind(x),
                Val::Text(x) => q.bind(x),
                Val::OptText(x) => q.bind(x),
                Val::Str(x) => q.bind(x),
            };
        }
        q
    }};
}

/// The execution history in one database.
///
/// Cheap to clone (the pool is shared). Times are stored as microseconds since
/// the Unix epoch (UTC): what is read back is what was written, truncated to the
/// microsecond.
#[derive(Clone)]
pub struct HistoryStore {
    db: Db,
    url: std::sync::Arc<StoreUrl>,
}

/// Shows the backend and the masked URL only: the connect options hold the
/// password.
impl std::fmt::Debug for HistoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryStore")
            .field("backend", &self.backend())
            .field("url", &self.url.masked)
            .finish_non_exhaustive()
    }
}

/// Filters, order and paging for [`HistoryStore::query`]. Every filter that is
/// set must hold; an empty list means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionQuery {
    /// Only this job.
    pub job: Option<String>,
    /// Only this sharding item.
    pub item: Option<u32>,
    /// Only executions of this instance identity.
    pub instance: Option<String>,
    /// Only these statuses.
    pub statuses: Vec<ExecutionStatus>,
    /// Only these sources.
    pub sources: Vec<ExecutionSource>,
    /// Started at or after.
    pub started_from: Option<DateTime<Utc>>,
    /// Started before.
    pub started_to: Option<DateTime<Utc>>,
    /// Scheduled fire time at or after.
    pub fire_from: Option<DateTime<Utc>>,
    /// Scheduled fire time before.
    pub fire_to: Option<DateTime<Utc>>,
    /// The order (ties broken by id, in the same direction).
    pub sort: SortKey,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    /// Page size: 1 to [`MAX_PAGE`]; 0 means [`DEFAULT_PAGE`].
    pub limit: u32,
    /// Rows to skip (offset paging).
    pub offset: u64,
    /// Continue after this row (keyset paging: pass the previous page's
    /// [`ExecutionPage::next`]; faster than a large offset and stable under
    /// inserts). Must come from a query with the same sort.
    pub after: Option<PageCursor>,
}

/// Page size when none is given.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page.
pub const MAX_PAGE: u32 = 10_000;

/// What [`ExecutionQuery`] sorts by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// When the run started (the default).
    #[default]
    StartedAt,
    /// The scheduled fire time.
    FireTime,
}

impl SortKey {
    fn column(self) -> &'static str {
        match self {
            SortKey::StartedAt => "started_at",
            SortKey::FireTime => "fire_time",
        }
    }
}

/// Where a page ended: the sort key's value and the id of the last row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageCursor {
    /// The last row's sort time.
    pub time: DateTime<Utc>,
    /// The last row's id.
    pub id: String,
}

/// One page of executions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPage {
    /// The rows, in the requested order.
    pub items: Vec<ExecutionRecord>,
    /// Where the next page starts, when this page is full.
    pub next: Option<PageCursor>,
}

/// One change of status of an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The status entered.
    pub state: ExecutionStatus,
    /// When.
    pub at: DateTime<Utc>,
    /// Why, if said.
    pub message: Option<String>,
}

/// A transition in the order the database recorded it (the live feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionEntry {
    /// Position in the feed: increases with every recorded transition.
    pub seq: i64,
    /// The execution.
    pub execution_id: String,
    /// The transition.
    pub transition: Transition,
}

/// One execution with its history of statuses, in the order they were recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionDetail {
    /// The execution.
    pub record: ExecutionRecord,
    /// Its transitions.
    pub transitions: Vec<Transition>,
}

/// How a job has been doing since some time.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    /// The job.
    pub job: String,
    /// Start of the window (executions started at or after it count).
    pub since: DateTime<Utc>,
    /// The latest execution that was not SKIPPED, in or before the window.
    pub last: Option<ExecutionRecord>,
    /// Executions per status in the window (every status, zeros included).
    pub counts: Vec<(ExecutionStatus, u64)>,
    /// Fires skipped in the window (a SKIPPED record may cover several).
    pub skipped_fires: u64,
    /// SUCCEEDED / (SUCCEEDED + FAILED + TIMED_OUT + CANCELLED + LOST) in the
    /// window; `None` when nothing finished.
    pub success_rate: Option<f64>,
    /// Median run time of finished runs (all but LOST and SKIPPED) in the window.
    pub p50: Option<Duration>,
    /// 99th percentile run time, same population.
    pub p99: Option<Duration>,
}

/// Typed column access that works the same on the three drivers. Text columns
/// with a binary collation (MySQL's `utf8mb4_bin`, used so that names compare
/// exactly) come back typed as VARBINARY, so text falls back to UTF-8 bytes.
trait RowExt {
    fn int(&self, i: usize) -> std::result::Result<i64, sqlx::Error>;
    fn opt_int(&self, i: usize) -> std::result::Result<Option<i64>, sqlx::Error>;
    fn text(&self, i: usize) -> std::result::Result<String, sqlx::Error>;
    fn opt_text(&self, i: usize) -> std::result::Result<Option<String>, sqlx::Error>;
}

impl<R> RowExt for R
where
    R: sqlx::Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, i: usize) -> std::result::Result<i64, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_int(&self, i: usize) -> std::result::Result<Option<i64>, sqlx::Error> {
        self.try_get(i)
    }
    fn text(&self, i: usize) -> std::result::Result<String, sqlx::Error> {
        self.opt_text(i)?.ok_or_else(|| sqlx::Error::ColumnDecode {
            index: i.to_string(),
            source: "unexpected NULL".into(),
        })
    }
    fn opt_text(&self, i: usize) -> std::result::Result<Option<String>, sqlx::Error> {
        match self.try_get::<Option<String>, _>(i) {
            Err(sqlx::Error::ColumnDecode { .. }) => self
                .try_get::<Option<Vec<u8>>, _>(i)?
                .map(String::from_utf8)
                .transpose()
                .map_err(|e| sqlx::Error::ColumnDecode {
                    index: i.to_string(),
                    source: Box::new(e),
                }),
            other => other,
        }
    }
}

/// Decodes the columns of [`RECORD_COLUMNS`] into a record; `None` for a row whose
/// stored values no longer parse (written by a newer version), which is skipped
/// with a warning rather than failing the whole page.
fn record_from_row(row: &impl RowExt) -> std::result::Result<Option<ExecutionRecord>, sqlx::Error> {
    let id = row.text(0)?;
    let source = row.text(11)?;
    let status = row.text(12)?;
    let skip_reason = row.opt_text(13)?;
    let parsed = (|| -> std::result::Result<ExecutionRecord, String> {
        let int = |i: i64, what: &str| {
            u32::try_from(i).map_err(|_| format!("{what} {i} is out of range"))
        };
        Ok(ExecutionRecord {
            id: id.clone(),
            job: row.text(1).map_err(|e| e.to_string())?,
            item: int(row.int(2).map_err(|e| e.to_string())?, "item")?,
            total: int(row.int(3).map_err(|e| e.to_string())?, "total")?,
            fire_time: from_micros(row.int(4).map_err(|e| e.to_string())?),
            fire_time_end: row.opt_int(5).map_err(|e| e.to_string())?.map(from_micros),
            skipped_count: row
                .opt_int(6)
                .map_err(|e| e.to_string())?
                .map(|n| int(n, "skipped_count"))
                .transpose()?,
            started_at: from_micros(row.int(7).map_err(|e| e.to_string())?),
            ended_at: row.opt_int(8).map_err(|e| e.to_string())?.map(from_micros),
            instance: row.text(9).map_err(|e| e.to_string())?,
            host: row.text(10).map_err(|e| e.to_string())?,
            source: source.parse()?,
            status: status.parse()?,
            skip_reason: skip_reason
                .map(|s| {
                    serde_json::from_value::<SkipReason>(serde_json::Value::String(s.clone()))
                        .map_err(|_| format!("unknown skip reason {s:?}"))
                })
                .transpose()?,
            attempt: int(row.int(14).map_err(|e| e.to_string())?, "attempt")?,
            token: row.int(15).map_err(|e| e.to_string())?,
            cause: row.opt_text(16).map_err(|e| e.to_string())?,
            output: row.opt_text(17).map_err(|e| e.to_string())?,
        })
    })();
    match parsed {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::warn!(execution = %id, "skipping unreadable history row: {e}");
            Ok(None)
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let v = sorted[rank.clamp(1, sorted.len()) - 1];
    Some(Duration::from_micros(u64::try_from(v).unwrap_or(0)))
}

/// Whether a driver error may go away by itself (connection trouble, timeouts,
/// lock contention) rather than being a problem with the statement or data.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // PostgreSQL: connection exceptions (08), insufficient resources (53),
            // operator intervention such as a shutdown (57), serialization and
            // deadlock (40). MySQL: lock wait timeout / deadlock, server gone.
            // SQLite: BUSY (5) and LOCKED (6), as extended codes.
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Too many connections, shutdown in progress, lock wait timeout,
                // deadlock, server gone away, lost connection, read-only.
                return matches!(
                    my.number(),
                    1040 | 1053 | 1205 | 1213 | 1290 | 1836 | 2006 | 2013
                ) || code.starts_with("08")
                    || code.starts_with("40");
            }
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code.starts_with("40")
                || code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}

impl HistoryStore {
    /// Connect to `url` with default options and create or upgrade the schema.
    ///
    /// A wrong URL, an unreachable server, a refused login or a failed migration
    /// is an error that names the URL (password masked) and the cause.
    pub async fn connect(url: &str) -> Result<HistoryStore> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// [`HistoryStore::connect`] with options.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<HistoryStore> {
        let url = StoreUrl::parse(url)?;
        let connect_err = |url: &StoreUrl, e: sqlx::Error| StoreError::Connect {
            url: url.masked.clone(),
            cause: url.scrub(&e.to_string()),
        };
        // Creating a SQLite file (and switching it to WAL) and migrating it race
        // between nodes that share it and start together ("database is locked",
        // "table already exists"): one at a time, under the setup lock.
        let _setup = match &url.target {
            Target::Sqlite(Some(path)) => Some(sqlite_setup_lock(&url, path).await?),
            _ => None,
        };
        let db = match &url.target {
            Target::Sqlite(path) => {
                let opts = match path {
                    // (Its directory was created with the setup lock.)
                    Some(path) => SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal),
                    None => SqliteConnectOptions::new().in_memory(true),
                };
                let opts = opts
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(options.sqlite_busy_timeout);
                let pool = SqlitePoolOptions::new()
                    .acquire_timeout(options.connect_timeout)
                    // One in-memory database per connection: keep exactly one.
                    .max_connections(if path.is_some() {
                        options.max_connections.max(1)
                    } else {
                        1
                    })
                    .min_connections(if path.is_some() { 0 } else { 1 })
                    .idle_timeout(if path.is_some() {
                        Some(Duration::from_secs(600))
                    } else {
                        None
                    })
                    .max_lifetime(if path.is_some() {
                        Some(Duration::from_secs(1800))
                    } else {
                        None
                    })
                    .connect_with(opts)
                    .await
                    .map_err(|e| connect_err(&url, e))?;
                Db::Sqlite(pool)
            }
            Target::Postgres(opts) => Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.connect_timeout)
                    .connect_with((**opts).clone())
                    .await
                    .map_err(|e| connect_err(&url, e))?,
            ),
            Target::MySql(opts) => Db::MySql(
                MySqlPoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.connect_timeout)
                    .connect_with((**opts).clone())
                    .await
                    .map_err(|e| connect_err(&url, e))?,
            ),
        };
        let store = HistoryStore {
            db,
            url: std::sync::Arc::new(url),
        };
        if options.migrate {
            store.run_migrations().await?;
        }
        Ok(store)
    }

    /// Create or upgrade the schema (done by [`HistoryStore::connect`]). Safe to
    /// run from several processes at once: sqlx takes a database lock on
    /// PostgreSQL and MySQL; on SQLite (where sqlx takes none, and two nodes
    /// starting together raced to create the tables) an exclusive lock on the file
    /// `PATH.migrate-lock` next to the database serializes the migrations.
    pub async fn migrate(&self) -> Result<()> {
        let _setup = match &self.url.target {
            Target::Sqlite(Some(path)) => Some(sqlite_setup_lock(&self.url, path).await?),
            _ => None,
        };
        self.run_migrations().await
    }

    /// The migrations themselves (the caller holds the SQLite setup lock).
    async fn run_migrations(&self) -> Result<()> {
        let err = |e: sqlx::migrate::MigrateError| StoreError::Migrate {
            url: self.url.masked.clone(),
            cause: self.url.scrub(&e.to_string()),
        };
        let mut migrator = sqlx::migrate::Migrator::new(Migrations(self.backend()))
            .await
            .map_err(err)?;
        // Other migrators (the application's) may share `_sqlx_migrations`.
        migrator.set_ignore_missing(true);
        with_pool!(&self.db, pool => migrator.run(pool).await.map_err(err))
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The URL, password masked (safe to log).
    pub fn url(&self) -> &str {
        &self.url.masked
    }

    /// Close the pool; later calls fail.
    pub async fn close(&self) {
        with_pool!(&self.db, pool => pool.close().await)
    }

    fn db_err(&self, op: &'static str, e: &sqlx::Error) -> StoreError {
        StoreError::Database {
            url: self.url.masked.clone(),
            op,
            cause: self.url.scrub(&e.to_string()),
            transient: is_transient(e),
        }
    }

    /// Write `events` in one transaction: one merged upsert per execution and one
    /// transition per event. Idempotent: writing the same events again changes
    /// nothing. Events should have passed validation (the writer does that).
    pub async fn write(&self, events: &[HistoryEvent]) -> Result<()> {
        self.write_events(events).await
    }

    pub(crate) async fn write_events<'a>(
        &self,
        events: impl IntoIterator<Item = &'a HistoryEvent>,
    ) -> Result<()> {
        let backend = self.backend();
        let (mut rows, mut transitions) = rows_of(events);
        if rows.is_empty() {
            return Ok(());
        }
        let mut statements = Vec::new();
        while !rows.is_empty() {
            let rest = rows.split_off(chunk_len(rows.len()));
            statements.push(upsert_executions(
                backend,
                std::mem::replace(&mut rows, rest),
            ));
        }
        while !transitions.is_empty() {
            let rest = transitions.split_off(chunk_len(transitions.len()));
            statements.push(insert_transitions(
                backend,
                std::mem::replace(&mut transitions, rest),
            ));
        }
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(|e| self.db_err("begin", &e))?;
            for sql in &statements {
                query!(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db_err("write", &e))?;
            }
            tx.commit().await.map_err(|e| self.db_err("commit", &e))
        })
    }

    fn push_filters(q: &ExecutionQuery, sql: &mut Sql) {
        sql.push(" WHERE has_record = 1");
        if let Some(job) = &q.job {
            sql.push(" AND job = ").bind(Val::Text(job.clone()));
        }
        if let Some(item) = q.item {
            sql.push(" AND item = ").bind(Val::Int(i64::from(item)));
        }
        if let Some(instance) = &q.instance {
            sql.push(" AND instance = ")
                .bind(Val::Text(instance.clone()));
        }
        if !q.statuses.is_empty() {
            sql.push(" AND status IN ")
                .bind_list(q.statuses.iter().map(|s| Val::Str(s.as_str())));
        }
        if !q.sources.is_empty() {
            sql.push(" AND source IN ")
                .bind_list(q.sources.iter().map(|s| Val::Str(s.as_str())));
        }
        let mut range = |col: &str, op: &str, t: Option<DateTime<Utc>>| {
            if let Some(t) = t {
                sql.push(&format!(" AND {col} {op} "))
                    .bind(Val::Int(micros(t)));
            }
        };
        range("started_at", ">=", q.started_from);
        range("started_at", "<", q.started_to);
        range("fire_time", ">=", q.fire_from);
        range("fire_time", "<", q.fire_to);
    }

    /// Executions matching `q`, one page.
    pub async fn query(&self, q: &ExecutionQuery) -> Result<ExecutionPage> {
        let limit = match q.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let col = q.sort.column();
        let mut sql = Sql::new(
            self.backend(),
            &format!("SELECT {RECORD_COLUMNS} FROM {EXECUTIONS}"),
        );
        Self::push_filters(q, &mut sql);
        let (cmp, dir) = if q.ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if let Some(after) = &q.after {
            let t = micros(after.time);
            sql.push(&format!(" AND ({col} {cmp} "))
                .bind(Val::Int(t))
                .push(&format!(" OR ({col} = "))
                .bind(Val::Int(t))
                .push(&format!(" AND id {cmp} "))
                .bind(Val::Text(after.id.clone()))
                .push("))");
        }
        sql.push(&format!(" ORDER BY {col} {dir}, id {dir} LIMIT "))
            .bind(Val::Int(i64::from(limit)));
        if q.offset > 0 {
            sql.push(" OFFSET ")
                .bind(Val::Int(i64::try_from(q.offset).unwrap_or(i64::MAX)));
        }
        let items = self.fetch_records(&sql, "query executions").await?;
        let next = (items.len() == limit as usize)
            .then(|| items.last())
            .flatten()
            .map(|r| PageCursor {
                time: match q.sort {
                    SortKey::StartedAt => r.started_at,
                    SortKey::FireTime => r.fire_time,
                },
                id: r.id.clone(),
            });
        Ok(ExecutionPage { items, next })
    }

    async fn fetch_records(&self, sql: &Sql, op: &'static str) -> Result<Vec<ExecutionRecord>> {
        with_pool!(&self.db, pool => {
            let rows = query!(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                if let Some(r) = record_from_row(row).map_err(|e| self.db_err(op, &e))? {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }

    async fn fetch_ints(&self, sql: &Sql, op: &'static str) -> Result<Vec<i64>> {
        with_pool!(&self.db, pool => {
            let rows = query!(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            rows.iter()
                .map(|row| row.int(0).map_err(|e| self.db_err(op, &e)))
                .collect()
        })
    }

    async fn fetch_strings(&self, sql: &Sql, op: &'static str) -> Result<Vec<String>> {
        with_pool!(&self.db, pool => {
            let rows = query!(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            rows.iter()
                .map(|row| row.text(0).map_err(|e| self.db_err(op, &e)))
                .collect()
        })
    }

    /// How many executions match the filters of `q` (paging ignored).
    pub async fn count(&self, q: &ExecutionQuery) -> Result<u64> {
        let mut sql = Sql::new(
            self.backend(),
            &format!("SELECT COUNT(*) FROM {EXECUTIONS}"),
        );
        Self::push_filters(q, &mut sql);
        let n = self.fetch_ints(&sql, "count executions").await?;
        Ok(n.first()
            .copied()
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// One execution and its transitions; `None` if no record with that id has
    /// landed (an update alone does not make an execution visible).
    pub async fn execution(&self, id: &str) -> Result<Option<ExecutionDetail>> {
        let mut sql = Sql::new(
            self.backend(),
            &format!("SELECT {RECORD_COLUMNS} FROM {EXECUTIONS} WHERE has_record = 1 AND id = "),
        );
        sql.bind(Val::Text(id.to_string()));
        let Some(record) = self
            .fetch_records(&sql, "read execution")
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let mut sql = Sql::new(
            self.backend(),
            &format!("SELECT state, at, message FROM {TRANSITIONS} WHERE execution_id = "),
        );
        sql.bind(Val::Text(id.to_string())).push(" ORDER BY seq");
        let op = "read transitions";
        let raw: Vec<(String, i64, Option<String>)> = with_pool!(&self.db, pool => {
            let rows = query!(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.text(0).map_err(|e| self.db_err(op, &e))?,
                        row.int(1).map_err(|e| self.db_err(op, &e))?,
                        row.opt_text(2).map_err(|e| self.db_err(op, &e))?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?
        });
        let transitions = raw
            .into_iter()
            .filter_map(|(state, at, message)| match state.parse() {
                Ok(state) => Some(Transition {
                    state,
                    at: from_micros(at),
                    message,
                }),
                Err(e) => {
                    tracing::warn!(execution = %id, "skipping unreadable transition: {e}");
                    None
                }
            })
            .collect();
        Ok(Some(ExecutionDetail {
            record,
            transitions,
        }))
    }

    /// The feed position of the newest transition (0 when there is none): where
    /// a live feed that wants only what comes next starts.
    pub async fn last_transition_seq(&self) -> Result<i64> {
        let sql = Sql::new(
            self.backend(),
            &format!("SELECT COALESCE(MAX(seq), 0) FROM {TRANSITIONS}"),
        );
        let op = "read the feed position";
        let seq: i64 = with_pool!(&self.db, pool => {
            let row = query!(sql)
                .fetch_one(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            row.int(0).map_err(|e| self.db_err(op, &e))?
        });
        Ok(seq)
    }

    /// Transitions recorded after feed position `after_seq` (0: from the start),
    /// oldest first, at most `limit` (1 to [`MAX_PAGE`]): the live feed a console
    /// polls with the last `seq` it saw.
    pub async fn transitions_after(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<TransitionEntry>> {
        let mut sql = Sql::new(
            self.backend(),
            &format!(
                "SELECT seq, execution_id, state, at, message FROM {TRANSITIONS} WHERE seq > "
            ),
        );
        sql.bind(Val::Int(after_seq))
            .push(" ORDER BY seq LIMIT ")
            .bind(Val::Int(i64::from(limit.clamp(1, MAX_PAGE))));
        let op = "read transitions";
        type Raw = (i64, String, String, i64, Option<String>);
        let raw: Vec<Raw> = with_pool!(&self.db, pool => {
            let rows = query!(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            rows.iter()
                .map(|row| {
                    let get_err = |e: sqlx::Error| self.db_err(op, &e);
                    Ok((
                        row.int(0).map_err(get_err)?,
                        row.text(1).map_err(get_err)?,
                        row.text(2).map_err(get_err)?,
                        row.int(3).map_err(get_err)?,
                        row.opt_text(4).map_err(get_err)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?
        });
        Ok(raw
            .into_iter()
            .filter_map(|(seq, execution_id, state, at, message)| {
                let state = state.parse().ok()?;
                Some(TransitionEntry {
                    seq,
                    execution_id,
                    transition: Transition {
                        state,
                        at: from_micros(at),
                        message,
                    },
                })
            })
            .collect())
    }

    /// Counts, success rate and run-time percentiles of `job` for executions
    /// started at or after `since`, and its latest run. Percentiles are computed
    /// here (nearest rank), the same on every database.
    pub async fn job_summary(&self, job: &str, since: DateTime<Utc>) -> Result<JobSummary> {
        let backend = self.backend();
        let window = |sql: &mut Sql| {
            sql.push(" WHERE has_record = 1 AND job = ")
                .bind(Val::Text(job.to_string()))
                .push(" AND started_at >= ")
                .bind(Val::Int(micros(since)));
        };
        let mut counts = Vec::new();
        for status in ExecutionStatus::ALL {
            counts.push((*status, 0u64));
        }
        let mut sql = Sql::new(
            backend,
            &format!("SELECT status, COUNT(*) FROM {EXECUTIONS}"),
        );
        window(&mut sql);
        sql.push(" GROUP BY status");
        let op = "job summary";
        let by_status: Vec<(String, i64)> = with_pool!(&self.db, pool => {
            let rows = query!(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.text(0).map_err(|e| self.db_err(op, &e))?,
                        row.int(1).map_err(|e| self.db_err(op, &e))?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?
        });
        for (status, n) in by_status {
            if let Some(slot) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
                slot.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        let count_of =
            |s: ExecutionStatus| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
        let succeeded = count_of(ExecutionStatus::Succeeded);
        let finished = succeeded
            + count_of(ExecutionStatus::Failed)
            + count_of(ExecutionStatus::TimedOut)
            + count_of(ExecutionStatus::Cancelled)
            + count_of(ExecutionStatus::Lost);
        let success_rate = (finished > 0).then(|| succeeded as f64 / finished as f64);

        let mut sql = Sql::new(
            backend,
            &format!(
                "SELECT CAST(COALESCE(SUM(COALESCE(skipped_count, 1)), 0) AS {}) FROM {EXECUTIONS}",
                bigint(backend)
            ),
        );
        window(&mut sql);
        sql.push(" AND status = ")
            .bind(Val::Str(ExecutionStatus::Skipped.as_str()));
        let skipped_fires = self
            .fetch_ints(&sql, op)
            .await?
            .first()
            .map_or(0, |n| u64::try_from(*n).unwrap_or(0));

        let mut sql = Sql::new(
            backend,
            &format!("SELECT ended_at - started_at FROM {EXECUTIONS}"),
        );
        window(&mut sql);
        sql.push(" AND ended_at IS NOT NULL AND status IN ")
            .bind_list(
                [
                    ExecutionStatus::Succeeded,
                    ExecutionStatus::Failed,
                    ExecutionStatus::TimedOut,
                    ExecutionStatus::Cancelled,
                ]
                .map(|s| Val::Str(s.as_str())),
            );
        let mut durations = self.fetch_ints(&sql, op).await?;
        durations.sort_unstable();

        let mut sql = Sql::new(
            backend,
            &format!("SELECT {RECORD_COLUMNS} FROM {EXECUTIONS} WHERE has_record = 1 AND job = "),
        );
        sql.bind(Val::Text(job.to_string()))
            .push(" AND status <> ")
            .bind(Val::Str(ExecutionStatus::Skipped.as_str()))
            .push(" ORDER BY started_at DESC, id DESC LIMIT 1");
        let last = self.fetch_records(&sql, op).await?.into_iter().next();

        Ok(JobSummary {
            job: job.to_string(),
            since,
            last,
            counts,
            skipped_fires,
            success_rate,
            p50: percentile(&durations, 50.0),
            p99: percentile(&durations, 99.0),
        })
    }

    /// Mark every RUNNING execution of `instance` (a dead per-start identity) as
    /// LOST at `at`, with `cause` where the execution has none, and record the
    /// transition. Returns the ids it changed, sorted. An execution whose real
    /// outcome lands later still gets it (a known outcome beats LOST).
    pub async fn mark_instance_lost(
        &self,
        instance: &str,
        at: DateTime<Utc>,
        cause: &str,
    ) -> Result<Vec<String>> {
        let backend = self.backend();
        let order = status_order(ExecutionStatus::Lost, micros(at));
        let lost = ExecutionStatus::Lost.as_str();
        let running = ExecutionStatus::Running.as_str();
        let op = "mark instance lost";
        let set = |sql: &mut Sql| {
            sql.push(&format!("UPDATE {EXECUTIONS} SET status = "))
                .bind(Val::Str(lost))
                .push(", status_order = ")
                .bind(Val::Int(order))
                .push(", cause = COALESCE(cause, ")
                .bind(Val::Text(cause.to_string()))
                .push(")");
        };
        let mut ids: Vec<String> = with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(|e| self.db_err("begin", &e))?;
            let ids: Vec<String> = if backend == Backend::MySql {
                // No UPDATE ... RETURNING: lock the rows, then update exactly them.
                let mut sel = Sql::new(backend, &format!("SELECT id FROM {EXECUTIONS} WHERE instance = "));
                sel.bind(Val::Text(instance.to_string()))
                    .push(" AND status = ")
                    .bind(Val::Str(running))
                    .push(" AND has_record = 1 AND status_order <= ")
                    .bind(Val::Int(order))
                    .push(" FOR UPDATE");
                let rows = query!(sel).fetch_all(&mut *tx).await.map_err(|e| self.db_err(op, &e))?;
                let ids = rows
                    .iter()
                    .map(|r| r.text(0).map_err(|e| self.db_err(op, &e)))
                    .collect::<Result<Vec<_>>>()?;
                for chunk in ids.chunks(1000) {
                    let mut upd = Sql::new(backend, "");
                    set(&mut upd);
                    upd.push(" WHERE id IN ")
                        .bind_list(chunk.iter().map(|id| Val::Text(id.clone())))
                        .push(" AND status = ")
                        .bind(Val::Str(running));
                    query!(upd).execute(&mut *tx).await.map_err(|e| self.db_err(op, &e))?;
                }
                ids
            } else {
                let mut upd = Sql::new(backend, "");
                set(&mut upd);
                upd.push(" WHERE instance = ")
                    .bind(Val::Text(instance.to_string()))
                    .push(" AND status = ")
                    .bind(Val::Str(running))
                    .push(" AND has_record = 1 AND status_order <= ")
                    .bind(Val::Int(order))
                    .push(" RETURNING id");
                let rows = query!(upd).fetch_all(&mut *tx).await.map_err(|e| self.db_err(op, &e))?;
                rows.iter()
                    .map(|r| r.text(0).map_err(|e| self.db_err(op, &e)))
                    .collect::<Result<Vec<_>>>()?
            };
            let transitions: Vec<_> = ids
                .iter()
                .map(|id| crate::event::TransitionRow {
                    execution_id: id.clone(),
                    state: lost,
                    at: micros(at),
                    message: Some(cause.to_string()),
                })
                .collect();
            let mut transitions = transitions;
            while !transitions.is_empty() {
                let rest = transitions.split_off(chunk_len(transitions.len()));
                let sql = insert_transitions(backend, std::mem::replace(&mut transitions, rest));
                query!(sql).execute(&mut *tx).await.map_err(|e| self.db_err(op, &e))?;
            }
            tx.commit().await.map_err(|e| self.db_err("commit", &e))?;
            ids
        });
        ids.sort();
        Ok(ids)
    }

    /// Delete executions (and their transitions) that started before `cutoff`,
    /// `batch` at a time (1 to 10,000; each batch its own transaction, so that
    /// locks stay short), until none is left. Returns how many were deleted.
    pub async fn delete_older_than(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<u64> {
        let backend = self.backend();
        let batch = batch.clamp(1, 10_000);
        let op = "retention";
        let mut deleted = 0u64;
        loop {
            let mut sel = Sql::new(
                backend,
                &format!("SELECT id FROM {EXECUTIONS} WHERE started_at < "),
            );
            sel.bind(Val::Int(micros(cutoff)))
                .push(" ORDER BY started_at LIMIT ")
                .bind(Val::Int(i64::from(batch)));
            let ids = self.fetch_strings(&sel, op).await?;
            if ids.is_empty() {
                break;
            }
            let n = ids.len();
            let mut del_t = Sql::new(
                backend,
                &format!("DELETE FROM {TRANSITIONS} WHERE execution_id IN "),
            );
            del_t.bind_list(ids.iter().map(|id| Val::Text(id.clone())));
            let mut del_e = Sql::new(backend, &format!("DELETE FROM {EXECUTIONS} WHERE id IN "));
            del_e
                .bind_list(ids.into_iter().map(Val::Text))
                .push(" AND started_at < ")
                .bind(Val::Int(micros(cutoff)));
            let removed = with_pool!(&self.db, pool => {
                let mut tx = pool.begin().await.map_err(|e| self.db_err("begin", &e))?;
                query!(del_t).execute(&mut *tx).await.map_err(|e| self.db_err(op, &e))?;
                let r = query!(del_e).execute(&mut *tx).await.map_err(|e| self.db_err(op, &e))?;
                tx.commit().await.map_err(|e| self.db_err("commit", &e))?;
                r.rows_affected()
            });
            deleted += removed;
            if n < batch as usize {
                break;
            }
        }
        Ok(deleted)
    }
}

/// The audit log (see [`AuditEntry`]).
impl HistoryStore {
    /// Add `entry` to the audit log. Long fields are cut and a long detail is
    /// replaced by its start (see [`crate::MAX_AUDIT_DETAIL_BYTES`]); only the
    /// database can make this fail.
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        let mut sql = Sql::new(
            self.backend(),
            &format!("INSERT INTO {AUDIT} (at, actor, action, target, detail) VALUES "),
        );
        sql.bind_list([
            Val::Int(micros(entry.at)),
            Val::Text(clean_field(&entry.actor, MAX_AUDIT_ACTOR_LEN)),
            Val::Text(clean_field(&entry.action, MAX_AUDIT_ACTION_LEN)),
            Val::Text(clean_field(&entry.target, MAX_AUDIT_TARGET_LEN)),
            Val::Text(detail_text(&entry.detail)),
        ]);
        with_pool!(&self.db, pool => {
            query!(sql)
                .execute(pool)
                .await
                .map_err(|e| self.db_err("record audit", &e))?;
        });
        Ok(())
    }

    /// One page of the audit log, newest first (ties: the later recorded first).
    pub async fn audit(&self, q: &AuditQuery) -> Result<AuditPage> {
        let limit = q.page_size();
        let mut sql = Sql::new(
            self.backend(),
            &format!("SELECT at, actor, action, target, detail FROM {AUDIT} WHERE 1 = 1"),
        );
        for (col, want) in [("actor", &q.actor), ("action", &q.action)] {
            let Some(want) = want else { continue };
            sql.push(&format!(" AND {col} = "))
                .bind(Val::Text(want.clone()));
            if self.backend() == Backend::MySql {
                // MySQL's collations ignore trailing spaces in comparisons; equal
                // byte lengths make the match exact (and keep the index usable).
                sql.push(&format!(" AND LENGTH({col}) = LENGTH("))
                    .bind(Val::Text(want.clone()))
                    .push(")");
            }
        }
        // One more than asked: whether there is a next page.
        sql.push(" ORDER BY at DESC, id DESC LIMIT ")
            .bind(Val::Int(i64::from(limit) + 1));
        if q.offset > 0 {
            sql.push(" OFFSET ")
                .bind(Val::Int(i64::try_from(q.offset).unwrap_or(i64::MAX)));
        }
        let op = "read audit";
        let mut entries: Vec<AuditEntry> = with_pool!(&self.db, pool => {
            let rows = query!(sql)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(op, &e))?;
            rows.iter()
                .map(|row| {
                    let get_err = |e: sqlx::Error| self.db_err(op, &e);
                    Ok(AuditEntry {
                        at: from_micros(row.int(0).map_err(get_err)?),
                        actor: row.text(1).map_err(get_err)?,
                        action: row.text(2).map_err(get_err)?,
                        target: row.text(3).map_err(get_err)?,
                        detail: detail_value(row.text(4).map_err(get_err)?),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        });
        let next_offset = (entries.len() > limit as usize).then(|| {
            entries.truncate(limit as usize);
            q.offset.saturating_add(u64::from(limit))
        });
        Ok(AuditPage {
            entries,
            next_offset,
        })
    }
}

/// An exclusive lock on `PATH.migrate-lock`, held while a node creates, opens for
/// the first time or migrates the SQLite database at `path`.
async fn sqlite_setup_lock(url: &StoreUrl, path: &std::path::Path) -> Result<std::fs::File> {
    let mut lock_path = path.to_path_buf().into_os_string();
    lock_path.push(".migrate-lock");
    let fail = |cause: String| StoreError::Connect {
        url: url.masked.clone(),
        cause,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    }
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        f.lock()?;
        Ok::<_, std::io::Error>(f)
    })
    .await
    .map_err(|e| fail(format!("the setup lock task failed: {e}")))?
    .map_err(|e| fail(format!("cannot lock the setup lock file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_micros(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_micros(99)));
        assert_eq!(percentile(&[7], 99.0), Some(Duration::from_micros(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
