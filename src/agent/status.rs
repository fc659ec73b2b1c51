//! The agent's own endpoints: the admin socket (`GET /v1/status`: server connected to, last
//! sync, cached identities with their expiry; what `meshtrust status --admin-socket` shows) and
//! the metrics (`/metrics` on `[metrics] listen`, with the Workload API's families).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

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
    e.workload_api.render(&mut out);
    out
}
