//! Agents on hosts with their own addresses (root: network namespaces joined by veth pairs,
//! made and removed by the test; a skip note without root): the server in a hub namespace,
//! one agent per host. Each host's workloads get only that node's identities; a link cut
//! longer than a sync leaves the host's workloads their SVIDs; an entry added during the cut
//! arrives once the link is back (the time from link-up to the new SVID is printed).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;
use std::time::Instant;

use common::netns::Star;
use common::node_agent::{self, AgentConfig, AgentServer, node_entry, server_config_on};

const TD: &str = "mesh-a.test";
const WEB: &str = "spiffe://mesh-a.test/web";
const DB: &str = "spiffe://mesh-a.test/db";
const LOG: &str = "spiffe://mesh-a.test/log";
const API: &str = "spiffe://mesh-a.test/api";
const PORT: u16 = 8081;

fn entries(extra: &str) -> String {
    format!(
        "{}{}{}{extra}",
        node_entry(WEB, "host-1"),
        node_entry(DB, "host-2"),
        node_entry(LOG, "*")
    )
}

/// The server config, its agent API on every address of the hub namespace.
fn config(extra: &str) -> common::config::DaemonConfig {
    server_config_on(TD, &format!("0.0.0.0:{PORT}"), &entries(extra))
}

async fn served(socket: &Path) -> Option<Vec<String>> {
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
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    common::eventually_some(&format!("{} serves {want:?}", socket.display()), || async {
        served(socket).await.filter(|ids| *ids == want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_two_hosts_serve_only_their_node_and_ride_out_a_link_cut() {
    if !common::daemon::root_or_skip("agent_netns") {
        return;
    }
    common::init();
    // Declared first, dropped last: the processes die before their namespaces go.
    let star = Star::new("ag", 2);
    let root = tempfile::tempdir().unwrap();
    let sdir = root.path().join("server");
    AgentServer::prepare(&sdir, &config(""));
    let server = AgentServer::start_in(&sdir, &Star::wrapper(&star.hub())).await;

    let mut agents = Vec::new();
    for i in 1..=2 {
        let token = server.token(&format!("host-{i}")).await;
        let addr = format!("{}:{PORT}", star.hub_ip(i)).parse().unwrap();
        let dir = root.path().join(format!("host-{i}"));
        let cfg = AgentConfig::new(TD, &[addr], &server.bundle())
            .join_token(&token)
            .write(&dir);
        let proc = node_agent::spawn_in(&cfg, &Star::wrapper(&star.host(i))).await;
        agents.push((proc, dir));
    }
    let socket = |i: usize| node_agent::workload_socket(&agents[i - 1].1);
    wait_served(&socket(1), &[WEB, LOG]).await;
    wait_served(&socket(2), &[DB, LOG]).await;
    let seen = server.proc().wait_for_log("agent sync stream opened").await;
    assert!(
        seen.contains(&star.host_ip(1)) || seen.contains(&star.host_ip(2)),
        "{seen}"
    );

    // Cut host 1 off for longer than a sync: its workloads keep their SVIDs.
    star.link(1, false);
    let host1 = &agents[0].0;
    host1.wait_for_log("server connection ended").await;
    wait_served(&socket(1), &[WEB, LOG]).await;
    let status = common::status_json(&node_agent::admin_socket(&agents[0].1)).await;
    assert!(status["agent"]["server"].is_null(), "{status}");

    // An entry for host 1 while it is cut off: host 2 is unaffected, host 1 gets it once back.
    server.reload(&config(&node_entry(API, "host-1"))).await;
    wait_served(&socket(2), &[DB, LOG]).await;
    star.link(1, true);
    let back = Instant::now();
    host1.wait_for_nth_log("agent connected", 1).await;
    wait_served(&socket(1), &[WEB, LOG, API]).await;
    println!(
        "link cut: host 1 back -> resynced and the entry added meanwhile served in {:?}",
        back.elapsed()
    );
}
