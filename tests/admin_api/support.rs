//! Helpers for the admin API tests: the admin socket, the CLI, plain HTTP to the metrics
//! listener, a Workload API bundle stream, and a daemon `mesh-a.test` federating with a real
//! daemon `mesh-b.test` (plus, on demand, a failing and a silent peer).

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use meshtrust::app::Daemon;
use meshtrust::spiffe_id::TrustDomain;
use meshtrust::workload_api::proto::X509BundlesResponse;
use meshtrust::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixStream};

use crate::common;
use crate::common::eventually;
use crate::common::mesh::Mesh;

/// Hang guard for anything awaited here (never a timing assertion).
pub const GUARD: Duration = Duration::from_secs(30);

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// Awaits `f` under the hang guard.
pub async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f).await.expect("hang guard")
}

/// One admin API request over the daemon's Unix socket.
pub async fn admin(socket: &Path, method: &str, path: &str) -> (u16, Value) {
    guard(meshtrust::admin_client::request(socket, method, path))
        .await
        .unwrap()
}

/// Runs the real `meshtrust` binary: (exit code, stdout, stderr).
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    let out = guard(
        tokio::process::Command::new(common::bin())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

/// The uid of this test process (the owner of a file it creates): what the Workload API attests.
pub fn own_uid(dir: &Path) -> u32 {
    std::fs::metadata(dir).unwrap().uid()
}

/// `[metrics]` on an ephemeral port and a registration entry for this process that receives
/// mesh-b.test's bundle.
pub fn metrics_and_entry(dir: &Path) -> String {
    format!(
        r#"[metrics]
listen = "127.0.0.1:0"
[[entry]]
spiffe_id = "spiffe://mesh-a.test/workload/admin-test"
selectors = ["unix:uid:{}"]
federates_with = ["mesh-b.test"]
"#,
        own_uid(dir)
    )
}

/// An https_spiffe relationship with `name` at `url` (no bootstrap bundle).
pub fn peer_without_bootstrap(name: &str, url: &str) -> String {
    format!(
        r#"[[federation]]
trust_domain = "{name}"
bundle_endpoint_url = "{url}"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://{name}/meshtrust/server"
"#
    )
}

/// The FetchX509Bundles stream of the daemon's Workload API, as this process.
pub async fn x509_bundles(socket: &Path) -> tonic::Streaming<X509BundlesResponse> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .unwrap();
    let request =
        common::workload::with_header(meshtrust::workload_api::proto::X509BundlesRequest {});
    guard(SpiffeWorkloadApiClient::new(channel).fetch_x509_bundles(request))
        .await
        .unwrap()
        .into_inner()
}

/// The next message of a bundle stream.
pub async fn next(stream: &mut tonic::Streaming<X509BundlesResponse>) -> X509BundlesResponse {
    guard(stream.message()).await.unwrap().unwrap()
}

/// Two daemons: mesh-b.test (no peers) and mesh-a.test federating with it (and, with
/// `more_peers`, with mesh-c.test at a closed port and mesh-d.test at a port that never answers).
pub struct Pair {
    pub root: tempfile::TempDir,
    pub a: Mesh,
    pub b: Mesh,
    pub da: Daemon,
    pub db: Daemon,
    /// Accepts TCP connections (kernel backlog) and never answers: mesh-d.test's endpoint.
    pub _silent: TcpListener,
}

impl Pair {
    pub async fn start(more_peers: bool) -> Self {
        common::init();
        let root = tempfile::tempdir().unwrap();
        let a = Mesh::new(root.path(), "mesh-a").await;
        let mut b = Mesh::new(root.path(), "mesh-b").await;
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut extra = metrics_and_entry(root.path());
        if more_peers {
            let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let closed_port = closed.local_addr().unwrap().port();
            drop(closed);
            let silent_port = silent.local_addr().unwrap().port();
            extra.push_str(&peer_without_bootstrap(
                "mesh-c.test",
                &format!("https://127.0.0.1:{closed_port}/"),
            ));
            extra.push_str(&peer_without_bootstrap(
                "mesh-d.test",
                &format!("https://127.0.0.1:{silent_port}/"),
            ));
        }
        a.write_config("", "5m", Some(&b), &extra);
        b.write_config("", "5m", None, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
        b.give_bootstrap_to(&a);
        let db = b.start().await;
        let mut a = a;
        let da = a.start().await;
        Self {
            root,
            a,
            b,
            da,
            db,
            _silent: silent,
        }
    }

    /// Waits until mesh-a has pinned mesh-b's current bundle.
    pub async fn pinned(&self) {
        let td_b = td("mesh-b.test");
        eventually("mesh-a pins mesh-b", || {
            self.da
                .peers
                .get(&td_b)
                .is_some_and(|p| p.same_authorities(&self.db.ca.snapshot().bundle))
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
