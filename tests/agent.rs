//! The node agent (`meshtrust agent --config FILE`) against a real `meshtrust serve` over TLS:
//! a workload gets its node's SVID through the agent (the `spiffe` crate's client and
//! `meshtrust fetch x509`), a new entry reaches an open stream on the agent (latency printed),
//! the agent keeps serving with its server gone and after a `kill -9` with every server down,
//! and it moves to the next listed server when the connected one dies.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::daemon::Proc;
use common::node_agent::{self, AgentConfig, ServerProc, node_entry, server_config};

const TD: &str = "mesh-a.test";
const NODE: &str = "node-1";
const WEB: &str = "spiffe://mesh-a.test/web";
const API: &str = "spiffe://mesh-a.test/api";
const OTHER: &str = "spiffe://mesh-a.test/other-node-only";

fn entries() -> String {
    format!("{}{}", node_entry(WEB, NODE), node_entry(OTHER, "node-2"))
}

/// A started server whose entries serve `NODE`, and an agent config (not started) for it.
async fn server_and_agent(root: &Path) -> (ServerProc, PathBuf) {
    common::init();
    let sdir = root.join("server");
    ServerProc::prepare(&sdir, &server_config(TD, &entries()));
    let server = ServerProc::start(&sdir).await;
    let config = server.joining_agent(NODE, &root.join("agent")).await;
    (server, config)
}

/// The SPIFFE IDs the agent's Workload API serves this process, by the `spiffe` crate's client
/// (`None` until it serves any).
async fn served_ids(socket: &Path) -> Option<Vec<String>> {
    let endpoint = format!("unix://{}", socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(endpoint).await.ok()?;
    let ctx = client.fetch_x509_context().await.ok()?;
    let mut ids: Vec<String> = ctx
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    ids.sort();
    Some(ids)
}

async fn wait_served(socket: &Path, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    common::eventually_some(&format!("the agent serves {want:?}"), || async {
        served_ids(socket).await.filter(|ids| *ids == want)
    })
    .await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_gets_its_nodes_svid_through_the_agent_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let (server, config) = server_and_agent(root.path()).await;
    let adir = config.parent().unwrap().to_owned();
    let agent = node_agent::spawn(&config).await;
    let socket = node_agent::workload_socket(&adir);
    // Only NODE's entry: node-2's identity never reaches this node.
    wait_served(&socket, &[WEB]).await;
    server.proc().wait_for_log("agent attested").await;

    // The SVID chains to the server's CA: the agent's bundle is the server's.
    let endpoint = format!("unix://{}", socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();
    let ctx = common::guard(client.fetch_x509_context()).await.unwrap();
    let bundle = ctx
        .bundle_set()
        .get(&spiffe::TrustDomain::new(TD).unwrap())
        .unwrap();
    let server_roots = &server.roots;
    let agent_roots: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    assert_eq!(
        agent_roots,
        server_roots.iter().map(|c| c.to_vec()).collect::<Vec<_>>()
    );
    let svid = &ctx.svids()[0];
    let (ok, why) = common::openssl_verify(
        root.path(),
        server_roots,
        &rustls_pki_types::CertificateDer::from(svid.leaf().as_ref().to_vec()),
        "sslclient",
    );
    assert!(ok, "{why}");

    // `meshtrust fetch x509` works against the agent as against a server.
    let out = common::cli_async(&["fetch", "x509", "--socket", socket.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("x509-svid {WEB}")),
        "{}",
        out.stdout
    );

    // `meshtrust status --admin-socket` of the agent: its server, last sync, identities.
    let admin = node_agent::admin_socket(&adir);
    let status = common::status_json(&admin).await;
    let a = &status["agent"];
    assert_eq!(a["node"], NODE);
    assert_eq!(
        a["spiffe_id"],
        format!("spiffe://{TD}/meshtrust/agent/{NODE}")
    );
    assert_eq!(a["server"], format!("https://{}", server.addr));
    assert!(a["last_sync"].is_string(), "{status}");
    assert_eq!(a["identities"][0]["spiffe_id"], WEB);
    let text = common::cli_async(&["status", "--admin-socket", admin.to_str().unwrap()]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains(WEB) && text.stdout.contains("last sync"),
        "{}",
        text.stdout
    );

    // Metrics.
    let addr = common::metrics::listen_addr(&agent).await;
    let scrape = common::metrics::scrape(&addr);
    assert_eq!(
        scrape.value(
            "meshtrust_agent_connected",
            "gauge",
            "meshtrust_agent_connected"
        ),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let synced = scrape.value(
        "meshtrust_agent_last_sync_timestamp_seconds",
        "gauge",
        "meshtrust_agent_last_sync_timestamp_seconds",
    );
    assert!(synced > now - 600.0 && synced <= now + 1.0, "{synced}");
    let agent_expiry = scrape.value(
        "meshtrust_agent_svid_expires_at_seconds",
        "gauge",
        "meshtrust_agent_svid_expires_at_seconds",
    );
    assert!(agent_expiry > now, "{agent_expiry}");
    let first = scrape.value(
        "meshtrust_agent_cache_first_expiry_seconds",
        "gauge",
        "meshtrust_agent_cache_first_expiry_seconds",
    );
    assert!(first > 0.0, "{first}");

    // The cache: a private folder, a 0600 file; no key or token in the logs.
    assert_eq!(mode(&admin), 0o600, "the agent's admin socket is root's");
    assert_eq!(
        mode(&socket),
        0o777,
        "workloads are told apart by SO_PEERCRED"
    );
    let data = adir.join("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("cache.json")), 0o600);
    let token = std::fs::read_to_string(adir.join("token")).unwrap();
    for log in [agent.log(), server.proc().log()] {
        assert!(!log.contains("PRIVATE KEY"), "{log}");
        assert!(!log.contains(token.trim()), "the join token leaked: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_entry_reaches_an_open_stream_on_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let (server, config) = server_and_agent(root.path()).await;
    let adir = config.parent().unwrap().to_owned();
    let _agent = node_agent::spawn(&config).await;
    let socket = node_agent::workload_socket(&adir);
    wait_served(&socket, &[WEB]).await;

    let mut stream = common::grpc::x509_svids(&socket).await;
    let first = common::grpc::next(&mut stream).await;
    assert_eq!(first.svids.len(), 1);

    let more = format!("{}{}", entries(), node_entry(API, NODE));
    let sent = Instant::now();
    server.reload(&server_config(TD, &more)).await;
    let ids = loop {
        let update = common::grpc::next(&mut stream).await;
        let ids: Vec<String> = update.svids.iter().map(|s| s.spiffe_id.clone()).collect();
        if ids.len() == 2 {
            break ids;
        }
    };
    let took = sent.elapsed();
    assert_eq!(ids, [WEB, API], "config order: web first");
    println!("new entry: SIGHUP on the server -> SVID on the agent's open stream in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_server_down_the_agent_serves_from_its_cache_even_after_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, config) = server_and_agent(root.path()).await;
    let adir = config.parent().unwrap().to_owned();
    let agent = node_agent::spawn(&config).await;
    let socket = node_agent::workload_socket(&adir);
    wait_served(&socket, &[WEB]).await;
    let before = common::status_json(&node_agent::admin_socket(&adir)).await;

    server.proc.take().unwrap().kill_9();
    agent.wait_for_log("server connection ended").await;
    let addr = common::metrics::listen_addr(&agent).await;
    common::metrics::scrape_until(&addr, "connected = 0", |s| {
        s.value_or_0("meshtrust_agent_connected", "meshtrust_agent_connected") == 0.0
    })
    .await;
    wait_served(&socket, &[WEB]).await;

    // kill -9 with the server still down: the restarted agent serves the same SVID from disk.
    agent.kill_9();
    let agent = node_agent::spawn(&config).await;
    agent.wait_for_log("agent cache loaded").await;
    wait_served(&socket, &[WEB]).await;
    let after = common::status_json(&node_agent::admin_socket(&adir)).await;
    for key in ["spiffe_id", "expires_at"] {
        assert_eq!(
            after["agent"]["identities"][0][key], before["agent"]["identities"][0][key],
            "the cached SVID, not a new one"
        );
    }
    assert!(after["agent"]["server"].is_null(), "{after}");
    let line = agent.wait_for_log("serving cached SVIDs").await;
    println!("offline: {line}");
    let addr = common::metrics::listen_addr(&agent).await;
    let s = common::metrics::scrape(&addr);
    assert!(
        s.value(
            "meshtrust_agent_cache_first_expiry_seconds",
            "gauge",
            "meshtrust_agent_cache_first_expiry_seconds"
        ) > 0.0
    );
    assert_eq!(
        s.value(
            "meshtrust_agent_connected",
            "gauge",
            "meshtrust_agent_connected"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_agent_config_exits_64_naming_the_key() {
    let root = tempfile::tempdir().unwrap();
    let ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(root.path().join("bundle.pem"), ca.pem()).unwrap();
    let good = AgentConfig::new(
        TD,
        &["127.0.0.1:1".parse().unwrap()],
        &root.path().join("bundle.pem"),
    );
    let path = good.write(root.path());
    let text = std::fs::read_to_string(&path).unwrap();
    for (bad, key) in [
        (
            text.replace("https://127.0.0.1:1", "http://127.0.0.1:1"),
            "servers[0]",
        ),
        (
            text.replace("[attestation]\n", "[attestation]\nbogus = 1\n"),
            "attestation.bogus",
        ),
        (text.clone(), "attestation.join_token_file"),
        (text.replace("bundle.pem", "missing.pem"), "server_bundle"),
    ] {
        std::fs::write(&path, bad).unwrap();
        let mut p = Proc::spawn(&["agent", "--config", path.to_str().unwrap()]);
        let status = p.wait_exit();
        assert_eq!(status.code(), Some(64), "{}", p.log());
        assert!(p.log().contains(key), "{key}: {}", p.log());
    }
}

/// A server that is not ours (its certificate chains to another CA than `server_bundle`): the
/// agent refuses the handshake before presenting its token, logs the reason and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_server_that_its_bundle_does_not_vouch_for() {
    let root = tempfile::tempdir().unwrap();
    let (server, _) = server_and_agent(root.path()).await;
    // Another mesh of the same name: its CA is not the one our bundle holds.
    let impostor_dir = root.path().join("impostor");
    ServerProc::prepare(&impostor_dir, &server_config(TD, &entries()));
    let token = server.token(NODE).await;
    let config = AgentConfig::new(TD, &[server.addr], &impostor_dir.join("bundle.pem"))
        .join_token(&token)
        .write(&root.path().join("fooled"));
    let agent = node_agent::spawn(&config).await;
    let line = agent.wait_for_log("reason=\"tls\"").await;
    assert!(line.contains("server connection ended"), "{line}");
    let addr = common::metrics::listen_addr(&agent).await;
    common::metrics::scrape_until(&addr, "a tls failure counted", |s| {
        s.value_or_0(
            "meshtrust_agent_server_failures_total",
            "meshtrust_agent_server_failures_total{reason=\"tls\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        server.proc().count("agent attested"),
        0,
        "no token was presented"
    );
    let status = common::status_json(&node_agent::admin_socket(config.parent().unwrap())).await;
    assert!(status["agent"]["spiffe_id"].is_null(), "{status}");
}
