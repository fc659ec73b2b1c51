//! Pinned peer bundles: stored under the configured trust domain only, persisted, published.
//!
//! A fetched bundle replaces the pinned one unless its `spiffe_sequence` is lower (a rollback,
//! refused: SPIFFE.md "Decisions"). `keys: []` is pinned like any other bundle: it revokes the
//! peer's authorities. Relationships no longer configured are dropped at start (Federation
//! 1.5.13), so that workloads stop receiving their bundles.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::bundle::{TrustBundle, jwks};
use crate::spiffe_id::TrustDomain;
use crate::store::{PinnedBundle, Storage, StoreError};

/// Every pinned peer bundle, by trust domain. Never holds our own trust domain.
pub type PeerBundles = BTreeMap<TrustDomain, Arc<TrustBundle>>;

/// Why a bundle was not pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The sequence went backwards.
    #[error("spiffe_sequence went backwards: pinned {pinned}, received {received}")]
    SequenceRollback {
        /// The pinned bundle's sequence.
        pinned: u64,
        /// The received bundle's sequence.
        received: u64,
    },
    /// Not a configured peer.
    #[error("{0} is not a configured federation peer")]
    UnknownPeer(TrustDomain),
    /// Our canonical form could not be written.
    #[error("bundle: {0}")]
    Bundle(#[from] jwks::JwksError),
    /// Persisting failed; the previous bundle stays pinned.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What pinning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// The content or sequence changed: stored and published.
    Updated,
    /// Same authorities and sequence as pinned: nothing written.
    Unchanged,
}

/// The sole writer of peer bundles.
#[derive(Debug)]
pub struct PeerStore {
    storage: Arc<dyn Storage>,
    peers: Vec<TrustDomain>,
    write: Mutex<()>,
    tx: watch::Sender<Arc<PeerBundles>>,
}

impl PeerStore {
    /// Loads the pinned bundles of the configured `peers`, dropping (and deleting) any other.
    ///
    /// # Errors
    /// On storage failure. A stored bundle that no longer parses is dropped with a warning.
    pub fn open(storage: Arc<dyn Storage>, peers: Vec<TrustDomain>) -> Result<Self, StoreError> {
        let mut bundles = PeerBundles::new();
        for pinned in storage.load_pinned()? {
            if !peers.contains(&pinned.trust_domain) {
                tracing::info!(trust_domain = %pinned.trust_domain, "federation relationship removed: dropping its pinned bundle");
                storage.delete_pinned(&pinned.trust_domain)?;
                continue;
            }
            match jwks::parse(&pinned.trust_domain, &pinned.bundle_json) {
                Ok(parsed) => {
                    bundles.insert(pinned.trust_domain.clone(), Arc::new(parsed.bundle));
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %pinned.trust_domain, error = %e, "stored peer bundle unreadable; dropped")
                }
            }
        }
        let (tx, _) = watch::channel(Arc::new(bundles));
        Ok(Self {
            storage,
            peers,
            write: Mutex::new(()),
            tx,
        })
    }

    /// The pinned bundles now.
    pub fn current(&self) -> Arc<PeerBundles> {
        self.tx.borrow().clone()
    }

    /// The pinned bundle of one peer.
    pub fn get(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.tx.borrow().get(td).cloned()
    }

    /// A receiver of every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PeerBundles>> {
        self.tx.subscribe()
    }

    /// The configured peers.
    pub fn peers(&self) -> &[TrustDomain] {
        &self.peers
    }

    /// Pins `bundle` (already parsed under the configured trust domain) fetched at `now`.
    ///
    /// # Errors
    /// [`PinError`]; the previously pinned bundle then stays in force.
    pub fn pin(&self, bundle: TrustBundle, now: SystemTime) -> Result<PinOutcome, PinError> {
        let td = bundle.trust_domain.clone();
        if !self.peers.contains(&td) {
            return Err(PinError::UnknownPeer(td));
        }
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.get(&td);
        if let Some(pinned) = &current {
            if let (Some(p), Some(r)) = (pinned.sequence, bundle.sequence)
                && r < p
            {
                return Err(PinError::SequenceRollback {
                    pinned: p,
                    received: r,
                });
            }
            if pinned.same_authorities(&bundle)
                && pinned.sequence == bundle.sequence
                && pinned.refresh_hint == bundle.refresh_hint
            {
                return Ok(PinOutcome::Unchanged);
            }
        }
        self.storage.save_pinned(&PinnedBundle {
            trust_domain: td.clone(),
            bundle_json: jwks::to_json(&bundle)?,
            sequence: bundle.sequence,
            fetched_at: now,
        })?;
        self.tx.send_modify(|map| {
            Arc::make_mut(map).insert(td, Arc::new(bundle));
        });
        Ok(PinOutcome::Updated)
    }

    /// Forgets a peer's pinned bundle (operator reset): the bootstrap bundle applies again.
    ///
    /// # Errors
    /// On storage failure.
    pub fn reset(&self, td: &TrustDomain) -> Result<(), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.storage.delete_pinned(td)?;
        self.tx.send_modify(|map| {
            Arc::make_mut(map).remove(td);
        });
        Ok(())
    }
}
