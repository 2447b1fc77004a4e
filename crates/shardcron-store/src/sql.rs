//! SQL text per dialect, in one place: placeholders, the merging upsert, and the
//! embedded migrations.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::migrate::{Migration, MigrationSource, MigrationType};

use crate::Backend;
use crate::event::{Row, TransitionRow};

/// The executions table.
pub(crate) const EXECUTIONS: &str = "shardcron_executions";
/// The transitions table.
pub(crate) const TRANSITIONS: &str = "shardcron_transitions";
/// The audit log.
pub(crate) const AUDIT: &str = "shardcron_audit";

/// Every column of the executions table that a record maps to, in the order
/// [`record_from_row`](crate::store) reads them.
pub(crate) const RECORD_COLUMNS: &str = "id, job, item, total, fire_time, fire_time_end, \
     skipped_count, started_at, ended_at, instance, host, source, status, skip_reason, \
     attempt, token, cause, output";

/// Columns written by the upsert, in bind order.
const UPSERT_COLUMNS: [&str; 20] = [
    "id",
    "has_record",
    "job",
    "item",
    "total",
    "fire_time",
    "fire_time_end",
    "skipped_count",
    "started_at",
    "ended_at",
    "instance",
    "host",
    "source",
    "status",
    "skip_reason",
    "attempt",
    "token",
    "cause",
    "output",
    "status_order",
];

/// Columns that describe the execution itself, taken from a row that carries the
/// record.
const IDENTITY_COLUMNS: [&str; 13] = [
    "job",
    "item",
    "total",
    "fire_time",
    "fire_time_end",
    "skipped_count",
    "started_at",
    "instance",
    "host",
    "source",
    "skip_reason",
    "attempt",
    "token",
];

/// Most rows per multi-row statement (20 binds each: far below every driver's
/// bind limit). Statements are cut in power-of-two sizes so that each connection
/// prepares at most a handful of distinct statements.
pub(crate) const MAX_ROWS_PER_STATEMENT: usize = 512;

/// A value to bind.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Str(&'static str),
}

/// SQL text with its binds, built with the dialect's placeholders.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) args: Vec<Val>,
    backend: Backend,
}

impl Sql {
    pub(crate) fn new(backend: Backend, text: &str) -> Sql {
        Sql {
            text: text.to_string(),
            args: Vec::new(),
            backend,
        }
    }

    pub(crate) fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Append a placeholder for `v`.
    pub(crate) fn bind(&mut self, v: Val) -> &mut Self {
        self.args.push(v);
        match self.backend {
            Backend::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.args.len().to_string());
            }
            Backend::Sqlite | Backend::MySql => self.text.push('?'),
        }
        self
    }

    /// Append `(?, ?, ...)`, one placeholder per value.
    pub(crate) fn bind_list(&mut self, vals: impl IntoIterator<Item = Val>) -> &mut Self {
        self.text.push('(');
        for (i, v) in vals.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self.text.push(')');
        self
    }
}

/// The size of the next statement for `remaining` rows: the largest power of two
/// that fits, capped at [`MAX_ROWS_PER_STATEMENT`].
pub(crate) fn chunk_len(remaining: usize) -> usize {
    let cap = remaining.min(MAX_ROWS_PER_STATEMENT);
    if cap == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - cap.leading_zeros())
    }
}

/// `INSERT ... ON CONFLICT/DUPLICATE KEY` merging `rows` into the executions
/// table with the rule of [`Row::merge`]: identity columns from a row that has the
/// record, status columns from the higher `status_order`.
pub(crate) fn upsert_executions(backend: Backend, rows: Vec<Row>) -> Sql {
    let mut sql = Sql::new(
        backend,
        &format!(
            "INSERT INTO {EXECUTIONS} ({}) VALUES ",
            UPSERT_COLUMNS.join(", ")
        ),
    );
    for (i, r) in rows.into_iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind_list([
            Val::Text(r.id),
            Val::Int(i64::from(r.has_record)),
            Val::Text(r.job),
            Val::Int(r.item),
            Val::Int(r.total),
            Val::Int(r.fire_time),
            Val::OptInt(r.fire_time_end),
            Val::OptInt(r.skipped_count),
            Val::Int(r.started_at),
            Val::OptInt(r.ended_at),
            Val::Text(r.instance),
            Val::Text(r.host),
            Val::Str(r.source),
            Val::Str(r.status),
            Val::OptText(r.skip_reason),
            Val::Int(r.attempt),
            Val::Int(r.token),
            Val::OptText(r.cause),
            Val::OptText(r.output),
            Val::Int(r.status_order),
        ]);
    }
    // New and old values: `excluded.c` and `table.c`, or MySQL's `VALUES(c)` and
    // `c`. In MySQL the assignments run left to right and later ones see earlier
    // results, so `status_order`, which every status condition reads, goes last.
    let new = |c: &str| match backend {
        Backend::MySql => format!("VALUES({c})"),
        _ => format!("excluded.{c}"),
    };
    let old = |c: &str| match backend {
        Backend::MySql => c.to_string(),
        _ => format!("{EXECUTIONS}.{c}"),
    };
    let wins = format!("{} >= {}", new("status_order"), old("status_order"));
    let mut sets = Vec::new();
    for c in IDENTITY_COLUMNS {
        sets.push(format!(
            "{c} = CASE WHEN {} = 1 THEN {} ELSE {} END",
            new("has_record"),
            new(c),
            old(c)
        ));
    }
    sets.push(format!(
        "has_record = CASE WHEN {} = 1 THEN 1 ELSE {} END",
        new("has_record"),
        old("has_record")
    ));
    sets.push(format!(
        "status = CASE WHEN {wins} THEN {} ELSE {} END",
        new("status"),
        old("status")
    ));
    for c in ["ended_at", "cause", "output"] {
        sets.push(format!(
            "{c} = CASE WHEN {wins} THEN COALESCE({n}, {o}) ELSE COALESCE({o}, {n}) END",
            n = new(c),
            o = old(c)
        ));
    }
    sets.push(format!(
        "status_order = CASE WHEN {wins} THEN {} ELSE {} END",
        new("status_order"),
        old("status_order")
    ));
    match backend {
        Backend::MySql => sql.push(" ON DUPLICATE KEY UPDATE "),
        _ => sql.push(" ON CONFLICT (id) DO UPDATE SET "),
    };
    sql.push(&sets.join(", "));
    sql
}

/// `INSERT` of transitions that ignores rows already there (same execution, time
/// and state), so that replays add nothing.
pub(crate) fn insert_transitions(backend: Backend, rows: Vec<TransitionRow>) -> Sql {
    let mut sql = Sql::new(
        backend,
        &format!("INSERT INTO {TRANSITIONS} (execution_id, state, at, message) VALUES "),
    );
    for (i, t) in rows.into_iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind_list([
            Val::Text(t.execution_id),
            Val::Str(t.state),
            Val::Int(t.at),
            Val::OptText(t.message),
        ]);
    }
    match backend {
        Backend::MySql => sql.push(" ON DUPLICATE KEY UPDATE execution_id = execution_id"),
        _ => sql.push(" ON CONFLICT (execution_id, at, state) DO NOTHING"),
    };
    sql
}

/// The type name for a 64-bit integer in `CAST(... AS ...)`.
pub(crate) fn bigint(backend: Backend) -> &'static str {
    match backend {
        Backend::MySql => "SIGNED",
        _ => "BIGINT",
    }
}

/// The schema migrations of one dialect, embedded in the binary.
#[derive(Debug)]
pub(crate) struct Migrations(pub(crate) Backend);

/// One migration per file in `migrations/<dialect>/`: (version, description, SQL).
/// Versions are dates, distinct from the small numbers applications tend to use,
/// because sqlx keeps every migrator's versions in one `_sqlx_migrations` table.
fn files(backend: Backend) -> &'static [(i64, &'static str, &'static str)] {
    match backend {
        Backend::Sqlite => &[
            (
                20261121000001,
                "history",
                include_str!("../migrations/sqlite/20261121000001_history.sql"),
            ),
            (
                20261201000001,
                "audit",
                include_str!("../migrations/sqlite/20261201000001_audit.sql"),
            ),
        ],
        Backend::Postgres => &[
            (
                20261121000001,
                "history",
                include_str!("../migrations/postgres/20261121000001_history.sql"),
            ),
            (
                20261201000001,
                "audit",
                include_str!("../migrations/postgres/20261201000001_audit.sql"),
            ),
        ],
        Backend::MySql => &[
            (
                20261121000001,
                "history",
                include_str!("../migrations/mysql/20261121000001_history.sql"),
            ),
            (
                20261201000001,
                "audit",
                include_str!("../migrations/mysql/20261201000001_audit.sql"),
            ),
        ],
    }
}

type BoxDynError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl MigrationSource<'static> for Migrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = files(self.0)
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two() {
        assert_eq!(chunk_len(0), 0);
        assert_eq!(chunk_len(1), 1);
        assert_eq!(chunk_len(3), 2);
        assert_eq!(chunk_len(1000), 512);
        assert_eq!(chunk_len(300), 256);
    }

    #[test]
    fn placeholders_follow_the_dialect() {
        let mut pg = Sql::new(Backend::Postgres, "x IN ");
        pg.bind_list([Val::Int(1), Val::Int(2)]);
        assert_eq!(pg.text, "x IN ($1, $2)");
        let mut my = Sql::new(Backend::MySql, "x IN ");
        my.bind_list([Val::Int(1), Val::Int(2)]);
        assert_eq!(my.text, "x IN (?, ?)");
    }

    #[test]
    fn mysql_upsert_assigns_status_order_last() {
        let sql = upsert_executions(Backend::MySql, vec![]);
        let last = sql.text.rsplit(", ").next().unwrap_or_default();
        assert!(last.starts_with("status_order = "), "{last}");
    }
}
