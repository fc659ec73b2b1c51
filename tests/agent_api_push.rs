//! Sync is push, not poll (issue 12 item 6): an open Sync stream of a real server receives a
//! new NodeView when our CA rotates (the prepared CA published next to the signing one) and
//! when a peer bundle its entries federate with changes (the peer's CA rotates and the server
//! pins the new bundle); revisions increase; all peers come in one message, and only those the
//! node's entries name. A stream ends when the agent SVID it was opened with expires. Short CA
//! lifetimes only set how soon the changes come; every step is an event waited for under the
//! hang guard.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::node_agent::{ServerProc, node_entry};
use meshtrust::agent_api::proto::{Bundle, NodeView, SyncRequest};

fn authorities(bundle: &Bundle) -> usize {
    let td = common::td(&bundle.trust_domain);
    meshtrust::bundle::pem::parse_bootstrap(&td, &bundle.spiffe_bundle_json)
        .unwrap()
        .x509_authorities
        .len()
}

/// The next view on `views` that `done` accepts; revisions must increase on the way.
async fn until(
    views: &mut tonic::Streaming<NodeView>,
    last: &mut u64,
    done: impl Fn(&NodeView) -> bool,
) -> NodeView {
    loop {
        let view = common::guard(views.message()).await.unwrap().unwrap();
        assert_eq!(view.revision, *last + 1, "one more per view sent");
        *last = view.revision;
        if done(&view) {
            return view;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_ca_rotation_is_pushed_to_an_open_sync_stream() {
    // The CA is made by `bundle show` before the server starts and prepares its successor at
    // half its 20 s life. An agent SVID lives 10 s and a stream ends with it, so the agent does
    // what agents do: it renews its SVID at half-life, then syncs with the new one, whose
    // stream is open when the successor is published.
    let dir = tempfile::tempdir().unwrap();
    let config = common::agent::api_config("")
        .ca("ca_ttl = \"20s\"\nx509_svid_ttl = \"10s\"\njwt_svid_ttl = \"10s\"");
    let server = ServerProc::launch_in(dir, &config).await;
    let token = common::agent::create_token(&server.admin(), "web-1", "5m").await;
    let mut anonymous = server.client(None).await;
    let (first_id, svid) = common::agent::attest_join_token(&mut anonymous, &token)
        .await
        .unwrap();
    let half_life = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(svid.expires_at).unwrap())
        - std::time::Duration::from_secs(5);
    // A wait on the clock (the SVID's half-life), not a synchronisation.
    if let Ok(left) = half_life.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let key = common::agent::new_key();
    let renewed = server
        .client(Some(&first_id))
        .await
        .renew_agent(meshtrust::agent_api::proto::RenewAgentRequest {
            csr: common::agent::csr(&key, None),
        })
        .await
        .unwrap()
        .into_inner();
    let identity = common::agent::Identity {
        chain: vec![renewed.cert_chain[0].clone().into()],
        key,
    };
    let mut client = server.client(Some(&identity)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();
    let first = common::guard(views.message()).await.unwrap().unwrap();
    assert_eq!(first.revision, 0);
    assert_eq!(authorities(first.own.as_ref().unwrap()), 1);
    let mut last = 0;
    let both = until(&mut views, &mut last, |v| {
        authorities(v.own.as_ref().unwrap()) == 2
    })
    .await;
    assert_eq!(both.entries, first.entries, "only the bundle changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_bundle_changes_are_pushed_with_only_the_peers_the_entries_need() {
    let root = tempfile::tempdir().unwrap();
    // Two peers, each rotating quickly and polled every second; web-1's entry needs mesh-b only.
    let mut peers = Vec::new();
    for td in ["mesh-b.test", "mesh-c.test"] {
        let dir = root.path().join(td);
        let config = DaemonConfig::new(td)
            .ca("ca_ttl = \"8s\"\nx509_svid_ttl = \"4s\"\njwt_svid_ttl = \"4s\"")
            .bundle_endpoint_any_port("refresh_hint = \"1s\"\n")
            .write(&dir);
        let shown = common::cli(&["bundle", "show", "--config", config.to_str().unwrap()]);
        assert_eq!(shown.code, 0, "{}", shown.stderr);
        let proc = Proc::serve(&config).await;
        let addr = proc.logged_addr("bundle endpoint listening").await;
        peers.push((td, proc, addr, shown.stdout));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::agent::api_config(&format!(
        "{}federates_with = [\"mesh-b.test\"]\n",
        node_entry("spiffe://mesh-a.test/web-b", "web-1")
    ));
    std::fs::create_dir_all(dir.path().join("peers")).unwrap();
    for (td, _, addr, bundle) in &peers {
        std::fs::write(dir.path().join(format!("peers/{td}.json")), bundle).unwrap();
        config = config.peer(td, &format!("https://{addr}/"), None, true);
    }
    let server = ServerProc::launch_in(dir, &config).await;
    let identity = server.attested("web-1").await;
    let mut client = server.client(Some(&identity)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();

    let mut view = common::guard(views.message()).await.unwrap().unwrap();
    let mut last = 0;
    if view.peers.is_empty() {
        view = until(&mut views, &mut last, |v| !v.peers.is_empty()).await;
    }
    let names: Vec<&str> = view.peers.iter().map(|b| b.trust_domain.as_str()).collect();
    assert_eq!(
        names,
        ["mesh-b.test"],
        "mesh-c is pinned too, but no web-1 entry needs it"
    );
    let before = view.peers[0].spiffe_bundle_json.clone();

    // mesh-b publishes its prepared CA; the server pins it and pushes it.
    let rotated = until(&mut views, &mut last, |v| {
        v.peers.len() == 1 && authorities(&v.peers[0]) == 2
    })
    .await;
    assert_ne!(rotated.peers[0].spiffe_bundle_json, before);
    assert_eq!(rotated.peers[0].trust_domain, "mesh-b.test");
}

#[tokio::test]
async fn a_sync_stream_ends_when_the_agent_svid_it_was_opened_with_expires() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::agent::api_config("")
        .ca("ca_ttl = \"1h\"\nx509_svid_ttl = \"2s\"\njwt_svid_ttl = \"2s\"");
    let server = ServerProc::launch_in(dir, &config).await;
    let identity = server.attested("web-1").await;
    let mut client = server.client(Some(&identity)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();
    common::guard(views.message()).await.unwrap().unwrap();
    let ended = common::guard(views.message()).await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");
    server
        .proc()
        .wait_for_log("reason=\"agent svid expired\"")
        .await;
}
