//! Operating a running `meshtrust serve` (the real binary), as issue 10 asks: a refused caller is
//! named in the log (rate-limited per caller) and counted; `status` shows the entries in force
//! and the last reload, which is all or nothing; `federation reset` fetches before it swaps
//! (`--force` drops first); admin commands find the socket from `--config`; folders above
//! data_dir are made like `mkdir -p`; the ready line prints plain addresses.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Instant;

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::grpc::{next, with_header, workload_client, x509_bundles};
use common::http::{Curl, curl_program, parse_x509_bundles, workload_get_async};
use common::mesh::Mesh;
use common::{cli_async, own_uid, status_json, wait_for_peer};
use meshtrust::workload_api::proto::X509svidRequest;
use serde_json::json;

fn own_gid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().gid()
}

/// Issue 10 item 1 (Workload Endpoint §5.3: a caller with no identity gets PermissionDenied):
/// the refusal is logged with the caller's pid, uid, gid and executable and "no entry
/// matches", once per caller per window however often it retries; another caller gets its own
/// line; every refusal is counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_caller_is_named_in_one_log_line_per_caller_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Only another uid has an entry: this process matches none.
    let config = DaemonConfig::new("mesh-a.test")
        .metrics()
        .section(&common::config::entry(
            "spiffe://mesh-a.test/other",
            own_uid().wrapping_add(4242),
            &[],
        ))
        .write(dir.path());
    let daemon = Proc::serve(&config).await;
    let socket = dir.path().join("workload.sock");
    let addr = common::metrics::listen_addr(&daemon).await;

    let refused = "workload api caller refused: no entry matches";
    let fetch = || async {
        let mut client = workload_client(&socket).await;
        let answer = common::guard(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
        // Refused at once, or (should the stream open first) by its first message.
        let status = match answer {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                match common::guard(stream.message()).await {
                    Err(status) => status,
                    Ok(m) => panic!("a caller with no entry got {m:?}"),
                }
            }
        };
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    };
    fetch().await;
    let first = Instant::now();
    let line = daemon.wait_for_log(refused).await;
    let exe = std::env::current_exe().unwrap();
    for field in [
        format!("pid={}", std::process::id()),
        format!("uid={}", own_uid()),
        format!("gid={}", own_gid()),
        format!("exe={}", exe.display()),
        "reason=\"no_identity\"".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} in {line}");
    }

    // A loop of the same caller: one line per 10 s window, however many refusals.
    for _ in 0..20 {
        fetch().await;
    }
    let ours = daemon
        .log()
        .lines()
        .filter(|l| l.contains(refused) && l.contains(&format!("exe={}", exe.display())))
        .count();
    let windows = usize::try_from(first.elapsed().as_secs() / 10).unwrap() + 1;
    assert!(
        ours <= windows,
        "{ours} lines in {windows} window(s):\n{}",
        daemon.log()
    );

    // Another caller (curl over the JSON view) is named in its own line at once.
    let reply = Curl::get(&socket, "/v1/x509-svid").send().await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    let curl = daemon
        .wait_for_log(&format!("exe={}", curl_program().display()))
        .await;
    assert!(curl.contains(refused), "{curl}");

    // Every refusal is counted by reason, logged or not.
    let family = "meshtrust_workload_api_refused_connections_total";
    let series = format!(r#"{family}{{reason="no_identity"}}"#);
    let scrape = common::metrics::scrape(&addr);
    assert!(
        scrape.value(family, "counter", &series) >= 22.0,
        "{}",
        scrape.text
    );
    assert_eq!(daemon.stop().code(), Some(0));
}

/// Issue 10 item 2: `status` shows the entries in force and the last reload; a SIGHUP that
/// cannot apply fully (a new peer whose bootstrap bundle is missing, with an entry federating
/// with it; a section that needs a restart) applies nothing and says why; a good one applies.
/// Item 10: `status --config FILE` reads the admin socket from the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_entries_and_the_last_reload_and_a_reload_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.sock");
    let socket = dir.path().join("workload.sock");
    let base = DaemonConfig::new("mesh-a.test").entry("spiffe://mesh-a.test/first", &[]);
    let config = base.write(dir.path());
    let daemon = Proc::serve(&config).await;
    let selector = format!("unix:uid:{}", own_uid());

    let status = status_json(&admin).await;
    assert_eq!(
        status["entries"],
        json!([{"spiffe_id": "spiffe://mesh-a.test/first", "selectors": [selector],
                "federates_with": [], "node": null, "hint": null}])
    );
    assert!(status["last_reload"].is_null(), "{status}");

    // A new peer whose bootstrap bundle does not exist, and an entry federating with it.
    base.clone()
        .entry("spiffe://mesh-a.test/second", &["mesh-b.test"])
        .peer("mesh-b.test", &common::refused_url(), None, true)
        .write(dir.path());
    daemon.signal("HUP");
    daemon.wait_for_log("config reload refused").await;
    let status = status_json(&admin).await;
    let reload = &status["last_reload"];
    assert_eq!(reload["outcome"], "refused", "{status}");
    let error = reload["error"].as_str().unwrap();
    assert!(
        error.contains("mesh-b.test.json") && error.contains("nothing applied"),
        "{error}"
    );
    assert!(reload["at"].as_str().unwrap().ends_with('Z'), "{reload}");
    assert_eq!(status["entries"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["federation"], json!([]), "{status}");
    // The Workload API serves the running entries only.
    let reply = workload_get_async(&socket, "/v1/x509-svid").await;
    assert!(
        !reply.body.contains("spiffe://mesh-a.test/second"),
        "{reply:?}"
    );

    // A change that needs a restart (a metrics listener) applies nothing either.
    base.clone()
        .entry("spiffe://mesh-a.test/second", &[])
        .metrics()
        .write(dir.path());
    daemon.signal("HUP");
    daemon.wait_for_nth_log("config reload refused", 1).await;
    let status = status_json(&admin).await;
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("metrics") && error.contains("restart"),
        "{error}"
    );
    assert_eq!(status["entries"].as_array().unwrap().len(), 1, "{status}");

    // A config that can apply fully is applied.
    base.clone()
        .entry("spiffe://mesh-a.test/second", &[])
        .write(dir.path());
    daemon.signal("HUP");
    daemon.wait_for_log("config reloaded").await;
    let status = status_json(&admin).await;
    assert_eq!(status["last_reload"]["outcome"], "applied", "{status}");
    assert!(status["last_reload"]["error"].is_null(), "{status}");
    let ids: Vec<&str> = status["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["spiffe://mesh-a.test/first", "spiffe://mesh-a.test/second"]
    );
    let reply = workload_get_async(&socket, "/v1/x509-svid").await;
    assert!(
        reply.body.contains("spiffe://mesh-a.test/second"),
        "{reply:?}"
    );

    // The text form, found through the config file: aligned columns, the entries, the reload.
    let out = cli_async(&["status", "--config", config.to_str().unwrap()]).await;
    out.ok()
        .prints("last reload   applied at ")
        .prints("\n2 entries\n")
        .prints("0 federation peers");
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("spiffe://mesh-a.test/") || l.contains("SPIFFE ID"))
        .collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    let column = |l: &str| l.find(&selector).or_else(|| l.find("SELECTORS")).unwrap();
    assert!(
        rows.iter().all(|r| column(r) == column(rows[0])),
        "aligned: {}",
        out.stdout
    );
    assert!(out.stdout.contains("1 authority "), "{}", out.stdout);
    assert_eq!(daemon.stop().code(), Some(0));
}

/// Issue 10 item 9 (SPIFFE.md "Decisions": the operator can reset a relationship): a reset
/// fetches with the bootstrap bundle first and swaps only on success, so a reset that fails
/// (the peer lost its state and the bootstrap bundle is the old one) changes nothing and no
/// workload sees the peer's bundle go; once the new bundle is in place the reset replaces the
/// pinned bundle in one update. `--force` still forgets first. Item 3: the UnknownIssuer in the
/// status carries a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_fetches_before_it_swaps_and_force_drops_first() {
    common::init();
    let root = tempfile::tempdir().unwrap();
    let mut b = Mesh::alone(root.path(), "mesh-b").await;
    let kept = b.keep_port();
    let db = b.start().await;
    let ca1 = db.ca.snapshot().bundle.x509_authorities.clone();

    let a_dir = root.path().join("mesh-a");
    let config = DaemonConfig::new("mesh-a.test")
        .entry("spiffe://mesh-a.test/w", &["mesh-b.test"])
        .peer("mesh-b.test", &b.url(), None, true)
        .write(&a_dir);
    b.write_bootstrap_into(&a_dir);
    let daemon = Proc::serve(&config).await;
    let (admin, workload) = (a_dir.join("admin.sock"), a_dir.join("workload.sock"));
    wait_for_peer(&admin, "mesh-b.test", "mesh-a pins mesh-b", |p| {
        p["state"] == "ok"
    })
    .await;
    let mut stream = x509_bundles(&workload).await;
    let first = loop {
        let m = next(&mut stream).await;
        if m.bundles.contains_key("spiffe://mesh-b.test") {
            break m;
        }
    };
    let der = |certs: &[rustls_pki_types::CertificateDer<'static>]| -> Vec<u8> {
        certs.iter().flat_map(|c| c.to_vec()).collect()
    };
    assert_eq!(first.bundles["spiffe://mesh-b.test"], der(&ca1));

    // mesh-b loses its state: a new CA on the same port.
    db.shutdown().await;
    std::fs::remove_dir_all(b.dir.join("data")).unwrap();
    b.reuse_port(&kept);
    let db = b.start().await;
    let ca2 = db.ca.snapshot().bundle.x509_authorities.clone();
    assert_ne!(ca1, ca2);
    let failing = wait_for_peer(&admin, "mesh-b.test", "the pinned CA fails", |p| {
        p["state"] == "failing"
    })
    .await;
    let error = failing["last_error"].as_str().unwrap();
    // UnknownIssuer, or BadSignature when the new CA has the old one's name.
    assert!(
        error.contains("tls: invalid peer certificate") && error.contains("hint:"),
        "{error}"
    );
    assert!(
        error.contains("`meshtrust federation reset mesh-b.test`"),
        "{error}"
    );

    // Reset on the old bootstrap bundle: the fetch fails and nothing changes.
    let cfg = config.to_str().unwrap();
    let reset = ["federation", "reset", "mesh-b.test", "--config", cfg];
    cli_async(&reset)
        .await
        .fails_with(1, "mesh-b.test: reset not done, nothing changed")
        .fails_with(
            1,
            "hint: the endpoint's certificate is not signed by a CA of the bootstrap bundle",
        );
    let served = parse_x509_bundles(&workload_get_async(&workload, "/v1/x509-bundles").await);
    assert_eq!(served["spiffe://mesh-b.test"], ca1, "still pinned");

    // The operator puts mesh-b's new bundle in place: the reset replaces the pinned bundle.
    b.write_bootstrap_into(&a_dir);
    cli_async(&reset)
        .await
        .ok()
        .prints("replaced the pinned bundle; bundle updated")
        .prints("1 authority)");
    // The stream's very next message holds the new CA: it never saw mesh-b's bundle go.
    let m = next(&mut stream).await;
    assert_eq!(m.bundles["spiffe://mesh-b.test"], der(&ca2));

    // `--force` (peer down): the pinned bundle is forgotten first, and workloads see it go.
    db.shutdown().await;
    drop(kept);
    let admin_arg = admin.to_str().unwrap();
    let force = [
        "federation",
        "reset",
        "mesh-b.test",
        "--force",
        "--admin-socket",
        admin_arg,
    ];
    cli_async(&force)
        .await
        .fails_with(1, "reset, pinned bundle forgotten; but the fetch failed");
    let m = next(&mut stream).await;
    assert!(
        !m.bundles.contains_key("spiffe://mesh-b.test"),
        "{:?}",
        m.bundles.keys()
    );
    assert_eq!(daemon.stop().code(), Some(0));
}

/// Issue 10 item 3: a bootstrap bundle handed over by the wrong mesh (its CA is another trust
/// domain's) is refused at start, naming the trust domain it is from. Item 5: only data_dir is
/// 0700; the folder above it is made like `mkdir -p`. Item 12: the ready line prints the plain
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_bootstrap_bundle_is_named_at_start_and_folders_above_data_dir_stay_open() {
    let root = tempfile::tempdir().unwrap();
    let bs = DaemonConfig::new("bs.test").write(&root.path().join("bs"));
    let shown = cli_async(&["bundle", "show", "--config", bs.to_str().unwrap()]).await;
    shown.ok();

    let a_dir = root.path().join("a");
    let wrong = DaemonConfig::new("mesh-a.test")
        .peer("mesh-b.test", &common::refused_url(), None, true)
        .write(&a_dir);
    std::fs::write(a_dir.join("peers/mesh-b.test.json"), &shown.stdout).unwrap();
    let out = cli_async(&["serve", "--config", wrong.to_str().unwrap()]).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("is this bs.test's bundle? its CA is spiffe://bs.test"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mesh-b.test.json"), "{}", out.stderr);

    // data_dir two levels down, the workload socket beside it: `m` is made like `mkdir -p`.
    let c_dir = root.path().join("c");
    std::fs::create_dir_all(&c_dir).unwrap();
    let text = DaemonConfig::new("mesh-c.test")
        .bundle_endpoint(0, "5m")
        .text()
        .replace("data_dir = \"data\"", "data_dir = \"m/data\"")
        .replace("socket = \"workload.sock\"", "socket = \"m/w.sock\"");
    let config = c_dir.join("meshtrust.toml");
    std::fs::write(&config, text).unwrap();
    let daemon = Proc::serve(&config).await;
    let reference = c_dir.join("made-by-the-test");
    std::fs::create_dir(&reference).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&c_dir.join("m/data")), 0o700);
    assert_eq!(mode(&c_dir.join("m")), mode(&reference), "like mkdir -p");
    let ready = daemon.wait_for_log(common::daemon::READY).await;
    assert!(ready.contains("bundle_endpoint=127.0.0.1:"), "{ready}");
    assert!(!ready.contains("Some("), "{ready}");
    assert_eq!(daemon.stop().code(), Some(0));
}
