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
use common::{cli_async, own_uid};

const ME: &str = "spiffe://mesh-a.test/fetcher";

/// A daemon of mesh-a.test with an entry for this process.
async fn daemon(dir: &Path) -> Proc {
    let config = DaemonConfig::new("mesh-a.test")
        .section(&format!("{}hint = \"main\"\n", entry(ME, own_uid(), &[])))
        .write(dir);
    Proc::serve(&config).await
}

fn socket(dir: &Path) -> String {
    dir.join("workload.sock").to_str().unwrap().to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_prints_what_the_workload_api_served() {
    let dir = tempfile::tempdir().unwrap();
    let _d = daemon(dir.path()).await;
    let sock = socket(dir.path());

    let out = cli_async(&["fetch", "x509", "--socket", &sock]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("x509-svid {ME} (hint \"main\"): expires ")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("bundle spiffe://mesh-a.test: 1 authority(ies)"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("PRIVATE KEY"),
        "keys never go to stdout: {}",
        out.stdout
    );

    // --json: the SVID's ID and expiry, the CA's fingerprint, as in `status`.
    let out = cli_async(&["fetch", "x509", "--json", "--socket", &sock]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
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
    let out = cli_async(&["fetch", "bundles", "--json", "--socket", &uri]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        doc["bundles"]["spiffe://mesh-a.test"][0]["sha256"],
        fingerprint.as_str()
    );

    // jwt-bundles: the JWKS of our trust domain, one EC key.
    let out = cli_async(&["fetch", "jwt-bundles", "--json", "--socket", &sock]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let keys = doc["bundles"]["spiffe://mesh-a.test"]["keys"]
        .as_array()
        .unwrap();
    assert_eq!(keys.len(), 1, "{doc}");
    assert_eq!(keys[0]["kty"], "EC");

    // jwt for two audiences, then validated back through ValidateJWTSVID (argument and stdin).
    let out = cli_async(&[
        "fetch",
        "jwt",
        "--audience",
        "a",
        "--audience",
        "b",
        "--json",
        "--socket",
        &sock,
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["svids"][0]["spiffe_id"], ME);
    assert_eq!(doc["svids"][0]["hint"], "main");
    let token = doc["svids"][0]["token"].as_str().unwrap().to_owned();
    let out = cli_async(&[
        "fetch",
        "validate",
        "--audience",
        "b",
        &token,
        "--json",
        "--socket",
        &sock,
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
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
    let _d = daemon(dir.path()).await;
    let sock = socket(dir.path());
    let out_dir = dir.path().join("out");
    let out_s = out_dir.to_str().unwrap();

    let out = cli_async(&["fetch", "x509", "--write", out_s, "--socket", &sock]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
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

    let out = cli_async(&[
        "fetch",
        "jwt",
        "--audience",
        "x",
        "--write",
        out_s,
        "--socket",
        &sock,
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(&out_dir.join("jwt_svid.token")), 0o600);
    let token = std::fs::read_to_string(out_dir.join("jwt_svid.token")).unwrap();
    assert!(
        out.stdout.contains(&token),
        "the printed token is the written one"
    );

    let out = cli_async(&["fetch", "bundles", "--write", out_s, "--socket", &sock]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pem = std::fs::read(out_dir.join("mesh-a.test.pem")).unwrap();
    assert_eq!(
        meshtrust::bundle::pem::parse_certs_pem(&pem).unwrap(),
        bundle
    );
    let out = cli_async(&["fetch", "jwt-bundles", "--write", out_s, "--socket", &sock]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
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
        let mut args = vec!["fetch"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["--socket", &sock]);
        let out = cli_async(&args).await;
        assert_eq!(out.code, 1, "{what:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("refused by the workload api: no identity issued"),
            "{what:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_exits_1_and_usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.sock");
    let out = cli_async(&["fetch", "x509", "--socket", missing.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach the workload api at"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("No such file or directory"),
        "{}",
        out.stderr
    );

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
    let out = cli_async(&["fetch", "x509"]).await;
    assert!(
        out.stderr
            .contains("pass --socket or set SPIFFE_ENDPOINT_SOCKET"),
        "{}",
        out.stderr
    );

    // A bad SPIFFE_ENDPOINT_SOCKET is named with its value.
    let out = tokio::process::Command::new(common::bin())
        .args(["fetch", "x509"])
        .env("SPIFFE_ENDPOINT_SOCKET", "tcp://127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "SPIFFE_ENDPOINT_SOCKET=\"tcp://127.0.0.1:1\": tcp endpoints are not supported"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_comes_from_spiffe_endpoint_socket() {
    let dir = tempfile::tempdir().unwrap();
    let _d = daemon(dir.path()).await;
    let out = tokio::process::Command::new(common::bin())
        .args(["fetch", "x509"])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", socket(dir.path())),
        )
        .output();
    let out = common::guard(out).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(ME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_an_identity_added_by_sighup_then_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path()).await;
    let sock = socket(dir.path());
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
    let out = cli_async(&[
        "fetch",
        "x509",
        "--timeout",
        "1s",
        "--socket",
        path.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no answer from the workload api within 1s"),
        "{}",
        out.stderr
    );
    held.abort();
}
