//! The etcd backend: [`EtcdRegistry`] implements [`Registry`] on etcd v3 (tested
//! against etcd 3.4.23, Debian's version) with the `etcd-client` crate.
//!
//! Everything etcd-specific lives here. What it adds on top of a plain client:
//! - **Namespacing**: every key is stored under the namespace prefix (e.g.
//!   `/shardcron/prod/`); callers never see it.
//! - **Errors that say where**: connecting probes every endpoint and names each one
//!   that failed and how; gRPC errors are mapped to [`RegistryError`] variants.
//! - **Watches that survive**: `etcd-client` watches do not reconnect. Here a task
//!   per watch resumes from the last delivered revision + 1 after any stream error
//!   or etcd restart (with backoff), drops events it has already delivered (etcd
//!   3.4.23 can repeat them), and ends the stream with [`RegistryError::Compacted`]
//!   when the history it needs is gone. Watches run with `require_leader`, so a
//!   watch on a member that lost its quorum fails instead of hanging silently.
//! - **One compaction rule for every backend**: a watch starting *at or below* the
//!   compacted revision fails (etcd itself accepts a start equal to the compacted
//!   revision and can then miss a delete at that revision).
//! - **Keep-alive streams are reused** per lease, and a keep-alive answered with
//!   TTL 0 is reported as [`RegistryError::LeaseNotFound`]. A call abandoned
//!   before its answer came discards the stream, so that no call ever takes the
//!   answer to an earlier request for its own.
//! - **Transaction limits** are checked before sending ([`Txn::validate`]).

mod options;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client as ec;
use tokio::sync::mpsc;

pub use options::{EtcdOptions, EtcdTls, MIN_KEEP_ALIVE_INTERVAL};

use crate::{
    Compare, CompareOp, CompareTarget, DeleteResponse, EventKind, KeyValue, Lease, LeaseId,
    OpResponse, RangeRequest, RangeResponse, Registry, RegistryError, Result, Revision, Txn, TxnOp,
    TxnResponse, WatchBatch, WatchEvent, WatchStream,
};

type KeepAlive = (ec::LeaseKeeper, ec::LeaseKeepAliveStream);
/// One reusable keep-alive stream per lease, each behind its own lock.
type KeepAliveSlots = Arc<Mutex<HashMap<LeaseId, Arc<tokio::sync::Mutex<Option<KeepAlive>>>>>>;

/// A registry on an etcd cluster.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: ec::Client,
    /// The namespace prefix, prepended to every key.
    ns: Vec<u8>,
    endpoints: String,
    request_timeout: Duration,
    keepers: KeepAliveSlots,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.endpoints)
            .field("namespace", &String::from_utf8_lossy(&self.ns))
            .finish_non_exhaustive()
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a
/// prefix); `\0` (every key) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn cmp_op(op: CompareOp) -> ec::CompareOp {
    match op {
        CompareOp::Equal => ec::CompareOp::Equal,
        CompareOp::NotEqual => ec::CompareOp::NotEqual,
        CompareOp::Greater => ec::CompareOp::Greater,
        CompareOp::Less => ec::CompareOp::Less,
    }
}

/// Which call failed, for error messages and for errors that need context.
#[derive(Clone, Copy, Debug)]
enum Ctx {
    Plain,
    Lease(LeaseId),
    Watch(Revision),
    Compact(Revision),
}

impl EtcdRegistry {
    /// Connect to the cluster described by `options`. Every endpoint is probed; the
    /// call fails only if none answers, naming each endpoint and its error.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdRegistry> {
        options.validate()?;
        let endpoints = options.endpoints.join(",");
        let connect = options.connect_options(true);
        let mut failures = Vec::new();
        for ep in &options.endpoints {
            match probe(ep, options.connect_options(false), options.connect_timeout).await {
                Ok(()) => {}
                Err(e) => failures.push(format!("{ep}: {e}")),
            }
        }
        if failures.len() == options.endpoints.len() {
            return Err(classify_connect_failure(&failures));
        }
        for f in &failures {
            tracing::warn!(endpoint = %f, "etcd endpoint unreachable; using the others");
        }
        let client = tokio::time::timeout(
            options.connect_timeout,
            ec::Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| {
            RegistryError::Unavailable(format!(
                "etcd at {endpoints}: no connection within {:?}",
                options.connect_timeout
            ))
        })?
        .map_err(|e| map_err(e, &endpoints, Ctx::Plain))?;
        Ok(EtcdRegistry {
            client,
            ns: options.namespace_prefix(),
            endpoints,
            request_timeout: options.request_timeout,
            keepers: Arc::default(),
        })
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.ns.len() + key.len());
        k.extend_from_slice(&self.ns);
        k.extend_from_slice(key);
        k
    }

    fn strip(&self, kv: &ec::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key().get(self.ns.len()..).unwrap_or_default().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }

    /// Range options covering every key under `prefix` inside the namespace.
    fn prefix_range(&self, prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let start = self.key(prefix);
        let end = prefix_end(&start);
        (start, end)
    }

    fn err(&self, e: ec::Error, ctx: Ctx) -> RegistryError {
        map_err(e, &self.endpoints, ctx)
    }

    async fn timed<T>(
        &self,
        ctx: Ctx,
        fut: impl std::future::Future<Output = Result<T, ec::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r.map_err(|e| self.err(e, ctx)),
            Err(_) => Err(RegistryError::Unavailable(format!(
                "etcd at {}: no answer within {:?} (the request may or may not have been applied)",
                self.endpoints, self.request_timeout
            ))),
        }
    }

    fn to_etcd_compare(&self, c: &Compare) -> ec::Compare {
        let key = self.key(&c.key);
        let op = cmp_op(c.op);
        match &c.target {
            CompareTarget::Value(v) => ec::Compare::value(key, op, v.clone()),
            CompareTarget::CreateRevision(r) => ec::Compare::create_revision(key, op, *r),
            CompareTarget::ModRevision(r) => ec::Compare::mod_revision(key, op, *r),
            CompareTarget::Version(v) => ec::Compare::version(key, op, *v),
            CompareTarget::Lease(l) => ec::Compare::lease(key, op, *l),
        }
    }

    fn to_etcd_op(&self, op: &TxnOp) -> ec::TxnOp {
        match op {
            TxnOp::Put { key, value, lease } => {
                let mut o = ec::PutOptions::new().with_prev_key();
                if let Some(l) = lease {
                    o = o.with_lease(*l);
                }
                ec::TxnOp::put(self.key(key), value.clone(), Some(o))
            }
            TxnOp::Delete { key } => ec::TxnOp::delete(
                self.key(key),
                Some(ec::DeleteOptions::new().with_prev_key()),
            ),
            TxnOp::DeletePrefix { prefix } => {
                let (start, end) = self.prefix_range(prefix);
                ec::TxnOp::delete(
                    start,
                    Some(ec::DeleteOptions::new().with_range(end).with_prev_key()),
                )
            }
            TxnOp::Get { key } => ec::TxnOp::get(self.key(key), None),
            TxnOp::GetPrefix { prefix } => {
                let (start, end) = self.prefix_range(prefix);
                ec::TxnOp::get(start, Some(ec::GetOptions::new().with_range(end)))
            }
        }
    }

    fn convert_op_response(&self, r: ec::TxnOpResponse) -> OpResponse {
        match r {
            ec::TxnOpResponse::Put(p) => OpResponse::Put {
                prev: p.prev_key().map(|kv| self.strip(kv)),
            },
            ec::TxnOpResponse::Delete(d) => OpResponse::Delete {
                deleted: d.prev_kvs().iter().map(|kv| self.strip(kv)).collect(),
            },
            ec::TxnOpResponse::Get(g) => OpResponse::Get {
                kvs: g.kvs().iter().map(|kv| self.strip(kv)).collect(),
            },
            // We never send nested transactions.
            ec::TxnOpResponse::Txn(_) => OpResponse::Get { kvs: Vec::new() },
        }
    }

    /// The revision the cluster is at (a count-only read of one key).
    async fn revision_now(&self) -> Result<Revision> {
        let mut kv = self.client.kv_client();
        let resp = self
            .timed(
                Ctx::Plain,
                kv.get(self.key(b""), Some(ec::GetOptions::new().with_count_only())),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// The cluster's compacted revision: etcd answers a watch from revision 1 with
    /// it (after the "created" response, from its background sync loop). Only used
    /// on error paths, to fill in [`RegistryError::Compacted`].
    async fn compacted_revision(&self) -> Option<Revision> {
        let mut w = self.client.watch_client();
        let opts = ec::WatchOptions::new().with_start_revision(1);
        let fut = async {
            let mut stream = w
                .watch(self.key(b"\0compaction-probe"), Some(opts))
                .await
                .ok()?;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() || !resp.events().is_empty() {
                    return None;
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(2).min(self.request_timeout), fut)
            .await
            .ok()
            .flatten()
    }

    async fn keep_alive_slot(&self, id: LeaseId) -> Arc<tokio::sync::Mutex<Option<KeepAlive>>> {
        let mut map = match self.keepers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.entry(id).or_default().clone()
    }

    fn forget_keeper(&self, id: LeaseId) {
        let mut map = match self.keepers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.remove(&id);
    }
}

/// One keep-alive call holding its lease's stream. A call dropped before it read
/// the answer to its request (the lease keeper times calls out) leaves that
/// answer in flight on the stream, where the next call would read it as its own
/// and report a keep-alive that etcd may never have received, stretching the
/// keeper's deadline past etcd's real expiry (found with the testkit's gRPC
/// proxy). Such a stream is discarded: the next call opens a new one.
struct KeepAliveCall<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<KeepAlive>>,
    finished: bool,
}

impl Drop for KeepAliveCall<'_> {
    fn drop(&mut self) {
        if !self.finished {
            *self.slot = None;
        }
    }
}

/// Try one endpoint alone: a status call within the connect timeout.
async fn probe(endpoint: &str, opts: ec::ConnectOptions, timeout: Duration) -> Result<(), String> {
    let fut = async {
        let mut c = ec::Client::connect([endpoint], Some(opts))
            .await
            .map_err(|e| describe(&e))?;
        c.status().await.map(|_| ()).map_err(|e| describe(&e))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A readable account of a client error, including the transport's cause chain.
fn describe(e: &ec::Error) -> String {
    use std::error::Error as _;
    match e {
        ec::Error::GRpcStatus(s) => {
            let mut msg = format!("{} ({:?})", s.message(), s.code());
            let mut src = s.source();
            while let Some(cause) = src {
                msg.push_str(&format!(": {cause}"));
                src = cause.source();
            }
            msg
        }
        other => {
            let mut msg = other.to_string();
            let mut src = other.source();
            while let Some(cause) = src {
                msg.push_str(&format!(": {cause}"));
                src = cause.source();
            }
            msg
        }
    }
}

fn classify_connect_failure(failures: &[String]) -> RegistryError {
    let all = failures.join("; ");
    if failures.iter().all(|f| is_auth_message(f)) {
        RegistryError::Auth(format!("etcd refused the credentials: {all}"))
    } else {
        RegistryError::Unavailable(format!("cannot reach any etcd endpoint: {all}"))
    }
}

fn is_auth_message(m: &str) -> bool {
    m.contains("authentication failed")
        || m.contains("invalid auth token")
        || m.contains("permission denied")
        || m.contains("user name is empty")
        || m.contains("Unauthenticated")
}

fn map_err(e: ec::Error, endpoints: &str, ctx: Ctx) -> RegistryError {
    let msg = describe(&e);
    if msg.contains("requested lease not found") || msg.contains("lease not found") {
        if let Ctx::Lease(id) = ctx {
            return RegistryError::LeaseNotFound(id);
        }
        return RegistryError::LeaseNotFound(0);
    }
    if msg.contains("required revision has been compacted") {
        let requested = match ctx {
            Ctx::Watch(r) | Ctx::Compact(r) => r,
            _ => 0,
        };
        return RegistryError::Compacted {
            requested,
            compacted: requested,
        };
    }
    if msg.contains("required revision is a future revision") {
        let requested = match ctx {
            Ctx::Compact(r) => r,
            _ => 0,
        };
        return RegistryError::FutureRevision {
            requested,
            current: requested - 1,
        };
    }
    if msg.contains("too many operations in txn request")
        || msg.contains("duplicate key given in txn request")
        || msg.contains("request is too large")
        || msg.contains("key is not provided")
    {
        return RegistryError::InvalidRequest(msg);
    }
    if is_auth_message(&msg) {
        return RegistryError::Auth(format!("etcd at {endpoints}: {msg}"));
    }
    RegistryError::Unavailable(format!("etcd at {endpoints}: {msg}"))
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let resp = self.timed(Ctx::Plain, kv.get(self.key(key), None)).await?;
        Ok(resp.kvs().first().map(|kv| self.strip(kv)))
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let (start, end) = self.prefix_range(&req.prefix);
        let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
        let mut kv = self.client.kv_client();
        if req.count_only {
            let resp = self
                .timed(
                    Ctx::Plain,
                    kv.get(
                        start,
                        Some(ec::GetOptions::new().with_range(end).with_count_only()),
                    ),
                )
                .await?;
            return Ok(RangeResponse {
                kvs: Vec::new(),
                count: usize::try_from(resp.count()).unwrap_or(0),
                more: false,
                revision: resp.header().map_or(0, |h| h.revision()),
            });
        }
        match req.start_after {
            None => {
                let resp = self
                    .timed(
                        Ctx::Plain,
                        kv.get(
                            start,
                            Some(ec::GetOptions::new().with_range(end).with_limit(limit)),
                        ),
                    )
                    .await?;
                Ok(RangeResponse {
                    kvs: resp.kvs().iter().map(|kv| self.strip(kv)).collect(),
                    count: usize::try_from(resp.count()).unwrap_or(0),
                    more: resp.more(),
                    revision: resp.header().map_or(0, |h| h.revision()),
                })
            }
            Some(after) => {
                // The count covers the whole prefix; the page starts after `after`.
                // Both reads in one txn, so they see one revision.
                let mut page_start = self.key(&after);
                page_start.push(0);
                let page_start = page_start.max(start.clone());
                let txn = ec::Txn::new().and_then(vec![
                    ec::TxnOp::get(
                        start,
                        Some(
                            ec::GetOptions::new()
                                .with_range(end.clone())
                                .with_count_only(),
                        ),
                    ),
                    ec::TxnOp::get(
                        page_start,
                        Some(ec::GetOptions::new().with_range(end).with_limit(limit)),
                    ),
                ]);
                let resp = self.timed(Ctx::Plain, kv.txn(txn)).await?;
                let revision = resp.header().map_or(0, |h| h.revision());
                let mut count = 0;
                let mut kvs = Vec::new();
                let mut more = false;
                for (i, r) in resp.op_responses().into_iter().enumerate() {
                    if let ec::TxnOpResponse::Get(g) = r {
                        if i == 0 {
                            count = usize::try_from(g.count()).unwrap_or(0);
                        } else {
                            kvs = g.kvs().iter().map(|kv| self.strip(kv)).collect();
                            more = g.more();
                        }
                    }
                }
                Ok(RangeResponse {
                    kvs,
                    count,
                    more,
                    revision,
                })
            }
        }
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<Revision> {
        if key.is_empty() {
            return Err(RegistryError::InvalidRequest("put of an empty key".into()));
        }
        let mut opts = ec::PutOptions::new();
        let ctx = match lease {
            Some(0) => {
                return Err(RegistryError::InvalidRequest(
                    "put with lease 0; use None for no lease".into(),
                ));
            }
            Some(l) => {
                opts = opts.with_lease(l);
                Ctx::Lease(l)
            }
            None => Ctx::Plain,
        };
        let mut kv = self.client.kv_client();
        let resp = self
            .timed(ctx, kv.put(self.key(key), value.to_vec(), Some(opts)))
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn delete(&self, key: &[u8]) -> Result<DeleteResponse> {
        let mut kv = self.client.kv_client();
        let resp = self
            .timed(
                Ctx::Plain,
                kv.delete(
                    self.key(key),
                    Some(ec::DeleteOptions::new().with_prev_key()),
                ),
            )
            .await?;
        Ok(DeleteResponse {
            revision: resp.header().map_or(0, |h| h.revision()),
            prev: resp.prev_kvs().first().map(|kv| self.strip(kv)),
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        txn.validate()?;
        let lease = txn
            .then
            .iter()
            .chain(&txn.otherwise)
            .find_map(|op| match op {
                TxnOp::Put { lease: Some(l), .. } => Some(*l),
                _ => None,
            });
        let etxn = ec::Txn::new()
            .when(
                txn.compares
                    .iter()
                    .map(|c| self.to_etcd_compare(c))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                txn.then
                    .iter()
                    .map(|o| self.to_etcd_op(o))
                    .collect::<Vec<_>>(),
            )
            .or_else(
                txn.otherwise
                    .iter()
                    .map(|o| self.to_etcd_op(o))
                    .collect::<Vec<_>>(),
            );
        let ctx = lease.map_or(Ctx::Plain, Ctx::Lease);
        let mut kv = self.client.kv_client();
        let resp = self.timed(ctx, kv.txn(etxn)).await?;
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
            responses: resp
                .op_responses()
                .into_iter()
                .map(|r| self.convert_op_response(r))
                .collect(),
        })
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease> {
        if ttl.is_zero() {
            return Err(RegistryError::InvalidRequest(
                "lease TTL must be greater than zero".into(),
            ));
        }
        // etcd counts TTLs in whole seconds: round up so the lease lives at least `ttl`.
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let mut lc = self.client.lease_client();
        let resp = self.timed(Ctx::Plain, lc.grant(secs, None)).await?;
        if !resp.error().is_empty() {
            return Err(RegistryError::Unavailable(format!(
                "etcd at {}: lease grant failed: {}",
                self.endpoints,
                resp.error()
            )));
        }
        Ok(Lease {
            id: resp.id(),
            ttl: Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)),
        })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        let slot = self.keep_alive_slot(id).await;
        let mut call = KeepAliveCall {
            slot: slot.lock().await,
            finished: false,
        };
        let result = async {
            let guard = &mut call.slot;
            if guard.is_none() {
                let mut lc = self.client.lease_client();
                **guard = Some(self.timed(Ctx::Lease(id), lc.keep_alive(id)).await?);
            }
            let Some((keeper, stream)) = guard.as_mut() else {
                return Err(RegistryError::Unavailable(
                    "keep-alive stream missing".into(),
                ));
            };
            self.timed(Ctx::Lease(id), keeper.keep_alive()).await?;
            match self.timed(Ctx::Lease(id), stream.message()).await? {
                Some(resp) if resp.ttl() > 0 => {
                    Ok(Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)))
                }
                Some(_) => Err(RegistryError::LeaseNotFound(id)),
                None => Err(RegistryError::Unavailable(format!(
                    "etcd at {}: keep-alive stream of lease {id:x} closed",
                    self.endpoints
                ))),
            }
        }
        .await;
        call.finished = true;
        if result.is_err() {
            // A broken or finished stream is not reused; the next call opens a new one.
            *call.slot = None;
            drop(call);
            self.forget_keeper(id);
        }
        result
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.forget_keeper(id);
        let mut lc = self.client.lease_client();
        self.timed(Ctx::Lease(id), lc.revoke(id)).await?;
        Ok(())
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<Option<Duration>> {
        let mut lc = self.client.lease_client();
        let resp = self
            .timed(Ctx::Lease(id), lc.time_to_live(id, None))
            .await?;
        Ok(u64::try_from(resp.ttl()).ok().map(Duration::from_secs))
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream> {
        let from = if from_revision <= 0 {
            self.revision_now().await? + 1
        } else {
            // etcd accepts a start equal to the compacted revision; we refuse it, as
            // the memory backend does, so that no delete at that revision is missed.
            // A read at `from - 1` fails exactly when `from <= compacted`.
            if from_revision > 1 {
                let mut kv = self.client.kv_client();
                let probe = self
                    .timed(
                        Ctx::Watch(from_revision),
                        kv.get(
                            self.key(prefix),
                            Some(
                                ec::GetOptions::new()
                                    .with_count_only()
                                    .with_revision(from_revision - 1),
                            ),
                        ),
                    )
                    .await;
                match probe {
                    Err(RegistryError::Compacted { .. }) => {
                        let compacted = self.compacted_revision().await.unwrap_or(from_revision);
                        return Err(RegistryError::Compacted {
                            requested: from_revision,
                            compacted: compacted.max(from_revision),
                        });
                    }
                    // A revision in the future is fine for a watch.
                    Err(RegistryError::FutureRevision { .. }) | Ok(_) => {}
                    Err(RegistryError::Unavailable(m)) if m.contains("future revision") => {}
                    Err(e) => return Err(e),
                }
            }
            from_revision
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (start, end) = self.prefix_range(prefix);
        tokio::spawn(watch_task(self.clone(), start, end, from, tx));
        Ok(WatchStream::from_receiver(rx))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.client.kv_client();
        match self
            .timed(Ctx::Compact(revision), kv.compact(revision, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(RegistryError::FutureRevision { requested, .. }) => {
                Err(RegistryError::FutureRevision {
                    requested,
                    current: self.revision_now().await.unwrap_or(requested - 1),
                })
            }
            Err(RegistryError::Compacted { requested, .. }) => Err(RegistryError::Compacted {
                requested,
                compacted: self.compacted_revision().await.unwrap_or(requested),
            }),
            Err(e) => Err(e),
        }
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.revision_now().await
    }
}

/// Feed one [`WatchStream`]: watch etcd from `from`, resume after errors from the
/// last delivered revision + 1, deduplicate by revision, stop on compaction or when
/// the receiver is dropped.
async fn watch_task(
    reg: EtcdRegistry,
    start: Vec<u8>,
    end: Vec<u8>,
    from: Revision,
    tx: mpsc::UnboundedSender<Result<WatchBatch>>,
) {
    let mut next = from;
    let mut backoff = Duration::from_millis(50);
    let max_backoff = Duration::from_secs(2);
    loop {
        if tx.is_closed() {
            return;
        }
        let opts = ec::WatchOptions::new()
            .with_range(end.clone())
            .with_prev_key()
            .with_start_revision(next);
        let mut wc = reg.client.watch_client();
        let opened = tokio::select! {
            _ = tx.closed() => return,
            r = tokio::time::timeout(reg.request_timeout, wc.watch(start.clone(), Some(opts))) => r,
        };
        let mut stream = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::debug!(error = %describe(&e), next, "etcd watch failed to open; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        let _ = tx.send(Err(RegistryError::Compacted {
                            requested: next,
                            compacted: resp.compact_revision(),
                        }));
                        return;
                    }
                    if resp.canceled() {
                        tracing::debug!(
                            reason = resp.cancel_reason(),
                            "etcd watch cancelled; resuming"
                        );
                        break;
                    }
                    let mut batch: WatchBatch = Vec::with_capacity(resp.events().len());
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let rev = kv.mod_revision();
                        // Already delivered (etcd 3.4 can repeat events after a reconnect).
                        if rev < next {
                            continue;
                        }
                        let kind = match ev.event_type() {
                            ec::EventType::Put => EventKind::Put,
                            ec::EventType::Delete => EventKind::Delete,
                        };
                        batch.push(WatchEvent {
                            kind,
                            kv: reg.strip(kv),
                            prev: ev.prev_kv().map(|p| reg.strip(p)),
                        });
                    }
                    if let Some(last) = batch.last().map(WatchEvent::revision) {
                        if tx.send(Ok(batch)).is_err() {
                            return;
                        }
                        next = last + 1;
                    }
                    backoff = Duration::from_millis(50);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %describe(&e), next, "etcd watch stream broke; resuming");
                    break;
                }
            }
        }
        drop(stream);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
