//! The files writer on a real folder: layout, modes, the bundle map, stale trust domains, and
//! key/cert consistency under a concurrent reader.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{CURRENT, FilesWriter};
use crate::bundle::{jwks, pem};
use crate::sidecar::test_support::{TestCa, context};
use crate::spiffe_id::TrustDomain;

/// Whether the key in `key_pem` is the private half of the leaf in `cert_pem`.
fn key_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    CertifiedKey::new(certs, signing).keys_match().is_ok()
}

#[test]
fn writes_the_layout_with_stable_links_and_a_private_key_file() {
    let a = TestCa::new("mesh-a.test");
    let b = TestCa::new("mesh-b.test");
    let dir = tempfile::tempdir().unwrap();
    let mut w = FilesWriter::open(dir.path()).unwrap();
    let ctx = context(&a, "/frontend", &[&b]);
    let written = w.write(&ctx).unwrap();
    assert_eq!(written.version, 1);
    assert_eq!(
        fs::read_link(dir.path().join(CURRENT)).unwrap(),
        Path::new(".v1")
    );

    let d = dir.path();
    let cert = fs::read(d.join("svid.pem")).unwrap();
    let key = fs::read(d.join("svid_key.pem")).unwrap();
    assert!(key_matches(&cert, &key));
    assert_eq!(pem::parse_certs_pem(&cert).unwrap(), ctx.svid.cert_chain);
    let mode = fs::metadata(d.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        pem::parse_certs_pem(&fs::read(d.join("bundle.pem")).unwrap()).unwrap(),
        a.bundle()
    );
    assert_eq!(
        pem::parse_certs_pem(&fs::read(d.join("federated/mesh-b.test.pem")).unwrap()).unwrap(),
        b.bundle()
    );

    // TD&B 1.4.11: a bundle map keyed by bare trust domain names, each a SPIFFE bundle, no
    // per-bundle refresh hint.
    let map: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("bundles.json")).unwrap()).unwrap();
    let tds = map["trust_domains"].as_object().unwrap();
    assert_eq!(
        tds.keys().collect::<Vec<_>>(),
        ["mesh-a.test", "mesh-b.test"]
    );
    for (name, ca) in [("mesh-a.test", &a), ("mesh-b.test", &b)] {
        assert!(tds[name].get("spiffe_refresh_hint").is_none());
        let td = TrustDomain::new(name).unwrap();
        let parsed = jwks::parse(&td, tds[name].to_string().as_bytes()).unwrap();
        assert_eq!(parsed.bundle.x509_authorities, ca.bundle());
    }
}

#[test]
fn a_trust_domain_that_disappears_loses_its_file() {
    // WAPI 1.7.4: a trust domain missing from a later message was redacted.
    let a = TestCa::new("mesh-a.test");
    let b = TestCa::new("mesh-b.test");
    let dir = tempfile::tempdir().unwrap();
    let mut w = FilesWriter::open(dir.path()).unwrap();
    w.write(&context(&a, "/frontend", &[&b])).unwrap();
    assert!(dir.path().join("federated/mesh-b.test.pem").exists());
    let written = w.write(&context(&a, "/frontend", &[])).unwrap();
    assert_eq!(written.removed, std::slice::from_ref(&b.td));
    assert!(!dir.path().join("federated/mesh-b.test.pem").exists());
    let map: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("bundles.json")).unwrap()).unwrap();
    assert!(map["trust_domains"].get("mesh-b.test").is_none());
}

#[test]
fn old_versions_are_pruned_and_numbering_survives_a_restart() {
    let a = TestCa::new("mesh-a.test");
    let dir = tempfile::tempdir().unwrap();
    let mut w = FilesWriter::open(dir.path()).unwrap();
    for _ in 0..4 {
        w.write(&context(&a, "/frontend", &[])).unwrap();
    }
    let mut w = FilesWriter::open(dir.path()).unwrap();
    assert_eq!(w.write(&context(&a, "/frontend", &[])).unwrap().version, 5);
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".v"))
        .collect();
    left.sort();
    // The current version and the one before it (for readers that resolved it just before).
    assert_eq!(left, [".v4", ".v5"]);
}

#[test]
fn a_reader_never_sees_a_key_beside_another_versions_certificate() {
    // The reader resolves `current` once per read, as documented, and reads both files from
    // there; it must never find a mismatched pair, whatever the interleaving.
    let a = TestCa::new("mesh-a.test");
    let contexts: Vec<_> = (0..8).map(|_| context(&a, "/frontend", &[])).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut w = FilesWriter::open(dir.path()).unwrap();
    w.write(&contexts[0]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let root = dir.path().to_owned();
        std::thread::spawn(move || {
            let (mut good, mut bad, mut gone) = (0u32, 0u32, 0u32);
            while !stop.load(Ordering::Relaxed) || good == 0 {
                let Ok(version) = fs::canonicalize(root.join(CURRENT)) else {
                    gone += 1;
                    continue;
                };
                match (
                    fs::read(version.join("svid.pem")),
                    fs::read(version.join("svid_key.pem")),
                ) {
                    (Ok(cert), Ok(key)) => {
                        if key_matches(&cert, &key) {
                            good += 1;
                        } else {
                            bad += 1;
                        }
                    }
                    // Pruned between resolving and reading: retry, never a mismatch.
                    _ => gone += 1,
                }
            }
            (good, bad, gone)
        })
    };
    for i in 1..120 {
        w.write(&contexts[i % contexts.len()]).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (good, bad, gone) = reader.join().unwrap();
    assert_eq!(
        bad, 0,
        "mismatched key/cert pairs seen ({good} good, {gone} retried)"
    );
    assert!(good > 0);
}
