//! Issue 9 item 5, with the real binaries: a peer whose last good fetch was up to `ca_ttl/2` ago
//! still authenticates our bundle endpoint after a CA activation, and catches up by itself.
//!
//! mesh-a rotates fast (`ca_ttl = "30s"`: next CA published at 15 s, signing at 25 s, old CA
//! expired at 30 s). mesh-b pins mesh-a's bundle (one CA), is stopped about 11 s into mesh-a's
//! CA life and restarted once mesh-a's new CA signs (25 s): down for about 15 s across the
//! activation, holding only the old CA. Its first fetch must succeed (the endpoint still presents
//! an SVID chaining to the old CA, still published) and pin both CAs; after the old CA expires
//! the endpoint moves to the new one, which mesh-b now holds. SPIRE strands such a peer.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;
use std::time::Duration;

use common::config::DaemonConfig;
use common::daemon::Proc;

/// mesh-a's pinned authorities as mesh-b's `meshtrust status` shows them.
async fn pinned_authorities(admin: &Path) -> usize {
    let status = common::status_json(admin).await;
    let peer = common::peer_status(&status, "mesh-a.test");
    peer["authorities"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_for_half_a_ca_lifetime_across_an_activation_catches_up_by_itself() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let a_config = DaemonConfig::plain("mesh-a.test")
        .ca("ca_ttl = \"30s\"\nx509_svid_ttl = \"5s\"\njwt_svid_ttl = \"5s\"")
        .bundle_endpoint(0, "1s")
        .write(&root.path().join("a"));
    // `bundle show` creates mesh-a's first CA now: its 30 s life starts here.
    let created = tokio::time::Instant::now();
    let shown = common::cli(&["bundle", "show", "--config", a_config.to_str().unwrap()]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let b_dir = root.path().join("b");
    std::fs::create_dir_all(b_dir.join("peers")).unwrap();
    std::fs::write(b_dir.join("peers/mesh-a.test.json"), &shown.stdout).unwrap();
    let a = Proc::serve(&a_config).await;
    let a_addr = a.logged_addr("bundle endpoint listening").await;

    // mesh-b polls mesh-a every second (DaemonConfig's 1 s refresh floor).
    let b_config = DaemonConfig::new("mesh-b.test")
        .peer("mesh-a.test", &format!("https://{a_addr}/"), None, true)
        .write(&b_dir);
    let b_admin = root.path().join("b/admin.sock");
    let b = Proc::serve(&b_config).await;
    b.wait_for_log("peer bundle fetched and pinned").await;

    // mesh-b polls every second until about 11 s into mesh-a's CA life, then goes down, holding
    // only mesh-a's first CA (the next one is published at 15 s).
    tokio::time::sleep_until(created + Duration::from_secs(11)).await;
    assert_eq!(
        pinned_authorities(&b_admin).await,
        1,
        "mesh-b holds only the first CA"
    );
    assert!(b.stop().success());

    // mesh-a activates its next CA (25 s); mesh-b comes back (about 15 s after its last fetch).
    let retired = a.wait_for_log("Retire").await;
    assert!(retired.contains("ca rotation step"), "{retired}");
    let b = Proc::serve(&b_config).await;
    let first = b.wait_for_log("peer bundle f").await;
    assert!(
        first.contains("peer bundle fetched and pinned") && first.contains("x509_authorities=2"),
        "mesh-b's first fetch after the activation must authenticate the endpoint and pin both CAs:\n{}",
        b.log()
    );

    // The old CA expires (30 s): the endpoint moves to the new CA, which mesh-b holds, and
    // mesh-b keeps following mesh-a's bundle with no operator step.
    a.wait_for_log("Prune").await;
    let fetched_before = b.count("peer bundle fetched");
    // Three more fetches (the hang guard's panic carries mesh-b's log).
    b.wait_for_nth_log("peer bundle fetched", fetched_before + 2)
        .await;
    assert_eq!(b.count("peer bundle fetch failed"), 0, "{}", b.log());
    let svids = a.log();
    let issued = svids
        .lines()
        .filter(|l| l.contains("bundle endpoint svid issued"))
        .count();
    // Renewed at half of what is left, and at each switch: a handful over 35 s, not a loop.
    assert!(issued < 30, "{issued} endpoint svids issued:\n{svids}");
    assert!(
        svids.lines().any(
            |l| l.contains("bundle endpoint svid issued") && l.contains("ca_state=\"retired\"")
        ),
        "the endpoint signed with the retired CA between activation and expiry:\n{svids}"
    );
}
