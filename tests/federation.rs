//! Two real daemons federate over `https_spiffe` from bootstrap bundles (SPIFFE.md §2), then one
//! rotates its CA and the other follows with no operator step; a restarted daemon serves its
//! pinned bundles before the peer answers.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::eventually;
use common::mesh::Mesh;
use meshtrust::clock::Clock;
use meshtrust::spiffe_id::TrustDomain;

/// The real clock, held back at a cap the test sets: mesh-b's CA cannot reach a rotation step
/// past the cap until the test has seen what it waits for. Held time stays behind real time,
/// so everything mesh-b issues meanwhile is already valid for a peer on the real clock.
#[derive(Debug, Default)]
struct CappedClock(Mutex<Option<SystemTime>>);

impl CappedClock {
    fn cap(&self, at: Option<SystemTime>) {
        *self.0.lock().unwrap() = at;
    }
}

impl Clock for CappedClock {
    fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        self.0.lock().unwrap().map_or(now, |cap| cap.min(now))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshes_federate_and_follow_a_ca_rotation_without_an_operator() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut a = Mesh::new(root.path(), "mesh-a").await;
    let mut b = Mesh::new(root.path(), "mesh-b").await;
    a.write_config("", "1s", Some(&b), "");
    // mesh-b rotates fast: prepared at 15s, signing at 25s, old CA gone at 30s (counted from
    // its creation by `give_bootstrap_to`). Its clock is capped just before the signing step
    // until mesh-a has pinned the prepared CA, so the order "published, pinned, then signing"
    // (Federation 1.5.2) is the test's doing, not a race against mesh-a's 1 s polling.
    b.write_config(
        "ca_ttl = \"30s\"\nx509_svid_ttl = \"10s\"\njwt_svid_ttl = \"10s\"",
        "1s",
        Some(&a),
        "",
    );
    a.give_bootstrap_to(&b);
    b.give_bootstrap_to(&a);
    let clock_b = Arc::new(CappedClock::default());
    let da = a.start().await;
    let db = b.start_with_clock(clock_b.clone()).await;
    let (td_a, td_b) = (common::td("mesh-a.test"), common::td("mesh-b.test"));
    // The CA the bootstrap bundle was made from: mesh-b's first, signing until the rotation.
    let first = db.ca.snapshot();
    let first_b_ca = first.active().unwrap().cert.clone();
    let not_after = x509_parser::parse_x509_certificate(&first_b_ca)
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp();
    let signing_at = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(not_after).unwrap())
        - Duration::from_secs(5);
    clock_b.cap(Some(signing_at - Duration::from_secs(2)));

    // Each holds the other's bundle, pinned under the configured name (Federation 1.5.4, 1.5.5).
    eventually("each mesh pins the other's bundle", || {
        da.peers
            .get(&td_b)
            .is_some_and(|p| p.same_authorities(&db.ca.snapshot().bundle))
            && db
                .peers
                .get(&td_a)
                .is_some_and(|p| p.same_authorities(&da.ca.snapshot().bundle))
    })
    .await;
    assert!(
        da.peers
            .get(&td_b)
            .unwrap()
            .x509_authorities
            .contains(&first_b_ca)
    );

    // mesh-b publishes its prepared CA; mesh-a pins it while it is still only prepared.
    eventually("mesh-a pins mesh-b's prepared CA", || {
        let pinned = da.peers.get(&td_b).unwrap();
        db.ca.snapshot().prepared().is_some_and(|p| {
            pinned.x509_authorities.contains(&first_b_ca)
                && pinned.x509_authorities.contains(&p.cert)
        })
    })
    .await;
    let now_b = db.ca.snapshot();
    assert_eq!(
        now_b.active().map(|a| &a.cert),
        Some(&first_b_ca),
        "still the first signs"
    );
    assert_eq!(da.peers.get(&td_b).unwrap().x509_authorities.len(), 2);

    // The cap lifts: mesh-b's new CA signs and its old one leaves; mesh-a follows, and keeps
    // fetching successfully from an endpoint whose SVID now chains to the new CA. (At 30s the
    // new CA is itself at half-life, so its own successor may join as the old one leaves:
    // follow the old CA out, not a one-CA bundle.)
    clock_b.cap(None);
    eventually("mesh-a follows mesh-b's rotation to the end", || {
        let pinned = da.peers.get(&td_b);
        let now_b = db.ca.snapshot();
        pinned.is_some_and(|p| {
            !p.x509_authorities.contains(&first_b_ca)
                && p.same_authorities(&now_b.bundle)
                && p.sequence == now_b.bundle.sequence
        })
    })
    .await;
    assert_ne!(
        db.ca.snapshot().active().map(|a| &a.cert),
        Some(&first_b_ca)
    );
    let st = da.status.get(&td_b).unwrap();
    assert_eq!(st.state.as_str(), "ok", "{:?}", st.last_error);
    assert!(st.fetches.get("ok").copied().unwrap_or(0) >= 3);
    da.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_serves_its_pinned_bundles_before_the_peer_answers() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    // mesh-a federates with mesh-b, bootstrapped with its bundle; mesh-b with nobody.
    let (mut a, mut b) = Mesh::pair(root.path(), "", "", false).await;
    let db = b.start().await;
    let da = a.start().await;
    let td_b = TrustDomain::new("mesh-b.test").unwrap();
    eventually("mesh-a pins mesh-b", || da.peers.get(&td_b).is_some()).await;
    let pinned = da.peers.get(&td_b).unwrap();
    da.shutdown().await;
    db.shutdown().await;
    // The bootstrap bundle only authenticates the endpoint; it never enters the peer store, so
    // what is there right after the restart comes from the pinned state.
    a.listener = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let da = a.start().await;
    // Before any fetch can succeed (mesh-b is down), the pinned bundle is there.
    assert_eq!(da.peers.get(&td_b).as_deref(), Some(&*pinned));
    eventually("the fetch to a dead peer fails", || {
        da.status
            .get(&td_b)
            .is_some_and(|s| s.state.as_str() == "failing")
    })
    .await;
    assert_eq!(
        da.peers.get(&td_b).as_deref(),
        Some(&*pinned),
        "a failure keeps the last good bundle"
    );
    da.shutdown().await;
}
