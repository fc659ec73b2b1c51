//! The Workload API socket: one Unix socket (mode 0777, CONTRACT.md) that answers gRPC over
//! plaintext HTTP/2 (Workload Endpoint §3, §3.1) and the HTTP/1.1 JSON view.
//!
//! Per connection: attest the peer from the kernel (`SO_PEERCRED` + procfs, Workload Endpoint §5;
//! the result rides on every request of the connection as an [`Attestation`] extension), read
//! the first bytes, and dispatch: the HTTP/2 client preface means gRPC (hyper's HTTP/2 server
//! with the tonic service as a tower service), anything else is HTTP/1.1 for the JSON view.
//!
//! Memory: a connection costs hyper's buffers plus one small task per HTTP/2 stream; a stream
//! keeps only `Arc`s to shared state (see `stream.rs`), so thousands of idle streams are cheap.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::attest;
use super::grpc::WorkloadApiService;
use super::h2_authority::AuthorityRewrite;
use super::json;
use super::observe::{self, Observed};
use super::service::WorkloadApi;
use super::state::{Attestation, WorkloadApiDeps};
use crate::metrics::workload_api::WorkloadApiMetrics;

/// The HTTP/2 client connection preface (RFC 9113 §3.4): what every gRPC client sends first.
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may take to send its first bytes (a hang guard, not a timing
/// requirement: clients send the preface or a request line at once).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Concurrent HTTP/2 streams per connection. gRPC clients multiplex every call of a process on
/// one connection, and a watcher holds its streams open, so this is generous (grpc-go's default
/// is unlimited); each stream costs little (see module docs).
const MAX_STREAMS_PER_CONNECTION: u32 = 65_536;

/// Binds the Workload API socket at `path`: the parent folder is created, a stale socket file
/// is replaced (never another kind of file), and the socket is made 0777 so that any local
/// workload can connect (attestation, not file permissions, decides what it gets).
///
/// # Errors
/// When the path holds something else than a socket, or binding fails.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    crate::admin_api::bind_unix(path, 0o777)
}

/// Serves the Workload API on `listener` until `cancel` fires, then stops accepting, ends every
/// stream (Unavailable, so clients reconnect to the next daemon), lets connections close and
/// returns. The socket file is left in place: the next [`bind`] replaces it.
pub async fn serve(listener: UnixListener, deps: WorkloadApiDeps, cancel: CancellationToken) {
    serve_with_metrics(listener, deps, Arc::default(), cancel).await;
}

/// [`serve`], counting calls, streams, connections and refusals into `metrics`.
pub async fn serve_with_metrics(
    listener: UnixListener,
    deps: WorkloadApiDeps,
    metrics: Arc<WorkloadApiMetrics>,
    cancel: CancellationToken,
) {
    let api = WorkloadApi::new(deps, cancel.child_token());
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tracker.spawn(connection(
                    stream,
                    api.clone(),
                    metrics.clone(),
                    cancel.clone(),
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays usable.
                tracing::warn!(error = %e, "workload api accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tracing::debug!("workload api stopped");
}

async fn connection(
    mut stream: UnixStream,
    api: WorkloadApi,
    metrics: Arc<WorkloadApiMetrics>,
    cancel: CancellationToken,
) {
    let _open = metrics.connection_opened();
    let attestation = match attest::attest(&stream) {
        Ok(caller) => Attestation::Attested(caller.into()),
        Err(e) => {
            tracing::info!(error = %e, "workload api caller attestation failed");
            Attestation::Failed(e.to_string().into())
        }
    };
    let (prefix, is_h2) = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&mut stream)).await
    {
        Ok(Ok((prefix, _))) if prefix.is_empty() => return,
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "workload api connection failed before a request");
            return;
        }
        Err(_) => {
            metrics.refused("first_bytes_timeout");
            return;
        }
    };
    let result = if is_h2 {
        // gRPC C-core clients (Python grpcio, grpcurl) send the socket path percent-encoded as
        // :authority, which h2 rejects: rewrite it in the HPACK stream before h2 sees it.
        let io = AuthorityRewrite::with_prefix(stream, prefix.into());
        serve_grpc(io, api, metrics, attestation, &cancel).await
    } else {
        let io = Prefixed::new(prefix, stream);
        serve_json(io, api, metrics, attestation, &cancel).await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "workload api connection ended with an error");
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
    api: WorkloadApi,
    metrics: Arc<WorkloadApiMetrics>,
    attestation: Attestation,
    cancel: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = Observed::new(metrics, WorkloadApiService::new(api)).map_request(
        move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(attestation.clone());
            request
        },
    );
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

async fn serve_json<I>(
    io: I,
    api: WorkloadApi,
    metrics: Arc<WorkloadApiMetrics>,
    attestation: Attestation,
    cancel: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = api.shared().clone();
    let service = hyper::service::service_fn(move |request| {
        let (shared, attestation) = (shared.clone(), attestation.clone());
        observe::json(metrics.clone(), request, move |r| {
            json::handle(shared, attestation, r)
        })
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
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
