//! The bundle endpoint's https_web profile over real TLS on 127.0.0.1 (SPIFFE.md §2
//! "Serving": a certificate with the DNS name in its SAN, validated per RFC 6125): the files are
//! served, reloaded when they change, and a bad new file leaves the previous certificate in
//! place (CONTRACT.md "Bundle endpoint (HTTPS)").

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
mod endpoint_client;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::config::DaemonConfig;
use common::daemon::Proc;
use endpoint_client::{eventually, get, web_client};
use meshtrust::clock::SystemClock;
use meshtrust::config::EndpointProfile;
use meshtrust::federation::endpoint;
use meshtrust::federation::server_tls::ServerTlsError;
use meshtrust::federation::server_tls::{ServerCerts, load_web_files, reload_web_files};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

/// A development root that signs `localhost` server certificates.
struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn root(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `localhost` and its key: (leaf DER, chain PEM leaf+root, PKCS#8 key PEM).
    fn leaf(&self) -> (CertificateDer<'static>, String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = format!("{}{}", cert.pem(), self.issuer.pem());
        (cert.der().clone(), chain, key.serialize_pem())
    }
}

/// The same key as SEC1 `BEGIN EC PRIVATE KEY`, converted by openssl.
fn to_sec1(dir: &Path, pkcs8_pem: &str) -> String {
    let input = dir.join("pkcs8.pem");
    std::fs::write(&input, pkcs8_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["ec", "-in"])
        .arg(&input)
        .output()
        .unwrap();
    let pem = String::from_utf8(out.stdout).unwrap();
    assert!(pem.contains("BEGIN EC PRIVATE KEY"), "{pem}");
    pem
}

async fn served_leaf(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Option<CertificateDer<'static>> {
    get(addr, cfg, "localhost")
        .await
        .ok()
        .map(|(c, _)| c.leaf.clone())
}

/// Waits (under the hang guard) until the endpoint at `addr` presents `leaf`.
async fn until_served(
    what: &str,
    addr: std::net::SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    leaf: &CertificateDer<'static>,
) {
    eventually(what, || {
        let (cfg, leaf) = (cfg.clone(), leaf.clone());
        async move { served_leaf(addr, cfg).await.filter(|l| *l == leaf) }
    })
    .await;
}

#[tokio::test]
async fn https_web_serves_the_files_reloads_them_and_keeps_the_old_cert_on_a_bad_file() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let ca = common::workload::open_ca(
        common::workload::storage(&dir.path().join("state")),
        "mesh-a.test",
        Arc::new(SystemClock),
        common::workload::HOUR,
    );

    let dev = DevCa::new();
    let (leaf1, chain1, key1) = dev.leaf();
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    std::fs::write(&cert_file, &chain1).unwrap();
    std::fs::write(&key_file, &key1).unwrap();

    // The daemon's way in: files checked at start.
    let profile = EndpointProfile::HttpsWeb {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
    };
    let cancel = CancellationToken::new();
    let (certs, _task) = ServerCerts::start(
        &profile,
        ca.subscribe(),
        Arc::new(SystemClock),
        cancel.clone(),
    )
    .unwrap();
    let bad = EndpointProfile::HttpsWeb {
        cert_file: key_file.clone(),
        key_file: key_file.clone(),
    };
    let Err(err) = ServerCerts::start(&bad, ca.subscribe(), Arc::new(SystemClock), cancel.clone())
    else {
        panic!("a key file as certificate file was accepted");
    };
    assert!(matches!(err, ServerTlsError::Pem { .. }), "{err}");

    tokio::spawn(reload_web_files(
        certs.clone(),
        cert_file.clone(),
        key_file.clone(),
        Duration::from_millis(100),
        cancel.clone(),
    ));
    let listener = meshtrust::listen::tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(endpoint::serve(
        listener,
        ca.subscribe(),
        certs.clone(),
        cancel.clone(),
    ));

    // RFC 6125: a client trusting the dev root, checking the name `localhost`.
    let client = web_client(&[dev.root()], &[b"h2", b"http/1.1"]);
    let (conn, answer) = get(addr, client.clone(), "localhost").await.unwrap();
    assert_eq!(conn.leaf, leaf1);
    assert_eq!(answer.body, ca.snapshot().bundle_json);
    assert_eq!(answer.headers["content-type"], "application/json");
    // The name is checked: another host name fails.
    let err = get(addr, client.clone(), "example.org")
        .await
        .err()
        .expect("another host name fails");
    assert!(format!("{err:#}").contains("not valid for name"), "{err:#}");
    // A client not trusting the dev root fails.
    let stranger = web_client(&[DevCa::new().root()], &[b"http/1.1"]);
    let err = get(addr, stranger, "localhost")
        .await
        .err()
        .expect("a client not trusting the dev root fails");
    // Both dev roots have the same (empty) name: the chain builds, its signature fails.
    assert!(format!("{err:#}").contains("BadSignature"), "{err:#}");

    // New files (key as SEC1 this time): served without a restart.
    let (leaf2, chain2, key2) = dev.leaf();
    std::fs::write(&key_file, to_sec1(dir.path(), &key2)).unwrap();
    std::fs::write(&cert_file, &chain2).unwrap();
    until_served("the new certificate", addr, &client, &leaf2).await;

    // A broken certificate file: the failure is seen, the previous certificate stays.
    let before = certs.failures();
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    eventually("the broken file to be seen", || async {
        (certs.failures() > before).then_some(())
    })
    .await;
    assert_eq!(served_leaf(addr, client.clone()).await, Some(leaf2.clone()));

    // A valid certificate whose key is not in the key file: refused as well.
    let (leaf3, chain3, key3) = dev.leaf();
    let before = certs.failures();
    std::fs::write(&cert_file, &chain3).unwrap();
    eventually("the mismatched pair to be seen", || async {
        (certs.failures() > before).then_some(())
    })
    .await;
    assert_eq!(served_leaf(addr, client.clone()).await, Some(leaf2.clone()));
    let err = load_web_files(&cert_file, &key_file).expect_err("the key does not match");
    assert!(
        matches!(&err, ServerTlsError::Key { path, .. } if path.ends_with("server.key")),
        "{err}"
    );

    // Then the matching key arrives: recovered.
    std::fs::write(&key_file, &key3).unwrap();
    until_served("the third certificate", addr, &client, &leaf3).await;
    cancel.cancel();
}

/// The same through the real daemon and its own reload task (`meshtrust serve` with an
/// https_web `[bundle_endpoint]`): files replaced on disk are served without a restart, and a
/// broken replacement is logged while the previous certificate stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_replaced_https_web_files_and_keeps_its_certificate_on_a_bad_file() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let dev = DevCa::new();
    let (cert_file, key_file) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let (leaf1, chain1, key1) = dev.leaf();
    std::fs::write(&key_file, &key1).unwrap();
    std::fs::write(&cert_file, &chain1).unwrap();
    let config = DaemonConfig::new("mesh-a.test")
        .section(&format!(
            "[bundle_endpoint]\nlisten = \"127.0.0.1:0\"\nprofile = \"https_web\"\ncert_file = {:?}\nkey_file = {:?}\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ))
        .write(dir.path());
    let daemon = Proc::serve(&config).await;
    let ready = daemon.log();
    let addr: std::net::SocketAddr = ready
        .split("bundle_endpoint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the ready line names the endpoint's address: {ready}"))
        .parse()
        .unwrap();
    let client = web_client(&[dev.root()], &[b"h2", b"http/1.1"]);
    let (conn, answer) = get(addr, client.clone(), "localhost").await.unwrap();
    assert_eq!(conn.leaf, leaf1);
    let bundle: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(
        bundle["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{bundle}"
    );

    // New files: the daemon's task notices and serves them.
    let (leaf2, chain2, key2) = dev.leaf();
    std::fs::write(&key_file, &key2).unwrap();
    std::fs::write(&cert_file, &chain2).unwrap();
    daemon
        .wait_for_log("bundle endpoint certificate reloaded")
        .await;
    until_served(
        "the daemon serves the new certificate",
        addr,
        &client,
        &leaf2,
    )
    .await;

    // A broken certificate file: logged, and the certificate served stays.
    let failures = daemon.count("bundle endpoint certificate not reloaded");
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let line = daemon
        .wait_for_nth_log("bundle endpoint certificate not reloaded", failures)
        .await;
    assert!(
        line.contains("server.pem"),
        "the log names the file: {line}"
    );
    assert_eq!(served_leaf(addr, client.clone()).await, Some(leaf2));
    assert_eq!(daemon.stop().code(), Some(0));
}
