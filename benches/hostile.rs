//! Figures under attack (the hardening issue's attacks, issue 14's last two rows):
//!
//! - The Workload API while another uid (65534, through `setpriv`; the same uid when not run as
//!   root, said in a note) holds 300 idle HTTP/2 connections on its socket and opens a new one
//!   whenever the daemon closes one: a legitimate caller's FetchX509SVID time to first message,
//!   p99 over calls in turn (target < 2x the quiet p99 of the same run).
//! - The bundle endpoint (`https_spiffe`) while 300 TCP connections sit idle on it, reopened when
//!   closed: keep-alive requests/s from wrk (`-t1 -c8`), against the quiet rate in the same run
//!   (target >= 0.8x).
//!
//! One release daemon serves both; each quiet run comes right before its attacked run. The
//! attacker is this bench binary re-run as a child (`--role attacker`), so it is a separate
//! process with its own uid.

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Spawned;
use common::fixtures::{DaemonConfig, Endpoint, current_uid};
use common::{Met, ms, note, percentile, row};
use hyper_util::rt::TokioIo;
use meshtrust::workload_api::proto::X509svidRequest;
use meshtrust::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

/// The uid of the local attacker when this bench runs as root.
const NOBODY: &str = "65534";

/// An HTTP/2 client preface and an empty SETTINGS frame: a connection that then says nothing.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The attacker's loop: keeps `n` idle connections open to a Unix socket (`--socket`) or a TCP
/// address (`--tcp`), reopening each one the server closes; says `holding` once all are open.
fn attacker() {
    let n: usize = common::arg("n").unwrap().parse().unwrap();
    let socket = common::arg("socket");
    let tcp = common::arg("tcp");
    let open = || -> Option<Box<dyn ReadWrite>> {
        if let Some(path) = &socket {
            let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
            s.write_all(H2_PREFACE).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(Box::new(s))
        } else {
            let s = std::net::TcpStream::connect(tcp.as_deref().unwrap()).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(Box::new(s))
        }
    };
    let mut conns: Vec<Option<Box<dyn ReadWrite>>> = (0..n).map(|_| open()).collect();
    println!("holding {}", conns.iter().filter(|c| c.is_some()).count());
    let mut buf = [0_u8; 4096];
    loop {
        for slot in &mut conns {
            let closed = match slot {
                None => true,
                Some(c) => match c.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                },
            };
            if closed {
                *slot = open();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// The attacker child, stopped (killed) on drop.
struct Attacker(Child);

impl Attacker {
    fn start(target: &[&str], n: usize) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut args: Vec<String> = vec![
            exe.display().to_string(),
            "--role".into(),
            "attacker".into(),
            "--n".into(),
            n.to_string(),
        ];
        args.extend(target.iter().map(|s| (*s).to_owned()));
        let mut cmd = if current_uid() == 0 {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"]);
            c.args(&args);
            c
        } else {
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]);
            c
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the attacker");
        let mut line = String::new();
        let mut out = child.stdout.take().unwrap();
        let mut byte = [0_u8; 1];
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(char::from(byte[0]));
        }
        assert!(line.starts_with("holding "), "attacker said {line:?}");
        let held: usize = line["holding ".len()..].parse().unwrap();
        assert!(held > 0, "the attacker opened no connection");
        note(&format!(
            "hostile: the attacker ({}) held {held} of {n} connections to {}",
            if current_uid() == 0 {
                "uid 65534"
            } else {
                "same uid"
            },
            target.last().copied().unwrap_or("?")
        ));
        Self(child)
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let socket = socket.to_owned();
    let channel = TonicEndpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .expect("connect to the Workload API");
    SpiffeWorkloadApiClient::new(channel)
}

/// `calls` FetchX509SVID calls in turn on one connection: each one's time to its first message,
/// sorted.
async fn fetch_in_turn(socket: &Path, calls: usize) -> Vec<Duration> {
    let client = connect(socket).await;
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let start = Instant::now();
        let mut stream = client
            .clone()
            .fetch_x509svid(req)
            .await
            .expect("FetchX509SVID")
            .into_inner();
        let first = stream.message().await.unwrap().expect("a first message");
        out.push(start.elapsed());
        assert!(!first.svids.is_empty());
    }
    out.sort();
    out
}

/// Keep-alive requests/s from one bounded wrk run.
fn wrk_rate(port: u16, secs: u32) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{secs}s")])
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "the endpoint answered errors:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}

fn main() {
    if common::arg("role").as_deref() == Some("attacker") {
        attacker();
        return;
    }
    let smoke = common::smoke();
    let (calls, idle, secs) = if smoke { (20, 10, 1) } else { (2000, 300, 10) };

    let dir = tempfile::tempdir().unwrap();
    // uid 65534 must reach the socket inside.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = common::free_port();
    let config = DaemonConfig {
        endpoint: Some(Endpoint::Spiffe { port }),
        ..DaemonConfig::minimal()
    }
    .write(dir.path());
    let mut daemon = Spawned::serve(&config);
    daemon.wait_ready(Duration::from_secs(60));
    let socket = dir.path().join("workload.sock");
    if current_uid() != 0 {
        note("hostile: not root, so the local attacker runs as the same uid as the caller");
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let quiet = rt.block_on(fetch_in_turn(&socket, calls));
    let attacked = {
        let socket_arg = socket.display().to_string();
        let _attacker = Attacker::start(&["--socket", &socket_arg], idle);
        rt.block_on(fetch_in_turn(&socket, calls))
    };
    let (q99, a99) = (percentile(&quiet, 99.0), percentile(&attacked, 99.0));
    let ratio = ms(a99) / ms(q99).max(f64::MIN_POSITIVE);
    row(
        &format!(
            "FetchX509SVID p99 while another uid holds {idle} idle connections ({calls} calls in turn)"
        ),
        &format!(
            "{:.3} ms (p50 {:.3})",
            ms(a99),
            ms(percentile(&attacked, 50.0))
        ),
        &format!(
            "{:.3} ms quiet (p50 {:.3})",
            ms(q99),
            ms(percentile(&quiet, 50.0))
        ),
        Some(ratio),
        "< 2x quiet",
        Met::from(ratio < 2.0),
    );

    if common::have_tools(&["wrk"]) {
        let quiet_rate = wrk_rate(port, secs);
        let attacked_rate = {
            let addr = format!("127.0.0.1:{port}");
            let _attacker = Attacker::start(&["--tcp", &addr], idle);
            wrk_rate(port, secs)
        };
        let ratio = attacked_rate / quiet_rate.max(f64::MIN_POSITIVE);
        row(
            &format!(
                "bundle endpoint keep-alive req/s under {idle} idle TCP connections (wrk -t1 -c8)"
            ),
            &format!("{attacked_rate:.0}/s"),
            &format!("{quiet_rate:.0}/s quiet"),
            Some(ratio),
            ">= 0.8x quiet",
            Met::from(ratio >= 0.8),
        );
    }
    daemon.stop();
}
