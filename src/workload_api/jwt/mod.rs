//! JWT-SVIDs: minting with the active authority's ES256 key, and a validator for
//! ValidateJWTSVID (JWT-SVID §2-§4, SPIFFE.md 1.3 and the step list of §4 / §6.5).
//!
//! Validation runs in go-spiffe's order: compact JWS with 3 parts, `alg` allow-list (so `none`
//! and `HS*` never reach key lookup), `typ`, `sub` and `exp` present, `kid` present, the JWT
//! bundle of **sub's** trust domain, the key by `kid`, the signature (ring), then `exp` / `nbf` /
//! `iat` with a 60 s leeway, then the audience. Unlike go-jose with an empty expected list, an
//! empty or missing `aud` is always rejected (JWT-SVID 1.3.7).

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value, json};

use crate::bundle::{EcCurve, JwtPublicKey, TrustBundle};
use crate::ca::key::JwtSigningKey;
use crate::spiffe_id::{SpiffeId, TrustDomain};

#[cfg(test)]
mod tests;

/// Clock skew tolerated on `exp`, `nbf` and `iat` (go-jose's default leeway).
pub const LEEWAY_SECS: f64 = 60.0;

/// Longest token we look at: a JWT-SVID is a few hundred bytes; this only bounds the work.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a token was not minted or not accepted. Messages go back to the caller as the
/// InvalidArgument reason, so they say what is wrong without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a compact JWS of three base64url parts with JSON object header and payload.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not one of RS/ES/PS 256/384/512 (JWT-SVID 1.3.3).
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// `typ` is set to something else than `JWT` or `JOSE` (JWT-SVID 1.3.5).
    #[error("unsupported token type {0:?}")]
    UnsupportedType(String),
    /// The header carries `crit`: no extension is understood here (RFC 7515 §4.1.11).
    #[error("token header has critical extensions")]
    CriticalHeader,
    /// No `kid` in the header (de facto required, SPIFFE.md 1.3.4).
    #[error("token header missing key id")]
    MissingKeyId,
    /// No `sub`, or not a string.
    #[error("token has no subject")]
    MissingSubject,
    /// `sub` is not a valid SPIFFE ID.
    #[error("token subject is not a valid SPIFFE ID: {0}")]
    InvalidSubject(String),
    /// No numeric `exp` (JWT-SVID 1.3.8).
    #[error("token has no expiry")]
    MissingExpiry,
    /// No JWT bundle for the subject's trust domain (Workload API 1.7.6).
    #[error("no JWT bundle for trust domain {0}")]
    NoBundle(TrustDomain),
    /// The bundle has no key with that `kid`.
    #[error("key {kid:?} not found in the JWT bundle of {trust_domain}")]
    UnknownKey {
        /// The header's key ID.
        kid: String,
        /// The subject's trust domain.
        trust_domain: TrustDomain,
    },
    /// The key's type or curve cannot produce `alg` signatures.
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyAlgorithmMismatch {
        /// The header's key ID.
        kid: String,
        /// The header's algorithm.
        alg: &'static str,
    },
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` (plus leeway) is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// `aud` missing, empty, or not strings (JWT-SVID 1.3.7).
    #[error("token has no audience")]
    MissingAudience,
    /// The expected audience is not among the token's.
    #[error("token audience does not include {0:?}")]
    AudienceMismatch(String),
    /// Minting failed (signing, or the expiry is not after now).
    #[error("cannot mint a JWT-SVID: {0}")]
    Mint(String),
}

/// The signature algorithms a JWT-SVID may use (JWT-SVID §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
    Es512,
    Ps256,
    Ps384,
    Ps512,
}

impl Alg {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }
}

/// A token that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// Every claim, with `aud` normalised to a list of strings.
    pub claims: Map<String, Value>,
}

/// Seconds since the Unix epoch, fractional (0 before it).
fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whole seconds since the Unix epoch (a JWT NumericDate as we write it).
fn unix_whole_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints a JWT-SVID for `id`: header `{"alg":"ES256","kid":..,"typ":"JWT"}` and nothing else
/// (JWT-SVID §2), claims `aud` (always an array), `exp`, `iat`, `sub` (SPIFFE.md §4).
///
/// # Errors
/// [`JwtError::Mint`] when `exp` is not after `now` or signing fails.
pub fn mint(
    key: &JwtSigningKey,
    id: &SpiffeId,
    audience: &[String],
    exp: SystemTime,
    now: SystemTime,
) -> Result<String, JwtError> {
    let (exp, iat) = (unix_whole_secs(exp), unix_whole_secs(now));
    if exp <= iat {
        return Err(JwtError::Mint("the signing key expires now".to_owned()));
    }
    // serde_json's map is ordered, so the bytes are deterministic.
    let header = json!({ "alg": "ES256", "kid": key.kid, "typ": "JWT" });
    let claims = json!({ "aud": audience, "exp": exp, "iat": iat, "sub": id.as_str() });
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key
        .sign(token.as_bytes())
        .map_err(|e| JwtError::Mint(e.to_string()))?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(token)
}

fn decode_object(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(what)),
    }
}

/// A NumericDate claim: absent is `None`, present but not a number is malformed.
fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or(JwtError::Malformed("a time claim is not a number")),
    }
}

/// `aud` as a list: a single string or an array of strings (RFC 7519 §4.1.3, SPIFFE.md §7.9).
fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
    let list = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::MissingAudience)?,
        _ => return Err(JwtError::MissingAudience),
    };
    if list.is_empty() || list.iter().any(String::is_empty) {
        return Err(JwtError::MissingAudience);
    }
    Ok(list)
}

/// Validates `token` for `audience` with the JWT bundle `bundle_of(sub's trust domain)`.
///
/// # Errors
/// The first [`JwtError`] in the order of the module docs.
pub fn validate(
    token: &str,
    audience: &str,
    bundle_of: impl Fn(&TrustDomain) -> Option<Arc<TrustBundle>>,
    now: SystemTime,
) -> Result<ValidatedJwt, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not a compact JWS of three parts"));
    };
    let header = decode_object(h, "header is not base64url JSON")?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("header has no alg"))?;
    let alg =
        Alg::parse(alg_name).ok_or_else(|| JwtError::UnsupportedAlgorithm(alg_name.to_owned()))?;
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(JwtError::UnsupportedType(shown));
        }
    }
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let claims = decode_object(p, "payload is not base64url JSON")?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(JwtError::MissingSubject)?;
    let spiffe_id = SpiffeId::new(sub).map_err(|e| JwtError::InvalidSubject(e.to_string()))?;
    let exp = numeric(&claims, "exp")?.ok_or(JwtError::MissingExpiry)?;
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid,
        _ => return Err(JwtError::MissingKeyId),
    };
    let td = spiffe_id.trust_domain();
    let bundle = bundle_of(td).ok_or_else(|| JwtError::NoBundle(td.clone()))?;
    let key = bundle
        .jwt_authorities
        .iter()
        .find(|a| &a.kid == kid)
        .ok_or_else(|| JwtError::UnknownKey {
            kid: kid.clone(),
            trust_domain: td.clone(),
        })?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signed = &token[..h.len() + 1 + p.len()];
    verify(alg, &key.key, signed.as_bytes(), &sig).map_err(|e| match e {
        VerifyError::Mismatch => JwtError::KeyAlgorithmMismatch {
            kid: kid.clone(),
            alg: alg.name(),
        },
        VerifyError::Bad => JwtError::BadSignature,
    })?;

    let now = unix_secs(now);
    if now > exp + LEEWAY_SECS {
        return Err(JwtError::Expired);
    }
    if numeric(&claims, "nbf")?.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err(JwtError::NotYetValid);
    }
    if numeric(&claims, "iat")?.is_some_and(|iat| iat > now + LEEWAY_SECS) {
        return Err(JwtError::IssuedInFuture);
    }
    let auds = audiences(&claims)?;
    if !auds.iter().any(|a| a == audience) {
        return Err(JwtError::AudienceMismatch(audience.to_owned()));
    }
    let mut claims = claims;
    claims.insert(
        "aud".to_owned(),
        Value::Array(auds.into_iter().map(Value::String).collect()),
    );
    Ok(ValidatedJwt { spiffe_id, claims })
}

enum VerifyError {
    /// This key cannot make `alg` signatures (type or curve).
    Mismatch,
    /// The signature is wrong.
    Bad,
}

fn verify(alg: Alg, key: &JwtPublicKey, msg: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
    use Alg::*;
    let bad = |_| VerifyError::Bad;
    match (alg, key) {
        (Es256 | Es384, JwtPublicKey::Ec { crv, x, y }) => {
            let algorithm: &'static signature::EcdsaVerificationAlgorithm = match (alg, crv) {
                (Es256, EcCurve::P256) => &signature::ECDSA_P256_SHA256_FIXED,
                (Es384, EcCurve::P384) => &signature::ECDSA_P384_SHA384_FIXED,
                _ => return Err(VerifyError::Mismatch),
            };
            let point = [&[0x04][..], x, y].concat();
            UnparsedPublicKey::new(algorithm, point)
                .verify(msg, sig)
                .map_err(bad)
        }
        (Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512, JwtPublicKey::Rsa { n, e }) => {
            let params: &'static signature::RsaParameters = match alg {
                Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .map_err(bad)
        }
        // ES512 (P-521) has no key type here, and ring cannot verify it.
        _ => Err(VerifyError::Mismatch),
    }
}

/// Claims as a `google.protobuf.Struct` for ValidateJWTSVIDResponse.
pub fn claims_to_struct(claims: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims
            .iter()
            .map(|(k, v)| (k.clone(), to_proto_value(v)))
            .collect(),
    }
}

fn to_proto_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_proto_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(claims_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
