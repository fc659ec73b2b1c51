//! X.509 authorities as PEM and as concatenated DER, and bootstrap bundles (SPIFFE.md §2: an
//! https_spiffe bootstrap bundle MUST be accepted as SPIFFE bundle JSON, MAY be PEM).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{TrustBundle, jwks};
use crate::spiffe_id::TrustDomain;

/// Why PEM certificates or a bootstrap bundle cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// A PEM section is malformed (bad armor, bad base64, missing END line).
    #[error("malformed PEM: {0}")]
    Malformed(String),
    /// The input holds no `CERTIFICATE` section.
    #[error("no PEM CERTIFICATE section found")]
    NoCertificates,
    /// A `CERTIFICATE` section does not hold one DER X.509 certificate.
    #[error("PEM certificate {index} is not a DER X.509 certificate: {reason}")]
    BadCertificate {
        /// Position among the `CERTIFICATE` sections.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// A bootstrap bundle in SPIFFE bundle JSON form is not a valid document.
    #[error("bootstrap bundle: {0}")]
    Jwks(#[from] jwks::JwksError),
    /// A bootstrap bundle holds no usable X.509 authority, so it cannot authenticate anything.
    #[error("bootstrap bundle holds no usable x509 authority")]
    NoX509Authorities,
}

/// Writes certificates as PEM `CERTIFICATE` sections (64-column base64, `\n` line ends).
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = STANDARD.encode(cert.as_ref());
        // Base64 output is ASCII, so splitting at any byte offset stays on char boundaries.
        let mut rest = b64.as_str();
        while !rest.is_empty() {
            let (line, tail) = rest.split_at(rest.len().min(64));
            out.push_str(line);
            out.push('\n');
            rest = tail;
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Reads every PEM `CERTIFICATE` section, in order.
///
/// Other sections (keys, CRLs...) and text between sections are skipped, like a CA file read by
/// OpenSSL or rustls. Each certificate must parse as one DER X.509 certificate.
///
/// # Errors
/// [`PemError::Malformed`] for broken PEM, [`PemError::NoCertificates`] if there is no
/// certificate, [`PemError::BadCertificate`] for a section that is not a certificate's DER.
pub fn parse_certs_pem(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = section.map_err(|e| PemError::Malformed(e.to_string()))?;
        if kind != SectionKind::Certificate {
            continue;
        }
        let index = certs.len();
        match X509Certificate::from_der(&der) {
            Ok(([], _)) => certs.push(CertificateDer::from(der)),
            Ok(_) => {
                let reason = "trailing bytes after the certificate".to_owned();
                return Err(PemError::BadCertificate { index, reason });
            }
            Err(e) => {
                return Err(PemError::BadCertificate {
                    index,
                    reason: e.to_string(),
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(PemError::NoCertificates);
    }
    Ok(certs)
}

/// Concatenated DER, the Workload API form of a bundle (`X509SVID.bundle`, `federated_bundles`).
pub fn certs_to_der_concat(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    certs
        .iter()
        .flat_map(|cert| cert.as_ref().iter().copied())
        .collect()
}

/// Reads an operator-supplied bootstrap bundle for trust domain `td`: SPIFFE bundle JSON when the
/// first non-whitespace byte (after an optional UTF-8 BOM) is `{`, otherwise PEM certificates
/// (X.509 authorities only, no sequence, no hint). JSON keys that [`jwks::parse`] skips are logged.
///
/// # Errors
/// The [`jwks::parse`] or [`parse_certs_pem`] error, or [`PemError::NoX509Authorities`] when the
/// JSON form holds no usable X.509 authority (a bootstrap bundle exists to authenticate an
/// endpoint's X509-SVID).
pub fn parse_bootstrap(td: &TrustDomain, bytes: &[u8]) -> Result<TrustBundle, PemError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let mut bundle = TrustBundle::empty(td.clone());
        bundle.x509_authorities = parse_certs_pem(bytes)?;
        return Ok(bundle);
    }
    let parsed = jwks::parse(td, bytes)?;
    for skipped in &parsed.skipped {
        tracing::warn!(trust_domain = %td, index = skipped.index, reason = %skipped.reason, "bootstrap bundle key ignored");
    }
    for note in &parsed.notes {
        tracing::info!(trust_domain = %td, index = note.index, note = %note.note, "bootstrap bundle key");
    }
    if parsed.bundle.x509_authorities.is_empty() {
        return Err(PemError::NoX509Authorities);
    }
    Ok(parsed.bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::test_support::*;

    #[test]
    fn pem_round_trips_p256_p384_and_rsa_certificates() {
        let certs = vec![ca_cert(p256()), ca_cert(p384()), rsa_ca_cert()];
        let pem = certs_to_pem(&certs);
        assert!(pem.lines().all(|line| line.len() <= 64), "64-column base64");
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----\n").count(), 3);
        assert_eq!(parse_certs_pem(pem.as_bytes()).expect("parse"), certs);
    }

    #[test]
    fn the_openssl_fixture_parses_to_one_certificate() {
        assert_eq!(parse_certs_pem(RSA_CA_PEM).expect("parse"), [rsa_ca_cert()]);
    }

    #[test]
    fn non_certificate_sections_and_surrounding_text_are_skipped() {
        let cert = ca_cert(p256());
        let input = format!(
            "subject=CN=ca\r\n{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\ntrailer\n",
            certs_to_pem(std::slice::from_ref(&cert))
        );
        assert_eq!(parse_certs_pem(input.as_bytes()).expect("parse"), [cert]);
    }

    #[test]
    fn pem_without_a_certificate_or_with_a_broken_one_is_an_error() {
        assert_eq!(parse_certs_pem(b""), Err(PemError::NoCertificates));
        assert_eq!(parse_certs_pem(b"hello"), Err(PemError::NoCertificates));
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(parse_certs_pem(key_only), Err(PemError::NoCertificates));
        let unterminated = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(
            parse_certs_pem(unterminated),
            Err(PemError::Malformed(_))
        ));
        let not_der = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = parse_certs_pem(not_der);
        assert!(
            matches!(err, Err(PemError::BadCertificate { index: 0, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn der_concatenation_is_the_certificates_back_to_back() {
        let certs = vec![ca_cert(p256()), rsa_ca_cert()];
        let concat = certs_to_der_concat(&certs);
        assert_eq!(concat, [certs[0].as_ref(), certs[1].as_ref()].concat());
        assert_eq!(certs_to_der_concat(&[]), Vec::<u8>::new());
    }

    #[test]
    fn a_bootstrap_bundle_may_be_pem_certificates() {
        // SPIFFE.md §2: a bootstrap bundle MAY be PEM.
        let certs = vec![ca_cert(p256()), rsa_ca_cert()];
        let bundle = parse_bootstrap(&td(), certs_to_pem(&certs).as_bytes()).expect("PEM");
        assert_eq!(bundle, crate::bundle::test_support::bundle(certs, vec![]));
    }

    #[test]
    fn a_bootstrap_bundle_may_be_spiffe_bundle_json_with_leading_whitespace() {
        // SPIFFE.md §2: a bootstrap bundle MUST be accepted as SPIFFE bundle JSON.
        let mut original = bundle(vec![ca_cert(p384())], vec![ec_jwt_authority(p256(), "k")]);
        original.sequence = Some(4);
        let json = jwks::to_json(&original).expect("publish");
        for prefix in [&b""[..], b" \n\t", b"\xEF\xBB\xBF\n"] {
            let input = [prefix, &json].concat();
            assert_eq!(parse_bootstrap(&td(), &input).expect("JSON"), original);
        }
    }

    #[test]
    fn a_bootstrap_bundle_without_usable_x509_authorities_is_an_error() {
        let jwt_only = jwks::to_json(&bundle(vec![], vec![ec_jwt_authority(p256(), "k")]));
        let jwt_only = jwt_only.expect("publish");
        assert_eq!(
            parse_bootstrap(&td(), &jwt_only),
            Err(PemError::NoX509Authorities)
        );
        assert_eq!(
            parse_bootstrap(&td(), br#"{"keys":[]}"#),
            Err(PemError::NoX509Authorities)
        );
        let err = parse_bootstrap(&td(), b"{}");
        assert_eq!(err, Err(PemError::Jwks(jwks::JwksError::MissingKeys)));
        assert_eq!(
            parse_bootstrap(&td(), b"   "),
            Err(PemError::NoCertificates)
        );
    }
}
