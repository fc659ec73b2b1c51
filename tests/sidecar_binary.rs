//! The `meshtrust sidecar` binary end to end (the real command, as an operator runs it): an
//! inbound proxy on mesh-b that admits a whole peer trust domain with `--allow-trust-domain`,
//! an outbound proxy on mesh-a calling through it, then mesh-a's trust domain revoked by its
//! endpoint (`keys: []`, TD&B 1.4.7, SPIFFE.md §7.14): mesh-b pins the empty bundle, its sidecar
//! gets it, and mesh-a's caller is refused from then on.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
#[allow(dead_code)]
#[path = "federation_fetch/hostile.rs"]
mod hostile;
mod sidecar_support;

use std::time::SystemTime;

use common::config::entry;
use common::daemon::Proc;
use common::mesh::Mesh;
use common::{eventually, own_uid, td};
use hostile::{Behaviour, Hostile, tls_config};
use sidecar_support::{echo_server, inbound_args, outbound_args, proxy_addr, round_trip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_trust_domain_admits_the_peer_until_the_peer_trust_domain_is_revoked() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let frontend = entry("spiffe://mesh-a.test/frontend", own_uid(), &["mesh-b.test"]);
    // mesh-b's config is replaced below (its peer mesh-a is reached through the test's endpoint).
    let (mut a, mut b) = Mesh::pair(root.path(), &frontend, "", false).await;
    // mesh-a's bundle as mesh-b fetches it: from an endpoint the test controls, presenting an
    // X509-SVID of mesh-a's real CA (set once mesh-a runs), so the test can make it publish a
    // revocation.
    let placeholder = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let endpoint_a = Hostile::start(tls_config(
        vec![placeholder.cert.der().clone()],
        &placeholder.signing_key.serialize_der(),
    ))
    .await;
    common::config::DaemonConfig::new("mesh-b.test")
        .bundle_endpoint(b.port, "1s")
        .peer("mesh-a.test", endpoint_a.url("/").as_str(), None, true)
        .entry("spiffe://mesh-b.test/echo", &["mesh-a.test"])
        .write(&b.dir);
    a.give_bootstrap_to(&b);
    let da = a.start().await;
    let svid = da
        .ca
        .snapshot()
        .issue_x509_svid(
            &meshtrust::spiffe_id::SpiffeId::new("spiffe://mesh-a.test/meshtrust/server").unwrap(),
            SystemTime::now(),
        )
        .unwrap();
    endpoint_a.set_tls(tls_config(
        svid.cert_chain.clone(),
        svid.private_key.pkcs8_der(),
    ));
    endpoint_a.route("/", Behaviour::ok(da.ca.snapshot().bundle_json.to_vec()));
    let db = b.start().await;
    eventually("each mesh pins the other's bundle", || {
        da.peers.get(&td("mesh-b.test")).is_some() && db.peers.get(&td("mesh-a.test")).is_some()
    })
    .await;

    let echo = echo_server().await.to_string();
    let inbound = Proc::sidecar(
        &db.workload_socket,
        &[],
        &inbound_args(&echo, &["--allow-trust-domain", "mesh-a.test"]),
    );
    let inbound_addr = proxy_addr(&inbound).await.to_string();
    let outbound = Proc::sidecar(
        &da.workload_socket,
        &[],
        &outbound_args(&inbound_addr, "spiffe://mesh-b.test/echo"),
    );
    let outbound_addr = proxy_addr(&outbound).await;
    let update = inbound.wait_for_log("svid update:").await;
    assert!(update.contains("federated: mesh-a.test (1 CA)"), "{update}");
    let update = outbound.wait_for_log("svid update:").await;
    assert!(update.contains("federated: mesh-b.test (1 CA)"), "{update}");

    // Any ID of mesh-a.test is admitted: the frontend's call goes through both proxies.
    let back = round_trip(outbound_addr, b"hello from mesh-a")
        .await
        .unwrap();
    assert_eq!(back, b"hello from mesh-a");
    let line = inbound.wait_for_log("inbound: accepted").await;
    assert!(line.contains("spiffe://mesh-a.test/frontend"), "{line}");

    // mesh-a's endpoint revokes everything; mesh-b pins it on the next fetch.
    let sequence = da.ca.snapshot().bundle.sequence.unwrap();
    endpoint_a.route(
        "/",
        Behaviour::ok(format!(r#"{{"keys":[],"spiffe_sequence":{}}}"#, sequence + 1).into_bytes()),
    );
    let admin_b = db.admin_socket.to_str().unwrap().to_owned();
    let out = common::cli_async(&[
        "federation",
        "refresh",
        "mesh-a.test",
        "--admin-socket",
        &admin_b,
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("(sequence"), "{}", out.stdout);
    assert!(out.stdout.contains("0 authorities"), "{}", out.stdout);

    // The inbound sidecar receives the empty bundle, and refuses mesh-a's caller from then on:
    // the trust domain is still allowed, but nothing of it can be verified any more.
    let update = inbound.wait_for_nth_log("svid update:", 1).await;
    assert!(update.contains("federated: mesh-a.test (0 CA)"), "{update}");
    let back = round_trip(outbound_addr, b"let me in again").await;
    match back {
        Ok(bytes) => assert!(bytes.is_empty(), "an answer came back: {bytes:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let refused = inbound.wait_for_log("inbound: refused").await;
    assert!(refused.contains("127.0.0.1"), "{refused}");
    assert_eq!(inbound.count("inbound: accepted"), 1, "{}", inbound.log());

    assert_eq!(inbound.stop().code(), Some(0));
    assert_eq!(outbound.stop().code(), Some(0));
    da.shutdown().await;
    db.shutdown().await;
}
