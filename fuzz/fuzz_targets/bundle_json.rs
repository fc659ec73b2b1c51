//! The SPIFFE bundle document a peer serves (`jwks::parse`), hostile by assumption.
//!
//! Invariants: every JWK of the document is either kept or reported skipped, once, by its index;
//! what is kept is consistent (no duplicate X.509 authority, no repeated `kid`); a parsed bundle
//! re-serialises (`to_json`, which is how a pin is stored) and re-parses to the same keys,
//! sequence and refresh hint with nothing skipped, and serialising that again gives the same bytes;
//! the Workload API's JWKS view holds exactly the JWT keys; the bootstrap reader agrees.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use meshtrust::bundle::{jwks, pem};
use meshtrust::spiffe_id::TrustDomain;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("mesh-b.test").expect("valid trust domain");
    let parsed = match jwks::parse(&td, data) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            // A document the peer parser refuses is refused as a bootstrap bundle too, when it is
            // read as JSON (first non-blank byte `{`, after an optional BOM).
            let rest = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
            if rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
                && !data.starts_with(b"\xEF\xBB\xBF")
            {
                assert!(pem::parse_bootstrap(&td, data).is_err());
            }
            return;
        }
    };
    let bundle = &parsed.bundle;
    assert_eq!(
        bundle.trust_domain, td,
        "the configured trust domain, never the document's"
    );

    // Every key accounted for: kept ones plus skipped ones never exceed the document's keys.
    let doc: Value = serde_json::from_slice(data).expect("parse accepted it as JSON");
    let n_keys = doc["keys"]
        .as_array()
        .expect("parse accepted keys as an array")
        .len();
    let skipped: BTreeSet<usize> = parsed.skipped.iter().map(|s| s.index).collect();
    assert_eq!(skipped.len(), parsed.skipped.len(), "a key is skipped once");
    assert!(skipped.iter().all(|i| *i < n_keys));
    assert!(
        parsed
            .notes
            .iter()
            .all(|n| n.index < n_keys && !skipped.contains(&n.index))
    );
    assert!(parsed.skipped.iter().all(|s| !s.reason.is_empty()));
    assert!(bundle.x509_authorities.len() + bundle.jwt_authorities.len() + skipped.len() <= n_keys);
    let certs: BTreeSet<&[u8]> = bundle.x509_authorities.iter().map(|c| c.as_ref()).collect();
    assert_eq!(
        certs.len(),
        bundle.x509_authorities.len(),
        "x509 authorities kept once"
    );
    let kids: BTreeSet<&str> = bundle
        .jwt_authorities
        .iter()
        .map(|a| a.kid.as_str())
        .collect();
    assert_eq!(
        kids.len(),
        bundle.jwt_authorities.len(),
        "a kid is kept once"
    );
    assert!(!kids.contains(""), "no empty kid");

    // Re-serialise (the pin's storage form) and re-parse: same bundle, nothing skipped.
    let json = jwks::to_json(bundle)
        .unwrap_or_else(|e| panic!("a parsed bundle must serialise: {e}; bundle {bundle:?}"));
    let again =
        jwks::parse(&td, &json).unwrap_or_else(|e| panic!("our own document must parse: {e}"));
    assert_eq!(&again.bundle, bundle, "round trip through to_json");
    assert!(
        again.skipped.is_empty(),
        "our own document: {:?}",
        again.skipped
    );
    assert!(
        again.notes.is_empty(),
        "our own document: {:?}",
        again.notes
    );
    assert_eq!(
        jwks::to_json(&again.bundle).ok(),
        Some(json),
        "to_json is a fixpoint"
    );

    // The Workload API's JWKS (FetchJWTBundles): exactly the JWT keys, by kid, no `use`.
    let jwt_jwks: Value = serde_json::from_slice(&jwks::jwt_jwks(bundle)).expect("JWKS is JSON");
    let keys = jwt_jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), bundle.jwt_authorities.len());
    for (key, authority) in keys.iter().zip(&bundle.jwt_authorities) {
        assert_eq!(key["kid"].as_str(), Some(authority.kid.as_str()));
        assert_eq!(key["kty"].as_str(), Some(authority.key.kty()));
        assert!(key.get("use").is_none());
    }

    // The same document as an operator's bootstrap bundle: accepted iff it has an X.509 key.
    match pem::parse_bootstrap(&td, data) {
        Ok(b) => assert_eq!(&b, bundle),
        Err(e) => {
            assert!(bundle.x509_authorities.is_empty(), "bootstrap refused {e}");
        }
    }
});
