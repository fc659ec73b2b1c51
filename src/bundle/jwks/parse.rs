//! Reading a received SPIFFE bundle document: each JWK judged on its own (SPIFFE.md "Decisions
//! already taken", X509-SVID 1.2.16, JWT-SVID 1.3.12, TD&B 1.4.3-9).

use std::time::Duration;

use serde_json::Value;

use super::JwksError;
use crate::bundle::TrustBundle;
use crate::bundle::jwk::{self, Decoded};
use crate::spiffe_id::TrustDomain;

/// A received bundle, with what was left out of it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBundle {
    /// The usable keys, stored under the configured trust domain. It may be empty: revocation.
    pub bundle: TrustBundle,
    /// Keys ignored, with the reason (log these).
    pub skipped: Vec<SkippedKey>,
    /// Keys kept with a remark: extra `x5c` certificates ignored, a duplicate dropped, a
    /// repeated `kid` overriding an earlier key...
    pub notes: Vec<KeyNote>,
}

/// A JWK that [`parse`] ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the `keys` array.
    pub index: usize,
    /// Why it was ignored.
    pub reason: String,
}

/// A remark about a JWK that [`parse`] kept (or merged with an earlier one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyNote {
    /// Position in the `keys` array.
    pub index: usize,
    /// The remark.
    pub note: String,
}

/// The most entries in `keys` that [`parse`] accepts. A real bundle holds a handful (two or three
/// CAs and their JWT keys); a peer sending half a million junk keys is refused at once.
pub const MAX_KEYS: usize = 1000;

/// Reads a SPIFFE bundle document received for trust domain `td` (never taken from the document).
///
/// Each JWK is judged on its own: missing/unknown `use` or `kty`, missing/empty `x5c`, bad
/// base64/DER, params not matching `x5c[0]`, a `jwt-svid` key without `kid`, a bad EC point...
/// go to [`ParsedBundle::skipped`]. Identical X.509 authorities are kept once; a repeated `kid`
/// keeps the last key (go-spiffe). `keys: []` or no usable key gives an empty bundle: revocation
/// (TD&B 1.4.7). Unknown top-level members are ignored; `null` counts as absent.
///
/// # Errors
/// Document-level problems only: not UTF-8, not JSON, not an object, `keys` missing or not an
/// array, more than [`MAX_KEYS`] keys, `spiffe_sequence` / `spiffe_refresh_hint` not a
/// non-negative integer.
pub fn parse(td: &TrustDomain, bytes: &[u8]) -> Result<ParsedBundle, JwksError> {
    parse_with_max_keys(td, bytes, MAX_KEYS)
}

/// [`parse`] with another cap on the number of keys.
///
/// # Errors
/// As [`parse`], with [`JwksError::TooManyKeys`] above `max_keys`.
pub fn parse_with_max_keys(
    td: &TrustDomain,
    bytes: &[u8],
    max_keys: usize,
) -> Result<ParsedBundle, JwksError> {
    let text = std::str::from_utf8(bytes).map_err(|_| JwksError::NotUtf8)?;
    let doc: Value = serde_json::from_str(text).map_err(|e| JwksError::Json(e.to_string()))?;
    let doc = doc.as_object().ok_or(JwksError::NotAnObject)?;
    let keys = match doc.get("keys") {
        None | Some(Value::Null) => return Err(JwksError::MissingKeys),
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(JwksError::KeysNotArray),
    };
    if keys.len() > max_keys {
        return Err(JwksError::TooManyKeys {
            count: keys.len(),
            max: max_keys,
        });
    }
    let mut bundle = TrustBundle::empty(td.clone());
    bundle.sequence =
        non_negative_int(doc.get("spiffe_sequence")).map_err(|()| JwksError::BadSequence)?;
    bundle.refresh_hint = non_negative_int(doc.get("spiffe_refresh_hint"))
        .map_err(|()| JwksError::BadRefreshHint)?
        .map(Duration::from_secs);

    let mut parsed = ParsedBundle {
        bundle,
        skipped: Vec::new(),
        notes: Vec::new(),
    };
    for (index, key) in keys.iter().enumerate() {
        let (decoded, notes) = match jwk::decode(key) {
            Ok(ok) => ok,
            Err(reason) => {
                parsed.skipped.push(SkippedKey { index, reason });
                continue;
            }
        };
        let note = |note: String| KeyNote { index, note };
        parsed.notes.extend(notes.into_iter().map(note));
        let bundle = &mut parsed.bundle;
        match decoded {
            Decoded::X509(cert) if bundle.x509_authorities.contains(&cert) => {
                parsed.notes.push(note(
                    "duplicate of an earlier x509-svid key; kept once".to_owned(),
                ));
            }
            Decoded::X509(cert) => bundle.x509_authorities.push(cert),
            Decoded::Jwt(authority) => {
                match bundle
                    .jwt_authorities
                    .iter_mut()
                    .find(|a| a.kid == authority.kid)
                {
                    Some(earlier) => {
                        parsed.notes.push(note(format!(
                            "kid {:?} repeats an earlier jwt-svid key; the last one wins",
                            authority.kid
                        )));
                        *earlier = authority;
                    }
                    None => bundle.jwt_authorities.push(authority),
                }
            }
        }
    }
    Ok(parsed)
}

/// A member that must be a non-negative JSON integer fitting `u64` (absent or `null` ⇒ `None`).
/// Floats (`1.0`, `1e3`), negative numbers, strings and integers above `u64::MAX` fail.
fn non_negative_int(value: Option<&Value>) -> Result<Option<u64>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
        Some(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use serde_json::{Map, json};

    use super::*;
    use crate::bundle::test_support::*;

    type Mutation = fn(&mut Map<String, Value>);

    fn set(obj: &mut Map<String, Value>, name: &str, value: Value) {
        obj.insert(name.to_owned(), value);
    }

    #[test]
    fn each_bad_key_is_skipped_while_the_good_keys_next_to_it_are_kept() {
        // Decisions already taken; X509-SVID 1.2.16; JWT-SVID 1.3.11-12; TD&B 1.4.6, 1.4.8-9.
        let cert = ca_cert(p256());
        let authority = ec_jwt_authority(p256(), "good");
        let good = published_keys(&bundle(vec![cert.clone()], vec![authority.clone()]));
        let other_p256 = published_keys(&bundle(vec![ca_cert(p256())], vec![]))[0].clone();
        let rsa = published_keys(&bundle(vec![rsa_ca_cert()], vec![]))[0].clone();
        let x509_cases: Vec<(&str, Mutation)> = vec![
            ("missing use", |k| drop(k.remove("use"))),
            ("unknown use", |k| set(k, "use", json!("wit-svid"))),
            ("use is case-sensitive", |k| {
                set(k, "use", json!("X509-SVID"))
            }),
            ("use not a string", |k| set(k, "use", json!(1))),
            ("missing kty", |k| drop(k.remove("kty"))),
            ("unknown kty", |k| set(k, "kty", json!("OKP"))),
            ("oct kty", |k| set(k, "kty", json!("oct"))),
            ("missing x5c", |k| drop(k.remove("x5c"))),
            ("empty x5c", |k| set(k, "x5c", json!([]))),
            ("x5c not an array", |k| set(k, "x5c", k["x5c"][0].clone())),
            ("x5c[0] not a string", |k| set(k, "x5c", json!([7]))),
            ("x5c[0] base64url", |k| {
                let std = k["x5c"][0].as_str().unwrap_or_default().to_owned();
                let url = std.replace('+', "-").replace('/', "_").replace('=', "");
                assert_ne!(std, url);
                set(k, "x5c", json!([url]));
            }),
            ("x5c[0] bad DER", |k| {
                set(k, "x5c", json!([STANDARD.encode(b"not a cert")]))
            }),
            ("x5c[0] trailing bytes", |k| {
                let mut der = STANDARD
                    .decode(k["x5c"][0].as_str().unwrap_or_default())
                    .unwrap_or_default();
                der.push(0);
                set(k, "x5c", json!([STANDARD.encode(der)]));
            }),
            ("missing x", |k| drop(k.remove("x"))),
            ("P-384 crv on a P-256 cert", |k| {
                set(k, "crv", json!("P-384"))
            }),
            ("swapped coordinates", |k| {
                let x = k["x"].clone();
                set(k, "x", k["y"].clone());
                set(k, "y", x);
            }),
        ];
        let jwt_cases: Vec<(&str, Mutation)> = vec![
            ("jwt without kid", |k| drop(k.remove("kid"))),
            ("jwt with empty kid", |k| set(k, "kid", json!(""))),
            ("jwt kid not a string", |k| set(k, "kid", json!(7))),
            ("jwt short x", |k| {
                set(k, "x", json!(URL_SAFE_NO_PAD.encode([1u8; 31])))
            }),
            ("jwt long y", |k| {
                set(k, "y", json!(URL_SAFE_NO_PAD.encode([1u8; 33])))
            }),
            ("jwt padded x", |k| {
                set(
                    k,
                    "x",
                    json!(format!("{}=", k["x"].as_str().unwrap_or_default())),
                )
            }),
            ("jwt bad curve", |k| set(k, "crv", json!("P-521"))),
            ("jwt secp256k1", |k| set(k, "crv", json!("secp256k1"))),
            ("jwt missing crv", |k| drop(k.remove("crv"))),
            ("jwt RSA without n", |k| {
                set(k, "kty", json!("RSA"));
                set(k, "e", json!("AQAB"));
            }),
        ];
        let mut cases: Vec<(&str, Value)> = Vec::new();
        for (base, list) in [(&good[0], x509_cases), (&good[1], jwt_cases)] {
            for (name, mutate) in list {
                let mut key = base.as_object().expect("object").clone();
                mutate(&mut key);
                cases.push((name, Value::Object(key)));
            }
        }
        let mut mismatch = other_p256.as_object().expect("object").clone();
        mismatch.insert("x5c".to_owned(), good[0]["x5c"].clone());
        cases.push(("params of another P-256 key", Value::Object(mismatch)));
        let mut wrong_kty = rsa.as_object().expect("object").clone();
        wrong_kty.insert("x5c".to_owned(), good[0]["x5c"].clone());
        cases.push(("RSA kty on an EC cert", Value::Object(wrong_kty)));
        cases.push(("not an object", json!("key")));

        for (name, bad) in cases {
            let doc = json!({ "keys": [bad, good[0], good[1]] }).to_string();
            let parsed = parse(&td(), doc.as_bytes()).expect("valid document");
            assert_eq!(parsed.skipped.len(), 1, "{name}: {:?}", parsed.skipped);
            assert_eq!(parsed.skipped[0].index, 0, "{name}");
            assert_eq!(
                parsed.bundle.x509_authorities,
                std::slice::from_ref(&cert),
                "{name}"
            );
            assert_eq!(
                parsed.bundle.jwt_authorities,
                std::slice::from_ref(&authority),
                "{name}"
            );
        }
    }

    #[test]
    fn an_empty_keys_array_is_an_empty_bundle_not_an_error() {
        // TD&B 1.4.7: `keys: []` is revocation.
        let parsed = parse(&td(), br#"{"keys":[],"spiffe_sequence":9}"#).expect("valid");
        assert!(parsed.bundle.is_empty());
        assert_eq!(parsed.bundle.sequence, Some(9));
        assert_eq!(parsed.bundle.trust_domain, td());
    }

    #[test]
    fn a_document_with_no_usable_key_is_an_empty_bundle_with_every_key_skipped() {
        // TD&B 1.4.7: nothing usable after filtering counts as empty too.
        let doc = br#"{"keys":[{"use":"x509-svid","kty":"EC"},{"kty":"EC"},{"use":"wit-svid","kty":"EC","kid":"w"}]}"#;
        let parsed = parse(&td(), doc).expect("valid document");
        assert!(parsed.bundle.is_empty());
        let indexes: Vec<usize> = parsed.skipped.iter().map(|s| s.index).collect();
        assert_eq!(indexes, [0, 1, 2]);
    }

    #[test]
    fn document_level_problems_are_errors() {
        // TD&B 1.4.3-6; go-spiffe decodes sequence as uint64 and hint as int64 seconds (§6.2).
        let cases: [(&[u8], JwksError); 20] = [
            (b"{}", JwksError::MissingKeys),
            (br#"{"keys":null}"#, JwksError::MissingKeys),
            (br#"{"Keys":[]}"#, JwksError::MissingKeys),
            (b"[]", JwksError::NotAnObject),
            (b"null", JwksError::NotAnObject),
            (br#""keys""#, JwksError::NotAnObject),
            (br#"{"keys":{}}"#, JwksError::KeysNotArray),
            (br#"{"keys":"[]"}"#, JwksError::KeysNotArray),
            (
                br#"{"keys":[],"spiffe_sequence":"7"}"#,
                JwksError::BadSequence,
            ),
            (
                br#"{"keys":[],"spiffe_sequence":-1}"#,
                JwksError::BadSequence,
            ),
            (
                br#"{"keys":[],"spiffe_sequence":1.5}"#,
                JwksError::BadSequence,
            ),
            (
                br#"{"keys":[],"spiffe_sequence":7.0}"#,
                JwksError::BadSequence,
            ),
            (
                br#"{"keys":[],"spiffe_sequence":18446744073709551616}"#,
                JwksError::BadSequence,
            ),
            (
                br#"{"keys":[],"spiffe_refresh_hint":1.5}"#,
                JwksError::BadRefreshHint,
            ),
            (
                br#"{"keys":[],"spiffe_refresh_hint":-300}"#,
                JwksError::BadRefreshHint,
            ),
            (
                br#"{"keys":[],"spiffe_refresh_hint":"300"}"#,
                JwksError::BadRefreshHint,
            ),
            (
                br#"{"keys":[],"spiffe_refresh_hint":3e2}"#,
                JwksError::BadRefreshHint,
            ),
            (b"\xff\xfe{}", JwksError::NotUtf8),
            (b"", JwksError::Json(String::new())),
            (b"<html>garbage</html>", JwksError::Json(String::new())),
        ];
        for (input, expected) in cases {
            let got = parse(&td(), input);
            let same = match (&got, &expected) {
                (Err(JwksError::Json(_)), JwksError::Json(_)) => true,
                (got, expected) => got.as_ref().err() == Some(expected),
            };
            assert!(
                same,
                "{:?}: got {got:?}, want {expected:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_document_with_more_keys_than_the_cap_is_refused_whole() {
        // Issue 9 item 4: 500,000 junk keys are one refusal, not 500,000 skipped keys.
        let junk = format!("{{\"keys\":[{}1]}}", "1,".repeat(MAX_KEYS));
        assert_eq!(
            parse(&td(), junk.as_bytes()).err(),
            Some(JwksError::TooManyKeys {
                count: MAX_KEYS + 1,
                max: MAX_KEYS
            })
        );
        let at_cap = format!("{{\"keys\":[{}1]}}", "1,".repeat(MAX_KEYS - 1));
        let parsed = parse(&td(), at_cap.as_bytes()).expect("at the cap");
        assert_eq!(parsed.skipped.len(), MAX_KEYS);
        assert!(matches!(
            parse_with_max_keys(&td(), br#"{"keys":[1,2,3]}"#, 2),
            Err(JwksError::TooManyKeys { count: 3, max: 2 })
        ));
    }

    #[test]
    fn a_truncated_document_is_an_error() {
        let json =
            crate::bundle::jwks::to_json(&bundle(vec![ca_cert(p256())], vec![])).expect("publish");
        for cut in [1, json.len() / 2, json.len() - 1] {
            assert!(
                matches!(parse(&td(), &json[..cut]), Err(JwksError::Json(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn unknown_top_level_members_and_null_optional_members_are_ignored() {
        // TD&B 1.4.3: extra members MAY appear and MUST NOT be required.
        let doc = br#"{"trust_domain":"evil.test","keys":[],"spiffe_sequence":null,"spiffe_refresh_hint":null,"x":{"y":[1]}}"#;
        let parsed = parse(&td(), doc).expect("valid");
        assert_eq!(parsed.bundle, crate::bundle::TrustBundle::empty(td()));
    }

    #[test]
    fn the_largest_sequence_and_a_zero_hint_are_accepted() {
        // TD&B 1.4.4: parse the sequence into at least 64 bits.
        let doc = br#"{"keys":[],"spiffe_sequence":18446744073709551615,"spiffe_refresh_hint":0}"#;
        let bundle = parse(&td(), doc).expect("valid").bundle;
        assert_eq!(bundle.sequence, Some(u64::MAX));
        assert_eq!(bundle.refresh_hint, Some(Duration::ZERO));
    }
}
