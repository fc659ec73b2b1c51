//! The release `meshtrust serve` binary as a separate process, so that its CPU time and memory
//! are its own and not the bench's.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The meshtrust binary cargo built next to this bench (same profile).
pub fn meshtrust_bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshtrust")
}

/// A running `meshtrust serve`.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// Just before `spawn`.
    pub started: Instant,
    ready: mpsc::Receiver<Instant>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Spawned {
    /// Spawns `meshtrust serve --config <config>` with `RUST_LOG=info` (the ready line is info).
    pub fn serve(config: &Path) -> Self {
        let mut cmd = Command::new(meshtrust_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn meshtrust serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, ready) = mpsc::channel();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("meshtrust ready") {
                    let _ = tx.send(Instant::now());
                }
                let mut log = keep.lock().unwrap();
                if log.len() >= 40 {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        Self {
            child,
            started,
            ready,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the `meshtrust ready` line; returns the time from spawn to that line.
    /// Panics (the bench cannot go on) if the daemon exits or stays silent for `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        match self.ready.recv_timeout(timeout) {
            Ok(at) => at - self.started,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "meshtrust did not become ready within {timeout:?} (exit: {status:?}); log:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// SIGTERM, then up to 15 s for a graceful exit, then SIGKILL.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        super::send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
