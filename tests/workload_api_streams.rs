//! Workload API streams (Workload API §4.3-§4.4, SPIFFE.md 1.7.2-1.7.4): the full state at once
//! and on every relevant change only, renewal, peer rotation, lost identity, slow readers,
//! cancellation and shutdown.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::workload::*;
use futures_util::StreamExt as _;
use meshtrust::clock::SystemClock;
use meshtrust::workload_api::proto::X509svidResponse;
use tonic::Code;

fn peer_b_key() -> String {
    "spiffe://mesh-b.test".to_owned()
}

use common::split_der;

fn federated_b(msg: &X509svidResponse) -> Vec<Vec<u8>> {
    split_der(&msg.federated_bundles[&peer_b_key()])
}

#[tokio::test]
async fn a_stream_pushes_peer_rotations_only_for_trust_domains_it_federates_with() {
    // CONTRACT federates_with + Workload API 1.7.2: a mesh-c change is not the caller's
    // business (no message); a mesh-b rotation arrives as the full state.
    let mesh = Mesh::start(default_entries()).await;
    let mut stream = mesh.x509svid_stream().await;
    let first = next_msg(&mut stream).await;
    assert_eq!(federated_b(&first), mesh.peer_b_certs());
    assert!(!first.federated_bundles.contains_key("spiffe://mesh-c.test"));

    mesh.rotate_peer_c();
    mesh.rotate_peer_b();
    let next = next_msg(&mut stream).await;
    // Had the mesh-c change produced a message, this one would still show one mesh-b CA.
    assert_eq!(federated_b(&next).len(), 2);
    assert_eq!(federated_b(&next), mesh.peer_b_certs());
    assert_eq!(next.svids.len(), 2, "full state, not a delta");
    assert_eq!(next.svids, first.svids, "SVIDs unchanged and not re-signed");
}

#[tokio::test]
async fn a_stream_pushes_our_own_svid_renewal_at_half_life() {
    // Workload API 1.7.3: SVID rotation is a change. Real clock, 4 s SVIDs: renewed after ~2 s.
    let mesh = Mesh::start_with(
        Arc::new(SystemClock),
        None,
        Duration::from_secs(4),
        default_entries(),
    )
    .await;
    let client = mesh.spiffe_client().await;
    let mut stream = guard(client.stream_x509_contexts()).await.unwrap();
    let first = guard(stream.next()).await.unwrap().unwrap();
    let next = guard(stream.next()).await.unwrap().unwrap();
    for (a, b) in first.svids().iter().zip(next.svids()) {
        assert_eq!(a.spiffe_id(), b.spiffe_id());
        assert_ne!(a.leaf().as_bytes(), b.leaf().as_bytes(), "renewed");
    }
    assert_eq!(next.svids().len(), 2);
}

#[tokio::test]
async fn identical_bundle_messages_are_not_resent() {
    // SPIFFE.md §6.8 (SPIRE): a re-pinned mesh-b bundle with the same keys (only the sequence
    // moved) sends nothing; our CA preparing its next authority is a change for both streams.
    let mesh = Mesh::start(default_entries()).await;
    let mut client = mesh.raw_client().await;
    let mut x509 = open_x509_bundles(&mut client).await;
    let mut jwt = open_jwt_bundles(&mut client).await;
    let x1 = next_msg(&mut x509).await;
    let j1 = next_msg(&mut jwt).await;
    assert_eq!(x1.bundles.len(), 2);
    assert_eq!(j1.bundles.len(), 2);

    let mut same = (*mesh.peer_b.snapshot().bundle).clone();
    same.sequence = same.sequence.map(|s| s + 10);
    mesh.peers.pin(same, SystemTime::now()).unwrap();
    mesh.clock
        .as_ref()
        .unwrap()
        .advance(12 * HOUR + Duration::from_secs(1));
    assert!(mesh.ca.tick().unwrap());

    let x2 = next_msg(&mut x509).await;
    assert_eq!(split_der(&x2.bundles["spiffe://mesh-a.test"]).len(), 2);
    assert_eq!(x2.bundles[&peer_b_key()], x1.bundles[&peer_b_key()]);
    let j2 = next_msg(&mut jwt).await;
    let own: serde_json::Value =
        serde_json::from_slice(&j2.bundles["spiffe://mesh-a.test"]).unwrap();
    assert_eq!(own["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn losing_every_identity_ends_the_stream_with_permission_denied() {
    // Workload Endpoint 1.6.7: PermissionDenied = no identity (the client retries).
    let mesh = Mesh::start(default_entries()).await;
    let mut stream = mesh.x509svid_stream().await;
    next_msg(&mut stream).await;
    mesh.set_entries(vec![entry(
        "spiffe://mesh-a.test/someone-else",
        vec![meshtrust::config::Selector::Uid(4242)],
        &[],
        "",
    )]);
    let status = guard(stream.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
}

#[tokio::test]
async fn a_reader_that_stops_reading_holds_back_nobody_and_later_gets_the_latest_state() {
    // Workload API 1.7.2: every message is the full state, so a slow reader may skip states
    // but ends on the latest. 120 changes of ~1.5 KiB overflow its HTTP/2 window (64 KiB).
    let mesh = Mesh::start(default_entries()).await;
    let mut slow = mesh.x509svid_stream().await;
    next_msg(&mut slow).await;
    let mut fast = mesh.x509svid_stream().await;
    next_msg(&mut fast).await;

    let base = (*mesh.peer_b.snapshot().bundle).clone();
    let extra = mesh.peer_c.snapshot().bundle.x509_authorities[0].clone();
    let mut sequence = base.sequence.unwrap();
    let mut expected = Vec::new();
    for round in 0..120 {
        sequence += 1;
        let mut bundle = base.clone();
        bundle.sequence = Some(sequence);
        if round % 2 == 0 {
            bundle.x509_authorities.push(extra.clone());
        }
        expected = der_list(&bundle.x509_authorities);
        mesh.peers.pin(bundle, SystemTime::now()).unwrap();
        let msg = next_msg(&mut fast).await;
        assert_eq!(federated_b(&msg), expected, "round {round}");
    }
    guard(async {
        loop {
            let msg = slow.message().await.unwrap().unwrap();
            if federated_b(&msg) == expected {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn cancelled_streams_leave_the_server_serving_and_shutdown_ends_the_rest() {
    // Workload Endpoint 1.6.7: Unavailable at shutdown, so clients retry against the next daemon.
    let mesh = Mesh::start(default_entries()).await;
    let mut client = mesh.raw_client().await;
    for _ in 0..20 {
        let mut stream = open_x509svid(&mut client).await;
        next_msg(&mut stream).await;
        drop(stream); // RST_STREAM(CANCEL) from the client
    }
    let mut stream = open_x509svid(&mut client).await;
    next_msg(&mut stream).await;
    assert!(!mesh.server.is_finished());

    mesh.cancel.cancel();
    let status = guard(stream.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    guard(mesh.server).await.unwrap();
}
