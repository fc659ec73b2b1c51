//! The agent's other ways in and out: x509pop attestation end to end (a node certificate from
//! a node CA the server trusts, the node name from its CN), and JWT-SVIDs through the agent
//! (minted by the server on the agent's request, validated with the JWT bundle the agent
//! serves).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::node_agent::{self, AgentConfig, ServerProc, node_entry, server_config};
use common::node_ca::NodeCa;

const TD: &str = "mesh-a.test";
const WEB: &str = "spiffe://mesh-a.test/web";

/// A node CA (PEM) and a node certificate for `node` signed by it (PEM chain, PEM key).
fn node_pki(node: &str) -> (String, String, String) {
    let ca = NodeCa::new("node ca");
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let (cert, key) = ca.node_cert(node, now - day, now + day);
    (
        ca.pem(),
        common::pem(std::slice::from_ref(&cert)),
        key.serialize_pem(),
    )
}

async fn spiffe_client(socket: &Path) -> spiffe::WorkloadApiClient {
    let endpoint = format!("unix://{}", socket.display());
    common::guard(spiffe::WorkloadApiClient::connect_to(endpoint))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_attested_by_x509pop_serves_x509_and_jwt_svids() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = node_pki("rack-7");
    let sdir = root.path().join("server");
    std::fs::create_dir_all(&sdir).unwrap();
    std::fs::write(sdir.join("node-ca.pem"), ca_pem).unwrap();
    let config = server_config(TD, &node_entry(WEB, "rack-7"))
        .section("[node_attestation]\nx509pop_ca_file = \"node-ca.pem\"\n");
    ServerProc::prepare(&sdir, &config);
    let server = ServerProc::start(&sdir).await;
    let adir = root.path().join("agent");
    let agent_config = AgentConfig::new(TD, &[server.addr], &server.bundle())
        .x509pop(&cert_pem, &key_pem)
        .write(&adir);
    let agent = node_agent::spawn(&agent_config).await;
    let attested = server.proc().wait_for_log("agent attested").await;
    assert!(
        attested.contains("x509pop") && attested.contains("rack-7"),
        "{attested}"
    );
    agent.wait_for_log("workload SVIDs signed").await;

    let client = spiffe_client(&node_agent::workload_socket(&adir)).await;
    let svid = common::guard(client.fetch_x509_svid()).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), WEB);

    // JWT-SVIDs: the server mints them (JWT keys stay there); the agent passes them on.
    let jwt = common::guard(client.fetch_jwt_svid(["svc"], None))
        .await
        .unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), WEB);
    let bundles = common::guard(client.fetch_jwt_bundles()).await.unwrap();
    let checked = spiffe::JwtSvid::parse_and_validate(jwt.token(), &bundles, &["svc"]).unwrap();
    assert_eq!(checked.spiffe_id().to_string(), WEB);

    let status = common::status_json(&node_agent::admin_socket(&adir)).await;
    assert_eq!(status["agent"]["node"], "rack-7");
    for log in [agent.log(), server.proc().log()] {
        assert!(!log.contains(jwt.token()), "a JWT-SVID in a log");
    }
}

/// Short-lived SVIDs (8 s): the agent renews its own SVID (a new key, RenewAgent) and the
/// workload's around half life, and an open stream receives the renewed certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_its_own_and_its_workloads_svids_around_half_life() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let sdir = root.path().join("server");
    let config =
        server_config(TD, &node_entry(WEB, "node-1")).ca("ca_ttl = \"1h\"\nx509_svid_ttl = \"8s\"");
    ServerProc::prepare(&sdir, &config);
    let server = ServerProc::start(&sdir).await;
    let adir = root.path().join("agent");
    let agent_config = server.joining_agent("node-1", &adir).await;
    let agent = node_agent::spawn(&agent_config).await;
    let socket = node_agent::workload_socket(&adir);
    agent.wait_for_log("workload SVIDs signed").await;
    let mut stream = common::grpc::x509_svids(&socket).await;
    let first = common::grpc::next(&mut stream).await;
    let renewed = common::grpc::next(&mut stream).await;
    assert_eq!(renewed.svids[0].spiffe_id, WEB);
    assert_ne!(
        renewed.svids[0].x509_svid, first.svids[0].x509_svid,
        "a new certificate"
    );
    assert_ne!(
        renewed.svids[0].x509_svid_key, first.svids[0].x509_svid_key,
        "for a new key"
    );
    agent.wait_for_log("agent SVID renewed").await;
    server.proc().wait_for_log("agent svid renewed").await;
    // Renewed once per half life, not in a loop (NotBefore is back-dated by the CA: a renewal
    // time measured from it would already be past).
    let addr = common::metrics::listen_addr(&agent).await;
    let signed = common::metrics::counter(
        &addr,
        "meshtrust_agent_workload_svids_signed_total",
        "meshtrust_agent_workload_svids_signed_total",
    );
    assert!((2..=10).contains(&signed), "{signed} workload SVIDs signed");
    // Renewed, the agent reconnects with its new SVID at once: past the old one's expiry (8 s
    // after the attestation) the server never had to refuse it (no warning, no failure counted).
    agent
        .wait_for_log("reconnecting with the renewed agent SVID")
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let log = agent.log();
    assert!(
        !log.contains("svid_refused") && !log.contains("connection ended"),
        "{log}"
    );
    assert!(log.matches("agent connected").count() >= 2, "{log}");
}

/// `meshtrust agent evict`: the agent's stream ends, its SVID is refused, it forgets it and
/// waits for a new join token (the used one is never presented again); once one is written to
/// its token file it attests again and syncs. Its workloads are served from the cache
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_agent_waits_for_a_new_token_and_attests_again() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let sdir = root.path().join("server");
    ServerProc::prepare(&sdir, &server_config(TD, &node_entry(WEB, "node-1")));
    let server = ServerProc::start(&sdir).await;
    let adir = root.path().join("agent");
    let agent_config = server.joining_agent("node-1", &adir).await;
    let agent = node_agent::spawn(&agent_config).await;
    agent.wait_for_log("workload SVIDs signed").await;

    let admin = server.admin();
    let out = common::cli_async(&[
        "agent",
        "evict",
        "node-1",
        "--admin-socket",
        admin.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    agent
        .wait_for_log("every server refused the agent SVID")
        .await;
    agent.wait_for_log("holds the token already used").await;
    let status = common::status_json(&node_agent::admin_socket(&adir)).await;
    assert!(status["agent"]["spiffe_id"].is_null(), "{status}");
    let client = spiffe_client(&node_agent::workload_socket(&adir)).await;
    let svid = common::guard(client.fetch_x509_svid()).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), WEB, "served from the cache");
    assert_eq!(
        server.proc().count("agent attested"),
        1,
        "the used token was kept back"
    );

    std::fs::write(adir.join("token"), server.token("node-1").await).unwrap();
    server.proc().wait_for_nth_log("agent attested", 1).await;
    agent.wait_for_nth_log("agent connected", 1).await;
    let status = common::status_json(&node_agent::admin_socket(&adir)).await;
    assert_eq!(
        status["agent"]["spiffe_id"],
        "spiffe://mesh-a.test/meshtrust/agent/node-1"
    );
}

/// A token the server refuses (here: unknown) is presented once, not in a loop: the agent
/// waits for a new one, and attests with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_presented_once_then_the_agent_waits_for_a_new_one() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let sdir = root.path().join("server");
    ServerProc::prepare(&sdir, &server_config(TD, &node_entry(WEB, "node-1")));
    let server = ServerProc::start(&sdir).await;
    let adir = root.path().join("agent");
    let agent_config = AgentConfig::new(TD, &[server.addr], &server.bundle())
        .join_token("not-a-token-the-server-issued")
        .write(&adir);
    let agent = node_agent::spawn(&agent_config).await;
    agent.wait_for_log("holds the token already used").await;
    let refusals = server.proc().count("refused");
    assert!(refusals >= 1, "{}", server.proc().log());
    std::fs::write(adir.join("token"), server.token("node-1").await).unwrap();
    server.proc().wait_for_log("agent attested").await;
    agent.wait_for_log("workload SVIDs signed").await;
    assert_eq!(
        server.proc().count("refused"),
        refusals,
        "the bad token was not presented again"
    );
}
