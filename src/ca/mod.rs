//! The mini CA: authorities on durable state, X509-SVID issuance, rotation with overlap.
//!
//! [`Ca`] owns the authorities and is the only writer of the CA state. Every change is persisted
//! first (one transaction) and then published as an [`Arc<CaSnapshot>`] on a `watch` channel that
//! the bundle endpoint, the Workload API and the metrics read. The bundle's `spiffe_sequence`
//! rises when, and only when, the published content changes (authorities or refresh hint).

mod authority;
mod issue;
pub mod issuer;
pub mod key;
mod replica;
mod rotation;
mod snapshot;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use authority::Authority;
pub use issue::{BACKDATE, SignedLeaf};
pub use key::KeyType;
pub use rotation::RETIRE_GRACE;
use snapshot::Holds;
pub use snapshot::{AuthoritySlot, CaPolicy, CaSnapshot, EndpointSigner};

use crate::bundle::{JwtAuthority, TrustBundle, jwks};
use crate::clock::Clock;
use crate::metrics::IssuanceMetrics;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::{AuthorityState, CaRecord, Storage, StoreError};
use rotation::{SlotView, Step};

/// A CA failure.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused to build or sign a certificate.
    #[error("certificate: {0}")]
    Rcgen(#[source] rcgen::Error),
    /// Key generation failed.
    #[error("key generation: {0}")]
    KeyGeneration(String),
    /// A signature failed.
    #[error("signing: {0}")]
    Signing(String),
    /// Stored CA material cannot be used.
    #[error("stored CA state is unusable: {0}")]
    Corrupt(String),
    /// SVIDs need a workload ID (X509-SVID §3.1).
    #[error("{0} has no path; an X509-SVID needs a workload ID")]
    NotAWorkloadId(SpiffeId),
    /// The issuing CA has expired.
    #[error("the signing CA has expired")]
    Expired,
    /// The bundle could not be serialized.
    #[error("bundle: {0}")]
    Bundle(#[from] jwks::JwksError),
    /// Persisting failed; nothing was published.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct Inner {
    slots: Vec<AuthoritySlot>,
    sequence: u64,
    digest: Vec<u8>,
}

/// The CA: sole writer of the authorities and the own bundle.
#[derive(Debug)]
pub struct Ca {
    trust_domain: TrustDomain,
    policy: CaPolicy,
    clock: Arc<dyn Clock>,
    storage: Arc<dyn Storage>,
    inner: Mutex<Inner>,
    /// Retired authorities the bundle endpoint still signs with, shared with every snapshot.
    holds: Arc<Holds>,
    tx: watch::Sender<Arc<CaSnapshot>>,
    issuance: Arc<IssuanceMetrics>,
}

impl Ca {
    /// Loads the CA from `storage`, creating the first authority if there is none, and brings
    /// it up to date (rotation steps due while the daemon was down, a changed refresh hint).
    ///
    /// # Errors
    /// [`CaError`] if the state cannot be read, generated or persisted.
    pub fn open(
        trust_domain: TrustDomain,
        policy: CaPolicy,
        clock: Arc<dyn Clock>,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, CaError> {
        let stored = storage.load_ca()?;
        let record = match stored {
            Some(r) => r,
            // A replica of a shared store starts with its own authorities, none at first; its
            // first tick generates and publishes one.
            None if storage.replica_id().is_some() => CaRecord {
                authorities: Vec::new(),
                bundle_sequence: 0,
                bundle_digest: Vec::new(),
                bundle_json: Vec::new(),
            },
            None => {
                let now = clock.now();
                let first =
                    Authority::generate(&trust_domain, policy.key_type, 1, now, policy.ca_ttl)?;
                let slots = vec![AuthoritySlot {
                    state: AuthorityState::Active,
                    prune_after: None,
                    authority: Arc::new(first),
                }];
                let (bundle, digest) = bundle_content(&trust_domain, &slots, &policy)?;
                let json = jwks::to_json(&with_sequence(&bundle, 1))?;
                // Another process may have initialised the state meanwhile: its state wins.
                storage.init_ca(&to_record(&slots, 1, digest, json))?
            }
        };
        let slots = record
            .authorities
            .iter()
            .map(|s| {
                Ok(AuthoritySlot {
                    state: s.state,
                    prune_after: s.prune_after,
                    authority: Arc::new(Authority::from_stored(s)?),
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let inner = Inner {
            slots,
            sequence: record.bundle_sequence,
            digest: record.bundle_digest,
        };
        let issuance = Arc::new(IssuanceMetrics::default());
        let holds = Arc::new(Holds::default());
        let snapshot = build_snapshot(&trust_domain, &policy, &inner, &holds, None, &issuance)?;
        let (tx, _) = watch::channel(Arc::new(snapshot));
        let ca = Self {
            trust_domain,
            policy,
            clock,
            storage,
            inner: Mutex::new(inner),
            holds,
            tx,
            issuance,
        };
        ca.tick_inner(true)?;
        Ok(ca)
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<CaSnapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver of every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CaSnapshot>> {
        self.tx.subscribe()
    }

    /// The policy in force.
    pub fn policy(&self) -> &CaPolicy {
        &self.policy
    }

    /// What this CA signed (every snapshot carries the same counters).
    pub fn issuance_metrics(&self) -> &Arc<IssuanceMetrics> {
        &self.issuance
    }

    /// Applies every rotation step due now. Returns whether anything changed.
    ///
    /// # Errors
    /// [`CaError`] if generation or persistence fails; the previous state then stays in force.
    pub fn tick(&self) -> Result<bool, CaError> {
        self.tick_inner(false)
    }

    fn tick_inner(&self, recheck_content: bool) -> Result<bool, CaError> {
        if let Some(me) = self.storage.replica_id() {
            return self.tick_replica(me, recheck_content);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let mut slots = inner.slots.clone();
        let mut changed = self.fold_holds(&mut slots);
        changed |= self.plan(&mut slots, now)?;
        if !changed && !recheck_content {
            return Ok(false);
        }
        let (bundle, digest) = bundle_content(&self.trust_domain, &slots, &self.policy)?;
        let sequence = if digest == inner.digest {
            inner.sequence
        } else {
            inner.sequence + 1
        };
        if !changed && sequence == inner.sequence {
            return Ok(false);
        }
        let bundle = with_sequence(&bundle, sequence);
        let json = jwks::to_json(&bundle)?;
        self.storage
            .save_ca(&to_record(&slots, sequence, digest.clone(), json.clone()))?;
        if sequence != inner.sequence {
            tracing::info!(trust_domain = %self.trust_domain, sequence, "own bundle changed");
        }
        self.install(
            &mut inner,
            Inner {
                slots,
                sequence,
                digest,
            },
            (bundle, json),
        )?;
        Ok(true)
    }

    /// Makes `next` the state held and sends its snapshot, with the bundle as published.
    fn install(
        &self,
        inner: &mut Inner,
        next: Inner,
        published: (TrustBundle, Vec<u8>),
    ) -> Result<(), CaError> {
        *inner = next;
        let snapshot = build_snapshot(
            &self.trust_domain,
            &self.policy,
            inner,
            &self.holds,
            Some(published),
            &self.issuance,
        )?;
        self.tx.send_replace(Arc::new(snapshot));
        Ok(())
    }

    /// Folds the bundle endpoint's holds into `slots`; returns whether anything changed.
    fn fold_holds(&self, slots: &mut [AuthoritySlot]) -> bool {
        let mut changed = false;
        // The bundle endpoint's SVID from a retired authority keeps it published (never beyond
        // its NotAfter), folded in before any prune is planned (the run loop ticks at least
        // every 30 s, well within the SVID's grace).
        for (generation, until) in self.holds.take() {
            if let Some(s) = slots.iter_mut().find(|s| {
                s.authority.generation == generation && s.state == AuthorityState::Retired
            }) {
                let until = until.min(s.authority.not_after);
                // Still in `slots`, so still published: extending keeps it so without a gap.
                if s.prune_after.is_some_and(|p| p < until) {
                    tracing::info!(trust_domain = %self.trust_domain, generation, until = %crate::clock::rfc3339(until), "retired ca stays published while the bundle endpoint's svid it signed is valid");
                    s.prune_after = Some(until);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Applies the rotation steps due at `now` to `slots`; returns whether any was.
    fn plan(&self, slots: &mut Vec<AuthoritySlot>, now: SystemTime) -> Result<bool, CaError> {
        let mut changed = false;
        // Each step changes the state, so the loop ends; the bound is a guard.
        for _ in 0..16 {
            let views: Vec<SlotView> = slots.iter().map(AuthoritySlot::view).collect();
            let Some(step) = rotation::next_step(now, &views, self.policy.longest_svid_ttl())
            else {
                break;
            };
            tracing::info!(trust_domain = %self.trust_domain, ?step, "ca rotation step");
            self.apply(slots, step, now)?;
            changed = true;
        }
        Ok(changed)
    }

    fn apply(
        &self,
        slots: &mut Vec<AuthoritySlot>,
        step: Step,
        now: SystemTime,
    ) -> Result<(), CaError> {
        match step {
            Step::Prune(generation) => slots.retain(|s| s.authority.generation != generation),
            Step::Activate(generation) | Step::Retire { generation, .. } => {
                if let Some(s) = slots
                    .iter_mut()
                    .find(|s| s.authority.generation == generation)
                {
                    if let Step::Retire { prune_after, .. } = step {
                        s.state = AuthorityState::Retired;
                        s.prune_after = Some(prune_after);
                    } else {
                        s.state = AuthorityState::Active;
                    }
                }
            }
            Step::Generate(state) => {
                let generation = slots
                    .iter()
                    .map(|s| s.authority.generation)
                    .max()
                    .unwrap_or(0)
                    + 1;
                let authority = Authority::generate(
                    &self.trust_domain,
                    self.policy.key_type,
                    generation,
                    now,
                    self.policy.ca_ttl,
                )?;
                slots.push(AuthoritySlot {
                    state,
                    prune_after: None,
                    authority: Arc::new(authority),
                });
            }
        }
        Ok(())
    }

    /// When the rotation plan next needs attention.
    pub fn next_event(&self) -> Option<SystemTime> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let views: Vec<SlotView> = inner.slots.iter().map(AuthoritySlot::view).collect();
        rotation::next_event(&views)
    }

    /// The rotation task: ticks whenever the plan is due, until cancelled. Never sleeps longer
    /// than `max_sleep`, so a wall-clock jump is noticed.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        const MAX_SLEEP: Duration = Duration::from_secs(30);
        // Another replica's change to the shared bundle (a notification) means a tick now.
        let mut changes = self.storage.changes();
        loop {
            let floor = match self.tick() {
                Ok(_) => Duration::from_millis(20),
                Err(e) => {
                    tracing::error!(error = %e, "ca rotation failed; retrying");
                    Duration::from_secs(1)
                }
            };
            let now = self.clock.now();
            let wait = self
                .next_event()
                .and_then(|t| t.duration_since(now).ok())
                .unwrap_or(Duration::from_secs(1))
                .clamp(floor, MAX_SLEEP);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                Some(()) = async {
                    match changes.as_mut() {
                        Some(rx) => rx.changed().await.ok(),
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }
}

fn with_sequence(bundle: &TrustBundle, sequence: u64) -> TrustBundle {
    TrustBundle {
        sequence: Some(sequence),
        ..bundle.clone()
    }
}

/// The bundle without its sequence, and the digest of its document.
fn bundle_content(
    td: &TrustDomain,
    slots: &[AuthoritySlot],
    policy: &CaPolicy,
) -> Result<(TrustBundle, Vec<u8>), CaError> {
    let mut ordered: Vec<&AuthoritySlot> = slots.iter().collect();
    ordered.sort_by_key(|s| s.authority.generation);
    let bundle = TrustBundle {
        trust_domain: td.clone(),
        x509_authorities: ordered.iter().map(|s| s.authority.cert.clone()).collect(),
        jwt_authorities: ordered
            .iter()
            .map(|s| JwtAuthority {
                kid: s.authority.jwt.kid.clone(),
                key: s.authority.jwt.public_key(),
            })
            .collect(),
        sequence: None,
        refresh_hint: Some(policy.refresh_hint),
    };
    let content = jwks::to_json(&bundle)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &content)
        .as_ref()
        .to_vec();
    Ok((bundle, digest))
}

fn to_record(slots: &[AuthoritySlot], sequence: u64, digest: Vec<u8>, json: Vec<u8>) -> CaRecord {
    CaRecord {
        authorities: slots
            .iter()
            .map(|s| s.authority.to_stored(s.state, s.prune_after))
            .collect(),
        bundle_sequence: sequence,
        bundle_digest: digest,
        bundle_json: json,
    }
}

/// The snapshot of `inner`; `published` is the bundle and document when the caller has them.
fn build_snapshot(
    td: &TrustDomain,
    policy: &CaPolicy,
    inner: &Inner,
    holds: &Arc<Holds>,
    published: Option<(TrustBundle, Vec<u8>)>,
    issuance: &Arc<IssuanceMetrics>,
) -> Result<CaSnapshot, CaError> {
    let (bundle, json) = match published {
        Some(p) => p,
        None => {
            let bundle =
                with_sequence(&bundle_content(td, &inner.slots, policy)?.0, inner.sequence);
            let json = jwks::to_json(&bundle)?;
            (bundle, json)
        }
    };
    let mut slots = inner.slots.clone();
    slots.sort_by_key(|s| s.authority.generation);
    Ok(CaSnapshot {
        trust_domain: td.clone(),
        slots,
        bundle: Arc::new(bundle),
        bundle_json: Bytes::from(json),
        x509_svid_ttl: policy.x509_svid_ttl,
        jwt_svid_ttl: policy.jwt_svid_ttl,
        issuance: issuance.clone(),
        holds: holds.clone(),
    })
}

#[cfg(test)]
mod endpoint_signer_tests;
