//! Our SPIFFE bundle endpoint (SPIFFE Federation §4, §5; SPIFFE.md §2 "Serving"): HTTPS,
//! `GET /` answers the trust bundle JSON.
//!
//! This is the hot path that peers poll, so it is hyper directly rather than a router: each
//! request clones the pre-serialized `bundle_json` of the latest [`CaSnapshot`] (a reference
//! count, no serialization), and the response always reflects the current snapshot
//! (Federation 1.5.10 "MUST serve the most up-to-date bundle") without restarting anything.
//!
//! Protection against slow or idle clients: a TLS handshake timeout, an HTTP/1.1 header read
//! timeout (which also closes idle keep-alive connections, like SPIRE's `ReadHeaderTimeout`), an
//! idle timeout (no request for [`ServeOptions::idle_timeout`]) and a maximum connection age for
//! both protocols (a client that answers HTTP/2 PINGs is still closed, with a GOAWAY), HTTP/2
//! keep-alive pings, and a cap on concurrent connections derived from the fd limit
//! ([`super::fd_budget`]: descriptors are always left for the Unix sockets, the fetchers and the
//! store; at the cap we stop accepting and the kernel backlog holds new clients, while connections
//! still in their TLS handshake are closed: those that have sent nothing for [`SILENT_GRACE`], or
//! when all are talking, the oldest once it has had [`HANDSHAKE_GRACE`], so idle sockets cannot
//! keep legitimate peers waiting for the whole handshake timeout; one at a time, one per slot
//! wanted, and one whose ClientHello is in the kernel's buffer is kept, however late its task
//! runs).
//!
//! ```no_run
//! # async fn wire(cfg: meshtrust::config::BundleEndpointConfig, ca: std::sync::Arc<meshtrust::ca::Ca>,
//! #   clock: std::sync::Arc<dyn meshtrust::clock::Clock>, cancel: tokio_util::sync::CancellationToken,
//! #   tracker: tokio_util::task::TaskTracker) -> anyhow::Result<()> {
//! use meshtrust::federation::{endpoint, server_tls::ServerCerts};
//! let (certs, task) = ServerCerts::start(&cfg.profile, ca.subscribe(), clock, cancel.child_token())?;
//! tracker.spawn(task);
//! let listener = meshtrust::listen::tcp(cfg.listen)?;
//! tracker.spawn(endpoint::serve(listener, ca.subscribe(), certs, cancel.child_token()));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fd_budget;
use super::server_tls::{ServerCerts, ServerTlsError};
use crate::ca::CaSnapshot;
use crate::metrics::bundle_endpoint::{BundleEndpointMetrics, HandshakeFailure};

/// A bundle endpoint failure: its certificate or TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The certificate or the TLS configuration could not be set up.
    #[error(transparent)]
    Certs(#[from] ServerTlsError),
}

/// Limits and timeouts of the listener. The defaults suit a public endpoint.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Concurrent connections at most; beyond it accepting pauses. The default is the endpoint's
    /// share of the soft fd limit ([`fd_budget::endpoint_connection_cap`]: 48 at 256, 240 at
    /// 1,024, at most 10,000). A connection costs a task and ~50 KiB of TLS and HTTP buffers.
    pub max_connections: usize,
    /// A connection that sent no request for this long is closed (GOAWAY for HTTP/2), whatever
    /// PINGs it answers.
    pub idle_timeout: Duration,
    /// Any connection is closed (gracefully) this long after it was accepted.
    pub max_connection_age: Duration,
    /// HTTP/2 keep-alive PING interval (a peer that stops answering is dropped 10 s later).
    pub keepalive_interval: Duration,
    /// A TLS handshake must complete within this.
    pub handshake_timeout: Duration,
    /// At the connection cap, the oldest connection still in its TLS handshake is closed once it
    /// has had this long, to make room for the next client (idle sockets cannot hold every slot
    /// for the whole handshake timeout).
    pub handshake_grace: Duration,
    /// At the connection cap, a connection that has sent nothing yet is closed (before any
    /// other) once silent this long.
    pub silent_grace: Duration,
    /// An HTTP/1.1 request head must arrive within this, counted from when the server starts
    /// waiting for it (so also the idle keep-alive limit). SPIRE uses 10 s.
    pub header_read_timeout: Duration,
    /// After cancellation, in-flight requests get this long before connections are dropped.
    /// Below `app::SHUTDOWN_GRACE`, so the daemon's shutdown sees the listener finish.
    pub shutdown_grace: Duration,
    /// Where requests, handshake failures and open connections are counted.
    pub metrics: Arc<BundleEndpointMetrics>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: fd_budget::endpoint_connection_cap(fd_budget::soft_nofile_limit()),
            idle_timeout: IDLE_TIMEOUT,
            max_connection_age: MAX_CONNECTION_AGE,
            keepalive_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            handshake_grace: HANDSHAKE_GRACE,
            silent_grace: SILENT_GRACE,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            metrics: Arc::default(),
        }
    }
}

/// Default [`ServeOptions::idle_timeout`]: peers fetch once per connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ServeOptions::handshake_grace`]: a TLS 1.3 handshake over a 300 ms RTT path fits.
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);
/// Default [`ServeOptions::silent_grace`]: a client's ClientHello follows its connect within one
/// round trip.
pub const SILENT_GRACE: Duration = Duration::from_millis(500);
/// Default [`ServeOptions::max_connection_age`].
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(5 * 60);

/// Accept error backoff bounds (e.g. out of file descriptors): never a hot loop.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves the bundle on `listener` with [`ServeOptions::default`] until `cancel`; see
/// [`serve_with`].
///
/// # Errors
/// [`EndpointError::Tls`] if the TLS configuration cannot be built (before accepting anything).
pub async fn serve(
    listener: TcpListener,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    certs: Arc<ServerCerts>,
    cancel: CancellationToken,
) -> Result<(), EndpointError> {
    serve_with(listener, ca, certs, ServeOptions::default(), cancel).await
}

/// Serves the bundle of the latest snapshot on `ca` over HTTPS, presenting `certs`, until
/// `cancel`. Then it stops accepting, lets in-flight requests finish for up to
/// `options.shutdown_grace`, and returns once every connection is closed.
///
/// # Errors
/// [`EndpointError::Tls`] if the TLS configuration cannot be built (before accepting anything).
pub async fn serve_with(
    listener: TcpListener,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    certs: Arc<ServerCerts>,
    options: ServeOptions,
    cancel: CancellationToken,
) -> Result<(), EndpointError> {
    let shared = Arc::new(Shared::new(certs.tls_config()?, ca, options));
    if let Ok(addr) = listener.local_addr() {
        let o = &shared.options;
        tracing::info!(
            %addr, max_connections = o.max_connections, handshake_timeout = ?o.handshake_timeout,
            idle_timeout = ?o.idle_timeout, max_connection_age = ?o.max_connection_age,
            "bundle endpoint listening"
        );
    }
    let permits = Arc::new(Semaphore::new(shared.options.max_connections));
    let tracker = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            // At the cap: wait for a slot, and meanwhile close a connection still in its TLS
            // handshake: one that has sent nothing for `silent_grace` (a client waiting in the
            // backlog has its ClientHello there when accepted), or when all are talking, the
            // oldest once it has had `handshake_grace`. Idle sockets make room for the next.
            Err(_) => {
                let o = &shared.options;
                let next = shared
                    .pending
                    .next_eviction(o.silent_grace, o.handshake_grace);
                let evict_at = next.map(|(_, at)| at);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break, // never closed
                    },
                    // A connection judged silent turned out to have its ClientHello waiting.
                    () = shared.pending.reprieved.notified() => continue,
                    () = sleep_until_opt(evict_at), if evict_at.is_some() => {
                        if let Some((id, _)) = next {
                            shared.pending.evict(id);
                        }
                        continue;
                    }
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "bundle endpoint accept failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let shared = shared.clone();
        // A child token per connection: waiting on it locks only this connection's node,
        // where clones of one token would share a lock that every request's poll takes.
        let cancel = cancel.child_token();
        let (id, evict) = shared.pending.add();
        tracker.spawn(async move {
            shared.connection(tcp, peer, id, evict, cancel).await;
            shared.pending.done(id);
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tracing::info!("bundle endpoint stopped");
    Ok(())
}

/// What every connection needs.
struct Shared {
    acceptor: TlsAcceptor,
    /// HTTP/1.1 only: chosen when ALPN did not pick `h2`, so the header timeout runs from the
    /// first byte (version sniffing would wait without a timeout).
    h1: auto::Builder<TokioExecutor>,
    /// HTTP/2 only: chosen when ALPN picked `h2`.
    h2: auto::Builder<TokioExecutor>,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    options: ServeOptions,
    pending: Pending,
}

/// The last id given, and each connection still in its TLS handshake (by id, so oldest first).
type PendingMap = (u64, BTreeMap<u64, PendingConn>);

/// A connection still in its TLS handshake.
struct PendingConn {
    /// When it was accepted.
    since: Instant,
    /// Asks its task to close it (the task first looks whether a silent one has sent anything).
    evict: CancellationToken,
    /// Whether the client has sent anything yet (its ClientHello), as far as its task has seen.
    talking: bool,
    /// Asked to close and not yet gone: no other is chosen meanwhile, so one slot wanted
    /// closes one connection.
    evicting: bool,
}

/// Connections still in their TLS handshake, oldest first, with the token that closes each.
#[derive(Default)]
struct Pending {
    map: std::sync::Mutex<PendingMap>,
    /// Told when an evicted connection was found talking after all (the accept loop chooses
    /// again instead of waiting for the slot it would have freed).
    reprieved: tokio::sync::Notify,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection: its id and the token that asks it to close.
    fn add(&self) -> (u64, CancellationToken) {
        let mut guard = self.lock();
        let (next, map) = &mut *guard;
        *next += 1;
        let evict = CancellationToken::new();
        let conn = PendingConn {
            since: Instant::now(),
            evict: evict.clone(),
            talking: false,
            evicting: false,
        };
        map.insert(*next, conn);
        (*next, evict)
    }

    fn talking(&self, id: u64) {
        if let Some(conn) = self.lock().1.get_mut(&id) {
            conn.talking = true;
        }
    }

    /// An evicted connection that had sent its first byte after all: it is talking, with a new
    /// token (the old one stays cancelled), and the accept loop chooses again.
    fn reprieve(&self, id: u64) -> Option<CancellationToken> {
        let evict = {
            let mut guard = self.lock();
            let conn = guard.1.get_mut(&id)?;
            conn.talking = true;
            conn.evicting = false;
            conn.evict = CancellationToken::new();
            conn.evict.clone()
        };
        self.reprieved.notify_one();
        Some(evict)
    }

    fn done(&self, id: u64) {
        self.lock().1.remove(&id);
    }

    /// The connection to close next at the cap, and from when: the oldest that has sent nothing,
    /// once silent for `silent_grace`; only when every one is talking, the oldest, once it has
    /// had `grace` (a client that is handshaking is never closed for an idle one). None while
    /// one asked to close has not gone yet: one slot wanted, one connection closed.
    fn next_eviction(&self, silent_grace: Duration, grace: Duration) -> Option<(u64, Instant)> {
        let guard = self.lock();
        let map = &guard.1;
        if map.values().any(|c| c.evicting) {
            return None;
        }
        map.iter()
            .find(|(_, c)| !c.talking)
            .map(|(id, c)| (*id, c.since + silent_grace))
            .or_else(|| map.iter().next().map(|(id, c)| (*id, c.since + grace)))
    }

    fn evict(&self, id: u64) {
        if let Some(conn) = self.lock().1.get_mut(&id) {
            tracing::debug!(waited = ?conn.since.elapsed(), talking = conn.talking, "bundle endpoint at its connection cap: closing an unfinished handshake");
            conn.evicting = true;
            conn.evict.cancel();
        }
    }
}

/// Whether `tcp` has a byte waiting, asked of the kernel (not of the runtime's readiness, which
/// a busy runtime may not have caught up with yet).
fn has_input(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    matches!(rustix::net::recv(tcp, &mut byte[..], flags), Ok((_, n)) if n > 0)
}

/// Sleeps until `at` (which the caller only passes when set).
async fn sleep_until_opt(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Shared {
    fn new(
        tls: Arc<rustls::ServerConfig>,
        ca: watch::Receiver<Arc<CaSnapshot>>,
        options: ServeOptions,
    ) -> Self {
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .keep_alive(true);
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(100)
            .keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(Duration::from_secs(10));
        Self {
            acceptor: TlsAcceptor::from(tls),
            h1,
            h2,
            ca,
            options,
            pending: Pending::default(),
        }
    }

    async fn connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        id: u64,
        mut evict: CancellationToken,
        cancel: CancellationToken,
    ) {
        let _open = self.options.metrics.connection_opened();
        // Small responses: send them now rather than wait for an ACK (Nagle).
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + self.options.handshake_timeout;
        // The first byte (the ClientHello) marks the connection as talking: at the cap, silent
        // ones are closed first.
        let mut first = [0u8; 1];
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = evict.cancelled() => {
                    // Judged silent at the cap. A ClientHello that came while this task waited
                    // for its turn (a busy daemon) is not silence: the client stays.
                    match has_input(&tcp).then(|| self.pending.reprieve(id)).flatten() {
                        Some(token) => evict = token,
                        None => return,
                    }
                }
                // `peek`, not `readable` (which may wake spuriously): a byte is really there.
                r = tokio::time::timeout_at(deadline, tcp.peek(&mut first)) => match r {
                    Ok(Ok(0)) => {
                        self.options.metrics.handshake_failed(HandshakeFailure::Closed);
                        return;
                    }
                    Ok(Ok(_)) => {
                        self.pending.talking(id);
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "bundle endpoint connection failed");
                        self.options.metrics.handshake_failed(HandshakeFailure::Other);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "bundle endpoint client sent nothing before the handshake timeout");
                        self.options.metrics.handshake_failed(HandshakeFailure::Timeout);
                        return;
                    }
                },
            }
        }
        let handshake = tokio::time::timeout_at(deadline, self.acceptor.accept(tcp));
        let tls = tokio::select! {
            () = cancel.cancelled() => return,
            // At the cap, every pending client talking: the oldest makes room once it had its grace.
            () = evict.cancelled() => return,
            r = handshake => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "bundle endpoint tls handshake failed");
                    self.options.metrics.handshake_failed(HandshakeFailure::of_error(&e));
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "bundle endpoint tls handshake timed out");
                    self.options.metrics.handshake_failed(HandshakeFailure::Timeout);
                    return;
                }
            },
        };
        self.pending.done(id);
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let builder = if h2 { &self.h2 } else { &self.h1 };
        let opened = Instant::now();
        let last_request = Arc::new(AtomicU64::new(0));
        let service = BundleService {
            ca: self.ca.clone(),
            metrics: self.options.metrics.clone(),
            opened,
            last_request: last_request.clone(),
        };
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let too_old = tokio::time::sleep_until(opened + self.options.max_connection_age);
        tokio::pin!(too_old);
        let why = loop {
            let idle_since = opened + Duration::from_millis(last_request.load(Ordering::Relaxed));
            let idle_until = idle_since + self.options.idle_timeout;
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "bundle endpoint connection ended");
                    }
                    return;
                }
                () = cancel.cancelled() => break "shutdown",
                () = &mut too_old => break "maximum connection age",
                () = tokio::time::sleep_until(idle_until) => {
                    // A request since we looked moves the deadline on.
                    let last = opened + Duration::from_millis(last_request.load(Ordering::Relaxed));
                    if last == idle_since {
                        break "idle";
                    }
                }
            }
        };
        tracing::debug!(%peer, reason = why, "bundle endpoint closing the connection");
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(self.options.shutdown_grace, conn)
            .await
            .is_err()
        {
            tracing::debug!(%peer, reason = why, "bundle endpoint connection dropped after the grace period");
        }
    }
}

/// One connection's request handler.
#[derive(Debug, Clone)]
struct BundleService {
    ca: watch::Receiver<Arc<CaSnapshot>>,
    metrics: Arc<BundleEndpointMetrics>,
    /// When the connection was accepted.
    opened: Instant,
    /// Milliseconds from `opened` to the last request: the idle timeout counts from there.
    last_request: Arc<AtomicU64>,
}

impl hyper::service::Service<Request<Incoming>> for BundleService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let since = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_request.store(since, Ordering::Relaxed);
        let res = respond(&self.ca, req.method(), req.uri().path());
        self.metrics.responded(res.status());
        ready(Ok(res))
    }
}

/// The answer to `method path`: the path is checked first (only `/`, like SPIRE), then the
/// method (`GET`, and `HEAD` as HTTP requires of a GET resource).
fn respond(
    ca: &watch::Receiver<Arc<CaSnapshot>>,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    if path != "/" {
        return status(StatusCode::NOT_FOUND);
    }
    if method != Method::GET && method != Method::HEAD {
        let mut res = status(StatusCode::METHOD_NOT_ALLOWED);
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    let body = ca.borrow().bundle_json.clone();
    let len = body.len();
    let mut res = if method == Method::HEAD {
        Response::new(Full::new(Bytes::new()))
    } else {
        Response::new(Full::new(body))
    };
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The bundle changes at every rotation: no cache may answer for us (Federation 1.5.10).
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if method == Method::HEAD {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    res
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = code;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_silent_connections_go_first_then_the_oldest() {
        let pending = Pending::default();
        let (silent, grace) = (Duration::from_millis(500), Duration::from_secs(1));
        assert!(pending.next_eviction(silent, grace).is_none());
        let t0 = Instant::now();
        let (first, _) = pending.add();
        pending.talking(first);
        tokio::time::advance(Duration::from_millis(100)).await;
        let (idle, idle_token) = pending.add();
        // A silent one goes first, even though the talking one is older.
        assert_eq!(
            pending.next_eviction(silent, grace),
            Some((idle, t0 + Duration::from_millis(600)))
        );
        pending.evict(idle);
        assert!(idle_token.is_cancelled());
        // One asked to close and not gone yet: nobody else is chosen (one slot, one close).
        assert!(pending.next_eviction(silent, grace).is_none());
        pending.done(idle);
        assert_eq!(
            pending.next_eviction(silent, grace),
            Some((first, t0 + grace))
        );
        pending.done(first);
        assert!(pending.next_eviction(silent, grace).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_found_talking_stays_and_the_loop_chooses_again() {
        let pending = Pending::default();
        let (silent, grace) = (Duration::from_millis(500), Duration::from_secs(1));
        let t0 = Instant::now();
        let (late, late_token) = pending.add();
        tokio::time::advance(Duration::from_millis(100)).await;
        let (idle, _) = pending.add();
        pending.evict(late);
        let token = pending.reprieve(late).expect("still pending");
        assert!(late_token.is_cancelled() && !token.is_cancelled());
        // The loop is told, and now the silent one is next; the reprieved one is talking.
        tokio::time::timeout(Duration::from_secs(1), pending.reprieved.notified())
            .await
            .expect("the accept loop is told");
        assert_eq!(
            pending.next_eviction(silent, grace),
            Some((idle, t0 + Duration::from_millis(600)))
        );
        pending.done(idle);
        assert_eq!(
            pending.next_eviction(silent, grace),
            Some((late, t0 + grace))
        );
        pending.done(late);
        assert!(pending.reprieve(late).is_none(), "gone: nothing to keep");
    }

    #[tokio::test]
    async fn has_input_asks_the_kernel() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(!has_input(&server));
        client.write_all(b"\x16").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !has_input(&server) {
            assert!(std::time::Instant::now() < deadline, "the byte never came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Peeked, not read: it is still there for the TLS handshake.
        assert!(has_input(&server));
    }
}
