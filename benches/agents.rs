//! Node agents (issue 14): real `meshtrust serve` and `meshtrust agent` processes of the release
//! build, talking over TLS on loopback (127.0.0.1, one network namespace), with this bench as
//! every workload (its uid is the selector). Each figure's baseline, in the same run, is the
//! same measurement on the server's own Workload API socket.
//!
//! - New `[[entry]]` (config rewritten, SIGHUP) until its SVID arrives on a workload's open
//!   FetchX509SVID stream on an agent, p50 and p99 over `rounds` reloads; each reload adds one
//!   entry for the agent's node and one for the server's own socket, whose stream is timed too.
//! - Bundle change fan-out: `agents` agents x 10 workloads (one connection and one
//!   FetchX509Bundles stream each); the peer's bundle changes at its (local) endpoint and the
//!   server is told to refresh (admin API); time until the last stream has the new bundle.
//!   Baseline: as many streams on the server's own socket.
//! - FetchX509SVID first message p99 through an agent with 1,000 clients connected (each holding
//!   an open stream; calls in turn), as figure 3 does on the server.
//! - Agent idle RSS (one entry and a peer bundle, one server connection) against the server's,
//!   and start from the agent's cache with every server down: spawn until the Workload API
//!   serves the cached SVID, against a server start (spawn until its own socket serves an SVID).
//! - Failover (PostgreSQL): two replicas, the agent lists both; `kill -9` of the one it is
//!   connected to until it logs `agent connected` to the other (its Sync stream open).

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;
#[path = "../tests/common/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fixtures::{WebCert, current_uid, peer_bundle_json, web_cert};
use common::{Met, median, ms, note, percentile, row};
use meshtrust::workload_api::proto::{X509BundlesResponse, X509svidRequest};
use support::daemon::Proc;
use support::grpc::Client;
use support::node_agent::{self, AgentConfig, ServerProc};
use tokio::task::JoinSet;

const TD: &str = "mesh-a.test";
const PEER: &str = "peer.test";
const GUARD: Duration = Duration::from_secs(60);

/// Sizes: full run and smoke.
struct Sizes {
    reloads: usize,
    agents: usize,
    per_agent: usize,
    changes: usize,
    clients: usize,
    starts: usize,
    failovers: usize,
}

fn sizes() -> Sizes {
    if common::smoke() {
        Sizes {
            reloads: 2,
            agents: 2,
            per_agent: 2,
            changes: 1,
            clients: 10,
            starts: 1,
            failovers: 1,
        }
    } else {
        let agents = common::arg("agents").map_or(100, |a| a.parse().unwrap());
        Sizes {
            reloads: 30,
            agents,
            per_agent: 10,
            changes: 3,
            clients: 1000,
            starts: 9,
            failovers: 5,
        }
    }
}

/// An `[[entry]]` for this process's uid receiving every peer; served by the agents of `node`
/// (`"*"`: all) or, without, by the server's own socket.
fn entry(path: &str, node: Option<&str>) -> String {
    let mut s = format!(
        "[[entry]]\nspiffe_id = \"spiffe://{TD}{path}\"\nselectors = [\"unix:uid:{}\"]\n\
         federates_with = [\"*\"]\n",
        current_uid()
    );
    if let Some(n) = node {
        s.push_str(&format!("node = \"{n}\"\n"));
    }
    s
}

/// The server config: the agent API, the peer on the local HTTPS server, `entries`.
fn server_config(
    peer: std::net::SocketAddr,
    cert: &WebCert,
    entries: &str,
) -> support::config::DaemonConfig {
    node_agent::server_config(TD, entries).section(&format!(
        "[[federation]]\ntrust_domain = \"{PEER}\"\nbundle_endpoint_url = \"https://{peer}/peer/0\"\n\
         profile = \"https_web\"\nca_file = \"{}\"\n",
        cert.ca_pem.display()
    ))
}

fn base_entries() -> String {
    format!("{}{}", entry("/all", Some("*")), entry("/local", None))
}

/// The DER of the first authority of a bundle document (the peer's only CA).
fn first_ca_der(json: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    let x5c = v["keys"][0]["x5c"][0].as_str().unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(x5c)
        .unwrap()
}

fn peer_bytes(m: &X509BundlesResponse) -> Option<Vec<u8>> {
    m.bundles
        .iter()
        .find(|(k, _)| k.contains(PEER))
        .map(|(_, v)| v.clone())
}

/// The IDs in a FetchX509SVID message.
fn ids(m: &meshtrust::workload_api::proto::X509svidResponse) -> Vec<String> {
    m.svids.iter().map(|s| s.spiffe_id.clone()).collect()
}

/// Reads `stream` until an SVID for `id` is in a message.
async fn until_id(
    stream: &mut tonic::Streaming<meshtrust::workload_api::proto::X509svidResponse>,
    id: &str,
) {
    loop {
        let m = support::grpc::next(stream).await;
        if ids(&m).iter().any(|i| i == id) {
            return;
        }
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    support::grpc::with_header(msg)
}

/// `n` clients, each on its own connection, each holding an open FetchX509SVID stream.
async fn hold(
    socket: &Path,
    n: usize,
) -> (
    Vec<Client>,
    Vec<tonic::Streaming<meshtrust::workload_api::proto::X509svidResponse>>,
) {
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let mut set = JoinSet::new();
        for _ in 0..(n - clients.len()).min(250) {
            let s = socket.to_owned();
            set.spawn(async move { support::grpc::workload_client(&s).await });
        }
        while let Some(c) = set.join_next().await {
            clients.push(c.unwrap());
        }
    }
    let mut streams = Vec::with_capacity(n);
    for c in &clients {
        let mut s = c
            .clone()
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        support::grpc::next(&mut s).await;
        streams.push(s);
    }
    (clients, streams)
}

/// Each client in turn calls FetchX509SVID: each one's time to its first message, sorted.
async fn in_turn(clients: &[Client]) -> Vec<Duration> {
    let mut out = Vec::with_capacity(clients.len());
    for c in clients {
        let start = Instant::now();
        let mut s = c
            .clone()
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = support::grpc::next(&mut s).await;
        out.push(start.elapsed());
        assert!(!first.svids.is_empty());
    }
    out.sort();
    out
}

/// Polls `socket` (every 1 ms) from `since` until FetchX509SVID answers with an SVID.
async fn first_svid(socket: &Path, since: Instant) -> Duration {
    loop {
        assert!(since.elapsed() < GUARD, "no SVID on {}", socket.display());
        if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
            drop(stream);
            let s = socket.to_owned();
            let got = tokio::time::timeout(Duration::from_secs(2), async move {
                let channel = tonic::transport::Endpoint::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let s = s.clone();
                        async move {
                            tokio::net::UnixStream::connect(s)
                                .await
                                .map(hyper_util::rt::TokioIo::new)
                        }
                    }))
                    .await
                    .ok()?;
                let mut c = meshtrust::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
                let mut st = c
                    .fetch_x509svid(request(X509svidRequest {}))
                    .await
                    .ok()?
                    .into_inner();
                st.message().await.ok()?.filter(|m| !m.svids.is_empty())
            })
            .await
            .ok()
            .flatten();
            if got.is_some() {
                return since.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Where a process's resident memory is: anonymous (heap, stacks) and file-backed (the binary's
/// pages), and its threads, from `/proc/<pid>/status`.
fn memory_breakdown(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    // Resident pages of the meshtrust binary's own mappings (code and read-only data).
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut ours, mut binary) = (false, 0_u64);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            ours = line.ends_with("/meshtrust");
        } else if ours && let Some(v) = line.strip_prefix("Rss:") {
            binary += v
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    format!(
        "RssAnon {} KiB, RssFile {} KiB (of it the meshtrust binary {binary} KiB), {} threads",
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:")
    )
}

/// One bundle fan-out: a FetchX509Bundles stream per entry of `sockets`; each change's time
/// from the refresh request until the last stream has the new peer bundle.
async fn fan_out(
    sockets: &[PathBuf],
    changes: usize,
    server_admin: &Path,
    bundles: &Arc<RwLock<Vec<Bytes>>>,
    sequence: &mut u64,
) -> Vec<Duration> {
    let n = sockets.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, Option<Vec<u8>>)>();
    let mut tasks = JoinSet::new();
    for (i, socket) in sockets.iter().enumerate() {
        let (socket, tx) = (socket.clone(), tx.clone());
        tasks.spawn(async move {
            let mut stream = support::grpc::x509_bundles(&socket).await;
            while let Ok(Some(m)) = stream.message().await {
                if tx.send((i, Instant::now(), peer_bytes(&m))).is_err() {
                    return;
                }
            }
        });
    }
    let mut latest: Vec<Option<Vec<u8>>> = vec![None; n];
    let wait_all = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<_>,
                          latest: &mut Vec<Option<Vec<u8>>>,
                          want: &[u8]|
           -> Instant {
        let deadline = Instant::now() + GUARD;
        let mut last = Instant::now();
        while latest.iter().any(|l| l.as_deref() != Some(want)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (i, at, bytes): (usize, Instant, Option<Vec<u8>>) =
                tokio::time::timeout(left, rx.recv())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "{} of {n} streams without the bundle",
                            latest.iter().filter(|l| l.as_deref() != Some(want)).count()
                        )
                    })
                    .unwrap();
            if bytes.as_deref() == Some(want) && latest[i].as_deref() != Some(want) {
                last = at;
            }
            latest[i] = bytes;
        }
        last
    };
    let current = first_ca_der(&bundles.read().unwrap()[0]);
    wait_all(&mut rx, &mut latest, &current).await;
    let mut out = Vec::new();
    for _ in 0..changes {
        *sequence += 1;
        let doc = peer_bundle_json(PEER, *sequence, Duration::from_secs(3600));
        let want = first_ca_der(&doc);
        bundles.write().unwrap()[0] = Bytes::from(doc);
        let t0 = Instant::now();
        let (code, body) =
            common::uds_http::post(server_admin, &format!("/v1/federation/{PEER}/refresh"), "")
                .await
                .unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let last = wait_all(&mut rx, &mut latest, &want).await;
        out.push(last - t0);
    }
    tasks.abort_all();
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    if common::arg("role").as_deref() == Some("fleet") {
        fleet_process();
        return;
    }
    support::init();
    let s = sizes();
    let rt = rt();
    // `--only agents|failover|fleet|renewals`: one part (for profiling); all by default.
    let only = common::arg("only");
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("agents") {
        rt.block_on(agents(&s));
    }
    if run("failover") {
        rt.block_on(failover(&s));
    }
    if run("fleet") {
        rt.block_on(fleet());
    }
    if run("renewals") {
        rt.block_on(renewals());
    }
}

/// The load process (`--role fleet --dir DIR --n N`): N agents of the crate's own agent code
/// (`meshtrust::agent::run`) in this one process, each with its folder `DIR/agent-I` (config,
/// cache, sockets); says `started` and runs until killed.
fn fleet_process() {
    let dir = PathBuf::from(common::arg("dir").unwrap());
    let n: usize = common::arg("n").unwrap().parse().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The agents' warnings and errors, for the bench log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    rt().block_on(async {
        let mut set = JoinSet::new();
        for i in 0..n {
            let path = dir.join(format!("agent-{i}/agent.toml"));
            let config = meshtrust::agent::AgentConfig::load(&path).unwrap();
            set.spawn(async move { meshtrust::agent::run(config, std::future::pending()).await });
        }
        println!("started {n}");
        if let Some(r) = set.join_next().await {
            panic!("an agent stopped: {r:?}");
        }
    });
}

/// One join token and agent folder (`DIR/fleet/agent-I`) per agent of the fleet.
async fn fleet_folders(server: &ServerProc, root: &std::path::Path, n: usize) {
    for i in 0..n {
        let (code, body) = common::uds_http::post(
            &server.admin(),
            "/v1/tokens",
            &format!("{{\"node\": \"fleet-{i}\", \"ttl\": \"1h\"}}"),
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let dir = root.join(format!("fleet/agent-{i}"));
        let path = AgentConfig::new(TD, &[server.addr], &server.bundle())
            .join_token(v["token"].as_str().unwrap())
            .write(&dir);
        // No metrics listener per agent.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[metrics]\nlisten = \"127.0.0.1:0\"\n", "");
        std::fs::write(&path, text).unwrap();
    }
}

/// The load process running the fleet of `root/fleet`, once it says it started them.
fn start_fleet(root: &std::path::Path, n: usize) -> Fleet {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--role", "fleet", "--n", &n.to_string(), "--dir"])
        .arg(root.join("fleet"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let load = Fleet(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(
        line.starts_with("started"),
        "the load process said {line:?}"
    );
    load
}

/// A sample of the server's metric `name` (the line's name and labels as written), 0 without it.
fn metric(addr: &str, name: &str) -> f64 {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The highest count reached within any `span` of `samples` (time, running count).
fn peak_within(samples: &[(Duration, u64)], span: Duration) -> u64 {
    samples
        .iter()
        .map(|(t, k)| {
            let end = samples.iter().rev().find(|(u, _)| *u <= *t + span).unwrap();
            end.1 - k
        })
        .max()
        .unwrap_or(0)
}

/// SVIDs signed together renew spread out: `n` agents get one new `node = "*"` entry at one
/// instant (x509_svid_ttl 60 s here, so the renewals come within the run), each renews its
/// SVID at a random 45-55 % of its life; the highest 1 s signing rate within that renewal
/// window against the window's mean (SPIRE #1240: SVIDs issued together renew together).
async fn renewals() {
    let (n, ttl) = if common::smoke() {
        (5, Duration::from_secs(10))
    } else {
        let n = common::arg("fleet").map_or(1000, |a| a.parse().unwrap());
        (n, Duration::from_secs(60))
    };
    let root = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", common::free_port());
    // The agent SVIDs (same ttl) renew too: they are signed at attestation, before the entry.
    let config = |list: &str| {
        node_agent::server_config(TD, list)
            .section(&format!("[metrics]\nlisten = \"{metrics}\"\n"))
            .ca(&format!(
                "x509_svid_ttl = \"{}s\"\nca_ttl = \"1h\"",
                ttl.as_secs()
            ))
    };
    let sdir = root.path().join("server");
    ServerProc::prepare(&sdir, &config(""));
    let server = ServerProc::start(&sdir).await;
    fleet_folders(&server, root.path(), n).await;
    let _load = start_fleet(root.path(), n);
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric(&metrics, "meshtrust_agent_sync_streams") < n as f64 {
        assert!(Instant::now() < deadline, "the fleet did not sync in 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the agents' own renewals (they attested over a few seconds, up to 55 % of ttl ago).
    tokio::time::sleep(ttl.mul_f64(0.6)).await;
    let base = signed_x509(&metrics);
    config(&entry("/fleet-new", Some("*"))).write(&sdir);
    let t0 = Instant::now();
    server.proc().signal("HUP");
    let mut samples = vec![(Duration::ZERO, 0_u64)];
    // The first signings, then the renewals, and a margin after them.
    while t0.elapsed() < ttl.mul_f64(0.62) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        samples.push((t0.elapsed(), signed_x509(&metrics) - base));
    }
    let first = samples
        .iter()
        .find(|(_, k)| *k >= n as u64)
        .map_or(Duration::MAX, |(t, _)| *t);
    let first_peak = peak_within(&samples, Duration::from_secs(1));
    // The renewal window of SVIDs signed within `first` of t0: [0.45 ttl, 0.55 ttl + first].
    let (from, to) = (ttl.mul_f64(0.45), ttl.mul_f64(0.55) + first.min(ttl / 10));
    let window: Vec<(Duration, u64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let renewed = window.last().map_or(0, |w| w.1) - window.first().map_or(0, |w| w.1);
    let mean = renewed as f64 / (to - from).as_secs_f64();
    let peak = peak_within(&window, Duration::from_secs(1));
    let ratio = peak as f64 / mean.max(f64::MIN_POSITIVE);
    row(
        &format!(
            "signing burst when a node = \"*\" entry is added to {n} agents: highest 1 s rate / mean rate over its renewal window (x509_svid_ttl {} s)",
            ttl.as_secs()
        ),
        &format!("{ratio:.2}x ({peak}/s peak)"),
        &format!(
            "{mean:.1}/s mean ({renewed} signed in {:.1} s)",
            (to - from).as_secs_f64()
        ),
        Some(ratio),
        "<= 2x",
        Met::from(ratio <= 2.0),
    );
    note(&format!(
        "renewals: {n} agents (one load process), a node = \"*\" entry added by SIGHUP: all {n} \
         first signed within {:.0} ms (each agent waits a random 0-200 ms; peak {first_peak} in \
         1 s, not deferred further: a new entry must reach its workloads within 1 s), then \
         renewed between {:.1} s and {:.1} s after the SIGHUP ({renewed} signings, agent SVIDs \
         included); x509_svid_ttl {} s so the renewals fall within the run (with the default \
         1 h they spread over 6 minutes)",
        ms(first),
        from.as_secs_f64(),
        to.as_secs_f64(),
        ttl.as_secs()
    ));
}

/// The load process, killed on drop.
struct Fleet(std::process::Child);

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshtrust_svids_signed_total{type="x509"}` of the server's metrics at `addr`.
fn signed_x509(addr: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("meshtrust_svids_signed_total{type=\"x509\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no x509 signing counter in:\n{text}"))
}

/// Read and write system calls of `pid` so far (`syscr`, `syscw` of `/proc/<pid>/io`; socket
/// reads by `recvfrom` are not in `syscr`).
fn syscalls(pid: u32) -> [u64; 2] {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    [field("syscr:"), field("syscw:")]
}

/// CPU of `pid` over `window` as a percentage of one core.
async fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let before = common::cpu_ticks(pid);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let ticks = common::cpu_ticks(pid) - before;
    ticks as f64 / common::clock_ticks_per_sec() as f64 / t.elapsed().as_secs_f64() * 100.0
}

/// 1,000 agents (the crate's agent code, in one load process) x 10 `node = "*"` entries on one
/// server: its CPU and RSS in steady state against the same server with no agent.
async fn fleet() {
    let (n, entries, window) = if common::smoke() {
        (5, 10, Duration::from_secs(2))
    } else {
        let n = common::arg("fleet").map_or(1000, |a| a.parse().unwrap());
        (n, 10, Duration::from_secs(60))
    };
    let root = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let list: String = (0..entries)
        .map(|k| entry(&format!("/fleet-{k}"), Some("*")))
        .collect();
    let config = |list: &str| {
        node_agent::server_config(TD, list).section(&format!("[metrics]\nlisten = \"{metrics}\"\n"))
    };
    let sdir = root.path().join("server");
    ServerProc::prepare(&sdir, &config(&list));
    let server = ServerProc::start(&sdir).await;
    let pid = server.proc().pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = cpu_percent(pid, window).await;
    let idle_rss = common::rss_kib(pid);

    let made = Instant::now();
    fleet_folders(&server, root.path(), n).await;
    let tokens_took = made.elapsed();
    let before = signed_x509(&metrics);
    let started = Instant::now();
    let load = start_fleet(root.path(), n);
    let want = before + (n * entries) as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while signed_x509(&metrics) < want {
        assert!(
            Instant::now() < deadline,
            "{} of {} SVIDs signed after 300 s",
            signed_x509(&metrics) - before,
            n * entries
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let synced = started.elapsed();
    tokio::time::sleep(Duration::from_secs(if common::smoke() { 1 } else { 10 })).await;
    let at_start = signed_x509(&metrics);
    // `--perf FILE`: a profile of the server over the steady window (`perf report -i FILE`).
    let perf = common::arg("perf").map(|file| {
        std::process::Command::new("perf")
            .args([
                "record",
                "-F",
                "499",
                "-g",
                "-o",
                &file,
                "-p",
                &pid.to_string(),
            ])
            .args(["--", "sleep", &window.as_secs().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    let io_before = syscalls(pid);
    let cpu = cpu_percent(pid, window).await;
    let io = syscalls(pid);
    let per_s = |i: usize| (io[i] - io_before[i]) as f64 / window.as_secs_f64();
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    let in_window = signed_x509(&metrics) - at_start;
    let rss = common::rss_kib(pid);
    let load_rss = common::rss_kib(load.0.id());
    let mib = |k: u64| k as f64 / 1024.0;
    row(
        &format!(
            "{n} agents (one load process) x {entries} entries on one server: server CPU, steady state ({} s)",
            window.as_secs()
        ),
        &format!("{cpu:.2} % of a core"),
        &format!("{idle_cpu:.2} % server with no agents"),
        Some(cpu / idle_cpu.max(0.01)),
        "< 5 %",
        Met::from(cpu < 5.0),
    );
    row(
        &format!("{n} agents x {entries} entries: server RSS"),
        &format!(
            "{:.1} MiB (peak {:.1})",
            mib(rss),
            mib(common::peak_rss_kib(pid))
        ),
        &format!("{:.1} MiB server with no agents", mib(idle_rss)),
        Some(rss as f64 / idle_rss.max(1) as f64),
        "< 200 MiB",
        Met::from(rss < 200 * 1024),
    );

    if let Some(path) = common::arg("server-log") {
        std::fs::write(path, server.proc().log()).unwrap();
    }
    note(&format!(
        "fleet: {n} agents run by the crate's own agent code (`meshtrust::agent::run`) in one load \
         process, join tokens, TLS on 127.0.0.1 to one server (SQLite), no workloads; {n} tokens \
         and folders made in {:.1} s; all {} SVIDs signed {:.1} s after the load process started; \
         steady window {} s with {in_window} signings and {:.0} write calls a second by the \
         server (`syscw`: PING acks, each agent pings every 3 s); load process RSS {:.0} MiB",
        tokens_took.as_secs_f64(),
        n * entries,
        synced.as_secs_f64(),
        window.as_secs(),
        per_s(1),
        mib(load_rss),
    ));
    drop(load);
}

async fn agents(s: &Sizes) {
    let root = tempfile::tempdir().unwrap();
    let cert = web_cert(root.path());
    let mut sequence = 1;
    let bundles = Arc::new(RwLock::new(vec![Bytes::from(peer_bundle_json(
        PEER,
        sequence,
        Duration::from_secs(3600),
    ))]));
    let (peer, _) = common::peer_server::spawn_shared(&cert, bundles.clone()).await;

    let sdir = root.path().join("server");
    ServerProc::prepare(&sdir, &server_config(peer, &cert, &base_entries()));
    let mut server = ServerProc::start(&sdir).await;
    let server_socket = sdir.join("workload.sock");
    let admin = server.admin();

    let agent_dir = |i: usize| root.path().join(format!("agent-{i}"));
    let start_agent = async |i: usize, server: &ServerProc| -> Proc {
        let token = server.token(&format!("node-{i}")).await;
        let config = AgentConfig::new(TD, &[server.addr], &server.bundle())
            .join_token(&token)
            .write(&agent_dir(i));
        Proc::spawn(&["agent", "--config", config.to_str().unwrap()])
    };
    let agent0 = start_agent(0, &server).await;
    agent0.wait_for_log(node_agent::READY).await;
    let a0_socket = node_agent::workload_socket(&agent_dir(0));
    let all = format!("spiffe://{TD}/all");
    first_svid(&a0_socket, Instant::now()).await;
    let mut a0_stream = support::grpc::x509_svids(&a0_socket).await;
    until_id(&mut a0_stream, &all).await;
    let mut s_stream = support::grpc::x509_svids(&server_socket).await;
    until_id(&mut s_stream, &format!("spiffe://{TD}/local")).await;

    // Idle RSS: one entry and the peer bundle each, the agent connected to the server.
    tokio::time::sleep(Duration::from_secs(if common::smoke() { 1 } else { 5 })).await;
    let (agent_rss, server_rss) = (
        common::rss_kib(agent0.pid()),
        common::rss_kib(server.proc().pid()),
    );
    let mib = |k: u64| k as f64 / 1024.0;
    row(
        "agent idle RSS (1 entry, 1 peer bundle, connected)",
        &format!("{:.1} MiB", mib(agent_rss)),
        &format!(
            "{:.1} MiB server idle (agent API on, 1 agent)",
            mib(server_rss)
        ),
        Some(agent_rss as f64 / server_rss.max(1) as f64),
        "< 15 MiB",
        Met::from(agent_rss < 15 * 1024),
    );

    note(&format!(
        "agents: idle RSS after {} s, agent {} / server {}",
        if common::smoke() { 1 } else { 5 },
        memory_breakdown(agent0.pid()),
        memory_breakdown(server.proc().pid())
    ));

    // New entry -> SVID on the open streams, the agent's and the server's.
    let mut extra = String::new();
    let (mut on_agent, mut on_server) = (Vec::new(), Vec::new());
    for i in 0..s.reloads {
        let (a_id, l_id) = (format!("/new-agent-{i}"), format!("/new-local-{i}"));
        extra.push_str(&entry(&a_id, Some("node-0")));
        extra.push_str(&entry(&l_id, None));
        let before = server.proc().count("config reloaded");
        server_config(peer, &cert, &format!("{}{extra}", base_entries())).write(&sdir);
        let t0 = Instant::now();
        server.proc().signal("HUP");
        let (a_id, l_id) = (
            format!("spiffe://{TD}{a_id}"),
            format!("spiffe://{TD}{l_id}"),
        );
        let (a, l) = tokio::join!(
            async {
                until_id(&mut a0_stream, &a_id).await;
                t0.elapsed()
            },
            async {
                until_id(&mut s_stream, &l_id).await;
                t0.elapsed()
            }
        );
        on_agent.push(a);
        on_server.push(l);
        server
            .proc()
            .wait_for_nth_log("config reloaded", before)
            .await;
    }
    on_agent.sort();
    on_server.sort();
    for p in [50.0, 99.0] {
        let (a, b) = (percentile(&on_agent, p), percentile(&on_server, p));
        row(
            &format!(
                "new [[entry]] (SIGHUP) -> SVID on an open FetchX509SVID stream on an agent, p{p:.0} ({} reloads)",
                s.reloads
            ),
            &format!("{:.0} ms", ms(a)),
            &format!("{:.0} ms server's own socket", ms(b)),
            Some(ms(a) / ms(b).max(1e-3)),
            if p > 50.0 { "< 1000 ms" } else { "-" },
            if p > 50.0 {
                Met::from(ms(a) < 1000.0)
            } else {
                Met::NotApplicable
            },
        );
    }
    drop((a0_stream, s_stream));

    // FetchX509SVID through the agent with `clients` connected.
    let mut lat = Vec::new();
    for socket in [&a0_socket, &server_socket] {
        let (clients, streams) = hold(socket, s.clients).await;
        lat.push(in_turn(&clients).await);
        drop((streams, clients));
    }
    for p in [50.0, 99.0] {
        let (a, b) = (percentile(&lat[0], p), percentile(&lat[1], p));
        row(
            &format!(
                "FetchX509SVID first message p{p:.0} through an agent, {} clients connected, in turn",
                s.clients
            ),
            &format!("{:.2} ms", ms(a)),
            &format!("{:.2} ms server's own socket", ms(b)),
            Some(ms(a) / ms(b).max(1e-6)),
            if p > 50.0 { "< 5 ms" } else { "-" },
            if p > 50.0 {
                Met::from(ms(a) < 5.0)
            } else {
                Met::NotApplicable
            },
        );
    }

    // Bundle change fan-out: agents x per_agent streams, against as many on the server.
    let mut others = Vec::new();
    for i in 1..s.agents {
        others.push(start_agent(i, &server).await);
    }
    for (i, a) in others.iter().enumerate() {
        a.wait_for_log(node_agent::READY).await;
        first_svid(
            &node_agent::workload_socket(&agent_dir(i + 1)),
            Instant::now(),
        )
        .await;
    }
    let agent_rss_all: Vec<u64> = std::iter::once(&agent0)
        .chain(&others)
        .map(|a| common::rss_kib(a.pid()))
        .collect();
    let streams = s.agents * s.per_agent;
    let on_server_socket = vec![server_socket.clone(); streams];
    let base = fan_out(
        &on_server_socket,
        s.changes,
        &admin,
        &bundles,
        &mut sequence,
    )
    .await;
    let agent_sockets: Vec<PathBuf> = (0..s.agents)
        .flat_map(|i| std::iter::repeat_n(node_agent::workload_socket(&agent_dir(i)), s.per_agent))
        .collect();
    let via = fan_out(&agent_sockets, s.changes, &admin, &bundles, &mut sequence).await;
    let (v, b) = (
        median(&via.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
        median(&base.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
    );
    row(
        &format!(
            "bundle change -> every stream updated, {} agents x {} workloads ({streams} streams), median of {}",
            s.agents, s.per_agent, s.changes
        ),
        &format!("{v:.0} ms"),
        &format!("{b:.0} ms, {streams} streams on the server's own socket"),
        Some(v / b.max(1e-3)),
        "< 1000 ms",
        Met::from(via.iter().all(|d| ms(*d) < 1000.0)),
    );
    note(&format!(
        "agents: {} agent processes and the server on loopback (127.0.0.1, one network namespace), \
         every workload is this bench's process; fan-out per change, ms: via agents {:?}, server's \
         own socket {:?}; agents' RSS KiB min/median/max {}/{:.0}/{}; server RSS with them {} KiB",
        s.agents,
        via.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
        base.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
        agent_rss_all.iter().min().unwrap(),
        median(&agent_rss_all.iter().map(|k| *k as f64).collect::<Vec<_>>()),
        agent_rss_all.iter().max().unwrap(),
        common::rss_kib(server.proc().pid()),
    ));
    drop(others);

    // Start from the cache with every server down, against a server start.
    server.proc.take().unwrap().kill_9();
    let mut agent = agent0;
    let config = agent_dir(0).join("agent.toml");
    let mut agent_starts = Vec::new();
    for _ in 0..s.starts {
        agent.kill_9();
        let t = Instant::now();
        agent = Proc::spawn(&["agent", "--config", config.to_str().unwrap()]);
        agent_starts.push(ms(first_svid(&a0_socket, t).await));
    }
    drop(agent);
    let mut server_starts = Vec::new();
    for _ in 0..s.starts {
        let t = Instant::now();
        let p = Proc::spawn(&["serve", "--config", server.config_path.to_str().unwrap()]);
        server_starts.push(ms(first_svid(&server_socket, t).await));
        p.stop();
    }
    let (a, b) = (median(&agent_starts), median(&server_starts));
    row(
        "agent start from its cache, every server down: spawn to serving the cached SVID (median)",
        &format!("{a:.1} ms"),
        &format!("{b:.1} ms server start to serving an SVID"),
        Some(a / b.max(1e-3)),
        "< 100 ms",
        Met::from(a < 100.0),
    );
    note(&format!(
        "agents: {} starts each, ms: agent from cache {agent_starts:.1?}, server {server_starts:.1?}",
        s.starts
    ));
}

/// Two replicas on PostgreSQL, the agent listing both: `kill -9` of its replica until it is
/// connected to the other; the killed one restarts, and the next round kills the other.
async fn failover(s: &Sizes) {
    let Some(db) = pg_support::test_db("bench_agent_failover") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let ports = [common::free_port(), common::free_port()];
    let dirs = [root.path().join("server-a"), root.path().join("server-b")];
    let config = node_agent::server_config_on(
        TD,
        &format!("127.0.0.1:{}", ports[0]),
        &entry("/web", Some("node-1")),
    )
    .section(&format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"\n",
        db.url
    ));
    ServerProc::prepare(&dirs[0], &config);
    node_agent::copy_replica(&dirs[0], &dirs[1]);
    let b_config = dirs[1].join("meshtrust.toml");
    let text = std::fs::read_to_string(&b_config).unwrap().replace(
        &format!("127.0.0.1:{}", ports[0]),
        &format!("127.0.0.1:{}", ports[1]),
    );
    std::fs::write(&b_config, text).unwrap();
    let addrs: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();

    let mut servers: [Option<ServerProc>; 2] = [Some(ServerProc::start(&dirs[0]).await), None];
    let token = servers[0].as_ref().unwrap().token("node-1").await;
    let adir = root.path().join("agent");
    let agent_config = AgentConfig::new(TD, &addrs, &dirs[0].join("bundle.pem"))
        .join_token(&token)
        .write(&adir);
    let events: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let seen = events.clone();
    let agent = Proc::spawn_watching(
        &["agent", "--config", agent_config.to_str().unwrap()],
        |_| {},
        move |line| {
            if line.contains("agent connected") {
                seen.lock().unwrap().push((Instant::now(), line.to_owned()));
            }
        },
    );
    agent.wait_for_log("agent connected").await;
    let socket = node_agent::workload_socket(&adir);
    first_svid(&socket, Instant::now()).await;
    servers[1] = Some(ServerProc::start(&dirs[1]).await);

    let mut took = Vec::new();
    let mut on = 0;
    for _ in 0..s.failovers {
        let other = 1 - on;
        let before = events.lock().unwrap().len();
        let killed = Instant::now();
        servers[on].take().unwrap().proc.take().unwrap().kill_9();
        let at = loop {
            assert!(killed.elapsed() < GUARD, "no failover: {}", agent.log());
            if let Some((at, line)) = events.lock().unwrap().get(before).cloned() {
                assert!(line.contains(&addrs[other].to_string()), "{line}");
                break at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        took.push(at - killed);
        first_svid(&socket, Instant::now()).await;
        servers[on] = Some(ServerProc::start(&dirs[on]).await);
        on = other;
    }
    took.sort();
    row(
        &format!(
            "replica failover: kill -9 of the agent's replica -> agent connected to the other (2 replicas on PostgreSQL), max of {}",
            s.failovers
        ),
        &format!(
            "{:.0} ms (median {:.0})",
            ms(*took.last().unwrap()),
            ms(percentile(&took, 50.0))
        ),
        "-",
        None,
        "< 2000 ms",
        Met::from(ms(*took.last().unwrap()) < 2000.0),
    );
    note(&format!(
        "agents: failover per round, ms: {:?} (replicas and agent on 127.0.0.1; `agent connected` is logged once its Sync stream is open)",
        took.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    ));
}
