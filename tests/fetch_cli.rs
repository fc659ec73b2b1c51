//! `meshtrust fetch` through the real binary against a real daemon (`meshtrust serve`): each
//! mode, `--json`, `--write` and its file modes, `--watch` following a SIGHUP-added identity,
//! a refused caller (exit 1 with the server's reason), usage errors (exit 64). SPIFFE.md §3
//! (Workload API) and 1.6.5 (SPIFFE_ENDPOINT_SOCKET).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;

use common::config::{DaemonConfig, entry};
use common::daemon::Proc;
use common::{cli_async, cli_with_endpoint_async, own_uid};

const ME: &str = "spiffe://mesh-a.test/fetcher";

/// A daemon of mesh-a.test in `dir` with an entry for this process; its Workload API socket.
async fn daemon(dir: &Path) -> (Proc, String) {
    let config = DaemonConfig::new("mesh-a.test")
        .section(&format!("{}hint = \"main\"\n", entry(ME, own_uid(), &[])))
        .write(dir);
    (Proc::serve(&config).await, socket(dir))
}

fn socket(dir: &Path) -> String {
    dir.join("workload.sock").to_str().unwrap().to_owned()
}

/// `meshtrust fetch ARGS --socket SOCKET`.
async fn fetch(args: &[&str], socket: &str) -> common::CliOutput {
    let mut argv = vec!["fetch"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--socket", socket]);
    cli_async(&argv).await
}

/// `meshtrust fetch ARGS --json --socket SOCKET`, which must succeed: the document it printed.
async fn fetch_json(args: &[&str], socket: &str) -> serde_json::Value {
    let mut argv = args.to_vec();
    argv.push("--json");
    let out = fetch(&argv, socket).await;
    serde_json::from_str(&out.ok().stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_prints_what_the_workload_api_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path()).await;

    let out = fetch(&["x509"], &sock).await;
    out.ok()
        .prints(&format!("x509-svid {ME} (hint \"main\"): expires "))
        .prints("bundle spiffe://mesh-a.test: 1 authority(ies)");
    assert!(
        !out.stdout.contains("PRIVATE KEY"),
        "keys never go to stdout: {}",
        out.stdout
    );

    // --json: the SVID's ID and expiry, the CA's fingerprint, as in `status`.
    let doc = fetch_json(&["x509"], &sock).await;
    assert_eq!(doc["svids"][0]["spiffe_id"], ME);
    assert!(
        doc["svids"][0]["expires_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let fingerprint = doc["bundles"]["spiffe://mesh-a.test"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 64, "{doc}");

    // bundles: the same CA, by the same fingerprint; the URI form of the socket works too.
    let uri = format!("unix://{sock}");
    let doc = fetch_json(&["bundles"], &uri).await;
    assert_eq!(
        doc["bundles"]["spiffe://mesh-a.test"][0]["sha256"],
        fingerprint.as_str()
    );

    // jwt-bundles: the JWKS of our trust domain, one EC key.
    let doc = fetch_json(&["jwt-bundles"], &sock).await;
    let keys = doc["bundles"]["spiffe://mesh-a.test"]["keys"]
        .as_array()
        .unwrap();
    assert_eq!(keys.len(), 1, "{doc}");
    assert_eq!(keys[0]["kty"], "EC");

    // jwt for two audiences, then validated back through ValidateJWTSVID (argument and stdin).
    let doc = fetch_json(&["jwt", "--audience", "a", "--audience", "b"], &sock).await;
    assert_eq!(doc["svids"][0]["spiffe_id"], ME);
    assert_eq!(doc["svids"][0]["hint"], "main");
    let token = doc["svids"][0]["token"].as_str().unwrap().to_owned();
    let doc = fetch_json(&["validate", "--audience", "b", &token], &sock).await;
    assert_eq!(doc["spiffe_id"], ME);
    assert_eq!(doc["claims"]["aud"], serde_json::json!(["a", "b"]));
    let mut child = tokio::process::Command::new(common::bin())
        .args(["fetch", "validate", "--audience", "c", "--socket", &sock])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(token.as_bytes()).await.unwrap();
    }
    let out = common::guard(child.wait_with_output()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("token audience does not include \"c\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_puts_keys_and_tokens_in_0600_files() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path()).await;
    let out_dir = dir.path().join("out");
    let out_s = out_dir.to_str().unwrap();

    fetch(&["x509", "--write", out_s], &sock).await.ok();
    assert_eq!(mode(&out_dir.join("svid_key.pem")), 0o600);
    assert_eq!(mode(&out_dir.join("svid.pem")), 0o644);
    assert_eq!(mode(&out_dir.join("bundle.pem")), 0o644);
    let key = std::fs::read_to_string(out_dir.join("svid_key.pem")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    // The written chain is the SVID served: its URI SAN is ours, and it verifies against the
    // written bundle (openssl, an independent verifier).
    let chain =
        meshtrust::bundle::pem::parse_certs_pem(&std::fs::read(out_dir.join("svid.pem")).unwrap())
            .unwrap();
    assert_eq!(common::uri_sans(&chain[0]), [ME]);
    let bundle = meshtrust::bundle::pem::parse_certs_pem(
        &std::fs::read(out_dir.join("bundle.pem")).unwrap(),
    )
    .unwrap();
    let (ok, text) = common::openssl_verify(dir.path(), &bundle, &chain[0], "sslclient");
    assert!(ok, "{text}");

    let out = fetch(&["jwt", "--audience", "x", "--write", out_s], &sock).await;
    out.ok();
    assert_eq!(mode(&out_dir.join("jwt_svid.token")), 0o600);
    let token = std::fs::read_to_string(out_dir.join("jwt_svid.token")).unwrap();
    assert!(
        out.stdout.contains(&token),
        "the printed token is the written one"
    );

    fetch(&["bundles", "--write", out_s], &sock).await.ok();
    let pem = std::fs::read(out_dir.join("mesh-a.test.pem")).unwrap();
    assert_eq!(
        meshtrust::bundle::pem::parse_certs_pem(&pem).unwrap(),
        bundle
    );
    fetch(&["jwt-bundles", "--write", out_s], &sock).await.ok();
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("mesh-a.test.jwks.json")).unwrap())
            .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    // Every write went through a temporary file renamed into place: none is left over.
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_an_entry_exits_1_with_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    // The only entry is for another uid: this process matches none.
    let config = DaemonConfig::new("mesh-a.test")
        .section(&entry(ME, own_uid() + 1, &[]))
        .write(dir.path());
    let _d = Proc::serve(&config).await;
    let sock = socket(dir.path());
    for what in [
        &["x509"][..],
        &["bundles"],
        &["jwt-bundles"],
        &["jwt", "--audience", "a"],
    ] {
        let out = fetch(what, &sock).await;
        out.fails_with(1, "refused by the workload api: no identity issued");
        assert!(out.stdout.is_empty(), "{what:?}: {}", out.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_exits_1_and_usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.sock");
    fetch(&["x509"], missing.to_str().unwrap())
        .await
        .fails_with(1, "cannot reach the workload api at")
        .fails_with(1, "No such file or directory");

    // No audience, no socket, an unknown mode, --watch on a unary call: 64.
    for args in [
        &["fetch", "jwt", "--socket", "/x.sock"][..],
        &["fetch", "x509"],
        &["fetch", "certs", "--socket", "/x.sock"],
        &[
            "fetch",
            "jwt",
            "--audience",
            "a",
            "--watch",
            "--socket",
            "/x.sock",
        ],
        &["fetch", "jwt", "--audience", "", "--socket", "/x.sock"],
    ] {
        let out = cli_async(args).await;
        assert_eq!(out.code, 64, "{args:?}: {}", out.stderr);
    }
    cli_async(&["fetch", "x509"])
        .await
        .fails_with(64, "pass --socket or set SPIFFE_ENDPOINT_SOCKET");

    // A bad SPIFFE_ENDPOINT_SOCKET is named with its value.
    cli_with_endpoint_async(&["fetch", "x509"], "tcp://127.0.0.1:1")
        .await
        .fails_with(
            64,
            "SPIFFE_ENDPOINT_SOCKET=\"tcp://127.0.0.1:1\": tcp endpoints are not supported",
        );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_comes_from_spiffe_endpoint_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path()).await;
    let endpoint = format!("unix://{sock}");
    cli_with_endpoint_async(&["fetch", "x509"], &endpoint)
        .await
        .ok()
        .prints(ME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_an_identity_added_by_sighup_then_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path()).await;
    let out_dir = dir.path().join("watched");
    let watch = Proc::spawn_with(
        &[
            "fetch",
            "x509",
            "--watch",
            "--json",
            "--socket",
            &sock,
            "--write",
            out_dir.to_str().unwrap(),
        ],
        |c| {
            c.stdout(Stdio::piped());
        },
    );
    let first = watch.wait_for_log("\"svids\"").await;
    assert!(first.contains(ME) && !first.contains("/second"), "{first}");

    // A second identity for the same uid, applied by SIGHUP: the stream sends the new state.
    let second = "spiffe://mesh-a.test/second";
    DaemonConfig::new("mesh-a.test")
        .section(&format!("{}hint = \"main\"\n", entry(ME, own_uid(), &[])))
        .section(&format!(
            "{}hint = \"second\"\n",
            entry(second, own_uid(), &[])
        ))
        .write(dir.path());
    d.signal("HUP");
    let update = watch.wait_for_log(second).await;
    let doc: serde_json::Value = serde_json::from_str(&update).unwrap();
    assert_eq!(doc["svids"].as_array().unwrap().len(), 2, "{doc}");
    // The update was written too: the second SVID's files beside the first's.
    common::eventually("the second svid is written", || {
        out_dir.join("svid_key.1.pem").exists()
    })
    .await;
    assert_eq!(mode(&out_dir.join("svid_key.1.pem")), 0o600);

    watch.signal("INT");
    let mut watch = watch;
    assert_eq!(watch.wait_exit().code(), Some(0), "{}", watch.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_answers_fails_the_health_check_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stuck.sock");
    // Accepts connections and never says a word.
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (c, _) = listener.accept().await.unwrap();
            conns.push(c);
        }
    });
    fetch(&["x509", "--timeout", "1s"], path.to_str().unwrap())
        .await
        .fails_with(1, "no answer from the workload api within 1s");
    held.abort();
}
