//! The workload side: a child server process driven over stdin/stdout, many tonic clients on
//! the Unix socket, and the two measurements (first-message latency, bundle-change fan-out).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use meshtrust::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshtrust::workload_api::proto::{X509BundlesRequest, X509svidRequest};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{Barrier, mpsc};
use tokio::task::JoinSet;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

use crate::common;
use crate::servers::PEER;

pub type Client = SpiffeWorkloadApiClient<Channel>;

/// A server child process (`--role daemon|noop`).
#[derive(Debug)]
pub struct Server {
    child: tokio::process::Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pub socket: PathBuf,
}

impl Server {
    pub async fn spawn(args: &[&str]) -> Self {
        // `MESHTRUST_BENCH_WRAP="heaptrack -o /tmp/h"`: run the server under a profiler.
        let wrap: Vec<String> = std::env::var("MESHTRUST_BENCH_WRAP")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let exe = std::env::current_exe().unwrap().display().to_string();
        let argv: Vec<String> = wrap
            .into_iter()
            .chain([exe])
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect();
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        // The first `ready <socket>` line (a profiler may print its own lines first).
        let ready = async {
            loop {
                let line = stdout
                    .next_line()
                    .await
                    .unwrap()
                    .expect("server child said nothing");
                if let Some(socket) = line.strip_prefix("ready ") {
                    return PathBuf::from(socket);
                }
            }
        };
        let socket = tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("server child ready within 60 s");
        Self {
            child,
            stdin,
            stdout,
            socket,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Asks for a new peer0.test bundle; returns once the request is written.
    pub async fn pin(&mut self) {
        self.stdin.write_all(b"pin\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Reads the child's acknowledgement of a `pin`.
    pub async fn pinned(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line()).await;
    }

    pub async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

pub async fn connect(socket: &Path) -> Client {
    let socket = socket.to_owned();
    // The URI is a placeholder: the connector dials the socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to the Workload API");
    SpiffeWorkloadApiClient::new(channel)
}

/// `n` clients, each on its own connection, connected 250 at a time.
pub async fn connect_many(socket: &Path, n: usize) -> Vec<Client> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(250);
        let mut set = JoinSet::new();
        for _ in 0..batch {
            let s = socket.to_owned();
            set.spawn(async move { connect(&s).await });
        }
        while let Some(c) = set.join_next().await {
            out.push(c.unwrap());
        }
    }
    out
}

fn request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

/// Opens one FetchX509SVID stream per client and returns them open: the server then holds as
/// many live streams as there are connected clients.
pub async fn hold_streams(
    clients: &[Client],
) -> Vec<tonic::Streaming<meshtrust::workload_api::proto::X509svidResponse>> {
    let mut out = Vec::with_capacity(clients.len());
    for c in clients {
        let mut stream = c
            .clone()
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .expect("FetchX509SVID")
            .into_inner();
        stream.message().await.unwrap().expect("a first message");
        out.push(stream);
    }
    out
}

/// Each client in turn (one call in flight) calls FetchX509SVID; each one's time to its first
/// message.
pub async fn first_message_in_turn(clients: &[Client]) -> Vec<Duration> {
    let mut out = Vec::with_capacity(clients.len());
    for c in clients {
        let start = Instant::now();
        let mut stream = c
            .clone()
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .expect("FetchX509SVID")
            .into_inner();
        let first = stream.message().await.unwrap().expect("a first message");
        out.push(start.elapsed());
        assert!(!first.svids.is_empty(), "an SVID in the first message");
    }
    out.sort();
    out
}

/// Every client calls FetchX509SVID at the same moment; each one's time to its first message.
pub async fn first_message_latencies(clients: &[Client]) -> Vec<Duration> {
    let barrier = Arc::new(Barrier::new(clients.len() + 1));
    let mut set = JoinSet::new();
    for c in clients {
        let (mut c, barrier) = (c.clone(), barrier.clone());
        set.spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let mut stream = c
                .fetch_x509svid(request(X509svidRequest {}))
                .await
                .expect("FetchX509SVID")
                .into_inner();
            let first = stream.message().await.unwrap().expect("a first message");
            let took = start.elapsed();
            assert!(!first.svids.is_empty(), "an SVID in the first message");
            took
        });
    }
    barrier.wait().await;
    let mut out = Vec::with_capacity(clients.len());
    while let Some(d) = tokio::time::timeout(Duration::from_secs(60), set.join_next())
        .await
        .expect("every first message within 60 s")
    {
        out.push(d.unwrap());
    }
    out.sort();
    out
}

/// What one fan-out run saw.
#[derive(Debug)]
pub struct FanOut {
    pub streams: usize,
    pub rss_before_kib: u64,
    pub rss_open_kib: u64,
    pub rss_after_kib: u64,
    /// Per bundle change: time from the request to the last stream's update, and the median.
    pub last: Vec<Duration>,
    pub median: Vec<Duration>,
    pub client_rss_kib: u64,
}

/// Opens `per_conn` FetchX509Bundles streams on each of `conns` connections, then asks for
/// `changes` peer bundle changes and times each until every stream has it.
pub async fn fan_out(server: &mut Server, conns: usize, per_conn: usize, changes: usize) -> FanOut {
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = common::rss_kib(pid);
    let clients = connect_many(&server.socket, conns).await;
    let streams = conns * per_conn;
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<()>();
    let (update_tx, mut update_rx) = mpsc::unbounded_channel::<Instant>();
    let key = format!("spiffe://{PEER}");
    let mut set = JoinSet::new();
    for c in &clients {
        for _ in 0..per_conn {
            let (mut c, opened, update, key) =
                (c.clone(), opened_tx.clone(), update_tx.clone(), key.clone());
            set.spawn(async move {
                let mut stream = c
                    .fetch_x509_bundles(request(X509BundlesRequest {}))
                    .await
                    .expect("FetchX509Bundles")
                    .into_inner();
                let first = stream.message().await.unwrap().expect("a first message");
                let mut last = first.bundles.get(&key).cloned();
                assert!(last.is_some(), "{key} in the first message");
                let _ = opened.send(());
                while let Ok(Some(msg)) = stream.message().await {
                    let now = msg.bundles.get(&key).cloned();
                    if now != last {
                        let _ = update.send(Instant::now());
                        last = now;
                    }
                }
            });
        }
    }
    for _ in 0..streams {
        tokio::time::timeout(Duration::from_secs(120), opened_rx.recv())
            .await
            .expect("every stream open within 120 s");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open_kib = common::rss_kib(pid);

    let (mut last, mut median) = (Vec::new(), Vec::new());
    for _ in 0..changes {
        let start = Instant::now();
        server.pin().await;
        let mut seen = Vec::with_capacity(streams);
        for _ in 0..streams {
            let at = tokio::time::timeout(Duration::from_secs(60), update_rx.recv())
                .await
                .expect("every stream updated within 60 s")
                .unwrap();
            seen.push(at - start);
        }
        server.pinned().await;
        seen.sort();
        last.push(*seen.last().unwrap());
        median.push(seen[seen.len() / 2]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss_after_kib = common::rss_kib(pid);
    let client_rss_kib = common::rss_kib(std::process::id());
    set.abort_all();
    drop(clients);
    FanOut {
        streams,
        rss_before_kib,
        rss_open_kib,
        rss_after_kib,
        last,
        median,
        client_rss_kib,
    }
}
