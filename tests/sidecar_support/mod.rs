//! Helpers for the sidecar end-to-end tests: the sidecar run in-process through its real
//! command line, two federating meshes, an echo service, openssl peers, file checks.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use meshtrust::app::Daemon;
use meshtrust::bundle::pem::parse_certs_pem;
use meshtrust::cli::{Cli, Command};
use meshtrust::sidecar::{Reporter, SidecarError};
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::common::daemon::Proc;
use crate::common::eventually;
use crate::common::mesh::Mesh;

pub use crate::common::GUARD;

/// An entry for this process's uid, federating with `peer` if given.
pub fn entry(id: &str, peer: Option<&str>) -> String {
    common::config::entry(id, common::own_uid(), peer.as_slice())
}

/// A sidecar running in-process through the real command line, its report lines collected.
pub struct Sidecar {
    pub lines: Arc<Mutex<Vec<String>>>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), SidecarError>>,
}

impl Sidecar {
    pub fn start(socket: &Path, argv: &[&str]) -> Self {
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

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub async fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        eventually(what, || {
            found = self.lines().into_iter().find(|l| f(l));
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    pub async fn listen_addr(&self) -> SocketAddr {
        let line = self
            .wait_line("the proxy listens", |l| l.contains(LISTENING))
            .await;
        addr_of(&line)
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("hang guard")
            .unwrap()
            .unwrap();
    }
}

/// What a proxy reports once it listens: `...: listening on ADDR`.
const LISTENING: &str = ": listening on ";

fn addr_of(listening: &str) -> SocketAddr {
    listening.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The address a proxy run as the real binary ([`Proc::sidecar`]) reports it listens on.
pub async fn proxy_addr(proxy: &Proc) -> SocketAddr {
    addr_of(&proxy.wait_for_log(LISTENING).await)
}

/// The arguments of files mode writing to `out`, then `more` (`--signal-pid PID`, ...).
pub fn files_args<'a>(out: &'a Path, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["files", "--out", out.to_str().unwrap()];
    args.extend_from_slice(more);
    args
}

/// The arguments of an inbound proxy on an ephemeral port forwarding to `forward`, admitting
/// what `policy` says (`--allow ID`, `--allow-trust-domain TD`, ...).
pub fn inbound_args<'a>(forward: &'a str, policy: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["inbound", "--listen", "127.0.0.1:0", "--forward", forward];
    args.extend_from_slice(policy);
    args
}

/// The arguments of an outbound proxy on an ephemeral port connecting to `connect` and
/// expecting the server `expect` there.
pub fn outbound_args<'a>(connect: &'a str, expect: &'a str) -> Vec<&'a str> {
    vec![
        "outbound",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        connect,
        "--expect",
        expect,
    ]
}

/// An echo service: reads until EOF, then writes everything back and closes.
pub async fn echo_server() -> SocketAddr {
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
pub async fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    };
    crate::common::guard(work).await
}

pub struct TwoMeshes {
    pub _root: tempfile::TempDir,
    pub da: Daemon,
    pub db: Daemon,
}

/// mesh-a runs `spiffe://mesh-a.test/frontend`, mesh-b `spiffe://mesh-b.test/echo`; they
/// federate and each pins the other's bundle.
pub async fn two_meshes() -> TwoMeshes {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = Mesh::pair(
        root.path(),
        &entry("spiffe://mesh-a.test/frontend", Some("mesh-b.test")),
        &entry("spiffe://mesh-b.test/echo", Some("mesh-a.test")),
        true,
    )
    .await;
    let da = a.start().await;
    let db = b.start().await;
    let (td_a, td_b) = (common::td("mesh-a.test"), common::td("mesh-b.test"));
    eventually("each mesh pins the other's bundle", || {
        da.peers.get(&td_b).is_some() && db.peers.get(&td_a).is_some()
    })
    .await;
    TwoMeshes {
        _root: root,
        da,
        db,
    }
}

pub fn key_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
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
pub fn read_version(dir: &Path) -> Option<(Vec<u8>, Vec<u8>, Vec<CertificateDer<'static>>)> {
    let version = std::fs::canonicalize(dir.join("current")).ok()?;
    let cert = std::fs::read(version.join("svid.pem")).ok()?;
    let key = std::fs::read(version.join("svid_key.pem")).ok()?;
    let bundle = parse_certs_pem(&std::fs::read(version.join("bundle.pem")).ok()?).ok()?;
    Some((cert, key, bundle))
}

/// The middle of the leaf's validity: "was it signed by this bundle", independent of the clock.
pub fn mid_validity(leaf: &CertificateDer<'_>) -> UnixTime {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, x509) = X509Certificate::from_der(leaf).unwrap();
    let v = x509.validity();
    let mid = (v.not_before.timestamp() + v.not_after.timestamp()) / 2;
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(mid).unwrap()))
}

pub fn verifies_at(
    leaf: &CertificateDer<'_>,
    roots: &[CertificateDer<'static>],
    at: UnixTime,
) -> bool {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(roots.iter().cloned());
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &store, &[], at, algs.all)
        .is_ok()
}

/// openssl's arguments for the files a sidecar wrote in `dir` (its SVID and key), trusting
/// `peer_bundle`.
fn tls_files(dir: &Path, peer_bundle: &Path) -> [std::ffi::OsString; 6] {
    [
        "-cert".into(),
        dir.join("svid.pem").into(),
        "-key".into(),
        dir.join("svid_key.pem").into(),
        "-CAfile".into(),
        peer_bundle.into(),
    ]
}

/// Starts `openssl s_server` on an ephemeral port; returns the child and its port.
pub async fn s_server(dir: &Path, peer_bundle: &Path) -> (tokio::process::Child, u16) {
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
        .arg("-verify_return_error")
        .args(tls_files(dir, peer_bundle))
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

pub async fn s_client(port: u16, dir: &Path, peer_bundle: &Path) -> (bool, String) {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(tls_files(dir, peer_bundle))
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(GUARD, out)
        .await
        .expect("hang guard")
        .unwrap();
    (out.status.success(), common::output_text(&out))
}
