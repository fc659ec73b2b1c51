//! The sidecar as an operator meets it (issue 10 items 7 and 11), through the real binary and
//! a real daemon: files mode's JWT-SVID refreshed at half its lifetime, `--log-format json`
//! report lines, `--signal-pid` sent natively with a clear error, SPIFFE_ENDPOINT_SOCKET errors
//! naming the variable and its value, an error cause said once, and a backend that is down
//! reported in plain words.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
mod sidecar_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::config::{DaemonConfig, entry};
use common::daemon::Proc;
use common::{cli_async, cli_with_endpoint_async, own_uid};
use sidecar_support::{files_args, inbound_args, outbound_args, proxy_addr};

const ME: &str = "spiffe://mesh-a.test/side";

async fn daemon(dir: &Path, ca: &str) -> (Proc, PathBuf) {
    let config = DaemonConfig::new("mesh-a.test")
        .ca(ca)
        .section(&entry(ME, own_uid(), &[]))
        .write(dir);
    (Proc::serve(&config).await, dir.join("workload.sock"))
}

/// A numeric claim of a JWT (unverified; the daemon validates it below).
fn claim(token: &str, name: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims[name].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_keeps_a_jwt_svid_fresh_at_half_its_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path(), "jwt_svid_ttl = \"4s\"").await;
    let out = dir.path().join("out");
    let side = Proc::sidecar(&sock, &[], &files_args(&out, &["--jwt-audience", "db"]));
    let first = side.wait_for_log("wrote a jwt-svid").await;
    assert!(
        first.contains(&format!("of {ME} for audience db")),
        "{first}"
    );
    let token_file = out.join("jwt_svid.token");
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    side.wait_for_nth_log("wrote a jwt-svid", 1).await;
    let renewed = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(token, renewed, "a new token replaced the old one");
    // At half its lifetime: the new token was minted before the old one expired, and after
    // the old one's first half (whole seconds, as in the claims).
    let (iat1, exp1) = (claim(&token, "iat"), claim(&token, "exp"));
    let iat2 = claim(&renewed, "iat");
    assert!(
        iat2 < exp1,
        "renewed at {iat2}, the old token expired at {exp1}"
    );
    assert!(
        iat2 >= iat1 + (exp1 - iat1) / 2 - 1,
        "renewed at {iat2}, too early for {iat1}..{exp1}"
    );

    // The token is a valid JWT-SVID of ours for that audience (ValidateJWTSVID via fetch).
    let sock_s = sock.to_str().unwrap();
    let valid = cli_async(&[
        "fetch",
        "validate",
        "--audience",
        "db",
        &renewed,
        "--socket",
        sock_s,
    ])
    .await;
    assert_eq!(valid.code, 0, "{}", valid.stderr);
    assert!(
        valid.stdout.contains(&format!("valid jwt-svid of {ME}")),
        "{}",
        valid.stdout
    );
    // The X.509 files are written as before.
    assert!(out.join("svid_key.pem").exists());
    assert_eq!(side.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_makes_every_report_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path(), "").await;
    let out = dir.path().join("out");
    let side = Proc::sidecar(&sock, &["--log-format", "json"], &files_args(&out, &[]));
    side.wait_for_log("wrote the svid").await;
    let mut reports = 0;
    for line in side.log().lines() {
        let doc: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if doc["target"] == "meshtrust::sidecar" {
            reports += 1;
            assert_eq!(doc["level"], "INFO", "{line}");
            assert!(doc["timestamp"].is_string(), "{line}");
        }
    }
    assert!(reports >= 2, "svid update and files lines: {}", side.log());
    assert!(
        side.log()
            .contains(r#""message":"svid update: spiffe://mesh-a.test/side"#),
        "{}",
        side.log()
    );
    assert_eq!(side.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_pid_is_signalled_natively_or_says_why_not() {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path(), "").await;

    // A live process gets the signal: `sleep` dies of SIGTERM.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let out = dir.path().join("a");
    let signal_term = ["--signal-pid", &pid, "--signal", "TERM"];
    let side = Proc::sidecar(&sock, &[], &files_args(&out, &signal_term));
    side.wait_for_log(&format!("files: sent SIGTERM to pid {pid}"))
        .await;
    assert_eq!(sleeper.wait().unwrap().signal(), Some(15));
    drop(side);

    // A pid that names no process: a clear line, and the files are written regardless.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id().to_string();
    gone.wait().unwrap();
    let out = dir.path().join("b");
    let side = Proc::sidecar(&sock, &[], &files_args(&out, &["--signal-pid", &gone_pid]));
    let line = side.wait_for_log("cannot send SIGHUP").await;
    assert!(
        line.contains(&format!(
            "to pid {gone_pid}: no process with pid {gone_pid} (has it exited?)"
        )),
        "{line}"
    );
    assert!(out.join("svid.pem").exists());

    // pid 0 (the whole process group) is a usage error.
    let mut argv = vec!["sidecar", "--workload-socket", "/x.sock"];
    argv.extend(files_args(Path::new("/tmp/x"), &["--signal-pid", "0"]));
    cli_async(&argv)
        .await
        .fails_with(64, "invalid value '0' for '--signal-pid <PID>'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_errors_name_the_variable_and_a_cause_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    // A bare path in SPIFFE_ENDPOINT_SOCKET: the variable and its value are named.
    let o = dir.path().join("o");
    let mut argv = vec!["sidecar"];
    argv.extend(files_args(&o, &[]));
    cli_with_endpoint_async(&argv, "/run/nowhere.sock")
        .await
        .fails_with(
            64,
            "SPIFFE_ENDPOINT_SOCKET=\"/run/nowhere.sock\": not a unix: URI",
        );

    // No daemon behind the socket: the retry line says the OS error once.
    let missing = dir.path().join("missing.sock");
    let side = Proc::sidecar(&missing, &[], &files_args(&o, &[]));
    let line = side.wait_for_log("retrying in").await;
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
    assert!(!line.contains("transport error"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_is_reported_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path(), "").await;
    // The inbound proxy forwards to port 1 on the loopback, where nothing listens.
    let down = common::refused_addr();
    let inbound = Proc::sidecar(&sock, &[], &inbound_args(down, &["--allow", ME]));
    let inbound_addr = proxy_addr(&inbound).await.to_string();
    let outbound = Proc::sidecar(&sock, &[], &outbound_args(&inbound_addr, ME));
    let outbound_addr = proxy_addr(&outbound).await;
    inbound.wait_for_log("svid update:").await;
    outbound.wait_for_log("svid update:").await;

    let back = sidecar_support::round_trip(outbound_addr, b"anyone there?").await;
    if let Ok(bytes) = &back {
        assert!(bytes.is_empty(), "no answer can come back: {bytes:?}");
    }
    let line = inbound
        .wait_for_log(&format!("but the local service at {down} is down"))
        .await;
    assert!(
        line.contains("connection refused (nothing listens there)"),
        "{line}"
    );
    // The outbound side's end of that connection: a clean close or an error, in words.
    // (The first line with " to ME " is "connected to ME at ...", the second the end.)
    let ended = outbound.wait_for_nth_log(&format!(" to {ME} "), 1).await;
    assert!(
        ended.contains(" closed (") || ended.contains("the other side"),
        "{ended}"
    );
    for log in [inbound.log(), outbound.log()] {
        assert!(!log.contains("https://"), "no documentation URL: {log}");
        assert!(!log.contains("close_notify"), "no rustls internals: {log}");
    }
}
