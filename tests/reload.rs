//! `SIGHUP` to a running `meshtrust serve` (the real binary) applies the registration entries and
//! the `[[federation]]` relationships (CONTRACT.md "Commands"): a workload gains its identity
//! without a restart, a peer is added, changed (its fetcher restarts) and removed while a
//! workload's stream stays open, a broken config changes nothing, and the daemon keeps serving.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::grpc::{next, x509_bundles};
use common::http::{parse_x509_bundles, workload_get};
use common::mesh::Mesh;
use common::{cli_async, eventually_blocking, status_json, wait_for_peer};

#[test]
fn sighup_applies_new_entries_and_a_broken_config_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("workload.sock");
    let base = DaemonConfig::new("mesh-a.test");
    let config = base.write(dir.path());
    let daemon = Proc::serve_blocking(&config);
    // No entry for us yet: 403 (Workload Endpoint: no identity = PermissionDenied).
    assert_eq!(workload_get(&socket, "/v1/x509-svid").status, 403);

    base.clone()
        .entry("spiffe://mesh-a.test/reloaded", &[])
        .write(dir.path());
    daemon.signal("HUP");
    eventually_blocking("the new entry is served", || {
        let reply = workload_get(&socket, "/v1/x509-svid");
        reply.status == 200 && reply.body.contains("spiffe://mesh-a.test/reloaded")
    });

    // A broken config (an unknown key) is refused: the daemon keeps serving the last good one.
    std::fs::write(&config, "trust_domain = \"mesh-a.test\"\nbogus = 1\n").unwrap();
    daemon.signal("HUP");
    let refused = daemon.wait_for_log_blocking("config reload refused");
    assert!(
        refused.contains("bogus"),
        "the log names the key at fault: {refused}"
    );
    let reply = workload_get(&socket, "/v1/x509-svid");
    assert_eq!(
        reply.status, 200,
        "still serving after a broken reload: {reply:?}"
    );
    assert!(reply.body.contains("spiffe://mesh-a.test/reloaded"));

    base.write(dir.path());
    daemon.signal("HUP");
    daemon.wait_for_nth_log_blocking("config reloaded", 1);
    let reply = workload_get(&socket, "/v1/x509-svid");
    assert_eq!(
        reply.status, 403,
        "the removed entry is no longer served: {reply:?}"
    );
    assert_eq!(daemon.stop().code(), Some(0));
}

/// A `[[federation]]` peer added by a SIGHUP starts fetching; changed by the next one (its URL),
/// its fetcher restarts on the new URL and its bundle reaches the workload's open stream;
/// removed, its fetcher stops and its bundle leaves the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_changes_and_removes_a_federation_relationship_under_an_open_stream() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut b = Mesh::alone(root.path(), "mesh-b").await;
    let db = b.start().await;
    let b_certs = db.ca.snapshot().bundle.x509_authorities.clone();
    let a_dir = root.path().join("mesh-a");
    let base = DaemonConfig::new("mesh-a.test").entry("spiffe://mesh-a.test/w", &["*"]);
    let config = base.write(&a_dir);
    b.write_bootstrap_into(&a_dir);
    let (admin, workload) = (a_dir.join("admin.sock"), a_dir.join("workload.sock"));
    let daemon = Proc::serve(&config).await;
    let mut stream = x509_bundles(&workload).await;
    let first = next(&mut stream).await;
    assert_eq!(
        first.bundles.keys().collect::<Vec<_>>(),
        ["spiffe://mesh-a.test"]
    );

    // Added, at a URL that refuses connections: the fetcher runs and fails.
    let refused = common::refused_url();
    base.clone()
        .peer("mesh-b.test", &refused, None, true)
        .write(&a_dir);
    daemon.signal("HUP");
    let line = daemon
        .wait_for_log("federation relationships updated")
        .await;
    assert!(line.contains("mesh-b.test"), "{line}");
    let failing = wait_for_peer(
        &admin,
        "mesh-b.test",
        "the fetch to a refusing URL fails",
        |p| p["state"] == "failing",
    )
    .await;
    assert_eq!(failing["url"], refused);
    assert!(
        failing["last_error"].as_str().unwrap().contains("connect"),
        "{failing}"
    );

    // Changed to mesh-b's real URL: the fetcher restarts on it and pins mesh-b's bundle, which
    // the open stream receives.
    base.clone()
        .peer("mesh-b.test", &b.url(), None, true)
        .write(&a_dir);
    daemon.signal("HUP");
    daemon
        .wait_for_nth_log("federation relationships updated", 1)
        .await;
    let ok = wait_for_peer(&admin, "mesh-b.test", "mesh-a pins mesh-b", |p| {
        p["state"] == "ok"
    })
    .await;
    assert_eq!(ok["url"], b.url());
    let pinned = loop {
        let m = next(&mut stream).await;
        if m.bundles.contains_key("spiffe://mesh-b.test") {
            break m;
        }
    };
    let b_der: Vec<u8> = b_certs.iter().flat_map(|c| c.to_vec()).collect();
    assert_eq!(pinned.bundles["spiffe://mesh-b.test"], b_der);
    let served = parse_x509_bundles(&workload_get(&workload, "/v1/x509-bundles"));
    assert_eq!(served["spiffe://mesh-b.test"], b_certs);
    let admin_arg = admin.to_str().unwrap();
    let refresh = [
        "federation",
        "refresh",
        "mesh-b.test",
        "--admin-socket",
        admin_arg,
    ];
    let out = cli_async(&refresh).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("mesh-b.test: ok"), "{}", out.stdout);

    // Removed: no fetcher, no status, and the same stream gets mesh-b's bundle withdrawn.
    base.write(&a_dir);
    daemon.signal("HUP");
    daemon
        .wait_for_nth_log("federation relationships updated", 2)
        .await;
    loop {
        let m = next(&mut stream).await;
        assert!(
            m.bundles.contains_key("spiffe://mesh-a.test"),
            "our own stays"
        );
        if !m.bundles.contains_key("spiffe://mesh-b.test") {
            break;
        }
    }
    let status = status_json(&admin).await;
    assert_eq!(status["federation"], serde_json::json!([]), "{status}");
    let served = parse_x509_bundles(&workload_get(&workload, "/v1/x509-bundles"));
    assert!(!served.contains_key("spiffe://mesh-b.test"), "{served:?}");
    let out = cli_async(&refresh).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("mesh-b.test is not a federation peer"),
        "{}",
        out.stderr
    );
    // Every change above applied live: none was deferred to a restart.
    assert_eq!(
        daemon.count("apply only after a restart"),
        0,
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.stop().code(), Some(0));
    db.shutdown().await;
}
