//! `SIGHUP` reloads the registration entries of a running `meshtrust serve` (the real binary):
//! a workload gains its identity without a restart, a broken config changes nothing, and the
//! daemon keeps serving throughout.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(config: &Path, entries: &str) {
    std::fs::write(
        config,
        format!(
            r#"trust_domain = "mesh-a.test"
data_dir = "data"
[workload_api]
socket = "workload.sock"
[admin_api]
socket = "admin.sock"
{entries}"#
        ),
    )
    .unwrap();
}

/// `GET /v1/x509-svid` on the JSON view: (HTTP status, body).
fn x509_svid(socket: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .args([
            "-H",
            "workload.spiffe.io: true",
            "http://localhost/v1/x509-svid",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn hup(child: &Child) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Polls until `f` holds; a hang guard, not a timing assertion.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_applies_new_entries_and_a_broken_config_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meshtrust.toml");
    let socket = dir.path().join("workload.sock");
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    write(&config, "");
    let mut child = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The daemon's log lines, to see each reload's outcome.
    let (tx, logs) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_log = |needle: &str| loop {
        let line = logs
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no log line with {needle:?}: {e}"));
        if line.contains(needle) {
            return line;
        }
    };
    let daemon = Serve(child);
    // No entry for us yet: 403 (Workload Endpoint: no identity = PermissionDenied).
    eventually("the workload socket answers", || {
        x509_svid(&socket).0 == 403
    });

    write(
        &config,
        &format!(
            "[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/reloaded\"\nselectors = [\"unix:uid:{uid}\"]\n"
        ),
    );
    hup(&daemon.0);
    eventually("the new entry is served", || {
        let (code, body) = x509_svid(&socket);
        code == 200 && body.contains("spiffe://mesh-a.test/reloaded")
    });

    // A broken config (an unknown key) is refused: the daemon keeps serving the last good one.
    std::fs::write(&config, "trust_domain = \"mesh-a.test\"\nbogus = 1\n").unwrap();
    hup(&daemon.0);
    let refused = wait_log("config reload refused");
    assert!(
        refused.contains("bogus"),
        "the log names the key at fault: {refused}"
    );
    let (code, body) = x509_svid(&socket);
    assert_eq!(code, 200, "still serving after a broken reload: {body}");
    assert!(body.contains("spiffe://mesh-a.test/reloaded"));

    write(&config, "");
    hup(&daemon.0);
    eventually("the removed entry is no longer served", || {
        x509_svid(&socket).0 == 403
    });
}

/// A `[[federation]]` peer added by a reload starts fetching and its bundle reaches workloads;
/// removed by the next reload, its fetcher stops and its bundle leaves them (in-process daemons
/// so the reload is driven directly; `SIGHUP` calls the same `Daemon::reload`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_federation_relationship() {
    use common::mesh::{Mesh, eventually};
    use meshtrust::spiffe_id::TrustDomain;

    common::init();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let entry = format!(
        "[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/w\"\nselectors = [\"unix:uid:{uid}\"]\nfederates_with = [\"*\"]\n"
    );
    let root = tempfile::tempdir().unwrap();
    let mut a = Mesh::new(root.path(), "mesh-a").await;
    let mut b = Mesh::new(root.path(), "mesh-b").await;
    a.write_config("", "1s", None, &entry);
    b.write_config("", "1s", None, "");
    b.give_bootstrap_to(&a);
    let db = b.start().await;
    let mut da = a.start().await;
    let td_b = TrustDomain::new("mesh-b.test").unwrap();
    let socket = da.workload_socket.clone();
    let bundles = move || {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(&socket)
            .args([
                "-H",
                "workload.spiffe.io: true",
                "http://localhost/v1/x509-bundles",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let served = bundles.clone();
    assert!(!served().contains("spiffe://mesh-b.test"));
    assert!(da.status.get(&td_b).is_none());

    // Added: the peer is fetched, pinned and served to the workload.
    a.write_config("", "1s", Some(&b), &entry);
    let outcome = da.reload(a.config());
    assert!(outcome.federation_changed && outcome.needs_restart.is_empty());
    eventually("mesh-b is pinned", Duration::from_secs(20), || {
        da.peers
            .get(&td_b)
            .is_some_and(|p| p.same_authorities(&db.ca.snapshot().bundle))
    })
    .await;
    eventually("mesh-b's bundle is served", Duration::from_secs(20), || {
        served().contains("spiffe://mesh-b.test")
    })
    .await;
    assert_eq!(da.status.get(&td_b).unwrap().state.as_str(), "ok");
    assert!(da.refresh.refresh(&td_b).await.is_some_and(|r| r.ok));

    // Removed: no fetcher, no status, no bundle for workloads.
    a.write_config("", "1s", None, &entry);
    assert!(da.reload(a.config()).federation_changed);
    assert!(da.peers.get(&td_b).is_none());
    assert!(da.status.get(&td_b).is_none());
    assert!(da.refresh.refresh(&td_b).await.is_none());
    eventually(
        "mesh-b's bundle is no longer served",
        Duration::from_secs(20),
        || !served().contains("spiffe://mesh-b.test"),
    )
    .await;
    da.shutdown().await;
    db.shutdown().await;
}
