//! The test harness every test uses: the real binary ([`daemon`]), config files ([`config`]),
//! the Workload API over gRPC ([`grpc`]) and over HTTP ([`http`]), in-process daemons
//! ([`mesh`]) and Workload APIs ([`workload`]), `/metrics` scrapes ([`metrics`]), waits on events under one hang guard
//! ([`eventually`], [`guard`]), the CLI ([`cli`]), the rustls provider, PEM files for openssl.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod agent;
pub mod config;
pub mod daemon;
pub mod grpc;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod node_agent;
pub mod node_ca;
pub mod python;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use daemon::GUARD;
use meshtrust::spiffe_id::TrustDomain;

use rustls_pki_types::CertificateDer;

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// PEM for a list of certificates.
pub fn pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Runs `openssl verify -x509_strict -purpose <purpose>` of `leaf` against `roots`.
/// Returns (success, combined output).
pub fn openssl_verify(
    dir: &Path,
    roots: &[CertificateDer<'_>],
    leaf: &CertificateDer<'_>,
    purpose: &str,
) -> (bool, String) {
    let ca = dir.join("roots.pem");
    let cert = dir.join("leaf.pem");
    std::fs::write(&ca, pem(roots)).unwrap();
    std::fs::write(&cert, pem(std::slice::from_ref(leaf))).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    (out.status.success(), output_text(&out))
}

/// A finished child's stdout and stderr as one text (for a failure message or a search).
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The meshtrust binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshtrust"))
}

/// A trust domain name that is known to be valid.
pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// The uid of this test process: what the Workload API attests for it and its children.
pub fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Awaits `f` under the hang guard [`GUARD`].
pub async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("hang guard: no answer within the guard")
}

/// Polls `f` every 50 ms until it is true; panics naming `what` after [`GUARD`] (a hang guard,
/// never a timing assertion).
pub async fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_within(what, GUARD, f).await;
}

/// [`eventually`] with another hang guard than [`GUARD`].
pub async fn eventually_within(what: &str, guard: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + guard;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "hang guard: waited {guard:?} for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the async `f` until it returns `Some`; returns that value (hang guard [`GUARD`]).
pub async fn eventually_some<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "hang guard: waited {GUARD:?} for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for tests without an async runtime.
pub fn eventually_blocking(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "hang guard: waited {GUARD:?} for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a run of the CLI printed.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts the command exited 0 (showing its stderr if not); returns it for more checks.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{}", self.stderr);
        self
    }

    /// Asserts stdout holds `needle` (showing stdout if not).
    #[track_caller]
    pub fn prints(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "{needle:?} in:\n{}",
            self.stdout
        );
        self
    }

    /// Asserts the command exited `code` and said `reason` on stderr (showing both streams if
    /// not): a refusal with its reason, never just any failure.
    #[track_caller]
    pub fn fails_with(&self, code: i32, reason: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code} ({reason:?}): {}\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(reason),
            "{reason:?} in:\n{}",
            self.stderr
        );
        self
    }
}

fn cli_output(out: &std::process::Output) -> CliOutput {
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `meshtrust ARGS` with `SPIFFE_ENDPOINT_SOCKET` set to `endpoint`, or unset.
fn cli_command(args: &[&str], endpoint: Option<&str>) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    match endpoint {
        Some(endpoint) => cmd.env("SPIFFE_ENDPOINT_SOCKET", endpoint),
        None => cmd.env_remove("SPIFFE_ENDPOINT_SOCKET"),
    };
    cmd
}

async fn cli_run_async(cmd: Command) -> CliOutput {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cli_output(&guard(cmd.output()).await.unwrap())
}

/// Runs the real `meshtrust ARGS` to completion.
pub fn cli(args: &[&str]) -> CliOutput {
    cli_output(&cli_command(args, None).output().unwrap())
}

/// [`cli`] from an async test, under the hang guard.
pub async fn cli_async(args: &[&str]) -> CliOutput {
    cli_run_async(cli_command(args, None)).await
}

/// [`cli`] with `SPIFFE_ENDPOINT_SOCKET=endpoint` (how a workload names the Workload API).
pub fn cli_with_endpoint(args: &[&str], endpoint: &str) -> CliOutput {
    cli_output(&cli_command(args, Some(endpoint)).output().unwrap())
}

/// [`cli_with_endpoint`] from an async test, under the hang guard.
pub async fn cli_with_endpoint_async(args: &[&str], endpoint: &str) -> CliOutput {
    cli_run_async(cli_command(args, Some(endpoint))).await
}

/// `meshtrust status --json` on `admin_socket` (which must succeed), parsed.
pub async fn status_json(admin_socket: &Path) -> serde_json::Value {
    let out = cli_async(&[
        "status",
        "--json",
        "--admin-socket",
        admin_socket.to_str().unwrap(),
    ])
    .await;
    serde_json::from_str(&out.ok().stdout).unwrap()
}

/// One relationship's entry in a status document.
pub fn peer_status<'a>(status: &'a serde_json::Value, td: &str) -> &'a serde_json::Value {
    status["federation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["trust_domain"] == td)
        .unwrap_or_else(|| panic!("{td} in {status}"))
}

/// Waits until `f` holds for `td`'s entry in `meshtrust status --json`; returns that entry.
pub async fn wait_for_peer(
    admin_socket: &Path,
    td: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually_some(what, || async {
        let status = status_json(admin_socket).await;
        let peer = peer_status(&status, td);
        f(peer).then(|| peer.clone())
    })
    .await
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{GeneralName, parse_x509_certificate};
    let (_, cert) = parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A URL nothing answers at, deterministically: port 1 on the loopback. The kernel never hands
/// out a port below the ephemeral range for a bind to port 0 (which is all these tests bind),
/// so unlike a port bound and dropped, no other test can start listening there meanwhile. The
/// precondition is checked: a connection to it is refused.
pub fn refused_url() -> String {
    format!("https://{}/", refused_addr())
}

/// The address of [`refused_url`] (`127.0.0.1:1`), its precondition checked the same way.
pub fn refused_addr() -> &'static str {
    let err = std::net::TcpStream::connect("127.0.0.1:1").expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    "127.0.0.1:1"
}

/// The certificates of a concatenated-DER bundle (as the Workload API sends them), one by one.
pub fn split_der(mut der: &[u8]) -> Vec<Vec<u8>> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = X509Certificate::from_der(der).unwrap();
        out.push(der[..der.len() - rest.len()].to_vec());
        der = rest;
    }
    out
}

/// Spawns `cmd` with stdout piped (read on a thread to its end)
/// and waits, under [`GUARD`], for its first stdout line starting with `prefix` (`""`: any
/// line), naming `what` if none comes. Returns the child (the caller kills it) and that line.
pub fn spawn_until_line(
    cmd: &mut Command,
    prefix: &'static str,
    what: &str,
) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // Drained to the end, so the child never blocks on (or dies of) a closed pipe.
            if line.starts_with(prefix) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(GUARD)
        .unwrap_or_else(|_| panic!("hang guard: {what}"));
    (child, line)
}
