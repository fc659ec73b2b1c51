//! The `https_web` profile between two real daemons with the development PKI in `certs-dev/`
//! (issue 3 "Done when"): mesh-b serves its bundle with `certs-dev/mesh-b-endpoint.{pem,key}`
//! (SANs: DNS `mesh-b`, DNS `localhost`, IP `127.0.0.1`), mesh-a fetches it. Federation 1.5.6:
//! clients support both profiles; SPIFFE.md §2 "https_web": Web PKI roots and the RFC 6125
//! hostname check, never a fallback to another profile (Federation 1.5.7).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::config::DaemonConfig;
use common::daemon::{Proc, READY};
use common::{eventually, wait_for_peer};
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

/// Writes `config` as `<root>/<name>/meshtrust.toml` and starts a daemon on it.
async fn start(
    root: &Path,
    name: &str,
    config: DaemonConfig,
    listener: Option<TcpListener>,
) -> Daemon {
    let path = config.write(&root.join(name));
    let opts = DaemonOptions {
        bundle_listener: listener,
        ..Default::default()
    };
    Daemon::start_with(Config::load(&path).unwrap(), Arc::new(SystemClock), opts)
        .await
        .unwrap()
}

/// The `[bundle_endpoint]` of mesh-b: https_web on 127.0.0.1:`port` with the files given.
fn web_endpoint(port: u16, cert: &Path, key: &Path) -> String {
    format!(
        "[bundle_endpoint]\nlisten = \"127.0.0.1:{port}\"\nprofile = \"https_web\"\ncert_file = {:?}\nkey_file = {:?}\nrefresh_hint = \"1s\"\n",
        cert.display().to_string(),
        key.display().to_string(),
    )
}

/// mesh-b with an https_web bundle endpoint on 127.0.0.1:0 presenting the dev certificate.
async fn start_mesh_b(root: &Path) -> (Daemon, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = DaemonConfig::new("mesh-b.test").section(&web_endpoint(
        port,
        &certs_dev("mesh-b-endpoint.pem"),
        &certs_dev("mesh-b-endpoint.key"),
    ));
    (start(root, "mesh-b", config, Some(listener)).await, port)
}

/// mesh-a's config fetching mesh-b over https_web from `url`, trusting `ca_file`, or the
/// system roots without one.
fn mesh_a_config(url: &str, ca_file: Option<&Path>) -> DaemonConfig {
    let ca_file = ca_file.map_or(String::new(), |f| {
        format!("ca_file = {:?}\n", f.display().to_string())
    });
    DaemonConfig::new("mesh-a.test").section(&format!(
        "[[federation]]\ntrust_domain = \"mesh-b.test\"\nbundle_endpoint_url = \"{url}\"\nprofile = \"https_web\"\n{ca_file}"
    ))
}

/// A mesh-a (its own data dir under `root/name`) fetching mesh-b over https_web from `url`.
async fn start_mesh_a(root: &Path, name: &str, url: &str, ca_file: Option<&Path>) -> Daemon {
    start(root, name, mesh_a_config(url, ca_file), None).await
}

/// Waits for the first fetch to finish either way, then returns the status.
async fn first_outcome(d: &Daemon) -> PeerStatus {
    eventually("the first fetch of mesh-b finishes", || {
        d.status
            .get(&mesh_b_td())
            .is_some_and(|s| s.state.as_str() != "never_fetched")
    })
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
    let config = mesh_a_config(&format!("https://localhost:{port}/"), None).write(&dir);
    let missing = root.path().join("no-such-roots");
    let daemon = Proc::spawn_with(&["serve", "--config", config.to_str().unwrap()], |c| {
        c.env("SSL_CERT_FILE", missing.join("ca.pem"))
            .env("SSL_CERT_DIR", &missing);
    });
    daemon.wait_for_log(READY).await;
    let failing = wait_for_peer(
        &dir.join("admin.sock"),
        "mesh-b.test",
        "a failing status",
        |p| p["state"] == "failing",
    )
    .await;
    let got = serde_json::json!({ "federation": [failing] });
    let error = got["federation"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("no system root certificates"), "{error}");
    assert_eq!(daemon.stop().code(), Some(0), "it ran to a graceful stop");
    db.shutdown().await;
}
