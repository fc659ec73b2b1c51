//! [`AgentApiCore`]: the agent API's decisions, called by its transport.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::bundle::TrustBundle;
use crate::ca::{CaSnapshot, SignedLeaf};
use crate::config::{EntryConfig, NodeAttestationConfig};
use crate::metrics::agents::{AgentMetrics, AgentRefusal};
use crate::node::admin::Nodes;
use crate::node::{NodeError, agent_id, csr};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::workload_api::PeerBundles;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    /// The node's proof or request was refused.
    #[error(transparent)]
    Refused(#[from] NodeError),
    /// `[node_attestation] join_token = false`.
    #[error("join token attestation is disabled on this server")]
    MethodDisabled,
    /// The CA cannot sign now.
    #[error("cannot sign: {0}")]
    Ca(#[from] crate::ca::CaError),
    /// A JWT-SVID request without an audience or with a bad ID, or minting failed.
    #[error("jwt-svid: {0}")]
    Jwt(String),
}

impl AgentApiError {
    fn refusal(&self) -> Option<AgentRefusal> {
        match self {
            Self::Refused(NodeError::UnknownToken) => Some(AgentRefusal::UnknownToken),
            Self::Refused(NodeError::ExpiredToken) => Some(AgentRefusal::ExpiredToken),
            Self::Refused(NodeError::BadCsr(_)) => Some(AgentRefusal::BadCsr),
            Self::Refused(NodeError::NotEntitled { .. }) => Some(AgentRefusal::NotEntitled),
            Self::MethodDisabled => Some(AgentRefusal::MethodDisabled),
            _ => None,
        }
    }
}

/// An attested agent's SVID.
#[derive(Debug, Clone)]
pub struct AgentSvid {
    /// The node name.
    pub node: String,
    /// `spiffe://<td>/meshtrust/agent/<node>`.
    pub spiffe_id: SpiffeId,
    /// The leaf, for the agent's own key.
    pub leaf: SignedLeaf,
}

/// What one node is sent: its entries and the bundles they need.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Entries whose `node` is this node or `"*"`, in config order.
    pub entries: Vec<EntryConfig>,
    /// Our bundle.
    pub own: Arc<TrustBundle>,
    /// Peer bundles some of those entries federate with, nothing else.
    pub peers: Vec<Arc<TrustBundle>>,
}

/// The agent API's state.
#[derive(Debug, Clone)]
pub struct AgentApiCore {
    /// Our trust domain.
    pub trust_domain: TrustDomain,
    /// The CA (signs agent and workload SVIDs).
    pub ca: watch::Receiver<Arc<CaSnapshot>>,
    /// Pinned peer bundles.
    pub peers: watch::Receiver<Arc<PeerBundles>>,
    /// Every entry (those for nodes included).
    pub entries: watch::Receiver<Arc<Vec<EntryConfig>>>,
    /// Join tokens.
    pub nodes: Arc<Nodes>,
    /// Which methods are on.
    pub attestation: NodeAttestationConfig,
    /// Refusal counters.
    pub metrics: Arc<AgentMetrics>,
}

impl AgentApiCore {
    fn refused<T>(&self, node: &str, what: &str, e: AgentApiError) -> Result<T, AgentApiError> {
        Err(self.logged(node, what, e))
    }

    /// Logs and counts `e` (a refusal by its reason, anything else as a failure); returns it.
    pub fn logged(&self, node: &str, what: &str, e: AgentApiError) -> AgentApiError {
        if let Some(why) = e.refusal() {
            self.metrics.refused(why);
            tracing::warn!(node, reason = why.label(), error = %e, "agent api: {what} refused");
        } else {
            tracing::error!(node, error = %e, "agent api: {what} failed");
        }
        e
    }

    /// Logs and counts a refusal decided outside the core (the transport, authorization,
    /// x509pop), in the same form as the core's own.
    pub fn record_refusal(
        &self,
        node: &str,
        what: &str,
        why: AgentRefusal,
        error: &dyn std::fmt::Display,
    ) {
        self.metrics.refused(why);
        tracing::warn!(node, reason = why.label(), error = %error, "agent api: {what} refused");
    }

    /// Join-token attestation: consumes `token` and signs an agent SVID for the CSR's key (the
    /// CSR's own names are ignored: the ID comes from the token's node).
    ///
    /// # Errors
    /// [`AgentApiError`]: disabled, unknown/used/expired token, bad CSR, CA unavailable.
    pub fn attest_join_token(
        &self,
        token: &str,
        csr_der: &[u8],
    ) -> Result<AgentSvid, AgentApiError> {
        if !self.attestation.join_token {
            return self.refused("?", "join token attestation", AgentApiError::MethodDisabled);
        }
        let now = self.nodes.clock.now();
        // The CSR is checked first, so a bad CSR does not burn the token.
        let key = match csr::verify(csr_der) {
            Ok(checked) => checked.public_key,
            Err(e) => return self.refused("?", "join token attestation", e.into()),
        };
        let node = match self.nodes.tokens.consume(token, now) {
            Ok(node) => node,
            Err(e) => return self.refused("?", "join token attestation", e.into()),
        };
        let spiffe_id = agent_id(&self.trust_domain, &node)?;
        let snap = self.ca.borrow().clone();
        let leaf = match snap.sign_x509_svid_for_key(&spiffe_id, &key, now) {
            Ok(leaf) => leaf,
            Err(e) => return self.refused(&node, "agent svid", e.into()),
        };
        self.metrics.attested();
        tracing::info!(%node, spiffe_id = %spiffe_id, method = "join_token", "agent attested");
        Ok(AgentSvid {
            node,
            spiffe_id,
            leaf,
        })
    }

    /// x509pop attestation, once the node proved possession of its certificate's key: signs an
    /// agent SVID for `node` and the key of `csr_der`.
    ///
    /// # Errors
    /// [`AgentApiError`]: bad node name or CSR, CA unavailable.
    pub fn attest_x509pop(&self, node: &str, csr_der: &[u8]) -> Result<AgentSvid, AgentApiError> {
        let svid = self.renew_agent(node, csr_der)?;
        self.metrics.attested();
        tracing::info!(%node, spiffe_id = %svid.spiffe_id, method = "x509pop", "agent attested");
        Ok(svid)
    }

    /// A new agent SVID for `node` (already authorized by its current SVID) for the key of
    /// `csr_der`.
    ///
    /// # Errors
    /// [`AgentApiError`]: bad CSR, CA unavailable.
    pub fn renew_agent(&self, node: &str, csr_der: &[u8]) -> Result<AgentSvid, AgentApiError> {
        let key = match csr::verify(csr_der) {
            Ok(checked) => checked.public_key,
            Err(e) => return self.refused(node, "agent svid renewal", e.into()),
        };
        let spiffe_id = agent_id(&self.trust_domain, node)?;
        let snap = self.ca.borrow().clone();
        match snap.sign_x509_svid_for_key(&spiffe_id, &key, self.nodes.clock.now()) {
            Ok(leaf) => Ok(AgentSvid {
                node: node.to_owned(),
                spiffe_id,
                leaf,
            }),
            Err(e) => self.refused(node, "agent svid renewal", e.into()),
        }
    }

    /// Signs a workload SVID for the agent of `node`: only for an ID one of its entries names.
    ///
    /// # Errors
    /// [`AgentApiError`]: bad CSR, not entitled, CA unavailable.
    pub fn sign_workload(&self, node: &str, csr_der: &[u8]) -> Result<SignedLeaf, AgentApiError> {
        let entries = self.entries.borrow().clone();
        let (id, key) = match csr::check_workload_csr(csr_der, node, &entries) {
            Ok(ok) => ok,
            Err(e) => return self.refused(node, "workload csr", e.into()),
        };
        let snap = self.ca.borrow().clone();
        match snap.sign_x509_svid_for_key(&id, &key, self.nodes.clock.now()) {
            Ok(leaf) => Ok(leaf),
            Err(e) => self.refused(node, "workload csr", e.into()),
        }
    }

    /// A JWT-SVID for `id` (which one of `node`'s entries must name) and `audience`.
    ///
    /// # Errors
    /// [`AgentApiError`]: no audience, a bad ID, not entitled, CA unavailable.
    pub fn mint_jwt(
        &self,
        node: &str,
        id: &str,
        audience: &[String],
    ) -> Result<String, AgentApiError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(AgentApiError::Jwt("an audience is required".to_owned()));
        }
        let id = SpiffeId::new(id).map_err(|e| AgentApiError::Jwt(format!("{id:?}: {e}")))?;
        let entitled = self
            .entries
            .borrow()
            .iter()
            .any(|e| e.on_node(node) && e.spiffe_id == id);
        if !entitled {
            let e = NodeError::NotEntitled {
                id: id.to_string(),
                node: node.to_owned(),
            };
            return self.refused(node, "jwt svid", e.into());
        }
        let snap = self.ca.borrow().clone();
        snap.mint_jwt_svid(&id, audience, self.nodes.clock.now())
            .map_err(|e| AgentApiError::Jwt(e.to_string()))
    }

    /// What `node` is sent.
    pub fn node_view(&self, node: &str) -> NodeView {
        let entries: Vec<EntryConfig> = self
            .entries
            .borrow()
            .iter()
            .filter(|e| e.on_node(node))
            .cloned()
            .collect();
        let peers = self
            .peers
            .borrow()
            .iter()
            .filter(|(td, _)| entries.iter().any(|e| e.federates_with.includes(td)))
            .map(|(_, b)| b.clone())
            .collect();
        NodeView {
            entries,
            own: self.ca.borrow().bundle.clone(),
            peers,
        }
    }

    /// The chain an agent or workload is given: the leaf alone (the bundle holds the CA).
    pub fn chain(leaf: &SignedLeaf) -> Vec<CertificateDer<'static>> {
        vec![leaf.cert.clone()]
    }
}
