//! The Workload API served by `meshtrust::workload_api::serve` on a real Unix socket, as the
//! unmodified `spiffe` crate sees it: SVIDs (strict parse), X.509 contexts with federated
//! bundles per trust domain, bundles, and an `X509Source` following a CA rotation.
//! JWT, streams, access control and the JSON view have their own files (`workload_api_*.rs`).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use common::workload::*;
use spiffe::{TrustDomain as Td, X509Source};
use x509_parser::prelude::{FromDer as _, X509Certificate};

fn spiffe_td(name: &str) -> Td {
    Td::new(name).unwrap()
}

fn bundle_ders(set: &spiffe::X509BundleSet, name: &str) -> Option<Vec<Vec<u8>>> {
    set.get(&spiffe_td(name)).map(|b| {
        b.authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect()
    })
}

/// Whether `leaf` carries a signature made by `ca`'s key.
fn signed_by(leaf: &[u8], ca: &[u8]) -> bool {
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    let (_, ca) = X509Certificate::from_der(ca).unwrap();
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

#[tokio::test]
async fn the_spiffe_crate_gets_every_identity_default_first_with_hints() {
    // Workload API 1.7.7 and 1.7.13: svids in config order, the first is the default; hints
    // are passed through. X509-SVID 1.2.x is what the crate's strict parse enforces.
    let mesh = Mesh::start(default_entries()).await;
    let client = mesh.spiffe_client().await;

    let default = guard(client.fetch_x509_svid()).await.unwrap();
    assert_eq!(
        default.spiffe_id().to_string(),
        "spiffe://mesh-a.test/workload/first"
    );
    assert_eq!(default.hint(), Some("first"));

    let all = guard(client.fetch_all_x509_svids()).await.unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://mesh-a.test/workload/first",
            "spiffe://mesh-a.test/workload/second"
        ],
        "the uid-4242 entry is not ours"
    );
    assert_eq!(all[1].hint(), Some("second"));
    // One SVID per identity, shared by calls: the default SVID is the same certificate.
    assert_eq!(all[0].leaf().as_bytes(), default.leaf().as_bytes());
}

#[tokio::test]
async fn the_x509_context_keys_federated_bundles_per_trust_domain_and_filters_them() {
    // Federation 1.5.5 (never merged), Workload API 1.7.6 / §4.4, CONTRACT federates_with:
    // mesh-b (named by `first`) is served under its own name, mesh-c (named by nobody) is not.
    let mesh = Mesh::start(default_entries()).await;
    let client = mesh.spiffe_client().await;
    let context = guard(client.fetch_x509_context()).await.unwrap();
    let set = context.bundle_set();
    assert_eq!(bundle_ders(set, "mesh-a.test"), Some(mesh.own_ca_certs()));
    assert_eq!(bundle_ders(set, "mesh-b.test"), Some(mesh.peer_b_certs()));
    assert_eq!(bundle_ders(set, "mesh-c.test"), None);
    assert_eq!(set.len(), 2);
    assert_eq!(context.svids().len(), 2);

    let bundles = guard(client.fetch_x509_bundles()).await.unwrap();
    assert_eq!(
        bundle_ders(&bundles, "mesh-a.test"),
        Some(mesh.own_ca_certs())
    );
    assert_eq!(
        bundle_ders(&bundles, "mesh-b.test"),
        Some(mesh.peer_b_certs())
    );
    assert_eq!(
        bundles.len(),
        2,
        "Workload API 1.7.8: own plus entitled peers"
    );
}

#[tokio::test]
async fn issued_svids_pass_openssl_verify_against_the_served_bundle() {
    // X509-SVID 1.2.13: RFC 5280 path validation, for both TLS roles (EKU 1.2.12).
    let mesh = Mesh::start(default_entries()).await;
    let client = mesh.spiffe_client().await;
    let context = guard(client.fetch_x509_context()).await.unwrap();
    let roots: Vec<rustls_pki_types::CertificateDer<'static>> =
        bundle_ders(context.bundle_set(), "mesh-a.test")
            .unwrap()
            .into_iter()
            .map(Into::into)
            .collect();
    for svid in context.svids() {
        let leaf = rustls_pki_types::CertificateDer::from(svid.leaf().as_bytes().to_vec());
        for purpose in ["sslclient", "sslserver"] {
            let (ok, out) = common::openssl_verify(mesh.dir.path(), &roots, &leaf, purpose);
            assert!(ok, "{} {purpose}: {out}", svid.spiffe_id());
        }
    }
}

#[tokio::test]
async fn an_x509_source_follows_a_ca_rotation() {
    // Workload API 1.7.3: a rotation is a change, pushed on the open stream; the crate's
    // X509Source picks it up without reconnecting. Driven by a manual clock and `ca.tick()`.
    let mesh = Mesh::start(default_entries()).await;
    let source = guard(X509Source::builder().endpoint(mesh.endpoint()).build())
        .await
        .unwrap();
    let gen1 = mesh.own_ca_certs();
    assert_eq!(gen1.len(), 1);
    let first = source.svid().unwrap();
    assert!(signed_by(first.leaf().as_bytes(), &gen1[0]));

    // At 1/2 of the CA's 24 h the next CA is prepared (published, not signing): the bundle
    // grows on the open stream. At 5/6 it starts signing: the SVID is re-issued by it.
    let clock = mesh.clock.clone().unwrap();
    let mut updates = source.updated();
    clock.advance(Duration::from_secs(12 * 3600 + 1));
    assert!(mesh.ca.tick().unwrap());
    let cas = mesh.own_ca_certs();
    assert_eq!(cas.len(), 2, "old and new CA both in the bundle");
    guard(updates.wait_for(|_| {
        source
            .bundle_set()
            .is_ok_and(|set| bundle_ders(&set, "mesh-a.test") == Some(cas.clone()))
    }))
    .await
    .unwrap();
    assert!(signed_by(
        source.svid().unwrap().leaf().as_bytes(),
        &gen1[0]
    ));
    let gen2 = cas.iter().find(|c| **c != gen1[0]).unwrap().clone();

    clock.advance(Duration::from_secs(8 * 3600));
    assert!(mesh.ca.tick().unwrap());
    guard(updates.wait_for(|_| {
        source
            .svid()
            .is_ok_and(|s| signed_by(s.leaf().as_bytes(), &gen2))
    }))
    .await
    .unwrap();
    let svid = source.svid().unwrap();
    assert_ne!(svid.leaf().as_bytes(), first.leaf().as_bytes());
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://mesh-a.test/workload/first"
    );
    let bundles = source.bundle_set().unwrap();
    assert_eq!(bundle_ders(&bundles, "mesh-a.test"), Some(cas));
    source.shutdown().await;
}
