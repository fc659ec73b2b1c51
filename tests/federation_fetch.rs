//! The peer bundle fetcher end to end: real TLS on 127.0.0.1, a real `Ca` on the peer side, our
//! `PeerStore` on SQLite, and a hostile endpoint of our own whose answers each test chooses
//! (SPIFFE.md "Decisions", §1.5, §2 "Consuming", §6.6, §7.11).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "federation_fetch/failures.rs"]
mod failures;
#[path = "federation_fetch/harness.rs"]
mod harness;
#[path = "federation_fetch/hostile.rs"]
mod hostile;
#[path = "federation_fetch/web.rs"]
mod web;

use std::time::{Duration, SystemTime};

use meshtrust::bundle::pem;
use meshtrust::federation::client::FetchLimits;
use meshtrust::federation::status::PeerState;
use meshtrust::federation::verifier::OwnRoots;
use serde_json::json;

use harness::*;
use hostile::{Behaviour, Hostile};

const MIN: Duration = Duration::from_secs(60);

/// A peer serving its bundle at `/` with its endpoint SVID; our fetcher bootstrapped with that
/// bundle (JSON), started.
async fn bootstrapped(limits: FetchLimits) -> (PeerCa, Hostile, Ours) {
    let peer = PeerCa::now(PEER);
    let server = Hostile::start(peer.endpoint_tls(ENDPOINT)).await;
    server.route("/", Behaviour::ok(peer.bundle_json()));
    let dir = Ours::dir();
    let bootstrap = Ours::write(&dir, "bootstrap.json", &peer.bundle_json());
    let peers = [spiffe_peer(server.url("/"), Some(bootstrap))];
    let ours = Ours::start(dir, &peers, no_own_roots(), limits).unwrap();
    (peer, server, ours)
}

/// [`bootstrapped`] with one good fetch done.
pub async fn good_setup(limits: FetchLimits) -> (PeerCa, Hostile, Ours) {
    let (peer, server, ours) = bootstrapped(limits).await;
    let first = ours.refresh(PEER).await;
    assert!(first.ok, "{first:?}");
    assert_eq!(first.sequence, Some(1));
    (peer, server, ours)
}

#[tokio::test]
async fn a_bootstrapped_fetch_pins_the_bundle_and_the_pinned_bundle_carries_the_peer_through_a_ca_rotation()
 {
    // SPIFFE.md §2 "Self-serving": the first fetch is validated with the bootstrap bundle (PEM
    // here), every later one with the latest pinned bundle, so the peer can rotate its CA.
    // Real time sits at 54/60 of the first CA's life, so every SVID below is valid now.
    let t0 = SystemTime::now() - 54 * MIN;
    let peer = PeerCa::new(PEER, t0);
    let dir = Ours::dir();
    let bootstrap = pem::certs_to_pem(&peer.bundle().x509_authorities);
    let bootstrap = Ours::write(&dir, "bootstrap.pem", bootstrap.as_bytes());
    peer.clock.set(t0 + 29 * MIN);
    peer.ca.tick().unwrap();
    let server = Hostile::start(peer.endpoint_tls(ENDPOINT)).await;
    server.route("/", Behaviour::ok(peer.bundle_json()));
    let peers = [spiffe_peer(server.url("/"), Some(bootstrap))];
    let ours = Ours::start(dir, &peers, no_own_roots(), FetchLimits::default()).unwrap();

    let report = ours.refresh(PEER).await;
    assert!(report.ok, "{report:?}");
    assert_eq!((report.sequence, report.authorities), (Some(1), 1));
    assert_eq!(ours.status(PEER).state, PeerState::Ok);

    // The peer prepares its next CA and publishes it (still signing with the first).
    peer.clock.set(t0 + 31 * MIN);
    peer.ca.tick().unwrap();
    server.route("/", Behaviour::ok(peer.bundle_json()));
    let report = ours.refresh(PEER).await;
    assert!(report.ok && report.changed, "{report:?}");
    assert_eq!(report.authorities, 2);

    // The new CA signs; the endpoint now presents an SVID the bootstrap bundle cannot validate.
    peer.clock.set(t0 + 52 * MIN);
    peer.ca.tick().unwrap();
    assert_eq!(peer.ca.snapshot().active().unwrap().generation, 2);
    server.set_tls(peer.endpoint_tls(ENDPOINT));
    server.route("/", Behaviour::ok(peer.bundle_json()));
    let report = ours.refresh(PEER).await;
    assert!(report.ok, "accepted through the pinned bundle: {report:?}");
    assert!(ours.pinned(PEER).unwrap().same_authorities(&peer.bundle()));

    // Control: with the pin reset, only the bootstrap bundle is left, and it refuses the SVID.
    ours.store.reset(&td(PEER)).unwrap();
    ours.refresh_refused(PEER, "invalid peer certificate").await;
}

#[tokio::test]
async fn the_first_fetch_happens_at_start() {
    let (peer, _server, ours) = bootstrapped(FetchLimits::default()).await;
    let mut changes = ours.store.subscribe();
    tokio::time::timeout(Duration::from_secs(30), changes.wait_for(|m| !m.is_empty()))
        .await
        .expect("no fetch at start")
        .unwrap();
    assert!(ours.pinned(PEER).unwrap().same_authorities(&peer.bundle()));
    let status = ours.status(PEER);
    assert_eq!(status.state, PeerState::Ok);
    assert!(status.last_success.is_some() && status.next_refresh.is_some());
    assert_eq!(status.fetches.get("ok"), Some(&1));
}

#[tokio::test]
async fn unknown_use_and_kty_keys_next_to_good_keys_are_skipped_and_the_good_keys_kept() {
    // TD&B 1.4.6, 1.4.8, 1.4.9; SPIFFE.md "Decisions": each JWK judged on its own.
    let (peer, server, ours) = good_setup(FetchLimits::default()).await;
    let mut doc: serde_json::Value = serde_json::from_slice(&peer.bundle_json()).unwrap();
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.push(json!({"use": "wit-svid", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}));
    keys.push(json!({"use": "x509-svid", "kty": "OKP", "crv": "Ed25519", "x": "AA"}));
    keys.push(json!({"use": "x509-svid", "kty": "EC"}));
    doc["spiffe_sequence"] = json!(5);
    server.route("/", Behaviour::ok(serde_json::to_vec(&doc).unwrap()));
    let report = ours.refresh(PEER).await;
    assert!(report.ok, "{report:?}");
    let pinned = ours.pinned(PEER).unwrap();
    assert_eq!(pinned.sequence, Some(5));
    assert!(pinned.same_authorities(&peer.bundle()));
    assert!(!pinned.jwt_authorities.is_empty());
}

#[tokio::test]
async fn keys_empty_is_pinned_as_revocation_and_the_endpoint_then_fails_closed() {
    // TD&B 1.4.7, SPIFFE.md §7.14: `keys: []` is a valid bundle that revokes the peer.
    let (peer, server, ours) = good_setup(FetchLimits::default()).await;
    server.route(
        "/",
        Behaviour::ok(br#"{"keys":[],"spiffe_sequence":2}"#.to_vec()),
    );
    let report = ours.refresh(PEER).await;
    assert!(report.ok && report.changed, "{report:?}");
    assert_eq!((report.sequence, report.authorities), (Some(2), 0));
    assert!(ours.pinned(PEER).unwrap().is_empty());

    // No authority is left to authenticate the (self-serving) endpoint: refused, still revoked.
    server.route("/", Behaviour::ok(with_sequence(&peer.bundle(), 3)));
    ours.refresh_refused(PEER, "no x509 authority for trust domain mesh-b.test")
        .await;
    assert!(ours.pinned(PEER).unwrap().is_empty());
}

#[tokio::test]
async fn an_https_redirect_is_followed_with_the_same_checks_and_never_stored() {
    // Federation 1.5.11.
    let (peer, server, ours) = good_setup(FetchLimits::default()).await;
    server.route("/", Behaviour::Redirect(server.url("/moved").to_string()));
    server.route("/moved", Behaviour::ok(with_sequence(&peer.bundle(), 4)));
    let report = ours.refresh(PEER).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.sequence, Some(4));
    let report = ours.refresh(PEER).await;
    assert!(report.ok, "{report:?}");
    let requests = server.requests();
    assert_eq!(
        requests[requests.len() - 4..],
        ["/", "/moved", "/", "/moved"]
    );

    // A redirect to another endpoint presenting another SPIFFE ID is refused.
    let other = Hostile::start(peer.endpoint_tls("spiffe://mesh-b.test/other")).await;
    other.route("/", Behaviour::ok(with_sequence(&peer.bundle(), 9)));
    server.route("/", Behaviour::Redirect(other.url("/").to_string()));
    ours.refresh_refused(PEER, "expected spiffe://mesh-b.test/meshtrust/server")
        .await;
    assert_eq!(ours.pinned(PEER).unwrap().sequence, Some(4));
}

#[tokio::test]
async fn an_endpoint_id_in_our_own_trust_domain_is_checked_against_our_own_ca() {
    // SPIFFE.md §2 "Non-self-serving": the bundle of the endpoint ID's trust domain.
    let own = PeerCa::now(OWN);
    let peer = PeerCa::now(PEER);
    let mirror = "spiffe://mesh-a.test/mesh-b-mirror";
    let server = Hostile::start(own.endpoint_tls(mirror)).await;
    server.route("/", Behaviour::ok(peer.bundle_json()));
    let peers = [spiffe_peer_with_id(server.url("/"), mirror, None)];
    let roots = OwnRoots::from_ca(own.ca.subscribe());
    let ours = Ours::start(Ours::dir(), &peers, roots, FetchLimits::default()).unwrap();
    let report = ours.refresh(PEER).await;
    assert!(report.ok, "{report:?}");
    assert!(ours.pinned(PEER).unwrap().same_authorities(&peer.bundle()));

    // Without our own authorities, nothing validates the endpoint: fail closed.
    let ours = Ours::start(Ours::dir(), &peers, no_own_roots(), FetchLimits::default()).unwrap();
    ours.refresh_refused(PEER, "no x509 authority for trust domain mesh-a.test")
        .await;
}

#[tokio::test]
async fn cancellation_stops_a_fetcher_even_in_the_middle_of_a_stalled_fetch() {
    let limits = FetchLimits {
        total_timeout: Duration::from_secs(3600),
        ..FetchLimits::default()
    };
    let (_peer, server, ours) = good_setup(limits).await;
    let before = server.requests().len();
    server.route("/", Behaviour::Stall);
    let refresh = ours.refresh.clone();
    let pending = tokio::spawn(async move { refresh.refresh(&td(PEER)).await });
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.requests().len() <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled fetch never started");
    ours.cancel.cancel();
    ours.tracker.close();
    tokio::time::timeout(Duration::from_secs(30), ours.tracker.wait())
        .await
        .expect("the fetcher did not stop");
    assert_eq!(pending.await.unwrap(), None);
    assert!(ours.refresh.refresh(&td(PEER)).await.is_none());
}

#[tokio::test]
async fn a_refresh_of_a_peer_that_is_not_configured_gets_no_report() {
    let (_peer, _server, ours) = good_setup(FetchLimits::default()).await;
    assert!(ours.refresh.refresh(&td("mesh-z.test")).await.is_none());
}
