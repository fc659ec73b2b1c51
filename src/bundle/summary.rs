//! What operators see of an authority: its NotAfter and fingerprint.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::clock::rfc3339;

/// An X.509 authority's NotAfter, if the certificate parses.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Lowercase hex SHA-256 of the DER certificate.
pub fn sha256_hex(cert: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One authority as shown in status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthoritySummary {
    /// RFC 3339 NotAfter.
    pub not_after: Option<String>,
    /// Hex SHA-256 of the DER certificate.
    pub sha256: String,
}

/// Summaries of a list of authorities.
pub fn summarize(certs: &[CertificateDer<'_>]) -> Vec<AuthoritySummary> {
    certs
        .iter()
        .map(|c| AuthoritySummary {
            not_after: not_after(c).map(rfc3339),
            sha256: sha256_hex(c),
        })
        .collect()
}

/// The earliest NotAfter among authorities.
pub fn earliest_expiry(certs: &[CertificateDer<'_>]) -> Option<SystemTime> {
    certs.iter().filter_map(not_after).min()
}
