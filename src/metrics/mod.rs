//! Metrics on `metrics.listen`: `GET /metrics` (Prometheus text format 0.0.4), `/healthz` (the
//! process answers) and `/readyz` (state loaded and every listener bound). Everything is read
//! from the state on request; nothing here writes: the daemon's parts write their counters
//! ([`Registry`], the CA's [`IssuanceMetrics`]) and a scrape reads them.
//!
//! - [`registry`]: the counters the listeners write; [`issuance`]: the CA's.
//! - [`workload_api`], [`bundle_endpoint`], [`issuance`], `process`: one file per area, each
//!   with its own families. [`histogram`], [`gauge`]: the building blocks.
//!
//! The listener answers HTTP/1.1 only (what Prometheus speaks), with a header read timeout and
//! a cap on connections, so that network clients cannot hold it, or the process's descriptors.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod agents;
pub mod bundle_endpoint;
pub mod gauge;
pub mod histogram;
pub mod issuance;
mod process;
pub mod registry;
pub mod store;
pub(crate) mod text;
pub mod workload_api;

pub use issuance::IssuanceMetrics;
pub use registry::Registry;
use text::{family, label};

use crate::bundle::summary;
use crate::ca::Ca;
use crate::clock::Clock;
use crate::federation::pinned::PeerStore;
use crate::federation::status::{PeerState, StatusBoard};

/// What the metrics read.
#[derive(Debug, Clone)]
pub struct MetricsState {
    /// The CA.
    pub ca: Arc<Ca>,
    /// Pinned peer bundles.
    pub peers: Arc<PeerStore>,
    /// Fetch status and counters.
    pub status: Arc<StatusBoard>,
    /// Set once every listener is bound.
    pub ready: Arc<AtomicBool>,
    /// For ages.
    pub clock: Arc<dyn Clock>,
    /// The listeners' counters.
    pub registry: Registry,
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The exposition text.
pub fn render(state: &MetricsState) -> String {
    let mut out = String::with_capacity(4096);
    let snap = state.ca.snapshot();
    let td = label(snap.trust_domain.as_str());
    family(
        &mut out,
        "meshtrust_ca_expiry_timestamp_seconds",
        "gauge",
        "NotAfter of the active CA.",
    );
    if let Some(a) = snap.active() {
        let _ = writeln!(
            out,
            "meshtrust_ca_expiry_timestamp_seconds{{trust_domain=\"{td}\"}} {}",
            secs(a.not_after)
        );
    }
    family(
        &mut out,
        "meshtrust_bundle_sequence",
        "gauge",
        "spiffe_sequence of the published bundle.",
    );
    let _ = writeln!(
        out,
        "meshtrust_bundle_sequence{{trust_domain=\"{td}\"}} {}",
        snap.bundle.sequence.unwrap_or(0)
    );
    family(
        &mut out,
        "meshtrust_bundle_authorities",
        "gauge",
        "X.509 authorities in the published bundle.",
    );
    let _ = writeln!(
        out,
        "meshtrust_bundle_authorities{{trust_domain=\"{td}\"}} {}",
        snap.bundle.x509_authorities.len()
    );

    let now = state.clock.now();
    let pinned = state.peers.current();
    let peers = state.status.all();
    family(
        &mut out,
        "meshtrust_federation_fetches_total",
        "counter",
        "Bundle fetches per peer by result (ok, or the failure kind).",
    );
    for p in &peers {
        let peer = label(p.trust_domain.as_str());
        for (result, n) in &p.fetches {
            let _ = writeln!(
                out,
                "meshtrust_federation_fetches_total{{trust_domain=\"{peer}\",result=\"{result}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "meshtrust_federation_up",
        "gauge",
        "1 when the last fetch from the peer succeeded.",
    );
    for p in &peers {
        let _ = writeln!(
            out,
            "meshtrust_federation_up{{trust_domain=\"{}\"}} {}",
            label(p.trust_domain.as_str()),
            u8::from(p.state == PeerState::Ok)
        );
    }
    family(
        &mut out,
        "meshtrust_federation_bundle_age_seconds",
        "gauge",
        "Seconds since the peer's bundle was last fetched successfully.",
    );
    for p in &peers {
        if let Some(t) = p.last_success {
            let age = now.duration_since(t).map_or(0.0, |d| d.as_secs_f64());
            let _ = writeln!(
                out,
                "meshtrust_federation_bundle_age_seconds{{trust_domain=\"{}\"}} {age}",
                label(p.trust_domain.as_str())
            );
        }
    }
    family(
        &mut out,
        "meshtrust_federation_refresh_interval_seconds",
        "gauge",
        "The peer's normal polling interval: its refresh hint within the poll floor and ceiling.",
    );
    for p in &peers {
        if let Some(interval) = p.refresh_interval {
            let _ = writeln!(
                out,
                "meshtrust_federation_refresh_interval_seconds{{trust_domain=\"{}\"}} {}",
                label(p.trust_domain.as_str()),
                interval.as_secs_f64()
            );
        }
    }
    // Each family's samples follow its own HELP/TYPE lines (the text format groups them).
    family(
        &mut out,
        "meshtrust_federation_bundle_sequence",
        "gauge",
        "spiffe_sequence of the pinned peer bundle.",
    );
    for (peer, b) in pinned.iter() {
        if let Some(seq) = b.sequence {
            let _ = writeln!(
                out,
                "meshtrust_federation_bundle_sequence{{trust_domain=\"{}\"}} {seq}",
                label(peer.as_str())
            );
        }
    }
    family(
        &mut out,
        "meshtrust_federation_bundle_authorities",
        "gauge",
        "X.509 authorities in the pinned peer bundle (0: revoked).",
    );
    for (peer, b) in pinned.iter() {
        let _ = writeln!(
            out,
            "meshtrust_federation_bundle_authorities{{trust_domain=\"{}\"}} {}",
            label(peer.as_str()),
            b.x509_authorities.len()
        );
    }
    family(
        &mut out,
        "meshtrust_federation_authorities_earliest_expiry_timestamp_seconds",
        "gauge",
        "Earliest NotAfter among the pinned peer authorities.",
    );
    for (peer, b) in pinned.iter() {
        if let Some(t) = summary::earliest_expiry(&b.x509_authorities) {
            let _ = writeln!(
                out,
                "meshtrust_federation_authorities_earliest_expiry_timestamp_seconds{{trust_domain=\"{}\"}} {}",
                label(peer.as_str()),
                secs(t)
            );
        }
    }
    process::render(&mut out);
    state.registry.workload_api.render(&mut out);
    state.registry.bundle_endpoint.render(&mut out);
    state.registry.agents.render(&mut out);
    state.ca.issuance_metrics().render(&mut out);
    let (kind, health) = state.peers.store_health();
    store::StoreMetrics::render(
        kind,
        health == crate::store::StoreHealth::Available,
        state.peers.store_metrics().as_deref(),
        &mut out,
    );
    out
}

/// The routes.
pub fn router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<MetricsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state),
    )
}

async fn readyz(State(state): State<MetricsState>) -> impl IntoResponse {
    if let (_, crate::store::StoreHealth::Unavailable(_)) = state.peers.store_health() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: store unavailable\n",
        );
    }
    if state.ready.load(Ordering::Acquire) && state.ca.snapshot().active().is_some() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Connections served at once at most; beyond it accepting pauses (the kernel backlog holds
/// new clients). A scraper needs one; this leaves room for several plus health probes.
pub const MAX_CONNECTIONS: usize = 32;
/// A request head must arrive within this, counted from when the server starts waiting for it
/// (so also the idle keep-alive limit), like the bundle endpoint.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection, however busy, is closed after this: a client that keeps sending slow
/// requests cannot hold a slot for ever.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// hyper's read buffer limit (its minimum is 8 KiB): a request head is a few hundred bytes.
const MAX_BUF_SIZE: usize = 16 * 1024;
/// After cancellation, in-flight scrapes get this long.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Accept error backoff (e.g. out of descriptors): never a hot loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves until `cancel`.
pub async fn serve(listener: TcpListener, state: MetricsState, cancel: CancellationToken) {
    serve_app(listener, router(state), cancel).await;
}

/// Serves `app` (another process's metrics routes, e.g. the node agent's) with the same
/// limits as [`serve`], until `cancel`.
pub async fn serve_app(listener: TcpListener, app: Router, cancel: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let app = app.clone();
                let cancel = cancel.child_token();
                tracker.spawn(async move {
                    connection(tcp, peer, app, cancel).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn connection(tcp: TcpStream, peer: SocketAddr, app: Router, cancel: CancellationToken) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let closing = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
            return;
        }
        () = cancel.cancelled() => "shutdown",
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => "max age",
    };
    tracing::debug!(%peer, closing, "metrics connection closing");
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}
