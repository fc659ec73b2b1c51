//! Issue 9 items 4 and 8, attacked as a hostile federation peer would, against the real binary:
//! a peer whose endpoint presents a valid SVID (from the CA of our bootstrap bundle) serves a
//! 1 MB bundle of 500,000 junk keys with `spiffe_refresh_hint: 0`. The log stays bounded (one
//! line per fetch), nothing is written to the state, we poll no faster than the 30 s floor, and
//! the last good bundle stays pinned. A bundle without `spiffe_sequence` after a sequenced one is
//! refused as a possible rollback; an expired CA in a peer's bundle anchors nothing. Every
//! refusal has its log line and its `meshtrust_federation_fetches_total` result label.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::{CliOutput, cli_async};
use meshtrust::bundle::{TrustBundle, jwks};
use meshtrust::spiffe_id::TrustDomain;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The keys in the hostile document: `0,` each, 1,000,000 bytes in all (under the 1 MiB cap).
const JUNK_KEYS: usize = 500_000;

/// A CA for `td` valid from `from` to `to` seconds from now, and an endpoint SVID it signed
/// (valid now) with its key.
fn pki(
    td: &str,
    from: i64,
    to: i64,
) -> (
    CertificateDer<'static>,
    CertificateDer<'static>,
    PrivateKeyDer<'static>,
) {
    let at = |secs: i64| time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = at(from);
    ca.not_after = at(to);
    let ca_cert = ca.self_signed(&ca_key).unwrap().der().clone();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    let id = format!("spiffe://{td}/meshtrust/server");
    leaf.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = at(-60);
    leaf.not_after = at(3600);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap().der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca_cert, leaf_cert, key)
}

/// A peer's bundle endpoint: HTTPS (HTTP/1.1), answering every request with `body`.
struct PeerServer {
    port: u16,
    body: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
}

impl PeerServer {
    async fn start(leaf: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (served, count) = (body.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, served, count) = (acceptor.clone(), served.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            port,
            body,
            requests,
        }
    }

    fn serve(&self, body: Vec<u8>) {
        *self.body.lock().unwrap() = body;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn bundle_json(td: &str, ca: &CertificateDer<'static>, sequence: Option<u64>) -> Vec<u8> {
    let mut bundle = TrustBundle::empty(TrustDomain::new(td).unwrap());
    bundle.x509_authorities = vec![ca.clone()];
    bundle.sequence = sequence;
    bundle.refresh_hint = Some(Duration::ZERO);
    jwks::to_json(&bundle).unwrap()
}

fn write_config(dir: &Path, evil_port: u16, stale_port: u16) -> PathBuf {
    // The daemon's own 30 s refresh floor: that it holds is part of the test.
    DaemonConfig::plain("ours.test")
        .metrics()
        .peer_bootstrapped_from(
            "evil.test",
            &format!("https://127.0.0.1:{evil_port}/"),
            "evil.json",
        )
        .peer_bootstrapped_from(
            "stale.test",
            &format!("https://127.0.0.1:{stale_port}/"),
            "stale.pem",
        )
        .write(dir)
}

/// `meshtrust federation refresh evil.test` on `admin`: what it printed.
async fn refresh_evil(admin: &Path) -> CliOutput {
    cli_async(&[
        "federation",
        "refresh",
        "evil.test",
        "--admin-socket",
        admin.to_str().unwrap(),
    ])
    .await
}

async fn peer_status(admin: &Path, td: &str) -> Value {
    common::peer_status(&common::status_json(admin).await, td).clone()
}

fn rfc3339(value: &Value) -> time::OffsetDateTime {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

/// `meshtrust_federation_fetches_total` for `td` and `result`, from /metrics.
fn fetches(metrics: &str, td: &str, result: &str) -> u64 {
    let family = "meshtrust_federation_fetches_total";
    common::metrics::counter(
        metrics,
        family,
        &format!("{family}{{trust_domain=\"{td}\",result=\"{result}\"}}"),
    )
}

/// (modification time, size) of the state's database and WAL files.
fn state_files(data: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    ["meshtrust.db", "meshtrust.db-wal"]
        .iter()
        .map(|name| data.join(name))
        .filter(|p| p.exists())
        .map(|p| {
            let meta = std::fs::metadata(&p).unwrap();
            (p, meta.modified().unwrap(), meta.len())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_floods_neither_the_log_nor_the_disk_and_the_last_good_bundle_stays() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let (evil_ca, evil_leaf, evil_key) = pki("evil.test", -3600, 24 * 3600);
    let evil = PeerServer::start(evil_leaf, evil_key).await;
    let good = bundle_json("evil.test", &evil_ca, Some(5));
    evil.serve(good.clone());
    std::fs::write(dir.path().join("evil.json"), &good).unwrap();
    // stale.test's bundle holds a CA that expired an hour ago; its endpoint's SVID is current.
    let (stale_ca, stale_leaf, stale_key) = pki("stale.test", -7200, -3600);
    let stale = PeerServer::start(stale_leaf, stale_key).await;
    stale.serve(bundle_json("stale.test", &stale_ca, Some(1)));
    std::fs::write(dir.path().join("stale.pem"), common::pem(&[stale_ca])).unwrap();
    let config = write_config(dir.path(), evil.port, stale.port);
    let admin = dir.path().join("admin.sock");
    let data = dir.path().join("data");

    let daemon = Proc::serve(&config).await;
    let metrics = common::metrics::listen_addr(&daemon).await;
    daemon.wait_for_log("peer bundle fetched and pinned").await;
    let evil_status = peer_status(&admin, "evil.test").await;
    assert_eq!(evil_status["sequence"], 5, "{evil_status}");

    // The 30 s floor: the peer's `spiffe_refresh_hint: 0` does not make us poll in a loop.
    let interval = rfc3339(&evil_status["next_refresh"]) - rfc3339(&evil_status["last_attempt"]);
    assert!(
        interval >= time::Duration::seconds(30),
        "next poll {interval} after the last one: {evil_status}"
    );

    // An unchanged bundle, fetched again, writes nothing to the state.
    let written = state_files(&data);
    for _ in 0..3 {
        let out = refresh_evil(&admin).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(
        state_files(&data),
        written,
        "an unchanged bundle was rewritten"
    );
    assert_eq!(fetches(&metrics, "evil.test", "ok"), 4);

    // The attack: 500,000 junk keys, a new sequence, a zero hint.
    let mut junk = br#"{"spiffe_sequence":6,"spiffe_refresh_hint":0,"keys":["#.to_vec();
    junk.extend("0,".repeat(JUNK_KEYS - 1).as_bytes());
    junk.extend(b"0]}");
    let junk_len = junk.len();
    assert!(junk_len > 1_000_000 && junk_len <= 1 << 20, "{junk_len}");
    evil.serve(junk);
    let before = evil.requests();
    for _ in 0..5 {
        let out = refresh_evil(&admin).await;
        let text = out.stdout.clone() + &out.stderr;
        assert!(
            text.contains("bundle document has 500000 keys, more than the 1000 accepted"),
            "{text}"
        );
    }
    // Each refusal is one line (the fetcher's own retries back off from 1 s, doubling with
    // every failure, up to the 30 s floor: they add at most one line per backoff step).
    daemon.wait_for_nth_log("kind=\"too_many_keys\"", 4).await;
    let hostile_fetches = evil.requests() - before;
    assert!(hostile_fetches >= 5, "{hostile_fetches}");

    // Bounded log: one line per fetch, none per key.
    let log = daemon.log();
    let fetch_lines = log.lines().filter(|l| l.contains("peer=evil.test")).count();
    assert!(
        fetch_lines <= evil.requests() + 2,
        "{fetch_lines} lines for {} fetches:\n{log}",
        evil.requests()
    );
    assert!(log.len() < 64 * 1024, "{} bytes of log", log.len());
    assert_eq!(daemon.count("key ignored"), 0);
    // No write storm: the refused bundles touched nothing on disk.
    assert_eq!(
        state_files(&data),
        written,
        "the hostile fetches wrote to the state"
    );
    // The last good bundle stays, the refusals are counted.
    let evil_status = peer_status(&admin, "evil.test").await;
    assert_eq!(evil_status["sequence"], 5, "{evil_status}");
    assert_eq!(evil_status["authorities"].as_array().unwrap().len(), 1);
    assert_eq!(evil_status["state"], "failing", "{evil_status}");
    assert!(fetches(&metrics, "evil.test", "too_many_keys") >= 5);
    eprintln!(
        "hostile peer: {hostile_fetches} fetches of a {junk_len} byte bundle, {} log lines in all ({} bytes)",
        log.lines().count(),
        log.len()
    );

    // A document without spiffe_sequence after sequence 5: refused as a possible rollback.
    evil.serve(bundle_json("evil.test", &evil_ca, None));
    let out = refresh_evil(&admin).await;
    let text = out.stdout.clone() + &out.stderr;
    assert!(text.contains("spiffe_sequence missing"), "{text}");
    assert_eq!(fetches(&metrics, "evil.test", "sequence_missing"), 1);
    assert_eq!(peer_status(&admin, "evil.test").await["sequence"], 5);
    assert_eq!(
        daemon.count("fetched peer bundle not pinned; the pinned bundle stays"),
        1
    );

    // stale.test: its CA expired, so it anchors nothing; the endpoint is never authenticated.
    let stale_status = peer_status(&admin, "stale.test").await;
    assert_eq!(stale_status["state"], "failing", "{stale_status}");
    let error = stale_status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "every x509 authority of trust domain stale.test is expired or not yet valid"
        ),
        "{stale_status}"
    );
    assert!(fetches(&metrics, "stale.test", "tls") >= 1);
    assert_eq!(
        stale.requests(),
        0,
        "no request reached an unauthenticated endpoint"
    );
    drop(daemon);
}
