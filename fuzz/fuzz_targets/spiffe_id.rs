//! SPIFFE IDs and trust domain names, as read from configs, certificates' URI SANs, JWT `sub`
//! claims and API requests.
//!
//! Invariants: the parser agrees with an independent model of SPIFFE-ID §2 (written from the spec
//! here, not from `src/spiffe_id.rs`) on accept/reject; an accepted ID round-trips through
//! `Display`, splits into a trust domain and a path that rebuild it, and re-parses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrust::spiffe_id::{MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, TrustDomain};

/// SPIFFE-ID §2.1: a trust domain name is lowercase letters, digits, `.`, `-`, `_`, non-empty,
/// at most 255 bytes.
fn model_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_LEN
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// SPIFFE-ID §2.2: the path is empty or `/seg(/seg)*`, each segment non-empty, not `.` or `..`,
/// letters, digits, `.`, `-`, `_`.
fn model_path(path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    })
}

/// SPIFFE-ID §2 and §2.3: `spiffe://` + trust domain + path, at most 2048 bytes in all.
fn model_id(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (s.len() <= MAX_SPIFFE_ID_LEN && model_trust_domain(td) && model_path(path))
        .then_some((td, path))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let parsed = SpiffeId::new(s);
    match (&parsed, model_id(s)) {
        (Ok(id), Some((td, path))) => {
            assert_eq!(id.to_string(), s, "Display round-trip");
            assert_eq!(id.as_str(), s);
            assert_eq!(id.trust_domain().as_str(), td);
            assert_eq!(id.path(), path);
            assert_eq!(
                format!("spiffe://{}{}", id.trust_domain(), id.path()),
                s,
                "trust domain and path rebuild the ID"
            );
            assert_eq!(SpiffeId::new(id.to_string()).as_ref(), Ok(id), "re-parse");
            assert_eq!(s.parse::<SpiffeId>().as_ref(), Ok(id));
            assert_eq!(
                SpiffeId::from_path(id.trust_domain(), id.path()).as_ref(),
                Ok(id)
            );
            assert_eq!(
                TrustDomain::new(td).as_ref(),
                Ok(id.trust_domain()),
                "the trust domain parses on its own"
            );
            assert_eq!(TrustDomain::new(s).as_ref(), Ok(id.trust_domain()));
            assert_eq!(
                SpiffeId::new_workload(s).is_ok(),
                !path.is_empty(),
                "a workload ID is one with a path"
            );
            let td_id = id.trust_domain().to_spiffe_id();
            assert_eq!(td_id.path(), "");
            assert_eq!(td_id.trust_domain(), id.trust_domain());
            assert_eq!(SpiffeId::new(td_id.as_str()).as_ref(), Ok(&td_id));
        }
        (Err(e), None) => {
            assert!(!e.to_string().is_empty());
            assert!(SpiffeId::new_workload(s).is_err());
        }
        (got, model) => {
            panic!("parser and model disagree on {s:?}: parser {got:?}, model {model:?}")
        }
    }

    // A bare trust domain name, or an ID whose trust domain is taken (go-spiffe's
    // TrustDomainFromString): anything with ":/" is read as an ID.
    let td = TrustDomain::new(s);
    let expected = if s.contains(":/") {
        model_id(s).map(|(td, _)| td)
    } else {
        model_trust_domain(s).then_some(s)
    };
    match (&td, expected) {
        (Ok(td), Some(name)) => {
            assert_eq!(td.as_str(), name);
            assert_eq!(td.to_string(), name);
            assert_eq!(td.id_string(), format!("spiffe://{name}"));
            assert_eq!(TrustDomain::new(td.as_str()).as_ref(), Ok(td));
            assert_eq!(
                SpiffeId::new(td.id_string())
                    .map(|id| id.trust_domain().clone())
                    .as_ref(),
                Ok(td)
            );
        }
        (Err(_), None) => {}
        (got, model) => {
            panic!(
                "trust domain parser and model disagree on {s:?}: parser {got:?}, model {model:?}"
            )
        }
    }
});
