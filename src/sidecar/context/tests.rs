//! X509Context validation of FetchX509SVID messages (SPIFFE.md 1.7.4-1.7.7, §6.7).

use std::time::{Duration, SystemTime};

use super::{ContextError, X509Context};
use crate::sidecar::leaf::LeafError;
use crate::sidecar::test_support::{TestCa, response};
use crate::spiffe_id::TrustDomain;

#[test]
fn a_good_message_keeps_each_bundle_under_its_own_trust_domain() {
    // TD&B 1.4.1 / Federation 1.5.5: bundles stay apart, keyed by trust domain.
    let a = TestCa::new("mesh-a.test");
    let b = TestCa::new("mesh-b.test");
    let svid = a.issue("/frontend");
    let ctx = X509Context::from_response(
        response(&svid, &a.bundle(), &[(&b, b.bundle())]),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(ctx.svid.spiffe_id.as_str(), "spiffe://mesh-a.test/frontend");
    assert_eq!(ctx.own_bundle(), a.bundle().as_slice());
    let td_b = TrustDomain::new("mesh-b.test").unwrap();
    assert_eq!(ctx.bundle_for(&td_b), Some(b.bundle().as_slice()));
    assert_eq!(ctx.federated().count(), 1);
    assert!(ctx.certified_key().keys_match().is_ok());
    // The key never shows in Debug output.
    assert!(format!("{ctx:?}").contains("redacted"));
}

#[test]
fn a_key_of_another_svid_is_refused() {
    // go-spiffe ParseRaw (SPIFFE.md §6.4): the key must match the leaf.
    let a = TestCa::new("mesh-a.test");
    let svid = a.issue("/frontend");
    let other = a.issue("/frontend");
    let mut msg = response(&svid, &a.bundle(), &[]);
    msg.svids[0].x509_svid_key = other.private_key.pkcs8_der().to_vec();
    let err = X509Context::from_response(msg, SystemTime::now()).unwrap_err();
    assert!(matches!(err, ContextError::Key(_)), "{err}");
}

#[test]
fn an_expired_svid_is_refused() {
    let a = TestCa::new("mesh-a.test");
    let svid = a.issue("/frontend");
    let later = svid.not_after + Duration::from_secs(1);
    let err = X509Context::from_response(response(&svid, &a.bundle(), &[]), later).unwrap_err();
    assert_eq!(err, ContextError::Expired(svid.spiffe_id.clone()));
}

#[test]
fn empty_mandatory_fields_and_id_mismatches_are_refused() {
    // WAPI 1.7.5 and 1.7.7: every X509SVID field but the hint is mandatory, svids non-empty.
    let a = TestCa::new("mesh-a.test");
    let svid = a.issue("/frontend");
    let now = SystemTime::now();
    let mut msg = response(&svid, &a.bundle(), &[]);
    msg.svids.clear();
    assert_eq!(
        X509Context::from_response(msg, now).unwrap_err(),
        ContextError::NoSvids
    );
    for field in ["spiffe_id", "x509_svid", "x509_svid_key", "bundle"] {
        let mut msg = response(&svid, &a.bundle(), &[]);
        match field {
            "spiffe_id" => msg.svids[0].spiffe_id.clear(),
            "x509_svid" => msg.svids[0].x509_svid.clear(),
            "x509_svid_key" => msg.svids[0].x509_svid_key.clear(),
            _ => msg.svids[0].bundle.clear(),
        }
        assert_eq!(
            X509Context::from_response(msg, now).unwrap_err(),
            ContextError::EmptyField(field)
        );
    }
    let mut msg = response(&svid, &a.bundle(), &[]);
    msg.svids[0].spiffe_id = "spiffe://mesh-a.test/backend".into();
    assert!(matches!(
        X509Context::from_response(msg, now).unwrap_err(),
        ContextError::IdMismatch { .. }
    ));
    // A CA certificate in place of the leaf breaks the leaf profile (X509-SVID 1.2.14).
    let mut msg = response(&svid, &a.bundle(), &[]);
    msg.svids[0].x509_svid = a.bundle()[0].to_vec();
    assert!(matches!(
        X509Context::from_response(msg, now).unwrap_err(),
        ContextError::Leaf(LeafError::RootPath(_))
    ));
    let mut msg = response(&svid, &a.bundle(), &[]);
    msg.svids[0].bundle = b"not der".to_vec();
    assert!(matches!(
        X509Context::from_response(msg, now).unwrap_err(),
        ContextError::BadDer { .. }
    ));
}

#[test]
fn an_empty_federated_bundle_is_kept_as_a_revocation() {
    // SPIFFE.md §7 pitfall 14 / TD&B 1.4.7: empty = revoked, propagated, not an error.
    let a = TestCa::new("mesh-a.test");
    let b = TestCa::new("mesh-b.test");
    let svid = a.issue("/frontend");
    let ctx = X509Context::from_response(
        response(&svid, &a.bundle(), &[(&b, Vec::new())]),
        SystemTime::now(),
    )
    .unwrap();
    let td_b = TrustDomain::new("mesh-b.test").unwrap();
    assert_eq!(ctx.bundle_for(&td_b), Some(&[][..]));
}

#[test]
fn federated_keys_must_name_trust_domains_and_never_replace_our_bundle() {
    let a = TestCa::new("mesh-a.test");
    let b = TestCa::new("mesh-b.test");
    let svid = a.issue("/frontend");
    let mut msg = response(&svid, &a.bundle(), &[]);
    msg.federated_bundles.insert(
        "spiffe://Bad".into(),
        crate::bundle::pem::certs_to_der_concat(&b.bundle()),
    );
    assert!(matches!(
        X509Context::from_response(msg, SystemTime::now()).unwrap_err(),
        ContextError::BadFederatedKey(_)
    ));
    // Our own trust domain among the federated bundles does not override the SVID's bundle
    // (TD&B 1.4.1: never merge or swap bundles between trust domains).
    let mut msg = response(&svid, &a.bundle(), &[]);
    msg.federated_bundles.insert(
        "spiffe://mesh-a.test".into(),
        crate::bundle::pem::certs_to_der_concat(&b.bundle()),
    );
    let ctx = X509Context::from_response(msg, SystemTime::now()).unwrap();
    assert_eq!(ctx.own_bundle(), a.bundle().as_slice());
    assert_eq!(ctx.federated().count(), 0);
}
