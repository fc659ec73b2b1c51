//! What the CA publishes: [`CaSnapshot`]s of its authorities and bundle, and its settings.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::rotation::{RETIRE_GRACE, SlotView};
use super::{Authority, CaError, KeyType};
use crate::bundle::TrustBundle;
use crate::metrics::issuance::{IssuanceMetrics, SvidType};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::AuthorityState;
use crate::svid::X509Svid;

/// The CA's settings (from `[ca]` and `bundle_endpoint.refresh_hint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPolicy {
    /// CA key algorithm for new authorities.
    pub key_type: KeyType,
    /// Lifetime of a new CA.
    pub ca_ttl: Duration,
    /// X509-SVID lifetime.
    pub x509_svid_ttl: Duration,
    /// JWT-SVID lifetime.
    pub jwt_svid_ttl: Duration,
    /// Published `spiffe_refresh_hint`.
    pub refresh_hint: Duration,
}

impl CaPolicy {
    pub(super) fn longest_svid_ttl(&self) -> Duration {
        self.x509_svid_ttl.max(self.jwt_svid_ttl)
    }
}

/// An authority and where it is in its life.
#[derive(Debug, Clone)]
pub struct AuthoritySlot {
    /// Prepared, active or retired.
    pub state: AuthorityState,
    /// For retired authorities: when it leaves the bundle.
    pub prune_after: Option<SystemTime>,
    /// The material.
    pub authority: Arc<Authority>,
}

impl AuthoritySlot {
    pub(super) fn view(&self) -> SlotView {
        SlotView {
            generation: self.authority.generation,
            state: self.state,
            issued_at: self.authority.issued_at,
            not_after: self.authority.not_after,
            prune_after: self.prune_after,
        }
    }
}

/// What readers see: the authorities, the bundle and its pre-serialized document.
#[derive(Debug)]
pub struct CaSnapshot {
    /// Our trust domain.
    pub trust_domain: TrustDomain,
    /// Authorities in bundle order (oldest generation first).
    pub slots: Vec<AuthoritySlot>,
    /// The published bundle, with sequence and refresh hint.
    pub bundle: Arc<TrustBundle>,
    /// The bundle document exactly as served on the bundle endpoint.
    pub bundle_json: Bytes,
    /// X509-SVID lifetime.
    pub x509_svid_ttl: Duration,
    /// JWT-SVID lifetime.
    pub jwt_svid_ttl: Duration,
    /// The CA's signing counters: whoever signs with this snapshot counts through them
    /// ([`CaSnapshot::issue_x509_svid`] does; JWT-SVID minting calls [`IssuanceMetrics::sign`]).
    pub issuance: Arc<IssuanceMetrics>,
    /// Shared with the [`super::Ca`]: retired authorities the bundle endpoint still signs with.
    pub(super) holds: Arc<Holds>,
}

/// Retired authorities that must stay published until a given time because the bundle endpoint
/// presents an SVID they signed (generation → time). The CA folds them into `prune_after` at its
/// next tick, before any prune.
#[derive(Debug, Default)]
pub(crate) struct Holds(Mutex<BTreeMap<u64, SystemTime>>);

impl Holds {
    fn hold(&self, generation: u64, until: SystemTime) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = map.entry(generation).or_insert(until);
        *at = (*at).max(until);
    }

    /// Takes every hold.
    pub(super) fn take(&self) -> BTreeMap<u64, SystemTime> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The authority the bundle endpoint's SVID chains to, and until when that choice holds.
#[derive(Debug, Clone)]
pub struct EndpointSigner {
    /// The authority.
    pub authority: Arc<Authority>,
    /// Its state (active, or retired and still published).
    pub state: AuthorityState,
    /// When the choice changes next (a newer authority has been published long enough, or this
    /// one ends): the endpoint re-issues then.
    pub switch_at: SystemTime,
}

impl CaSnapshot {
    /// The authority the bundle endpoint presents an SVID from at `now` (issue 9: a peer whose
    /// last good fetch was up to `ca_ttl/2` ago still authenticates the endpoint).
    ///
    /// An authority is *settled* once it has been published for half its lifetime: every peer
    /// that fetched within that long holds it. The endpoint signs with the newest settled
    /// authority that can sign (active, or retired and still published and valid); with none
    /// settled, the oldest such one. With rotation at 1/2 and 5/6 of the lifetime `L`, the old CA
    /// thus keeps signing the endpoint's SVID (only that) from its retirement at `5L/6` until it
    /// expires at `L`, when the new CA has been published for `L/2`; the retired CA stays
    /// published while that SVID is valid.
    pub fn endpoint_signer(&self, now: SystemTime) -> Option<EndpointSigner> {
        let usable = |s: &&AuthoritySlot| {
            s.state != AuthorityState::Prepared
                && s.authority.not_after > now
                && s.prune_after.is_none_or(|p| p > now)
        };
        let settle_at = |s: &AuthoritySlot| s.authority.issued_at + s.authority.lifetime() / 2;
        // `slots` is oldest generation first.
        let chosen = self
            .slots
            .iter()
            .filter(usable)
            .rfind(|s| settle_at(s) <= now)
            .or_else(|| self.slots.iter().find(usable))?;
        let newer_settles = self
            .slots
            .iter()
            .filter(|s| s.authority.generation > chosen.authority.generation)
            .map(settle_at)
            .filter(|t| *t > now);
        let switch_at = newer_settles
            .chain([chosen.authority.not_after])
            .min()
            .unwrap_or(chosen.authority.not_after);
        Some(EndpointSigner {
            authority: chosen.authority.clone(),
            state: chosen.state,
            switch_at,
        })
    }

    /// Issues the bundle endpoint's X509-SVID for `id` from [`CaSnapshot::endpoint_signer`]. A
    /// retired signer is held in the bundle until the SVID has expired (plus [`RETIRE_GRACE`]).
    ///
    /// # Errors
    /// [`CaError`] for a root-path ID, no usable CA or a signing failure.
    pub fn issue_endpoint_svid(
        &self,
        id: &SpiffeId,
        now: SystemTime,
    ) -> Result<(X509Svid, EndpointSigner), CaError> {
        let signer = self.endpoint_signer(now).ok_or(CaError::Expired)?;
        let svid = self.issuance.sign(SvidType::X509, || {
            signer
                .authority
                .issue_x509_svid(id, self.x509_svid_ttl, now)
        })?;
        if signer.state == AuthorityState::Retired {
            self.holds
                .hold(signer.authority.generation, svid.not_after + RETIRE_GRACE);
        }
        Ok((svid, signer))
    }

    /// The signing authority. A snapshot is only published with one.
    pub fn active(&self) -> Option<&Arc<Authority>> {
        self.slot(AuthorityState::Active)
    }

    /// The prepared authority, if one is waiting.
    pub fn prepared(&self) -> Option<&Arc<Authority>> {
        self.slot(AuthorityState::Prepared)
    }

    fn slot(&self, state: AuthorityState) -> Option<&Arc<Authority>> {
        self.slots
            .iter()
            .find(|s| s.state == state)
            .map(|s| &s.authority)
    }

    /// Signs an X509-SVID for `id` and a public key held elsewhere (a node agent's checked CSR),
    /// with the active authority.
    ///
    /// # Errors
    /// [`CaError`] for a root-path ID, no active CA or a signing failure.
    pub fn sign_x509_svid_for_key(
        &self,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        now: SystemTime,
    ) -> Result<super::SignedLeaf, CaError> {
        let active = self.active().ok_or(CaError::Expired)?;
        self.issuance.sign(SvidType::X509, || {
            active.sign_x509_svid_for_key(id, key, self.x509_svid_ttl, now)
        })
    }

    /// Issues an X509-SVID for `id` with the active authority.
    ///
    /// # Errors
    /// [`CaError`] for a root-path ID, no active CA or a signing failure.
    pub fn issue_x509_svid(&self, id: &SpiffeId, now: SystemTime) -> Result<X509Svid, CaError> {
        let active = self.active().ok_or(CaError::Expired)?;
        self.issuance.sign(SvidType::X509, || {
            active.issue_x509_svid(id, self.x509_svid_ttl, now)
        })
    }
}
