//! The agent's own endpoints: the admin socket (`GET /v1/status`: server connected to, last
//! sync, cached identities with their expiry; what `meshtrust status --admin-socket` shows) and
//! the metrics (`/metrics` on `[metrics] listen`, with the Workload API's families).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AgentError;
use super::state::AgentState;
use crate::metrics::text::{family, sample};
use crate::metrics::workload_api::WorkloadApiMetrics;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The agent's state.
    pub state: Arc<AgentState>,
    /// The Workload API's counters.
    pub workload_api: Arc<WorkloadApiMetrics>,
    /// The sync task's counters.
    pub sync: Arc<SyncMetrics>,
}

/// Why a session with a server failed or ended: the label of
/// `meshtrust_agent_server_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Unreachable (refused, timed out, reset).
    Connect,
    /// The TLS handshake failed: the server is not `spiffe://<td>/meshtrust/server` under our
    /// bundle, or it refused our certificate.
    Tls,
    /// The server refused the agent SVID (evicted, or a replica that does not know it).
    SvidRefused,
    /// The server refused a request (attestation, a CSR...).
    Refused,
    /// A malformed node view or SVID from the server (nothing of it applied).
    BadAnswer,
    /// The sync stream ended or broke.
    Stream,
    /// Anything else (local failures).
    Other,
}

impl Failure {
    const ALL: [Self; 7] = [
        Self::Connect,
        Self::Tls,
        Self::SvidRefused,
        Self::Refused,
        Self::BadAnswer,
        Self::Stream,
        Self::Other,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::SvidRefused => "svid_refused",
            Self::Refused => "refused",
            Self::BadAnswer => "bad_answer",
            Self::Stream => "stream",
            Self::Other => "other",
        }
    }

    /// The class of `e`.
    pub fn of(e: &AgentError) -> Self {
        match e {
            AgentError::Connect(_) => Self::Connect,
            AgentError::Tls(_) => Self::Tls,
            AgentError::SvidRefused(_) => Self::SvidRefused,
            AgentError::Refused(_) | AgentError::Usage(_) => Self::Refused,
            AgentError::BadView(_) | AgentError::BadSvid(_) => Self::BadAnswer,
            _ => Self::Other,
        }
    }
}

/// The sync task's counters.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    failures: [AtomicU64; Failure::ALL.len()],
    signed: AtomicU64,
}

impl SyncMetrics {
    /// Counts a failed or ended session.
    pub fn failed(&self, why: Failure) {
        self.failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts workload SVIDs received.
    pub fn signed(&self, n: usize) {
        self.signed.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        family(
            out,
            "meshtrust_agent_server_failures_total",
            "counter",
            "Server sessions that failed or ended, by reason.",
        );
        for why in Failure::ALL {
            let n = self.failures[why as usize].load(Ordering::Relaxed);
            sample(
                out,
                "meshtrust_agent_server_failures_total",
                &[("reason", why.label())],
                n,
            );
        }
        family(
            out,
            "meshtrust_agent_workload_svids_signed_total",
            "counter",
            "Workload X509-SVIDs the servers signed for this agent's keys.",
        );
        sample(
            out,
            "meshtrust_agent_workload_svids_signed_total",
            &[],
            self.signed.load(Ordering::Relaxed),
        );
    }
}

/// The admin socket's routes.
pub fn admin_router(e: Endpoints) -> Router {
    Router::new().route("/v1/status", get(status)).with_state(e)
}

/// The metrics routes.
pub fn metrics_router(e: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(e)
}

async fn status(State(e): State<Endpoints>) -> impl IntoResponse {
    axum::Json(e.state.status())
}

async fn metrics(State(e): State<Endpoints>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&e),
    )
}

/// The exposition text.
pub fn render(e: &Endpoints) -> String {
    let mut out = String::new();
    let s = &e.state;
    family(
        &mut out,
        "meshtrust_agent_connected",
        "gauge",
        "1 while the agent holds a sync stream with a server.",
    );
    sample(
        &mut out,
        "meshtrust_agent_connected",
        &[],
        u8::from(s.connected()),
    );
    family(
        &mut out,
        "meshtrust_agent_last_sync_timestamp_seconds",
        "gauge",
        "When the last node view arrived (0: never).",
    );
    sample(
        &mut out,
        "meshtrust_agent_last_sync_timestamp_seconds",
        &[],
        s.last_sync().unwrap_or(0),
    );
    if let Some(secs) = s.first_expiry_seconds() {
        family(
            &mut out,
            "meshtrust_agent_cache_first_expiry_seconds",
            "gauge",
            "Seconds until the first cached workload SVID expires (negative: expired).",
        );
        sample(
            &mut out,
            "meshtrust_agent_cache_first_expiry_seconds",
            &[],
            secs,
        );
    }
    if let Some(at) = s.agent_expires_at() {
        family(
            &mut out,
            "meshtrust_agent_svid_expires_at_seconds",
            "gauge",
            "When the agent SVID expires (Unix seconds).",
        );
        sample(&mut out, "meshtrust_agent_svid_expires_at_seconds", &[], at);
    }
    e.sync.render(&mut out);
    e.workload_api.render(&mut out);
    out
}
