//! SPIFFE bundle JSON: a JWK Set plus `spiffe_sequence` and `spiffe_refresh_hint`
//! (SPIFFE Trust Domain and Bundle §4, X509-SVID §6, JWT-SVID §6).
//!
//! Publishing ([`to_json`]) is strict and deterministic. Consuming ([`parse`]) judges each JWK on
//! its own: a bad key is skipped and reported, the others are kept (SPIFFE.md "Decisions already
//! taken", §7 pitfalls 1-3). Only document-level problems are errors.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use super::TrustBundle;
use super::jwk::{JwkOut, USE_JWT};

mod parse;
pub use parse::{KeyNote, MAX_KEYS, ParsedBundle, SkippedKey, parse, parse_with_max_keys};

/// Why a bundle document cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The document is not UTF-8 (SPIFFE Federation §5.2: bundles are UTF-8 JSON).
    #[error("bundle document is not UTF-8")]
    NotUtf8,
    /// The document is not JSON (garbage, truncated...).
    #[error("bundle document is not valid JSON: {0}")]
    Json(String),
    /// The top level is not a JSON object.
    #[error("bundle document is not a JSON object")]
    NotAnObject,
    /// No `keys` member, or `keys: null` (TD&B 1.4.6).
    #[error("bundle document has no \"keys\" member")]
    MissingKeys,
    /// `keys` is not an array.
    #[error("\"keys\" is not an array")]
    KeysNotArray,
    /// More entries in `keys` than the reader accepts: refused whole, before any key is decoded.
    #[error("bundle document has {count} keys, more than the {max} accepted")]
    TooManyKeys {
        /// Entries in `keys`.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// `spiffe_sequence` is not a non-negative integer that fits in 64 bits (TD&B 1.4.4).
    #[error("spiffe_sequence must be a non-negative integer of at most 64 bits")]
    BadSequence,
    /// `spiffe_refresh_hint` is not a non-negative integer number of seconds (TD&B 1.4.5).
    #[error("spiffe_refresh_hint must be a non-negative integer number of seconds")]
    BadRefreshHint,
    /// An X.509 authority of our own bundle cannot be written as a JWK.
    #[error("x509 authority {index} cannot be published: {reason}")]
    UnpublishableX509 {
        /// Position in `x509_authorities`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A JWT authority of our own bundle cannot be written as a JWK.
    #[error("jwt authority {kid:?} cannot be published: {reason}")]
    UnpublishableJwt {
        /// Its key ID.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two JWT authorities of our own bundle share a `kid`.
    #[error("jwt authority kid {0:?} appears more than once")]
    DuplicateKid(String),
    /// serde_json failed to write the document.
    #[error("cannot serialize bundle: {0}")]
    Serialize(String),
}

#[derive(Serialize)]
struct DocOut {
    keys: Vec<JwkOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

/// Writes `bundle` as a SPIFFE bundle document (the bundle endpoint's body).
///
/// One `x509-svid` JWK per distinct CA cert with exactly one `x5c` and no `kid` (X509-SVID
/// 1.2.15), then one `jwt-svid` JWK per JWT key with its `kid` (JWT-SVID 1.3.11), then
/// `spiffe_sequence` and `spiffe_refresh_hint` (rounded up to whole seconds) when set.
/// Same input, same bytes.
///
/// # Errors
/// [`JwksError::UnpublishableX509`] for a cert that does not parse or whose key is not EC
/// P-256/P-384 or RSA; [`JwksError::UnpublishableJwt`] / [`JwksError::DuplicateKid`] for JWT keys
/// breaking the model's invariants.
pub fn to_json(bundle: &TrustBundle) -> Result<Vec<u8>, JwksError> {
    let mut keys = Vec::with_capacity(bundle.x509_authorities.len() + bundle.jwt_authorities.len());
    for (index, cert) in bundle.x509_authorities.iter().enumerate() {
        if bundle.x509_authorities[..index].contains(cert) {
            continue;
        }
        keys.push(
            JwkOut::x509(cert).map_err(|reason| JwksError::UnpublishableX509 { index, reason })?,
        );
    }
    let mut kids = BTreeSet::new();
    for authority in &bundle.jwt_authorities {
        if !kids.insert(authority.kid.as_str()) {
            return Err(JwksError::DuplicateKid(authority.kid.clone()));
        }
        keys.push(JwkOut::jwt(authority, Some(USE_JWT)).map_err(|reason| {
            JwksError::UnpublishableJwt {
                kid: authority.kid.clone(),
                reason,
            }
        })?);
    }
    let doc = DocOut {
        keys,
        spiffe_sequence: bundle.sequence,
        spiffe_refresh_hint: bundle.refresh_hint.map(ceil_secs),
    };
    serde_json::to_vec(&doc).map_err(|e| JwksError::Serialize(e.to_string()))
}

/// Writes the JWT keys of `bundle` as a plain RFC 7517 JWKS for the Workload API's
/// FetchJWTBundles (WAPI 1.7.10): `{"keys":[{"kty","crv","x","y"|"n","e","kid"}]}`.
///
/// `use` is left out, as SPIRE and go-spiffe's `jwtbundle.Marshal` do: generic JOSE libraries
/// may refuse a `use` other than `sig`, and the document holds JWT-SVID keys only anyway. No
/// sequence, no refresh hint, no X.509 keys. A key breaking the model's invariants is left out
/// and logged.
pub fn jwt_jwks(bundle: &TrustBundle) -> Vec<u8> {
    let keys = bundle
        .jwt_authorities
        .iter()
        .filter_map(|authority| match JwkOut::jwt(authority, None) {
            Ok(key) => Some(key),
            Err(reason) => {
                tracing::warn!(trust_domain = %bundle.trust_domain, kid = %authority.kid, %reason, "jwt key left out of the JWKS");
                None
            }
        })
        .collect();
    let doc = DocOut {
        keys,
        spiffe_sequence: None,
        spiffe_refresh_hint: None,
    };
    serde_json::to_vec(&doc).unwrap_or_else(|e| {
        // Unreachable with these plain structs; fail closed (no keys) rather than panic.
        tracing::error!(error = %e, "cannot serialize a JWKS");
        br#"{"keys":[]}"#.to_vec()
    })
}

/// Whole seconds, rounded up (go-spiffe's `Marshal`): a hint never gets shorter on the wire.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use serde_json::{Value, json};

    use super::*;
    use crate::bundle::test_support::*;
    use crate::bundle::{EcCurve, JwtAuthority, JwtPublicKey};

    fn b64url(v: &Value) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(v.as_str().expect("string"))
            .expect("base64url")
    }

    #[test]
    fn a_bundle_of_p256_p384_and_rsa_cas_and_ec_and_rsa_jwt_keys_survives_publish_then_parse() {
        let mut original = bundle(
            vec![ca_cert(p256()), ca_cert(p384()), rsa_ca_cert()],
            vec![
                ec_jwt_authority(p256(), "jwt-p256"),
                ec_jwt_authority(p384(), "jwt-p384"),
                rsa_jwt_authority("jwt-rsa"),
            ],
        );
        original.sequence = Some(7);
        original.refresh_hint = Some(Duration::from_secs(300));
        let parsed = parse(&td(), &to_json(&original).expect("publish")).expect("parse");
        assert_eq!(parsed.skipped, vec![]);
        assert_eq!(parsed.notes, vec![]);
        assert_eq!(parsed.bundle, original);
    }

    #[test]
    fn published_x509_keys_carry_one_standard_base64_cert_no_kid_and_the_cert_params() {
        // X509-SVID 1.2.15; SPIFFE.md §2 interop notes (params = x5c[0] key, coordinate sizes).
        let (p256_cert, p256_raw) = ca_cert_and_key(p256());
        let (p384_cert, p384_raw) = ca_cert_and_key(p384());
        let certs = vec![p256_cert, p384_cert, rsa_ca_cert()];
        let keys = published_keys(&bundle(certs.clone(), vec![]));
        assert_eq!(keys.len(), 3);
        for (key, cert) in keys.iter().zip(&certs) {
            assert_eq!(key["use"], "x509-svid");
            assert!(key.get("kid").is_none(), "no kid on x509-svid keys");
            let x5c = key["x5c"].as_array().expect("x5c array");
            assert_eq!(x5c.len(), 1, "exactly one cert per x5c");
            let der = STANDARD
                .decode(x5c[0].as_str().expect("string"))
                .expect("std base64");
            assert_eq!(der, cert.as_ref());
        }
        for (key, raw, crv, len) in [
            (&keys[0], &p256_raw, "P-256", 32),
            (&keys[1], &p384_raw, "P-384", 48),
        ] {
            assert_eq!(
                (key["kty"].as_str(), key["crv"].as_str()),
                (Some("EC"), Some(crv))
            );
            assert_eq!(b64url(&key["x"]), raw[1..=len]);
            assert_eq!(b64url(&key["y"]), raw[1 + len..]);
        }
        // The fixture's modulus is 00:be:a5:da:81... in DER: the JWK drops the leading zero.
        let rsa = &keys[2];
        assert_eq!(rsa["kty"], "RSA");
        let n = b64url(&rsa["n"]);
        assert_eq!((n.len(), &n[..4]), (256, &[0xbe, 0xa5, 0xda, 0x81][..]));
        assert_eq!(rsa["e"], "AQAB");
    }

    #[test]
    fn published_jwt_keys_carry_use_and_kid_and_no_x5c() {
        // JWT-SVID 1.3.11.
        let keys = published_keys(&bundle(vec![], vec![ec_jwt_authority(p256(), "k1")]));
        assert_eq!(keys[0]["use"], "jwt-svid");
        assert_eq!(keys[0]["kid"], "k1");
        assert!(keys[0].get("x5c").is_none());
    }

    #[test]
    fn publishing_is_byte_for_byte_deterministic_with_keys_first() {
        let mut b = bundle(
            vec![],
            vec![JwtAuthority {
                kid: "k".to_owned(),
                key: JwtPublicKey::Ec {
                    crv: EcCurve::P256,
                    x: vec![0; 32],
                    y: vec![255; 32],
                },
            }],
        );
        b.sequence = Some(7);
        b.refresh_hint = Some(Duration::from_secs(300));
        let expected = format!(
            r#"{{"keys":[{{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"{}","y":"{}","kid":"k"}}],"spiffe_sequence":7,"spiffe_refresh_hint":300}}"#,
            "A".repeat(43),
            "_".repeat(42) + "8"
        );
        assert_eq!(
            String::from_utf8(to_json(&b).expect("publish")).expect("utf-8"),
            expected
        );
        assert_eq!(to_json(&b), to_json(&b.clone()));
    }

    #[test]
    fn sequence_and_refresh_hint_are_published_only_when_set() {
        let json = to_json(&bundle(vec![], vec![])).expect("publish");
        assert_eq!(json, br#"{"keys":[]}"#);
    }

    #[test]
    fn the_refresh_hint_is_rounded_up_to_whole_seconds() {
        // TD&B 1.4.5 (integer seconds); go-spiffe Marshal rounds up (SPIFFE.md §2).
        for (hint, secs) in [
            (Duration::ZERO, 0),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(500), 1),
            (Duration::from_secs(300), 300),
            (Duration::from_millis(300_001), 301),
            (Duration::MAX, u64::MAX),
        ] {
            let mut b = bundle(vec![], vec![]);
            b.refresh_hint = Some(hint);
            let doc: Value = serde_json::from_slice(&to_json(&b).expect("publish")).expect("JSON");
            assert_eq!(doc["spiffe_refresh_hint"], json!(secs), "{hint:?}");
        }
    }

    #[test]
    fn identical_cas_are_published_once() {
        let cert = ca_cert(p256());
        assert_eq!(
            published_keys(&bundle(vec![cert.clone(), cert], vec![])).len(),
            1
        );
    }

    #[test]
    fn unpublishable_authorities_are_errors() {
        let ed25519 = ca_cert(&rcgen::PKCS_ED25519);
        let bad_der = rustls_pki_types::CertificateDer::from(vec![0x30, 0x00]);
        for cert in [ed25519, bad_der] {
            let err = to_json(&bundle(vec![ca_cert(p256()), cert], vec![]));
            assert!(
                matches!(err, Err(JwksError::UnpublishableX509 { index: 1, .. })),
                "{err:?}"
            );
        }
        let short = JwtAuthority {
            kid: "short".to_owned(),
            key: JwtPublicKey::Ec {
                crv: EcCurve::P384,
                x: vec![1; 32],
                y: vec![1; 32],
            },
        };
        let err = to_json(&bundle(vec![], vec![short]));
        assert!(
            matches!(err, Err(JwksError::UnpublishableJwt { .. })),
            "{err:?}"
        );
        let mut no_kid = ec_jwt_authority(p256(), "");
        let err = to_json(&bundle(vec![], vec![no_kid.clone()]));
        assert!(
            matches!(err, Err(JwksError::UnpublishableJwt { .. })),
            "{err:?}"
        );
        no_kid.kid = "twice".to_owned();
        let err = to_json(&bundle(vec![], vec![no_kid.clone(), no_kid]));
        assert_eq!(err, Err(JwksError::DuplicateKid("twice".to_owned())));
    }

    #[test]
    fn the_jwt_jwks_holds_only_jwt_keys_without_use_sequence_or_hint() {
        // WAPI 1.7.10: no keys with other uses; `use` dropped like SPIRE's StandardJWKS (§3.4).
        let mut b = bundle(vec![ca_cert(p256())], vec![ec_jwt_authority(p256(), "k1")]);
        b.sequence = Some(3);
        b.refresh_hint = Some(Duration::from_secs(60));
        let doc: Value = serde_json::from_slice(&jwt_jwks(&b)).expect("JSON");
        let expected_key = &published_keys(&b)[1];
        let mut expected_key = expected_key.as_object().expect("object").clone();
        expected_key.remove("use");
        assert_eq!(doc, json!({ "keys": [expected_key] }));
    }
}
