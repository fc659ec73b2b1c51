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
mod sidecar_support;

use std::path::PathBuf;
use std::sync::Arc;

use common::eventually;
use common::mesh::Mesh;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sidecar_support::*;

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
    // The workload to tell: a shell that counts SIGHUPs (the trap runs between short sleeps).
    // It says when its trap is set: a SIGHUP before that would kill it (the default action).
    let hups = root.path().join("hups");
    let trapped = root.path().join("trapped");
    let mut workload = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; : > {}; while :; do sleep 0.1; done",
            hups.display(),
            trapped.display()
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the workload's SIGHUP trap is set", || trapped.exists()).await;
    let pid = workload.id().unwrap().to_string();
    let hook_log = root.path().join("hook.log");
    let hook = format!("echo \"$MESHTRUST_FILES_DIR\" >> '{}'", hook_log.display());
    let sidecar = Sidecar::start(
        &da.workload_socket,
        &files_args(
            &out,
            &[
                "--on-update",
                &hook,
                "--signal-pid",
                &pid,
                "--signal",
                "HUP",
            ],
        ),
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
    eventually("a leaf from the rotated CA is written", || {
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
    // After each update: the --on-update command ran with the folder in its environment, and
    // the workload got SIGHUP.
    let hook_runs = std::fs::read_to_string(&hook_log).unwrap();
    assert!(hook_runs.lines().count() >= 2, "{hook_runs}");
    assert!(
        hook_runs.lines().all(|l| l == out.to_str().unwrap()),
        "{hook_runs}"
    );
    eventually("the workload got SIGHUP", || {
        std::fs::read_to_string(&hups).is_ok_and(|t| t.lines().count() >= 2)
    })
    .await;
    sidecar.stop().await;
    let _ = workload.kill().await;
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
        &inbound_args(&echo, &["--allow", "spiffe://mesh-a.test/frontend"]),
    );
    let closed = Sidecar::start(
        &b_sock,
        &inbound_args(
            &echo,
            &[
                "--allow",
                "spiffe://mesh-a.test/someone-else",
                "--allow-trust-domain",
                "mesh-c.test",
            ],
        ),
    );
    let open_addr = open.listen_addr().await.to_string();
    let closed_addr = closed.listen_addr().await.to_string();
    let echo_id = "spiffe://mesh-b.test/echo";
    let caller = Sidecar::start(&a_sock, &outbound_args(&open_addr, echo_id));
    let refused_caller = Sidecar::start(&a_sock, &outbound_args(&closed_addr, echo_id));
    let wrong_expectation = Sidecar::start(
        &a_sock,
        &outbound_args(&open_addr, "spiffe://mesh-b.test/not-echo"),
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
    assert_refused(&refused_caller, &closed, b"let me in", |l| {
        l.starts_with("inbound: refused")
    })
    .await
    .contains_or_panic("spiffe://mesh-a.test/frontend is not allowed");
    // The server is authentic but not the expected ID: the outbound proxy refuses it.
    assert_refused(&wrong_expectation, &wrong_expectation, b"hello?", |l| {
        l.contains(" refused ")
    })
    .await
    .contains_or_panic("spiffe://mesh-b.test/echo is not allowed");

    for s in [open, closed, caller, refused_caller, wrong_expectation] {
        s.stop().await;
    }
    m.da.shutdown().await;
    m.db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_speaks_mtls_across_the_meshes_with_the_written_files() {
    let m = two_meshes().await;
    let out = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (out.path().join("a"), out.path().join("b"));
    let fa = Sidecar::start(&m.da.workload_socket, &files_args(&dir_a, &[]));
    let fb = Sidecar::start(&m.db.workload_socket, &files_args(&dir_b, &[]));
    eventually("both sidecars wrote the peer's bundle", || {
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

/// Sends `msg` through the outbound proxy `caller`: no answer comes back, and `logger` logs a
/// refusal line matching `is_refusal`, which is returned.
async fn assert_refused(
    caller: &Sidecar,
    logger: &Sidecar,
    msg: &[u8],
    is_refusal: impl Fn(&str) -> bool,
) -> String {
    assert_no_answer(round_trip(caller.listen_addr().await, msg).await);
    logger.wait_line("the refusal is logged", is_refusal).await
}

trait ContainsOrPanic {
    fn contains_or_panic(&self, needle: &str);
}

impl ContainsOrPanic for String {
    fn contains_or_panic(&self, needle: &str) {
        assert!(self.contains(needle), "{needle:?} not in {self:?}");
    }
}

/// A refused connection gets no answer: closed empty, or reset (never another error, such as
/// the proxy not listening at all).
fn assert_no_answer(back: std::io::Result<Vec<u8>>) {
    match back {
        Ok(bytes) => assert!(bytes.is_empty(), "an answer came back: {bytes:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
}

#[test]
fn the_command_line_refuses_bad_addresses_and_empty_policies_with_exit_64() {
    // Workload Endpoint 1.6.5 (strict unix: URIs), an inbound proxy never allows everyone, and
    // an outbound proxy expects a workload ID. (args, SPIFFE_ENDPOINT_SOCKET, the reason given)
    let files = ["sidecar", "files", "--out", "/nonexistent"].as_slice();
    let inbound = [
        "sidecar",
        "inbound",
        "--listen",
        "127.0.0.1:0",
        "--forward",
        "127.0.0.1:1",
    ];
    let outbound = [
        "sidecar",
        "outbound",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        "127.0.0.1:1",
        "--expect",
        "spiffe://mesh-b.test",
    ];
    let cases = [
        (files, "unix://host/x.sock", "authority"),
        (
            files,
            "tcp://127.0.0.1:1",
            "tcp endpoints are not supported",
        ),
        (
            inbound.as_slice(),
            "unix:///nonexistent.sock",
            "nothing is allowed",
        ),
        (
            outbound.as_slice(),
            "unix:///nonexistent.sock",
            "SPIFFE ID has no path",
        ),
    ];
    for (args, endpoint, reason) in cases {
        eprintln!("{args:?} with SPIFFE_ENDPOINT_SOCKET={endpoint}");
        common::cli_with_endpoint(args, endpoint).fails_with(64, reason);
    }
}
