//! The admin API's node routes: `POST /v1/tokens` `{"node","ttl"}` -> `{"token","node",
//! "expires_at"}` (CONTRACT.md "Admin API additions"). The token is in the answer only; the
//! server keeps its SHA-256 and logs the node and expiry, never the token.

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
use crate::agent_api::registry::AgentRegistry;
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
        Self {
            tokens: JoinTokens::new(),
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
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}
