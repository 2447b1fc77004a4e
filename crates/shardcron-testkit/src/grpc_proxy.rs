//! An HTTP/2-aware (h2c, plaintext) gRPC proxy on loopback, in front of an etcd
//! client endpoint, to inject faults into *one kind of call* while every other
//! call keeps working.
//!
//! etcd's gRPC multiplexes every call over one HTTP/2 connection, so a TCP proxy
//! ([`crate::TcpProxy`]) can only cut or delay all of them at once. [`GrpcProxy`]
//! terminates HTTP/2 from the client, forwards every request as its own stream on
//! an HTTP/2 connection to etcd (one upstream connection per client connection;
//! bodies stream both ways, trailers included: gRPC's status lives in them), and
//! offers switches a test flips at run time:
//!
//! - [`GrpcProxy::stall_keepalives`]: messages of every
//!   `/etcdserverpb.Lease/LeaseKeepAlive` stream are held (in the directions
//!   chosen with [`GrpcProxy::stall_keepalives_in`]): the streams stay open but
//!   nothing moves; when the stall ends, the held messages go on in order;
//! - [`GrpcProxy::lose_next_txn_answers`] (and `_matching` / `_where`, which
//!   only pick transactions whose request contains some bytes, e.g. a key
//!   prefix, or that a predicate accepts): the next `n` `/etcdserverpb.KV/Txn` calls are forwarded and applied
//!   by etcd, their real answer is awaited in full and discarded, and the client
//!   gets a trailers-only answer with `grpc-status` 14 (UNAVAILABLE) instead: an
//!   ambiguous commit;
//! - counters ([`GrpcProxy::stats`]): calls per path, answers lost, keep-alive
//!   messages held, and when the last keep-alive message went each way.
//!
//! Dropping the proxy stops it (and closes every connection).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, watch};

/// The path of etcd's lease keep-alive stream.
pub const LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
/// The path of etcd's transaction call.
pub const KV_TXN: &str = "/etcdserverpb.KV/Txn";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What the proxy saw and did, for a test to check that its fault happened.
#[derive(Debug, Clone, Default)]
pub struct GrpcProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Calls started, per gRPC path (e.g. `/etcdserverpb.KV/Range`).
    pub calls: BTreeMap<String, u64>,
    /// Calls whose answer ended with a `grpc-status` other than 0, per path
    /// (answers the proxy dropped on purpose are not counted here).
    pub failed: BTreeMap<String, u64>,
    /// Txn answers dropped on purpose (the txn was applied by etcd).
    pub answers_lost: u64,
    /// Keep-alive data frames (one gRPC message each, in practice) that had to
    /// wait for a stall to end, client to etcd.
    pub keepalive_requests_held: u64,
    /// The same, etcd to client.
    pub keepalive_responses_held: u64,
    /// When the last keep-alive data frame was forwarded to etcd.
    pub last_keepalive_request: Option<SystemTime>,
    /// When the last keep-alive data frame was forwarded to the client.
    pub last_keepalive_response: Option<SystemTime>,
    /// Calls that etcd could not be asked (upstream connection broken).
    pub upstream_errors: u64,
}

impl GrpcProxyStats {
    /// Calls started on `path`.
    pub fn calls_of(&self, path: &str) -> u64 {
        self.calls.get(path).copied().unwrap_or(0)
    }

    /// Calls started on every path but `path`.
    pub fn calls_other_than(&self, path: &str) -> u64 {
        self.calls
            .iter()
            .filter(|(p, _)| p.as_str() != path)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Which Txn requests (their protobuf bytes) a loss rule picks.
type TxnPredicate = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

#[derive(Default)]
struct LoseRule {
    remaining: u64,
    pick: Option<TxnPredicate>,
}

impl std::fmt::Debug for LoseRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoseRule")
            .field("remaining", &self.remaining)
            .field("predicate", &self.pick.is_some())
            .finish()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    /// (hold requests, hold responses) of keep-alive streams.
    stall: watch::Sender<(bool, bool)>,
    lose: Mutex<LoseRule>,
    stats: Mutex<GrpcProxyStats>,
    held_requests: AtomicU64,
    held_responses: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A gRPC (h2c) proxy to one etcd client endpoint. Dropping it stops it.
#[derive(Debug)]
pub struct GrpcProxy {
    port: u16,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcProxy {
    /// Start a proxy to `target` (an etcd client endpoint, e.g. `127.0.0.1:2379`)
    /// on a free loopback port, served by its own thread.
    pub fn start(target: SocketAddr) -> GrpcProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the gRPC proxy");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let port = std_listener.local_addr().expect("proxy addr").port();
        let (stall, _) = watch::channel((false, false));
        let shared = Arc::new(Shared {
            target,
            stall,
            lose: Mutex::new(LoseRule::default()),
            stats: Mutex::new(GrpcProxyStats::default()),
            held_requests: AtomicU64::new(0),
            held_responses: AtomicU64::new(0),
        });
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("grpc-proxy-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener)
                        .expect("tokio proxy listener");
                    tokio::select! {
                        _ = shutdown_rx => {}
                        () = accept_loop(listener, sh) => {}
                    }
                });
                // Dropping the runtime drops every connection task: all sockets close.
            })
            .expect("spawn the gRPC proxy thread");
        GrpcProxy {
            port,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// The port clients should connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Hold (`true`) or release (`false`) the messages of every keep-alive stream,
    /// in both directions. Other calls are not affected.
    pub fn stall_keepalives(&self, on: bool) {
        self.stall_keepalives_in(on, on);
    }

    /// Hold the keep-alive messages going to etcd (`requests`) and/or coming from
    /// it (`responses`); `false` releases what was held, in order.
    pub fn stall_keepalives_in(&self, requests: bool, responses: bool) {
        self.shared.stall.send_replace((requests, responses));
    }

    /// Lose the answers of the next `n` Txn calls: each is forwarded and applied,
    /// its answer awaited and dropped, and the client gets UNAVAILABLE instead.
    /// Replaces any previous rule; `0` disarms.
    pub fn lose_next_txn_answers(&self, n: u64) {
        *lock(&self.shared.lose) = LoseRule {
            remaining: n,
            pick: None,
        };
    }

    /// Like [`GrpcProxy::lose_next_txn_answers`], for the next `n` Txn calls whose
    /// request (the protobuf bytes) contains `needle`, e.g. a key prefix.
    pub fn lose_next_txn_answers_matching(&self, n: u64, needle: &[u8]) {
        let needle = needle.to_vec();
        self.lose_next_txn_answers_where(n, move |req| contains(req, &needle));
    }

    /// Like [`GrpcProxy::lose_next_txn_answers`], for the next `n` Txn calls whose
    /// request (the protobuf bytes) `pick` accepts.
    pub fn lose_next_txn_answers_where(
        &self,
        n: u64,
        pick: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
    ) {
        *lock(&self.shared.lose) = LoseRule {
            remaining: n,
            pick: Some(Arc::new(pick)),
        };
    }

    /// How many answers the armed rule still has to lose.
    pub fn answers_to_lose(&self) -> u64 {
        lock(&self.shared.lose).remaining
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GrpcProxyStats {
        let mut s = lock(&self.shared.stats).clone();
        s.keepalive_requests_held = self.shared.held_requests.load(Ordering::SeqCst);
        s.keepalive_responses_held = self.shared.held_responses.load(Ordering::SeqCst);
        s
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        lock(&shared.stats).connections += 1;
        tokio::spawn(serve_connection(client, shared.clone()));
    }
}

/// One client connection: its own HTTP/2 connection to etcd, and every stream of
/// the client forwarded as a stream of that connection.
async fn serve_connection(client: tokio::net::TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let Ok(upstream) = tokio::net::TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let Ok((sender, conn)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(upstream)).await
    else {
        return;
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(forward(req, sender, shared).await) }
    });
    let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(client), service);
    // When etcd's side ends (e.g. etcd restarted), the client's connection is
    // closed too, so that the client reconnects instead of failing forever.
    tokio::select! {
        _ = server => {}
        _ = conn => {}
    }
}

/// A trailers-only gRPC answer with `status` (HTTP 200, END_STREAM on headers).
fn grpc_error(status: u32, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed());
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", hyper::header::HeaderValue::from(status));
    if let Ok(v) = hyper::header::HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    resp
}

fn boxed_incoming(body: Incoming) -> ProxyBody {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

async fn forward(
    req: Request<Incoming>,
    mut sender: hyper::client::conn::http2::SendRequest<ProxyBody>,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    *lock(&shared.stats).calls.entry(path.clone()).or_default() += 1;
    let keep_alive = path == LEASE_KEEP_ALIVE;
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or_else(|| path.clone(), ToString::to_string);
    match format!("http://{}{pq}", shared.target).parse() {
        Ok(uri) => parts.uri = uri,
        Err(_) => return grpc_error(13, "grpc proxy: bad request path"),
    }

    // Decide whether this Txn's answer is to be lost (buffering the request, a
    // unary call, only when a rule needs to look into it).
    let mut lose = false;
    let body: ProxyBody = if path == KV_TXN && lock(&shared.lose).remaining > 0 {
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => return grpc_error(14, "grpc proxy: request body broken"),
        };
        let mut rule = lock(&shared.lose);
        let matches = rule.pick.as_ref().is_none_or(|pick| pick(&bytes));
        if rule.remaining > 0 && matches {
            rule.remaining -= 1;
            lose = true;
        }
        Full::new(bytes).map_err(|e| match e {}).boxed()
    } else if keep_alive {
        stalled_body(body, shared.clone(), Direction::Request)
    } else {
        boxed_incoming(body)
    };

    let resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            lock(&shared.stats).upstream_errors += 1;
            return grpc_error(14, &format!("grpc proxy: etcd unreachable: {e}"));
        }
    };
    if lose {
        // Wait for the whole answer (etcd has applied the txn by then), drop it.
        let _ = resp.into_body().collect().await;
        lock(&shared.stats).answers_lost += 1;
        return grpc_error(14, "grpc proxy: the answer was lost on purpose");
    }
    let (parts, body) = resp.into_parts();
    if parts.headers.get("grpc-status").is_some_and(|s| s != "0") {
        // A trailers-only error answer.
        *lock(&shared.stats).failed.entry(path.clone()).or_default() += 1;
    }
    let body = if keep_alive {
        stalled_body(body, shared.clone(), Direction::Response)
    } else {
        counted_body(body, shared.clone(), path)
    };
    Response::from_parts(parts, body)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// A body fed by a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

/// Forward `body` frame by frame, holding each data frame while keep-alives are
/// stalled in `dir`. The stream stays open while held; if either side goes away,
/// the other is reset.
fn stalled_body(mut body: Incoming, shared: Arc<Shared>, dir: Direction) -> ProxyBody {
    let (tx, rx) = mpsc::channel(1);
    let mut stall = shared.stall.subscribe();
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                () = tx.closed() => return,
                f = body.frame() => f,
            };
            let Some(frame) = frame else { return };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(Box::new(e) as BoxError)).await;
                    return;
                }
            };
            if frame.is_data() {
                let held = |s: &(bool, bool)| match dir {
                    Direction::Request => s.0,
                    Direction::Response => s.1,
                };
                if held(&stall.borrow_and_update()) {
                    match dir {
                        Direction::Request => shared.held_requests.fetch_add(1, Ordering::SeqCst),
                        Direction::Response => shared.held_responses.fetch_add(1, Ordering::SeqCst),
                    };
                    loop {
                        tokio::select! {
                            () = tx.closed() => return,
                            r = stall.changed() => if r.is_err() { return },
                        }
                        if !held(&stall.borrow_and_update()) {
                            break;
                        }
                    }
                }
                let now = Some(SystemTime::now());
                let mut st = lock(&shared.stats);
                match dir {
                    Direction::Request => st.last_keepalive_request = now,
                    Direction::Response => st.last_keepalive_response = now,
                }
            } else if let Some(t) = frame.trailers_ref()
                && t.get("grpc-status").is_some_and(|s| s != "0")
            {
                *lock(&shared.stats)
                    .failed
                    .entry(LEASE_KEEP_ALIVE.to_string())
                    .or_default() += 1;
            }
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    ChannelBody { rx }.boxed()
}

/// Forward an answer's body as is, counting a non-zero `grpc-status` trailer.
fn counted_body(body: Incoming, shared: Arc<Shared>, path: String) -> ProxyBody {
    body.map_frame(move |frame| {
        if let Some(t) = frame.trailers_ref()
            && t.get("grpc-status").is_some_and(|s| s != "0")
        {
            *lock(&shared.stats).failed.entry(path.clone()).or_default() += 1;
        }
        frame
    })
    .map_err(|e| Box::new(e) as BoxError)
    .boxed()
}
