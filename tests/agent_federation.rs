//! Federation through an agent: mesh-a's agent serves its workload mesh-b's bundle (the peer its
//! entry federates with, pushed by the server) and mesh-b's workload validates the SVID the
//! agent served with mesh-a's bundle as mesh-b pinned it; and the other way round.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::node_agent::{self, AgentConfig, ServerProc, node_entry, server_config};

const WEB: &str = "spiffe://mesh-a.test/web";
const ECHO: &str = "spiffe://mesh-b.test/echo";

/// The X.509 context a workload of this process gets on `socket`.
async fn context(socket: &Path) -> spiffe::X509Context {
    let endpoint = format!("unix://{}", socket.display());
    let client = common::guard(spiffe::WorkloadApiClient::connect_to(endpoint))
        .await
        .unwrap();
    common::guard(client.fetch_x509_context()).await.unwrap()
}

fn roots(ctx: &spiffe::X509Context, td: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let bundle = ctx
        .bundle_set()
        .get(&spiffe::TrustDomain::new(td).unwrap())
        .unwrap_or_else(|| panic!("no bundle of {td}"));
    bundle
        .authorities()
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.as_ref().to_vec()))
        .collect()
}

fn leaf(ctx: &spiffe::X509Context) -> rustls_pki_types::CertificateDer<'static> {
    rustls_pki_types::CertificateDer::from(ctx.svids()[0].leaf().as_ref().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_meshs_workload_validates_the_svid_an_agent_serves() {
    common::init();
    let root = tempfile::tempdir().unwrap();

    // mesh-b: a plain server with a bundle endpoint (its federation with mesh-a comes later).
    let b_dir = root.path().join("mesh-b");
    let b_base =
        DaemonConfig::new("mesh-b.test").bundle_endpoint_any_port("refresh_hint = \"1s\"\n");
    let b_config = b_base.write(&b_dir);
    let shown = common::cli(&["bundle", "show", "--config", b_config.to_str().unwrap()]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let b = Proc::serve(&b_config).await;
    let b_url = format!(
        "https://{}/",
        b.logged_addr("bundle endpoint listening").await
    );

    // mesh-a: agents, a bundle endpoint, mesh-b as a peer; web (node n1) federates with mesh-b.
    let a_dir = root.path().join("mesh-a");
    let entry = format!(
        "{}federates_with = [\"mesh-b.test\"]\n",
        node_entry(WEB, "n1")
    );
    let a_config = server_config("mesh-a.test", &entry)
        .bundle_endpoint_any_port("refresh_hint = \"1s\"\n")
        .peer("mesh-b.test", &b_url, None, true);
    std::fs::create_dir_all(a_dir.join("peers")).unwrap();
    std::fs::write(a_dir.join("peers/mesh-b.test.json"), &shown.stdout).unwrap();
    ServerProc::prepare(&a_dir, &a_config);
    let a = ServerProc::start(&a_dir).await;
    let a_url = format!(
        "https://{}/",
        a.proc().logged_addr("bundle endpoint listening").await
    );

    // mesh-b now federates with mesh-a (SIGHUP), for a workload of its own.
    std::fs::copy(a.bundle(), b_dir.join("peers/mesh-a.test.json")).unwrap();
    b_base
        .peer("mesh-a.test", &a_url, None, true)
        .entry(ECHO, &["mesh-a.test"])
        .write(&b_dir);
    b.signal("HUP");
    b.wait_for_log("config reloaded").await;
    common::wait_for_peer(
        &b_dir.join("admin.sock"),
        "mesh-a.test",
        "mesh-b pins mesh-a",
        |p| p["state"] == "ok",
    )
    .await;

    let token = a.token("n1").await;
    let agent_dir = root.path().join("agent");
    let agent_config = AgentConfig::new("mesh-a.test", &[a.addr], &a.bundle())
        .join_token(&token)
        .write(&agent_dir);
    let _agent = node_agent::spawn(&agent_config).await;
    let agent_socket = node_agent::workload_socket(&agent_dir);
    // The agent's workload gets web and mesh-b's bundle (pushed: web federates with mesh-b).
    let on_agent = common::eventually_some("web with mesh-b's bundle on the agent", || async {
        let endpoint = format!("unix://{}", agent_socket.display());
        let client = spiffe::WorkloadApiClient::connect_to(endpoint).await.ok()?;
        let ctx = client.fetch_x509_context().await.ok()?;
        let has_b = ctx
            .bundle_set()
            .get(&spiffe::TrustDomain::new("mesh-b.test").unwrap())
            .is_some();
        has_b.then_some(ctx)
    })
    .await;
    assert_eq!(on_agent.svids()[0].spiffe_id().to_string(), WEB);

    let on_b = context(&b_dir.join("workload.sock")).await;
    assert_eq!(on_b.svids()[0].spiffe_id().to_string(), ECHO);
    // mesh-b's workload validates the agent-served SVID with mesh-a's bundle as mesh-b has it.
    let (ok, why) = common::openssl_verify(
        root.path(),
        &roots(&on_b, "mesh-a.test"),
        &leaf(&on_agent),
        "sslclient",
    );
    assert!(ok, "{why}");
    // And the agent's workload validates mesh-b's with mesh-b's bundle as the agent got it.
    let (ok, why) = common::openssl_verify(
        root.path(),
        &roots(&on_agent, "mesh-b.test"),
        &leaf(&on_b),
        "sslserver",
    );
    assert!(ok, "{why}");
}
