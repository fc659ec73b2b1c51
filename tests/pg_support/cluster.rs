//! A private PostgreSQL cluster for tests that stop and start the database (outages): its
//! own folder and port (`.ci/postgres.sh start DIR`), never the shared test cluster. Stopped,
//! and its folder removed, when dropped.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private cluster.
pub struct Cluster {
    /// Its folder (data, socket, `url`).
    pub dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/postgres.sh")
}

/// `postgres.sh WHAT DIR`, which must succeed.
fn run(what: &str, dir: &Path) {
    let out = Command::new("bash")
        .arg(script())
        .arg(what)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "postgres.sh {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Creates and starts one.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        run("start", dir.path());
        Self { dir }
    }

    /// [`Cluster::start`] made durable (fsync, synchronous_commit, full_page_writes on; the
    /// test settings turn them off), for benches comparing it with SQLite's `synchronous=FULL`.
    pub fn start_durable() -> Self {
        let cluster = Self::start();
        let conf = cluster.dir.path().join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n");
        std::fs::write(&conf, text).unwrap();
        run("stop", cluster.dir.path());
        run("restart", cluster.dir.path());
        cluster
    }

    /// Its URL (the `meshtrust` role and database).
    pub fn url(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("url"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Stops it (fast shutdown), from an async test without blocking its runtime.
    pub async fn stop(&self) {
        let d = self.dir.path().to_owned();
        tokio::task::spawn_blocking(move || run("stop", &d))
            .await
            .unwrap();
    }

    /// Starts it again after [`Cluster::stop`] (same port, same data).
    pub async fn restart(&self) {
        let d = self.dir.path().to_owned();
        tokio::task::spawn_blocking(move || run("restart", &d))
            .await
            .unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}
