//! The X509-SVID leaf profile checks a validator must make before trusting a leaf for
//! authentication (X509-SVID §5.2, SPIFFE.md 1.2.14): used on our own SVID when it arrives and
//! on every peer's leaf at each handshake.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why a certificate is not a usable X509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    /// Not a DER X.509 certificate.
    #[error("not an x509 certificate: {0}")]
    Parse(String),
    /// No URI SAN, so no SPIFFE ID.
    #[error("the certificate has no URI SAN")]
    NoUriSan,
    /// More than one URI SAN (X509-SVID 1.2.1).
    #[error("the certificate has more than one URI SAN")]
    MultipleUriSans,
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a SPIFFE ID: {source}")]
    BadSpiffeId {
        /// The SAN as found.
        uri: String,
        /// Why.
        #[source]
        source: SpiffeIdError,
    },
    /// `spiffe://td` with no path names a trust domain, not a workload (X509-SVID 1.2.2).
    #[error("{0} has no path: not a workload SVID")]
    RootPath(SpiffeId),
    /// A CA certificate must not authenticate (X509-SVID 1.2.6, 1.2.7).
    #[error("{0} is a CA certificate")]
    IsCa(SpiffeId),
    /// keyCertSign or cRLSign on a leaf (X509-SVID 1.2.11).
    #[error("{0} has a signing key usage (keyCertSign or cRLSign)")]
    SigningKeyUsage(SpiffeId),
}

/// What a checked leaf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The SPIFFE ID from the one URI SAN.
    pub spiffe_id: SpiffeId,
    /// NotBefore.
    pub not_before: SystemTime,
    /// NotAfter.
    pub not_after: SystemTime,
}

/// Parses `cert` and applies the leaf checks of X509-SVID §5.2: exactly one URI SAN holding a
/// SPIFFE ID with a path, not a CA, no keyCertSign/cRLSign. It does not look at the chain or the
/// validity period: that is the path validator's job.
///
/// # Errors
/// The [`LeafError`] of the first failed check.
pub fn inspect(cert: &CertificateDer<'_>) -> Result<LeafInfo, LeafError> {
    let (_, x509) = X509Certificate::from_der(cert).map_err(|e| LeafError::Parse(e.to_string()))?;
    let spiffe_id = uri_san(&x509)?;
    if spiffe_id.path().is_empty() {
        return Err(LeafError::RootPath(spiffe_id));
    }
    let is_ca = x509
        .basic_constraints()
        .map_err(|e| LeafError::Parse(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(LeafError::IsCa(spiffe_id));
    }
    let signing = x509
        .key_usage()
        .map_err(|e| LeafError::Parse(e.to_string()))?
        .is_some_and(|ku| ku.value.key_cert_sign() || ku.value.crl_sign());
    if signing {
        return Err(LeafError::SigningKeyUsage(spiffe_id));
    }
    let validity = x509.validity();
    Ok(LeafInfo {
        spiffe_id,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
    })
}

fn uri_san(x509: &X509Certificate<'_>) -> Result<SpiffeId, LeafError> {
    let san = x509
        .subject_alternative_name()
        .map_err(|e| LeafError::Parse(e.to_string()))?
        .ok_or(LeafError::NoUriSan)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next().ok_or(LeafError::NoUriSan)?;
    if uris.next().is_some() {
        return Err(LeafError::MultipleUriSans);
    }
    SpiffeId::new(uri).map_err(|source| LeafError::BadSpiffeId {
        uri: uri.to_owned(),
        source,
    })
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}
