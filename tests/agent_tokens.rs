//! `meshtrust token create` against a real server (CONTRACT.md "Added in wave 2": `token
//! create --node NAME [--ttl DUR] [--json]`, admin API `POST /v1/tokens`), and `[[entry]] node`:
//! an entry for a node is not served on the server's own Workload API socket.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::node_agent::node_entry;
use common::{cli_async, grpc};

#[tokio::test]
async fn a_token_is_printed_once_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("mesh-a.test").write(dir.path());
    let server = Proc::serve(&config).await;
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().unwrap();

    let out = cli_async(&[
        "token",
        "create",
        "--node",
        "web-1",
        "--ttl",
        "5m",
        "--json",
        "--admin-socket",
        socket,
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(body["node"], "web-1");
    let token = body["token"].as_str().unwrap();
    assert!(token.len() >= 43, "32 random bytes, base64url: {token}");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    // The plain form prints the token alone on stdout; --config finds the admin socket.
    let plain = cli_async(&[
        "token",
        "create",
        "--node",
        "web-2",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(plain.code, 0, "{plain:?}");
    let second = plain.stdout.trim();
    assert_ne!(second, token, "every token is new");
    assert!(plain.stderr.contains("web-2"), "{plain:?}");

    server.wait_for_log("join token created").await;
    let log = server.log();
    assert!(
        !log.contains(token) && !log.contains(second),
        "a token in the log: {log}"
    );
}

#[tokio::test]
async fn bad_node_names_and_ttls_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("mesh-a.test").write(dir.path());
    let _server = Proc::serve(&config).await;
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().unwrap();
    for (node, ttl, reason) in [
        ("a/b", "10m", "one SPIFFE ID path segment"),
        ("..", "10m", "one SPIFFE ID path segment"),
        ("web-1", "0s", "between 1s and 7 days"),
        ("web-1", "8d", "between 1s and 7 days"),
        ("web-1", "soon", "ttl"),
    ] {
        let out = cli_async(&[
            "token",
            "create",
            "--node",
            node,
            "--ttl",
            ttl,
            "--admin-socket",
            socket,
        ])
        .await;
        assert_eq!(out.code, 1, "{node} {ttl}: {out:?}");
        assert!(out.stderr.contains(reason), "{node} {ttl}: {out:?}");
        assert!(out.stdout.is_empty(), "no token printed: {out:?}");
    }
    let usage = cli_async(&["token", "create", "--node", "web-1"]).await;
    assert_eq!(usage.code, 64, "no socket or config: {usage:?}");
}

#[tokio::test]
async fn entries_for_nodes_are_not_served_on_the_servers_own_socket() {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("mesh-a.test")
        .section(&node_entry("spiffe://mesh-a.test/web", "web-1"))
        .section(&node_entry("spiffe://mesh-a.test/everywhere", "*"))
        .entry("spiffe://mesh-a.test/local", &[])
        .write(dir.path());
    let _server = Proc::serve(&config).await;
    let mut stream = grpc::x509_svids(&dir.path().join("workload.sock")).await;
    let first = grpc::next(&mut stream).await;
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://mesh-a.test/local"]);
}
