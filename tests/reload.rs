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
