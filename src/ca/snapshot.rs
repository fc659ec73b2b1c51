//! What the CA publishes: [`CaSnapshot`]s of its authorities and bundle, and its settings.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::rotation::SlotView;
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
}

impl CaSnapshot {
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
