//! Server authentication for the `https_spiffe` profile (SPIFFE Federation §5.2.2, SPIFFE.md §2
//! "Consuming"): no hostname check; the endpoint must present a valid X509-SVID whose one URI SAN
//! is exactly the configured endpoint SPIFFE ID, chaining to the X.509 authorities of **that
//! ID's trust domain** as they are at the moment of the handshake.
//!
//! The authorities are read at every handshake from an [`EndpointRoots`]: the pinned bundle of a
//! peer (the bootstrap bundle only while nothing is pinned for that trust domain, so a peer can
//! rotate its CA: SPIFFE.md §2 "Self-serving"), or our own CA's bundle for an endpoint ID in our
//! own trust domain. No authority ⇒ the handshake fails (fail closed), which is also what a
//! pinned `keys: []` (revocation) means.
//!
//! An authority outside its own validity period (expired, or not yet valid) anchors nothing:
//! webpki does not look at trust anchor dates, go-spiffe refuses such chains, and so do we (a peer
//! whose bundle still lists an expired CA cannot authenticate with it).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, OtherError, RootCertStore};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::pinned::PeerBundles;
use crate::bundle::TrustBundle;
use crate::ca::CaSnapshot;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Why an endpoint certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The leaf is not DER X.509.
    #[error("endpoint certificate does not parse: {0}")]
    Malformed(String),
    /// Not exactly one URI SAN (X509-SVID 1.2.1, 1.2.14).
    #[error("endpoint certificate has {0} URI SANs; an X509-SVID has exactly one")]
    UriSanCount(usize),
    /// The URI SAN is not a SPIFFE ID.
    #[error("endpoint certificate URI SAN {uri:?} is not a SPIFFE ID: {reason}")]
    NotSpiffeId {
        /// The SAN.
        uri: String,
        /// Why.
        reason: String,
    },
    /// Another identity than the configured one (SPIFFE Federation §5.2.2).
    #[error("endpoint presented {presented}, expected {expected}")]
    WrongId {
        /// The configured endpoint SPIFFE ID.
        expected: SpiffeId,
        /// What the certificate says.
        presented: SpiffeId,
    },
    /// A CA certificate used for authentication (X509-SVID 1.2.6, 1.2.14).
    #[error("endpoint certificate is a CA (basicConstraints cA=true)")]
    IsCa,
    /// A leaf with signing key usages (X509-SVID 1.2.11, 1.2.14).
    #[error("endpoint certificate has keyCertSign or cRLSign key usage")]
    SigningKeyUsage,
    /// Every authority in force is outside its validity period: fail closed.
    #[error(
        "every x509 authority of trust domain {trust_domain} is expired or not yet valid ({count} in force)"
    )]
    AuthoritiesExpired {
        /// The endpoint ID's trust domain.
        trust_domain: TrustDomain,
        /// How many there were.
        count: usize,
    },
    /// Nothing to validate the chain with: fail closed.
    #[error("no x509 authority for trust domain {trust_domain} ({looked_in})")]
    NoAuthorities {
        /// The endpoint ID's trust domain.
        trust_domain: TrustDomain,
        /// Where we looked.
        looked_in: &'static str,
    },
}

/// Our own trust domain's X.509 authorities, read at every handshake: for an endpoint SPIFFE ID in
/// our own trust domain (a peer's bundle served by an endpoint we issued the SVID for).
#[derive(Clone)]
pub struct OwnRoots {
    trust_domain: TrustDomain,
    read: Arc<dyn Fn() -> Vec<CertificateDer<'static>> + Send + Sync>,
}

impl OwnRoots {
    /// Roots read from `read` each time a handshake needs them.
    pub fn new(
        trust_domain: TrustDomain,
        read: impl Fn() -> Vec<CertificateDer<'static>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            trust_domain,
            read: Arc::new(read),
        }
    }

    /// Our CA's published X.509 authorities, following its rotations.
    pub fn from_ca(snapshots: watch::Receiver<Arc<CaSnapshot>>) -> Self {
        let trust_domain = snapshots.borrow().trust_domain.clone();
        Self::new(trust_domain, move || {
            snapshots.borrow().bundle.x509_authorities.clone()
        })
    }

    /// The trust domain these roots speak for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The authorities now.
    pub fn authorities(&self) -> Vec<CertificateDer<'static>> {
        (self.read)()
    }
}

impl fmt::Debug for OwnRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnRoots")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Where the authorities of an endpoint ID's trust domain come from.
#[derive(Clone, Debug)]
pub enum EndpointRoots {
    /// Our own trust domain: our CA's bundle.
    Own(OwnRoots),
    /// A peer's trust domain: its pinned bundle, else the bootstrap bundle.
    Peer {
        /// The endpoint ID's trust domain.
        trust_domain: TrustDomain,
        /// The pinned peer bundles (read at every handshake).
        pinned: watch::Receiver<Arc<PeerBundles>>,
        /// Used only while nothing is pinned for `trust_domain`.
        bootstrap: Option<Arc<TrustBundle>>,
    },
}

impl EndpointRoots {
    /// The trust domain whose authorities these are.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Own(own) => own.trust_domain(),
            Self::Peer { trust_domain, .. } => trust_domain,
        }
    }

    /// The authorities in force now, or why there are none.
    ///
    /// # Errors
    /// [`SvidError::NoAuthorities`] naming where we looked.
    pub fn authorities(&self) -> Result<Vec<CertificateDer<'static>>, SvidError> {
        let (certs, looked_in) = match self {
            Self::Own(own) => (own.authorities(), "our own bundle"),
            Self::Peer {
                trust_domain,
                pinned,
                bootstrap,
            } => match pinned.borrow().get(trust_domain) {
                Some(bundle) => (bundle.x509_authorities.clone(), "pinned bundle"),
                None => match bootstrap {
                    Some(b) => (b.x509_authorities.clone(), "bootstrap bundle"),
                    None => (Vec::new(), "nothing pinned and no bootstrap bundle"),
                },
            },
        };
        if certs.is_empty() {
            return Err(SvidError::NoAuthorities {
                trust_domain: self.trust_domain().clone(),
                looked_in,
            });
        }
        Ok(certs)
    }
}

/// Checks the leaf as an X509-SVID for authentication (X509-SVID 1.2.14): exactly one URI SAN,
/// equal to `expected`; not a CA; no keyCertSign/cRLSign.
///
/// # Errors
/// The first [`SvidError`] found.
pub fn check_leaf(leaf: &[u8], expected: &SpiffeId) -> Result<(), SvidError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris[..] else {
        return Err(SvidError::UriSanCount(uris.len()));
    };
    let presented = SpiffeId::new(uri).map_err(|e| SvidError::NotSpiffeId {
        uri: uri.to_owned(),
        reason: e.to_string(),
    })?;
    if &presented != expected {
        return Err(SvidError::WrongId {
            expected: expected.clone(),
            presented,
        });
    }
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::IsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if ku.is_some_and(|ku| ku.value.key_cert_sign() || ku.value.crl_sign()) {
        return Err(SvidError::SigningKeyUsage);
    }
    Ok(())
}

/// Whether `cert` is within its validity period at `now` (an unparsable one is not).
pub fn valid_at(cert: &CertificateDer<'_>, now: UnixTime) -> bool {
    let Ok((_, parsed)) = X509Certificate::from_der(cert) else {
        return false;
    };
    let validity = parsed.validity();
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp()
}

/// The `https_spiffe` [`ServerCertVerifier`]: SVID profile and ID first, then the chain
/// (RFC 5280 path validation by webpki, at the TLS stack's time) to the authorities in force.
#[derive(Debug)]
pub struct SpiffeEndpointVerifier {
    endpoint_id: SpiffeId,
    roots: EndpointRoots,
    provider: Arc<CryptoProvider>,
}

impl SpiffeEndpointVerifier {
    /// A verifier pinning `endpoint_id`, with roots from `roots` and `provider`'s algorithms.
    pub fn new(endpoint_id: SpiffeId, roots: EndpointRoots, provider: Arc<CryptoProvider>) -> Self {
        Self {
            endpoint_id,
            roots,
            provider,
        }
    }

    /// The configured endpoint SPIFFE ID.
    pub fn endpoint_id(&self) -> &SpiffeId {
        &self.endpoint_id
    }
}

fn refuse(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for SpiffeEndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_leaf(end_entity, &self.endpoint_id).map_err(refuse)?;
        let authorities = self.roots.authorities().map_err(refuse)?;
        let count = authorities.len();
        let current: Vec<CertificateDer<'static>> = authorities
            .into_iter()
            .filter(|a| valid_at(a, now))
            .collect();
        if current.is_empty() {
            return Err(refuse(SvidError::AuthoritiesExpired {
                trust_domain: self.roots.trust_domain().clone(),
                count,
            }));
        }
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(current);
        if added == 0 {
            return Err(refuse(SvidError::NoAuthorities {
                trust_domain: self.roots.trust_domain().clone(),
                looked_in: "no authority parses as a trust anchor",
            }));
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &store,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    crate::tls_signatures::provider_signature_checks!(provider);
}

mod no_roots;
pub use no_roots::NoRootsVerifier;

#[cfg(test)]
mod tests;
