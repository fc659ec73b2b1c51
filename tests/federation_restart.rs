//! `kill -9` and restart of the real binary keeps every pinned peer bundle, and serves it to
//! workloads before the peer answers (issue 3 "Done when"; CONTRACT.md "Files": restarting on
//! the same data_dir keeps every pinned peer bundle; Federation 1.5.4: the stored bundle stays
//! current until the next successful refresh).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::http::x509_bundles;
use common::mesh::Mesh;
use common::wait_for_peer;

/// mesh-a's config: no bundle endpoint of its own, one https_spiffe peer (mesh-b on `port`),
/// and an entry for this test's uid that federates with mesh-b.
fn write_mesh_a_config(dir: &Path, port: u16) -> PathBuf {
    DaemonConfig::new("mesh-a.test")
        .peer(
            "mesh-b.test",
            &format!("https://127.0.0.1:{port}/"),
            None,
            true,
        )
        .entry("spiffe://mesh-a.test/restart-test", &["mesh-b.test"])
        .write(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_the_pinned_bundle_and_serves_it_before_the_peer_answers() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut b = Mesh::alone(root.path(), "mesh-b").await;
    let a_dir = root.path().join("mesh-a");
    let config = write_mesh_a_config(&a_dir, b.port);
    let bootstrap = b.write_bootstrap_into(&a_dir);
    let (admin, workload) = (a_dir.join("admin.sock"), a_dir.join("workload.sock"));
    let db = b.start().await;
    let mesh_b_certs = db.ca.snapshot().bundle.x509_authorities.clone();

    let a = Proc::serve(&config).await;
    let pinned = wait_for_peer(&admin, "mesh-b.test", "mesh-a pins mesh-b", |p| {
        p["state"] == "ok"
    })
    .await;
    let before = x509_bundles(&workload).await;
    let ids: Vec<_> = before.keys().map(String::as_str).collect();
    assert_eq!(ids, ["spiffe://mesh-a.test", "spiffe://mesh-b.test"]);
    assert_eq!(
        before["spiffe://mesh-b.test"], mesh_b_certs,
        "the pinned bundle is mesh-b's"
    );

    // The peer goes away, then mesh-a dies without any cleanup and comes back. The bootstrap
    // bundle goes too (it is only needed until a bundle is pinned): whatever mesh-a serves of
    // mesh-b after the restart can only come from its pinned state.
    db.shutdown().await;
    a.kill_9();
    std::fs::remove_file(bootstrap).unwrap();
    let _a = Proc::serve(&config).await;

    // Nothing can have been fetched since (mesh-b is down): what is served comes from the state.
    assert_eq!(
        x509_bundles(&workload).await,
        before,
        "the same own and pinned peer certificates right after the restart"
    );
    let failing = wait_for_peer(
        &admin,
        "mesh-b.test",
        "the fetch to the dead peer fails",
        |p| p["state"] == "failing",
    )
    .await;
    // (Not asserted to be "connect": mesh-b's released port may be taken by another test.)
    let error = failing["last_error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "mesh-b is down: {failing}");
    // The stored fetch time survives the restart: the bundle's age stays visible.
    // (Fetches between the first "ok" and the kill may have refreshed it: not older, then.)
    let (after, first) = (
        failing["last_success"].as_str().expect("last_success kept"),
        pinned["last_success"].as_str().unwrap(),
    );
    assert!(
        after >= first,
        "{after} < {first} (RFC 3339 UTC compares as text)"
    );
    assert_eq!(failing["sequence"], pinned["sequence"]);
    assert_eq!(failing["authorities"], pinned["authorities"]);
    assert_eq!(
        x509_bundles(&workload).await,
        before,
        "a failure keeps the last good bundle"
    );
}
