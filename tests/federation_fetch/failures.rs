//! Every hostile answer leaves the pinned bundle in force, marks the relationship `failing` with
//! a reason and a counted label, and the next good answer is taken (SPIFFE.md §2 "Failure
//! handling", "Decisions"; Federation 1.5.12).

use meshtrust::federation::client::FetchLimits;
use meshtrust::federation::status::PeerState;

use super::harness::*;
use super::hostile::{Behaviour, Hostile};

/// Runs one hostile answer chosen by `make` between two good ones.
async fn a_hostile_answer_keeps_the_pin(
    limits: FetchLimits,
    make: impl FnOnce(&PeerCa, &Hostile),
    kind: &str,
    message: &str,
) {
    let (peer, server, ours) = super::good_setup(limits).await;
    let before = ours.pinned(PEER).unwrap();

    make(&peer, &server);
    let report = ours.refresh(PEER).await;
    assert!(!report.ok && !report.changed, "{report:?}");
    let error = report.error.clone().unwrap();
    assert!(error.contains(message), "{error:?} lacks {message:?}");
    assert_eq!(report.sequence, before.sequence);
    assert_eq!(
        ours.pinned(PEER).unwrap(),
        before,
        "the pinned bundle stays"
    );
    let status = ours.status(PEER);
    assert_eq!(status.state, PeerState::Failing);
    assert!(status.last_error.unwrap().contains(message));
    assert!(
        status.fetches.get(kind).is_some_and(|n| *n >= 1),
        "{:?}",
        status.fetches
    );
    assert!(status.next_refresh.is_some());

    server.set_tls(peer.endpoint_tls(ENDPOINT));
    server.route("/", Behaviour::ok(with_sequence(&peer.bundle(), 7)));
    let report = ours.refresh(PEER).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.sequence, Some(7));
    assert_eq!(ours.pinned(PEER).unwrap().sequence, Some(7));
    let status = ours.status(PEER);
    assert_eq!((status.state, status.last_error), (PeerState::Ok, None));
}

fn route(behaviour: Behaviour) -> impl FnOnce(&PeerCa, &Hostile) {
    move |_, server| server.route("/", behaviour)
}

#[tokio::test]
async fn garbage_is_refused() {
    let garbage = Behaviour::ok(b"<html>\x00\x01 not a bundle".to_vec());
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), route(garbage), "parse", "bundle").await;
}

#[tokio::test]
async fn truncated_json_is_refused() {
    let make = |peer: &PeerCa, server: &Hostile| {
        let json = peer.bundle_json();
        server.route("/", Behaviour::ok(json[..json.len() / 2].to_vec()));
    };
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, "parse", "not valid JSON").await;
}

#[tokio::test]
async fn an_empty_object_is_refused() {
    // TD&B 1.4.6: `keys` MUST be present.
    let empty = Behaviour::ok(b"{}".to_vec());
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), route(empty), "parse", "\"keys\"").await;
}

#[tokio::test]
async fn a_404_with_a_valid_body_is_refused() {
    // SPIFFE.md §7.11: require 200 (go-spiffe accepts this).
    let make = |peer: &PeerCa, server: &Hostile| {
        let body = with_sequence(&peer.bundle(), 9);
        server.route("/", Behaviour::Respond { status: 404, body });
    };
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, "http_status", "404").await;
}

#[tokio::test]
async fn a_500_with_a_valid_body_is_refused() {
    let make = |peer: &PeerCa, server: &Hostile| {
        let body = with_sequence(&peer.bundle(), 9);
        server.route("/", Behaviour::Respond { status: 500, body });
    };
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, "http_status", "500").await;
}

#[tokio::test]
async fn a_10_mib_body_with_its_length_is_refused() {
    // SPIFFE.md "Decisions": bodies are capped at 1 MiB.
    let huge = Behaviour::ok(vec![b' '; 10 << 20]);
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), route(huge), "too_large", "1048576")
        .await;
}

#[tokio::test]
async fn a_10_mib_body_without_a_length_is_cut_off() {
    let huge = Behaviour::Unbounded { len: 10 << 20 };
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), route(huge), "too_large", "1048576")
        .await;
}

#[tokio::test]
async fn a_slow_drip_runs_into_the_total_timeout() {
    // SPIFFE.md "Decisions": time out every fetch (2 s here instead of 15 s).
    let drip = route(Behaviour::Drip);
    a_hostile_answer_keeps_the_pin(short_limits(), drip, "timeout", "timed out").await;
}

#[tokio::test]
async fn a_stall_after_the_handshake_runs_into_the_total_timeout() {
    let stall = route(Behaviour::Stall);
    a_hostile_answer_keeps_the_pin(short_limits(), stall, "timeout", "timed out").await;
}

#[tokio::test]
async fn a_lower_spiffe_sequence_is_refused() {
    // SPIFFE.md "Decisions": a rollback is refused, logged and counted.
    let make = |peer: &PeerCa, server: &Hostile| {
        server.route("/", Behaviour::ok(with_sequence(&peer.bundle(), 0)));
    };
    let kind = "sequence_rollback";
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, kind, "backwards").await;
}

#[tokio::test]
async fn a_wrong_endpoint_spiffe_id_is_refused() {
    // Federation 1.5.7, SPIFFE.md §2: the leaf ID must equal the configured endpoint ID.
    let make = |peer: &PeerCa, server: &Hostile| {
        server.set_tls(peer.endpoint_tls("spiffe://mesh-b.test/not-the-endpoint"));
    };
    let message = "presented spiffe://mesh-b.test/not-the-endpoint, expected";
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, "tls", message).await;
}

#[tokio::test]
async fn the_right_id_signed_by_another_trust_domains_ca_is_refused() {
    // SPIFFE-ID 1.1.7: an SVID is valid only if signed by its own trust domain's authority.
    let make = |_: &PeerCa, server: &Hostile| {
        let evil = PeerCa::now("mesh-evil.test");
        server.set_tls(evil.endpoint_tls(ENDPOINT));
    };
    let message = "invalid peer certificate";
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, "tls", message).await;
}

#[tokio::test]
async fn a_redirect_to_http_is_refused() {
    // Federation 1.5.11, SPIFFE.md "Decisions": redirects only to https.
    let make = |_: &PeerCa, server: &Hostile| {
        let target = format!("http://127.0.0.1:{}/", server.addr.port());
        server.route("/", Behaviour::Redirect(target));
    };
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, "redirect", "not https").await;
}

#[tokio::test]
async fn a_redirect_loop_is_cut_after_three_redirects() {
    let make = |_: &PeerCa, server: &Hostile| {
        server.route("/", Behaviour::Redirect(server.url("/").to_string()));
    };
    let message = "more than 3 redirects";
    a_hostile_answer_keeps_the_pin(FetchLimits::default(), make, "redirect", message).await;
}
