//! The `[agent_api] listen` listener: TCP, TLS 1.3 ([`super::tls`]), HTTP/2, the tonic
//! service ([`super::service`]) with each request carrying its connection's [`AgentPeer`].
//!
//! Limits: a connection cap (beyond it a new connection is closed at once, counted and
//! logged), a TLS handshake timeout, an idle timeout (no open stream for
//! [`Limits::idle_timeout`]: an attacker's connection that never calls, or whose calls were
//! refused, is closed), HTTP/2 keep-alive pings, a cap of concurrent streams per connection,
//! a decoded message size cap, and the batch and attestation step limits of the service.
//! Refusals at this layer are counted ([`AgentRefusal::ConnectionLimit`],
//! [`AgentRefusal::Handshake`]) and logged at most once per 10 s each.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::Service as _;

use super::peer::AgentPeer;
use super::proto::agent_api_server::AgentApiServer;
use super::service::{AgentService, Shared};
use crate::metrics::agents::AgentRefusal;
use crate::workload_api::refusal::LogLimiter;

/// The listener's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections at most (one per agent, plus attestations).
    pub max_connections: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// The largest request message decoded.
    pub max_message: usize,
    /// HTTP/2 PING interval (a peer that stops answering is dropped).
    pub keepalive_interval: Duration,
}

impl Limits {
    /// The limits `[agent_api]` sets, the others at their defaults.
    pub fn from_config(config: &crate::config::AgentApiConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            ..Self::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_streams_per_connection: 64,
            max_message: 4 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(20),
        }
    }
}

/// How long connections get to finish after shutdown before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the agent API on `listener` until `shared.cancel` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let cancel = shared.cancel.clone();
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let grpc = AgentApiServer::new(AgentService(shared.clone()))
        .max_decoding_message_size(limits.max_message);
    let full_log = LogLimiter::default();
    let handshake_log = Arc::new(LogLimiter::default());
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "agent api listening");
    }
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(unlogged) = full_log.hit(std::time::Instant::now()) {
                    tracing::warn!(error = %e, unlogged, "agent api accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.core.metrics.refused(AgentRefusal::ConnectionLimit);
            if let Some(unlogged) = full_log.hit(std::time::Instant::now()) {
                tracing::warn!(%addr, reason = AgentRefusal::ConnectionLimit.label(), max = limits.max_connections, unlogged, "agent api connection refused");
            }
            continue;
        };
        let (acceptor, grpc, shared, limits) = (
            acceptor.clone(),
            grpc.clone(),
            shared.clone(),
            limits.clone(),
        );
        let handshake_log = handshake_log.clone();
        tracker.spawn(async move {
            let _slot = slot;
            connection(
                stream,
                addr,
                acceptor,
                grpc,
                &shared,
                &limits,
                &handshake_log,
            )
            .await;
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tracing::debug!("agent api stopped");
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    grpc: AgentApiServer<AgentService>,
    shared: &Shared,
    limits: &Limits,
    handshake_log: &LogLimiter,
) {
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return handshake_failed(shared, handshake_log, addr, &e.to_string()),
        Err(_) => return handshake_failed(shared, handshake_log, addr, "handshake timed out"),
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let peer = AgentPeer { addr, leaf };
    let activity = Arc::new(Activity::default());
    let act = activity.clone();
    let service =
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            let open = Open::new(act.clone());
            let mut grpc = grpc.clone();
            async move {
                let response = grpc.call(request).await?;
                Ok::<_, Infallible>(response.map(|body| Counted { body, _open: open }))
            }
        });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "agent api connection ended with an error");
                }
                return;
            }
            () = shared.cancel.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(limits.idle_timeout), if !closing => {
                // Nothing open to finish: dropped, not a GOAWAY handshake a silent peer would
                // drag out.
                tracing::debug!(%addr, "agent api connection idle; closed");
                return;
            }
            () = tokio::time::sleep(SHUTDOWN_GRACE), if closing => return,
        }
    }
}

fn handshake_failed(shared: &Shared, log: &LogLimiter, addr: SocketAddr, error: &str) {
    shared.core.metrics.refused(AgentRefusal::Handshake);
    if let Some(unlogged) = log.hit(std::time::Instant::now()) {
        tracing::warn!(%addr, reason = AgentRefusal::Handshake.label(), error, unlogged, "agent api connection refused");
    }
}

/// Open streams of one connection, for the idle timeout.
#[derive(Debug, Default)]
struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// Resolves once no stream has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(timeout) => {
                    if self.open.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// One open stream; closes on drop (when the response body is done or dropped).
#[derive(Debug)]
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        activity.changed.notify_waiters();
        Self(activity)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its stream counted as open until it is dropped.
struct Counted<B> {
    body: B,
    _open: Open,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
