//! What one caller is served, built from one consistent set of inputs, for both front ends.
//!
//! A view holds `Arc`s into the own snapshot, the peer bundles and the SVID cache, never copies,
//! so a stream keeping its last view costs a few pointers; it is turned into a message only when
//! it differs from the last one sent (Workload API §4.3: the full state on every change, and
//! nothing when nothing changed).
//!
//! Bundles are kept per trust domain and never merged (Federation 1.5.5): the own bundle comes
//! from the own snapshot, each peer's from the peer bundles, keyed `spiffe://<td>` on the wire. A peer
//! bundle is served only to callers with an entry that `federates_with` it. An empty (revoked)
//! peer bundle is still served, as an empty value (SPIFFE.md §7.14: propagate revocation).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::identity::{self, CachedSvid, SvidCache};
use super::proto::{JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse};
use super::state::{Inputs, WorkloadApiError};
use crate::bundle::pem::certs_to_der_concat;
use crate::bundle::{TrustBundle, jwks};
use crate::config::EntryConfig;
use crate::spiffe_id::TrustDomain;

/// The bundles a caller may see: ours first, then entitled peers in trust-domain order.
#[derive(Debug, Clone)]
pub struct BundlesView {
    /// Our own trust domain's bundle.
    pub own: Arc<TrustBundle>,
    /// Peer bundles the caller's entries federate with.
    pub federated: Vec<Arc<TrustBundle>>,
}

impl BundlesView {
    /// The own bundle plus the peers any of `ids` federates with.
    pub fn build(inputs: &Inputs, ids: &[&EntryConfig]) -> Self {
        let federated = inputs
            .peers
            .iter()
            .filter(|(td, _)| identity::entitled_to(ids, td))
            .map(|(_, bundle)| bundle.clone())
            .collect();
        Self {
            own: inputs.own.bundle.clone(),
            federated,
        }
    }

    /// Every bundle, own first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<TrustBundle>> {
        std::iter::once(&self.own).chain(&self.federated)
    }

    /// The bundle of `td` if the caller may use it.
    pub fn get(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.all().find(|b| &b.trust_domain == td).cloned()
    }

    /// Same trust domains with the same X.509 authorities.
    pub fn same_x509(&self, other: &Self) -> bool {
        same_by(self, other, |b| &b.x509_authorities)
    }

    /// Same trust domains with the same JWT authorities.
    pub fn same_jwt(&self, other: &Self) -> bool {
        same_by(self, other, |b| &b.jwt_authorities)
    }

    /// FetchX509Bundles: every bundle as concatenated DER keyed `spiffe://<td>`.
    pub fn to_x509_proto(&self) -> X509BundlesResponse {
        X509BundlesResponse {
            crl: Vec::new(),
            bundles: self
                .all()
                .map(|b| (b.trust_domain.id_string(), x509_der(b)))
                .collect(),
        }
    }

    /// FetchJWTBundles: every bundle's JWT keys as a plain JWKS keyed `spiffe://<td>`
    /// (Workload API 1.7.10: no keys of other uses).
    pub fn to_jwt_proto(&self) -> JwtBundlesResponse {
        JwtBundlesResponse {
            bundles: self
                .all()
                .map(|b| (b.trust_domain.id_string(), jwks::jwt_jwks(b)))
                .collect(),
        }
    }
}

fn same_by<T: PartialEq>(
    a: &BundlesView,
    b: &BundlesView,
    part: impl Fn(&TrustBundle) -> &T,
) -> bool {
    a.federated.len() == b.federated.len()
        && a.all().zip(b.all()).all(|(x, y)| {
            Arc::ptr_eq(x, y) || (x.trust_domain == y.trust_domain && part(x) == part(y))
        })
}

fn x509_der(bundle: &TrustBundle) -> Vec<u8> {
    certs_to_der_concat(&bundle.x509_authorities)
}

/// One served X509-SVID and its (response-unique) hint.
#[derive(Debug, Clone)]
pub struct ServedSvid {
    /// The cached SVID.
    pub cached: CachedSvid,
    /// `""` for none.
    pub hint: String,
}

/// FetchX509SVID's content: the caller's SVIDs (default first) and its bundles.
#[derive(Debug, Clone)]
pub struct X509SvidView {
    /// One per identity, in config order.
    pub svids: Vec<ServedSvid>,
    /// Own bundle (`X509SVID.bundle`) and entitled peers (`federated_bundles`).
    pub bundles: BundlesView,
}

impl X509SvidView {
    /// The SVIDs of `ids` from `cache` (minted if needed) and the caller's bundles.
    ///
    /// # Errors
    /// [`WorkloadApiError::Ca`] when an SVID cannot be served.
    pub fn build(
        inputs: &Inputs,
        ids: &[&EntryConfig],
        cache: &SvidCache,
        now: SystemTime,
    ) -> Result<Self, WorkloadApiError> {
        let hints = identity::unique_hints(ids);
        let svids = ids
            .iter()
            .zip(hints)
            .map(|(entry, hint)| {
                let cached = inputs.own.issuer.x509_svid(&entry.spiffe_id, cache, now)?;
                Ok(ServedSvid { cached, hint })
            })
            .collect::<Result<Vec<_>, WorkloadApiError>>()?;
        Ok(Self {
            svids,
            bundles: BundlesView::build(inputs, ids),
        })
    }

    /// The earliest renewal time of its SVIDs: the stream rebuilds then.
    pub fn renew_at(&self) -> Option<SystemTime> {
        self.svids.iter().map(|s| s.cached.renew_at).min()
    }

    /// Same SVIDs (the same cached certificates) with the same hints and the same X.509 bundles.
    pub fn same_content(&self, other: &Self) -> bool {
        self.svids.len() == other.svids.len()
            && self
                .svids
                .iter()
                .zip(&other.svids)
                .all(|(a, b)| Arc::ptr_eq(&a.cached.svid, &b.cached.svid) && a.hint == b.hint)
            && self.bundles.same_x509(&other.bundles)
    }

    /// The X509SVIDResponse (Workload API §5.2.1): DER chain, PKCS#8 key, own bundle as
    /// concatenated DER; federated bundles keyed `spiffe://<td>`.
    pub fn to_proto(&self) -> X509svidResponse {
        let own = x509_der(&self.bundles.own);
        let svids = self
            .svids
            .iter()
            .map(|s| X509svid {
                spiffe_id: s.cached.svid.spiffe_id.to_string(),
                x509_svid: certs_to_der_concat(&s.cached.svid.cert_chain),
                x509_svid_key: s.cached.svid.private_key.pkcs8_der().to_vec(),
                bundle: own.clone(),
                hint: s.hint.clone(),
            })
            .collect();
        let federated_bundles: HashMap<String, Vec<u8>> = self
            .bundles
            .federated
            .iter()
            .map(|b| (b.trust_domain.id_string(), x509_der(b)))
            .collect();
        X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles,
        }
    }
}
