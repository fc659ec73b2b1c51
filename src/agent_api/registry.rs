//! The attested agents, by node: how each attested, from where, when it last synced, when its
//! SVID expires, whether it is evicted, and which agent SVIDs are accepted for it.
//!
//! Only the SVIDs this server issued to the node since its last attestation are accepted (the
//! newest and the one it was renewed under, by SHA-256 of the certificate): after an eviction
//! none is, so the old SVID stays refused even once the node attests again with a new token.
//! Eviction also ends the node's open Sync streams at once (its session token is cancelled).
//!
//! Every change is written through to the [`Storage`] (when one is given) before it is applied
//! in memory, so `agent list` survives restarts and replicas sharing a store share the table;
//! with a shared store each replica re-reads it every [`FOLLOW_INTERVAL`]
//! ([`AgentRegistry::follow`]), so an eviction on one replica ends the node's streams on the
//! others within that.

/// How often a replica re-reads a shared store's agent table.
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

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

    /// Applies what other replicas sharing the store wrote since: new agents, renewals,
    /// attestations and evictions. An eviction or a new attestation elsewhere ends this
    /// replica's streams of that node at once, as a local one does. Returns how many records
    /// changed.
    ///
    /// # Errors
    /// [`StoreError`] when the table cannot be read (nothing is changed then).
    pub fn refresh(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let stored = store.load_agents()?;
        let mut agents = self.lock();
        let mut changed = 0;
        for record in stored {
            match agents.get_mut(&record.node) {
                Some(e) if e.record == record => {}
                Some(e) => {
                    changed += 1;
                    let ended = (record.evicted && !e.record.evicted)
                        || record.attested_at != e.record.attested_at;
                    if ended {
                        e.session.cancel();
                        e.session = CancellationToken::new();
                    }
                    // The in-memory last sync may be newer than the stored one.
                    let last_sync = e.record.last_sync.max(record.last_sync);
                    e.record = AgentRecord {
                        last_sync,
                        ..record
                    };
                }
                None => {
                    changed += 1;
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
        }
        Ok(changed)
    }

    /// Whether other processes may write the same store (PostgreSQL): then [`Self::follow`].
    pub fn shared(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.kind() != "sqlite")
    }

    /// Applies [`Self::refresh`] every `every` until `cancel` (replicas sharing a store).
    pub async fn follow(self: Arc<Self>, every: std::time::Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let registry = self.clone();
            match tokio::task::spawn_blocking(move || registry.refresh()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(
                    changed = n,
                    "agent registry: changes from other replicas applied"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "agent registry: cannot read the shared store; retrying")
                }
                Err(e) => tracing::error!(error = %e, "agent registry refresh panicked"),
            }
        }
    }

    /// Every agent, by node name, with whether a Sync stream is open now.
    pub fn list(&self) -> Vec<(AgentRecord, bool)> {
        self.lock()
            .values()
            .map(|e| (e.record.clone(), e.streams > 0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(node: &str, at: u64) -> AgentRecord {
        AgentRecord {
            node: node.to_owned(),
            spiffe_id: format!("spiffe://td/meshtrust/agent/{node}"),
            method: "join_token".to_owned(),
            address: "127.0.0.1:1".to_owned(),
            attested_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            last_sync: None,
            svid_expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at + 3600),
            evicted: false,
            svid_sha256: Some([at as u8; 32]),
            previous_svid_sha256: None,
        }
    }

    #[test]
    fn an_eviction_on_another_replica_ends_this_ones_session() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> =
            Arc::new(crate::store::sqlite::SqliteStorage::open(dir.path()).unwrap());
        let a = AgentRegistry::open(Some(store.clone())).unwrap();
        let b = AgentRegistry::open(Some(store)).unwrap();
        a.attested(record("web-1", 1)).unwrap();
        assert!(b.session("web-1", &[1; 32]).is_none(), "not seen yet");
        assert_eq!(b.refresh().unwrap(), 1);
        let on_b = b.session("web-1", &[1; 32]).unwrap();
        assert_eq!(b.refresh().unwrap(), 0, "nothing new");

        a.evict("web-1").unwrap();
        b.refresh().unwrap();
        assert!(on_b.ended.is_cancelled(), "b's streams end");
        assert!(b.is_evicted("web-1"));
        assert!(b.session("web-1", &[1; 32]).is_none());

        // A new attestation on a: b accepts the new SVID only.
        a.attested(record("web-1", 2)).unwrap();
        b.refresh().unwrap();
        assert!(b.session("web-1", &[2; 32]).is_some());
        assert!(b.session("web-1", &[1; 32]).is_none());
    }
}
