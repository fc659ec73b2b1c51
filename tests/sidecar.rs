//! `meshtrust sidecar` end to end: real daemons in-process (two meshes that federate), the
//! sidecar driven through its real command line, real sockets, real TLS.
//!
//! - files mode through a CA rotation: the files change and the key always matches the cert;
//! - inbound + outbound proxies between the meshes: the allowed caller gets an echo round trip
//!   (with a half-close), a caller not on `--allow` is refused and named in the log line, and an
//!   outbound proxy refuses a server that is not the `--expect`ed ID;
//! - an `openssl s_server`/`s_client` mTLS handshake between the meshes using only the files
//!   the sidecars wrote.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use common::mesh::{Mesh, eventually};
use meshtrust::app::Daemon;
use meshtrust::bundle::pem::parse_certs_pem;
use meshtrust::cli::{Cli, Command};
use meshtrust::sidecar::{Reporter, SidecarError};
use meshtrust::spiffe_id::TrustDomain;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(60);

/// The effective uid of this process, for `unix:uid:` selectors.
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn entry(id: &str, peer: Option<&str>) -> String {
    let fed = peer.map_or(String::new(), |p| format!("federates_with = [\"{p}\"]\n"));
    format!(
        "[[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\n{fed}",
        euid()
    )
}

/// A sidecar running in-process through the real command line, its report lines collected.
struct Sidecar {
    lines: Arc<Mutex<Vec<String>>>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), SidecarError>>,
}

impl Sidecar {
    fn start(socket: &Path, argv: &[&str]) -> Self {
        let socket = format!("unix://{}", socket.display());
        let mut full = vec!["meshtrust", "sidecar", "--workload-socket", socket.as_str()];
        full.extend_from_slice(argv);
        let Command::Sidecar(args) = Cli::try_parse_from(full).unwrap().command else {
            panic!("not a sidecar command");
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let name = argv[0].to_owned();
        let reporter = Reporter::new(move |l| {
            eprintln!("[sidecar {name}] {l}");
            sink.lock().unwrap().push(l.to_owned());
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(meshtrust::sidecar::run(
            args,
            None,
            reporter,
            cancel.clone(),
        ));
        Self {
            lines,
            cancel,
            task,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        eventually(what, GUARD, || {
            found = self.lines().into_iter().find(|l| f(l));
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    async fn listen_addr(&self) -> SocketAddr {
        let line = self
            .wait_line("the proxy listens", |l| l.contains(": listening on "))
            .await;
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("hang guard")
            .unwrap()
            .unwrap();
    }
}

/// An echo service: reads until EOF, then writes everything back and closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Writes `msg`, half-closes, reads the answer to EOF.
async fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    };
    tokio::time::timeout(GUARD, work).await.expect("hang guard")
}

struct TwoMeshes {
    _root: tempfile::TempDir,
    da: Daemon,
    db: Daemon,
}

/// mesh-a runs `spiffe://mesh-a.test/frontend`, mesh-b `spiffe://mesh-b.test/echo`; they
/// federate and each pins the other's bundle.
async fn two_meshes() -> TwoMeshes {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut a = Mesh::new(root.path(), "mesh-a").await;
    let mut b = Mesh::new(root.path(), "mesh-b").await;
    a.write_config(
        "",
        "1s",
        Some(&b),
        &entry("spiffe://mesh-a.test/frontend", Some("mesh-b.test")),
    );
    b.write_config(
        "",
        "1s",
        Some(&a),
        &entry("spiffe://mesh-b.test/echo", Some("mesh-a.test")),
    );
    a.give_bootstrap_to(&b);
    b.give_bootstrap_to(&a);
    let da = a.start().await;
    let db = b.start().await;
    let (td_a, td_b) = (
        TrustDomain::new("mesh-a.test").unwrap(),
        TrustDomain::new("mesh-b.test").unwrap(),
    );
    eventually("each mesh pins the other's bundle", GUARD, || {
        da.peers.get(&td_b).is_some() && db.peers.get(&td_a).is_some()
    })
    .await;
    TwoMeshes {
        _root: root,
        da,
        db,
    }
}

fn key_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    let Ok(certs) = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>() else {
        return false;
    };
    let Ok(key) = PrivateKeyDer::from_pem_slice(key_pem) else {
        return false;
    };
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    !certs.is_empty() && CertifiedKey::new(certs, signing).keys_match().is_ok()
}

/// One consistent read of the files: `current` resolved once, as the layout docs say.
fn read_version(dir: &Path) -> Option<(Vec<u8>, Vec<u8>, Vec<CertificateDer<'static>>)> {
    let version = std::fs::canonicalize(dir.join("current")).ok()?;
    let cert = std::fs::read(version.join("svid.pem")).ok()?;
    let key = std::fs::read(version.join("svid_key.pem")).ok()?;
    let bundle = parse_certs_pem(&std::fs::read(version.join("bundle.pem")).ok()?).ok()?;
    Some((cert, key, bundle))
}

/// The middle of the leaf's validity: "was it signed by this bundle", independent of the clock.
fn mid_validity(leaf: &CertificateDer<'_>) -> UnixTime {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, x509) = X509Certificate::from_der(leaf).unwrap();
    let v = x509.validity();
    let mid = (v.not_before.timestamp() + v.not_after.timestamp()) / 2;
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(mid).unwrap()))
}

fn verifies_at(leaf: &CertificateDer<'_>, roots: &[CertificateDer<'static>], at: UnixTime) -> bool {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(roots.iter().cloned());
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &store, &[], at, algs.all)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_follows_a_ca_rotation_with_the_key_always_beside_its_cert() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut a = Mesh::new(root.path(), "mesh-a").await;
    // Fast rotation: the next CA is prepared at 4s and signs from ~6.7s; SVIDs live 2s.
    a.write_config(
        "ca_ttl = \"8s\"\nx509_svid_ttl = \"2s\"\njwt_svid_ttl = \"2s\"",
        "1s",
        None,
        &entry("spiffe://mesh-a.test/frontend", None),
    );
    let da = a.start().await;
    let first_ca = da.ca.snapshot().bundle.x509_authorities.clone();
    let out = root.path().join("out");
    let sidecar = Sidecar::start(
        &da.workload_socket,
        &["files", "--out", out.to_str().unwrap()],
    );

    // A reader hammers the files the whole time; every version it sees must hold a key that
    // matches its cert, and a cert that the bundle of the same version verifies.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, out) = (stop.clone(), out.clone());
        std::thread::spawn(move || {
            let (mut good, mut bad) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some((cert, key, bundle)) = read_version(&out) else {
                    std::thread::yield_now();
                    continue;
                };
                let leaf = CertificateDer::pem_slice_iter(&cert)
                    .next()
                    .unwrap()
                    .unwrap();
                if key_matches(&cert, &key) && verifies_at(&leaf, &bundle, mid_validity(&leaf)) {
                    good += 1;
                } else {
                    bad.push(String::from_utf8_lossy(&cert).into_owned());
                }
            }
            (good, bad)
        })
    };

    // The rotation reaches the files: a leaf signed by a CA that was not in the first bundle.
    eventually("a leaf from the rotated CA is written", GUARD, || {
        read_version(&out).is_some_and(|(cert, _, bundle)| {
            let leaf = CertificateDer::pem_slice_iter(&cert)
                .next()
                .unwrap()
                .unwrap();
            bundle.iter().any(|ca| !first_ca.contains(ca))
                && !verifies_at(&leaf, &first_ca, mid_validity(&leaf))
        })
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (good, bad) = reader.join().unwrap();
    assert!(bad.is_empty(), "{} inconsistent versions seen", bad.len());
    assert!(good > 0);
    let writes = sidecar
        .lines()
        .iter()
        .filter(|l| l.starts_with("files: wrote the svid of spiffe://mesh-a.test/frontend"))
        .count();
    assert!(writes >= 3, "{:?}", sidecar.lines());
    // Stable paths lead to the current version.
    assert_eq!(
        std::fs::read(out.join("svid.pem")).unwrap(),
        std::fs::read(out.join("current/svid.pem")).unwrap()
    );
    sidecar.stop().await;
    da.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_let_the_allowed_caller_through_and_refuse_the_others() {
    let m = two_meshes().await;
    let echo = echo_server().await.to_string();
    let b_sock = m.db.workload_socket.clone();
    let a_sock = m.da.workload_socket.clone();
    let open = Sidecar::start(
        &b_sock,
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            &echo,
            "--allow",
            "spiffe://mesh-a.test/frontend",
        ],
    );
    let closed = Sidecar::start(
        &b_sock,
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            &echo,
            "--allow",
            "spiffe://mesh-a.test/someone-else",
            "--allow-trust-domain",
            "mesh-c.test",
        ],
    );
    let open_addr = open.listen_addr().await.to_string();
    let closed_addr = closed.listen_addr().await.to_string();
    let caller = Sidecar::start(
        &a_sock,
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &open_addr,
            "--expect",
            "spiffe://mesh-b.test/echo",
        ],
    );
    let refused_caller = Sidecar::start(
        &a_sock,
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &closed_addr,
            "--expect",
            "spiffe://mesh-b.test/echo",
        ],
    );
    let wrong_expectation = Sidecar::start(
        &a_sock,
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &open_addr,
            "--expect",
            "spiffe://mesh-b.test/not-echo",
        ],
    );
    for (s, peer) in [
        (&open, "mesh-a.test"),
        (&closed, "mesh-a.test"),
        (&caller, "mesh-b.test"),
        (&refused_caller, "mesh-b.test"),
        (&wrong_expectation, "mesh-b.test"),
    ] {
        s.wait_line("an svid with the peer's bundle", |l| {
            l.starts_with("svid update:") && l.contains(&format!("federated: {peer} (1 CA)"))
        })
        .await;
    }

    // The allowed caller: a round trip through outbound (mesh-a) and inbound (mesh-b), the
    // half-close carried across both proxies; big enough to need many TLS records.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let back = round_trip(caller.listen_addr().await, &payload)
        .await
        .unwrap();
    assert_eq!(back, payload);
    open.wait_line("the inbound proxy names the caller", |l| {
        l.starts_with("inbound: accepted spiffe://mesh-a.test/frontend from")
    })
    .await;
    caller
        .wait_line("the outbound proxy names the server", |l| {
            l.contains("connected to spiffe://mesh-b.test/echo")
        })
        .await;

    // Not on --allow: the handshake fails and the inbound proxy names who it refused.
    let back = round_trip(refused_caller.listen_addr().await, b"let me in").await;
    assert!(back.map_or(true, |b| b.is_empty()));
    let line = closed
        .wait_line("the refusal is logged", |l| {
            l.starts_with("inbound: refused")
        })
        .await;
    assert!(
        line.contains("spiffe://mesh-a.test/frontend is not allowed"),
        "{line}"
    );

    // The server is authentic but not the expected ID: the outbound proxy refuses it.
    let back = round_trip(wrong_expectation.listen_addr().await, b"hello?").await;
    assert!(back.map_or(true, |b| b.is_empty()));
    let line = wrong_expectation
        .wait_line("the outbound refusal is logged", |l| {
            l.contains(" refused ")
        })
        .await;
    assert!(
        line.contains("spiffe://mesh-b.test/echo is not allowed"),
        "{line}"
    );

    for s in [open, closed, caller, refused_caller, wrong_expectation] {
        s.stop().await;
    }
    m.da.shutdown().await;
    m.db.shutdown().await;
}

/// Starts `openssl s_server` on an ephemeral port; returns the child and its port.
async fn s_server(dir: &Path, peer_bundle: &Path) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-Verify",
            "1",
        ])
        .args(["-verify_return_error", "-cert"])
        .arg(dir.join("svid.pem"))
        .arg("-key")
        .arg(dir.join("svid_key.pem"))
        .arg("-CAfile")
        .arg(peer_bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is installed");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(GUARD, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = line.strip_prefix("ACCEPT ") {
                return addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("s_server exited without accepting");
    })
    .await
    .expect("hang guard");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

async fn s_client(port: u16, dir: &Path, peer_bundle: &Path) -> (bool, String) {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(dir.join("svid.pem"))
        .arg("-key")
        .arg(dir.join("svid_key.pem"))
        .arg("-CAfile")
        .arg(peer_bundle)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(GUARD, out)
        .await
        .expect("hang guard")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_speaks_mtls_across_the_meshes_with_the_written_files() {
    let m = two_meshes().await;
    let out = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (out.path().join("a"), out.path().join("b"));
    let fa = Sidecar::start(
        &m.da.workload_socket,
        &["files", "--out", dir_a.to_str().unwrap()],
    );
    let fb = Sidecar::start(
        &m.db.workload_socket,
        &["files", "--out", dir_b.to_str().unwrap()],
    );
    eventually("both sidecars wrote the peer's bundle", GUARD, || {
        dir_a.join("federated/mesh-b.test.pem").exists()
            && dir_b.join("federated/mesh-a.test.pem").exists()
    })
    .await;
    // Resolve `current` once per side (SVIDs live an hour here; this only pins the version).
    let va: PathBuf = std::fs::canonicalize(dir_a.join("current")).unwrap();
    let vb: PathBuf = std::fs::canonicalize(dir_b.join("current")).unwrap();

    // mesh-b serves, mesh-a calls; each trusts only the other trust domain's bundle
    // (WAPI 1.7.6), and both sides require the other's certificate to verify.
    let (mut server, port) = s_server(&vb, &vb.join("federated/mesh-a.test.pem")).await;
    let (ok, text) = s_client(port, &va, &va.join("federated/mesh-b.test.pem")).await;
    assert!(ok, "{text}");
    assert!(text.contains("Verification: OK"), "{text}");
    let status = tokio::time::timeout(GUARD, server.wait())
        .await
        .expect("hang guard")
        .unwrap();
    assert!(status.success());

    // The caller's own bundle cannot verify mesh-b's server: the peer TD's bundle is needed.
    let (mut server, port) = s_server(&vb, &vb.join("federated/mesh-a.test.pem")).await;
    let (ok, text) = s_client(port, &va, &va.join("bundle.pem")).await;
    assert!(!ok, "{text}");
    let _ = server.kill().await;

    fa.stop().await;
    fb.stop().await;
    m.da.shutdown().await;
    m.db.shutdown().await;
}

#[test]
fn the_command_line_refuses_bad_addresses_and_empty_policies_with_exit_64() {
    // Workload Endpoint 1.6.5 (strict unix: URIs), and an inbound proxy never allows everyone.
    let run = |args: &[&str], env: &str| {
        std::process::Command::new(common::bin())
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", env)
            .output()
            .unwrap()
    };
    let out = run(
        &["sidecar", "files", "--out", "/nonexistent"],
        "unix://host/x.sock",
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authority"));
    let out = run(
        &["sidecar", "files", "--out", "/nonexistent"],
        "tcp://127.0.0.1:1",
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp endpoints are not supported"));
    let out = run(
        &[
            "sidecar",
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            "127.0.0.1:1",
        ],
        "unix:///nonexistent.sock",
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is allowed"));
    let out = run(
        &[
            "sidecar",
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:1",
            "--expect",
            "spiffe://mesh-b.test",
        ],
        "unix:///nonexistent.sock",
    );
    assert_eq!(out.status.code(), Some(64));
}
