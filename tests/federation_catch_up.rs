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

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Proc;
use serde_json::Value;

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// The value of `key=` in a text log line.
fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        + key.len()
        + 2;
    line[start..].split_whitespace().next().unwrap().to_owned()
}

/// mesh-a's pinned authorities as mesh-b's `meshtrust status` shows them.
fn pinned_authorities(admin: &Path) -> usize {
    let out = std::process::Command::new(common::bin())
        .args([
            "status",
            "--json",
            "--admin-socket",
            admin.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let peer = status["federation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["trust_domain"] == "mesh-a.test")
        .unwrap()
        .clone();
    peer["authorities"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_for_half_a_ca_lifetime_across_an_activation_catches_up_by_itself() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let a_config = write(
        &root.path().join("a/meshtrust.toml"),
        r#"trust_domain = "mesh-a.test"
data_dir = "data"
[ca]
ca_ttl = "30s"
x509_svid_ttl = "5s"
jwt_svid_ttl = "5s"
[bundle_endpoint]
listen = "127.0.0.1:0"
refresh_hint = "1s"
[workload_api]
socket = "workload.sock"
[admin_api]
socket = "admin.sock"
"#,
    );
    // `bundle show` creates mesh-a's first CA now: its 30 s life starts here.
    let created = tokio::time::Instant::now();
    let shown = std::process::Command::new(common::bin())
        .args(["bundle", "show", "--config", a_config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(shown.status.success());
    write(
        &root.path().join("b/peers/mesh-a.test.json"),
        &String::from_utf8(shown.stdout).unwrap(),
    );
    let a = Proc::serve(&a_config).await;
    let listening = a.wait_for_log("bundle endpoint listening").await;
    let a_addr = field(&listening, "addr");

    let b_config = write(
        &root.path().join("b/meshtrust.toml"),
        &format!(
            r#"trust_domain = "mesh-b.test"
data_dir = "data"
federation_min_refresh_interval = "1s"
[workload_api]
socket = "workload.sock"
[admin_api]
socket = "admin.sock"
[[federation]]
trust_domain = "mesh-a.test"
bundle_endpoint_url = "https://{a_addr}/"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://mesh-a.test/meshtrust/server"
bootstrap_bundle = "peers/mesh-a.test.json"
"#
        ),
    );
    let b_admin = root.path().join("b/admin.sock");
    let b = Proc::serve(&b_config).await;
    b.wait_for_log("peer bundle fetched and pinned").await;

    // mesh-b polls every second until about 11 s into mesh-a's CA life, then goes down, holding
    // only mesh-a's first CA (the next one is published at 15 s).
    tokio::time::sleep_until(created + Duration::from_secs(11)).await;
    assert_eq!(
        pinned_authorities(&b_admin),
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
    let deadline = tokio::time::Instant::now() + common::daemon::GUARD;
    while b.count("peer bundle fetched") < fetched_before + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hang guard:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
