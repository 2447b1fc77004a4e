//! The backend conformance kit: the executable definition of the [`Registry`]
//! semantics (etcd v3's), run unchanged against every backend.
//!
//! A backend hands the kit a [`Factory`] that returns a fresh, isolated registry
//! each time it is called (the embedded backend: a new [`MemoryRegistry`]; etcd: a
//! client on a fresh namespace prefix). Then either
//!
//! - expand [`registry_conformance_tests!`](crate::registry_conformance_tests) in a
//!   test file, which gives every case its own `#[test]` (readable output, cases run
//!   in parallel), or
//! - call [`run_all`] from one test, which runs every case and panics naming the
//!   cases that failed.
//!
//! ```ignore
//! // tests/memory_conformance.rs
//! shardcron_registry::registry_conformance_tests!(
//!     shardcron_registry::conformance::factory(|| async { MemoryRegistry::new() })
//! );
//! ```
//!
//! # What the cases may assume
//!
//! The etcd backend runs the same cases against one etcd server shared by many
//! cases at once, each in its own namespace. So a case:
//!
//! - sees only its own keys, but never assumes where revisions start, nor that the
//!   revision moves only because of its own writes: it relates revisions through
//!   the revisions its own operations returned, with `>`/`>=` where another writer
//!   could interleave. Where an exact count matters ("a read-only txn does not bump
//!   the revision"), it brackets the operation between two writes of a marker key
//!   and retries until no foreign write landed in between (`between_markers`);
//! - waits for lease expiry with etcd's 2 s minimum TTL in mind: TTL 2 s, polled
//!   against an 8 s deadline;
//! - compacts only at a revision it obtained itself. Compaction is store-wide,
//!   though: on a shared server it can make a concurrently running case that
//!   replays history fail. Give the `compaction` case its own server (the macro's
//!   `compaction = ...` argument) or run it alone ([`run_all`] runs it last).
//!
//! Every wait is bounded (events: [`EVENT_TIMEOUT`]; a whole case:
//! [`CASE_TIMEOUT`]), so a backend that loses an event fails instead of hanging.
//!
//! [`MemoryRegistry`]: crate::MemoryRegistry

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::arbitrary::any;
use proptest::collection::vec as prop_vec;
use proptest::prop_oneof;
use proptest::strategy::{Just, Strategy};
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use crate::{
    Compare, CompareOp, CompareTarget, DeleteResponse, EventKind, KeyValue, LeaseId, MAX_TXN_OPS,
    OpResponse, RangeRequest, RangeResponse, Registry, RegistryError, Revision, Txn, TxnOp,
    TxnResponse, WatchBatch, WatchEvent, WatchStream,
};

/// A boxed, sendable future (what a [`Factory`] and a [`Case`] return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes a fresh registry for one case: empty as far as the case can tell (for a
/// shared etcd: a new namespace prefix), and seen by no other case.
pub type Factory = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn Registry>> + Send + Sync>;

/// One conformance case: runs against registries from the factory and panics,
/// saying what was expected, when the backend does not conform.
pub type Case = fn(Factory) -> BoxFuture<'static, ()>;

/// How long a case waits for a watch event it expects.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole case may take before it counts as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long after a lease's last renewal its keys may linger. etcd rounds TTLs
/// up to 2 s and checks expiry every 500 ms; the rest is slack for slow machines.
const LEASE_DEADLINE: Duration = Duration::from_secs(8);

/// The TTL the expiry cases ask for: etcd's minimum, so etcd does not round it.
const SHORT_TTL: Duration = Duration::from_secs(2);

/// A lease id no backend hands out in a test (etcd ids are member id + counter).
const UNKNOWN_LEASE: LeaseId = 0x5eed_0bad_1ea5_e000;

/// The key [`between_markers`] writes; no case watches or lists it.
const MARKER: &[u8] = b"~marker";

/// Builds a [`Factory`] from an async constructor of a concrete registry.
///
/// `make` is called once per case, inside the case's tokio runtime.
pub fn factory<F, Fut, R>(make: F) -> Factory
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: Registry,
{
    Arc::new(move || {
        let fut = make();
        Box::pin(async move { Arc::new(fut.await) as Arc<dyn Registry> })
    })
}

/// Every case, by name, in the order [`run_all`] reports them.
pub const CASES: &[(&str, Case)] = &[
    ("get_put_delete", |f| Box::pin(get_put_delete(f))),
    ("range_by_prefix", |f| Box::pin(range_by_prefix(f))),
    ("txn_compares", |f| Box::pin(txn_compares(f))),
    ("txn_branches", |f| Box::pin(txn_branches(f))),
    ("txn_limits", |f| Box::pin(txn_limits(f))),
    ("lease_lifecycle", |f| Box::pin(lease_lifecycle(f))),
    ("lease_revoke", |f| Box::pin(lease_revoke(f))),
    ("lease_expiry", |f| Box::pin(lease_expiry(f))),
    ("watch_live", |f| Box::pin(watch_live(f))),
    ("watch_history", |f| Box::pin(watch_history(f))),
    ("watch_resume", |f| Box::pin(watch_resume(f))),
    ("compaction", |f| Box::pin(compaction(f))),
    ("concurrent_writers", |f| Box::pin(concurrent_writers(f))),
    ("model_based", |f| Box::pin(model_based(f))),
];

/// The case that compacts the store, which [`run_all`] runs after the others
/// because compaction is store-wide.
const COMPACTION_CASE: &str = "compaction";

/// Runs every case against registries from `factory` and panics, naming each
/// failing case with its message, if any fails.
///
/// The cases run concurrently (as separate tasks), except the compaction case,
/// which runs alone afterwards so it cannot truncate the history another case is
/// replaying on a shared server. Call it from a multi-thread runtime so that the
/// concurrency cases run in parallel.
pub async fn run_all(factory: Factory) {
    let spawn = |name: &'static str, case: Case| {
        let f = factory.clone();
        (
            name,
            tokio::spawn(async move {
                match tokio::time::timeout(CASE_TIMEOUT, case(f)).await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(format!("did not finish within {CASE_TIMEOUT:?}")),
                }
            }),
        )
    };
    let mut failures = Vec::new();
    let mut collect = |name: &str, joined: Result<Result<(), String>, tokio::task::JoinError>| {
        let failure = match joined {
            Ok(Ok(())) => return,
            Ok(Err(timeout)) => timeout,
            Err(e) if e.is_panic() => panic_message(e.into_panic()),
            Err(e) => format!("task failed: {e}"),
        };
        failures.push(format!("{name}: {failure}"));
    };
    let running: Vec<_> = CASES
        .iter()
        .filter(|(name, _)| *name != COMPACTION_CASE)
        .map(|&(name, case)| spawn(name, case))
        .collect();
    for (name, handle) in running {
        collect(name, handle.await);
    }
    for &(name, case) in CASES.iter().filter(|(name, _)| *name == COMPACTION_CASE) {
        let (name, handle) = spawn(name, case);
        collect(name, handle.await);
    }
    if !failures.is_empty() {
        panic!(
            "registry conformance: {} of {} cases failed:\n- {}",
            failures.len(),
            CASES.len(),
            failures.join("\n- ")
        );
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "panicked (non-string payload)".to_string(),
        },
    }
}

/// Runs one case on its own multi-thread runtime (what the tests generated by
/// [`registry_conformance_tests!`](crate::registry_conformance_tests) call).
///
/// `make_factory` runs inside the runtime, so it may build clients that need one.
pub fn run_case(name: &str, make_factory: impl FnOnce() -> Factory, case: Case) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance case should build");
    runtime.block_on(async move {
        let factory = make_factory();
        if tokio::time::timeout(CASE_TIMEOUT, case(factory))
            .await
            .is_err()
        {
            panic!("conformance case {name} did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

/// Checks that a test list generated by the macro names exactly [`CASES`] (so
/// that a case added to the kit but not to the macro is noticed).
pub fn check_case_list(listed: &[&str]) {
    let mut listed: Vec<&str> = listed.to_vec();
    let mut known: Vec<&str> = CASES.iter().map(|(name, _)| *name).collect();
    listed.sort_unstable();
    known.sort_unstable();
    assert_eq!(
        listed, known,
        "registry_conformance_tests! should expand to exactly one test per conformance::CASES entry"
    );
}

/// Expands to one `#[test]` per conformance case, each on its own multi-thread
/// tokio runtime, plus a test that the list is complete.
///
/// The argument is an expression of type [`conformance::Factory`](crate::conformance::Factory),
/// evaluated inside each test's runtime. With `compaction = <expr>`, the
/// compaction case uses that factory instead: on a shared etcd, point it at a
/// server of its own, because compaction truncates every namespace's history.
///
/// ```ignore
/// mod memory {
///     shardcron_registry::registry_conformance_tests!(
///         shardcron_registry::conformance::factory(|| async { MemoryRegistry::new() })
///     );
/// }
/// ```
#[macro_export]
macro_rules! registry_conformance_tests {
    (@cases ($factory:expr) [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case(
                    ::std::stringify!($case),
                    || $factory,
                    |f| ::std::boxed::Box::pin($crate::conformance::$case(f)),
                );
            }
        )*

        #[test]
        fn conformance_case_list_is_complete() {
            $crate::conformance::check_case_list(&[
                $(::std::stringify!($case),)*
                "compaction",
            ]);
        }
    };
    ($factory:expr, compaction = $compaction:expr $(,)?) => {
        $crate::registry_conformance_tests!(@cases ($factory) [
            get_put_delete,
            range_by_prefix,
            txn_compares,
            txn_branches,
            txn_limits,
            lease_lifecycle,
            lease_revoke,
            lease_expiry,
            watch_live,
            watch_history,
            watch_resume,
            concurrent_writers,
            model_based,
        ]);

        #[test]
        fn compaction() {
            $crate::conformance::run_case(
                "compaction",
                || $compaction,
                |f| ::std::boxed::Box::pin($crate::conformance::compaction(f)),
            );
        }
    };
    ($factory:expr $(,)?) => {
        $crate::registry_conformance_tests!($factory, compaction = $factory);
    };
}

// ---------------------------------------------------------------------------
// Readable output: keys and values are bytes, and `Vec<u8>`'s Debug is a list of
// numbers, which makes a failing comparison unreadable.

/// Bytes shown as an escaped string.
struct B<'a>(&'a [u8]);

impl fmt::Display for B<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

fn show_kv(kv: &KeyValue) -> String {
    format!(
        "{}={} (create {}, mod {}, version {}, lease {:#x})",
        B(&kv.key),
        B(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease
    )
}

fn show_opt_kv(kv: Option<&KeyValue>) -> String {
    kv.map_or_else(|| "none".to_string(), show_kv)
}

fn show_kvs(kvs: &[KeyValue]) -> String {
    let items: Vec<String> = kvs.iter().map(show_kv).collect();
    format!("[{}]", items.join(", "))
}

fn show_event(e: &WatchEvent) -> String {
    format!(
        "{:?} {} prev: {}",
        e.kind,
        show_kv(&e.kv),
        show_opt_kv(e.prev.as_ref())
    )
}

fn show_events(events: &[WatchEvent]) -> String {
    if events.is_empty() {
        return "    (none)".to_string();
    }
    let lines: Vec<String> = events
        .iter()
        .map(|e| format!("    {}", show_event(e)))
        .collect();
    lines.join("\n")
}

fn show_op_response(r: &OpResponse) -> String {
    match r {
        OpResponse::Put { prev } => format!("Put {{ prev: {} }}", show_opt_kv(prev.as_ref())),
        OpResponse::Delete { deleted } => format!("Delete {{ deleted: {} }}", show_kvs(deleted)),
        OpResponse::Get { kvs } => format!("Get {{ kvs: {} }}", show_kvs(kvs)),
    }
}

fn show_responses(rs: &[OpResponse]) -> String {
    let items: Vec<String> = rs.iter().map(show_op_response).collect();
    format!("[{}]", items.join(", "))
}

fn show_compare(c: &Compare) -> String {
    let target = match &c.target {
        CompareTarget::Value(v) => format!("value {}", B(v)),
        CompareTarget::CreateRevision(r) => format!("create_revision {r}"),
        CompareTarget::ModRevision(r) => format!("mod_revision {r}"),
        CompareTarget::Version(v) => format!("version {v}"),
        CompareTarget::Lease(l) => format!("lease {l:#x}"),
    };
    format!("{} {:?} {target}", B(&c.key), c.op)
}

#[track_caller]
fn assert_kv(actual: Option<&KeyValue>, expected: Option<&KeyValue>, what: &str) {
    if actual != expected {
        panic!(
            "{what}:\n  expected {}\n  got      {}",
            show_opt_kv(expected),
            show_opt_kv(actual)
        );
    }
}

#[track_caller]
fn assert_kvs(actual: &[KeyValue], expected: &[KeyValue], what: &str) {
    if actual != expected {
        panic!(
            "{what}:\n  expected {}\n  got      {}",
            show_kvs(expected),
            show_kvs(actual)
        );
    }
}

#[track_caller]
fn assert_events(actual: &[WatchEvent], expected: &[WatchEvent], what: &str) {
    if actual != expected {
        panic!(
            "{what}:\n  expected events:\n{}\n  got:\n{}",
            show_events(expected),
            show_events(actual)
        );
    }
}

#[track_caller]
fn assert_responses(actual: &TxnResponse, succeeded: bool, expected: &[OpResponse], what: &str) {
    if actual.succeeded != succeeded || actual.responses != expected {
        panic!(
            "{what}:\n  expected succeeded={succeeded}, responses {}\n  got      succeeded={}, responses {}",
            show_responses(expected),
            actual.succeeded,
            show_responses(&actual.responses)
        );
    }
}

// ---------------------------------------------------------------------------
// Expected values.

fn kv(
    key: &[u8],
    value: &[u8],
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    lease: LeaseId,
) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
        version,
        lease,
    }
}

/// The `kv` of a delete event, as etcd sends it: only the key and the deletion's
/// revision are set.
fn tombstone(key: &[u8], revision: Revision) -> KeyValue {
    kv(key, b"", 0, revision, 0, 0)
}

fn put_event(kv: KeyValue, prev: Option<KeyValue>) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Put,
        kv,
        prev,
    }
}

fn delete_event(prev: KeyValue, revision: Revision) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: tombstone(&prev.key, revision),
        prev: Some(prev),
    }
}

// ---------------------------------------------------------------------------
// Registry calls that must succeed.

async fn put(reg: &dyn Registry, key: &[u8], value: &[u8]) -> Revision {
    reg.put(key, value, None)
        .await
        .unwrap_or_else(|e| panic!("put {}={} should succeed: {e}", B(key), B(value)))
}

async fn put_leased(reg: &dyn Registry, key: &[u8], value: &[u8], lease: LeaseId) -> Revision {
    reg.put(key, value, Some(lease)).await.unwrap_or_else(|e| {
        panic!(
            "put {}={} with lease {lease:#x} should succeed: {e}",
            B(key),
            B(value)
        )
    })
}

async fn get(reg: &dyn Registry, key: &[u8]) -> Option<KeyValue> {
    reg.get(key)
        .await
        .unwrap_or_else(|e| panic!("get {} should succeed: {e}", B(key)))
}

async fn delete(reg: &dyn Registry, key: &[u8]) -> DeleteResponse {
    reg.delete(key)
        .await
        .unwrap_or_else(|e| panic!("delete {} should succeed: {e}", B(key)))
}

async fn range(reg: &dyn Registry, req: RangeRequest) -> RangeResponse {
    reg.range(req.clone())
        .await
        .unwrap_or_else(|e| panic!("range {req:?} should succeed: {e}"))
}

async fn txn(reg: &dyn Registry, t: Txn) -> TxnResponse {
    reg.txn(t.clone())
        .await
        .unwrap_or_else(|e| panic!("txn {t:?} should succeed: {e}"))
}

async fn current_revision(reg: &dyn Registry) -> Revision {
    reg.current_revision()
        .await
        .expect("current_revision should succeed")
}

/// Runs `op` (which reports a revision) between two writes of [`MARKER`] and
/// checks that it reports exactly `writes` revisions after the first marker.
///
/// On a shared store another writer may land between the markers; then the gap
/// says nothing and the attempt is repeated. A backend that bumps the revision
/// wrongly widens the gap every time and fails after the last attempt.
async fn between_markers<F, Fut>(reg: &dyn Registry, writes: i64, what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Revision>,
{
    const ATTEMPTS: u64 = 40;
    let mut last = (0, 0, 0);
    for attempt in 0..ATTEMPTS {
        let before = put(reg, MARKER, b"before").await;
        let reported = op().await;
        let after = put(reg, MARKER, b"after").await;
        let gap = after - before - 1;
        assert!(
            gap >= writes,
            "{what}: should write {writes} revision(s), but only {gap} revision(s) passed \
             between the marker writes at {before} and {after}"
        );
        if gap == writes {
            assert_eq!(
                reported,
                before + writes,
                "{what}: with nothing else written in between, it should report revision \
                 {} (marker at {before}, {writes} write(s)), but reported {reported}",
                before + writes
            );
            return;
        }
        last = (before, reported, after);
        tokio::time::sleep(Duration::from_millis(5 * (attempt + 1))).await;
    }
    let (before, reported, after) = last;
    panic!(
        "{what}: should write {writes} revision(s), but in {ATTEMPTS} attempts more revisions \
         always passed between the two marker writes (last: markers at {before} and {after}, \
         it reported {reported}); on a store no one else writes to, it bumps the revision \
         more than it should"
    );
}

/// Waits until every key in `keys` is gone, at most [`LEASE_DEADLINE`] after
/// `since`. Returns how long it took.
async fn wait_until_gone(
    reg: &dyn Registry,
    keys: &[&[u8]],
    since: Instant,
    what: &str,
) -> Duration {
    loop {
        let mut remaining = Vec::new();
        for &k in keys {
            if get(reg, k).await.is_some() {
                remaining.push(B(k).to_string());
            }
        }
        if remaining.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() <= LEASE_DEADLINE,
            "{what}: keys {} should be deleted within {LEASE_DEADLINE:?}, but still exist after {:?}",
            remaining.join(", "),
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Watching.

/// A watch stream with the checks every delivery must pass: events under the
/// prefix, at or after the start revision, in revision order.
struct Watcher {
    what: String,
    prefix: Vec<u8>,
    from: Revision,
    stream: WatchStream,
    /// Events of a received batch not yet handed out by `next_event`.
    pending: VecDeque<WatchEvent>,
    /// Revision of the last event received.
    last: Revision,
}

impl Watcher {
    async fn open(reg: &dyn Registry, prefix: &[u8], from: Revision, what: &str) -> Watcher {
        let stream = reg.watch(prefix, from).await.unwrap_or_else(|e| {
            panic!(
                "{what}: watch {} from revision {from} should succeed: {e}",
                B(prefix)
            )
        });
        Watcher {
            what: what.to_string(),
            prefix: prefix.to_vec(),
            from,
            stream,
            pending: VecDeque::new(),
            last: 0,
        }
    }

    /// The next batch as the backend delivered it (requires `pending` empty).
    async fn next_batch(&mut self) -> WatchBatch {
        assert!(
            self.pending.is_empty(),
            "kit bug: next_batch with events pending"
        );
        self.receive().await
    }

    async fn receive(&mut self) -> WatchBatch {
        let what = &self.what;
        let batch = match tokio::time::timeout(EVENT_TIMEOUT, self.stream.next()).await {
            Err(_) => panic!(
                "{what}: expected a watch event within {EVENT_TIMEOUT:?} (last event received \
                 at revision {}), got nothing",
                self.last
            ),
            Ok(None) => panic!("{what}: the watch ended while events were still expected"),
            Ok(Some(Err(e))) => panic!("{what}: the watch failed while events were expected: {e}"),
            Ok(Some(Ok(batch))) => batch,
        };
        for e in &batch {
            assert!(
                e.kv.key.starts_with(&self.prefix),
                "{what}: watch on prefix {} delivered an event for another key: {}",
                B(&self.prefix),
                show_event(e)
            );
            assert!(
                e.revision() >= self.last,
                "{what}: events must arrive in revision order, but {} came after revision {}",
                show_event(e),
                self.last
            );
            assert!(
                self.from == 0 || e.revision() >= self.from,
                "{what}: watch from revision {} delivered an older event: {}",
                self.from,
                show_event(e)
            );
            self.last = e.revision();
        }
        batch
    }

    async fn next_event(&mut self) -> WatchEvent {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            let batch = self.receive().await;
            self.pending.extend(batch);
        }
    }

    async fn take(&mut self, n: usize) -> Vec<WatchEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event().await);
        }
        out
    }

    /// Every event before the sentinel write `key` at `revision`.
    async fn until_sentinel(&mut self, key: &[u8], revision: Revision) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        loop {
            let e = self.next_event().await;
            if e.kind == EventKind::Put && e.kv.key == key && e.revision() == revision {
                return out;
            }
            assert!(
                e.revision() < revision,
                "{}: the sentinel write {} at revision {revision} was never delivered; got {}",
                self.what,
                B(key),
                show_event(&e)
            );
            out.push(e);
        }
    }

    /// Checks that the next event is the sentinel write `key` at `revision`: that
    /// nothing unexpected was delivered before it. (Deterministic, unlike waiting
    /// for silence.)
    async fn expect_sentinel(&mut self, key: &[u8], revision: Revision) {
        let e = self.next_event().await;
        assert!(
            e.kind == EventKind::Put && e.kv.key == key && e.revision() == revision,
            "{}: expected no further events before the sentinel write {} at revision {revision}, \
             but got {}",
            self.what,
            B(key),
            show_event(&e)
        );
    }
}

/// Expects `watch(prefix, from)` to fail with [`RegistryError::Compacted`],
/// either from the call itself or as the first item of the stream.
async fn expect_compacted(
    reg: &dyn Registry,
    prefix: &[u8],
    from: Revision,
    compacted_at: Revision,
) {
    let err = match reg.watch(prefix, from).await {
        Err(e) => e,
        Ok(mut stream) => match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
            Ok(Some(Err(e))) => e,
            Ok(Some(Ok(batch))) => panic!(
                "watch from revision {from} after compacting at {compacted_at} should fail with \
                 Compacted, but delivered events:\n{}",
                show_events(&batch)
            ),
            Ok(None) => panic!(
                "watch from revision {from} after compacting at {compacted_at} should fail with \
                 Compacted, but the stream just ended"
            ),
            Err(_) => panic!(
                "watch from revision {from} after compacting at {compacted_at} should fail with \
                 Compacted, but nothing arrived within {EVENT_TIMEOUT:?}"
            ),
        },
    };
    match err {
        RegistryError::Compacted {
            requested,
            compacted,
        } => {
            assert_eq!(
                requested, from,
                "Compacted error should carry the requested start revision"
            );
            assert!(
                compacted >= compacted_at,
                "Compacted error should report the compacted revision (at least {compacted_at}), \
                 got {compacted}"
            );
        }
        other => panic!(
            "watch from revision {from} after compacting at {compacted_at} should fail with \
             Compacted, got: {other}"
        ),
    }
}

#[track_caller]
fn assert_lease_not_found<T: fmt::Debug>(result: crate::Result<T>, id: LeaseId, what: &str) {
    match result {
        Err(RegistryError::LeaseNotFound(got)) if got == id => {}
        other => panic!("{what}: expected LeaseNotFound({id:#x}), got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid<T: fmt::Debug>(result: crate::Result<T>, what: &str) {
    match result {
        Err(RegistryError::InvalidRequest(_)) => {}
        other => panic!("{what}: expected InvalidRequest, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. get / put / delete

/// Get, put and delete of single keys: the metadata each write sets, what delete
/// returns, and how much each operation moves the revision.
pub async fn get_put_delete(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();

    assert_kv(
        get(reg, b"k").await.as_ref(),
        None,
        "get of a key never written",
    );

    let r1 = put(reg, b"k", b"v1").await;
    assert!(r1 > 0, "put should return a positive revision, got {r1}");
    assert_kv(
        get(reg, b"k").await.as_ref(),
        Some(&kv(b"k", b"v1", r1, r1, 1, 0)),
        "after creating a key, get should show create = mod = the put's revision, version 1, \
         lease 0",
    );

    let r2 = put(reg, b"k", b"v2").await;
    assert!(
        r2 > r1,
        "a later put should return a higher revision ({r2} after {r1})"
    );
    assert_kv(
        get(reg, b"k").await.as_ref(),
        Some(&kv(b"k", b"v2", r1, r2, 2, 0)),
        "after overwriting, create_revision should stay, mod_revision be the overwrite's \
         revision, version 2",
    );
    let cur = current_revision(reg).await;
    assert!(
        cur >= r2,
        "current_revision {cur} should be at least the last put's {r2}"
    );

    let d = delete(reg, b"k").await;
    assert!(
        d.revision > r2,
        "delete of an existing key should return a new revision, got {} after {r2}",
        d.revision
    );
    assert_kv(
        d.prev.as_ref(),
        Some(&kv(b"k", b"v2", r1, r2, 2, 0)),
        "delete should return the deleted pair",
    );
    assert_kv(get(reg, b"k").await.as_ref(), None, "get after delete");

    let d2 = delete(reg, b"k").await;
    assert_kv(
        d2.prev.as_ref(),
        None,
        "delete of a missing key should return no pair",
    );
    assert!(
        d2.revision >= d.revision,
        "delete of a missing key should report the store revision ({} < {})",
        d2.revision,
        d.revision
    );

    let r3 = put(reg, b"k", b"v3").await;
    assert!(
        r3 > d.revision,
        "put after delete should return a new revision"
    );
    assert_kv(
        get(reg, b"k").await.as_ref(),
        Some(&kv(b"k", b"v3", r3, r3, 1, 0)),
        "a key re-created after a delete should start over: create = mod = {r3}, version 1",
    );

    // An empty value is a value: the key exists.
    let re = put(reg, b"empty", b"").await;
    assert_kv(
        get(reg, b"empty").await.as_ref(),
        Some(&kv(b"empty", b"", re, re, 1, 0)),
        "a key with an empty value should exist",
    );

    // Keys and values are arbitrary bytes.
    let key: &[u8] = &[0, 0xff, b'/', 0x80];
    let value: &[u8] = &[0xff, 0, 0x7f];
    let rb = put(reg, key, value).await;
    assert_kv(
        get(reg, key).await.as_ref(),
        Some(&kv(key, value, rb, rb, 1, 0)),
        "binary key and value should round-trip",
    );

    // The empty key is refused, as in a txn (etcd: "key is not provided"; behind a
    // namespace prefix the backend has to check, or it would write the prefix).
    assert_invalid(reg.put(b"", b"v", None).await, "put of the empty key");

    // Deleting one key leaves the others alone.
    delete(reg, b"k").await;
    assert_kv(
        get(reg, b"empty").await.as_ref(),
        Some(&kv(b"empty", b"", re, re, 1, 0)),
        "deleting another key should not touch this one",
    );

    // Exact revision accounting.
    between_markers(
        reg,
        1,
        "a put",
        || async move { put(reg, b"x", b"1").await },
    )
    .await;
    between_markers(reg, 2, "a put then a delete of that key", || async move {
        put(reg, b"y", b"1").await;
        delete(reg, b"y").await.revision
    })
    .await;
    between_markers(reg, 0, "a delete of a missing key", || async move {
        delete(reg, b"never-written").await.revision
    })
    .await;
    between_markers(reg, 0, "current_revision", || async move {
        current_revision(reg).await
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. range

/// Range reads by prefix: key order, prefix isolation, limit/more/count,
/// `start_after` paging, count_only, empty results, prefixes ending in 0xff.
pub async fn range_by_prefix(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();

    // Written out of order; "a", "a.", "a0" and "ab" sort around "a/" but are not
    // under it ('.' < '/' < '0').
    let keys: &[&[u8]] = &[
        b"a/3", b"a/1", b"a/10", b"ab", b"a", b"a/2", b"a.", b"a0", b"a/", b"b/1",
    ];
    let mut written: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    let mut last = 0;
    for &k in keys {
        let value = [b"v:".as_slice(), k].concat();
        let r = put(reg, k, &value).await;
        written.insert(k.to_vec(), kv(k, &value, r, r, 1, 0));
        last = r;
    }
    let under = |prefix: &[u8]| -> Vec<KeyValue> {
        written
            .values()
            .filter(|kv| kv.key.starts_with(prefix))
            .cloned()
            .collect()
    };
    let slash = under(b"a/");
    assert_eq!(slash.len(), 5, "kit bug: expected 5 keys under a/");

    let all = range(reg, RangeRequest::prefix("a/")).await;
    assert_kvs(
        &all.kvs,
        &slash,
        "range a/ should return exactly the keys under a/, in byte order",
    );
    assert_eq!(all.count, 5, "range a/: count");
    assert!(!all.more, "range a/ without limit: more should be false");
    assert!(
        all.revision >= last,
        "range should be served at the current revision ({} < last write {last})",
        all.revision
    );

    let a = range(reg, RangeRequest::prefix("a")).await;
    assert_kvs(
        &a.kvs,
        &under(b"a"),
        "range a should include a, a., a/..., a0, ab",
    );
    let everything = range(reg, RangeRequest::prefix("")).await;
    assert_kvs(
        &everything.kvs,
        &written.values().cloned().collect::<Vec<_>>(),
        "range with the empty prefix should return every key",
    );

    for (limit, more) in [(1, true), (2, true), (4, true), (5, false), (6, false)] {
        let r = range(
            reg,
            RangeRequest {
                limit,
                ..RangeRequest::prefix("a/")
            },
        )
        .await;
        assert_kvs(
            &r.kvs,
            &slash[..limit.min(5)],
            &format!("range a/ with limit {limit} should return the first keys"),
        );
        assert_eq!(r.more, more, "range a/ with limit {limit}: more");
        assert_eq!(
            r.count, 5,
            "range a/ with limit {limit}: count ignores the limit"
        );
    }

    let counted = range(
        reg,
        RangeRequest {
            count_only: true,
            ..RangeRequest::prefix("a/")
        },
    )
    .await;
    assert_kvs(&counted.kvs, &[], "count_only should return no pairs");
    assert_eq!(counted.count, 5, "count_only: count");

    let empty = range(reg, RangeRequest::prefix("zz/")).await;
    assert_kvs(&empty.kvs, &[], "range of a prefix with no keys");
    assert_eq!(empty.count, 0, "empty range: count");
    assert!(!empty.more, "empty range: more");
    assert!(
        empty.revision >= last,
        "an empty range should still report the store revision ({} < {last})",
        empty.revision
    );

    // start_after: the keys under the prefix strictly after the given key.
    for (after, expected_from) in [
        (b"a/10".as_slice(), 3usize),
        (b"a/0", 1),
        (b"a/", 1),
        (b"a", 0),
        (b"", 0),
        (b"a/3", 5),
        (b"a/4", 5),
        (b"b", 5),
    ] {
        let r = range(
            reg,
            RangeRequest {
                start_after: Some(after.to_vec()),
                ..RangeRequest::prefix("a/")
            },
        )
        .await;
        assert_kvs(
            &r.kvs,
            &slash[expected_from..],
            &format!(
                "range a/ with start_after {} should return the keys under a/ after it",
                B(after)
            ),
        );
        assert!(
            !r.more,
            "range with start_after {} and no limit: more",
            B(after)
        );
        assert_eq!(
            r.count,
            5,
            "range with start_after {}: count ignores start_after",
            B(after)
        );
    }

    // Paging with start_after = last key of the previous page covers every key
    // exactly once.
    let mut paged_keys = Vec::new();
    for i in 0..25 {
        let k = format!("p/{i:02}");
        put(reg, k.as_bytes(), b"x").await;
        paged_keys.push(k.into_bytes());
    }
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut after = None;
    for page in 0.. {
        assert!(page < 30, "paging through 25 keys 4 at a time did not end");
        let r = range(
            reg,
            RangeRequest {
                start_after: after.clone(),
                limit: 4,
                ..RangeRequest::prefix("p/")
            },
        )
        .await;
        assert!(r.kvs.len() <= 4, "a page should hold at most the limit");
        assert_eq!(
            r.count, 25,
            "page {page}: count ignores limit and start_after"
        );
        seen.extend(r.kvs.iter().map(|kv| kv.key.clone()));
        if !r.more {
            break;
        }
        let last_key = r
            .kvs
            .last()
            .unwrap_or_else(|| panic!("page {page} is empty but says more keys follow"));
        after = Some(last_key.key.clone());
    }
    let seen_shown: Vec<String> = seen.iter().map(|k| B(k).to_string()).collect();
    assert_eq!(
        seen, paged_keys,
        "paging should return every key exactly once, in order; got {seen_shown:?}"
    );

    // Prefixes ending in 0xff: the end of the range is not "prefix + 1 at the
    // last byte".
    let ff_keys: &[&[u8]] = &[
        &[b'x', 0xff],
        &[b'x', 0xff, 0],
        &[b'x', 0xff, 0xff],
        &[b'x', 0xfe, 0xff],
        b"y",
        &[0xff, 0xff],
        &[0xff, 0xff, 1],
        &[0xff, 0xfe],
    ];
    for &k in ff_keys {
        put(reg, k, b"ff").await;
    }
    for (prefix, expected) in [
        (
            [b'x', 0xff].as_slice(),
            vec![
                vec![b'x', 0xff],
                vec![b'x', 0xff, 0],
                vec![b'x', 0xff, 0xff],
            ],
        ),
        (&[0xff, 0xff], vec![vec![0xff, 0xff], vec![0xff, 0xff, 1]]),
    ] {
        let r = range(reg, RangeRequest::prefix(prefix)).await;
        let got: Vec<Vec<u8>> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(
            got,
            expected,
            "range of prefix {} should return exactly the keys starting with it",
            B(prefix)
        );
    }
}

// ---------------------------------------------------------------------------
// 3. transactions

fn holds(ord: Ordering, op: CompareOp) -> bool {
    match op {
        CompareOp::Equal => ord.is_eq(),
        CompareOp::NotEqual => ord.is_ne(),
        CompareOp::Greater => ord.is_gt(),
        CompareOp::Less => ord.is_lt(),
    }
}

/// What etcd decides for a compare against `kv` (`None`: the key is missing,
/// whose numeric fields count as 0 and whose value compares false for any op).
fn etcd_compare(kv: Option<&KeyValue>, target: &CompareTarget, op: CompareOp) -> bool {
    let ord = match (target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
        (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
        (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
        (CompareTarget::Lease(l), kv) => kv.map_or(0, |kv| kv.lease).cmp(l),
    };
    holds(ord, op)
}

/// Operands around the actual values of `kv` (below, equal, above), so that every
/// operator is tried with each outcome.
fn compare_targets(kv: Option<&KeyValue>) -> Vec<CompareTarget> {
    let around = |x: i64| [0, x.saturating_sub(1), x, x.saturating_add(1), -1];
    let (create, modr, version, lease) = kv.map_or((0, 0, 0, 0), |kv| {
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease)
    });
    let mut targets = Vec::new();
    let values: &[&[u8]] = &[b"", b"a", b"m", b"m\0", b"mm", b"n", b"M", b"\xff"];
    targets.extend(values.iter().map(|v| CompareTarget::Value(v.to_vec())));
    targets.extend(around(create).map(CompareTarget::CreateRevision));
    targets.extend(around(modr).map(CompareTarget::ModRevision));
    targets.extend(around(version).map(CompareTarget::Version));
    targets.extend(around(lease).map(CompareTarget::Lease));
    targets
}

/// Every compare target with every operator, on an existing key (value, create
/// and mod revision, version and lease all set), a key with an empty value and a
/// missing key; conjunction of several compares.
pub async fn txn_compares(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();

    let lease = reg
        .lease_grant(Duration::from_secs(60))
        .await
        .expect("lease_grant(60 s) should succeed");
    let r_a = put(reg, b"k", b"a").await;
    let r_m = put_leased(reg, b"k", b"m", lease.id).await;
    let k = kv(b"k", b"m", r_a, r_m, 2, lease.id);
    assert_kv(
        get(reg, b"k").await.as_ref(),
        Some(&k),
        "setup: k after two puts",
    );
    let r_e = put(reg, b"empty", b"").await;
    let empty = kv(b"empty", b"", r_e, r_e, 1, 0);

    let ops = [
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ];
    let mut checked = 0;
    for (key, state) in [
        (b"k".as_slice(), Some(&k)),
        (b"empty", Some(&empty)),
        (b"missing", None),
    ] {
        for target in compare_targets(state) {
            for op in ops {
                let c = Compare::new(key, op, target.clone());
                let expected = etcd_compare(state, &target, op);
                let resp = txn(
                    reg,
                    Txn::new()
                        .when(c.clone())
                        .and_then(TxnOp::get(key))
                        .or_else(TxnOp::get(b"k")),
                )
                .await;
                assert_eq!(
                    resp.succeeded,
                    expected,
                    "compare {} against {} should be {expected}{}",
                    show_compare(&c),
                    show_opt_kv(state),
                    if state.is_none() && matches!(target, CompareTarget::Value(_)) {
                        " (etcd: a value compare on a missing key is always false)"
                    } else if state.is_none() {
                        " (etcd: a missing key has create/mod revision, version and lease 0)"
                    } else {
                        ""
                    }
                );
                let expected_kvs: Vec<KeyValue> = if expected {
                    state.into_iter().cloned().collect()
                } else {
                    vec![k.clone()]
                };
                assert_responses(
                    &resp,
                    expected,
                    &[OpResponse::Get { kvs: expected_kvs }],
                    &format!("compare {}: the branch's Get", show_compare(&c)),
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "kit bug: too few compares checked");

    // Compares are a conjunction; no compares at all is true.
    let yes = Compare::new("k", CompareOp::Equal, CompareTarget::Value(b"m".to_vec()));
    let no = Compare::new("k", CompareOp::Equal, CompareTarget::Version(1));
    let both = |cs: Vec<Compare>| Txn {
        compares: cs,
        ..Txn::default()
    };
    assert!(
        txn(reg, both(vec![yes.clone(), Compare::exists("empty")]))
            .await
            .succeeded,
        "two true compares should succeed"
    );
    assert!(
        !txn(reg, both(vec![yes.clone(), no.clone()]))
            .await
            .succeeded,
        "a true and a false compare should fail"
    );
    assert!(
        !txn(reg, both(vec![no, yes])).await.succeeded,
        "a false and a true compare should fail"
    );
    assert!(
        txn(reg, Txn::new()).await.succeeded,
        "a txn without compares should succeed"
    );
    assert!(
        txn(
            reg,
            both(vec![Compare::absent("missing"), Compare::exists("k")])
        )
        .await
        .succeeded,
        "Compare::absent on a missing key and Compare::exists on an existing key should hold"
    );
    assert!(
        !txn(reg, both(vec![Compare::absent("k")])).await.succeeded,
        "Compare::absent on an existing key should fail"
    );
    assert!(
        !txn(reg, both(vec![Compare::exists("missing")]))
            .await
            .succeeded,
        "Compare::exists on a missing key should fail"
    );

    reg.lease_revoke(lease.id)
        .await
        .expect("revoking the case's lease should succeed");
}

/// Transaction branches: responses per operation, all writes at one revision
/// (which the response reports), reads inside a txn seeing its earlier writes,
/// the else branch, leases in a txn, the create-if-absent pattern, and no
/// revision bump for a txn that writes nothing.
pub async fn txn_branches(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();

    let r_x = put(reg, b"t/x", b"1").await;
    let r_y = put(reg, b"t/y", b"2").await;
    let r_z = put(reg, b"t/z", b"3").await;
    let x = kv(b"t/x", b"1", r_x, r_x, 1, 0);
    let y = kv(b"t/y", b"2", r_y, r_y, 1, 0);
    let z = kv(b"t/z", b"3", r_z, r_z, 1, 0);
    let mut w = Watcher::open(reg, b"t/", r_z + 1, "txn_branches watch on t/").await;

    let t = Txn::new()
        .when(Compare::new(
            "t/x",
            CompareOp::Equal,
            CompareTarget::Value(b"1".to_vec()),
        ))
        .and_then(TxnOp::put("t/new", "n"))
        .and_then(TxnOp::put("t/x", "1b"))
        .and_then(TxnOp::delete("t/y"))
        .and_then(TxnOp::delete("t/missing"))
        .and_then(TxnOp::get("t/x"))
        .and_then(TxnOp::get("t/missing"))
        .and_then(TxnOp::get("t/y"))
        .and_then(TxnOp::GetPrefix {
            prefix: b"t/".to_vec(),
        })
        .or_else(TxnOp::put("t/never", "x"));
    let resp = txn(reg, t).await;
    let rev = resp.revision;
    assert!(
        rev > r_z,
        "a txn that writes should report a new revision ({rev} after {r_z})"
    );
    let new = kv(b"t/new", b"n", rev, rev, 1, 0);
    let x2 = kv(b"t/x", b"1b", r_x, rev, 2, 0);
    assert_responses(
        &resp,
        true,
        &[
            OpResponse::Put { prev: None },
            OpResponse::Put {
                prev: Some(x.clone()),
            },
            OpResponse::Delete {
                deleted: vec![y.clone()],
            },
            OpResponse::Delete { deleted: vec![] },
            // Reads in a txn see its earlier writes (etcd applies ops in order).
            OpResponse::Get {
                kvs: vec![x2.clone()],
            },
            OpResponse::Get { kvs: vec![] },
            OpResponse::Get { kvs: vec![] },
            OpResponse::Get {
                kvs: vec![new.clone(), x2.clone(), z.clone()],
            },
        ],
        "txn whose compare holds: one response per then-op, in order",
    );
    assert_kv(
        get(reg, b"t/new").await.as_ref(),
        Some(&new),
        "a key created by the txn should carry the txn's revision",
    );
    assert_kv(
        get(reg, b"t/x").await.as_ref(),
        Some(&x2),
        "a key overwritten by the txn should carry the txn's revision",
    );
    assert_kv(
        get(reg, b"t/y").await.as_ref(),
        None,
        "a key deleted by the txn",
    );
    assert_kv(
        get(reg, b"t/never").await.as_ref(),
        None,
        "the else branch must not run",
    );
    let events = w.take(3).await;
    assert_events(
        &events,
        &[
            put_event(new.clone(), None),
            put_event(x2.clone(), Some(x.clone())),
            delete_event(y.clone(), rev),
        ],
        "the txn's writes should be watched as events at one revision, in operation order",
    );

    // The else branch.
    let resp = txn(
        reg,
        Txn::new()
            .when(Compare::new(
                "t/z",
                CompareOp::Equal,
                CompareTarget::Value(b"nope".to_vec()),
            ))
            .and_then(TxnOp::put("t/never", "x"))
            .or_else(TxnOp::put("t/else", "e"))
            .or_else(TxnOp::get("t/z")),
    )
    .await;
    let r_else = resp.revision;
    assert!(
        r_else > rev,
        "the else branch's write should get a new revision"
    );
    assert_responses(
        &resp,
        false,
        &[
            OpResponse::Put { prev: None },
            OpResponse::Get {
                kvs: vec![z.clone()],
            },
        ],
        "txn whose compare fails: one response per else-op",
    );
    assert_kv(
        get(reg, b"t/never").await.as_ref(),
        None,
        "the then branch must not run",
    );
    assert_kv(
        get(reg, b"t/else").await.as_ref(),
        Some(&kv(b"t/else", b"e", r_else, r_else, 1, 0)),
        "the else branch's put",
    );
    w.expect_sentinel(b"t/else", r_else).await;

    // DeletePrefix returns the deleted pairs in key order, all at one revision.
    let resp = txn(
        reg,
        Txn::new().and_then(TxnOp::DeletePrefix {
            prefix: b"t/".to_vec(),
        }),
    )
    .await;
    let r_dp = resp.revision;
    let else_kv = kv(b"t/else", b"e", r_else, r_else, 1, 0);
    assert_responses(
        &resp,
        true,
        &[OpResponse::Delete {
            deleted: vec![else_kv.clone(), new.clone(), x2.clone(), z.clone()],
        }],
        "DeletePrefix t/ should return every deleted pair, in key order",
    );
    assert_events(
        &w.take(4).await,
        &[
            delete_event(else_kv, r_dp),
            delete_event(new, r_dp),
            delete_event(x2, r_dp),
            delete_event(z, r_dp),
        ],
        "DeletePrefix should produce one delete event per key at one revision",
    );
    assert_eq!(
        range(reg, RangeRequest::prefix("t/")).await.count,
        0,
        "nothing should remain under t/ after DeletePrefix"
    );

    // A put in a txn binds its lease.
    let lease = reg
        .lease_grant(Duration::from_secs(60))
        .await
        .expect("lease_grant(60 s) should succeed");
    let resp = txn(
        reg,
        Txn::new().and_then(TxnOp::put_with_lease("l/k", "v", lease.id)),
    )
    .await;
    assert_kv(
        get(reg, b"l/k").await.as_ref(),
        Some(&kv(b"l/k", b"v", resp.revision, resp.revision, 1, lease.id)),
        "a put with a lease inside a txn should bind the key to the lease",
    );
    reg.lease_revoke(lease.id)
        .await
        .expect("revoking the case's lease should succeed");
    assert_kv(
        get(reg, b"l/k").await.as_ref(),
        None,
        "revoking the lease should delete the key a txn bound to it",
    );

    // Create-if-absent succeeds exactly once.
    let create = |value: &'static str| {
        Txn::new()
            .when(Compare::absent("lock"))
            .and_then(TxnOp::put("lock", value))
            .or_else(TxnOp::get("lock"))
    };
    let first = txn(reg, create("first")).await;
    assert_responses(
        &first,
        true,
        &[OpResponse::Put { prev: None }],
        "create-if-absent on a missing key",
    );
    let lock = kv(b"lock", b"first", first.revision, first.revision, 1, 0);
    let second = txn(reg, create("second")).await;
    assert_responses(
        &second,
        false,
        &[OpResponse::Get {
            kvs: vec![lock.clone()],
        }],
        "create-if-absent on an existing key should fail and read the winner",
    );
    assert_kv(
        get(reg, b"lock").await.as_ref(),
        Some(&lock),
        "the lock after two creates",
    );
    delete(reg, b"lock").await;
    let third = txn(reg, create("third")).await;
    assert!(
        third.succeeded,
        "create-if-absent should succeed again after the key is deleted"
    );

    // Exact revision accounting: one revision per writing txn, none otherwise.
    let e = || {
        Compare::new(
            "lock",
            CompareOp::Equal,
            CompareTarget::Value(b"third".to_vec()),
        )
    };
    between_markers(reg, 1, "a txn writing three keys", || async move {
        let resp = txn(
            reg,
            Txn::new()
                .and_then(TxnOp::put("n/1", "a"))
                .and_then(TxnOp::put("n/2", "b"))
                .and_then(TxnOp::delete("n/3"))
                .and_then(TxnOp::put("n/4", "d")),
        )
        .await;
        for k in [b"n/1".as_slice(), b"n/2", b"n/4"] {
            let got = get(reg, k).await.map(|kv| kv.mod_revision);
            assert_eq!(
                got,
                Some(resp.revision),
                "every key the txn wrote should carry the txn's one revision"
            );
        }
        resp.revision
    })
    .await;
    between_markers(reg, 0, "a read-only txn", || async move {
        let resp = txn(reg, Txn::new().when(e()).and_then(TxnOp::get("lock"))).await;
        assert!(resp.succeeded, "the read-only txn's compare should hold");
        resp.revision
    })
    .await;
    between_markers(
        reg,
        0,
        "a failed txn with an empty else branch",
        || async move {
            let resp = txn(
                reg,
                Txn::new()
                    .when(Compare::absent("lock"))
                    .and_then(TxnOp::put("lock", "x")),
            )
            .await;
            assert!(!resp.succeeded, "the compare should fail");
            assert!(
                resp.responses.is_empty(),
                "an empty branch has no responses"
            );
            resp.revision
        },
    )
    .await;
    between_markers(reg, 0, "a txn deleting only missing keys", || async move {
        let resp = txn(
            reg,
            Txn::new()
                .and_then(TxnOp::delete("n/missing"))
                .and_then(TxnOp::DeletePrefix {
                    prefix: b"nothing/".to_vec(),
                }),
        )
        .await;
        assert!(resp.succeeded, "a txn without compares should succeed");
        resp.revision
    })
    .await;
}

/// The limits of [`Txn::validate`]: a backend refuses, without writing anything,
/// transactions etcd would refuse.
pub async fn txn_limits(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let puts = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("v/{i:03}"), "x"))
            .collect()
    };
    let nothing_written = |what: &'static str| async move {
        let r = range(reg, RangeRequest::prefix("v/")).await;
        assert_eq!(
            r.count,
            0,
            "{what}: a refused txn must not write anything, found {}",
            show_kvs(&r.kvs)
        );
    };

    let too_many = MAX_TXN_OPS + 1;
    assert_invalid(
        reg.txn(Txn {
            then: puts(too_many),
            ..Txn::default()
        })
        .await,
        "a txn with 129 operations in its then branch",
    );
    nothing_written("129 then-operations").await;
    assert_invalid(
        reg.txn(Txn {
            compares: vec![Compare::exists("v/none")],
            then: vec![TxnOp::put("v/then", "x")],
            otherwise: puts(too_many),
        })
        .await,
        "a txn with 129 operations in its else branch (refused whichever branch would run)",
    );
    nothing_written("129 else-operations").await;
    assert_invalid(
        reg.txn(Txn {
            compares: (0..too_many).map(|_| Compare::absent("v/none")).collect(),
            then: vec![TxnOp::put("v/then", "x")],
            ..Txn::default()
        })
        .await,
        "a txn with 129 compares",
    );
    nothing_written("129 compares").await;

    for (t, what) in [
        (
            Txn::new()
                .and_then(TxnOp::put("v/ok", "x"))
                .and_then(TxnOp::put("", "x")),
            "a put of the empty key",
        ),
        (
            Txn::new()
                .and_then(TxnOp::put("v/ok", "x"))
                .and_then(TxnOp::Put {
                    key: b"v/lease0".to_vec(),
                    value: b"x".to_vec(),
                    lease: Some(0),
                }),
            "a put with lease Some(0)",
        ),
        (
            Txn::new()
                .and_then(TxnOp::put("v/ok", "x"))
                .and_then(TxnOp::DeletePrefix { prefix: Vec::new() }),
            "a DeletePrefix of the empty prefix",
        ),
        (
            Txn::new()
                .and_then(TxnOp::put("v/ok", "x"))
                .and_then(TxnOp::get("")),
            "a get of the empty key",
        ),
        (
            Txn::new()
                .when(Compare::absent(""))
                .and_then(TxnOp::put("v/ok", "x")),
            "a compare on the empty key",
        ),
    ] {
        assert_invalid(reg.txn(t).await, &format!("a txn with {what}"));
        nothing_written(what).await;
    }

    // Exactly the limit is fine, and all 128 writes share one revision.
    let resp = txn(
        reg,
        Txn {
            then: puts(MAX_TXN_OPS),
            ..Txn::default()
        },
    )
    .await;
    let r = range(reg, RangeRequest::prefix("v/")).await;
    assert_eq!(
        r.count, MAX_TXN_OPS,
        "a txn with 128 puts should write 128 keys"
    );
    assert!(
        r.kvs.iter().all(|kv| kv.mod_revision == resp.revision),
        "all 128 puts of one txn should carry the txn's revision {}",
        resp.revision
    );
}

// ---------------------------------------------------------------------------
// 5. leases

/// Grant, time to live, keep-alive, keys bound and unbound, rebinding, and the
/// errors for unknown and revoked leases.
pub async fn lease_lifecycle(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let ten = Duration::from_secs(10);

    let l1 = reg
        .lease_grant(ten)
        .await
        .expect("lease_grant(10 s) should succeed");
    assert_ne!(l1.id, 0, "a lease id is never 0");
    assert!(
        l1.ttl >= ten,
        "granted TTL {:?} should be at least the 10 s asked",
        l1.ttl
    );
    let l2 = reg
        .lease_grant(Duration::from_secs(1))
        .await
        .expect("lease_grant(1 s) should succeed");
    assert!(
        l2.ttl >= Duration::from_secs(1),
        "granted TTL {:?} should be at least the 1 s asked (backends may round up)",
        l2.ttl
    );
    assert!(
        l2.id != 0 && l2.id != l1.id,
        "lease ids should be distinct and non-zero"
    );

    let ttl0 = reg
        .lease_time_to_live(l1.id)
        .await
        .expect("lease_time_to_live should succeed")
        .expect("a just-granted lease should have a time to live");
    assert!(
        ttl0 <= l1.ttl && ttl0 + Duration::from_secs(2) >= l1.ttl,
        "time to live of a just-granted {:?} lease should be close to its TTL, got {ttl0:?}",
        l1.ttl
    );

    // Time passes: the remaining time drops; a keep-alive restores it. (Whole
    // seconds on etcd, hence the coarse bounds.)
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let ttl1 = reg
        .lease_time_to_live(l1.id)
        .await
        .expect("lease_time_to_live should succeed")
        .expect("the lease should still exist after 2.2 s of its 10 s");
    assert!(
        ttl1 + Duration::from_secs(2) <= l1.ttl,
        "2.2 s after granting a {:?} lease, its time to live should be at most {:?}, got {ttl1:?}",
        l1.ttl,
        l1.ttl - Duration::from_secs(2)
    );
    let renewed = reg
        .lease_keep_alive(l1.id)
        .await
        .expect("keep-alive of a live lease should succeed");
    assert!(
        renewed >= ten,
        "keep-alive should report the lease's TTL, got {renewed:?}"
    );
    let ttl2 = reg
        .lease_time_to_live(l1.id)
        .await
        .expect("lease_time_to_live should succeed")
        .expect("a renewed lease should exist");
    assert!(
        ttl2 > ttl1 && ttl2 + Duration::from_secs(2) >= l1.ttl,
        "after a keep-alive, time to live should be back near the TTL {:?}, got {ttl2:?} \
         (before: {ttl1:?})",
        l1.ttl
    );

    // Binding, unbinding by overwriting without a lease, rebinding.
    let ra = put_leased(reg, b"a", b"1", l1.id).await;
    assert_kv(
        get(reg, b"a").await.as_ref(),
        Some(&kv(b"a", b"1", ra, ra, 1, l1.id)),
        "a put with a lease should bind the key",
    );
    let ra2 = put(reg, b"a", b"2").await;
    assert_kv(
        get(reg, b"a").await.as_ref(),
        Some(&kv(b"a", b"2", ra, ra2, 2, 0)),
        "overwriting without a lease should unbind the key (lease 0)",
    );
    put_leased(reg, b"b", b"1", l1.id).await;
    let l3 = reg
        .lease_grant(ten)
        .await
        .expect("lease_grant should succeed");
    put_leased(reg, b"c", b"1", l1.id).await;
    let rc = put_leased(reg, b"c", b"2", l3.id).await;
    let rf = put(reg, b"free", b"1").await;

    reg.lease_revoke(l1.id)
        .await
        .expect("revoking a live lease should succeed");
    assert_kv(
        get(reg, b"b").await.as_ref(),
        None,
        "a key bound to a revoked lease",
    );
    assert_kv(
        get(reg, b"a").await.as_ref(),
        Some(&kv(b"a", b"2", ra, ra2, 2, 0)),
        "a key unbound before the revoke should survive it",
    );
    let c = get(reg, b"c").await;
    assert_eq!(
        c.as_ref().map(|kv| (kv.lease, kv.mod_revision)),
        Some((l3.id, rc)),
        "a key rebound to another lease should survive revoking the first, got {}",
        show_opt_kv(c.as_ref())
    );
    assert_kv(
        get(reg, b"free").await.as_ref(),
        Some(&kv(b"free", b"1", rf, rf, 1, 0)),
        "a key without a lease should survive a revoke",
    );

    // A revoked lease is gone for every operation.
    let ttl = reg
        .lease_time_to_live(l1.id)
        .await
        .expect("lease_time_to_live of a revoked lease should succeed");
    assert_eq!(ttl, None, "a revoked lease should have no time to live");
    assert_lease_not_found(
        reg.lease_keep_alive(l1.id).await,
        l1.id,
        "keep-alive of a revoked lease",
    );
    assert_lease_not_found(
        reg.lease_revoke(l1.id).await,
        l1.id,
        "revoking an already revoked lease",
    );
    assert_lease_not_found(
        reg.put(b"d", b"1", Some(l1.id)).await,
        l1.id,
        "put with a revoked lease",
    );
    assert_kv(
        get(reg, b"d").await.as_ref(),
        None,
        "a put refused for its lease writes nothing",
    );
    assert_lease_not_found(
        reg.txn(
            Txn::new()
                .and_then(TxnOp::put("e", "1"))
                .and_then(TxnOp::put_with_lease("d", "1", l1.id)),
        )
        .await,
        l1.id,
        "a txn putting with a revoked lease",
    );
    assert_kv(
        get(reg, b"e").await.as_ref(),
        None,
        "a txn refused for a lease must not apply its other operations",
    );

    // A lease that never existed.
    assert_lease_not_found(
        reg.lease_keep_alive(UNKNOWN_LEASE).await,
        UNKNOWN_LEASE,
        "keep-alive of an unknown lease",
    );
    assert_lease_not_found(
        reg.put(b"d", b"1", Some(UNKNOWN_LEASE)).await,
        UNKNOWN_LEASE,
        "put with an unknown lease",
    );
    assert_kv(
        get(reg, b"d").await.as_ref(),
        None,
        "a put refused for its lease writes nothing",
    );
    let ttl = reg
        .lease_time_to_live(UNKNOWN_LEASE)
        .await
        .expect("lease_time_to_live of an unknown lease should succeed");
    assert_eq!(ttl, None, "an unknown lease should have no time to live");

    // l2 (1 s) has expired by now; only l3 is left to clean up.
    reg.lease_revoke(l3.id)
        .await
        .expect("revoking the case's lease should succeed");
}

/// Revoking a lease deletes every key bound to it at one revision, with one
/// delete event each (carrying the previous pair), and nothing else.
pub async fn lease_revoke(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let minute = Duration::from_secs(60);
    let l = reg
        .lease_grant(minute)
        .await
        .expect("lease_grant should succeed");
    let other = reg
        .lease_grant(minute)
        .await
        .expect("lease_grant should succeed");

    let mut bound = Vec::new();
    for k in [b"l/1".as_slice(), b"l/2", b"l/3"] {
        let r = put_leased(reg, k, b"v", l.id).await;
        bound.push(kv(k, b"v", r, r, 1, l.id));
    }
    let rf = put(reg, b"l/free", b"v").await;
    let ro = put_leased(reg, b"l/other", b"v", other.id).await;
    let mut w = Watcher::open(reg, b"l/", ro + 1, "watch on l/ during a revoke").await;

    reg.lease_revoke(l.id)
        .await
        .expect("revoking a live lease should succeed");
    for kv in &bound {
        assert_kv(
            get(reg, &kv.key).await.as_ref(),
            None,
            "a key bound to a revoked lease should be deleted",
        );
    }
    assert_kv(
        get(reg, b"l/free").await.as_ref(),
        Some(&kv(b"l/free", b"v", rf, rf, 1, 0)),
        "a key without a lease should survive",
    );
    assert_kv(
        get(reg, b"l/other").await.as_ref(),
        Some(&kv(b"l/other", b"v", ro, ro, 1, other.id)),
        "a key bound to another lease should survive",
    );

    let mut events = w.take(3).await;
    let rev = events[0].revision();
    assert!(rev > ro, "the revoke's deletes should be at a new revision");
    // etcd deletes a lease's keys in no particular order.
    events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
    let expected: Vec<WatchEvent> = bound
        .iter()
        .map(|kv| delete_event(kv.clone(), rev))
        .collect();
    assert_events(
        &events,
        &expected,
        "revoking should produce one delete event per bound key, all at one revision, \
         with the deleted pair",
    );
    let rs = put(reg, b"l/sentinel", b"s").await;
    w.expect_sentinel(b"l/sentinel", rs).await;

    assert_lease_not_found(
        reg.lease_keep_alive(l.id).await,
        l.id,
        "keep-alive of a revoked lease",
    );
    reg.lease_revoke(other.id)
        .await
        .expect("revoking the case's lease should succeed");
}

/// Leases expire without keep-alives (deleting their keys, with delete events)
/// and do not while kept alive.
pub async fn lease_expiry(factory: Factory) {
    // Both halves mostly wait; run them side by side.
    tokio::join!(
        expiry_without_keep_alive(factory.clone()),
        expiry_after_keep_alives(factory.clone()),
    );
}

async fn expiry_without_keep_alive(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let long = reg
        .lease_grant(Duration::from_secs(60))
        .await
        .expect("lease_grant(60 s) should succeed");
    let granted_at = Instant::now();
    let l = reg
        .lease_grant(SHORT_TTL)
        .await
        .expect("lease_grant(2 s) should succeed");
    let mut bound = Vec::new();
    for k in [b"e/1".as_slice(), b"e/2"] {
        let r = put_leased(reg, k, b"v", l.id).await;
        bound.push(kv(k, b"v", r, r, 1, l.id));
    }
    let rf = put(reg, b"e/free", b"v").await;
    let ro = put_leased(reg, b"e/other", b"v", long.id).await;
    let mut w = Watcher::open(reg, b"e/", ro + 1, "watch on e/ during lease expiry").await;

    // Not before its time: only checked when the read provably happened well
    // within the TTL, so a slow machine cannot make it fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = get(reg, b"e/1").await;
    if granted_at.elapsed() + Duration::from_millis(500) < l.ttl {
        assert!(
            early.is_some(),
            "a key bound to a {:?} lease should not be deleted after {:?}",
            l.ttl,
            granted_at.elapsed()
        );
    }

    wait_until_gone(
        reg,
        &[b"e/1", b"e/2"],
        granted_at,
        "keys bound to a 2 s lease that is never kept alive",
    )
    .await;
    let mut events = w.take(2).await;
    let rev = events[0].revision();
    events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
    let expected: Vec<WatchEvent> = bound
        .iter()
        .map(|kv| delete_event(kv.clone(), rev))
        .collect();
    assert_events(
        &events,
        &expected,
        "lease expiry should produce one delete event per bound key, at one revision",
    );
    let rs = put(reg, b"e/sentinel", b"s").await;
    w.expect_sentinel(b"e/sentinel", rs).await;
    assert_kv(
        get(reg, b"e/free").await.as_ref(),
        Some(&kv(b"e/free", b"v", rf, rf, 1, 0)),
        "a key without a lease should survive another lease's expiry",
    );
    assert_kv(
        get(reg, b"e/other").await.as_ref(),
        Some(&kv(b"e/other", b"v", ro, ro, 1, long.id)),
        "a key bound to a live lease should survive another lease's expiry",
    );
    assert_lease_not_found(
        reg.lease_keep_alive(l.id).await,
        l.id,
        "keep-alive of an expired lease",
    );
    let ttl = reg
        .lease_time_to_live(l.id)
        .await
        .expect("lease_time_to_live of an expired lease should succeed");
    assert_eq!(ttl, None, "an expired lease should have no time to live");
    assert_lease_not_found(
        reg.put(b"e/late", b"v", Some(l.id)).await,
        l.id,
        "put with an expired lease",
    );
    reg.lease_revoke(long.id)
        .await
        .expect("revoking the case's lease should succeed");
}

async fn expiry_after_keep_alives(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let l = reg
        .lease_grant(SHORT_TTL)
        .await
        .expect("lease_grant(2 s) should succeed");
    put_leased(reg, b"k/1", b"v", l.id).await;

    // Keep it alive for twice its TTL.
    let start = Instant::now();
    let mut last_renewal = start;
    while start.elapsed() < 2 * l.ttl {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ttl = reg
            .lease_keep_alive(l.id)
            .await
            .expect("keep-alive of a lease renewed every 400 ms should succeed");
        assert!(
            ttl >= SHORT_TTL,
            "keep-alive should report the TTL, got {ttl:?}"
        );
        last_renewal = Instant::now();
        assert!(
            get(reg, b"k/1").await.is_some(),
            "a key bound to a lease kept alive every 400 ms should not be deleted ({:?} in)",
            start.elapsed()
        );
    }

    wait_until_gone(
        reg,
        &[b"k/1"],
        last_renewal,
        "a key whose 2 s lease is no longer kept alive",
    )
    .await;
    assert_lease_not_found(
        reg.lease_keep_alive(l.id).await,
        l.id,
        "keep-alive after the lease expired",
    );
}

// ---------------------------------------------------------------------------
// 6. watch

/// Live watches: from revision 0 only later events are delivered, with the right
/// kinds, metadata and previous pairs; two watchers see the same sequence;
/// dropping streams (idle or with pending events) harms nothing.
pub async fn watch_live(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    put(reg, b"w/old", b"before the watch").await;

    let mut a = Watcher::open(reg, b"w/", 0, "first live watcher on w/").await;
    let mut b = Watcher::open(reg, b"w/", 0, "second live watcher on w/").await;
    let idle = Watcher::open(reg, b"w/", 0, "watcher dropped unread").await;
    drop(idle);
    let pending = Watcher::open(reg, b"w/", 0, "watcher dropped with pending events").await;

    let lease = reg
        .lease_grant(Duration::from_secs(60))
        .await
        .expect("lease_grant should succeed");
    let r1 = put(reg, b"w/1", b"x").await;
    let r2 = put(reg, b"w/1", b"y").await;
    let r3 = delete(reg, b"w/1").await.revision;
    let r4 = txn(
        reg,
        Txn::new()
            .and_then(TxnOp::put("w/2", "a"))
            .and_then(TxnOp::put_with_lease("w/3", "b", lease.id)),
    )
    .await
    .revision;
    // Not under "w/".
    put(reg, b"w", b"outside").await;
    put(reg, b"wx", b"outside").await;
    put(reg, b"v/w/", b"outside").await;
    let r5 = put(reg, b"w/4", b"c").await;
    drop(pending);

    let x = kv(b"w/1", b"x", r1, r1, 1, 0);
    let y = kv(b"w/1", b"y", r1, r2, 2, 0);
    let expected = vec![
        put_event(x.clone(), None),
        put_event(y.clone(), Some(x)),
        delete_event(y, r3),
        put_event(kv(b"w/2", b"a", r4, r4, 1, 0), None),
        put_event(kv(b"w/3", b"b", r4, r4, 1, lease.id), None),
        put_event(kv(b"w/4", b"c", r5, r5, 1, 0), None),
    ];
    let from_a = a.take(expected.len()).await;
    assert_events(
        &from_a,
        &expected,
        "a watch from revision 0 should deliver exactly the later events under its prefix \
         (not w/old, written before it), with prev on overwrite and delete",
    );
    let from_b = b.take(expected.len()).await;
    assert_events(
        &from_b,
        &from_a,
        "two watchers of one prefix should see the same events",
    );
    let rs = put(reg, b"w/sentinel", b"s").await;
    a.expect_sentinel(b"w/sentinel", rs).await;
    b.expect_sentinel(b"w/sentinel", rs).await;

    // The registry is unaffected by the dropped streams.
    let mut c = Watcher::open(reg, b"w/", 0, "watcher opened after others were dropped").await;
    let r6 = put(reg, b"w/5", b"d").await;
    assert_events(
        &c.take(1).await,
        &[put_event(kv(b"w/5", b"d", r6, r6, 1, 0), None)],
        "a new watch after dropped ones",
    );
    reg.lease_revoke(lease.id)
        .await
        .expect("revoking the case's lease should succeed");
}

/// Watches from a past revision replay history exactly from that revision (that
/// revision included), in order, with previous pairs; prefix isolation; a watch
/// on the empty prefix sees every key.
pub async fn watch_history(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let r1 = put(reg, b"h/a", b"1").await;
    let r2 = put(reg, b"h/b", b"1").await;
    let r3 = put(reg, b"h/a", b"2").await;
    let r4 = delete(reg, b"h/b").await.revision;
    let ro1 = put(reg, b"h", b"outside").await;
    let ro2 = put(reg, b"hx", b"outside").await;
    let r5 = put(reg, b"h/c", b"1").await;
    let r6 = txn(
        reg,
        Txn::new()
            .and_then(TxnOp::put("h/d", "1"))
            .and_then(TxnOp::delete("h/a")),
    )
    .await
    .revision;

    let a1 = kv(b"h/a", b"1", r1, r1, 1, 0);
    let a2 = kv(b"h/a", b"2", r1, r3, 2, 0);
    let b1 = kv(b"h/b", b"1", r2, r2, 1, 0);
    let c1 = kv(b"h/c", b"1", r5, r5, 1, 0);
    let d1 = kv(b"h/d", b"1", r6, r6, 1, 0);
    let all = [
        put_event(a1.clone(), None),
        put_event(b1.clone(), None),
        put_event(a2.clone(), Some(a1.clone())),
        delete_event(b1.clone(), r4),
        put_event(c1.clone(), None),
        put_event(d1.clone(), None),
        delete_event(a2.clone(), r6),
    ];
    let from = |rev: Revision| -> Vec<WatchEvent> {
        all.iter()
            .filter(|e| e.revision() >= rev)
            .cloned()
            .collect()
    };

    // Two watchers from r2 see the same replay; others start elsewhere.
    let mut w2 = Watcher::open(reg, b"h/", r2, "watch h/ from r2").await;
    let mut w2b = Watcher::open(reg, b"h/", r2, "second watch h/ from r2").await;
    let mut w1 = Watcher::open(reg, b"h/", r1, "watch h/ from r1").await;
    let mut w5 = Watcher::open(reg, b"h/", r4 + 1, "watch h/ from r4 + 1").await;
    let mut everything = Watcher::open(reg, b"", r1, "watch of every key from r1").await;

    let replay = w2.take(6).await;
    assert_events(
        &replay,
        &from(r2),
        "a watch from a past revision should replay exactly the events from that revision on, \
         in order (both writes of one txn at one revision, in operation order)",
    );
    assert_events(
        &w2b.take(6).await,
        &replay,
        "two watchers from the same revision should see the same events",
    );
    assert_events(
        &w1.take(7).await,
        &from(r1),
        "a watch from the first write's revision",
    );
    assert_events(
        &w5.take(3).await,
        &from(r4 + 1),
        "a watch starting between events",
    );
    let mut every = from(r1);
    every.insert(4, put_event(kv(b"h", b"outside", ro1, ro1, 1, 0), None));
    every.insert(5, put_event(kv(b"hx", b"outside", ro2, ro2, 1, 0), None));
    assert_events(
        &everything.take(every.len()).await,
        &every,
        "a watch on the empty prefix should see every key",
    );

    // After the replay, live events follow seamlessly.
    let r7 = put(reg, b"h/c", b"2").await;
    let live = put_event(kv(b"h/c", b"2", r5, r7, 2, 0), Some(c1));
    let rs = put(reg, b"h/sentinel", b"s").await;
    for w in [&mut w2, &mut w2b, &mut w1, &mut w5, &mut everything] {
        let got = w.take(1).await;
        let what = format!("{}: the first live event after the replay", w.what);
        assert_events(&got, std::slice::from_ref(&live), &what);
        w.expect_sentinel(b"h/sentinel", rs).await;
    }
}

/// Resuming a dropped watch from the last seen revision + 1 delivers every later
/// event exactly once. Batches are consumed whole, so this also checks that no
/// revision's events are split across batches.
pub async fn watch_resume(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let start = current_revision(reg).await + 1;
    let mut reference = Watcher::open(reg, b"r/", start, "uninterrupted reference watch").await;
    let mut first = Watcher::open(reg, b"r/", 0, "watch dropped midway").await;

    let mut expected: Vec<(EventKind, Vec<u8>, Revision)> = Vec::new();
    for k in [b"r/a".as_slice(), b"r/b"] {
        let r = put(reg, k, b"1").await;
        expected.push((EventKind::Put, k.to_vec(), r));
    }
    let rt = txn(
        reg,
        Txn::new()
            .and_then(TxnOp::put("r/c", "1"))
            .and_then(TxnOp::put("r/d", "1")),
    )
    .await
    .revision;
    expected.push((EventKind::Put, b"r/c".to_vec(), rt));
    expected.push((EventKind::Put, b"r/d".to_vec(), rt));
    let rd = delete(reg, b"r/a").await.revision;
    expected.push((EventKind::Delete, b"r/a".to_vec(), rd));
    let re = put(reg, b"r/e", b"1").await;
    expected.push((EventKind::Put, b"r/e".to_vec(), re));

    // Consume whole batches until three events are seen, then drop the stream
    // with events still queued.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(first.next_batch().await);
    }
    let last = seen.last().map_or(0, WatchEvent::revision);
    drop(first);

    for (k, v) in [(b"r/f".as_slice(), b"1".as_slice()), (b"r/b", b"2")] {
        let r = put(reg, k, v).await;
        expected.push((EventKind::Put, k.to_vec(), r));
    }
    let mut resumed = Watcher::open(reg, b"r/", last + 1, "watch resumed at last seen + 1").await;
    let rs = put(reg, b"r/sentinel", b"s").await;
    let rest = resumed.until_sentinel(b"r/sentinel", rs).await;
    let full = reference.until_sentinel(b"r/sentinel", rs).await;
    let summary: Vec<(EventKind, Vec<u8>, Revision)> = full
        .iter()
        .map(|e| (e.kind, e.kv.key.clone(), e.revision()))
        .collect();
    assert_eq!(
        summary, expected,
        "the uninterrupted watch should see every write once, in order"
    );
    let mut combined = seen.clone();
    combined.extend(rest);
    assert_events(
        &combined,
        &full,
        &format!(
            "events before the drop (up to revision {last}) plus events of the watch resumed \
             at {} should be every event exactly once (no loss, no duplicate; a revision's \
             events must never be split across batches)",
            last + 1
        ),
    );
}

// ---------------------------------------------------------------------------
// 7. compaction

/// Compaction: watches from a compacted revision fail with
/// [`RegistryError::Compacted`], from the next revision on they work; current
/// values are unaffected; compacting a future revision fails.
pub async fn compaction(factory: Factory) {
    let reg = factory().await;
    let reg = reg.as_ref();
    let r1 = put(reg, b"c/k", b"1").await;
    let r2 = put(reg, b"c/k", b"2").await;
    let r3 = put(reg, b"c/gone", b"x").await;
    let r4 = delete(reg, b"c/gone").await.revision;
    let r5 = put(reg, b"c/k", b"3").await;

    reg.compact(r4)
        .await
        .expect("compacting at a revision the case wrote should succeed");

    for from in [r1, r2, r3, r4] {
        expect_compacted(reg, b"c/", from, r4).await;
    }
    // Not "from now on": 0 is never compacted.
    let mut live = Watcher::open(reg, b"c/", 0, "watch from 0 after compaction").await;
    let mut after = Watcher::open(reg, b"c/", r4 + 1, "watch from compacted + 1").await;
    let k2 = kv(b"c/k", b"2", r1, r2, 2, 0);
    let k3 = kv(b"c/k", b"3", r1, r5, 3, 0);
    assert_events(
        &after.take(1).await,
        &[put_event(k3.clone(), Some(k2))],
        "a watch from the compacted revision + 1 should deliver the later events, with prev",
    );

    assert_kv(
        get(reg, b"c/k").await.as_ref(),
        Some(&k3),
        "compaction must not change current values",
    );
    assert_kv(
        get(reg, b"c/gone").await.as_ref(),
        None,
        "a deleted key stays deleted",
    );
    let r = range(reg, RangeRequest::prefix("c/")).await;
    assert_kvs(&r.kvs, std::slice::from_ref(&k3), "range after compaction");

    let cur = current_revision(reg).await;
    let future = cur + 1_000_000;
    match reg.compact(future).await {
        Err(RegistryError::FutureRevision { requested, current }) => {
            assert_eq!(
                requested, future,
                "FutureRevision should carry the requested revision"
            );
            assert!(
                current >= cur && current < future,
                "FutureRevision should carry the current revision (about {cur}), got {current}"
            );
        }
        other => panic!(
            "compacting at revision {future} (store at {cur}) should fail with FutureRevision, \
             got {other:?}"
        ),
    }

    // Writes and watches go on.
    let r6 = put(reg, b"c/k", b"4").await;
    let k4 = kv(b"c/k", b"4", r1, r6, 4, 0);
    let event = put_event(k4, Some(k3));
    assert_events(
        &live.take(1).await,
        std::slice::from_ref(&event),
        "a watch from 0 opened after compaction",
    );
    assert_events(
        &after.take(1).await,
        std::slice::from_ref(&event),
        "the watch from compacted + 1, live",
    );
}

// ---------------------------------------------------------------------------
// 8. concurrency

/// Concurrent writers: compare-and-swap increments of one counter from many
/// tasks lose no update and give every success its own revision; concurrent
/// create-if-absent has exactly one winner; concurrent puts get distinct
/// revisions.
pub async fn concurrent_writers(factory: Factory) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 50;
    let reg = factory().await;
    let r0 = put(reg.as_ref(), b"counter", b"0").await;
    let mut watch = Watcher::open(reg.as_ref(), b"counter", r0 + 1, "watch on the counter").await;

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut current = get(reg.as_ref(), b"counter")
                .await
                .expect("the counter should exist");
            while done.len() < INCREMENTS {
                let n: u64 = std::str::from_utf8(&current.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("counter should hold a number: {}", show_kv(&current))
                    });
                let resp = txn(
                    reg.as_ref(),
                    Txn::new()
                        .when(Compare::new(
                            "counter",
                            CompareOp::Equal,
                            CompareTarget::ModRevision(current.mod_revision),
                        ))
                        .and_then(TxnOp::put("counter", (n + 1).to_string()))
                        .or_else(TxnOp::get("counter")),
                )
                .await;
                if resp.succeeded {
                    done.push((resp.revision, n + 1));
                    current = kv(
                        b"counter",
                        (n + 1).to_string().as_bytes(),
                        current.create_revision,
                        resp.revision,
                        current.version + 1,
                        0,
                    );
                } else {
                    match resp.responses.as_slice() {
                        [OpResponse::Get { kvs }] if kvs.len() == 1 => current = kvs[0].clone(),
                        other => panic!(
                            "a failed CAS should return the counter from its else branch, got {}",
                            show_responses(other)
                        ),
                    }
                }
            }
            done
        }));
    }
    let mut successes = Vec::new();
    for t in tasks {
        successes.extend(t.await.expect("a CAS task should not panic"));
    }
    let total = (TASKS * INCREMENTS) as u64;
    assert_eq!(
        successes.len() as u64,
        total,
        "every task should count its successes"
    );
    successes.sort_unstable();
    for (i, pair) in successes.windows(2).enumerate() {
        assert!(
            pair[0].0 < pair[1].0,
            "two successful CAS writes got the same revision {} (#{i})",
            pair[0].0
        );
        assert_eq!(
            pair[0].1 + 1,
            pair[1].1,
            "successful CAS writes in revision order should count up by one; lost update at \
             revision {}",
            pair[1].0
        );
    }
    let last = get(reg.as_ref(), b"counter")
        .await
        .expect("the counter should exist");
    assert_eq!(
        (last.value.as_slice(), last.version),
        (total.to_string().as_bytes(), total as i64 + 1),
        "after {total} successful increments the counter should hold {total} at version {}, got {}",
        total + 1,
        show_kv(&last)
    );
    let events = watch.take(successes.len()).await;
    let watched: Vec<(Revision, u64)> = events
        .iter()
        .map(|e| {
            let v = std::str::from_utf8(&e.kv.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            (e.revision(), v)
        })
        .collect();
    assert!(
        watched == successes,
        "a watch on the counter should see every successful increment, in order"
    );

    // Concurrent create-if-absent: exactly one winner, whom every loser reads.
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for id in 0..16u32 {
        let reg = reg.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let resp = txn(
                reg.as_ref(),
                Txn::new()
                    .when(Compare::absent("leader"))
                    .and_then(TxnOp::put("leader", id.to_string()))
                    .or_else(TxnOp::get("leader")),
            )
            .await;
            (id, resp)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        let (id, resp) = t.await.expect("a create task should not panic");
        if resp.succeeded {
            winners.push((id, resp.revision));
        } else {
            losers.push(resp);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of 16 concurrent create-if-absent txns should succeed, got winners {winners:?}"
    );
    let (winner, rev) = winners[0];
    let leader = kv(b"leader", winner.to_string().as_bytes(), rev, rev, 1, 0);
    for resp in &losers {
        assert_responses(
            resp,
            false,
            &[OpResponse::Get {
                kvs: vec![leader.clone()],
            }],
            "a losing create-if-absent should read the winner",
        );
    }

    // Concurrent plain puts each get a revision of their own.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let key = format!("p/{t}/{i}");
                revs.push((put(reg.as_ref(), key.as_bytes(), b"x").await, key));
            }
            revs
        }));
    }
    let mut revs = Vec::new();
    for t in tasks {
        revs.extend(t.await.expect("a put task should not panic"));
    }
    for (r, key) in &revs {
        let got = get(reg.as_ref(), key.as_bytes()).await;
        assert_eq!(
            got.map(|kv| kv.mod_revision),
            Some(*r),
            "{key}: get should show the revision its put returned"
        );
    }
    let mut only_revs: Vec<Revision> = revs.iter().map(|(r, _)| *r).collect();
    only_revs.sort_unstable();
    only_revs.dedup();
    assert_eq!(
        only_revs.len(),
        revs.len(),
        "200 concurrent puts should get 200 distinct revisions"
    );
}

// ---------------------------------------------------------------------------
// 9. model-based test

/// One step of the model test. Keys are indexes into [`model_key`].
#[derive(Debug, Clone)]
enum ModelOp {
    Put {
        key: u8,
        value: Vec<u8>,
    },
    Delete {
        key: u8,
    },
    CreateIfAbsent {
        key: u8,
        value: Vec<u8>,
    },
    CasVersion {
        key: u8,
        version: i64,
        value: Vec<u8>,
    },
    PutPair {
        first: u8,
        second: u8,
        value: Vec<u8>,
    },
    DeletePrefix,
    Get {
        key: u8,
    },
    Range {
        limit: usize,
    },
}

const MODEL_KEYS: u8 = 5;
const MODEL_PREFIX: &[u8] = b"m/";

/// Keys 0..=3 are under [`MODEL_PREFIX`]; key 4 ("m") sorts just before it but
/// is not under it, so ranges and prefix deletes must leave it alone.
fn model_key(i: u8) -> Vec<u8> {
    if i == MODEL_KEYS - 1 {
        b"m".to_vec()
    } else {
        format!("m/{i}").into_bytes()
    }
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let key = 0..MODEL_KEYS;
    let value = prop_vec(any::<u8>(), 0..3);
    prop_oneof![
        3 => (key.clone(), value.clone()).prop_map(|(key, value)| ModelOp::Put { key, value }),
        2 => key.clone().prop_map(|key| ModelOp::Delete { key }),
        2 => (key.clone(), value.clone())
            .prop_map(|(key, value)| ModelOp::CreateIfAbsent { key, value }),
        2 => (key.clone(), 0i64..4, value.clone())
            .prop_map(|(key, version, value)| ModelOp::CasVersion { key, version, value }),
        1 => (key.clone(), 1..MODEL_KEYS, value.clone()).prop_map(|(first, step, value)| {
            ModelOp::PutPair { first, second: (first + step) % MODEL_KEYS, value }
        }),
        1 => Just(ModelOp::DeletePrefix),
        2 => key.prop_map(|key| ModelOp::Get { key }),
        1 => (0usize..4).prop_map(|limit| ModelOp::Range { limit }),
    ]
}

/// What the store should hold: every pair, with the revisions the backend
/// returned for the writes (so nothing assumes where revisions start or that
/// they are consecutive).
#[derive(Default)]
struct Model {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    /// The highest revision any response reported so far.
    last: Revision,
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl Model {
    fn write_revision(&mut self, r: Revision, what: &str) -> Result<(), String> {
        ensure!(
            r > self.last,
            "{what} should write at a new revision, above {}; got {r}",
            self.last
        );
        self.last = r;
        Ok(())
    }

    fn read_revision(&mut self, r: Revision, what: &str) -> Result<(), String> {
        ensure!(
            r >= self.last,
            "{what} reported revision {r}, below the {} already seen",
            self.last
        );
        self.last = r;
        Ok(())
    }

    fn apply_put(&mut self, key: &[u8], value: &[u8], rev: Revision) {
        let prev = self.kvs.get(key);
        let new = kv(
            key,
            value,
            prev.map_or(rev, |p| p.create_revision),
            rev,
            prev.map_or(1, |p| p.version + 1),
            0,
        );
        self.kvs.insert(key.to_vec(), new);
    }

    fn under_prefix(&self) -> Vec<KeyValue> {
        self.kvs
            .values()
            .filter(|kv| kv.key.starts_with(MODEL_PREFIX))
            .cloned()
            .collect()
    }

    async fn step(&mut self, reg: &dyn Registry, op: &ModelOp) -> Result<(), String> {
        let err = |e: RegistryError| format!("registry error: {e}");
        match op {
            ModelOp::Put { key, value } => {
                let key = model_key(*key);
                let r = reg.put(&key, value, None).await.map_err(err)?;
                self.write_revision(r, "put")?;
                self.apply_put(&key, value, r);
            }
            ModelOp::Delete { key } => {
                let key = model_key(*key);
                let resp = reg.delete(&key).await.map_err(err)?;
                let expected = self.kvs.remove(&key);
                ensure!(
                    resp.prev == expected,
                    "delete should return {}, got {}",
                    show_opt_kv(expected.as_ref()),
                    show_opt_kv(resp.prev.as_ref())
                );
                if expected.is_some() {
                    self.write_revision(resp.revision, "delete of an existing key")?;
                } else {
                    self.read_revision(resp.revision, "delete of a missing key")?;
                }
            }
            ModelOp::CreateIfAbsent { key, value } => {
                let key = model_key(*key);
                let resp = reg
                    .txn(
                        Txn::new()
                            .when(Compare::absent(key.clone()))
                            .and_then(TxnOp::put(key.clone(), value.clone()))
                            .or_else(TxnOp::get(key.clone())),
                    )
                    .await
                    .map_err(err)?;
                match self.kvs.get(&key).cloned() {
                    None => {
                        let expected = [OpResponse::Put { prev: None }];
                        ensure!(
                            resp.succeeded && resp.responses == expected,
                            "create-if-absent of a missing key should succeed with {}, got \
                             succeeded={} {}",
                            show_responses(&expected),
                            resp.succeeded,
                            show_responses(&resp.responses)
                        );
                        self.write_revision(resp.revision, "successful create-if-absent")?;
                        self.apply_put(&key, value, resp.revision);
                    }
                    Some(existing) => {
                        let expected = [OpResponse::Get {
                            kvs: vec![existing],
                        }];
                        ensure!(
                            !resp.succeeded && resp.responses == expected,
                            "create-if-absent of an existing key should fail with {}, got \
                             succeeded={} {}",
                            show_responses(&expected),
                            resp.succeeded,
                            show_responses(&resp.responses)
                        );
                        self.read_revision(resp.revision, "failed create-if-absent")?;
                    }
                }
            }
            ModelOp::CasVersion {
                key,
                version,
                value,
            } => {
                let key = model_key(*key);
                let resp = reg
                    .txn(
                        Txn::new()
                            .when(Compare::new(
                                key.clone(),
                                CompareOp::Equal,
                                CompareTarget::Version(*version),
                            ))
                            .and_then(TxnOp::put(key.clone(), value.clone())),
                    )
                    .await
                    .map_err(err)?;
                let prev = self.kvs.get(&key).cloned();
                let holds = prev.as_ref().map_or(0, |kv| kv.version) == *version;
                ensure!(
                    resp.succeeded == holds,
                    "CAS on version {version} of {} should {}",
                    show_opt_kv(prev.as_ref()),
                    if holds { "succeed" } else { "fail" }
                );
                if holds {
                    let expected = [OpResponse::Put { prev }];
                    ensure!(
                        resp.responses == expected,
                        "CAS should respond {}, got {}",
                        show_responses(&expected),
                        show_responses(&resp.responses)
                    );
                    self.write_revision(resp.revision, "successful CAS")?;
                    self.apply_put(&key, value, resp.revision);
                } else {
                    ensure!(
                        resp.responses.is_empty(),
                        "a failed CAS with an empty else branch should respond nothing, got {}",
                        show_responses(&resp.responses)
                    );
                    self.read_revision(resp.revision, "failed CAS")?;
                }
            }
            ModelOp::PutPair {
                first,
                second,
                value,
            } => {
                let (k1, k2) = (model_key(*first), model_key(*second));
                let resp = reg
                    .txn(
                        Txn::new()
                            .and_then(TxnOp::put(k1.clone(), value.clone()))
                            .and_then(TxnOp::put(k2.clone(), value.clone())),
                    )
                    .await
                    .map_err(err)?;
                let expected = [
                    OpResponse::Put {
                        prev: self.kvs.get(&k1).cloned(),
                    },
                    OpResponse::Put {
                        prev: self.kvs.get(&k2).cloned(),
                    },
                ];
                ensure!(
                    resp.succeeded && resp.responses == expected,
                    "a txn putting two keys should respond {}, got succeeded={} {}",
                    show_responses(&expected),
                    resp.succeeded,
                    show_responses(&resp.responses)
                );
                self.write_revision(resp.revision, "txn putting two keys")?;
                self.apply_put(&k1, value, resp.revision);
                self.apply_put(&k2, value, resp.revision);
            }
            ModelOp::DeletePrefix => {
                let resp = reg
                    .txn(Txn::new().and_then(TxnOp::DeletePrefix {
                        prefix: MODEL_PREFIX.to_vec(),
                    }))
                    .await
                    .map_err(err)?;
                let deleted = self.under_prefix();
                let expected = [OpResponse::Delete {
                    deleted: deleted.clone(),
                }];
                ensure!(
                    resp.succeeded && resp.responses == expected,
                    "DeletePrefix m/ should respond {}, got succeeded={} {}",
                    show_responses(&expected),
                    resp.succeeded,
                    show_responses(&resp.responses)
                );
                if deleted.is_empty() {
                    self.read_revision(resp.revision, "DeletePrefix deleting nothing")?;
                } else {
                    self.write_revision(resp.revision, "DeletePrefix")?;
                }
                self.kvs.retain(|k, _| !k.starts_with(MODEL_PREFIX));
            }
            ModelOp::Get { key } => {
                let key = model_key(*key);
                let got = reg.get(&key).await.map_err(err)?;
                let expected = self.kvs.get(&key);
                ensure!(
                    got.as_ref() == expected,
                    "get {} should return {}, got {}",
                    B(&key),
                    show_opt_kv(expected),
                    show_opt_kv(got.as_ref())
                );
            }
            ModelOp::Range { limit } => self.check_range(reg, *limit).await?,
        }
        Ok(())
    }

    async fn check_range(&mut self, reg: &dyn Registry, limit: usize) -> Result<(), String> {
        let resp = reg
            .range(RangeRequest {
                limit,
                ..RangeRequest::prefix(MODEL_PREFIX)
            })
            .await
            .map_err(|e| format!("registry error: {e}"))?;
        let all = self.under_prefix();
        let shown = if limit == 0 {
            all.len()
        } else {
            limit.min(all.len())
        };
        ensure!(
            resp.kvs == all[..shown],
            "range m/ with limit {limit} should return {}, got {}",
            show_kvs(&all[..shown]),
            show_kvs(&resp.kvs)
        );
        ensure!(
            resp.count == all.len(),
            "range m/: count should be {}, got {}",
            all.len(),
            resp.count
        );
        ensure!(
            resp.more == (shown < all.len()),
            "range m/ with limit {limit} over {} keys: more should be {}",
            all.len(),
            shown < all.len()
        );
        self.read_revision(resp.revision, "range")
    }
}

async fn run_model(factory: Factory, ops: Vec<ModelOp>) -> Result<(), String> {
    let reg = factory().await;
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        model
            .step(reg.as_ref(), op)
            .await
            .map_err(|e| format!("step {i} ({op:?}): {e}"))?;
    }
    model
        .check_range(reg.as_ref(), 0)
        .await
        .map_err(|e| format!("final range: {e}"))?;
    let outside = model_key(MODEL_KEYS - 1);
    let got = reg
        .get(&outside)
        .await
        .map_err(|e| format!("registry error: {e}"))?;
    ensure!(
        got.as_ref() == model.kvs.get(&outside),
        "final get {}: expected {}, got {}",
        B(&outside),
        show_opt_kv(model.kvs.get(&outside)),
        show_opt_kv(got.as_ref())
    );
    Ok(())
}

/// Random sequences of puts, deletes, create-if-absent and version-CAS txns,
/// two-key txns, prefix deletes, gets and ranges over a few keys, checked after
/// every step against a simple model. Revisions are checked relatively (a write
/// is above every revision seen before, a read not below), which holds on a
/// shared etcd too.
///
/// Runs `SHARDCRON_CONFORMANCE_CASES` sequences (default 64), each on a fresh
/// registry; a failure is shrunk to a minimal sequence.
pub async fn model_based(factory: Factory) {
    let cases = std::env::var("SHARDCRON_CONFORMANCE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    };
    let handle = tokio::runtime::Handle::current();
    // proptest is synchronous: drive it on a blocking thread, each case blocking
    // on the runtime (which keeps serving the registry's own tasks meanwhile).
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(config);
        runner
            .run(&prop_vec(model_op(), 1..=40), |ops| {
                handle
                    .block_on(run_model(factory.clone(), ops))
                    .map_err(TestCaseError::fail)
            })
            .map_err(|e| e.to_string())
    })
    .await
    .expect("the model test's blocking task should not panic");
    if let Err(e) = outcome {
        panic!("the registry disagrees with the model: {e}");
    }
}

/// Implements [`Registry`] for a wrapper struct by delegating every call to one of
/// its fields: for test fixtures that must keep something (a temporary directory, a
/// server) alive exactly as long as the registry.
#[macro_export]
macro_rules! delegate_registry {
    ($ty:ty, $field:ident) => {
        #[$crate::__async_trait]
        impl $crate::Registry for $ty {
            async fn get(&self, key: &[u8]) -> $crate::Result<Option<$crate::KeyValue>> {
                self.$field.get(key).await
            }
            async fn range(
                &self,
                req: $crate::RangeRequest,
            ) -> $crate::Result<$crate::RangeResponse> {
                self.$field.range(req).await
            }
            async fn put(
                &self,
                key: &[u8],
                value: &[u8],
                lease: Option<$crate::LeaseId>,
            ) -> $crate::Result<$crate::Revision> {
                self.$field.put(key, value, lease).await
            }
            async fn delete(&self, key: &[u8]) -> $crate::Result<$crate::DeleteResponse> {
                self.$field.delete(key).await
            }
            async fn txn(&self, txn: $crate::Txn) -> $crate::Result<$crate::TxnResponse> {
                self.$field.txn(txn).await
            }
            async fn lease_grant(
                &self,
                ttl: ::std::time::Duration,
            ) -> $crate::Result<$crate::Lease> {
                self.$field.lease_grant(ttl).await
            }
            async fn lease_keep_alive(
                &self,
                id: $crate::LeaseId,
            ) -> $crate::Result<::std::time::Duration> {
                self.$field.lease_keep_alive(id).await
            }
            async fn lease_revoke(&self, id: $crate::LeaseId) -> $crate::Result<()> {
                self.$field.lease_revoke(id).await
            }
            async fn lease_time_to_live(
                &self,
                id: $crate::LeaseId,
            ) -> $crate::Result<Option<::std::time::Duration>> {
                self.$field.lease_time_to_live(id).await
            }
            async fn watch(
                &self,
                prefix: &[u8],
                from_revision: $crate::Revision,
            ) -> $crate::Result<$crate::WatchStream> {
                self.$field.watch(prefix, from_revision).await
            }
            async fn compact(&self, revision: $crate::Revision) -> $crate::Result<()> {
                self.$field.compact(revision).await
            }
            async fn current_revision(&self) -> $crate::Result<$crate::Revision> {
                self.$field.current_revision().await
            }
        }
    };
}

/// Hooks of an [`Intercept`] registry; every method defaults to plain delegation.
/// For fault-injection tests: count writes, lose an answer, stall keep-alives.
#[crate::__async_trait]
pub trait Hooks: Send + Sync + fmt::Debug + 'static {
    /// Called before a put or delete of `key` is passed on.
    fn on_write(&self, key: &[u8]) {
        let _ = key;
    }

    /// Sees every transaction and its outcome; may change the outcome (e.g. report
    /// a committed transaction as failed, as a lost answer would).
    fn after_txn(
        &self,
        txn: &Txn,
        outcome: crate::Result<TxnResponse>,
    ) -> crate::Result<TxnResponse> {
        let _ = txn;
        outcome
    }

    /// Performs a keep-alive (by default: passes it on).
    async fn keep_alive(&self, inner: &dyn Registry, id: LeaseId) -> crate::Result<Duration> {
        inner.lease_keep_alive(id).await
    }
}

/// A registry that passes every call to `inner`, through `hooks`.
#[derive(Debug)]
pub struct Intercept<H: Hooks> {
    /// The registry calls go to.
    pub inner: Arc<dyn Registry>,
    /// What is done on the way.
    pub hooks: H,
}

#[crate::__async_trait]
impl<H: Hooks> Registry for Intercept<H> {
    async fn get(&self, key: &[u8]) -> crate::Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn range(&self, req: RangeRequest) -> crate::Result<RangeResponse> {
        self.inner.range(req).await
    }
    async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> crate::Result<Revision> {
        self.hooks.on_write(key);
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &[u8]) -> crate::Result<DeleteResponse> {
        self.hooks.on_write(key);
        self.inner.delete(key).await
    }
    async fn txn(&self, txn: Txn) -> crate::Result<TxnResponse> {
        let outcome = self.inner.txn(txn.clone()).await;
        self.hooks.after_txn(&txn, outcome)
    }
    async fn lease_grant(&self, ttl: Duration) -> crate::Result<crate::Lease> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> crate::Result<Duration> {
        self.hooks.keep_alive(self.inner.as_ref(), id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> crate::Result<()> {
        self.inner.lease_revoke(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> crate::Result<Option<Duration>> {
        self.inner.lease_time_to_live(id).await
    }
    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> crate::Result<WatchStream> {
        self.inner.watch(prefix, from_revision).await
    }
    async fn compact(&self, revision: Revision) -> crate::Result<()> {
        self.inner.compact(revision).await
    }
    async fn current_revision(&self) -> crate::Result<Revision> {
        self.inner.current_revision().await
    }
}
