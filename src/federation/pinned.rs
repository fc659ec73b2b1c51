//! Pinned peer bundles: stored under the configured trust domain only, persisted, published.
//!
//! A fetched bundle replaces the pinned one unless its `spiffe_sequence` is lower (a rollback,
//! refused: SPIFFE.md "Decisions"). `keys: []` is pinned like any other bundle: it revokes the
//! peer's authorities. Relationships no longer configured are dropped at start (Federation
//! 1.5.13), so that workloads stop receiving their bundles. An operator can [`PeerStore::reset`]
//! a relationship (SPIFFE.md "Decisions"): the pinned bundle is forgotten, so the bootstrap bundle
//! authenticates the endpoint again and any sequence is accepted.
//!
//! Once a peer has published a `spiffe_sequence`, a bundle without one is refused too: it could be
//! an old document replayed (a possible rollback), until an operator reset.
//!
//! Each pinned bundle keeps the time it was last fetched successfully (`fetched_at`). It is kept
//! fresh in memory at every fetch, but an unchanged bundle is not rewritten at every poll: the
//! stored time is refreshed at most every [`FETCHED_AT_PERSIST_EVERY`], so a restart may show the
//! bundle up to that much older than it is (never younger), and a peer polled in a loop cannot
//! turn into a stream of disk writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::bundle::{TrustBundle, jwks};
use crate::spiffe_id::TrustDomain;
use crate::store::{PinnedBundle, Storage, StoreError};

/// How often the fetch time of an unchanged pinned bundle is written to the state at most.
pub const FETCHED_AT_PERSIST_EVERY: Duration = Duration::from_secs(15 * 60);

/// When a pinned bundle was last fetched, in memory and as stored.
#[derive(Debug, Clone, Copy)]
struct FetchTimes {
    /// The last successful fetch.
    at: SystemTime,
    /// The fetch time last written to the state.
    stored: SystemTime,
}

impl FetchTimes {
    fn stored(at: SystemTime) -> Self {
        Self { at, stored: at }
    }
}

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
    /// The pinned bundle has a sequence and the received one has none: possibly an old document
    /// replayed, refused like a rollback.
    #[error(
        "spiffe_sequence missing: the pinned bundle has sequence {pinned}; refused as a possible rollback"
    )]
    SequenceMissing {
        /// The pinned bundle's sequence.
        pinned: u64,
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
    peers: RwLock<Vec<TrustDomain>>,
    /// When each pinned bundle was last fetched; its lock also serialises the writers.
    fetched: Mutex<BTreeMap<TrustDomain, FetchTimes>>,
    tx: watch::Sender<Arc<PeerBundles>>,
    /// Who fetches which peer, among replicas sharing the store.
    leases: super::lease::FetchLeases,
}

impl PeerStore {
    /// Loads the pinned bundles of the configured `peers`, dropping (and deleting) any other.
    ///
    /// # Errors
    /// On storage failure. A stored bundle that no longer parses is dropped with a warning.
    pub fn open(storage: Arc<dyn Storage>, peers: Vec<TrustDomain>) -> Result<Self, StoreError> {
        let mut bundles = PeerBundles::new();
        let mut fetched = BTreeMap::new();
        for pinned in storage.load_pinned()? {
            if !peers.contains(&pinned.trust_domain) {
                tracing::info!(trust_domain = %pinned.trust_domain, "federation relationship removed: dropping its pinned bundle");
                storage.delete_pinned(&pinned.trust_domain)?;
                continue;
            }
            match jwks::parse(&pinned.trust_domain, &pinned.bundle_json) {
                Ok(parsed) => {
                    fetched.insert(
                        pinned.trust_domain.clone(),
                        FetchTimes::stored(pinned.fetched_at),
                    );
                    bundles.insert(pinned.trust_domain.clone(), Arc::new(parsed.bundle));
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %pinned.trust_domain, error = %e, "stored peer bundle unreadable; dropped")
                }
            }
        }
        let (tx, _) = watch::channel(Arc::new(bundles));
        let leases = super::lease::FetchLeases::new(storage.replica_id().map(str::to_owned));
        Ok(Self {
            leases,
            storage,
            peers: RwLock::new(peers),
            fetched: Mutex::new(fetched),
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

    /// When `td`'s pinned bundle was last fetched successfully (read back from the state after
    /// a restart). `None` when nothing is pinned.
    pub fn fetched_at(&self, td: &TrustDomain) -> Option<SystemTime> {
        self.lock().get(td).map(|t| t.at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TrustDomain, FetchTimes>> {
        self.fetched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peers' fetch leases.
    pub fn leases(&self) -> &super::lease::FetchLeases {
        &self.leases
    }

    /// The store behind.
    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Reads the pinned bundles again from the store (another replica pinned or forgot one)
    /// and publishes those that changed. Returns whether any did.
    ///
    /// # Errors
    /// On storage failure; what is pinned in memory then stays.
    pub fn reload(&self) -> Result<bool, StoreError> {
        let mut fetched = self.lock();
        let peers = self.peers();
        let stored = self.storage.load_pinned()?;
        let mut next = (*self.current()).clone();
        let mut changed = false;
        for pinned in stored {
            if !peers.contains(&pinned.trust_domain) {
                continue;
            }
            let Ok(parsed) = jwks::parse(&pinned.trust_domain, &pinned.bundle_json) else {
                continue;
            };
            let same = next.get(&pinned.trust_domain).is_some_and(|b| {
                b.same_authorities(&parsed.bundle)
                    && b.sequence == parsed.bundle.sequence
                    && b.refresh_hint == parsed.bundle.refresh_hint
            });
            let times = fetched
                .entry(pinned.trust_domain.clone())
                .or_insert(FetchTimes::stored(pinned.fetched_at));
            times.at = times.at.max(pinned.fetched_at);
            times.stored = times.stored.max(pinned.fetched_at);
            if !same {
                next.insert(pinned.trust_domain.clone(), Arc::new(parsed.bundle));
                changed = true;
            }
        }
        if changed {
            self.tx.send_replace(Arc::new(next));
        }
        Ok(changed)
    }

    /// The configured peers.
    pub fn peers(&self) -> Vec<TrustDomain> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The store's kind and reachability (for status and `/readyz`).
    pub fn store_health(&self) -> (&'static str, crate::store::StoreHealth) {
        (self.storage.kind(), self.storage.health())
    }

    /// The store's call counters (a shared store only).
    pub fn store_metrics(&self) -> Option<Arc<crate::metrics::store::StoreMetrics>> {
        self.storage.metrics()
    }

    /// Replaces the configured peers (a config reload): a relationship no longer configured
    /// loses its pinned bundle, in the state and for subscribers (the Workload API streams stop
    /// sending it), as at start; a new one has nothing pinned until its first fetch.
    ///
    /// # Errors
    /// On storage failure; the peers are then left as they were.
    pub fn set_peers(&self, peers: Vec<TrustDomain>) -> Result<(), StoreError> {
        let mut fetched = self.lock();
        let removed: Vec<TrustDomain> = self
            .peers()
            .into_iter()
            .filter(|td| !peers.contains(td))
            .collect();
        for td in &removed {
            self.storage.delete_pinned(td)?;
            fetched.remove(td);
        }
        if removed.iter().any(|td| self.get(td).is_some()) {
            self.tx.send_modify(|map| {
                let map = Arc::make_mut(map);
                for td in &removed {
                    tracing::info!(trust_domain = %td, "federation relationship removed: dropping its pinned bundle");
                    map.remove(td);
                }
            });
        }
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
        Ok(())
    }

    /// Pins `bundle` (already parsed under the configured trust domain) fetched at `now`.
    ///
    /// # Errors
    /// [`PinError`]; the previously pinned bundle then stays in force.
    pub fn pin(&self, bundle: TrustBundle, now: SystemTime) -> Result<PinOutcome, PinError> {
        let td = bundle.trust_domain.clone();
        if !self.peers().contains(&td) {
            return Err(PinError::UnknownPeer(td));
        }
        let mut fetched = self.lock();
        let current = self.get(&td);
        if let Some(pinned) = &current {
            match (pinned.sequence, bundle.sequence) {
                (Some(p), Some(r)) if r < p => {
                    return Err(PinError::SequenceRollback {
                        pinned: p,
                        received: r,
                    });
                }
                (Some(p), None) => return Err(PinError::SequenceMissing { pinned: p }),
                _ => {}
            }
            if pinned.same_authorities(&bundle)
                && pinned.sequence == bundle.sequence
                && pinned.refresh_hint == bundle.refresh_hint
            {
                // Only the fetch time is new: kept in memory, written to the state only when the
                // stored one is FETCHED_AT_PERSIST_EVERY old (so it survives a restart, roughly),
                // nothing published.
                let times = fetched.get(&td).copied().unwrap_or(FetchTimes::stored(now));
                let stale = now
                    .duration_since(times.stored)
                    .is_ok_and(|age| age >= FETCHED_AT_PERSIST_EVERY);
                let stored = if stale {
                    self.save(pinned, now)?;
                    now
                } else {
                    times.stored
                };
                fetched.insert(td, FetchTimes { at: now, stored });
                return Ok(PinOutcome::Unchanged);
            }
        }
        self.save(&bundle, now)?;
        fetched.insert(td.clone(), FetchTimes::stored(now));
        self.tx.send_modify(|map| {
            Arc::make_mut(map).insert(td, Arc::new(bundle));
        });
        Ok(PinOutcome::Updated)
    }

    /// Replaces a peer's pinned bundle with `bundle` fetched at `now`, whatever its sequence
    /// (operator reset: the fetch was authenticated by the bootstrap bundle). Stored, then
    /// published in one change: subscribers never see the peer without a bundle.
    ///
    /// # Errors
    /// [`PinError`]; the previously pinned bundle then stays in force.
    pub fn replace(&self, bundle: TrustBundle, now: SystemTime) -> Result<PinOutcome, PinError> {
        let td = bundle.trust_domain.clone();
        if !self.peers().contains(&td) {
            return Err(PinError::UnknownPeer(td));
        }
        let mut fetched = self.lock();
        let unchanged = self.get(&td).is_some_and(|p| {
            p.same_authorities(&bundle)
                && p.sequence == bundle.sequence
                && p.refresh_hint == bundle.refresh_hint
        });
        // The store refuses a lower sequence than the one it holds (its rollback guard): an
        // operator's replace deletes the stored pin first (memory and subscribers keep the old
        // bundle until the new one is published below, so no update drops the peer).
        self.storage.delete_pinned(&td)?;
        self.save(&bundle, now)?;
        fetched.insert(td.clone(), FetchTimes::stored(now));
        if unchanged {
            return Ok(PinOutcome::Unchanged);
        }
        self.tx.send_modify(|map| {
            Arc::make_mut(map).insert(td, Arc::new(bundle));
        });
        Ok(PinOutcome::Updated)
    }

    fn save(&self, bundle: &TrustBundle, fetched_at: SystemTime) -> Result<(), PinError> {
        self.storage
            .save_pinned(&PinnedBundle {
                trust_domain: bundle.trust_domain.clone(),
                bundle_json: jwks::to_json(bundle)?,
                sequence: bundle.sequence,
                fetched_at,
            })
            .map_err(|e| match e {
                // The store's own guard (another writer pinned a newer one first).
                StoreError::SequenceRollback { pinned, received } => {
                    PinError::SequenceRollback { pinned, received }
                }
                e => PinError::Store(e),
            })?;
        Ok(())
    }

    /// Forgets a peer's pinned bundle (operator reset): the bootstrap bundle applies again and
    /// the next fetched bundle is pinned whatever its sequence. Subscribers (the Workload API
    /// streams) see the peer's bundle disappear until a fetch pins one. Returns the forgotten
    /// bundle.
    ///
    /// # Errors
    /// On storage failure; the pinned bundle then stays.
    pub fn reset(&self, td: &TrustDomain) -> Result<Option<Arc<TrustBundle>>, StoreError> {
        let mut fetched = self.lock();
        let previous = self.get(td);
        self.storage.delete_pinned(td)?;
        fetched.remove(td);
        if previous.is_some() {
            self.tx.send_modify(|map| {
                Arc::make_mut(map).remove(td);
            });
        }
        Ok(previous)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::sqlite::SqliteStorage;

    fn td() -> TrustDomain {
        TrustDomain::new("mesh-b.test").expect("valid trust domain")
    }

    /// A revoked (`keys: []`) bundle with `sequence`: enough to exercise pinning.
    fn bundle(sequence: u64) -> TrustBundle {
        let mut b = TrustBundle::empty(td());
        b.sequence = Some(sequence);
        b
    }

    fn open(dir: &std::path::Path) -> PeerStore {
        let storage = Arc::new(SqliteStorage::open(dir).expect("state"));
        PeerStore::open(storage, vec![td()]).expect("peer store")
    }

    #[test]
    fn a_reset_forgets_the_bundle_durably_publishes_it_and_then_accepts_a_lower_sequence() {
        // SPIFFE.md "Decisions": a rollback is refused until the operator resets the relationship.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(store.pin(bundle(7), t).ok(), Some(PinOutcome::Updated));
        assert!(matches!(
            store.pin(bundle(1), t),
            Err(PinError::SequenceRollback {
                pinned: 7,
                received: 1
            })
        ));
        let mut rx = store.subscribe();
        rx.mark_unchanged();
        let forgotten = store.reset(&td()).expect("reset");
        assert_eq!(forgotten.and_then(|b| b.sequence), Some(7));
        assert!(
            rx.has_changed().expect("sender alive"),
            "subscribers are told"
        );
        assert!(!rx.borrow_and_update().contains_key(&td()));
        assert_eq!(store.fetched_at(&td()), None);
        assert!(
            open(dir.path()).get(&td()).is_none(),
            "the reset is persisted"
        );
        assert_eq!(store.pin(bundle(1), t).ok(), Some(PinOutcome::Updated));
        assert_eq!(
            store.reset(&td()).ok().flatten().and_then(|b| b.sequence),
            Some(1)
        );
        assert!(store.reset(&td()).expect("reset twice").is_none());
    }

    #[test]
    fn the_fetch_time_moves_with_every_fetch_but_an_unchanged_bundle_is_rarely_written() {
        // Issue 9 item 4: no write at every poll of an unchanged bundle.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        let t1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t2 = t1 + Duration::from_secs(300);
        assert_eq!(store.fetched_at(&td()), None);
        store.pin(bundle(3), t1).expect("pinned");
        assert_eq!(store.fetched_at(&td()), Some(t1));
        assert_eq!(open(dir.path()).fetched_at(&td()), Some(t1));
        let mut rx = store.subscribe();
        rx.mark_unchanged();
        assert_eq!(store.pin(bundle(3), t2).ok(), Some(PinOutcome::Unchanged));
        assert!(
            !rx.has_changed().expect("sender alive"),
            "nothing published"
        );
        assert_eq!(store.fetched_at(&td()), Some(t2), "fresh in memory");
        assert_eq!(
            open(dir.path()).fetched_at(&td()),
            Some(t1),
            "not rewritten for an unchanged bundle"
        );
        let t3 = t1 + FETCHED_AT_PERSIST_EVERY;
        assert_eq!(store.pin(bundle(3), t3).ok(), Some(PinOutcome::Unchanged));
        assert_eq!(
            open(dir.path()).fetched_at(&td()),
            Some(t3),
            "written once the stored time is old"
        );
        let t4 = t3 + Duration::from_secs(1);
        assert_eq!(store.pin(bundle(4), t4).ok(), Some(PinOutcome::Updated));
        assert_eq!(open(dir.path()).fetched_at(&td()), Some(t4));
    }

    #[test]
    fn a_bundle_without_a_sequence_after_a_sequenced_one_is_refused_until_a_reset() {
        // Issue 9 item 8: a sequence-less document could be an old one replayed.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let unsequenced = TrustBundle::empty(td());
        assert_eq!(
            store.pin(unsequenced.clone(), t).ok(),
            Some(PinOutcome::Updated),
            "a peer that never published a sequence is followed"
        );
        assert_eq!(store.pin(bundle(2), t).ok(), Some(PinOutcome::Updated));
        assert!(matches!(
            store.pin(unsequenced.clone(), t),
            Err(PinError::SequenceMissing { pinned: 2 })
        ));
        assert_eq!(store.get(&td()).and_then(|b| b.sequence), Some(2));
        store.reset(&td()).expect("reset");
        assert_eq!(store.pin(unsequenced, t).ok(), Some(PinOutcome::Updated));
    }
}
