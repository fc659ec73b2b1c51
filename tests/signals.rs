//! The daemon's signal handlers are in place before it says `meshtrust ready` (CONTRACT.md
//! "Commands": SIGHUP reloads, SIGINT/SIGTERM stop gracefully). A service manager may send
//! `ExecReload` (SIGHUP) or a stop the instant the daemon is ready: SIGHUP's default action
//! would kill it, and an unhandled SIGINT/SIGTERM would skip the graceful path. Each round sends
//! the signal from the log-draining thread the moment the ready line is read.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};

use common::config::DaemonConfig;
use common::daemon::{Proc, READY};

/// Rounds per signal: the window, if any, is short, so try it many times.
const ROUNDS: usize = 20;

/// A shell blocked on `read`, that sends `SIG<name>` to the pid it is given: the signal leaves
/// within microseconds of [`Trigger::fire`] (no fork and exec on the hot path, unlike kill(1)).
struct Trigger {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Trigger {
    fn arm(name: &str) -> Self {
        let mut child = Command::new("sh")
            .args(["-c", &format!("read pid && kill -{name} \"$pid\"")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn fire(&mut self, pid: u32) {
        let mut stdin = self.stdin.take().expect("fired once");
        writeln!(stdin, "{pid}").unwrap();
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        // Unfired, the shell's `read` sees EOF and it exits without sending anything.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// `meshtrust serve` on `config`, sent `SIG<name>` by the draining thread as soon as the ready
/// line is read.
fn serve_signalled_at_ready(config: &Path, name: &str) -> Proc {
    let mut trigger = Trigger::arm(name);
    let pid = Arc::new(OnceLock::<u32>::new());
    let p = pid.clone();
    let proc = Proc::spawn_watching(
        &["serve", "--config", config.to_str().unwrap()],
        |_| {},
        move |line| {
            if line.contains(READY) {
                // Set by the test thread right after the spawn, long before the daemon is ready.
                let pid = loop {
                    if let Some(pid) = p.get() {
                        break *pid;
                    }
                    std::thread::yield_now();
                };
                trigger.fire(pid);
            }
        },
    );
    pid.set(proc.pid()).unwrap();
    proc
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    DaemonConfig::plain("mesh-a.test").write(dir)
}

/// `meshtrust status` against the daemon's admin socket succeeds: the daemon answers.
fn answers(admin: &Path) -> bool {
    common::cli(&["status", "--admin-socket", admin.to_str().unwrap()]).code == 0
}

/// The graceful path ran and the daemon exited 0.
fn assert_graceful_exit(mut proc: Proc, signal: &str) {
    let status = proc.wait_exit();
    let log = proc.log();
    assert_eq!(
        status.code(),
        Some(0),
        "{status} after {signal}; log:\n{log}"
    );
    assert!(
        log.contains("shutting down") && log.contains(&format!("signal=\"{signal}\"")),
        "the shutdown names {signal}:\n{log}"
    );
    assert!(
        log.contains("stopped"),
        "the graceful path ran to its end:\n{log}"
    );
}

#[test]
fn sighup_the_instant_the_daemon_is_ready_reloads_and_it_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let admin = dir.path().join("admin.sock");
    for round in 0..ROUNDS {
        let proc = serve_signalled_at_ready(&config, "HUP");
        proc.wait_for_log_blocking(READY);
        // The SIGHUP was handled (a reload), not fatal: the daemon logs the reload and answers.
        let line = proc.wait_for_log_blocking("config reloaded");
        assert!(
            line.contains("entries_changed=false"),
            "round {round}: {line}"
        );
        assert!(
            answers(&admin),
            "round {round}: the daemon answers after SIGHUP"
        );
        proc.signal("INT");
        assert_graceful_exit(proc, "SIGINT");
    }
}

#[test]
fn sigint_and_sigterm_the_instant_the_daemon_is_ready_stop_it_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    for _ in 0..ROUNDS {
        for (name, signal) in [("INT", "SIGINT"), ("TERM", "SIGTERM")] {
            let proc = serve_signalled_at_ready(&config, name);
            proc.wait_for_log_blocking(READY);
            assert_graceful_exit(proc, signal);
        }
    }
}
