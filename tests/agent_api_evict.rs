//! `meshtrust agent list [--json]` and `meshtrust agent evict NODE` through a real server's
//! admin socket (CONTRACT.md "Added in wave 2"): an evicted agent's open Sync stream ends at
//! once, its SVID is refused for RenewAgent, Sync and SignWorkloads (reason `evicted`, logged
//! and counted), and it stays refused after the node attests again with a new token, which
//! gives it a new SVID that works. The registry and unused join tokens survive a restart.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::agent;
use common::cli_async;
use common::node_agent::ServerProc;
use meshtrust::agent_api::proto::{RenewAgentRequest, SignWorkloadsRequest, SyncRequest};

async fn agents_json(server: &ServerProc) -> serde_json::Value {
    let admin = server.admin();
    let out = cli_async(&[
        "agent",
        "list",
        "--json",
        "--admin-socket",
        admin.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

#[tokio::test]
async fn an_evicted_agent_is_cut_off_until_it_attests_again() {
    let server = common::agent::api_server("").await;
    let old = server.attested("web-1").await;
    let mut client = server.client(Some(&old)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();
    common::guard(views.message()).await.unwrap().unwrap();

    let listed = agents_json(&server).await;
    let web = &listed.as_array().unwrap()[0];
    assert_eq!(
        web["spiffe_id"],
        "spiffe://mesh-a.test/meshtrust/agent/web-1"
    );
    assert_eq!(web["node"], "web-1");
    assert_eq!(web["method"], "join_token");
    assert!(
        web["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{web}"
    );
    assert_eq!(web["connected"], true);
    let port = server.addr.port().to_string();
    assert!(web["server"].as_str().unwrap().ends_with(&port), "{web}");
    assert!(web["last_sync"].as_str().unwrap().ends_with('Z'), "{web}");
    assert!(
        web["svid_expires_at"].as_str().unwrap().ends_with('Z'),
        "{web}"
    );
    assert_eq!(web["evicted"], false);
    // The text form names the agent too.
    let admin = server.admin();
    let text = cli_async(&["agent", "list", "--admin-socket", admin.to_str().unwrap()]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout
            .contains("spiffe://mesh-a.test/meshtrust/agent/web-1"),
        "{text:?}"
    );

    // Evict by SPIFFE ID (a node name works too): the open stream ends at once.
    let out = cli_async(&[
        "agent",
        "evict",
        "spiffe://mesh-a.test/meshtrust/agent/web-1",
        "--admin-socket",
        admin.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let ended = common::guard(views.message()).await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");

    // Every call with the old SVID is refused, on a new connection too.
    let mut client = server.client(Some(&old)).await;
    let sync = client.sync(SyncRequest {}).await.unwrap_err();
    let renew = client
        .renew_agent(RenewAgentRequest {
            csr: agent::csr(&agent::new_key(), None),
        })
        .await
        .unwrap_err();
    let sign = client
        .sign_workloads(SignWorkloadsRequest { csrs: vec![] })
        .await
        .unwrap_err();
    for status in [&sync, &renew, &sign] {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("evicted"), "{status:?}");
    }
    server.proc().wait_for_log("reason=\"evicted\"").await;
    assert_eq!(server.refusals("evicted").await, 3.0);
    assert_eq!(agents_json(&server).await[0]["evicted"], true);

    // A new token: a new SVID that works; the old one stays refused.
    let new = server.attested("web-1").await;
    let mut fresh = server.client(Some(&new)).await;
    let mut views = fresh.sync(SyncRequest {}).await.unwrap().into_inner();
    common::guard(views.message()).await.unwrap().unwrap();
    let mut stale = server.client(Some(&old)).await;
    let status = stale.sync(SyncRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("not current"), "{status:?}");
    assert_eq!(agents_json(&server).await[0]["evicted"], false);

    // Unknown nodes and bad names are refused by the CLI with the reason.
    for (node, why) in [("nobody", "no attested agent"), ("a..b/c", "")] {
        let out = cli_async(&[
            "agent",
            "evict",
            node,
            "--admin-socket",
            admin.to_str().unwrap(),
        ])
        .await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains(why), "{out:?}");
    }
}

#[tokio::test]
async fn the_registry_and_evictions_survive_a_restart() {
    let server = common::agent::api_server("").await;
    let web = server.attested("web-1").await;
    let _db = server.attested("db-1").await;
    let admin = server.admin();
    let out = cli_async(&[
        "agent",
        "evict",
        "db-1",
        "--admin-socket",
        admin.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let minted_before = agent::create_token(&admin, "edge-1", "5m").await;
    let server = server.restart().await;

    let listed = agents_json(&server).await;
    let nodes: Vec<(&str, bool, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["node"].as_str().unwrap(),
                a["evicted"].as_bool().unwrap(),
                a["connected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(nodes, [("db-1", true, false), ("web-1", false, false)]);
    // A token minted before the restart attests after it (tokens live in the store, hashed).
    let mut anonymous = server.client(None).await;
    agent::attest_join_token(&mut anonymous, &minted_before)
        .await
        .unwrap();
    // web-1's SVID from before the restart is still accepted.
    let mut client = server.client(Some(&web)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();
    common::guard(views.message()).await.unwrap().unwrap();
}

#[tokio::test]
async fn agent_subcommand_usage_errors_exit_64() {
    for args in [
        &["agent"][..],
        &["agent", "list"],
        &["agent", "evict", "web-1"],
    ] {
        let out = cli_async(args).await;
        assert_eq!(out.code, 64, "{args:?}: {out:?}");
        assert!(out.stderr.contains("required"), "{args:?}: {out:?}");
    }
}
