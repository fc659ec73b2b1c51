//! The attested agents, by node: how each attested, from where, when it last synced, when its
//! SVID expires, whether it is evicted, and which agent SVIDs are accepted for it.
//!
//! Only the SVIDs this server issued to the node since its last attestation are accepted (the
//! newest and the one it was renewed under, by SHA-256 of the certificate): after an eviction
//! none is, so the old SVID stays refused even once the node attests again with a new token.
//! Eviction also ends the node's open Sync streams at once (its session token is cancelled).
//!
//! Every change is written through to the [`Storage`] (when one is given) before it is applied
//! in memory, so `agent list` survives restarts and replicas sharing a store share the table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::store::{AgentRecord, Storage, StoreError};

/// One agent's record plus its live state.
#[derive(Debug)]
struct Entry {
    record: AgentRecord,
    /// Cancelled on eviction or a new attestation: ends that session's Sync streams.
    session: CancellationToken,
    /// Open Sync streams.
    streams: usize,
}

/// Why the registry refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such node.
    #[error("no attested agent for node {0:?}")]
    Unknown(String),
    /// The store refused the write.
    #[error("agent registry: {0}")]
    Store(#[from] StoreError),
}

/// The registry shared by the agent API and the admin API.
#[derive(Debug, Default)]
pub struct AgentRegistry {
    agents: Mutex<BTreeMap<String, Entry>>,
    store: Option<Arc<dyn Storage>>,
}

/// What an authorized call holds: the node's session (ends on eviction).
#[derive(Debug, Clone)]
pub struct Session {
    /// The node.
    pub node: String,
    /// Cancelled on eviction.
    pub ended: CancellationToken,
}

impl AgentRegistry {
    /// A registry persisted in `store` (if any), loaded from it.
    ///
    /// # Errors
    /// [`StoreError`] when the stored table cannot be read.
    pub fn open(store: Option<Arc<dyn Storage>>) -> Result<Self, StoreError> {
        let mut agents = BTreeMap::new();
        if let Some(store) = &store {
            for record in store.load_agents()? {
                agents.insert(
                    record.node.clone(),
                    Entry {
                        record,
                        session: CancellationToken::new(),
                        streams: 0,
                    },
                );
            }
        }
        Ok(Self {
            agents: Mutex::new(agents),
            store,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, record: &AgentRecord) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => store.save_agent(record),
            None => Ok(()),
        }
    }

    /// Records a fresh attestation of `record.node`: clears any eviction, forgets the SVIDs
    /// issued before, and ends the previous session's streams.
    ///
    /// # Errors
    /// [`RegistryError::Store`].
    pub fn attested(&self, record: AgentRecord) -> Result<(), RegistryError> {
        self.persist(&record)?;
        let mut agents = self.lock();
        if let Some(old) = agents.get(&record.node) {
            old.session.cancel();
        }
        agents.insert(
            record.node.clone(),
            Entry {
                record,
                session: CancellationToken::new(),
                streams: 0,
            },
        );
        Ok(())
    }

    /// The session of the agent presenting the SVID with SHA-256 `svid`, if that SVID is
    /// accepted for `node` (attested, not evicted, issued since the last attestation).
    pub fn session(&self, node: &str, svid: &[u8; 32]) -> Option<Session> {
        let agents = self.lock();
        let entry = agents.get(node)?;
        let r = &entry.record;
        let known = r.svid_sha256 == Some(*svid) || r.previous_svid_sha256 == Some(*svid);
        (!r.evicted && known).then(|| Session {
            node: node.to_owned(),
            ended: entry.session.clone(),
        })
    }

    /// Whether `node` is evicted (for the refusal reason).
    pub fn is_evicted(&self, node: &str) -> bool {
        self.lock().get(node).is_some_and(|e| e.record.evicted)
    }

    /// Records a renewal: `new` becomes the current SVID, the one renewed under the previous.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn renewed(
        &self,
        node: &str,
        under: [u8; 32],
        new: [u8; 32],
        expires_at: SystemTime,
    ) -> Result<(), RegistryError> {
        self.update(node, |r| {
            r.previous_svid_sha256 = Some(under);
            r.svid_sha256 = Some(new);
            r.svid_expires_at = expires_at;
        })
    }

    /// Records a Sync stream opening (`last_sync`, connected address).
    pub fn sync_opened(&self, node: &str, address: &str, now: SystemTime) {
        let mut record = None;
        {
            let mut agents = self.lock();
            if let Some(e) = agents.get_mut(node) {
                e.streams += 1;
                e.record.last_sync = Some(now);
                e.record.address = address.to_owned();
                record = Some(e.record.clone());
            }
        }
        if let Some(r) = record
            && let Err(e) = self.persist(&r)
        {
            tracing::warn!(node, error = %e, "agent registry: last sync not stored");
        }
    }

    /// Records a view sent on a Sync stream (in memory; stored with the next write).
    pub fn synced(&self, node: &str, now: SystemTime) {
        if let Some(e) = self.lock().get_mut(node) {
            e.record.last_sync = Some(now);
        }
    }

    /// Records a Sync stream closing.
    pub fn sync_closed(&self, node: &str) {
        if let Some(e) = self.lock().get_mut(node) {
            e.streams = e.streams.saturating_sub(1);
        }
    }

    /// Evicts `node`: its SVIDs are refused from now on, its Sync streams end at once.
    ///
    /// # Errors
    /// [`RegistryError::Unknown`], [`RegistryError::Store`].
    pub fn evict(&self, node: &str) -> Result<(), RegistryError> {
        self.update(node, |r| {
            r.evicted = true;
            r.svid_sha256 = None;
            r.previous_svid_sha256 = None;
        })?;
        if let Some(e) = self.lock().get(node) {
            e.session.cancel();
        }
        Ok(())
    }

    fn update(
        &self,
        node: &str,
        change: impl FnOnce(&mut AgentRecord),
    ) -> Result<(), RegistryError> {
        let mut record = self
            .lock()
            .get(node)
            .map(|e| e.record.clone())
            .ok_or_else(|| RegistryError::Unknown(node.to_owned()))?;
        change(&mut record);
        self.persist(&record)?;
        if let Some(e) = self.lock().get_mut(node) {
            e.record = record;
        }
        Ok(())
    }

    /// Every agent, by node name, with whether a Sync stream is open now.
    pub fn list(&self) -> Vec<(AgentRecord, bool)> {
        self.lock()
            .values()
            .map(|e| (e.record.clone(), e.streams > 0))
            .collect()
    }
}
