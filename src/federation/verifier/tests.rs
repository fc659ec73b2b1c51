//! The X509-SVID leaf checks (X509-SVID 1.2.14) and where the roots come from.

use std::collections::BTreeMap;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use super::*;
use crate::bundle::TrustBundle;

const ENDPOINT: &str = "spiffe://mesh-b.test/meshtrust/server";

fn endpoint() -> SpiffeId {
    SpiffeId::new(ENDPOINT).unwrap()
}

fn cert(uris: &[&str], ca: bool, key_usages: Vec<KeyUsagePurpose>) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    params.key_usages = key_usages;
    params.self_signed(&key).unwrap().der().clone()
}

fn svid(uris: &[&str]) -> CertificateDer<'static> {
    cert(uris, false, vec![KeyUsagePurpose::DigitalSignature])
}

#[test]
fn a_leaf_with_exactly_the_endpoint_id_passes() {
    assert_eq!(check_leaf(&svid(&[ENDPOINT]), &endpoint()), Ok(()));
}

#[test]
fn leaves_breaking_the_x509_svid_profile_are_refused() {
    // X509-SVID 1.2.1, 1.2.6, 1.2.11, 1.2.14.
    let sign = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let crl = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let other = "spiffe://mesh-b.test/other";
    for (leaf, expected) in [
        (svid(&[]), SvidError::UriSanCount(0)),
        (svid(&[ENDPOINT, other]), SvidError::UriSanCount(2)),
        (cert(&[ENDPOINT], true, vec![]), SvidError::IsCa),
        (cert(&[ENDPOINT], false, sign), SvidError::SigningKeyUsage),
        (cert(&[ENDPOINT], false, crl), SvidError::SigningKeyUsage),
        (
            svid(&[other]),
            SvidError::WrongId {
                expected: endpoint(),
                presented: SpiffeId::new(other).unwrap(),
            },
        ),
    ] {
        assert_eq!(check_leaf(&leaf, &endpoint()), Err(expected));
    }
    let https = svid(&["https://mesh-b.test/meshtrust/server"]);
    assert!(matches!(
        check_leaf(&https, &endpoint()),
        Err(SvidError::NotSpiffeId { .. })
    ));
    assert!(matches!(
        check_leaf(b"not a certificate", &endpoint()),
        Err(SvidError::Malformed(_))
    ));
}

fn bundle(certs: Vec<CertificateDer<'static>>) -> TrustBundle {
    let mut b = TrustBundle::empty(endpoint().trust_domain().clone());
    b.x509_authorities = certs;
    b
}

#[test]
fn the_bootstrap_bundle_applies_only_while_nothing_is_pinned() {
    // SPIFFE.md §2 "Self-serving"; TD&B 1.4.7: a pinned empty bundle validates nothing.
    let bootstrap_ca = cert(&[], true, vec![KeyUsagePurpose::KeyCertSign]);
    let pinned_ca = cert(&[], true, vec![KeyUsagePurpose::KeyCertSign]);
    let (tx, rx) = watch::channel(Arc::new(BTreeMap::new()));
    let roots = EndpointRoots::Peer {
        trust_domain: endpoint().trust_domain().clone(),
        pinned: rx,
        bootstrap: Some(Arc::new(bundle(vec![bootstrap_ca.clone()]))),
    };
    assert_eq!(roots.authorities(), Ok(vec![bootstrap_ca]));

    let td = endpoint().trust_domain().clone();
    tx.send_modify(|m| {
        Arc::make_mut(m).insert(td.clone(), Arc::new(bundle(vec![pinned_ca.clone()])));
    });
    assert_eq!(roots.authorities(), Ok(vec![pinned_ca]));

    tx.send_modify(|m| {
        Arc::make_mut(m).insert(td.clone(), Arc::new(bundle(vec![])));
    });
    assert_eq!(
        roots.authorities(),
        Err(SvidError::NoAuthorities {
            trust_domain: td,
            looked_in: "pinned bundle",
        })
    );
}

#[test]
fn own_roots_are_read_at_every_call() {
    let ca = cert(&[], true, vec![KeyUsagePurpose::KeyCertSign]);
    let (tx, rx) = watch::channel(Vec::new());
    let own = OwnRoots::new(TrustDomain::new("mesh-a.test").unwrap(), move || {
        rx.borrow().clone()
    });
    let roots = EndpointRoots::Own(own);
    assert!(matches!(
        roots.authorities(),
        Err(SvidError::NoAuthorities { .. })
    ));
    tx.send_replace(vec![ca.clone()]);
    assert_eq!(roots.authorities(), Ok(vec![ca]));
}

/// A CA for mesh-b.test valid from `from` to `to` (seconds from now), and an endpoint SVID it
/// signed, valid now.
fn ca_and_leaf(from: i64, to: i64) -> (CertificateDer<'static>, CertificateDer<'static>) {
    use rcgen::{Issuer, KeyPair};
    let at = |secs: i64| time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.subject_alt_names = vec![SanType::URI("spiffe://mesh-b.test".try_into().unwrap())];
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = at(from);
    ca.not_after = at(to);
    let ca_cert = ca.self_signed(&ca_key).unwrap().der().clone();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::URI(ENDPOINT.try_into().unwrap())];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = at(-60);
    leaf.not_after = at(3600);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap().der().clone();
    (ca_cert, leaf_cert)
}

fn verify_with(
    ca: CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
) -> Result<(), rustls::Error> {
    let td = TrustDomain::new("mesh-b.test").unwrap();
    let roots = EndpointRoots::Own(OwnRoots::new(td, move || vec![ca.clone()]));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = SpiffeEndpointVerifier::new(endpoint(), roots, provider);
    let name = ServerName::try_from("bundle.mesh-b.test").unwrap();
    verifier
        .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn an_expired_or_not_yet_valid_authority_anchors_nothing() {
    // Issue 9 item 8: webpki ignores trust anchor dates; go-spiffe refuses such chains, so do we.
    let (ca, leaf) = ca_and_leaf(-3600, 3600);
    assert_eq!(
        verify_with(ca, &leaf),
        Ok(()),
        "a current CA anchors its SVID"
    );
    for (from, to, what) in [(-7200, -60, "expired"), (600, 7200, "not yet valid")] {
        let (ca, leaf) = ca_and_leaf(from, to);
        let err = verify_with(ca, &leaf).expect_err(what);
        let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = &err else {
            panic!("{what}: {err}");
        };
        assert_eq!(
            other.0.downcast_ref::<SvidError>(),
            Some(&SvidError::AuthoritiesExpired {
                trust_domain: TrustDomain::new("mesh-b.test").unwrap(),
                count: 1
            }),
            "{what}"
        );
    }
}
