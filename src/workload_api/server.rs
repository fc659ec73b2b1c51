//! The Workload API socket: one Unix socket (mode 0777, CONTRACT.md) that answers gRPC over
//! plaintext HTTP/2 (Workload Endpoint §3, §3.1) and the HTTP/1.1 JSON view.
//!
//! Per connection: read the peer credentials (`SO_PEERCRED`) and take a slot in the connection
//! table (total and per-uid caps, [`Limits`]); refused connections are closed at once. Then read
//! the first bytes and dispatch: the HTTP/2 client preface means gRPC (hyper's HTTP/2 server
//! with the tonic service as a tower service), anything else is HTTP/1.1 for the JSON view.
//!
//! Every request (every stream open) is attested anew ([`ConnectedPeer::attest`], Workload
//! Endpoint §5): the process that connected is looked at again, so one that exec'd another
//! binary is matched as that binary, and one that is gone (its socket handed over) is refused.
//! The result rides on the request as an [`Attestation`] extension, with the connection's peer
//! (an open stream attests again before each update it would send). A caller refused with
//! PermissionDenied / 403 (no entry) or whose attestation failed is answered, then its
//! connection is closed (GOAWAY / `Connection: close`); it may reconnect and retry.
//!
//! Idle connections (no open stream or request for [`Limits::idle_timeout`]) close; a header
//! block or request head must arrive within [`Limits::header_timeout`]. Every refusal goes
//! through [`Refusals::record`] (counted by [`RefusalReason`], logged at most once per 10 s
//! per reason), and so do accept errors (`EMFILE`): the log stays bounded under attack.
//!
//! Memory: a connection costs hyper's buffers plus one small task per HTTP/2 stream; a stream
//! keeps only `Arc`s to shared state (see `stream.rs`), so thousands of idle streams are cheap.

use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service as _;

use super::attest::ConnectedPeer;
use super::connection::{Activity, ConnectionTable, Guarded, Slot, drive};
use super::grpc::WorkloadApiService;
use super::h2_authority::{AuthorityRewrite, MAX_HEADER_BLOCK};
use super::json;
use super::limits::Limits;
use super::observe::{self, Observed};
use super::refusal::{LogLimiter, RefusalReason, Refusals};
use super::service::WorkloadApi;
use super::state::{Attestation, WorkloadApiDeps};
use crate::metrics::workload_api::WorkloadApiMetrics;

/// The HTTP/2 client connection preface (RFC 9113 §3.4): what every gRPC client sends first.
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the accept loop pauses after an accept error (`EMFILE`), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// `grpc-status` of PermissionDenied (a trailers-only response carries it in its headers).
const GRPC_PERMISSION_DENIED: &[u8] = b"7";

/// How [`serve_with`] runs: its limits, and where it counts calls, streams, connections and
/// refusals (for metrics).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Connection limits; the connection caps are clamped by the fd limit as it changes
    /// ([`Limits::effective`]).
    pub limits: Limits,
    /// The counters `/metrics` reads (refusals by reason among them).
    pub metrics: Arc<WorkloadApiMetrics>,
}

/// Binds the Workload API socket at `path`: the parent folder is created, a stale socket file
/// is replaced (never another kind of file), and the socket is made 0777 so that any local
/// workload can connect (attestation, not file permissions, decides what it gets).
///
/// # Errors
/// When the path holds something else than a socket, or binding fails.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    crate::admin_api::bind_unix(path, 0o777)
}

/// [`serve_with`] with the default [`ServeOptions`].
pub async fn serve(listener: UnixListener, deps: WorkloadApiDeps, cancel: CancellationToken) {
    serve_with(listener, deps, ServeOptions::default(), cancel).await;
}

/// Serves the Workload API on `listener` until `cancel` fires, then stops accepting, ends every
/// stream (Unavailable, so clients reconnect to the next daemon), lets connections close and
/// returns. The socket file is left in place: the next [`bind`] replaces it.
pub async fn serve_with(
    listener: UnixListener,
    deps: WorkloadApiDeps,
    options: ServeOptions,
    cancel: CancellationToken,
) {
    // The connection caps follow the fd limit as it changes (the table re-reads it).
    let limits = options.limits;
    tracing::debug!(?limits, "workload api limits");
    let server = Arc::new(Server {
        api: WorkloadApi::new(deps, cancel.child_token()),
        table: ConnectionTable::new(&limits),
        limits,
        refusals: options.metrics.refusals().clone(),
        metrics: options.metrics,
    });
    let accept_errors = LogLimiter::default();
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Refused connections are dropped (closed) here, before any task or buffer.
                if let Some((peer, slot)) = server.admit(&stream) {
                    tracker.spawn(connection(
                        stream,
                        peer,
                        slot,
                        server.clone(),
                        cancel.clone(),
                    ));
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, one log line per window.
                if let Some(unlogged) = accept_errors.hit(Instant::now()) {
                    tracing::warn!(error = %e, unlogged, "workload api accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tracing::debug!("workload api stopped");
}

/// What every connection task shares.
#[derive(Debug)]
struct Server {
    api: WorkloadApi,
    limits: Limits,
    table: Arc<ConnectionTable>,
    refusals: Arc<Refusals>,
    metrics: Arc<WorkloadApiMetrics>,
}

impl Server {
    /// The peer of a new connection and its slot, or `None` (refusal recorded) if it has none.
    fn admit(&self, stream: &UnixStream) -> Option<(ConnectedPeer, Slot)> {
        let peer = match ConnectedPeer::of(stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::debug!(error = %e, "workload api peer credentials");
                self.refusals.record(RefusalReason::NoPeerCredentials, None);
                return None;
            }
        };
        match self.table.admit(peer.uid) {
            Ok(slot) => Some((peer, slot)),
            Err(reason) => {
                self.refusals.record(reason, Some(peer.uid));
                None
            }
        }
    }
}

async fn connection(
    mut stream: UnixStream,
    mut peer: ConnectedPeer,
    _slot: Slot,
    server: Arc<Server>,
    cancel: CancellationToken,
) {
    // The pid-reuse guard's reference. If the process is already gone, every request is
    // refused (Unavailable) and the connection closed after the first answer.
    if let Err(e) = peer.record_start_time() {
        tracing::debug!(uid = peer.uid, error = %e, "workload api caller gone at accept");
    }
    let _open = server.metrics.connection_opened();
    let limits = &server.limits;
    let uid = peer.uid;
    let sniffed = tokio::time::timeout(limits.header_timeout, sniff(&mut stream)).await;
    let (prefix, is_h2) = match sniffed {
        Ok(Ok((prefix, _))) if prefix.is_empty() => return,
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "workload api connection failed before a request");
            return;
        }
        Err(_) => {
            server
                .refusals
                .record(RefusalReason::HeaderTimeout, Some(uid));
            return;
        }
    };
    let conn = Conn {
        activity: Activity::new(server.refusals.clone(), peer.uid),
        peer: Arc::new(peer),
    };
    let result = if is_h2 {
        // gRPC C-core clients (Python grpcio, grpcurl) send the socket path percent-encoded as
        // :authority, which h2 rejects: rewrite it in the HPACK stream before h2 sees it.
        let refusals = server.refusals.clone();
        let io = AuthorityRewrite::with_prefix(stream, prefix.into())
            .header_timeout(limits.header_timeout)
            .on_header_timeout(move || refusals.record(RefusalReason::HeaderTimeout, Some(uid)));
        serve_grpc(io, &server, conn, &cancel).await
    } else {
        let io = Prefixed::new(prefix, stream);
        serve_json(io, &server, conn, &cancel).await
    };
    if let Err(e) = result {
        // HTTP/1.1's header read timeout (HTTP/2's is counted by the filter).
        if e.is_timeout() {
            server
                .refusals
                .record(RefusalReason::HeaderTimeout, Some(uid));
        }
        tracing::debug!(error = %e, "workload api connection ended with an error");
    }
}

/// One connection's peer and activity, shared by its requests.
#[derive(Debug, Clone)]
struct Conn {
    peer: Arc<ConnectedPeer>,
    activity: Arc<Activity>,
}

impl Conn {
    /// Attests the caller for one request; a failure is answered (Unavailable / 503) and then
    /// closes the connection: the process that connected is gone or changed.
    fn attest(&self) -> Attestation {
        match self.peer.attest() {
            Ok(caller) => Attestation::Attested(caller.into()),
            Err(e) => {
                tracing::debug!(uid = self.peer.uid, error = %e, "workload api caller attestation failed");
                self.activity.refuse(RefusalReason::AttestationFailed);
                Attestation::Failed(e.to_string().into())
            }
        }
    }
}

/// Reads until the bytes read so far stop matching the HTTP/2 preface, or all of it arrived.
/// Returns the bytes read (to be replayed) and whether they are the preface. Empty at EOF.
async fn sniff(stream: &mut UnixStream) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = [0u8; HTTP2_PREFACE.len()];
    let mut n = 0;
    while n < buf.len() {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            break;
        }
        n += read;
        if buf[..n] != HTTP2_PREFACE[..n] {
            return Ok((buf[..n].to_vec(), false));
        }
    }
    Ok((buf[..n].to_vec(), n == buf.len()))
}

async fn serve_grpc<I>(
    io: I,
    server: &Server,
    conn: Conn,
    cancel: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let grpc = Observed::new(
        server.metrics.clone(),
        WorkloadApiService::new(server.api.clone()),
    );
    let activity = conn.activity.clone();
    let service =
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            let open = conn.activity.begin();
            let attestation = conn.attest();
            request.extensions_mut().insert(attestation.clone());
            // Streams attest again before each update.
            request.extensions_mut().insert(conn.peer.clone());
            let mut grpc = grpc.clone();
            let activity = conn.activity.clone();
            async move {
                let response = grpc.call(request).await?;
                let denied = response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|v| v.as_bytes() == GRPC_PERMISSION_DENIED);
                if denied {
                    let caller = attestation.caller().ok();
                    activity.refuse_caller(RefusalReason::NoIdentity, caller.as_deref());
                }
                Ok::<_, Infallible>(response.map(|body| Guarded::new(body, open)))
            }
        });
    let limits = &server.limits;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(u32::try_from(MAX_HEADER_BLOCK).unwrap_or(u32::MAX));
    let http = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(http);
    drive(http, |c| c.graceful_shutdown(), &activity, limits, cancel).await
}

async fn serve_json<I>(
    io: I,
    server: &Server,
    conn: Conn,
    cancel: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = server.api.shared().clone();
    let metrics = server.metrics.clone();
    let activity = conn.activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let open = conn.activity.begin();
        let attestation = conn.attest();
        let caller = attestation.caller().ok();
        let shared = shared.clone();
        let activity = conn.activity.clone();
        let answered = observe::json(metrics.clone(), request, move |r| {
            json::handle(shared, attestation, r)
        });
        async move {
            let mut response = answered.await?;
            if response.status() == StatusCode::FORBIDDEN {
                activity.refuse_caller(RefusalReason::NoIdentity, caller.as_deref());
            }
            if activity.closing() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response.map(|body| Guarded::new(body, open)))
        }
    });
    let limits = &server.limits;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(http);
    drive(http, |c| c.graceful_shutdown(), &activity, limits, cancel).await
}

/// A stream that first replays bytes already read from it (the sniffed prefix).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, read as if `prefix` had not been taken out of it yet.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                // Free it: the connection may live for days.
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
