//! One JWK of a SPIFFE bundle: writing a key for publication and judging one received key on its
//! own (SPIFFE.md 1.2.15-16, 1.3.11-12, 1.4.6-9 and "Decisions already taken").

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde_json::{Map, Value};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{EcCurve, JwtAuthority, JwtPublicKey};

/// `use` of an X.509 CA key.
pub(crate) const USE_X509: &str = "x509-svid";
/// `use` of a JWT-SVID signing key.
pub(crate) const USE_JWT: &str = "jwt-svid";

/// A JWK as we write it. Field order is output order, so the bytes are deterministic.
#[derive(Debug, Serialize)]
pub(crate) struct JwkOut {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    key_use: Option<&'static str>,
    kty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<[String; 1]>,
}

impl JwkOut {
    fn with_params(key_use: Option<&'static str>, key: &JwtPublicKey) -> Self {
        let mut out = Self {
            key_use,
            kty: key.kty(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            kid: None,
            x5c: None,
        };
        match key {
            JwtPublicKey::Ec { crv, x, y } => {
                out.crv = Some(crv.name());
                out.x = Some(URL_SAFE_NO_PAD.encode(x));
                out.y = Some(URL_SAFE_NO_PAD.encode(y));
            }
            JwtPublicKey::Rsa { n, e } => {
                out.n = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(n)));
                out.e = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(e)));
            }
        }
        out
    }

    /// An X.509 CA as published: params from its SPKI, exactly one cert in `x5c`, no `kid`
    /// (X509-SVID 1.2.15).
    ///
    /// # Errors
    /// A reason when the certificate does not parse or its key type has no JWK form here.
    pub(crate) fn x509(cert: &CertificateDer<'_>) -> Result<Self, String> {
        let key = cert_public_key(cert)?;
        let mut out = Self::with_params(Some(USE_X509), &key);
        out.x5c = Some([STANDARD.encode(cert.as_ref())]);
        Ok(out)
    }

    /// A JWT signing key, with `use: jwt-svid` (SPIFFE bundle) or without `use` (plain JWKS).
    ///
    /// # Errors
    /// A reason when the key breaks the model's invariants (empty kid, wrong coordinate size).
    pub(crate) fn jwt(
        authority: &JwtAuthority,
        key_use: Option<&'static str>,
    ) -> Result<Self, String> {
        if authority.kid.is_empty() {
            return Err("empty kid".to_owned());
        }
        check_key(&authority.key)?;
        let mut out = Self::with_params(key_use, &authority.key);
        out.kid = Some(authority.kid.clone());
        Ok(out)
    }
}

/// A key that passed all checks.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// An X.509 authority: the first `x5c` certificate.
    X509(CertificateDer<'static>),
    /// A JWT authority.
    Jwt(JwtAuthority),
}

/// Judges one received JWK. `Ok` carries the key and notes (kept, but worth logging); `Err`
/// carries why the key is ignored.
pub(crate) fn decode(value: &Value) -> Result<(Decoded, Vec<String>), String> {
    let obj = value.as_object().ok_or("not a JSON object")?;
    let key_use = match obj.get("use") {
        None | Some(Value::Null) => return Err("missing use".to_owned()),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("use is not a string".to_owned()),
    };
    if key_use != USE_X509 && key_use != USE_JWT {
        return Err(format!("unsupported use {key_use:?}"));
    }
    let kty = match required_str(obj, "kty")? {
        kty @ ("EC" | "RSA") => kty,
        other => return Err(format!("unsupported kty {other:?}")),
    };
    let mut notes = Vec::new();
    if key_use == USE_JWT {
        let kid = match obj.get("kid") {
            None | Some(Value::Null) => return Err("jwt-svid key without kid".to_owned()),
            Some(Value::String(kid)) if kid.is_empty() => {
                return Err("jwt-svid key with an empty kid".to_owned());
            }
            Some(Value::String(kid)) => kid.clone(),
            Some(_) => return Err("kid is not a string".to_owned()),
        };
        let key = jwk_params(obj, kty)?;
        return Ok((Decoded::Jwt(JwtAuthority { kid, key }), notes));
    }

    // X509-SVID 1.2.16: missing or empty x5c ⇒ ignore; several ⇒ use the first only.
    let x5c = match obj.get("x5c") {
        None | Some(Value::Null) => return Err("x509-svid key without x5c".to_owned()),
        Some(Value::Array(certs)) => certs,
        Some(_) => return Err("x5c is not an array".to_owned()),
    };
    let first = match x5c.first() {
        None => return Err("x509-svid key with an empty x5c".to_owned()),
        Some(Value::String(first)) => first,
        Some(_) => return Err("x5c[0] is not a string".to_owned()),
    };
    if x5c.len() > 1 {
        notes.push(format!(
            "x5c holds {} certificates; only the first is used",
            x5c.len()
        ));
    }
    if obj.contains_key("kid") {
        notes.push("kid on an x509-svid key is ignored".to_owned());
    }
    let der = STANDARD
        .decode(first)
        .map_err(|e| format!("x5c[0] is not standard base64: {e}"))?;
    let cert_key = cert_public_key(&der)?;
    if cert_key.kty() != kty {
        return Err(format!(
            "kty {kty} does not match the certificate's {} key",
            cert_key.kty()
        ));
    }
    if jwk_params(obj, kty)? != cert_key {
        return Err("key parameters do not match the x5c[0] certificate".to_owned());
    }
    Ok((Decoded::X509(CertificateDer::from(der)), notes))
}

/// The public key of a DER certificate, in JWK terms (EC P-256/P-384 or RSA).
///
/// # Errors
/// A reason when the DER is not one whole certificate or the key has no JWK form here.
pub(crate) fn cert_public_key(der: &[u8]) -> Result<JwtPublicKey, String> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("x5c[0] is not a DER certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the x5c[0] certificate".to_owned());
    }
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let (n, e) = (
                strip_leading_zeros(rsa.modulus),
                strip_leading_zeros(rsa.exponent),
            );
            if n.is_empty() || e.is_empty() {
                return Err("certificate RSA key has a zero modulus or exponent".to_owned());
            }
            Ok(JwtPublicKey::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            })
        }
        Ok(PublicKey::EC(point)) => {
            let oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let crv = match oid {
                Some(oid) if oid == OID_EC_P256 => EcCurve::P256,
                Some(oid) if oid == OID_NIST_EC_P384 => EcCurve::P384,
                _ => return Err("certificate EC key is not on P-256 or P-384".to_owned()),
            };
            let len = crv.coordinate_len();
            match point.data() {
                [0x04, xy @ ..] if xy.len() == 2 * len => Ok(JwtPublicKey::Ec {
                    crv,
                    x: xy[..len].to_vec(),
                    y: xy[len..].to_vec(),
                }),
                _ => Err("certificate EC key is not an uncompressed point of its curve".to_owned()),
            }
        }
        Ok(_) => Err("certificate key is neither EC nor RSA".to_owned()),
        Err(e) => Err(format!("certificate public key does not parse: {e}")),
    }
}

/// Reads the key parameters of a JWK whose `kty` is already known to be `EC` or `RSA`.
fn jwk_params(obj: &Map<String, Value>, kty: &str) -> Result<JwtPublicKey, String> {
    if kty == "RSA" {
        let n = strip_leading_zeros(&b64url_param(obj, "n")?).to_vec();
        let e = strip_leading_zeros(&b64url_param(obj, "e")?).to_vec();
        if n.is_empty() || e.is_empty() {
            return Err("RSA n or e is zero".to_owned());
        }
        return Ok(JwtPublicKey::Rsa { n, e });
    }
    let crv_name = required_str(obj, "crv")?;
    let crv =
        EcCurve::from_name(crv_name).ok_or_else(|| format!("unsupported crv {crv_name:?}"))?;
    let key = JwtPublicKey::Ec {
        crv,
        x: b64url_param(obj, "x")?,
        y: b64url_param(obj, "y")?,
    };
    check_key(&key)?;
    Ok(key)
}

/// EC coordinates exactly the curve size; RSA n and e non-empty.
fn check_key(key: &JwtPublicKey) -> Result<(), String> {
    match key {
        JwtPublicKey::Ec { crv, x, y } => {
            let want = crv.coordinate_len();
            if x.len() != want || y.len() != want {
                return Err(format!(
                    "EC point of wrong length: x {} and y {} bytes, {} needs {want}",
                    x.len(),
                    y.len(),
                    crv.name()
                ));
            }
        }
        JwtPublicKey::Rsa { n, e } => {
            if strip_leading_zeros(n).is_empty() || strip_leading_zeros(e).is_empty() {
                return Err("RSA n or e is zero".to_owned());
            }
        }
    }
    Ok(())
}

fn required_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(format!("missing {name}")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

/// A base64url (no padding) parameter, as RFC 7518 wants it.
fn b64url_param(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(required_str(obj, name)?)
        .map_err(|e| format!("{name} is not base64url without padding: {e}"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bundle::jwks::parse;
    use crate::bundle::test_support::*;

    #[test]
    fn with_several_x5c_certs_the_first_is_used_and_a_note_recorded() {
        // X509-SVID 1.2.16: all but the first MUST be ignored (go-spiffe/SPIRE would fail the doc).
        let (first, second) = (ca_cert(p384()), ca_cert(p256()));
        let mut key = published_keys(&bundle(vec![first.clone()], vec![]))[0].clone();
        key["x5c"] = json!([key["x5c"][0], STANDARD.encode(&second), "not even base64"]);
        key["kid"] = json!("tolerated");
        let parsed = parse(&td(), json!({ "keys": [key] }).to_string().as_bytes()).expect("valid");
        assert_eq!(parsed.bundle.x509_authorities, [first]);
        assert_eq!(parsed.skipped, []);
        let notes: Vec<&str> = parsed.notes.iter().map(|n| n.note.as_str()).collect();
        assert_eq!(
            notes,
            [
                "x5c holds 3 certificates; only the first is used",
                "kid on an x509-svid key is ignored"
            ]
        );
    }

    #[test]
    fn identical_x509_authorities_are_kept_once() {
        let keys = published_keys(&bundle(vec![ca_cert(p256())], vec![]));
        let doc = json!({ "keys": [keys[0], keys[0]] }).to_string();
        let parsed = parse(&td(), doc.as_bytes()).expect("valid");
        assert_eq!(parsed.bundle.x509_authorities.len(), 1);
        assert_eq!(parsed.notes.len(), 1);
        assert_eq!(parsed.notes[0].index, 1);
    }

    #[test]
    fn a_repeated_kid_keeps_the_last_key_and_records_a_note() {
        // go-spiffe keeps JWT keys in a map by kid: the last wins (SPIFFE.md §6.2).
        let (first, last) = (
            ec_jwt_authority(p256(), "same"),
            ec_jwt_authority(p384(), "same"),
        );
        let keys = published_keys(&bundle(vec![], vec![first]));
        let last_key = published_keys(&bundle(vec![], vec![last.clone()]))[0].clone();
        let doc = json!({ "keys": [keys[0], last_key] }).to_string();
        let parsed = parse(&td(), doc.as_bytes()).expect("valid");
        assert_eq!(parsed.bundle.jwt_authorities, [last]);
        assert_eq!(parsed.notes.len(), 1);
    }

    #[test]
    fn rsa_params_with_leading_zero_bytes_still_match_the_certificate() {
        let mut key = published_keys(&bundle(vec![rsa_ca_cert()], vec![]))[0].clone();
        let n = URL_SAFE_NO_PAD
            .decode(key["n"].as_str().expect("n"))
            .expect("base64url");
        key["n"] = json!(URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()));
        let parsed = parse(&td(), json!({ "keys": [key] }).to_string().as_bytes()).expect("valid");
        assert_eq!(parsed.bundle.x509_authorities, [rsa_ca_cert()]);
    }
}
