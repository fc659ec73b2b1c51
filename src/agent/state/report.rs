//! What the agent shows of its state: `GET /v1/status` on its admin socket and the gauges of
//! its metrics.

use serde::Serialize;

use super::{AgentState, unix};
use crate::clock::rfc3339;

/// `GET /v1/status` of an agent.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Our trust domain.
    pub trust_domain: String,
    /// The agent's part.
    pub agent: AgentView,
}

/// The agent section of the status.
#[derive(Debug, Serialize)]
pub struct AgentView {
    /// The node name.
    pub node: Option<String>,
    /// The agent SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// When the agent SVID expires.
    pub svid_expires_at: Option<String>,
    /// The server connected to (its URL), if any.
    pub server: Option<String>,
    /// The replica that sent the last view.
    pub server_id: Option<String>,
    /// When the last view arrived.
    pub last_sync: Option<String>,
    /// The node view's revision.
    pub revision: Option<u64>,
    /// Seconds until the first cached SVID expires.
    pub first_expiry_seconds: Option<i64>,
    /// The identities held.
    pub identities: Vec<IdentityView>,
}

/// One held identity.
#[derive(Debug, Serialize)]
pub struct IdentityView {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// Its NotAfter.
    pub expires_at: String,
    /// When it will be renewed.
    pub renew_at: String,
}

impl AgentState {
    /// Seconds until the first held workload SVID expires (negative: already expired).
    pub fn first_expiry_seconds(&self) -> Option<i64> {
        let now = unix(self.clock.now());
        let inner = self.lock();
        inner
            .svids
            .values()
            .map(|h| unix(h.svid.not_after) - now)
            .min()
    }

    /// The agent SVID's NotAfter (Unix seconds).
    pub fn agent_expires_at(&self) -> Option<i64> {
        self.lock().agent.as_ref().map(|a| unix(a.svid.not_after))
    }

    /// When the last view arrived (Unix seconds).
    pub fn last_sync(&self) -> Option<i64> {
        self.lock().last_sync.map(unix)
    }

    /// What `GET /v1/status` shows.
    pub fn status(&self) -> StatusView {
        let first_expiry_seconds = self.first_expiry_seconds();
        let inner = self.lock();
        StatusView {
            trust_domain: self.td.to_string(),
            agent: AgentView {
                node: inner.node.clone(),
                spiffe_id: inner.agent.as_ref().map(|a| a.svid.spiffe_id.to_string()),
                svid_expires_at: inner.agent.as_ref().map(|a| rfc3339(a.svid.not_after)),
                server: inner.connected.clone(),
                server_id: inner.server_id.clone(),
                last_sync: inner.last_sync.map(rfc3339),
                revision: inner.view.as_ref().map(|v| v.raw.revision),
                first_expiry_seconds,
                identities: inner
                    .svids
                    .values()
                    .map(|h| IdentityView {
                        spiffe_id: h.svid.spiffe_id.to_string(),
                        expires_at: rfc3339(h.svid.not_after),
                        renew_at: rfc3339(h.renew_at),
                    })
                    .collect(),
            },
        }
    }
}
