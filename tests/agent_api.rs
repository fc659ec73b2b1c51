//! The agent API of a real `meshtrust serve` (`[agent_api] listen`), from a tonic client over
//! rustls as an agent or an attacker would call it (tests/common/agent.rs): join-token
//! attestation, Sync (the node's view at once, then pushed on SIGHUP), SignWorkloads (batched,
//! per-CSR errors; a CSR for another node's ID refused), RenewAgent, MintJwtSvids, and the
//! refusals of callers without an agent SVID.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::agent::{self, Identity};
use common::node_agent::node_entry;
use meshtrust::agent_api::proto::{
    JwtSvidRequest, MintJwtSvidsRequest, RenewAgentRequest, SignWorkloadsRequest, SyncRequest,
};

const TD: &str = agent::TD;

fn entries_of(view: &meshtrust::agent_api::proto::NodeView) -> Vec<String> {
    let mut ids: Vec<String> = view.entries.iter().map(|e| e.spiffe_id.clone()).collect();
    ids.sort();
    ids
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

#[tokio::test]
async fn join_token_then_sync_and_sign_workloads_over_tls() {
    let server = common::agent::api_server("").await;
    let token = agent::create_token(&server.admin(), "web-1", "5m").await;

    // Attest over TLS without a client certificate.
    let mut anonymous = server.client(None).await;
    let (identity, svid) = agent::attest_join_token(&mut anonymous, &token)
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id, "spiffe://mesh-a.test/meshtrust/agent/web-1");
    assert_eq!(
        agent::uri_of(&identity.chain[0]),
        "spiffe://mesh-a.test/meshtrust/agent/web-1"
    );
    assert!(svid.expires_at > 0);
    server.proc().wait_for_log("agent attested").await;

    // Everything else with the agent SVID as client certificate.
    let mut client = server.client(Some(&identity)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();
    let first = common::guard(views.message()).await.unwrap().unwrap();
    assert_eq!(first.revision, 0);
    assert_eq!(
        entries_of(&first),
        ["spiffe://mesh-a.test/log", "spiffe://mesh-a.test/web"],
        "only web-1's entries and those for every node"
    );
    let own = first.own.as_ref().unwrap();
    assert_eq!(own.trust_domain, TD);
    let own_bundle =
        meshtrust::bundle::pem::parse_bootstrap(&common::td(TD), &own.spiffe_bundle_json).unwrap();
    assert_eq!(own_bundle.x509_authorities, server.roots);
    assert!(first.peers.is_empty(), "no entry federates");
    let addr = common::metrics::listen_addr(server.proc()).await;
    let scrape = common::metrics::scrape(&addr);
    let open = "meshtrust_agent_sync_streams";
    assert_eq!(scrape.value(open, "gauge", open), 1.0, "one stream open");

    // A batch: one CSR of ours, one for db-1's workload (refused), one that is junk.
    let key = agent::new_key();
    let csrs = vec![
        agent::csr(&key, Some("spiffe://mesh-a.test/web")),
        agent::csr(&key, Some("spiffe://mesh-a.test/db")),
        b"junk".to_vec(),
    ];
    let signed = client
        .sign_workloads(SignWorkloadsRequest { csrs })
        .await
        .unwrap()
        .into_inner()
        .svids;
    assert_eq!(signed.len(), 3);
    assert!(signed[0].error.is_empty(), "{:?}", signed[0]);
    assert_eq!(
        agent::uri_of(&signed[0].cert_chain[0]),
        "spiffe://mesh-a.test/web"
    );
    let leaf = rustls_pki_types::CertificateDer::from(signed[0].cert_chain[0].clone());
    let (ok, why) = common::openssl_verify(&server.dir, &server.roots, &leaf, "sslclient");
    assert!(ok, "the workload SVID chains to the bundle: {why}");
    assert!(signed[1].cert_chain.is_empty());
    assert!(
        signed[1].error.contains("no entry of node \"web-1\""),
        "{:?}",
        signed[1]
    );
    assert!(signed[2].cert_chain.is_empty());
    assert!(signed[2].error.contains("bad csr"), "{:?}", signed[2]);
    server.proc().wait_for_log("reason=\"not_entitled\"").await;
    assert_eq!(server.refusals("not_entitled").await, 1.0);
    assert_eq!(server.refusals("bad_csr").await, 1.0);

    // An entry for web-1 added and SIGHUP: pushed on the open stream.
    append(
        &server.config_path,
        &node_entry("spiffe://mesh-a.test/cache", "web-1"),
    );
    let started = std::time::Instant::now();
    server.proc().signal("HUP");
    let next = common::guard(views.message()).await.unwrap().unwrap();
    println!(
        "new entry to the agent's stream: {:?} (SIGHUP to NodeView)",
        started.elapsed()
    );
    assert_eq!(next.revision, 1);
    assert_eq!(
        entries_of(&next),
        [
            "spiffe://mesh-a.test/cache",
            "spiffe://mesh-a.test/log",
            "spiffe://mesh-a.test/web"
        ]
    );
}

#[tokio::test]
async fn renew_and_mint_jwt_for_the_nodes_entries_only() {
    let server = common::agent::api_server("").await;
    let identity = server.attested("db-1").await;
    let mut client = server.client(Some(&identity)).await;

    let key = agent::new_key();
    let renewed = client
        .renew_agent(RenewAgentRequest {
            csr: agent::csr(&key, None),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        renewed.spiffe_id,
        "spiffe://mesh-a.test/meshtrust/agent/db-1"
    );
    let fresh = Identity {
        chain: renewed
            .cert_chain
            .iter()
            .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
            .collect(),
        key,
    };
    // Both the renewed SVID and the one it was renewed under work (the agent switches over).
    for id in [&fresh, &identity] {
        let mut c = server.client(Some(id)).await;
        let minted = c
            .mint_jwt_svids(MintJwtSvidsRequest {
                requests: vec![
                    JwtSvidRequest {
                        spiffe_id: "spiffe://mesh-a.test/db".into(),
                        audience: vec!["svc".into()],
                    },
                    JwtSvidRequest {
                        spiffe_id: "spiffe://mesh-a.test/web".into(),
                        audience: vec!["svc".into()],
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .svids;
        assert_eq!(minted.len(), 2);
        assert!(
            minted[0].error.is_empty() && minted[0].token.starts_with("eyJ"),
            "{minted:?}"
        );
        assert!(minted[1].token.is_empty(), "another node's ID: {minted:?}");
        assert!(
            minted[1].error.contains("no entry of node \"db-1\""),
            "{minted:?}"
        );
    }
}

#[tokio::test]
async fn calls_without_an_agent_svid_are_refused_counted_and_logged() {
    let server = common::agent::api_server("").await;
    let mut anonymous = server.client(None).await;
    let status = anonymous.sync(SyncRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = anonymous
        .sign_workloads(SignWorkloadsRequest { csrs: vec![] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    server
        .proc()
        .wait_for_log("reason=\"unauthenticated\"")
        .await;
    assert_eq!(server.refusals("unauthenticated").await, 2.0);

    // Reuse of a token, and an unknown one.
    let token = agent::create_token(&server.admin(), "web-1", "5m").await;
    agent::attest_join_token(&mut anonymous, &token)
        .await
        .unwrap();
    let reuse = agent::attest_join_token(&mut anonymous, &token)
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), tonic::Code::PermissionDenied, "{reuse:?}");
    let unknown = agent::attest_join_token(&mut anonymous, "not-a-token")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::PermissionDenied, "{unknown:?}");
    server.proc().wait_for_log("reason=\"unknown_token\"").await;
    assert_eq!(server.refusals("unknown_token").await, 2.0);

    // An expired token (1 s, then waited out on the clock) is refused and burned.
    let admin = server.admin();
    let out = common::cli_async(&[
        "token",
        "create",
        "--node",
        "web-2",
        "--ttl",
        "1s",
        "--json",
        "--admin-socket",
        admin.to_str().unwrap(),
    ])
    .await;
    let body: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let expired = body["token"].as_str().unwrap().to_owned();
    // It expires at most 1 s after the CLI returned.
    let expires_by = std::time::SystemTime::now() + std::time::Duration::from_millis(1100);
    while std::time::SystemTime::now() <= expires_by {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = agent::attest_join_token(&mut anonymous, &expired)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    assert_eq!(server.refusals("expired_token").await, 1.0);
    assert!(!server.proc().log().contains(&token), "a token in the log");
}
