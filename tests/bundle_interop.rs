//! Interop: what we publish for the Workload API is read by the `spiffe` crate (rust-spiffe 0.19).
//!
//! rust-spiffe has no SPIFFE bundle JSON (`x5c`) parser; it reads the Workload API forms: the
//! FetchJWTBundles JWKS (`JwtBundle::from_jwt_authorities`) and concatenated DER
//! (`X509Bundle::parse_from_der`). We check both, and that a JWT-SVID signed with our key verifies
//! against our JWKS.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meshtrust::bundle::jwks::jwt_jwks;
use meshtrust::bundle::pem::certs_to_der_concat;
use meshtrust::bundle::{EcCurve, JwtAuthority, JwtPublicKey, TrustBundle};
use meshtrust::spiffe_id::TrustDomain;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

fn our_td() -> TrustDomain {
    TrustDomain::new("mesh-a.test").expect("trust domain")
}

fn their_td() -> spiffe::TrustDomain {
    spiffe::TrustDomain::new("mesh-a.test").expect("trust domain")
}

#[test]
fn rust_spiffe_reads_our_jwt_jwks_and_verifies_a_token_signed_with_our_key() {
    // WAPI 1.7.10 (JWT keys only, kid required), JWT-SVID 1.3.3-8 (ES256, kid, sub, aud, exp).
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = key.public_key_raw();
    let authority = JwtAuthority {
        kid: "k1".to_owned(),
        key: JwtPublicKey::Ec {
            crv: EcCurve::P256,
            x: raw[1..33].to_vec(),
            y: raw[33..].to_vec(),
        },
    };
    let mut bundle = TrustBundle::empty(our_td());
    bundle.jwt_authorities.push(authority);
    let jwks = jwt_jwks(&bundle);

    let their_bundle = spiffe::JwtBundle::from_jwt_authorities(their_td(), &jwks).expect("parse");
    assert!(their_bundle.find_jwt_authority("k1").is_some());
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(their_bundle);

    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
    let claims = format!(r#"{{"sub":"spiffe://mesh-a.test/web","aud":["svc"],"exp":{exp}}}"#);
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let rng = SystemRandom::new();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.serialized_der(), &rng)
            .expect("pkcs8");
    let signature = signer.sign(&rng, signing_input.as_bytes()).expect("sign");
    let token = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    );

    let svid = spiffe::JwtSvid::parse_and_validate(&token, &set, &["svc"]).expect("valid");
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://mesh-a.test/web");
    assert_eq!(svid.key_id(), "k1");
}

#[test]
fn rust_spiffe_reads_our_concatenated_der_x509_bundle() {
    // Workload API form of X.509 bundles: concatenated DER (SPIFFE.md §3.3).
    let certs: Vec<_> = [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ]
    .into_iter()
    .map(|alg| {
        let key = KeyPair::generate_for(alg).expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.self_signed(&key).expect("cert").der().clone()
    })
    .collect();
    let der = certs_to_der_concat(&certs);
    let theirs = spiffe::X509Bundle::parse_from_der(their_td(), &der).expect("parse");
    let got: Vec<&[u8]> = theirs.authorities().iter().map(|c| c.as_ref()).collect();
    assert_eq!(got, [certs[0].as_ref(), certs[1].as_ref()]);
}
