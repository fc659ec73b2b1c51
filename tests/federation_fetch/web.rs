//! The `https_web` profile with an rcgen dev root (Federation 1.5.6: clients support both
//! profiles; SPIFFE.md §2: RFC 6125 hostname check), and relationships that cannot start.

use std::path::PathBuf;
use std::sync::Arc;

use meshtrust::config::{FederationConfig, PeerProfile};
use meshtrust::federation::client::FetchLimits;
use meshtrust::federation::fetcher::FetcherError;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;

use super::harness::*;
use super::hostile::{Behaviour, Hostile, tls_config};

fn dev_root(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn web_identity(root: &CertifiedIssuer<'static, KeyPair>, host: &str) -> Arc<ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![host.to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, root).unwrap();
    tls_config(vec![cert.der().clone()], &key.serialize_der())
}

fn web_peer(server: &Hostile, ca_file: PathBuf) -> FederationConfig {
    let url = format!("https://localhost:{}/", server.addr.port());
    FederationConfig {
        trust_domain: td(PEER),
        url: url::Url::parse(&url).unwrap(),
        profile: PeerProfile::HttpsWeb {
            ca_file: Some(ca_file),
        },
    }
}

/// Fetches from an https_web endpoint presenting a cert for `host` from `signer`, trusting `trusted`.
async fn web_fetch(
    signer: &CertifiedIssuer<'static, KeyPair>,
    host: &str,
    trusted: &CertifiedIssuer<'static, KeyPair>,
) -> (PeerCa, Ours, meshtrust::federation::FetchReport) {
    let peer = PeerCa::now(PEER);
    let server = Hostile::start(web_identity(signer, host)).await;
    server.route("/", Behaviour::ok(peer.bundle_json()));
    let dir = Ours::dir();
    let ca_file = Ours::write(&dir, "roots.pem", trusted.pem().as_bytes());
    let peers = [web_peer(&server, ca_file)];
    let ours = Ours::start(dir, &peers, no_own_roots(), FetchLimits::default()).unwrap();
    let report = ours.refresh(PEER).await;
    (peer, ours, report)
}

#[tokio::test]
async fn https_web_with_a_dev_root_and_a_localhost_certificate_pins_the_bundle() {
    let root = dev_root("meshtrust dev root");
    let (peer, ours, report) = web_fetch(&root, "localhost", &root).await;
    assert!(report.ok, "{report:?}");
    assert!(ours.pinned(PEER).unwrap().same_authorities(&peer.bundle()));
}

#[tokio::test]
async fn https_web_refuses_a_certificate_for_another_host_name() {
    let root = dev_root("meshtrust dev root");
    let (_, ours, report) = web_fetch(&root, "mesh-b.example", &root).await;
    assert_refused(&report, "not valid for name");
    assert!(ours.pinned(PEER).is_none());
    assert!(
        ours.status(PEER)
            .fetches
            .get("tls")
            .is_some_and(|n| *n >= 1)
    );
}

#[tokio::test]
async fn https_web_refuses_a_certificate_from_an_unknown_root() {
    let (root, other) = (dev_root("the peer's root"), dev_root("the root we trust"));
    let (_, ours, report) = web_fetch(&root, "localhost", &other).await;
    assert_refused(&report, "UnknownIssuer");
    assert!(ours.pinned(PEER).is_none());
}

fn start_error(peers: &[FederationConfig], dir: tempfile::TempDir) -> FetcherError {
    match Ours::start(dir, peers, no_own_roots(), FetchLimits::default()) {
        Ok(_) => panic!("started"),
        Err(e) => e,
    }
}

fn unused_url() -> url::Url {
    url::Url::parse("https://127.0.0.1:9/").unwrap()
}

#[tokio::test]
async fn a_missing_bootstrap_bundle_fails_the_start_naming_the_file() {
    let dir = Ours::dir();
    let file = dir.path().join("missing-bootstrap.json");
    let error = start_error(&[spiffe_peer(unused_url(), Some(file))], dir);
    assert!(matches!(error, FetcherError::Bootstrap { .. }), "{error:?}");
    assert!(
        error.to_string().contains("missing-bootstrap.json"),
        "{error}"
    );
}

#[tokio::test]
async fn a_bad_bootstrap_bundle_fails_the_start_naming_the_file() {
    // SPIFFE.md §2: a bootstrap bundle is SPIFFE bundle JSON or PEM; this is neither.
    let dir = Ours::dir();
    let file = Ours::write(&dir, "bad-bootstrap.pem", b"not a bundle");
    let error = start_error(&[spiffe_peer(unused_url(), Some(file))], dir);
    assert!(error.to_string().contains("bad-bootstrap.pem"), "{error}");
}

#[tokio::test]
async fn a_bootstrap_bundle_without_x509_authorities_fails_the_start() {
    let dir = Ours::dir();
    let file = Ours::write(&dir, "empty.json", br#"{"keys":[]}"#);
    let error = start_error(&[spiffe_peer(unused_url(), Some(file))], dir);
    assert!(
        error.to_string().contains("no usable x509 authority"),
        "{error}"
    );
}

#[tokio::test]
async fn a_ca_file_without_certificates_fails_the_start_naming_the_file() {
    let dir = Ours::dir();
    let file = Ours::write(&dir, "roots.pem", b"no certificates here");
    let server_like = FederationConfig {
        trust_domain: td(PEER),
        url: unused_url(),
        profile: PeerProfile::HttpsWeb {
            ca_file: Some(file),
        },
    };
    let error = start_error(&[server_like], dir);
    assert!(matches!(error, FetcherError::CaFile { .. }), "{error:?}");
    assert!(error.to_string().contains("roots.pem"), "{error}");
}
