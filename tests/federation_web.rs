//! The `https_web` profile between two real daemons with the development PKI in `certs-dev/`
//! (issue 3 "Done when"): mesh-b serves its bundle with `certs-dev/mesh-b-endpoint.{pem,key}`
//! (SANs: DNS `mesh-b`, DNS `localhost`, IP `127.0.0.1`), mesh-a fetches it. Federation 1.5.6:
//! clients support both profiles; SPIFFE.md §2 "https_web": Web PKI roots and the RFC 6125
//! hostname check, never a fallback to another profile (Federation 1.5.7).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use meshtrust::app::{Daemon, DaemonOptions};
use meshtrust::clock::SystemClock;
use meshtrust::config::Config;
use meshtrust::federation::status::PeerStatus;
use meshtrust::spiffe_id::TrustDomain;
use tokio::net::TcpListener;

fn certs_dev(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs-dev")
        .join(name)
}

fn mesh_b_td() -> TrustDomain {
    TrustDomain::new("mesh-b.test").unwrap()
}

/// Writes `text` as `<root>/<name>/meshtrust.toml` and starts a daemon on it.
async fn start(root: &Path, name: &str, text: &str, listener: Option<TcpListener>) -> Daemon {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("meshtrust.toml");
    std::fs::write(&path, text).unwrap();
    let opts = DaemonOptions {
        bundle_listener: listener,
        ..Default::default()
    };
    Daemon::start_with(Config::load(&path).unwrap(), Arc::new(SystemClock), opts)
        .await
        .unwrap()
}

/// mesh-b with an https_web bundle endpoint on 127.0.0.1:0 presenting the dev certificate.
async fn start_mesh_b(root: &Path) -> (Daemon, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = format!(
        r#"trust_domain = "mesh-b.test"
data_dir = "data"
[bundle_endpoint]
listen = "127.0.0.1:{port}"
profile = "https_web"
cert_file = {cert:?}
key_file = {key:?}
refresh_hint = "1s"
[workload_api]
socket = "workload.sock"
[admin_api]
socket = "admin.sock"
"#,
        cert = certs_dev("mesh-b-endpoint.pem").display().to_string(),
        key = certs_dev("mesh-b-endpoint.key").display().to_string(),
    );
    (start(root, "mesh-b", &text, Some(listener)).await, port)
}

/// A mesh-a (its own data dir under `root/name`) fetching mesh-b over https_web from `url`,
/// trusting `ca_file`, or the system roots without one.
async fn start_mesh_a(root: &Path, name: &str, url: &str, ca_file: Option<&Path>) -> Daemon {
    let ca_file = ca_file.map_or(String::new(), |f| {
        format!("ca_file = {:?}\n", f.display().to_string())
    });
    let text = format!(
        r#"trust_domain = "mesh-a.test"
data_dir = "data"
[workload_api]
socket = "workload.sock"
[admin_api]
socket = "admin.sock"
[[federation]]
trust_domain = "mesh-b.test"
bundle_endpoint_url = "{url}"
profile = "https_web"
{ca_file}"#
    );
    start(root, name, &text, None).await
}

/// Waits for the first fetch to finish either way, then returns the status.
async fn first_outcome(d: &Daemon) -> PeerStatus {
    eventually(
        "the first fetch of mesh-b finishes",
        || {
            d.status
                .get(&mesh_b_td())
                .is_some_and(|s| s.state.as_str() != "never_fetched")
        },
    )
    .await;
    d.status.get(&mesh_b_td()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_web_with_the_dev_root_pins_and_a_wrong_host_or_unknown_root_fails() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let (db, port) = start_mesh_b(root.path()).await;
    let dev_root = certs_dev("dev-root.pem");

    // `localhost` is a SAN of the dev certificate and resolves to 127.0.0.1: pinned.
    let url = format!("https://localhost:{port}/");
    let good = start_mesh_a(root.path(), "mesh-a-good", &url, Some(&dev_root)).await;
    let status = first_outcome(&good).await;
    assert_eq!(status.state.as_str(), "ok", "{:?}", status.last_error);
    assert_eq!(status.profile, "https_web");
    let pinned = good.peers.get(&mesh_b_td()).unwrap();
    assert!(pinned.same_authorities(&db.ca.snapshot().bundle));
    assert_eq!(pinned.trust_domain, mesh_b_td(), "the configured name");

    // A host that is not in the SAN: the certificate names `mesh-b`, `localhost` and
    // `127.0.0.1`, so the wrong name must still reach 127.0.0.1 without a resolver entry.
    // `0.0.0.0` does on Linux (a connect to the unspecified address goes to the loopback), and it
    // is in no SAN. Same endpoint, same root: only the name check can refuse it.
    let url = format!("https://0.0.0.0:{port}/");
    let wrong_host = start_mesh_a(root.path(), "mesh-a-wrong-host", &url, Some(&dev_root)).await;
    let status = first_outcome(&wrong_host).await;
    assert_failed_tls(&wrong_host, &status, "not valid for name");

    // No ca_file: the system roots, which do not hold the dev root. (.ci/run installs Debian's
    // ca-certificates; without any system root the reason differs, see the next test.)
    let url = format!("https://localhost:{port}/");
    let system_roots = start_mesh_a(root.path(), "mesh-a-system-roots", &url, None).await;
    let status = first_outcome(&system_roots).await;
    assert_failed_tls(&system_roots, &status, "UnknownIssuer");

    for d in [good, wrong_host, system_roots, db] {
        d.shutdown().await;
    }
}

/// A TLS failure whose message contains `reason`, shown as `failing`, with nothing pinned.
fn assert_failed_tls(d: &Daemon, status: &PeerStatus, reason: &str) {
    assert_eq!(status.state.as_str(), "failing");
    let error = status.last_error.clone().unwrap();
    assert!(error.contains(reason), "{error}");
    assert!(
        status.fetches.get("tls").is_some_and(|n| *n >= 1),
        "a TLS failure: {:?}",
        status.fetches
    );
    assert!(status.last_success.is_none());
    assert!(d.peers.get(&mesh_b_td()).is_none(), "nothing pinned");
}

/// Without any system root certificate (no ca-certificates package, a bad `SSL_CERT_FILE`),
/// an `https_web` peer without `ca_file` cannot be verified: the daemon still starts and serves,
/// and that peer shows as `failing` with the reason (the real binary, since the roots come
/// from the process environment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_system_roots_the_daemon_starts_and_the_web_peer_fails_with_the_reason() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let (db, port) = start_mesh_b(root.path()).await;
    let dir = root.path().join("mesh-a");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("meshtrust.toml");
    std::fs::write(
        &config,
        format!(
            r#"trust_domain = "mesh-a.test"
data_dir = "data"
[workload_api]
socket = "workload.sock"
[admin_api]
socket = "admin.sock"
[[federation]]
trust_domain = "mesh-b.test"
bundle_endpoint_url = "https://localhost:{port}/"
profile = "https_web"
"#
        ),
    )
    .unwrap();
    let missing = root.path().join("no-such-roots");
    let mut child = std::process::Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("SSL_CERT_FILE", missing.join("ca.pem"))
        .env("SSL_CERT_DIR", &missing)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let admin = dir.join("admin.sock");
    let status = || -> Option<serde_json::Value> {
        let out = std::process::Command::new(common::bin())
            .args(["status", "--json", "--admin-socket"])
            .arg(&admin)
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["federation"][0]["state"] == "failing").then_some(v)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited instead of running without roots"
        );
        if let Some(v) = status() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no failing status");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = got["federation"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("no system root certificates"), "{error}");
    let _ = child.kill();
    let _ = child.wait();
    db.shutdown().await;
}
