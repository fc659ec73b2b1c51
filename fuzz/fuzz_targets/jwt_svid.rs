//! JWT-SVID validation (`jwt::validate`), as ValidateJWTSVID runs it on a token any local caller
//! sends.
//!
//! The first byte picks a mode:
//! - 0, raw: the rest is the token. Its signature cannot be made without our keys, so it must be
//!   refused whatever it holds (`alg: none`, HS256, key confusion, junk...).
//! - 1, signed: the rest is `header JSON 0xFF claims JSON 0xFF audience`; the harness signs the
//!   token with the bundle key the header's `kid` names (P-256 when it names none; the RSA key
//!   signs with the header's RS*/PS* padding, RS256 otherwise), so the
//!   validator's decision past the signature (alg/key match, `typ`, `crit`, `sub`, `exp`, `nbf`,
//!   `iat`, `aud`) is compared with a model written here from JWT-SVID §2-§4 and SPIFFE.md 1.3.
//!   An accepted token's SPIFFE ID is its `sub`, its claims are the token's with `aud` as a list.
//! - 2, tampered: as 1, then one byte of the token is changed (position and XOR from the two
//!   bytes after the mode): never accepted.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use meshtrust::bundle::{EcCurve, JwtAuthority, JwtPublicKey, TrustBundle};
use meshtrust::spiffe_id::{SpiffeId, TrustDomain};
use meshtrust::workload_api::jwt::{self, LEEWAY_SECS, MAX_TOKEN_LEN};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Map, Value};

const NOW_SECS: u64 = 1_900_000_000;
const TD: &str = "mesh-a.test";
const ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

struct Keys {
    p256: EcdsaKeyPair,
    p384: EcdsaKeyPair,
    rsa: RsaKeyPair,
    bundle: Arc<TrustBundle>,
}

/// An RSA-2048 key pair (ring cannot generate RSA keys; the `rsa` crate does, as in src/ca).
fn rsa_key() -> RsaKeyPair {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key generation");
    let der = key.to_pkcs8_der().expect("pkcs8");
    RsaKeyPair::from_pkcs8(der.as_bytes()).expect("rsa key")
}

fn ec_key(alg: &'static signature::EcdsaSigningAlgorithm) -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key generation");
    EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).expect("key")
}

fn ec_authority(kid: &str, crv: EcCurve, pair: &EcdsaKeyPair) -> JwtAuthority {
    let point = pair.public_key().as_ref();
    let len = crv.coordinate_len();
    JwtAuthority {
        kid: kid.to_owned(),
        key: JwtPublicKey::Ec {
            crv,
            x: point[1..=len].to_vec(),
            y: point[1 + len..].to_vec(),
        },
    }
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let p256 = ec_key(&signature::ECDSA_P256_SHA256_FIXED_SIGNING);
        let p384 = ec_key(&signature::ECDSA_P384_SHA384_FIXED_SIGNING);
        let rsa = rsa_key();
        let mut bundle = TrustBundle::empty(TrustDomain::new(TD).expect("td"));
        bundle.jwt_authorities = vec![
            ec_authority("k256", EcCurve::P256, &p256),
            ec_authority("k384", EcCurve::P384, &p384),
            JwtAuthority {
                kid: "rsa".to_owned(),
                key: {
                    let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
                    JwtPublicKey::Rsa {
                        n: public.n,
                        e: public.e,
                    }
                },
            },
        ];
        Keys {
            p256,
            p384,
            rsa,
            bundle: Arc::new(bundle),
        }
    })
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn validate(token: &str, audience: &str) -> Result<jwt::ValidatedJwt, jwt::JwtError> {
    let bundle = &keys().bundle;
    jwt::validate(
        token,
        audience,
        |td| (td == &bundle.trust_domain).then(|| bundle.clone()),
        now(),
    )
}

/// Signs `header.claims` with the key the header's `kid` names (P-256 otherwise): EC keys with
/// their curve's ES alg, the RSA key with the header's RS*/PS* alg (RS256 for any other). Returns
/// the token and the kid of the key that signed.
fn sign(header: &[u8], claims: &[u8]) -> (String, &'static str) {
    let k = keys();
    let header_value = serde_json::from_slice::<Value>(header).ok();
    let field = |name: &str| {
        header_value
            .as_ref()
            .and_then(|h| h.get(name).and_then(Value::as_str).map(str::to_owned))
    };
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let rng = SystemRandom::new();
    let (sig, signer) = match field("kid").as_deref() {
        Some("rsa") => {
            let padding: &'static dyn signature::RsaEncoding = match field("alg").as_deref() {
                Some("RS384") => &signature::RSA_PKCS1_SHA384,
                Some("RS512") => &signature::RSA_PKCS1_SHA512,
                Some("PS256") => &signature::RSA_PSS_SHA256,
                Some("PS384") => &signature::RSA_PSS_SHA384,
                Some("PS512") => &signature::RSA_PSS_SHA512,
                _ => &signature::RSA_PKCS1_SHA256,
            };
            let mut sig = vec![0; k.rsa.public().modulus_len()];
            k.rsa
                .sign(padding, &rng, token.as_bytes(), &mut sig)
                .expect("signing");
            (sig, "rsa")
        }
        Some("k384") => (sign_ec(&k.p384, &token), "k384"),
        _ => (sign_ec(&k.p256, &token), "k256"),
    };
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    (token, signer)
}

fn sign_ec(pair: &EcdsaKeyPair, msg: &str) -> Vec<u8> {
    pair.sign(&SystemRandom::new(), msg.as_bytes())
        .expect("signing")
        .as_ref()
        .to_vec()
}

/// A NumericDate claim: `Ok(None)` when absent, `Err` when present but not a number.
fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, ()> {
    claims.get(name).map(|v| v.as_f64().ok_or(())).transpose()
}

/// The model: should a token with this header and these claims, signed by `signer`, be accepted
/// for `audience`? (JWT-SVID §3-§4, SPIFFE.md 1.3: alg allow-list, typ JWT/JOSE, no crit, kid of a
/// key of sub's trust domain that can make alg's signatures, sub a SPIFFE ID, exp required, 60 s
/// leeway on exp/nbf/iat, aud a non-empty string or non-empty list of non-empty strings that
/// holds the audience.)
fn model(token_len: usize, header: &[u8], claims: &[u8], signer: &str, audience: &str) -> bool {
    let (Ok(Value::Object(header)), Ok(Value::Object(claims))) = (
        serde_json::from_slice::<Value>(header),
        serde_json::from_slice::<Value>(claims),
    ) else {
        return false;
    };
    let now = NOW_SECS as f64;
    let Some(alg) = header.get("alg").and_then(Value::as_str) else {
        return false;
    };
    let typ_ok = match header.get("typ") {
        None => true,
        Some(Value::String(t)) => t == "JWT" || t == "JOSE",
        Some(_) => false,
    };
    let sub_ok = claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(|s| SpiffeId::new(s).ok())
        .is_some_and(|id| id.trust_domain().as_str() == TD);
    let kid = header.get("kid").and_then(Value::as_str);
    // The harness signed with `signer`'s key: only that kid verifies, with its curve's ES alg for
    // an EC key, with the header's RS*/PS* alg for the RSA key.
    let signature_ok = kid == Some(signer)
        && matches!(
            (alg, signer),
            ("ES256", "k256")
                | ("ES384", "k384")
                | (
                    "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512",
                    "rsa"
                )
        );
    let times_ok = match (
        numeric(&claims, "exp"),
        numeric(&claims, "nbf"),
        numeric(&claims, "iat"),
    ) {
        (Ok(Some(exp)), Ok(nbf), Ok(iat)) => {
            now <= exp + LEEWAY_SECS
                && nbf.is_none_or(|t| t <= now + LEEWAY_SECS)
                && iat.is_none_or(|t| t <= now + LEEWAY_SECS)
        }
        _ => false,
    };
    let auds: Option<Vec<&str>> = match claims.get("aud") {
        Some(Value::String(s)) => Some(vec![s.as_str()]),
        Some(Value::Array(list)) => list.iter().map(Value::as_str).collect(),
        _ => None,
    };
    let aud_ok = auds.is_some_and(|auds| {
        !auds.is_empty() && auds.iter().all(|a| !a.is_empty()) && auds.contains(&audience)
    });
    token_len <= MAX_TOKEN_LEN
        && ALGS.contains(&alg)
        && typ_ok
        && !header.contains_key("crit")
        && sub_ok
        && signature_ok
        && times_ok
        && aud_ok
}

fn split3(rest: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut parts = rest.splitn(3, |b| *b == 0xff);
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let audience = parts.next().unwrap_or_default();
    (header, claims, audience)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            let result = validate(token, "spiffe://mesh-a.test/db");
            assert!(
                result.is_err(),
                "a token nobody signed was accepted: {result:?}"
            );
        }
        1 => {
            let (header, claims, audience) = split3(rest);
            let Ok(audience) = std::str::from_utf8(audience) else {
                return;
            };
            let (token, signer) = sign(header, claims);
            let expected = model(token.len(), header, claims, signer, audience);
            match validate(&token, audience) {
                Ok(valid) => {
                    assert!(expected, "accepted against the model: {valid:?}");
                    let Ok(Value::Object(mut input)) = serde_json::from_slice::<Value>(claims)
                    else {
                        panic!("accepted claims that are not a JSON object");
                    };
                    assert_eq!(Some(valid.spiffe_id.as_str()), input["sub"].as_str());
                    let aud = valid.claims["aud"].as_array().expect("aud is a list");
                    assert!(aud.iter().any(|a| a.as_str() == Some(audience)));
                    input.insert("aud".to_owned(), Value::Array(aud.clone()));
                    assert_eq!(valid.claims, input, "claims are the token's, aud as a list");
                    let fields = jwt::claims_to_struct(&valid.claims).fields;
                    assert_eq!(fields.len(), valid.claims.len());
                }
                Err(e) => {
                    assert!(!expected, "refused against the model: {e}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        _ => {
            let [pos_hi, pos_lo, flip, rest @ ..] = rest else {
                return;
            };
            let (header, claims, audience) = split3(rest);
            let Ok(audience) = std::str::from_utf8(audience) else {
                return;
            };
            let (token, _) = sign(header, claims);
            let mut bytes = token.into_bytes();
            let pos = usize::from(u16::from_be_bytes([*pos_hi, *pos_lo])) % bytes.len();
            bytes[pos] ^= (*flip).max(1);
            let Ok(tampered) = String::from_utf8(bytes) else {
                return;
            };
            let result = validate(&tampered, audience);
            assert!(result.is_err(), "a tampered token was accepted: {result:?}");
        }
    }
});
