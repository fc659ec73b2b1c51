//! The state's persistence: read back from the cache at start, written after every change,
//! and the join token already used (by hash, never the token).

use std::time::{Duration, UNIX_EPOCH};

use prost::Message as _;

use super::super::cache::{self, Cache, StoredSvid};
use super::super::config::NodeProof;
use super::super::{AgentError, svids, view};
use super::{AgentState, Held, unix};
use crate::agent_api::proto;
use crate::spiffe_id::SpiffeId;
use crate::svid::{PrivateKey, X509Svid};

impl AgentState {
    pub(super) fn restore(&self, c: Cache) -> Result<(), AgentError> {
        let mut inner = self.lock();
        inner.node.clone_from(&c.node);
        let node = c.node.clone().unwrap_or_default();
        if let Some(agent) = &c.agent {
            inner.agent = Some(Held::restored(stored_svid(agent)?));
        }
        if let Some(v) = &c.view {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| AgentError::Cache(e.to_string()))?;
            let raw = proto::NodeView::decode(bytes.as_slice())
                .map_err(|e| AgentError::Cache(e.to_string()))?;
            inner.view = Some(view::parse(raw, &self.td, &node)?);
        }
        for s in &c.svids {
            let svid = stored_svid(s)?;
            inner
                .svids
                .insert(svid.spiffe_id.clone(), Held::restored(svid));
        }
        inner.server_id = c.server_id;
        inner.used_token = c.used_token_sha256;
        inner.last_sync = c
            .last_sync
            .map(|s| UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        tracing::info!(
            node = %node,
            identities = inner.svids.len(),
            "agent cache loaded from {}",
            self.cache_path.display()
        );
        Ok(())
    }

    /// The hash of the join token in `proof`'s file when it is the one already used.
    pub fn token_already_used(&self, proof: &NodeProof) -> Option<String> {
        let hash = token_hash(proof)?;
        (self.lock().used_token.as_ref() == Some(&hash)).then_some(hash)
    }

    /// Remembers the join token of `proof` as used, persisted.
    pub fn mark_token_used(&self, proof: &NodeProof) {
        if let Some(hash) = token_hash(proof) {
            self.lock().used_token = Some(hash);
            if let Err(e) = self.save() {
                tracing::warn!(error = %e, "cannot persist the used token's hash");
            }
        }
    }

    pub(super) fn save(&self) -> Result<(), AgentError> {
        use base64::Engine as _;
        let c = {
            let inner = self.lock();
            Cache {
                node: inner.node.clone(),
                agent: inner.agent.as_ref().map(|a| stored(&a.svid)),
                view: inner.view.as_ref().map(|v| {
                    base64::engine::general_purpose::STANDARD.encode(v.raw.encode_to_vec())
                }),
                server_id: inner.server_id.clone(),
                last_sync: inner.last_sync.map(unix),
                svids: inner.svids.values().map(|h| stored(&h.svid)).collect(),
                used_token_sha256: inner.used_token.clone(),
            }
        };
        cache::save(&self.cache_path, &c)
    }
}

fn token_hash(proof: &NodeProof) -> Option<String> {
    let NodeProof::JoinToken(file) = proof else {
        return None;
    };
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(file).ok()?);
    let digest = ring::digest::digest(&ring::digest::SHA256, text.trim().as_bytes());
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn stored(svid: &X509Svid) -> StoredSvid {
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    StoredSvid::new(
        svid.spiffe_id.as_str(),
        &chain,
        svid.private_key.pkcs8_der(),
    )
}

fn stored_svid(s: &StoredSvid) -> Result<X509Svid, AgentError> {
    let id = SpiffeId::new(&s.spiffe_id).map_err(|e| AgentError::Cache(e.to_string()))?;
    let key = PrivateKey::from_pkcs8_der(s.key_der()?.to_vec());
    svids::svid_from_chain(&id, s.chain_der()?, key)
}
