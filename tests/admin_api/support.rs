//! Helpers for the admin API tests: the admin socket, the CLI, plain HTTP to the metrics
//! listener, a Workload API bundle stream, and a daemon `mesh-a.test` federating with a real
//! daemon `mesh-b.test` (plus, on demand, a failing and a silent peer).

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use meshtrust::app::Daemon;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common;
use crate::common::mesh::Mesh;
use crate::common::{eventually, guard};

pub use crate::common::grpc::{next, x509_bundles};
#[allow(unused_imports)]
pub use crate::common::{GUARD, td};

/// One admin API request over the daemon's Unix socket.
pub async fn admin(socket: &Path, method: &str, path: &str) -> (u16, Value) {
    guard(meshtrust::admin_client::request(socket, method, path))
        .await
        .unwrap()
}

/// Runs the real `meshtrust` binary: (exit code, stdout, stderr).
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    let out = common::cli_async(args).await;
    (out.code, out.stdout, out.stderr)
}

/// `GET path` over plain HTTP/1.1: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    guard(async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    })
    .await
}

/// The value of one Prometheus series (`name{labels}`) in an exposition text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// An RFC 3339 time from the status document.
pub fn time(v: &Value) -> SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{v} is not an RFC 3339 string"));
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"));
    SystemTime::from(t)
}

/// Seconds since the epoch.
pub fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `[metrics]` on an ephemeral port and a registration entry for this process that receives
/// mesh-b.test's bundle.
pub fn metrics_and_entry() -> String {
    format!(
        r#"[metrics]
listen = "127.0.0.1:0"
[[entry]]
spiffe_id = "spiffe://mesh-a.test/workload/admin-test"
selectors = ["unix:uid:{}"]
federates_with = ["mesh-b.test"]
"#,
        common::own_uid()
    )
}

/// An https_spiffe relationship with `name` at `url` (no bootstrap bundle).
pub fn peer_without_bootstrap(name: &str, url: &str) -> String {
    common::config::DaemonConfig::new("unused.test")
        .peer(name, url, None, false)
        .sections()
}

/// A TCP endpoint that accepts connections and never answers: each accepted connection is
/// handed to the test, which can tell whether the client is still waiting on it.
pub struct Silent {
    pub port: u16,
    pub accepted: mpsc::UnboundedReceiver<TcpStream>,
}

impl Silent {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, accepted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                if tx.send(conn).is_err() {
                    break;
                }
            }
        });
        Self { port, accepted }
    }
}

/// Whether the client of `conn` still holds it open (what it sent so far is read and dropped).
pub fn still_open(conn: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match conn.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// Two daemons: mesh-b.test (no peers) and mesh-a.test federating with it (and, with
/// `more_peers`, with mesh-c.test at a URL that refuses connections and mesh-d.test at an
/// endpoint that accepts and never answers).
pub struct Pair {
    pub root: tempfile::TempDir,
    pub a: Mesh,
    pub b: Mesh,
    pub da: Daemon,
    pub db: Daemon,
    /// mesh-d.test's endpoint: accepts TCP connections and never answers.
    pub silent: Silent,
}

impl Pair {
    pub async fn start(more_peers: bool) -> Self {
        Self::start_with(more_peers, None).await
    }

    /// [`Pair::start`]; with `keep_b_port`, a handle on mesh-b's port is kept there first (see
    /// [`Mesh::keep_port`]).
    pub async fn start_with(
        more_peers: bool,
        keep_b_port: Option<&mut Option<std::net::TcpListener>>,
    ) -> Self {
        common::init();
        let root = tempfile::tempdir().unwrap();
        let a = Mesh::new(root.path(), "mesh-a").await;
        let mut b = Mesh::new(root.path(), "mesh-b").await;
        let silent = Silent::start().await;
        let mut extra = metrics_and_entry();
        if more_peers {
            extra.push_str(&peer_without_bootstrap(
                "mesh-c.test",
                &common::refused_url(),
            ));
            extra.push_str(&peer_without_bootstrap(
                "mesh-d.test",
                &format!("https://127.0.0.1:{}/", silent.port),
            ));
        }
        a.write_config("", "5m", Some(&b), &extra);
        b.write_config("", "5m", None, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
        b.give_bootstrap_to(&a);
        if let Some(keep) = keep_b_port {
            *keep = Some(b.keep_port());
        }
        let db = b.start().await;
        let mut a = a;
        let da = a.start().await;
        Self {
            root,
            a,
            b,
            da,
            db,
            silent,
        }
    }

    /// Waits until mesh-a has pinned mesh-b's current bundle and recorded that fetch in its
    /// status (written after the pin).
    pub async fn pinned(&self) {
        let td_b = td("mesh-b.test");
        eventually("mesh-a pins mesh-b and says so in its status", || {
            self.da
                .peers
                .get(&td_b)
                .is_some_and(|p| p.same_authorities(&self.db.ca.snapshot().bundle))
                && self
                    .da
                    .status
                    .get(&td_b)
                    .is_some_and(|s| s.state.as_str() == "ok" && s.last_success.is_some())
        })
        .await;
    }

    /// Waits until mesh-a's fetches of `peer` fail.
    pub async fn failing(&self, peer: &str) {
        eventually(&format!("{peer} fails"), || {
            self.da
                .status
                .get(&td(peer))
                .is_some_and(|s| s.state.as_str() == "failing")
        })
        .await;
    }

    pub fn admin_a(&self) -> &Path {
        &self.da.admin_socket
    }

    pub async fn shutdown(self) {
        self.da.shutdown().await;
        self.db.shutdown().await;
    }
}
