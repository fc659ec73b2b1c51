//! The admin API's node routes (CONTRACT.md "Admin API additions"): `POST /v1/tokens`
//! `{"node","ttl"}` -> `{"token","node","expires_at"}` (the token is in the answer only; the
//! server keeps its SHA-256 and logs the node and expiry, never the token); `GET /v1/agents`
//! (the attested agents); `POST /v1/agents/{node}/evict`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::token::{DEFAULT_TTL, JoinTokens};
use crate::admin_api::AdminState;
use crate::agent_api::registry::{AgentRegistry, RegistryError};
use crate::clock::{Clock, rfc3339};
use crate::config::parse_duration;

/// The server's node state, read and written by the admin API and the agent API.
#[derive(Debug)]
pub struct Nodes {
    /// Unused join tokens.
    pub tokens: JoinTokens,
    /// Token expiry times.
    pub clock: Arc<dyn Clock>,
    /// The attested agents.
    pub agents: Arc<AgentRegistry>,
}

impl Nodes {
    /// No tokens yet, agents in memory only.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_agents(clock, Arc::new(AgentRegistry::default()))
    }

    /// No tokens yet, agents in `agents`.
    pub fn with_agents(clock: Arc<dyn Clock>, agents: Arc<AgentRegistry>) -> Self {
        Self::with_state(clock, agents, JoinTokens::new())
    }

    /// `tokens` and `agents` (the daemon: both in its store).
    pub fn with_state(
        clock: Arc<dyn Clock>,
        agents: Arc<AgentRegistry>,
        tokens: JoinTokens,
    ) -> Self {
        Self {
            tokens,
            clock,
            agents,
        }
    }
}

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The node the token attests.
    pub node: String,
    /// Its time to live (`"10m"`); 10 minutes when absent.
    pub ttl: Option<String>,
}

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(serde_json::json!({ "error": msg.to_string() }))).into_response()
}

/// `POST /v1/tokens`: 200 with the token, 400 for a bad node name, ttl or body.
pub async fn create_token(
    State(state): State<AdminState>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let ttl: Duration = match req.ttl.as_deref().map(parse_duration) {
        None => DEFAULT_TTL,
        Some(Ok(ttl)) => ttl,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    let nodes = &state.nodes;
    match nodes.tokens.create(&req.node, ttl, nodes.clock.now()) {
        Ok(new) => {
            let expires_at = rfc3339(new.expires_at);
            tracing::info!(node = %new.node, %expires_at, "join token created");
            Json(serde_json::json!({
                "token": new.token.as_str(),
                "node": new.node,
                "expires_at": expires_at,
            }))
            .into_response()
        }
        Err(e @ super::NodeError::Store(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `GET /v1/agents`: `[{"spiffe_id","node","method","address","connected","last_sync",
/// "svid_expires_at","evicted"}]`, by node name.
pub async fn list_agents(State(state): State<AdminState>) -> Response {
    let agents: Vec<serde_json::Value> = state
        .nodes
        .agents
        .list()
        .into_iter()
        .map(|(a, connected)| {
            serde_json::json!({
                "spiffe_id": a.spiffe_id,
                "node": a.node,
                "method": a.method,
                "address": a.address,
                "connected": connected,
                "attested_at": rfc3339(a.attested_at),
                "last_sync": a.last_sync.map(rfc3339),
                "svid_expires_at": rfc3339(a.svid_expires_at),
                "evicted": a.evicted,
            })
        })
        .collect();
    Json(agents).into_response()
}

/// `POST /v1/agents/{node}/evict`: 200 `{"node","evicted":true}`, 404 for a node never
/// attested, 400 for a bad name, 503 when the store refuses.
pub async fn evict_agent(
    State(state): State<AdminState>,
    axum::extract::Path(node): axum::extract::Path<String>,
) -> Response {
    if let Err(e) = super::validate_node_name(&node) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    match state.nodes.agents.evict(&node) {
        Ok(()) => {
            tracing::warn!(%node, "agent evicted: its svid is refused until it attests again");
            Json(serde_json::json!({ "node": node, "evicted": true })).into_response()
        }
        Err(e @ RegistryError::Unknown(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
