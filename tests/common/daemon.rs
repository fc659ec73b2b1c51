//! The real `meshtrust serve` (or any long-running subcommand) as a child process: spawned, its
//! stderr drained into a shared log that tests wait on (always with a deadline), signalled, and
//! killed when the test ends, pass or fail.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hang guard for every wait on a daemon (never a timing assertion).
pub const GUARD: Duration = Duration::from_secs(30);

/// The line the daemon logs once every listener is bound and its signal handlers are installed.
pub const READY: &str = "meshtrust ready";

/// A running child process of the real binary. Dropping it kills it (SIGKILL) and reaps it.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    guard: Duration,
    /// The threads draining stdout/stderr: after an exit, waits let them reach EOF first, so the
    /// log holds the last lines the child wrote.
    drains: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc").field("pid", &self.pid()).finish()
    }
}

impl Proc {
    /// Spawns `meshtrust ARGS` with stderr captured (and `RUST_LOG` as given, `info` if none).
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, |_| {})
    }

    /// [`Proc::spawn`] with a hook to adjust the command (environment, uid, limits). If the hook
    /// pipes stdout, stdout is drained into the same log.
    pub fn spawn_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Self {
        Self::spawn_watching(args, adjust, |_| {})
    }

    /// [`Proc::spawn_with`], calling `on_line` with each line on the draining thread the moment it
    /// is read (before any waiter can see it): for reacting to a line with no polling delay.
    pub fn spawn_watching(
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
        on_line: impl FnMut(&str) + Send + 'static,
    ) -> Self {
        let mut cmd = Command::new(super::bin());
        cmd.args(args);
        Self::start(cmd, adjust, on_line)
    }

    /// `WRAPPER... meshtrust ARGS` (e.g. `ip netns exec NAME`), otherwise as [`Proc::spawn`].
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        let (program, pre) = wrapper.split_first().expect("a wrapper program");
        let mut cmd = Command::new(program);
        cmd.args(pre).arg(super::bin()).args(args);
        Self::start(cmd, |_| {}, |_| {})
    }

    /// Any other program as a [`Proc`] (its stderr, and its stdout if piped, in the log; killed
    /// on drop): what a test runs where it cannot run it itself, e.g. in a network namespace.
    pub fn spawn_command(cmd: Command, adjust: impl FnOnce(&mut Command)) -> Self {
        Self::start(cmd, adjust, |_| {})
    }

    fn start(
        mut cmd: Command,
        adjust: impl FnOnce(&mut Command),
        on_line: impl FnMut(&str) + Send + 'static,
    ) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("SPIFFE_ENDPOINT_SOCKET");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("the meshtrust binary runs");
        let log = Arc::new(Mutex::new(String::new()));
        let on_line = Arc::new(Mutex::new(on_line));
        // Plain threads: the drain must go on whatever runtime (or none) the test uses, so the
        // child never blocks on a full pipe.
        let mut drains = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            drains.push(drain(stdout, log.clone(), on_line.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            drains.push(drain(stderr, log.clone(), on_line));
        }
        Self {
            child,
            log,
            guard: GUARD,
            drains,
        }
    }

    /// A longer hang guard than [`GUARD`] for this process's waits (a whole demo, say).
    pub fn with_guard(mut self, guard: Duration) -> Self {
        self.guard = guard;
        self
    }

    /// `meshtrust serve --config FILE`, waited for until it is ready.
    pub async fn serve(config: &Path) -> Self {
        let p = Self::spawn(&["serve", "--config", config.to_str().unwrap()]);
        p.wait_for_log(READY).await;
        p
    }

    /// [`Proc::serve`] for tests without an async runtime.
    pub fn serve_blocking(config: &Path) -> Self {
        let p = Self::spawn(&["serve", "--config", config.to_str().unwrap()]);
        p.wait_for_log_blocking(READY);
        p
    }

    /// `meshtrust [PRE...] sidecar ARGS` on the Workload API at `socket`, named the way a
    /// workload names it (`SPIFFE_ENDPOINT_SOCKET=unix://...`), its reports (stdout) in its log.
    pub fn sidecar(socket: &Path, pre: &[&str], args: &[&str]) -> Self {
        let endpoint = format!("unix://{}", socket.display());
        let mut argv = pre.to_vec();
        argv.push("sidecar");
        argv.extend_from_slice(args);
        Self::spawn_with(&argv, |c| {
            c.stdout(Stdio::piped())
                .env("SPIFFE_ENDPOINT_SOCKET", endpoint);
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (under [`GUARD`]) for a log line containing `needle`; returns that line. Panics
    /// with the log if the process exits first.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_nth_log(needle, 0).await
    }

    /// Waits for the `nth` (0-based) line containing `needle`.
    pub async fn wait_for_nth_log(&self, needle: &str, nth: usize) -> String {
        let deadline = Instant::now() + self.guard;
        loop {
            if let Some(line) = self.poll(needle, nth, deadline) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `addr=` value of the first log line containing `needle` (waited for): where a
    /// listener bound to port 0 listens, e.g. `logged_addr("metrics listening")`.
    pub async fn logged_addr(&self, needle: &str) -> String {
        log_field(&self.wait_for_log(needle).await, "addr")
    }

    /// [`Proc::wait_for_log`] for tests without an async runtime.
    pub fn wait_for_log_blocking(&self, needle: &str) -> String {
        self.wait_for_nth_log_blocking(needle, 0)
    }

    /// [`Proc::wait_for_nth_log`] for tests without an async runtime.
    pub fn wait_for_nth_log_blocking(&self, needle: &str, nth: usize) -> String {
        let deadline = Instant::now() + self.guard;
        loop {
            if let Some(line) = self.poll(needle, nth, deadline) {
                return line;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn poll(&self, needle: &str, nth: usize, deadline: Instant) -> Option<String> {
        let log = self.log();
        if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(nth) {
            return Some(line.to_owned());
        }
        if let Some(status) = self.exited() {
            std::thread::sleep(Duration::from_millis(50));
            let log = self.log();
            if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(nth) {
                return Some(line.to_owned());
            }
            panic!("the process exited ({status}) before logging {needle:?}; its log:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "hang guard: no log line {needle:?} within {:?}; the log:\n{log}",
            self.guard
        );
        None
    }

    /// The exit status if the child has exited (reads `/proc`, so it needs no `&mut`).
    fn exited(&self) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Field 3 (after the parenthesised command name) is the state; Z = exited, not reaped.
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        (state == "Z" || state == "X").then(|| format!("state {state}"))
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`, `KILL`, ...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill(1) runs")
            .success();
        assert!(ok, "kill -{name} {} failed", self.pid());
    }

    /// Waits (under [`GUARD`]) for the child to exit; returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + self.guard;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipes close at exit: give the drains (bounded: a grandchild could hold a
                // pipe) the moment they need to append the last lines.
                let drained = Instant::now() + Duration::from_secs(2);
                while Instant::now() < drained && !self.drains.iter().all(|d| d.is_finished()) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hang guard: the process did not exit; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (a graceful stop).
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// `kill -9`: no chance to flush or clean up anything.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends every line of `pipe` to `log` (calling `on_line` first) until EOF.
fn drain(
    pipe: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<String>>,
    on_line: Arc<Mutex<impl FnMut(&str) + Send + 'static>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            (on_line.lock().unwrap())(&line);
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=` in a text log line (up to the next space).
pub fn log_field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        + key.len()
        + 2;
    line[start..].split_whitespace().next().unwrap().to_owned()
}

/// How many descriptors process `pid` holds (`/proc/<pid>/fd`; the process must exist).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The resident set of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// For tests that need root (another uid, namespaces, lowered limits for another user): true
/// when root; otherwise prints a skip note and returns false, or panics when
/// `MESHTRUST_REQUIRE_ROOT=1` (CI runs as root and sets it, so these tests never skip there).
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("MESHTRUST_REQUIRE_ROOT").is_none(),
        "{test}: needs root, and MESHTRUST_REQUIRE_ROOT is set"
    );
    eprintln!("SKIPPED {test}: needs root (the full suite runs as root, as CI does)");
    false
}
