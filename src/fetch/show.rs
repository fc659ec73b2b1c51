//! What `meshtrust fetch` prints of each answer: plain lines for people, or one JSON document
//! for scripts. Private keys never appear on stdout (`--write` puts them in 0600 files); a
//! JWT-SVID does, since printing it is what `fetch jwt` is for.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::bundle::summary::{not_after, sha256_hex};
use crate::clock::rfc3339;
use crate::workload_api::proto::{
    JwtBundlesResponse, JwtsvidResponse, ValidateJwtsvidResponse, X509BundlesResponse,
    X509svidResponse,
};

/// One answer, ready to print either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// Lines for people (each ends with a newline).
    pub text: String,
    /// The same for scripts.
    pub json: Value,
}

impl Shown {
    /// What `--json` selects.
    pub fn render(&self, json: bool) -> String {
        if json {
            format!("{}\n", self.json)
        } else {
            self.text.clone()
        }
    }
}

/// Concatenated DER certificates, split; a part that does not parse ends the list (the
/// daemon's answers always parse; this is a viewer, not a validator).
pub fn split_der(mut der: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let Ok((rest, _)) = X509Certificate::from_der(der) else {
            break;
        };
        certs.push(CertificateDer::from(der[..der.len() - rest.len()].to_vec()));
        der = rest;
    }
    certs
}

/// "in 59m 58s" / "expired 3s ago".
pub fn relative(t: SystemTime, now: SystemTime) -> String {
    fn words(d: Duration) -> String {
        let s = d.as_secs();
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m {}s", s / 60, s % 60),
            3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
            _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
        }
    }
    match t.duration_since(now) {
        Ok(left) => format!("in {}", words(left)),
        Err(e) => format!("expired {} ago", words(e.duration())),
    }
}

fn authorities_json(certs: &[CertificateDer<'_>]) -> Value {
    Value::Array(
        certs
            .iter()
            .map(|c| json!({ "sha256": sha256_hex(c), "not_after": not_after(c).map(rfc3339) }))
            .collect(),
    )
}

fn authorities_text(
    out: &mut String,
    label: &str,
    td: &str,
    certs: &[CertificateDer<'_>],
    now: SystemTime,
) {
    out.push_str(&format!("{label} {td}: {} authority(ies)\n", certs.len()));
    for c in certs {
        let expiry = not_after(c).map_or_else(
            || "unknown expiry".to_owned(),
            |t| format!("expires {} ({})", rfc3339(t), relative(t, now)),
        );
        out.push_str(&format!("  sha256 {}  {expiry}\n", sha256_hex(c)));
    }
}

/// FetchX509SVID: each SVID's ID, hint and expiry, then every bundle (own, then federated) with
/// each authority's SHA-256.
pub fn x509(msg: &X509svidResponse, now: SystemTime) -> Shown {
    let mut text = format!("received {} x509-svid(s)\n", msg.svids.len());
    let mut svids = Vec::new();
    let mut bundles = BTreeMap::new();
    for svid in &msg.svids {
        let chain = split_der(&svid.x509_svid);
        let expiry = chain.first().and_then(not_after);
        let hint = if svid.hint.is_empty() {
            String::new()
        } else {
            format!(" (hint {:?})", svid.hint)
        };
        let until = expiry.map_or_else(
            || "unknown expiry".to_owned(),
            |t| format!("expires {} ({})", rfc3339(t), relative(t, now)),
        );
        text.push_str(&format!(
            "x509-svid {}{hint}: {until}, chain of {} certificate(s)\n",
            svid.spiffe_id,
            chain.len()
        ));
        svids.push(json!({
            "spiffe_id": svid.spiffe_id,
            "hint": svid.hint,
            "expires_at": expiry.map(rfc3339),
            "sha256": chain.first().map(sha256_hex),
        }));
        if let Some(td) = own_td(&svid.spiffe_id) {
            bundles.entry(td).or_insert_with(|| split_der(&svid.bundle));
        }
    }
    let own: Vec<String> = bundles.keys().cloned().collect();
    for (td, der) in &msg.federated_bundles {
        bundles.entry(td.clone()).or_insert_with(|| split_der(der));
    }
    for (td, certs) in &bundles {
        let label = if own.contains(td) {
            "bundle"
        } else {
            "federated bundle"
        };
        authorities_text(&mut text, label, td, certs, now);
    }
    let bundles_json: BTreeMap<&String, Value> = bundles
        .iter()
        .map(|(td, c)| (td, authorities_json(c)))
        .collect();
    Shown {
        text,
        json: json!({ "svids": svids, "bundles": bundles_json }),
    }
}

/// `spiffe://td` of a SPIFFE ID, as the bundle maps key it.
fn own_td(id: &str) -> Option<String> {
    let rest = id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    Some(format!("spiffe://{td}"))
}

/// FetchX509Bundles: every trust domain's authorities with their SHA-256.
pub fn x509_bundles(msg: &X509BundlesResponse, now: SystemTime) -> Shown {
    let bundles: BTreeMap<&String, Vec<CertificateDer<'static>>> = msg
        .bundles
        .iter()
        .map(|(td, der)| (td, split_der(der)))
        .collect();
    let mut text = format!("received {} x509 bundle(s)\n", bundles.len());
    for (td, certs) in &bundles {
        authorities_text(&mut text, "bundle", td, certs, now);
    }
    let json_bundles: BTreeMap<&String, Value> = bundles
        .iter()
        .map(|(td, c)| (*td, authorities_json(c)))
        .collect();
    Shown {
        text,
        json: json!({ "bundles": json_bundles }),
    }
}

/// FetchJWTBundles: every trust domain's JWKS (the document itself in JSON; key IDs and the
/// SHA-256 of the document in text).
pub fn jwt_bundles(msg: &JwtBundlesResponse) -> Shown {
    let bundles: BTreeMap<&String, &Vec<u8>> = msg.bundles.iter().collect();
    let mut text = format!("received {} jwt bundle(s)\n", bundles.len());
    let mut docs = BTreeMap::new();
    for (td, jwks) in &bundles {
        let doc: Value = serde_json::from_slice(jwks).unwrap_or(Value::Null);
        let kids: Vec<String> = doc["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .map(|k| {
                        format!(
                            "{} ({})",
                            k["kid"].as_str().unwrap_or("?"),
                            k["kty"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, jwks);
        text.push_str(&format!(
            "jwt bundle {td}: {} key(s), sha256 {}\n",
            kids.len(),
            hex(digest.as_ref())
        ));
        for kid in kids {
            text.push_str(&format!("  kid {kid}\n"));
        }
        docs.insert(*td, doc);
    }
    Shown {
        text,
        json: json!({ "bundles": docs }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `exp` of a JWT (unverified: for display and refresh timing only).
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let exp = claims["exp"].as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// FetchJWTSVID: each token's ID, hint and expiry, then the token on its own line.
pub fn jwt(msg: &JwtsvidResponse, now: SystemTime) -> Shown {
    let mut text = String::new();
    let mut svids = Vec::new();
    for svid in &msg.svids {
        let expiry = jwt_expiry(&svid.svid);
        let until = expiry.map_or_else(
            || "unknown expiry".to_owned(),
            |t| format!("expires {} ({})", rfc3339(t), relative(t, now)),
        );
        let hint = if svid.hint.is_empty() {
            String::new()
        } else {
            format!(" (hint {:?})", svid.hint)
        };
        text.push_str(&format!(
            "jwt-svid {}{hint}: {until}\n{}\n",
            svid.spiffe_id, svid.svid
        ));
        svids.push(json!({
            "spiffe_id": svid.spiffe_id,
            "token": svid.svid,
            "expires_at": expiry.map(rfc3339),
            "hint": svid.hint,
        }));
    }
    Shown {
        text,
        json: json!({ "svids": svids }),
    }
}

/// ValidateJWTSVID: the SPIFFE ID and the claims.
pub fn validated(msg: &ValidateJwtsvidResponse) -> Shown {
    let claims = msg.claims.as_ref().map_or(Value::Null, struct_json);
    Shown {
        text: format!("valid jwt-svid of {}\nclaims: {claims}\n", msg.spiffe_id),
        json: json!({ "spiffe_id": msg.spiffe_id, "claims": claims }),
    }
}

/// A `google.protobuf.Struct` as JSON.
pub fn struct_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers (exp, iat) print as integers, as they were in the token.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                #[allow(clippy::cast_possible_truncation)]
                let i = *n as i64;
                json!(i)
            } else {
                json!(n)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_as_words() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(relative(now + Duration::from_secs(3599), now), "in 59m 59s");
        assert_eq!(
            relative(now - Duration::from_secs(3), now),
            "expired 3s ago"
        );
        assert_eq!(relative(now + Duration::from_secs(90_000), now), "in 1d 1h");
    }

    #[test]
    fn claims_keep_whole_numbers_whole() {
        let s = crate::workload_api::jwt::claims_to_struct(
            json!({"exp": 1_700_000_000u64, "aud": ["a"], "x": 1.5})
                .as_object()
                .unwrap(),
        );
        assert_eq!(
            struct_json(&s),
            json!({"exp": 1_700_000_000u64, "aud": ["a"], "x": 1.5})
        );
    }
}
