//! The CA through its library interface, on real SQLite state: certificate profiles
//! (SPIFFE.md §1.2) checked field by field, by openssl and by the `spiffe` crate, and a full
//! rotation cycle driven by a manual clock.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshtrust::ca::{Ca, CaPolicy, CaSnapshot, KeyType, RETIRE_GRACE};
use meshtrust::clock::{Clock, ManualClock};
use meshtrust::spiffe_id::{SpiffeId, TrustDomain};
use meshtrust::store::sqlite::SqliteStorage;
use meshtrust::store::{AuthorityState, Storage};
use x509_parser::prelude::*;

const HOUR: Duration = Duration::from_secs(3600);

fn policy(key_type: KeyType) -> CaPolicy {
    CaPolicy {
        key_type,
        ca_ttl: 24 * HOUR,
        x509_svid_ttl: HOUR,
        jwt_svid_ttl: Duration::from_secs(300),
        refresh_hint: Duration::from_secs(300),
    }
}

fn open(dir: &std::path::Path, clock: Arc<ManualClock>, key_type: KeyType) -> Ca {
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir).unwrap());
    Ca::open(
        TrustDomain::new("mesh-a.test").unwrap(),
        policy(key_type),
        clock,
        storage,
    )
    .unwrap()
}

fn start() -> SystemTime {
    // A whole second, so certificate times compare exactly.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn has_ext_critical(
    cert: &X509Certificate<'_>,
    oid: &x509_parser::der_parser::oid::Oid<'_>,
) -> Option<bool> {
    cert.extensions()
        .iter()
        .find(|e| &e.oid == oid)
        .map(|e| e.critical)
}

fn check_ca_profile(ca_der: &[u8], td: &str) {
    let (_, ca) = parse_x509_certificate(ca_der).unwrap();
    // X509-SVID 1.2.5, SPIFFE-ID 1.1.8: the CA's SPIFFE ID is the trust domain, no path.
    assert_eq!(common::uri_sans(ca_der), vec![format!("spiffe://{td}")]);
    // 1.2.4, 1.2.7: cA=true.
    let bc = ca.basic_constraints().unwrap().unwrap();
    assert!(bc.value.ca);
    assert!(bc.critical);
    // 1.2.9, 1.2.10, 1.2.11 (policy): critical KU keyCertSign + cRLSign, no digitalSignature.
    let ku = ca.key_usage().unwrap().unwrap();
    assert!(ku.critical, "X509-SVID 1.2.9: KU must be critical");
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    // 1.2.8 (policy): no name constraints.
    assert!(ca.name_constraints().unwrap().is_none());
    // Self-signed.
    assert_eq!(ca.subject(), ca.issuer());
    ca.verify_signature(None).unwrap();
}

fn check_leaf_profile(leaf_der: &[u8], ca_der: &[u8], id: &str, now: SystemTime, ttl: Duration) {
    let (_, leaf) = parse_x509_certificate(leaf_der).unwrap();
    let (_, ca) = parse_x509_certificate(ca_der).unwrap();
    // X509-SVID 1.2.1: exactly one URI SAN, the SPIFFE ID; 1.2.2 non-root path.
    assert_eq!(common::uri_sans(leaf_der), vec![id.to_owned()]);
    // 1.2.3: subject non-empty here, so SAN criticality is free.
    assert!(leaf.subject().iter_attributes().count() > 0);
    // 1.2.7: cA=false with the extension present.
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    // 1.2.9, 1.2.11: critical KU with digitalSignature, without keyCertSign/cRLSign.
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    // 1.2.12: EKU serverAuth + clientAuth.
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert_eq!(
        has_ext_critical(&leaf, &x509_parser::oid_registry::OID_X509_EXT_KEY_USAGE),
        Some(true)
    );
    // Random serial: 16 bytes, positive.
    assert!(
        leaf.raw_serial().len() >= 15,
        "serial {:?}",
        leaf.raw_serial()
    );
    // Validity: back-dated NotBefore; NotAfter = min(now + ttl, CA NotAfter).
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    let now_s = i64::try_from(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!(
        nb < now_s && nb >= now_s - 60,
        "back-dated a little: {nb} vs {now_s}"
    );
    let ttl_s = i64::try_from(ttl.as_secs()).unwrap();
    assert_eq!(na, (now_s + ttl_s).min(ca.validity().not_after.timestamp()));
    // Chains to the CA: issuer name and signature.
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key())).unwrap();
}

fn issue(snapshot: &CaSnapshot, id: &str, now: SystemTime) -> meshtrust::svid::X509Svid {
    snapshot
        .issue_x509_svid(&SpiffeId::new(id).unwrap(), now)
        .unwrap()
}

#[test]
fn issued_svids_and_ca_certs_follow_the_x509_svid_profile_for_every_key_type() {
    common::init();
    for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let ca = open(dir.path(), clock.clone(), key_type);
        let snap = ca.snapshot();
        let active = snap.active().unwrap();
        check_ca_profile(&active.cert, "mesh-a.test");
        let id = "spiffe://mesh-a.test/ns/default/sa/frontend";
        let svid = issue(&snap, id, clock.now());
        check_leaf_profile(&svid.cert_chain[0], &active.cert, id, clock.now(), HOUR);

        // openssl: the leaf verifies against the bundle for both TLS roles.
        for purpose in ["sslclient", "sslserver"] {
            let (ok, out) = common::openssl_verify(
                dir.path(),
                &snap.bundle.x509_authorities,
                &svid.cert_chain[0],
                purpose,
            );
            assert!(ok, "{key_type:?} {purpose}: {out}");
        }
        // An independent parser: the spiffe crate's strict X509Svid checks (key match included).
        let parsed =
            spiffe::X509Svid::parse_from_der(&svid.cert_chain[0], svid.private_key.pkcs8_der())
                .unwrap_or_else(|e| panic!("{key_type:?}: spiffe crate rejects our SVID: {e}"));
        assert_eq!(parsed.spiffe_id().to_string(), id);
    }
}

#[test]
fn an_svid_never_outlives_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let ca = open(dir.path(), clock.clone(), KeyType::EcP256);
    // 23h30m into a 24h CA (no tick: the rotation task is not running), a 1h SVID is cut short.
    clock.advance(23 * HOUR + HOUR / 2);
    let snap = ca.snapshot();
    let svid = issue(&snap, "spiffe://mesh-a.test/w", clock.now());
    assert_eq!(svid.not_after, snap.active().unwrap().not_after);
    check_leaf_profile(
        &svid.cert_chain[0],
        &snap.active().unwrap().cert,
        "spiffe://mesh-a.test/w",
        clock.now(),
        HOUR,
    );
}

#[test]
fn a_root_path_id_gets_no_svid() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let ca = open(dir.path(), clock.clone(), KeyType::EcP256);
    let err = ca
        .snapshot()
        .issue_x509_svid(&SpiffeId::new("spiffe://mesh-a.test").unwrap(), clock.now())
        .expect_err("X509-SVID 1.2.2");
    assert!(
        matches!(&err, meshtrust::ca::CaError::NotAWorkloadId(id) if id.to_string() == "spiffe://mesh-a.test"),
        "{err}"
    );
}

fn states(snap: &CaSnapshot) -> Vec<(u64, AuthorityState)> {
    snap.slots
        .iter()
        .map(|s| (s.authority.generation, s.state))
        .collect()
}

#[test]
fn a_full_rotation_cycle_publishes_before_signing_and_prunes_after_the_last_svid_expired() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let ca = open(dir.path(), clock.clone(), KeyType::EcP256);
    let s0 = ca.snapshot();
    assert_eq!(states(&s0), vec![(1, AuthorityState::Active)]);
    assert_eq!(s0.bundle.sequence, Some(1));
    assert_eq!(s0.bundle.x509_authorities.len(), 1);
    assert_eq!(s0.bundle.jwt_authorities.len(), 1);

    // Ticks that change nothing leave the sequence alone (TD&B 1.4.4: changes only on change).
    clock.advance(11 * HOUR);
    assert!(!ca.tick().unwrap());
    assert_eq!(ca.snapshot().bundle.sequence, Some(1));

    // 12h (half of 24h): the prepared CA enters the bundle at once; the sequence rises.
    clock.advance(HOUR);
    assert!(ca.tick().unwrap());
    let s1 = ca.snapshot();
    assert_eq!(
        states(&s1),
        vec![(1, AuthorityState::Active), (2, AuthorityState::Prepared)]
    );
    assert_eq!(s1.bundle.sequence, Some(2));
    assert_eq!(s1.bundle.x509_authorities.len(), 2);
    // ...but it does not sign yet (Federation 1.5.2: published before it signs).
    let svid = issue(&s1, "spiffe://mesh-a.test/w", clock.now());
    check_leaf_profile(
        &svid.cert_chain[0],
        &s1.slots[0].authority.cert,
        "spiffe://mesh-a.test/w",
        clock.now(),
        HOUR,
    );
    let prepared_ca = s1.prepared().unwrap().cert.clone();

    // 20h (5/6): the prepared CA signs, the old one retires; the bundle content is unchanged,
    // so the sequence stays.
    clock.advance(8 * HOUR);
    let last_old_svid = issue(&ca.snapshot(), "spiffe://mesh-a.test/w", clock.now());
    assert!(ca.tick().unwrap());
    let s2 = ca.snapshot();
    assert_eq!(
        states(&s2),
        vec![(1, AuthorityState::Retired), (2, AuthorityState::Active)]
    );
    assert_eq!(s2.bundle.sequence, Some(2));
    let new_svid = issue(&s2, "spiffe://mesh-a.test/w", clock.now());
    check_leaf_profile(
        &new_svid.cert_chain[0],
        &prepared_ca,
        "spiffe://mesh-a.test/w",
        clock.now(),
        HOUR,
    );

    // The retired CA stays while an SVID it signed is still valid.
    clock.set(last_old_svid.not_after - Duration::from_secs(1));
    assert!(!ca.tick().unwrap());
    assert_eq!(ca.snapshot().bundle.x509_authorities.len(), 2);
    // It leaves after its last SVID's expiry (plus the grace); the sequence rises.
    clock.set(last_old_svid.not_after + RETIRE_GRACE + Duration::from_secs(1));
    assert!(ca.tick().unwrap());
    let s3 = ca.snapshot();
    assert_eq!(states(&s3), vec![(2, AuthorityState::Active)]);
    assert_eq!(s3.bundle.sequence, Some(3));
    assert_eq!(s3.bundle.x509_authorities, vec![prepared_ca]);
}

#[test]
fn reopening_the_state_keeps_the_ca_bundle_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let (json, cert) = {
        let ca = open(dir.path(), clock.clone(), KeyType::EcP256);
        clock.advance(12 * HOUR);
        ca.tick().unwrap();
        let s = ca.snapshot();
        (s.bundle_json.clone(), s.active().unwrap().cert.clone())
    };
    let ca = open(dir.path(), clock.clone(), KeyType::EcP256);
    let s = ca.snapshot();
    assert_eq!(s.bundle_json, json);
    assert_eq!(s.bundle.sequence, Some(2));
    assert_eq!(s.active().unwrap().cert, cert);
}

#[test]
fn a_changed_refresh_hint_bumps_the_sequence_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir.path()).unwrap());
    let td = TrustDomain::new("mesh-a.test").unwrap();
    let ca = Ca::open(
        td.clone(),
        policy(KeyType::EcP256),
        clock.clone(),
        storage.clone(),
    )
    .unwrap();
    assert_eq!(ca.snapshot().bundle.sequence, Some(1));
    drop(ca);
    let mut p = policy(KeyType::EcP256);
    p.refresh_hint = Duration::from_secs(60);
    let ca = Ca::open(td.clone(), p.clone(), clock.clone(), storage.clone()).unwrap();
    assert_eq!(ca.snapshot().bundle.sequence, Some(2));
    assert_eq!(
        ca.snapshot().bundle.refresh_hint,
        Some(Duration::from_secs(60))
    );
    drop(ca);
    let ca = Ca::open(td, p, clock, storage).unwrap();
    assert_eq!(ca.snapshot().bundle.sequence, Some(2));
}

#[test]
fn the_state_folder_and_database_are_private_and_debug_output_hides_keys() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let clock = Arc::new(ManualClock::new(start()));
    let ca = open(&dir, clock, KeyType::EcP256);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let snap = ca.snapshot();
    let svid = issue(&snap, "spiffe://mesh-a.test/w", start());
    let debug = format!("{snap:?} {svid:?} {ca:?}");
    assert!(debug.contains("redacted"));
    let key_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(svid.private_key.pkcs8_der())
    };
    assert!(!debug.contains(&key_b64[..40]));
    assert!(!debug.contains(&format!("{:?}", &svid.private_key.pkcs8_der()[..16])));
}
