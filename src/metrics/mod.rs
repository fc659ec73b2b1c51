//! Metrics on `metrics.listen`: `GET /metrics` (Prometheus text format 0.0.4), `/healthz` (the
//! process answers) and `/readyz` (state loaded and every listener bound). Everything is read
//! from the state on request; nothing here writes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
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
    if state.ready.load(Ordering::Acquire) && state.ca.snapshot().active().is_some() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves until `cancel`.
pub async fn serve(listener: TcpListener, state: MetricsState, cancel: CancellationToken) {
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics server stopped");
    }
}
