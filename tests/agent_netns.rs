//! Agents on hosts with their own addresses (root: network namespaces joined by veth pairs,
//! made and removed by the test; a skip note without root): the server in a hub namespace,
//! one agent per host. Each host's workloads get only that node's identities; a link cut
//! longer than a sync leaves the host's workloads their SVIDs; an entry added during the cut
//! arrives once the link is back (the time from link-up to the new SVID is printed); and
//! cross-node mTLS with the sidecar: host 1's workload calls host 2's through two
//! `meshtrust sidecar`s, each side authenticated by the SVID its own node's agent serves.
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
    cross_node_mtls(&star, &socket(1), &socket(2)).await;

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

/// `meshtrust sidecar ARGS` in namespace `ns`, its reports (stdout) in its log.
fn sidecar_in(ns: &str, args: &[&str]) -> common::daemon::Proc {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(common::bin())
        .arg("sidecar")
        .args(args);
    common::daemon::Proc::spawn_command(cmd, |c| {
        c.stdout(std::process::Stdio::piped());
    })
}

/// A Python one-liner in namespace `ns` (system Python: plain sockets only).
fn python_in(ns: &str, script: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "python3", "-c", script]);
    cmd
}

/// Host 1's workload (web) calls host 2's (db): web's outbound sidecar on host 1 expects db,
/// db's inbound sidecar on host 2 admits only web, and forwards to an echo service on host 2.
async fn cross_node_mtls(star: &Star, socket_1: &Path, socket_2: &Path) {
    use common::daemon::Proc;
    let echo = Proc::spawn_command(
        python_in(
            &star.host(2),
            "import socket,sys\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', 7000)); s.listen(8)\n\
         print('echo listening', file=sys.stderr, flush=True)\n\
         while True:\n\
         \tc, _ = s.accept(); d = b''\n\
         \twhile True:\n\
         \t\tb = c.recv(65536)\n\
         \t\tif not b: break\n\
         \t\td += b\n\
         \tc.sendall(d); c.close()\n",
        ),
        |_| {},
    );
    echo.wait_for_log("echo listening").await;
    let inbound_at = format!("{}:9443", star.host_ip(2));
    let inbound = sidecar_in(
        &star.host(2),
        &[
            "inbound",
            "--listen",
            &inbound_at,
            "--forward",
            "127.0.0.1:7000",
            "--workload-socket",
            socket_2.to_str().unwrap(),
            "--allow",
            WEB,
        ],
    );
    inbound.wait_for_log("listening on").await;
    let outbound = sidecar_in(
        &star.host(1),
        &[
            "outbound",
            "--listen",
            "127.0.0.1:9000",
            "--connect",
            &inbound_at,
            "--expect",
            DB,
            "--workload-socket",
            socket_1.to_str().unwrap(),
        ],
    );
    outbound.wait_for_log("listening on").await;
    let client = python_in(
        &star.host(1),
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', 9000), timeout=20)\n\
         s.sendall(b'hello from host 1'); s.shutdown(socket.SHUT_WR)\n\
         d = b''\n\
         while True:\n\
         \tb = s.recv(65536)\n\
         \tif not b: break\n\
         \td += b\n\
         print(d.decode())\n",
    );
    let out = common::guard(tokio::task::spawn_blocking(move || {
        let mut client = client;
        client.output().unwrap()
    }))
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from host 1",
        "{}\ninbound:\n{}\noutbound:\n{}",
        String::from_utf8_lossy(&out.stderr),
        inbound.log(),
        outbound.log()
    );
    let admitted = inbound.wait_for_log(WEB).await;
    println!("cross-node mTLS: {admitted}");
}
