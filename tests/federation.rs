//! Two real daemons federate over `https_spiffe` from bootstrap bundles (SPIFFE.md §2), then one
//! rotates its CA and the other follows with no operator step; a restarted daemon serves its
//! pinned bundles before the peer answers.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use common::eventually;
use common::mesh::Mesh;
use meshtrust::app::Daemon;
use meshtrust::spiffe_id::TrustDomain;
use rustls_pki_types::CertificateDer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshes_federate_and_follow_a_ca_rotation_without_an_operator() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut a = Mesh::new(root.path(), "mesh-a").await;
    let mut b = Mesh::new(root.path(), "mesh-b").await;
    a.write_config("", "1s", Some(&b), "");
    // mesh-b rotates fast: prepared at 6s, signing at 10s, old CA gone at 12s (counted from its
    // creation by `give_bootstrap_to`). mesh-a polls every second, so it has 4 s to see the
    // prepared CA before it signs, even on a loaded machine.
    b.write_config(
        "ca_ttl = \"12s\"\nx509_svid_ttl = \"2s\"\njwt_svid_ttl = \"2s\"",
        "1s",
        Some(&a),
        "",
    );
    a.give_bootstrap_to(&b);
    b.give_bootstrap_to(&a);
    let da = a.start().await;
    let db = b.start().await;
    let (td_a, td_b) = (
        TrustDomain::new("mesh-a.test").unwrap(),
        TrustDomain::new("mesh-b.test").unwrap(),
    );
    // The CA the bootstrap bundle was made from: mesh-b's first, signing until the rotation.
    let first_b_ca = db.ca.snapshot().active().unwrap().cert.clone();

    // Each holds the other's bundle, pinned under the configured name (Federation 1.5.4, 1.5.5).
    eventually(
        "each mesh pins the other's bundle",
        || {
            da.peers
                .get(&td_b)
                .is_some_and(|p| p.same_authorities(&db.ca.snapshot().bundle))
                && db
                    .peers
                    .get(&td_a)
                    .is_some_and(|p| p.same_authorities(&da.ca.snapshot().bundle))
        },
    )
    .await;
    assert!(
        da.peers
            .get(&td_b)
            .unwrap()
            .x509_authorities
            .contains(&first_b_ca)
    );

    // mesh-b publishes its prepared CA; mesh-a pins it before it signs (Federation 1.5.2). Both
    // are observed together: mesh-a's pin first, then mesh-b's state, so a CA still prepared
    // at the second look was only prepared when it was pinned.
    prepared_ca_pinned_before_it_signs(&da, &db, &td_b, &first_b_ca).await;

    // mesh-b's old CA leaves; mesh-a follows, and keeps fetching successfully from an endpoint
    // whose SVID now chains to the new CA. (At 12s the new CA is itself at half-life, so its own
    // successor may join as the old one leaves: follow the old CA out, not a one-CA bundle.)
    eventually(
        "mesh-a follows mesh-b's rotation to the end",
        || {
            let pinned = da.peers.get(&td_b);
            let now_b = db.ca.snapshot();
            pinned.is_some_and(|p| {
                !p.x509_authorities.contains(&first_b_ca)
                    && p.same_authorities(&now_b.bundle)
                    && p.sequence == now_b.bundle.sequence
            })
        },
    )
    .await;
    let st = da.status.get(&td_b).unwrap();
    assert_eq!(st.state.as_str(), "ok", "{:?}", st.last_error);
    assert!(st.fetches.get("ok").copied().unwrap_or(0) >= 3);
    da.shutdown().await;
    db.shutdown().await;
}

/// Waits until mesh-a has pinned mesh-b's first CA next to a second one that mesh-b still holds
/// as prepared (not yet signing). Fails at once if mesh-b's first CA stops signing first, and
/// after a hang guard otherwise.
async fn prepared_ca_pinned_before_it_signs(
    da: &Daemon,
    db: &Daemon,
    td_b: &TrustDomain,
    first_b_ca: &CertificateDer<'static>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pinned = da.peers.get(td_b).unwrap();
        let now_b = db.ca.snapshot();
        if let Some(prepared) = now_b.prepared()
            && pinned.x509_authorities.contains(first_b_ca)
            && pinned.x509_authorities.contains(&prepared.cert)
        {
            assert_eq!(pinned.x509_authorities.len(), 2, "{pinned:?}");
            return;
        }
        assert_eq!(
            now_b.active().map(|a| &a.cert),
            Some(first_b_ca),
            "mesh-b's prepared CA started signing before mesh-a pinned it"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for mesh-a to pin mesh-b's prepared CA"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_serves_its_pinned_bundles_before_the_peer_answers() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut a = Mesh::new(root.path(), "mesh-a").await;
    let mut b = Mesh::new(root.path(), "mesh-b").await;
    a.write_config("", "1s", Some(&b), "");
    b.write_config("", "1s", None, "");
    b.give_bootstrap_to(&a);
    let db = b.start().await;
    let da = a.start().await;
    let td_b = TrustDomain::new("mesh-b.test").unwrap();
    eventually("mesh-a pins mesh-b", || {
        da.peers.get(&td_b).is_some()
    })
    .await;
    let pinned = da.peers.get(&td_b).unwrap();
    da.shutdown().await;
    db.shutdown().await;
    // The bootstrap bundle only authenticates the endpoint; it never enters the peer store, so
    // what is there right after the restart comes from the pinned state.
    a.listener = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let da = a.start().await;
    // Before any fetch can succeed (mesh-b is down), the pinned bundle is there.
    assert_eq!(da.peers.get(&td_b).as_deref(), Some(&*pinned));
    eventually(
        "the fetch to a dead peer fails",
        || {
            da.status
                .get(&td_b)
                .is_some_and(|s| s.state.as_str() == "failing")
        },
    )
    .await;
    assert_eq!(
        da.peers.get(&td_b).as_deref(),
        Some(&*pinned),
        "a failure keeps the last good bundle"
    );
    da.shutdown().await;
}
