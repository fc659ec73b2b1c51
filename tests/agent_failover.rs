//! Failover: an agent lists two server replicas (one PostgreSQL store, the same CA key); when
//! the one it is connected to is killed with `kill -9`, it moves to the other (the time is
//! printed) and its workloads keep being served. Needs PostgreSQL (skip note without it; CI
//! sets MESHTRUST_REQUIRE_POSTGRES=1).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
mod pg_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Instant;

use common::node_agent::{self, AgentConfig, AgentServer, node_entry, server_config};

const TD: &str = "mesh-a.test";
const NODE: &str = "node-1";
const WEB: &str = "spiffe://mesh-a.test/web";

async fn served(socket: &Path) -> Option<String> {
    let endpoint = format!("unix://{}", socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(endpoint).await.ok()?;
    let svid = client.fetch_x509_svid().await.ok()?;
    Some(svid.spiffe_id().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_connected_replica_dies_the_agent_moves_to_the_other() {
    let Some(db) = pg_support::test_db("agent_failover") else {
        return;
    };
    common::init();
    let root = tempfile::tempdir().unwrap();
    let a_dir = root.path().join("server-a");
    std::fs::create_dir_all(a_dir.join("secrets")).unwrap();
    let url_file = a_dir.join("secrets/pg-url");
    std::fs::write(&url_file, format!("{}\n", db.url)).unwrap();
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = server_config(TD, &node_entry(WEB, NODE))
        .section("[store]\nkind = \"postgres\"\nurl_file = \"secrets/pg-url\"\n");
    AgentServer::prepare(&a_dir, &config);
    let b_dir = root.path().join("server-b");
    node_agent::copy_replica(&a_dir, &b_dir);

    // B listens on a port chosen now, so the agent can list it before B runs.
    let b_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b_config = b_dir.join("meshtrust.toml");
    let text = std::fs::read_to_string(&b_config).unwrap();
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{b_port}\""),
    );
    std::fs::write(&b_config, text).unwrap();
    let b_addr: std::net::SocketAddr = format!("127.0.0.1:{b_port}").parse().unwrap();

    let mut a = AgentServer::start(&a_dir).await;
    let token = a.token(NODE).await;
    let adir = root.path().join("agent");
    let agent_config = AgentConfig::new(TD, &[a.addr, b_addr], &a.bundle())
        .join_token(&token)
        .write(&adir);
    let agent = node_agent::spawn(&agent_config).await;
    let socket = node_agent::workload_socket(&adir);
    common::eventually_some("the agent serves web", || async {
        served(&socket).await.filter(|id| id == WEB)
    })
    .await;
    let on_a = agent.wait_for_log("agent connected").await;
    assert!(on_a.contains(&a.addr.to_string()), "{on_a}");

    // B starts once the agent has attested: it reads the agent table from the shared store.
    let b = AgentServer::start(&b_dir).await;
    assert_eq!(b.addr, b_addr);
    let killed = Instant::now();
    a.proc.take().unwrap().kill_9();
    let on_b = agent.wait_for_nth_log("agent connected", 1).await;
    let took = killed.elapsed();
    assert!(
        on_b.contains(&b.addr.to_string()),
        "{on_b}\n{}",
        agent.log()
    );
    println!(
        "failover: kill -9 of the connected replica -> agent synced with the other in {took:?}"
    );
    assert_eq!(served(&socket).await.as_deref(), Some(WEB));
    let status = common::status_json(&node_agent::admin_socket(&adir)).await;
    assert_eq!(status["agent"]["server"], format!("https://{}", b.addr));
}
