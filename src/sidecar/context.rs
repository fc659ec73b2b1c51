//! What the sidecar holds: the workload's X509-SVID, its key, and the X.509 bundle of every
//! trust domain it may talk to, each kept under its own trust domain name (SPIFFE.md 1.4.1).
//!
//! An [`X509Context`] is built from one FetchX509SVID message and only published after it
//! passed the checks go-spiffe's client makes (SPIFFE.md §6.7) plus one it does not: the SVID
//! must not already be expired, because the sidecar would otherwise present it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::leaf::{self, LeafError};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{PrivateKey, X509Svid};
use crate::workload_api::proto::{X509svid, X509svidResponse};

/// Why a FetchX509SVID message was dropped (the stream stays up; SPIFFE.md 1.7.5, §6.7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// `svids` is empty (WAPI 1.7.7).
    #[error("the response holds no svid")]
    NoSvids,
    /// A mandatory field holds its default value (WAPI 1.7.5).
    #[error("the svid's {0} field is empty")]
    EmptyField(&'static str),
    /// The `spiffe_id` field is not a SPIFFE ID.
    #[error("the svid's spiffe_id {0:?} is not a SPIFFE ID")]
    BadSpiffeId(String),
    /// Concatenated DER that does not split into certificates.
    #[error("{what} is not concatenated DER certificates: {reason}")]
    BadDer {
        /// Which field.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The leaf breaks the X509-SVID profile.
    #[error("the svid leaf: {0}")]
    Leaf(#[from] LeafError),
    /// The leaf's URI SAN differs from the `spiffe_id` field.
    #[error("the svid leaf is for {san}, the response says {field}")]
    IdMismatch {
        /// What the certificate says.
        san: SpiffeId,
        /// What the message says.
        field: SpiffeId,
    },
    /// The key is not PKCS#8 of a type rustls can sign with, or it is not the leaf's key.
    #[error("the svid private key: {0}")]
    Key(String),
    /// The SVID's NotAfter is past: presenting it would fail every handshake.
    #[error("the svid for {0} has already expired")]
    Expired(SpiffeId),
    /// A `federated_bundles` key is not a trust domain.
    #[error("federated bundle key {0:?} is not a trust domain")]
    BadFederatedKey(String),
}

/// One validated FetchX509SVID message, as the sidecar uses it.
pub struct X509Context {
    /// The default identity: the first SVID of the message (WAPI 1.7.13).
    pub svid: X509Svid,
    /// The SVID's hint (may be empty).
    pub hint: String,
    /// X.509 authorities per trust domain: ours (from the SVID's `bundle`) and every federated
    /// one. An empty list means that trust domain revoked everything (SPIFFE.md §7 pitfall 14).
    pub bundles: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>,
    /// The SVID as rustls presents it, built once per message.
    certified_key: Arc<CertifiedKey>,
}

impl fmt::Debug for X509Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Context")
            .field("svid", &self.svid)
            .field("hint", &self.hint)
            .field(
                "bundles",
                &self
                    .bundles
                    .iter()
                    .map(|(td, certs)| (td.as_str(), certs.len()))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl X509Context {
    /// Validates one message: the first SVID's chain parses, its leaf is an X509-SVID for the
    /// `spiffe_id` field, the key is PKCS#8 and matches the leaf, NotAfter is after `now`; every
    /// bundle parses as concatenated DER and every federated key names a trust domain.
    ///
    /// # Errors
    /// The [`ContextError`] of the first failed check.
    pub fn from_response(mut msg: X509svidResponse, now: SystemTime) -> Result<Self, ContextError> {
        if msg.svids.is_empty() {
            return Err(ContextError::NoSvids);
        }
        let first: X509svid = msg.svids.swap_remove(0);
        let field = check_id(&first.spiffe_id)?;
        if first.x509_svid.is_empty() {
            return Err(ContextError::EmptyField("x509_svid"));
        }
        if first.x509_svid_key.is_empty() {
            return Err(ContextError::EmptyField("x509_svid_key"));
        }
        if first.bundle.is_empty() {
            return Err(ContextError::EmptyField("bundle"));
        }
        let private_key = PrivateKey::from_pkcs8_der(first.x509_svid_key);
        let cert_chain = split_der("the svid's x509_svid", &first.x509_svid)?;
        let info = leaf::inspect(&cert_chain[0])?;
        if info.spiffe_id != field {
            return Err(ContextError::IdMismatch {
                san: info.spiffe_id,
                field,
            });
        }
        if info.not_after <= now {
            return Err(ContextError::Expired(field));
        }
        let certified_key = certified_key(&cert_chain, &private_key)?;
        let own_td = field.trust_domain().clone();
        let mut bundles = BTreeMap::new();
        bundles.insert(
            own_td.clone(),
            split_der(&format!("the bundle of {own_td}"), &first.bundle)?,
        );
        for (key, der) in msg.federated_bundles {
            let td = TrustDomain::new(&key).map_err(|_| ContextError::BadFederatedKey(key))?;
            if td == own_td {
                // Our own bundle comes with the SVID; a server mixing it in is ignored here.
                tracing::warn!(trust_domain = %td, "own trust domain among federated bundles; ignored");
                continue;
            }
            let certs = if der.is_empty() {
                Vec::new()
            } else {
                split_der(&format!("the federated bundle of {td}"), &der)?
            };
            bundles.insert(td, certs);
        }
        Ok(Self {
            svid: X509Svid {
                spiffe_id: field,
                cert_chain,
                private_key,
                not_after: info.not_after,
                not_before: info.not_before,
            },
            hint: first.hint,
            bundles,
            certified_key,
        })
    }

    /// Our trust domain: the SVID's.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.svid.spiffe_id.trust_domain()
    }

    /// The authorities of `td` (ours or a federated one); `None` when the workload was given
    /// no bundle for it, so nothing from it can be trusted (WAPI 1.7.6).
    pub fn bundle_for(&self, td: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.bundles.get(td).map(Vec::as_slice)
    }

    /// Our own trust domain's authorities.
    pub fn own_bundle(&self) -> &[CertificateDer<'static>] {
        self.bundle_for(self.trust_domain()).unwrap_or_default()
    }

    /// The federated trust domains and their authorities (ours left out).
    pub fn federated(&self) -> impl Iterator<Item = (&TrustDomain, &[CertificateDer<'static>])> {
        let own = self.trust_domain();
        self.bundles
            .iter()
            .filter(move |(td, _)| *td != own)
            .map(|(td, certs)| (td, certs.as_slice()))
    }

    /// The SVID and key for rustls.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// True once the SVID's NotAfter has passed: it must not be presented any more.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.svid.not_after <= now
    }

    /// One line in plain words: who we are, until when, which bundles.
    pub fn describe(&self) -> String {
        let feds: Vec<String> = self
            .federated()
            .map(|(td, certs)| format!("{td} ({} CA)", certs.len()))
            .collect();
        format!(
            "{} valid until {}, own bundle {} CA, federated: {}",
            self.svid.spiffe_id,
            crate::clock::rfc3339(self.svid.not_after),
            self.own_bundle().len(),
            if feds.is_empty() {
                "none".to_owned()
            } else {
                feds.join(", ")
            }
        )
    }
}

fn check_id(s: &str) -> Result<SpiffeId, ContextError> {
    if s.is_empty() {
        return Err(ContextError::EmptyField("spiffe_id"));
    }
    SpiffeId::new(s).map_err(|_| ContextError::BadSpiffeId(s.to_owned()))
}

/// Splits the Workload API's concatenated DER (SPIFFE.md §6.3 `ParseRaw`) into certificates.
fn split_der(what: &str, mut rest: &[u8]) -> Result<Vec<CertificateDer<'static>>, ContextError> {
    let mut certs = Vec::new();
    while !rest.is_empty() {
        let (tail, _) = X509Certificate::from_der(rest).map_err(|e| ContextError::BadDer {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
        let len = rest.len() - tail.len();
        certs.push(CertificateDer::from(rest[..len].to_vec()));
        rest = tail;
    }
    if certs.is_empty() {
        return Err(ContextError::BadDer {
            what: what.to_owned(),
            reason: "no certificate".to_owned(),
        });
    }
    Ok(certs)
}

/// Loads the key the way rustls will sign with it, and checks that its public half is the
/// leaf's (SubjectPublicKeyInfo comparison): the old-key-new-cert mix-up fails here.
fn certified_key(
    chain: &[CertificateDer<'static>],
    key: &PrivateKey,
) -> Result<Arc<CertifiedKey>, ContextError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| ContextError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain.to_vec(), signing);
    certified
        .keys_match()
        .map_err(|e| ContextError::Key(format!("does not match the leaf: {e}")))?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests;
