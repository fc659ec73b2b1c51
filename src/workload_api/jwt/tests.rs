//! The JWT-SVID validator against tokens we mint and tokens crafted to break one rule each
//! (SPIFFE.md 1.3 and §4 / §6.5).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::json;

use super::*;
use crate::bundle::JwtAuthority;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn id() -> SpiffeId {
    SpiffeId::new("spiffe://mesh-a.test/web").unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A signer for crafted tokens, with the matching bundle entry.
enum Signer {
    Ec(Box<EcdsaKeyPair>),
    Rsa(Arc<RsaKeyPair>, &'static dyn sig::RsaEncoding),
}

impl Signer {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ec(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Self::Rsa(k, enc) => {
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(*enc, &rng, msg, &mut out).unwrap();
                out
            }
        }
    }
}

fn ec_signer(
    signing: &'static sig::EcdsaSigningAlgorithm,
    crv: EcCurve,
    kid: &str,
) -> (Signer, JwtAuthority) {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(signing, doc.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let len = crv.coordinate_len();
    let key = JwtPublicKey::Ec {
        crv,
        x: point[1..=len].to_vec(),
        y: point[1 + len..].to_vec(),
    };
    let kid = kid.to_owned();
    (Signer::Ec(Box::new(pair)), JwtAuthority { kid, key })
}

/// One RSA-2048 key per test binary: generation is the slow part.
fn rsa_key() -> &'static (Arc<RsaKeyPair>, JwtPublicKey) {
    static KEY: OnceLock<(Arc<RsaKeyPair>, JwtPublicKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs8::EncodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let pair = RsaKeyPair::from_pkcs8(der.as_bytes()).unwrap();
        let public = JwtPublicKey::Rsa {
            n: key.n().to_bytes_be(),
            e: key.e().to_bytes_be(),
        };
        (Arc::new(pair), public)
    })
}

fn rsa_signer(enc: &'static dyn sig::RsaEncoding, kid: &str) -> (Signer, JwtAuthority) {
    let (pair, key) = rsa_key();
    let authority = JwtAuthority {
        kid: kid.to_owned(),
        key: key.clone(),
    };
    (Signer::Rsa(pair.clone(), enc), authority)
}

fn craft(signer: &Signer, header: &Value, claims: &Value) -> String {
    let signed = format!("{}.{}", b64(header), b64(claims));
    let s = URL_SAFE_NO_PAD.encode(signer.sign(signed.as_bytes()));
    format!("{signed}.{s}")
}

fn bundle_with(keys: Vec<JwtAuthority>) -> Arc<TrustBundle> {
    let mut b = TrustBundle::empty(TrustDomain::new("mesh-a.test").unwrap());
    b.jwt_authorities = keys;
    Arc::new(b)
}

fn check(token: &str, aud: &str, bundle: &Arc<TrustBundle>) -> Result<ValidatedJwt, JwtError> {
    let lookup = |td: &TrustDomain| (td == &bundle.trust_domain).then(|| bundle.clone());
    validate(token, aud, lookup, now())
}

fn good_claims() -> Value {
    let t = unix_whole_secs(now());
    json!({"sub": id().as_str(), "aud": ["svc"], "exp": t + 300, "iat": t})
}

#[test]
fn a_minted_token_validates_and_has_the_spiffe_header_and_claims() {
    // SPIFFE.md §4: header {alg,kid,typ} only; claims sub, aud (array), exp, iat.
    let key = JwtSigningKey::generate().unwrap();
    let exp = now() + Duration::from_secs(300);
    let token = mint(&key, &id(), &["a".into(), "b".into()], exp, now()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let header = decode_object(parts[0], "h").unwrap();
    assert_eq!(
        Value::Object(header),
        json!({"alg": "ES256", "kid": key.kid, "typ": "JWT"})
    );
    let bundle = bundle_with(vec![JwtAuthority {
        kid: key.kid.clone(),
        key: key.public_key(),
    }]);
    let ok = check(&token, "b", &bundle).unwrap();
    assert_eq!(ok.spiffe_id, id());
    let t = unix_whole_secs(now());
    assert_eq!(
        Value::Object(ok.claims),
        json!({"sub": id().as_str(), "aud": ["a", "b"], "exp": t + 300, "iat": t})
    );
    assert!(matches!(
        mint(&key, &id(), &["a".into()], now(), now()),
        Err(JwtError::Mint(_))
    ));
}

#[test]
fn every_allowed_algorithm_with_a_matching_key_verifies() {
    // JWT-SVID 1.3.3: RS/ES/PS; ring verifies all but ES512 (no P-521 keys here).
    let signers = [
        ec_signer(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EcCurve::P256,
            "es256",
        ),
        ec_signer(
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            EcCurve::P384,
            "es384",
        ),
        rsa_signer(&sig::RSA_PKCS1_SHA256, "rs256"),
        rsa_signer(&sig::RSA_PKCS1_SHA384, "rs384"),
        rsa_signer(&sig::RSA_PKCS1_SHA512, "rs512"),
        rsa_signer(&sig::RSA_PSS_SHA256, "ps256"),
        rsa_signer(&sig::RSA_PSS_SHA384, "ps384"),
        rsa_signer(&sig::RSA_PSS_SHA512, "ps512"),
    ];
    let bundle = bundle_with(signers.iter().map(|(_, a)| a.clone()).collect());
    for (signer, authority) in &signers {
        let alg = authority.kid.to_uppercase();
        let header = json!({"alg": alg, "kid": authority.kid, "typ": "JOSE"});
        let token = craft(signer, &header, &good_claims());
        assert!(check(&token, "svc", &bundle).is_ok(), "{alg}");
        // The same signature announced as another algorithm must fail.
        let lie = if alg.starts_with("RS") {
            "PS256"
        } else {
            "RS256"
        };
        let header = json!({"alg": lie, "kid": authority.kid});
        let token = craft(signer, &header, &good_claims());
        assert!(check(&token, "svc", &bundle).is_err(), "{alg} as {lie}");
    }
}

#[test]
fn disallowed_algorithms_and_types_are_rejected_before_key_lookup() {
    // JWT-SVID 1.3.3 and 1.3.5: none, HS*, EdDSA; typ other than JWT/JOSE.
    let (signer, authority) = ec_signer(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, EcCurve::P256, "k");
    let bundle = bundle_with(vec![authority]);
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&good_claims()));
    let err = check(&unsigned, "svc", &bundle).unwrap_err();
    assert_eq!(err, JwtError::UnsupportedAlgorithm("none".into()));
    for alg in ["HS256", "HS512", "EdDSA", "es256"] {
        let token = craft(&signer, &json!({"alg": alg, "kid": "k"}), &good_claims());
        let err = check(&token, "svc", &bundle).unwrap_err();
        assert_eq!(err, JwtError::UnsupportedAlgorithm(alg.into()));
    }
    let token = craft(
        &signer,
        &json!({"alg": "ES256", "kid": "k", "typ": "jwt+x"}),
        &good_claims(),
    );
    let err = check(&token, "svc", &bundle).unwrap_err();
    assert_eq!(err, JwtError::UnsupportedType("jwt+x".into()));
    let crit = json!({"alg": "ES256", "kid": "k", "crit": ["b64"], "b64": false});
    let token = craft(&signer, &crit, &good_claims());
    assert_eq!(check(&token, "svc", &bundle), Err(JwtError::CriticalHeader));
}

#[test]
fn structural_problems_are_reported() {
    let (signer, authority) = ec_signer(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, EcCurve::P256, "k");
    let bundle = bundle_with(vec![authority]);
    let header = json!({"alg": "ES256", "kid": "k"});
    for token in ["", "a.b", "a.b.c.d", "{\"payload\":\"x\"}", "!!.??.xx"] {
        let err = check(token, "svc", &bundle).unwrap_err();
        assert!(matches!(err, JwtError::Malformed(_)), "{token:?}: {err:?}");
    }
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        check(&huge, "svc", &bundle),
        Err(JwtError::Malformed(_))
    ));
    let no_kid = craft(&signer, &json!({"alg": "ES256"}), &good_claims());
    assert_eq!(check(&no_kid, "svc", &bundle), Err(JwtError::MissingKeyId));
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("sub");
    let token = craft(&signer, &header, &claims);
    assert_eq!(check(&token, "svc", &bundle), Err(JwtError::MissingSubject));
    let mut claims = good_claims();
    claims["sub"] = json!("spiffe://Mesh-A.test/web");
    let token = craft(&signer, &header, &claims);
    assert!(matches!(
        check(&token, "svc", &bundle),
        Err(JwtError::InvalidSubject(_))
    ));
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("exp");
    let token = craft(&signer, &header, &claims);
    assert_eq!(check(&token, "svc", &bundle), Err(JwtError::MissingExpiry));
}

#[test]
fn the_bundle_of_the_subjects_trust_domain_and_the_kid_pick_the_key() {
    // Workload API 1.7.6: only sub's own trust domain's bundle; SPIFFE.md 1.3.4: kid.
    let (signer, authority) = ec_signer(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, EcCurve::P256, "k");
    let (_, other) = ec_signer(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, EcCurve::P256, "k");
    let bundle = bundle_with(vec![authority]);
    let header = json!({"alg": "ES256", "kid": "k"});
    let mut claims = good_claims();
    claims["sub"] = json!("spiffe://mesh-b.test/web");
    let token = craft(&signer, &header, &claims);
    let err = check(&token, "svc", &bundle).unwrap_err();
    assert_eq!(
        err,
        JwtError::NoBundle(TrustDomain::new("mesh-b.test").unwrap())
    );
    let token = craft(
        &signer,
        &json!({"alg": "ES256", "kid": "k2"}),
        &good_claims(),
    );
    assert!(matches!(
        check(&token, "svc", &bundle),
        Err(JwtError::UnknownKey { .. })
    ));
    // Same kid, another key: the signature fails.
    let token = craft(&signer, &header, &good_claims());
    assert_eq!(
        check(&token, "svc", &bundle_with(vec![other])),
        Err(JwtError::BadSignature)
    );
    // A P-256 key cannot verify ES384, an EC key cannot verify RS256.
    for alg in ["ES384", "RS256"] {
        let token = craft(&signer, &json!({"alg": alg, "kid": "k"}), &good_claims());
        assert!(
            matches!(
                check(&token, "svc", &bundle),
                Err(JwtError::KeyAlgorithmMismatch { .. })
            ),
            "{alg}"
        );
    }
    // A tampered payload fails the signature.
    let token = craft(&signer, &header, &good_claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = good_claims();
    claims["sub"] = json!("spiffe://mesh-a.test/admin");
    parts[1] = b64(&claims);
    assert_eq!(
        check(&parts.join("."), "svc", &bundle),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn times_are_checked_with_a_sixty_second_leeway() {
    // JWT-SVID 1.3.8, SPIFFE.md §4 step 6.
    let (signer, authority) = ec_signer(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, EcCurve::P256, "k");
    let bundle = bundle_with(vec![authority]);
    let header = json!({"alg": "ES256", "kid": "k"});
    let t = unix_whole_secs(now());
    let cases = [
        (json!({"exp": t - 59}), Ok(())),
        (json!({"exp": t - 61}), Err(JwtError::Expired)),
        (json!({"nbf": t + 59}), Ok(())),
        (json!({"nbf": t + 61}), Err(JwtError::NotYetValid)),
        (json!({"iat": t + 61}), Err(JwtError::IssuedInFuture)),
        (
            json!({"exp": "soon"}),
            Err(JwtError::Malformed("a time claim is not a number")),
        ),
    ];
    for (patch, expected) in cases {
        let mut claims = good_claims();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let token = craft(&signer, &header, &claims);
        assert_eq!(
            check(&token, "svc", &bundle).map(|_| ()),
            expected,
            "{patch}"
        );
    }
}

#[test]
fn the_audience_must_be_present_and_contain_ours() {
    // JWT-SVID 1.3.7; a single string is legal (SPIFFE.md §7.9) and comes back as a list.
    let (signer, authority) = ec_signer(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, EcCurve::P256, "k");
    let bundle = bundle_with(vec![authority]);
    let header = json!({"alg": "ES256", "kid": "k"});
    let mut claims = good_claims();
    claims["aud"] = json!("svc");
    let ok = check(&craft(&signer, &header, &claims), "svc", &bundle).unwrap();
    assert_eq!(ok.claims["aud"], json!(["svc"]));
    let token = craft(&signer, &header, &good_claims());
    assert_eq!(
        check(&token, "other", &bundle),
        Err(JwtError::AudienceMismatch("other".into()))
    );
    for aud in [json!([]), json!(null), json!([""]), json!([1]), json!("")] {
        claims["aud"] = aud.clone();
        let token = craft(&signer, &header, &claims);
        assert_eq!(
            check(&token, "svc", &bundle),
            Err(JwtError::MissingAudience),
            "{aud}"
        );
    }
}

#[test]
fn claims_become_a_protobuf_struct() {
    use prost_types::value::Kind;
    let claims = json!({"aud": ["a"], "exp": 5, "x": {"y": true, "z": null}});
    let s = claims_to_struct(claims.as_object().unwrap());
    assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(5.0)));
    let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else {
        panic!("aud is a list");
    };
    assert_eq!(aud.values[0].kind, Some(Kind::StringValue("a".into())));
    let Some(Kind::StructValue(x)) = &s.fields["x"].kind else {
        panic!("x is a struct");
    };
    assert_eq!(x.fields["y"].kind, Some(Kind::BoolValue(true)));
    assert_eq!(x.fields["z"].kind, Some(Kind::NullValue(0)));
}
