//! Resetting a federation relationship (SPIFFE.md "Decisions": a rollback is refused and the
//! operator can reset the relationship; `keys: []` is revocation): the two ways a relationship
//! gets stuck, each ending unstuck after a reset, and the pinned bundle's age across a restart.

use std::time::SystemTime;

use meshtrust::app::Daemon;
use serde_json::Value;

use crate::common;
use crate::common::config::DaemonConfig;
use crate::common::eventually;
use crate::common::mesh::Mesh;
use crate::harness::{ENDPOINT, OWN, PEER, PeerCa, with_sequence};
use crate::hostile::{Behaviour, Hostile};
use crate::support::*;

const B: &str = "spiffe://mesh-b.test";

/// mesh-a.test, a real daemon, federating with a controlled endpoint for mesh-b.test that
/// presents an X509-SVID of a real mesh-b CA; bootstrapped with that CA's bundle.
struct Controlled {
    _root: tempfile::TempDir,
    a: Mesh,
    da: Daemon,
    peer: PeerCa,
    server: Hostile,
}

impl Controlled {
    /// The endpoint first serves the CA's bundle with sequence 5; it is pinned on return.
    async fn start() -> Self {
        common::init();
        let root = tempfile::tempdir().unwrap();
        let mut a = Mesh::new(root.path(), "mesh-a").await;
        let peer = PeerCa::now(PEER);
        let server = Hostile::start(peer.endpoint_tls(ENDPOINT)).await;
        server.route("/", Behaviour::ok(with_sequence(&peer.bundle(), 5)));
        std::fs::write(a.dir.join("peers/mesh-b.test.json"), peer.bundle_json()).unwrap();
        let mut extra = metrics_and_entry();
        extra.push_str(
            &DaemonConfig::new(OWN)
                .peer(PEER, server.url("/").as_str(), Some(ENDPOINT), true)
                .sections(),
        );
        a.write_config("", "5m", None, &extra);
        let da = a.start().await;
        let c = Self {
            _root: root,
            a,
            da,
            peer,
            server,
        };
        // The status is written after the pin: wait for both.
        eventually("mesh-a pins sequence 5 and says so in its status", || {
            c.pinned_sequence() == Some(Some(5))
                && c.da
                    .status
                    .get(&td(PEER))
                    .is_some_and(|s| s.state.as_str() == "ok" && s.last_success.is_some())
        })
        .await;
        c
    }

    /// Serves the CA's bundle with `sequence` from now on.
    fn serve(&self, sequence: u64) {
        self.server.route(
            "/",
            Behaviour::ok(with_sequence(&self.peer.bundle(), sequence)),
        );
    }

    fn pinned_sequence(&self) -> Option<Option<u64>> {
        self.da.peers.get(&td(PEER)).map(|b| b.sequence)
    }

    async fn post(&self, action: &str) -> (u16, Value) {
        let path = format!("/v1/federation/mesh-b.test/{action}");
        admin(&self.da.admin_socket, "POST", &path).await
    }

    async fn cli(&self, action: &str) -> (i32, String, String) {
        let socket = self.da.admin_socket.to_str().unwrap().to_owned();
        cli(&["federation", action, PEER, "--admin-socket", &socket]).await
    }

    fn ca_der(&self) -> Vec<u8> {
        self.peer
            .bundle()
            .x509_authorities
            .iter()
            .flat_map(|c| c.to_vec())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_published_keys_empty_is_unstuck_by_a_reset() {
    let c = Controlled::start().await;
    let mut stream = x509_bundles(&c.da.workload_socket).await;
    let m = next(&mut stream).await;
    assert_eq!(m.bundles[B], c.ca_der());

    // SPIFFE.md "Decisions", §7.14: `keys: []` is revocation, pinned and propagated.
    c.server.route(
        "/",
        Behaviour::ok(br#"{"keys":[],"spiffe_sequence":6,"spiffe_refresh_hint":300}"#.to_vec()),
    );
    let (code, body) = c.post("refresh").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["sequence"].as_u64(), body["authorities"].as_u64()),
        (Some(6), Some(0))
    );
    let m = next(&mut stream).await;
    assert!(m.bundles[B].is_empty(), "workloads get the empty bundle");

    // Stuck: the pinned (empty) bundle now authenticates the endpoint, so nothing can be
    // fetched any more, whatever the peer serves (Federation §5.2.2: fail closed).
    c.serve(7);
    let (code, body) = c.post("refresh").await;
    assert_eq!(code, 502, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no x509 authority"),
        "{body}"
    );
    assert_eq!(c.pinned_sequence(), Some(Some(6)));

    // The forced reset forgets the pinned bundle (workloads see mesh-b's bundle disappear); the
    // fetch that follows is authenticated with the bootstrap bundle: it gets as far as HTTP.
    // (Without `force` a failed fetch changes nothing: tests/operator_reset.rs.)
    c.server.route(
        "/",
        Behaviour::Respond {
            status: 500,
            body: b"down".to_vec(),
        },
    );
    let (code, body) = c.post("reset?force=true").await;
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["error"], "http status 500", "{body}");
    assert_eq!(
        (body["sequence"].clone(), body["authorities"].as_u64()),
        (Value::Null, Some(0))
    );
    assert_eq!(c.pinned_sequence(), None);
    let m = next(&mut stream).await;
    assert!(!m.bundles.contains_key(B), "{:?}", m.bundles.keys());
    let (_, status) = admin(&c.da.admin_socket, "GET", "/v1/status").await;
    let peer = &status["federation"][0];
    assert_eq!(peer["state"], "failing");
    assert!(
        peer["last_success"].is_null() && peer["sequence"].is_null(),
        "{peer}"
    );
    assert!(peer["authorities"].is_null(), "{peer}");

    // Unstuck: the next fetch pins the peer's bundle again and workloads get it back.
    c.serve(7);
    let (code, out, err) = c.cli("refresh").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("mesh-b.test: ok"), "{out}");
    assert_eq!(c.pinned_sequence(), Some(Some(7)));
    let m = next(&mut stream).await;
    assert_eq!(m.bundles[B], c.ca_der());

    let (_, text) = http_get(c.da.metrics_addr.unwrap(), "/metrics").await;
    let tls = r#"meshtrust_federation_fetches_total{trust_domain="mesh-b.test",result="tls"}"#;
    assert!(metric(&text, tls).unwrap() >= 1.0, "{text}");
    c.da.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_refused_until_a_reset_then_the_lower_sequence_is_pinned() {
    let c = Controlled::start().await;
    // The peer lost its state and counts again from 1: refused, the pinned bundle stays.
    c.serve(1);
    let (code, body) = c.post("refresh").await;
    assert_eq!(code, 502, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("went backwards"),
        "{body}"
    );
    assert_eq!(body["sequence"].as_u64(), Some(5));
    assert_eq!(c.pinned_sequence(), Some(Some(5)));
    let (_, text) = http_get(c.da.metrics_addr.unwrap(), "/metrics").await;
    let rollback = r#"meshtrust_federation_fetches_total{trust_domain="mesh-b.test",result="sequence_rollback"}"#;
    assert!(metric(&text, rollback).unwrap() >= 1.0, "{text}");

    // A reset whose bootstrap bundle cannot be read is refused and changes nothing.
    let bootstrap = c.a.dir.join("peers/mesh-b.test.json");
    let good = std::fs::read(&bootstrap).unwrap();
    std::fs::write(&bootstrap, b"not a bundle").unwrap();
    let (code, body) = c.post("reset").await;
    assert_eq!(code, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("nothing changed") && error.contains("mesh-b.test.json"),
        "{error}"
    );
    assert_eq!(c.pinned_sequence(), Some(Some(5)));
    let (code, _, err) = c.cli("reset").await;
    assert_eq!(code, 1);
    assert!(err.contains("reset refused"), "{err}");
    assert_eq!(c.pinned_sequence(), Some(Some(5)));

    // With a readable bootstrap bundle the reset forgets sequence 5 and pins 1.
    std::fs::write(&bootstrap, good).unwrap();
    let (code, out, err) = c.cli("reset").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "mesh-b.test: reset: fetched over the bootstrap bundle, which replaced the pinned bundle; bundle updated (sequence 1, 1 authority)"
    );
    assert_eq!(c.pinned_sequence(), Some(Some(1)));
    let (_, status) = admin(&c.da.admin_socket, "GET", "/v1/status").await;
    assert_eq!(status["federation"][0]["state"], "ok");
    assert_eq!(status["federation"][0]["sequence"], 1);
    // Sequences rise again from there.
    c.serve(2);
    let (code, body) = c.post("refresh").await;
    assert_eq!((code, body["sequence"].as_u64()), (200, Some(2)), "{body}");
    c.da.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_daemon_that_lost_its_state_is_unstuck_by_a_reset_on_its_new_bootstrap_bundle() {
    let mut kept = None;
    let pair = Pair::start_with(false, Some(&mut kept)).await;
    let kept = kept.unwrap();
    pair.pinned().await;
    let Pair {
        root: _root,
        a,
        mut b,
        da,
        db,
        ..
    } = pair;
    let td_b = td("mesh-b.test");
    let old = da.peers.get(&td_b).unwrap();
    db.shutdown().await;
    std::fs::remove_dir_all(b.dir.join("data")).unwrap();
    // The same port as before (mesh-a is configured with it), never released in between.
    b.reuse_port(&kept);
    let db = b.start().await;
    assert!(!old.same_authorities(&db.ca.snapshot().bundle), "a new CA");

    // The pinned bundle cannot authenticate the peer's new endpoint SVID.
    let socket = da.admin_socket.to_str().unwrap().to_owned();
    let reset = || {
        let socket = socket.clone();
        async move {
            cli(&[
                "federation",
                "reset",
                "mesh-b.test",
                "--admin-socket",
                &socket,
            ])
            .await
        }
    };
    let (code, body) = admin(
        &da.admin_socket,
        "POST",
        "/v1/federation/mesh-b.test/refresh",
    )
    .await;
    assert_eq!(code, 502, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("tls"), "{body}");

    // A reset on the old bootstrap bundle fails its fetch and changes nothing; the error says
    // what to check.
    let (code, _, err) = reset().await;
    assert_eq!(code, 1);
    assert!(
        err.contains("mesh-b.test: reset not done, nothing changed") && err.contains("tls"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert!(old.same_authorities(&da.peers.get(&td_b).unwrap()));

    // The operator puts the peer's new bundle in place; the reset re-reads it from disk.
    b.give_bootstrap_to(&a);
    let (code, out, err) = reset().await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("replaced the pinned bundle; bundle updated (sequence 1, 1 authority)"),
        "{out}"
    );
    assert!(
        da.peers
            .get(&td_b)
            .unwrap()
            .same_authorities(&db.ca.snapshot().bundle)
    );
    da.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_status_and_the_metrics_keep_the_pinned_bundles_fetch_time() {
    let pair = Pair::start(false).await;
    pair.pinned().await;
    let (_, status) = admin(pair.admin_a(), "GET", "/v1/status").await;
    let before = status["federation"][0].clone();
    let last_success = before["last_success"].as_str().unwrap().to_owned();
    let Pair {
        root: _root,
        mut a,
        da,
        db,
        ..
    } = pair;
    da.shutdown().await;
    db.shutdown().await;
    let stopped = SystemTime::now();

    // mesh-b is down: whatever mesh-a says about the bundle's age comes from its state.
    a.listener = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let da = a.start().await;
    let (_, status) = admin(&da.admin_socket, "GET", "/v1/status").await;
    let after = &status["federation"][0];
    assert_eq!(after["last_success"], last_success, "{after}");
    for key in ["sequence", "authorities", "earliest_expiry"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    let (_, text) = http_get(da.metrics_addr.unwrap(), "/metrics").await;
    let age = metric(
        &text,
        r#"meshtrust_federation_bundle_age_seconds{trust_domain="mesh-b.test"}"#,
    )
    .unwrap_or_else(|| panic!("the age is there at once:\n{text}"));
    // last_success is truncated to the second: the bundle was fetched within a second after it.
    assert!(
        age >= secs(stopped) - secs(time(&Value::String(last_success.clone()))) - 1.0,
        "{age}"
    );

    // A failing fetch keeps the time of the last success.
    eventually("the fetch to the stopped peer fails", || {
        da.status
            .get(&td("mesh-b.test"))
            .is_some_and(|s| s.state.as_str() == "failing")
    })
    .await;
    let socket = da.admin_socket.to_str().unwrap().to_owned();
    let (code, out, err) = cli(&["status", "--admin-socket", &socket]).await;
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("mesh-b.test "))
        .unwrap_or_else(|| panic!("a row for mesh-b.test: {out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "failing", "{out}");
    assert_eq!(cells[4], last_success, "{out}");
    da.shutdown().await;
}
