//! A peer's revocation, end to end: the peer's endpoint serves `keys: []`, the daemon's fetcher
//! pins it, and a workload's open FetchX509Bundles and FetchX509SVID streams receive it as an
//! empty bundle for that trust domain (TD&B 1.4.7: `keys: []` revokes everything; SPIFFE.md
//! §7.14 and CONTRACT: empty bundles are propagated, not dropped; Workload API 1.7.3: the change
//! is pushed with the full state).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
#[allow(dead_code)] // shared with tests/federation_fetch.rs, which uses the rest
#[path = "federation_fetch/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "federation_fetch/hostile.rs"]
mod hostile;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::config::DaemonConfig;
use common::grpc::{next, x509_bundles, x509_svids};
use common::workload::der_list;
use common::{guard, td};
use harness::{ENDPOINT, PEER, PeerCa};
use hostile::{Behaviour, Hostile};
use meshtrust::app::Daemon;
use meshtrust::clock::SystemClock;
use meshtrust::config::Config;

const PEER_ID: &str = "spiffe://mesh-b.test";
const OWN_ID: &str = "spiffe://mesh-a.test";

/// mesh-a in-process: one https_spiffe peer (mesh-b at `url`, bootstrapped with `bootstrap`), and
/// an entry for this process's uid that federates with it.
async fn start_mesh_a(dir: &Path, url: &url::Url, bootstrap: &[u8]) -> Daemon {
    let path = DaemonConfig::new("mesh-a.test")
        .peer(PEER, url.as_str(), Some(ENDPOINT), true)
        .entry("spiffe://mesh-a.test/revocation-test", &[PEER])
        .write(dir);
    std::fs::write(dir.join(format!("peers/{PEER}.json")), bootstrap).unwrap();
    Daemon::start(Config::load(&path).unwrap(), Arc::new(SystemClock))
        .await
        .unwrap()
}

/// mesh-b's bundle in a message's map, asserting it is there: a revoked peer is an empty value,
/// never a missing key (a missing key would also be how a relationship is *removed*).
fn peer_entry<'a>(bundles: &'a HashMap<String, Vec<u8>>, what: &str) -> &'a [u8] {
    bundles
        .get(PEER_ID)
        .unwrap_or_else(|| panic!("{what}: no entry for {PEER_ID}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_empty_served_by_the_peer_reaches_open_workload_streams_as_an_empty_bundle() {
    common::init();
    let peer = PeerCa::now(PEER);
    let server = Hostile::start(peer.endpoint_tls(ENDPOINT)).await;
    server.route("/", Behaviour::ok(peer.bundle_json()));
    let dir = tempfile::tempdir().unwrap();
    let da = start_mesh_a(dir.path(), &server.url("/"), &peer.bundle_json()).await;
    let first = guard(da.refresh.refresh(&td(PEER))).await.unwrap();
    assert!(first.ok, "{first:?}");

    let mut bundles = x509_bundles(&da.workload_socket).await;
    let mut svids = x509_svids(&da.workload_socket).await;
    let peer_der = der_list(&peer.bundle().x509_authorities).concat();
    let msg = next(&mut bundles).await;
    assert_eq!(peer_entry(&msg.bundles, "bundles, before"), peer_der);
    let msg = next(&mut svids).await;
    assert_eq!(
        peer_entry(&msg.federated_bundles, "svids, before"),
        peer_der
    );

    // The peer revokes everything; the next fetch pins it (as the fetcher's poll would).
    server.route(
        "/",
        Behaviour::ok(br#"{"keys":[],"spiffe_sequence":2}"#.to_vec()),
    );
    let report = guard(da.refresh.refresh(&td(PEER))).await.unwrap();
    assert!(report.ok && report.changed, "{report:?}");
    assert_eq!(report.authorities, 0);

    // Both streams push it. Other messages may come first (an SVID renewal), each with the
    // peer's entry still there.
    loop {
        let msg = next(&mut bundles).await;
        assert!(!msg.bundles[OWN_ID].is_empty(), "our own bundle stays");
        if peer_entry(&msg.bundles, "bundles, after").is_empty() {
            break;
        }
    }
    let revoked = loop {
        let msg = next(&mut svids).await;
        if peer_entry(&msg.federated_bundles, "svids, after").is_empty() {
            break msg;
        }
    };
    assert_eq!(revoked.svids.len(), 1, "our own identity is untouched");
    assert!(!revoked.svids[0].bundle.is_empty(), "our own bundle stays");

    // A new client sees the same state at once.
    let mut fresh = x509_bundles(&da.workload_socket).await;
    let msg = next(&mut fresh).await;
    assert!(peer_entry(&msg.bundles, "a new stream").is_empty());
    da.shutdown().await;
}
