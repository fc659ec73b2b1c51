//! `kill -9` and restart of the real binary keeps every pinned peer bundle, and serves it to
//! workloads before the peer answers (issue 3 "Done when"; CONTRACT.md "Files": restarting on
//! the same data_dir keeps every pinned peer bundle; Federation 1.5.4: the stored bundle stays
//! current until the next successful refresh).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::mesh::Mesh;
use meshtrust::bundle::pem::parse_certs_pem;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Hang guard for every wait below (never a timing assertion).
const GUARD: Duration = Duration::from_secs(30);

/// `meshtrust serve` as a child process, killed (SIGKILL) if the test ends early.
struct Serve(Child);

impl Serve {
    /// Starts the daemon and waits for its "meshtrust ready" log line.
    async fn start(config: &Path) -> Self {
        let mut child = Command::new(common::bin())
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::time::timeout(GUARD, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line.contains("meshtrust ready") => break,
                    Ok(Some(_)) => {}
                    _ => panic!("the daemon exited before it was ready"),
                }
            }
        })
        .await
        .expect("hang guard: the daemon never became ready");
        // Keep draining stderr so the daemon never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self(child)
    }

    /// `kill -9`: no chance to flush or clean up anything.
    async fn kill_9(mut self) {
        self.0.kill().await.unwrap();
    }
}

async fn output(program: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(GUARD, Command::new(program).args(args).output())
        .await
        .expect("hang guard")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// mesh-b's entry in `meshtrust status --json`.
async fn peer_status(admin: &Path) -> Value {
    let (ok, out, err) = output(
        &common::bin(),
        &[
            "status",
            "--json",
            "--admin-socket",
            admin.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    status["federation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["trust_domain"] == "mesh-b.test")
        .cloned()
        .unwrap()
}

/// Polls mesh-b's status every 100 ms until `f` holds (hang guard: [`GUARD`]).
async fn wait_for_peer(admin: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let status = peer_status(admin).await;
        if f(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The X.509 bundles a workload gets from the JSON view of the Workload API socket, by trust
/// domain ID, as DER.
async fn served_bundles(workload_socket: &Path) -> Vec<(String, Vec<CertificateDer<'static>>)> {
    let (ok, out, err) = output(
        Path::new("curl"),
        &[
            "-sS",
            "--fail-with-body",
            "--unix-socket",
            workload_socket.to_str().unwrap(),
            "-H",
            "workload.spiffe.io: true",
            "http://localhost/v1/x509-bundles",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let mut bundles: Vec<_> = doc["bundles"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(td, pem)| {
            let certs = parse_certs_pem(pem.as_str().unwrap().as_bytes()).unwrap();
            (td.clone(), certs)
        })
        .collect();
    bundles.sort_by(|a, b| a.0.cmp(&b.0));
    bundles
}

/// mesh-a's config: no bundle endpoint of its own, one https_spiffe peer (mesh-b on `port`),
/// and an entry for this test's uid that federates with mesh-b.
fn write_mesh_a_config(dir: &Path, port: u16) -> PathBuf {
    // What attestation will see for the curl children: this process's uid.
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let path = dir.join("meshtrust.toml");
    let text = format!(
        r#"trust_domain = "mesh-a.test"
data_dir = "data"
[workload_api]
socket = "workload.sock"
[admin_api]
socket = "admin.sock"
[[federation]]
trust_domain = "mesh-b.test"
bundle_endpoint_url = "https://127.0.0.1:{port}/"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://mesh-b.test/meshtrust/server"
bootstrap_bundle = "peers/mesh-b.test.json"
[[entry]]
spiffe_id = "spiffe://mesh-a.test/restart-test"
selectors = ["unix:uid:{uid}"]
federates_with = ["mesh-b.test"]
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_the_pinned_bundle_and_serves_it_before_the_peer_answers() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut b = Mesh::new(root.path(), "mesh-b").await;
    b.write_config("", "1s", None, "");
    let a_dir = root.path().join("mesh-a");
    std::fs::create_dir_all(a_dir.join("peers")).unwrap();
    std::fs::write(
        a_dir.join("peers").join("mesh-b.test.json"),
        meshtrust::app::init_state(&b.config()).unwrap(),
    )
    .unwrap();
    let config = write_mesh_a_config(&a_dir, b.port);
    let (admin, workload) = (a_dir.join("admin.sock"), a_dir.join("workload.sock"));
    let db = b.start().await;
    let mesh_b_certs = db.ca.snapshot().bundle.x509_authorities.clone();

    let a = Serve::start(&config).await;
    let pinned = wait_for_peer(&admin, "mesh-a pins mesh-b", |p| p["state"] == "ok").await;
    let before = served_bundles(&workload).await;
    let ids: Vec<_> = before.iter().map(|(td, _)| td.as_str()).collect();
    assert_eq!(ids, ["spiffe://mesh-a.test", "spiffe://mesh-b.test"]);
    assert_eq!(before[1].1, mesh_b_certs, "the pinned bundle is mesh-b's");

    // The peer goes away, then mesh-a dies without any cleanup and comes back. The bootstrap
    // bundle goes too (it is only needed until a bundle is pinned): whatever mesh-a serves of
    // mesh-b after the restart can only come from its pinned state.
    db.shutdown().await;
    a.kill_9().await;
    std::fs::remove_file(a_dir.join("peers").join("mesh-b.test.json")).unwrap();
    let _a = Serve::start(&config).await;

    // Nothing can have been fetched since (mesh-b is down): what is served comes from the state.
    assert_eq!(
        served_bundles(&workload).await,
        before,
        "the same own and pinned peer certificates right after the restart"
    );
    let failing = wait_for_peer(&admin, "the fetch to the dead peer fails", |p| {
        p["state"] == "failing"
    })
    .await;
    assert!(failing["last_error"].is_string(), "{failing}");
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
        served_bundles(&workload).await,
        before,
        "a failure keeps the last good bundle"
    );
}
