//! Test helpers: CA certificates and JWT keys generated with rcgen, plus the RSA fixture.

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;

use super::{EcCurve, JwtAuthority, JwtPublicKey, TrustBundle};
use crate::spiffe_id::TrustDomain;

/// An RSA-2048 self-signed CA (rcgen with ring cannot generate RSA keys); see tests/fixtures/README.md.
pub(crate) const RSA_CA_PEM: &[u8] = include_bytes!("../../tests/fixtures/rsa-ca.pem");

pub(crate) fn td() -> TrustDomain {
    TrustDomain::new("mesh-a.test").expect("valid trust domain")
}

pub(crate) fn p256() -> &'static SignatureAlgorithm {
    &rcgen::PKCS_ECDSA_P256_SHA256
}

pub(crate) fn p384() -> &'static SignatureAlgorithm {
    &rcgen::PKCS_ECDSA_P384_SHA384
}

/// A self-signed CA certificate (cA=true, keyCertSign|cRLSign, URI SAN `spiffe://mesh-a.test`).
pub(crate) fn ca_cert(alg: &'static SignatureAlgorithm) -> CertificateDer<'static> {
    ca_cert_and_key(alg).0
}

/// [`ca_cert`] plus the raw public key (`0x04 || x || y` for EC) rcgen generated for it.
pub(crate) fn ca_cert_and_key(
    alg: &'static SignatureAlgorithm,
) -> (CertificateDer<'static>, Vec<u8>) {
    let key = KeyPair::generate_for(alg).expect("key generation");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://mesh-a.test".try_into().expect("ia5 string"),
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed").der().clone();
    (cert, key.public_key_raw().to_vec())
}

pub(crate) fn rsa_ca_cert() -> CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(RSA_CA_PEM).expect("RSA fixture")
}

/// A fresh EC JWT signing key on `alg`'s curve, as a JWT authority with `kid`.
pub(crate) fn ec_jwt_authority(alg: &'static SignatureAlgorithm, kid: &str) -> JwtAuthority {
    let key = KeyPair::generate_for(alg).expect("key generation");
    let raw = key.public_key_raw();
    let crv = if alg == p384() {
        EcCurve::P384
    } else {
        EcCurve::P256
    };
    let len = crv.coordinate_len();
    assert_eq!(raw.len(), 1 + 2 * len, "uncompressed point");
    JwtAuthority {
        kid: kid.to_owned(),
        key: JwtPublicKey::Ec {
            crv,
            x: raw[1..=len].to_vec(),
            y: raw[1 + len..].to_vec(),
        },
    }
}

/// A bundle with the given authorities and no sequence or hint.
pub(crate) fn bundle(x509: Vec<CertificateDer<'static>>, jwt: Vec<JwtAuthority>) -> TrustBundle {
    let mut bundle = TrustBundle::empty(td());
    bundle.x509_authorities = x509;
    bundle.jwt_authorities = jwt;
    bundle
}

/// The RSA fixture's public key as a JWT authority (for RSA JWK round trips).
pub(crate) fn rsa_jwt_authority(kid: &str) -> JwtAuthority {
    let key = super::jwk::cert_public_key(&rsa_ca_cert()).expect("RSA fixture key");
    JwtAuthority {
        kid: kid.to_owned(),
        key,
    }
}

/// The published JWKs of `bundle`, as JSON values.
pub(crate) fn published_keys(bundle: &TrustBundle) -> Vec<serde_json::Value> {
    let json = super::jwks::to_json(bundle).expect("publishable bundle");
    let doc: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    doc["keys"].as_array().expect("keys array").clone()
}
