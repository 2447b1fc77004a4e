//! Execution history: one row per item per fire, its status transitions, and the
//! console's queries, on SQLite (the default), PostgreSQL or MySQL/MariaDB.
//!
//! - [`HistoryStore`] connects to a URL (`sqlite://PATH`, `postgres://...`,
//!   `mysql://...`), creates or upgrades the schema, writes batches of
//!   [`HistoryEvent`]s idempotently, and answers queries.
//! - [`HistoryWriter`] is what the runtime calls on every fire:
//!   [`HistoryWriter::record`] queues an event and returns; a background task
//!   writes batches; when the database is down or slow, events go to a local spool
//!   and are replayed in order when it is back, and at the next start.
//!
//! ```no_run
//! # async fn demo() -> shardcron_store::Result<()> {
//! use shardcron_store::{HistoryStore, HistoryWriter, WriterOptions};
//! let store = HistoryStore::connect("sqlite://data/history.db").await?;
//! let writer = HistoryWriter::start(store.clone(), WriterOptions::new("data/history-spool")).await?;
//! // writer.record(HistoryEvent::Record(record))?;  on every fire, never waits
//! writer.shutdown().await?; // flushes to the database, or else to the spool
//! # Ok(()) }
//! ```
//!
//! # Decisions
//!
//! **Schema.** `shardcron_executions` (primary key `id`) holds the columns of
//! [`ExecutionRecord`](shardcron_core::ExecutionRecord) plus `has_record` and
//! `status_order` (below); indexes on `(job, started_at)`, `(status,
//! started_at)`, `(instance, status)`, `fire_time` and `started_at` serve the
//! console's lists, mark-LOST and retention. `shardcron_transitions` holds one
//! row per status change: an auto-increment `seq` (the live feed's order, see
//! [`HistoryStore::transitions_after`]), `execution_id`, `state`, `at`,
//! `message`, unique on `(execution_id, at, state)`. The migrations live in
//! `migrations/<dialect>/`, are embedded in the binary and run through sqlx's
//! migrator (its `_sqlx_migrations` table, with a lock against concurrent
//! starts; versions are dates so that they do not collide with an application's
//! own migrations in the same database). On MySQL the text columns use
//! `utf8mb4_bin`, so names compare exactly as on the other two.
//!
//! **Time.** Every time is stored as a 64-bit integer of microseconds since the
//! Unix epoch, UTC, on all three databases. It round-trips exactly (to the
//! microsecond) with no time-zone or session setting involved (MySQL's
//! `TIMESTAMP` converts through the session zone and ends in 2038; SQLite has no
//! time type), compares and indexes the same everywhere, and makes durations a
//! subtraction. Read it by hand with `to_timestamp(x / 1e6)` (PostgreSQL),
//! `FROM_UNIXTIME(x / 1e6)` (MySQL) or `datetime(x / 1e6, 'unixepoch')` (SQLite).
//!
//! **Ids.** An execution id is any string of 1 to 64 characters
//! ([`MAX_ID_LEN`]). [`new_execution_id`] makes ULID-shaped ids (26 characters
//! of Crockford base32: 48-bit milliseconds, 80 random bits, monotonic within a
//! process), which sort by time and keep inserts at the right edge of the
//! primary-key index. No dependency beyond `rand`.
//!
//! **SKIPPED ranges.** A SKIPPED record is one row: `fire_time` is the first
//! skipped fire, `fire_time_end` the last, `skipped_count` how many,
//! `skip_reason` why (`misfire_policy`, `still_running`, ...). Its transition's
//! message says the reason and the count; [`JobSummary::skipped_fires`] adds the
//! counts up.
//!
//! **Idempotency and order-independence.** Replaying events must not duplicate
//! anything, because a crash can fall between a commit and the truncation of the
//! spool. Executions are upserted by `id`; transitions are inserted with "ignore
//! if `(execution_id, at, state)` exists". The upsert merges rather than
//! overwrites, with one rule that the SQL of all three dialects and the in-batch
//! merge in Rust implement identically:
//! - identity columns (job, item, times, instance, ...) come from whichever
//!   event carries the whole record ([`HistoryEvent::Record`]); an
//!   [`HistoryEvent::Update`] that lands first creates a placeholder row
//!   (`has_record = 0`, invisible to queries) that the record fills in later, so
//!   an update that overtakes its record is kept;
//! - status columns come from the event with the higher `status_order` =
//!   `rank << 52 | microseconds`, where RUNNING ranks 0, LOST 1 and every known
//!   outcome 2: later beats earlier, a known outcome beats LOST (the holder did
//!   finish), LOST beats a late RUNNING (a replayed start does not revive a lost
//!   run). Cause, output and end time keep the other side's value where the
//!   winner has none.
//!
//! So the final state does not depend on the order in which events reach the
//! database, and replays are harmless; the order is preserved anyway (see below),
//! and the transition feed shows it.
//!
//! **Batching.** The writer writes a batch as soon as the previous one finished
//! and either `batch_size` (1,000) events are queued or `flush_interval` (20 ms)
//! passed since the previous write started: a quiet system writes each event
//! within ~20 ms, a busy one writes full batches back to back. A batch is one
//! transaction: the events are merged per execution in memory, then written with
//! multi-row `INSERT ... ON CONFLICT` / `ON DUPLICATE KEY UPDATE` statements cut in
//! power-of-two sizes up to 512 rows, so that each connection prepares only a
//! handful of distinct statements.
//!
//! **Never delaying a fire.** [`HistoryWriter::record`] validates the event and
//! pushes it on a queue under a mutex held only for the push; it never waits for
//! the database or the disk. The background task takes the queue out under that
//! mutex and does all I/O without it.
//!
//! **Spool.** The writer switches to the spool when a write fails, when a write
//! has been running for `stall_after` (1 s: a hanging database), or when the
//! queue passes `spool_threshold` (the database is slower than the fires). It then
//! appends the queue (and the batch in flight) to the spool, fsyncs it, and from
//! then on everything recorded goes behind it, while the task replays the spool
//! from its head in batches as fast as the database takes them (retrying with
//! exponential backoff, 100 ms to 5 s, while it fails). Order is therefore kept:
//! the spool always holds the oldest events, and the queue is written directly
//! only while the spool is empty. The spool file format is described in module
//! `spool`: length- and CRC32-framed records holding the event as JSON, a torn
//! last record cut off at open, corruption moved aside rather than dropped, a
//! replay position file, truncation when fully replayed, compaction while the
//! database stays behind. [`WriterStats`] reports the spool's size and the age of
//! its oldest event. If the queue ever reaches `queue_capacity` (the task stuck),
//! `record` itself moves it to the spool; memory stays bounded and nothing is
//! dropped.
//!
//! **Durability.** Events are in memory for at most about one flush interval
//! (or `stall_after` while the database hangs), then in the database or in the
//! synced spool: a kill -9 loses at most those, and the failover path accounts
//! for such runs as LOST from the registry's run keys (DESIGN.md section 7).
//! [`HistoryWriter::shutdown`] writes what it can within `shutdown_timeout` and
//! leaves the rest in the spool; dropping the last handle without it spools the
//! queue synchronously.
//!
//! **Poison events.** An event no database could store (an empty or too long
//! id, a too long name) is refused by `record` with
//! [`StoreError::InvalidEvent`]; long output and causes are trimmed (output keeps
//! its tail), NUL characters (which PostgreSQL refuses) are replaced. If a batch
//! is still refused for a reason that is not an outage, the writer writes its
//! events one by one and keeps the ones refused in `history.rejected` in the
//! spool directory, so one bad event cannot stop the history.
//!
//! **Errors and secrets.** [`StoreError`] names the URL with its password
//! masked ([`mask_url`]) and the cause, with the password scrubbed from driver
//! messages too; `Debug` of a store shows only the masked URL; nothing here logs
//! a URL unmasked.
//!
//! **Audit log.** `shardcron_audit` (auto-increment `id`, `at`, `actor`,
//! `action`, `target`, `detail` as JSON text; indexes on `at`, `(actor, at)`,
//! `(action, at)`): [`HistoryStore::record_audit`] adds an entry,
//! [`HistoryStore::audit`] pages through them newest first, filtered by actor
//! and action. Writing never fails on sizes: fields are cut to their columns and
//! a detail longer than [`MAX_AUDIT_DETAIL_BYTES`] is replaced by its start,
//! still as JSON. Nothing deletes audit entries.
//!
//! **Queries.** Filters by job, item, instance, statuses, sources, start and
//! fire-time ranges; sort by start or fire time, either direction, ties by id;
//! offset paging or keyset paging ([`ExecutionPage::next`]). Percentiles in
//! [`HistoryStore::job_summary`] are computed in Rust (nearest rank) because the
//! three databases disagree on percentile functions. Retention deletes in
//! batches of bounded size, each its own transaction, until nothing is left.
mod audit;
mod error;
mod event;
mod id;
mod spool;
mod sql;
mod store;
mod url;
mod writer;

pub use audit::{
    AuditEntry, AuditPage, AuditQuery, DEFAULT_AUDIT_PAGE, MAX_AUDIT_ACTION_LEN,
    MAX_AUDIT_ACTOR_LEN, MAX_AUDIT_DETAIL_BYTES, MAX_AUDIT_PAGE, MAX_AUDIT_TARGET_LEN,
};
pub use error::{Result, StoreError};
pub use event::{
    ExecutionUpdate, HistoryEvent, MAX_CAUSE_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_LEN,
    MAX_OUTPUT_BYTES,
};
pub use id::{MAX_ID_LEN, new_execution_id, new_execution_id_at};
pub use store::{
    DEFAULT_PAGE, ExecutionDetail, ExecutionPage, ExecutionQuery, HistoryStore, JobSummary,
    MAX_PAGE, PageCursor, SortKey, StoreOptions, Transition, TransitionEntry,
};
pub use url::{Backend, mask_url};
pub use writer::{HistoryWriter, WriterOptions, WriterStats};
