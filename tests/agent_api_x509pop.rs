//! x509pop node attestation through a real server (`[node_attestation] x509pop_ca_file`): a
//! node certificate of the configured CA plus a signature over the server's challenge gives
//! `spiffe://<td>/meshtrust/agent/<CN>`; a wrong key, another CA, an expired certificate and a
//! CN that is no path segment are each refused with reason `x509pop`, logged and counted; a
//! server without x509pop_ca_file refuses the method.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, SystemTime};

use common::agent;
use common::node_agent::ServerProc;
use common::node_ca::{self, NodeCa};
use meshtrust::agent_api::proto::SyncRequest;

const DAY: Duration = Duration::from_secs(86_400);

async fn server_trusting(ca: &NodeCa) -> ServerProc {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nodes-ca.pem"), ca.pem()).unwrap();
    let config = common::agent::api_config(
        "[node_attestation]\njoin_token = false\nx509pop_ca_file = \"nodes-ca.pem\"\n",
    )
    .section(&common::node_agent::node_entry(
        "spiffe://mesh-a.test/edge",
        "edge-7",
    ));
    ServerProc::launch_in(dir, &config).await
}

#[tokio::test]
async fn a_node_certificate_and_its_key_attest_the_node_named_by_its_cn() {
    let ca = NodeCa::new("nodes");
    let server = server_trusting(&ca).await;
    let now = SystemTime::now();
    let (cert, key) = ca.node_cert("edge-7", now - DAY, now + DAY);
    let mut anonymous = server.client(None).await;
    let (identity, svid) = node_ca::attest_x509pop(&mut anonymous, &[cert], &key)
        .await
        .unwrap();
    assert_eq!(
        svid.spiffe_id,
        "spiffe://mesh-a.test/meshtrust/agent/edge-7"
    );
    server.proc().wait_for_log("method=\"x509pop\"").await;

    let mut client = server.client(Some(&identity)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();
    let view = common::guard(views.message()).await.unwrap().unwrap();
    let ids: Vec<&str> = view.entries.iter().map(|e| e.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://mesh-a.test/log", "spiffe://mesh-a.test/edge"]
    );

    // Join tokens are off on this server.
    let token = agent::attest_join_token(&mut anonymous, "anything")
        .await
        .unwrap_err();
    assert_eq!(token.code(), tonic::Code::PermissionDenied, "{token:?}");
    assert!(token.message().contains("disabled"), "{token:?}");
}

#[tokio::test]
async fn wrong_key_other_ca_expired_and_bad_names_are_refused() {
    let ca = NodeCa::new("nodes");
    let other = NodeCa::new("someone else");
    let server = server_trusting(&ca).await;
    let now = SystemTime::now();
    let mut anonymous = server.client(None).await;

    // The right certificate, a signature by another key.
    let (cert, _) = ca.node_cert("edge-7", now - DAY, now + DAY);
    let thief = agent::new_key();
    let wrong_key = node_ca::attest_x509pop(&mut anonymous, &[cert], &thief)
        .await
        .unwrap_err();
    assert!(
        wrong_key.message().contains("does not verify"),
        "{wrong_key:?}"
    );

    let cases = [
        (
            other.node_cert("edge-7", now - DAY, now + DAY),
            "node certificate",
        ),
        (
            ca.node_cert("edge-7", now - 2 * DAY, now - DAY),
            "node certificate",
        ),
        (ca.node_cert("a/b", now - DAY, now + DAY), "path segment"),
    ];
    for ((cert, key), why) in cases {
        let status = node_ca::attest_x509pop(&mut anonymous, &[cert], &key)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    }
    server.proc().wait_for_log("reason=\"x509pop\"").await;
    assert_eq!(server.refusals("x509pop").await, 4.0);
    let log = server.proc().log();
    assert!(log.contains("does not verify"), "wrong key logged: {log}");
    assert!(
        log.contains("Expired") || log.contains("expired"),
        "expiry logged: {log}"
    );
}

#[tokio::test]
async fn a_server_without_x509pop_roots_refuses_the_method() {
    let server = common::agent::api_server("").await;
    let ca = NodeCa::new("nodes");
    let now = SystemTime::now();
    let (cert, key) = ca.node_cert("edge-7", now - DAY, now + DAY);
    let mut anonymous = server.client(None).await;
    let status = node_ca::attest_x509pop(&mut anonymous, &[cert], &key)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("not configured"), "{status:?}");
    assert_eq!(server.refusals("method_disabled").await, 1.0);
}
