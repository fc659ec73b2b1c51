//! The Workload API socket (mode 0777) under attack by a local uid (issue 9, items 1 and 3),
//! against the real `meshtrust serve`.
//!
//! Who attacks whom: the attacker is uid 65534 (`setpriv`), running this test binary as a child
//! process (`attacker`, an ignored test that only acts under `HOSTILE_ATTACK`): it opens 300
//! connections and holds them. The legitimate caller is root (this test process), which has an
//! entry. The daemon runs with its fd limit lowered to 256 (`prlimit --pid` once it is ready;
//! it follows the change and logs its new connection caps, which the tests wait for).
//! Each test asserts that while the attack goes on root still gets its SVID (gRPC and JSON),
//! `meshtrust status` answers, the daemon's RSS stays under [`RSS_BOUND`], its descriptors stay
//! well under the limit, and the log grows by at most [`LOG_BOUND`] lines.
//!
//! Per-request attestation: a process that was served its identity and then execs another
//! binary (same pid, same connection) or hands the socket to another process and exits, is
//! refused on the same connection. And short limits (in-process, [`serve_with`]) show the idle
//! and header timeouts closing connections.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;
use std::time::{Duration, Instant};

use common::config::DaemonConfig;
use common::daemon::{GUARD, Proc, root_or_skip};
use common::http::Curl;
use meshtrust::workload_api::{
    Limits, RefusalReason, Refusals, ServeOptions, WorkloadApiDeps, bind, serve_with,
};
use tokio_util::sync::CancellationToken;

const NOBODY: &str = "65534";
const ATTACK_ENV: &str = "HOSTILE_ATTACK";
const SOCKET_ENV: &str = "HOSTILE_SOCKET";
const RESULT_ENV: &str = "HOSTILE_RESULT";
const COPY_ENV: &str = "HOSTILE_COPY";
const PARENT_ENV: &str = "HOSTILE_PARENT";
/// Connections the attacker opens (the issue's reproduction).
const ATTACK_CONNECTIONS: usize = 300;
/// The daemon's fd limit during the attacks (the issue's `ulimit -n 256`).
const FD_LIMIT: usize = 256;
/// The daemon's resident memory stays under this during every attack (the CONTINUATION attack
/// took it from 19 MB to 222 MB before the fix).
const RSS_BOUND_KB: u64 = 64 * 1024;
/// Log lines the daemon may write while an attack goes on (it wrote 1,886 a minute before).
const LOG_BOUND: usize = 20;

// === frames ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn preface_and_settings() -> Vec<u8> {
    [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()
}

// === the attacker (a child process as uid 65534) ===

/// What one attacking connection sends before it just stays open.
fn attack(kind: &str, i: usize, s: &mut UnixStream) -> std::io::Result<()> {
    match kind {
        // The HTTP/2 preface and an empty SETTINGS, then nothing.
        "idle-h2" => s.write_all(&preface_and_settings()),
        // Half: HEADERS + CONTINUATION frames up to ~1 MB, never END_HEADERS (a flood). The
        // other half: 8 KiB of header block, never finished, then nothing (a slow block).
        "continuation" => {
            s.write_all(&preface_and_settings())?;
            s.write_all(&frame(HEADERS, 0, 1, &[0x82]))?;
            let chunk = frame(CONTINUATION, 0, 1, &[0x40; 16 * 1024 - 9]);
            let (frames, chunk) = if i.is_multiple_of(2) {
                (64, chunk)
            } else {
                (1, frame(CONTINUATION, 0, 1, &[0x40; 8 * 1024]))
            };
            for _ in 0..frames {
                s.write_all(&chunk)?;
            }
            Ok(())
        }
        // An HTTP/1.1 request head never finished.
        "idle-h1" => s.write_all(b"GET /v1/x509-svid HTTP/1.1\r\nHost: localhost\r\n"),
        other => panic!("unknown attack {other}"),
    }
}

/// The attacker, run by [`Attacker::start`] as uid 65534: opens the connections, prints
/// `ATTACKING`, and holds them until it is killed.
#[test]
#[ignore = "child process of the hostile tests (acts only under HOSTILE_ATTACK)"]
fn attacker() {
    let Ok(kind) = std::env::var(ATTACK_ENV) else {
        return;
    };
    let socket = std::env::var(SOCKET_ENV).unwrap();
    let mut held = Vec::new();
    let (mut connect_errors, mut send_errors) = (0, 0);
    for i in 0..ATTACK_CONNECTIONS {
        match UnixStream::connect(&socket) {
            Ok(mut s) => {
                s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                if attack(&kind, i, &mut s).is_err() {
                    send_errors += 1;
                }
                held.push(s);
            }
            Err(_) => connect_errors += 1,
        }
    }
    println!(
        "ATTACKING {kind}: {} connected, {connect_errors} connect errors, {send_errors} closed while sending",
        held.len()
    );
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The attacking child process; killed on drop.
struct Attacker(std::process::Child);

impl Attacker {
    /// Starts the attacker as uid 65534 and waits (under the guard) until it holds its
    /// connections; returns it and its report line.
    fn start(kind: &str, socket: &Path) -> (Self, String) {
        let (child, line) = common::spawn_until_line(
            Command::new("setpriv")
                .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", "attacker", "--ignored", "--nocapture"])
                .env(ATTACK_ENV, kind)
                .env(SOCKET_ENV, socket)
                .stderr(Stdio::null()),
            "ATTACKING",
            "the attacker did not report",
        );
        (Self(child), line)
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// === the daemon ===

struct Daemon {
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// `meshtrust serve` with `entries` (TOML), ready.
    async fn start(entries: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // uid 65534 must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = DaemonConfig::plain("mesh-a.test")
            .section(entries)
            .write(dir.path());
        let proc = Proc::serve(&config).await;
        Self { proc, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("workload.sock")
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Lowers the running daemon's fd limit (soft and hard) to `n`.
    fn limit_fds(&self, n: usize) {
        self.prlimit(&format!("--nofile={n}:{n}"));
    }

    /// Sets the running daemon's soft fd limit only (so it can be raised again).
    fn soft_limit_fds(&self, n: usize) {
        self.prlimit(&format!("--nofile={n}:"));
    }

    fn prlimit(&self, arg: &str) {
        let ok = Command::new("prlimit")
            .args(["--pid", &self.pid().to_string(), arg])
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit failed");
    }

    fn rss_kb(&self) -> u64 {
        common::daemon::rss_kib(self.pid())
    }

    fn open_fds(&self) -> usize {
        common::daemon::open_fds(self.pid())
    }

    fn log_lines(&self) -> usize {
        self.proc.log().lines().count()
    }

    /// The legitimate caller (root): its SVID over gRPC and over the JSON view, and
    /// `meshtrust status`, all while the attack goes on.
    async fn assert_serves_root(&self) {
        let endpoint = format!("unix://{}", self.socket().display());
        let client = tokio::time::timeout(GUARD, spiffe::WorkloadApiClient::connect_to(endpoint))
            .await
            .expect("hang guard")
            .unwrap();
        let svid = tokio::time::timeout(GUARD, client.fetch_x509_svid())
            .await
            .expect("hang guard: root's FetchX509SVID")
            .unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://mesh-a.test/root");

        let reply = Curl::get(&self.socket(), "/v1/x509-svid").send().await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            reply.body.contains("spiffe://mesh-a.test/root"),
            "{}",
            reply.body
        );

        let admin = self.dir.path().join("admin.sock");
        let status =
            common::cli_async(&["status", "--admin-socket", admin.to_str().unwrap()]).await;
        assert_eq!(status.code, 0, "meshtrust status: {}", status.stderr);
    }
}

const ROOT_ENTRY: &str = r#"[[entry]]
spiffe_id = "spiffe://mesh-a.test/root"
selectors = ["unix:uid:0"]
"#;

/// Runs `kind` as uid 65534 against a daemon limited to 256 descriptors and checks that root
/// is served throughout; `wait_for` are log lines the attack must cause (waited for).
async fn attack_leaves_root_served(test: &str, kind: &str, wait_for: &[&str]) {
    if !root_or_skip(test) {
        return;
    }
    let daemon = Daemon::start(ROOT_ENTRY).await;
    daemon.limit_fds(FD_LIMIT);
    // The daemon re-reads its fd limit (at most once a second, on a new connection): call
    // until it logs the caps that follow from 256 descriptors.
    let caps = "max_connections=128 max_connections_per_uid=64";
    let deadline = Instant::now() + GUARD;
    while daemon.proc.count(caps) == 0 {
        assert!(
            Instant::now() < deadline,
            "hang guard: no {caps:?} in\n{}",
            daemon.proc.log()
        );
        daemon.assert_serves_root().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (rss_before, lines_before) = (daemon.rss_kb(), daemon.log_lines());

    let (attacker, report) = Attacker::start(kind, &daemon.socket());
    eprintln!("{test}: {report}");
    for needle in wait_for {
        daemon.proc.wait_for_log(needle).await;
    }
    daemon.assert_serves_root().await;
    // Twice, with the attack still on: a second round is no different.
    daemon.assert_serves_root().await;

    let (rss, fds, lines) = (daemon.rss_kb(), daemon.open_fds(), daemon.log_lines());
    eprintln!(
        "{test}: RSS {rss_before} kB -> {rss} kB, {fds} fds open (limit {FD_LIMIT}), {} log lines during the attack",
        lines - lines_before
    );
    assert!(rss < RSS_BOUND_KB, "RSS {rss} kB, bound {RSS_BOUND_KB} kB");
    // The per-uid cap (half of the connections the fd limit allows, which are half the
    // descriptors) holds the attacker to 64: most of the fd table stays free for the rest.
    assert!(fds < FD_LIMIT / 2, "{fds} fds open");
    assert!(
        lines - lines_before <= LOG_BOUND,
        "{} log lines:\n{}",
        lines - lines_before,
        daemon.proc.log()
    );
    drop(attacker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_of_another_uid_do_not_starve_root() {
    attack_leaves_root_served(
        "idle_http2_connections_of_another_uid_do_not_starve_root",
        "idle-h2",
        &["reason=\"too_many_connections_for_uid\" uid=65534"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_header_blocks_of_another_uid_do_not_starve_root_nor_grow_memory() {
    // The flood is cut at the 16 KiB cap at once; the slow blocks at the 10 s header deadline.
    attack_leaves_root_served(
        "unfinished_header_blocks_of_another_uid_do_not_starve_root_nor_grow_memory",
        "continuation",
        &[
            "reason=\"too_many_connections_for_uid\" uid=65534",
            "reason=\"header_timeout\" uid=65534",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_of_another_uid_do_not_starve_root() {
    attack_leaves_root_served(
        "idle_http1_connections_of_another_uid_do_not_starve_root",
        "idle-h1",
        &[
            "reason=\"too_many_connections_for_uid\" uid=65534",
            "reason=\"header_timeout\" uid=65534",
        ],
    )
    .await;
}

// === raw clients ===

/// `GET /v1/x509-svid` (keep-alive) on a raw connection: (status, lower-cased head, body).
fn get_svid(s: &mut UnixStream) -> (u16, String, String) {
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(
        b"GET /v1/x509-svid HTTP/1.1\r\nHost: localhost\r\nworkload.spiffe.io: true\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "EOF in the response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (code, head, String::from_utf8(body).unwrap())
}

/// Whether the server closed `s`: the next read is EOF (under the guard).
fn closed_by_server(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(GUARD)).unwrap();
    matches!(s.read(&mut [0u8; 1]), Ok(0))
}

fn identity_word(body: &str) -> &'static str {
    if body.contains("spiffe://mesh-a.test/tester") {
        "identity"
    } else {
        "none"
    }
}

/// An entry for this test binary run by this uid (what the child processes below are).
fn tester_entry() -> String {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/tester\"\nselectors = [\"unix:uid:{}\", \"unix:path:{}\"]\n",
        common::own_uid(),
        exe.display()
    )
}

/// Execs `copy` (a copy of this test binary) to run the ignored child test `test`, with
/// `PARENT_ENV=mode` and the connection `s` as its stdin: the same pid, another binary.
fn exec_with_connection(copy: String, test: &str, mode: &str, s: UnixStream) -> ! {
    use std::os::unix::process::CommandExt as _;
    std::io::stdout().flush().unwrap();
    let err = Command::new(copy)
        .args(["--exact", test, "--ignored", "--nocapture"])
        .env_remove(COPY_ENV)
        .env(PARENT_ENV, mode)
        .stdin(Stdio::from(OwnedFd::from(s)))
        .exec();
    panic!("exec failed: {err}");
}

/// The connection this process inherited as its stdin.
fn inherited_connection() -> UnixStream {
    UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap())
}

/// In a binary [`exec_with_connection`] ran with `mode`: the inherited connection; elsewhere
/// (a plain run of the ignored tests) none.
fn inherited_after_exec(mode: &str) -> Option<UnixStream> {
    (std::env::var(PARENT_ENV).as_deref() == Ok(mode)).then(inherited_connection)
}

async fn run_child(test: &str, envs: &[(&str, &Path)]) -> String {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--ignored", "--nocapture"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(GUARD, cmd.output())
        .await
        .expect("hang guard: child")
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    text
}

// === per-request attestation ===

#[tokio::test]
async fn a_process_that_execs_another_binary_loses_its_identity_on_the_same_connection() {
    // Issue 9 item 3: attestation is per request, so the connection a process opened and was
    // served on does not carry its identity into another binary it execs (same pid).
    let daemon = Daemon::start(&tester_entry()).await;
    let copy = daemon.dir.path().join("another-binary");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let text = run_child(
        "exec_child",
        &[(SOCKET_ENV, &daemon.socket()), (COPY_ENV, &copy)],
    )
    .await;
    assert!(text.contains("BEFORE 200 identity"), "{text}");
    // PermissionDenied as 403, then the connection is closed (the caller may reconnect).
    assert!(
        text.contains("AFTER EXEC 403 none connection-close closed"),
        "{text}"
    );
}

/// Child of the test above: connects, is served, then execs a copy of this binary that
/// inherits the connection as its stdin.
#[test]
#[ignore = "child process of a_process_that_execs_another_binary_loses_its_identity_on_the_same_connection"]
fn exec_child() {
    let Ok(copy) = std::env::var(COPY_ENV) else {
        return;
    };
    let mut s = UnixStream::connect(std::env::var(SOCKET_ENV).unwrap()).unwrap();
    let (code, _, body) = get_svid(&mut s);
    println!("BEFORE {code} {}", identity_word(&body));
    exec_with_connection(copy, "exec_after", "exec", s);
}

/// The exec'd binary (same pid): asks again on the inherited connection.
#[test]
#[ignore = "child process of a_process_that_execs_another_binary_loses_its_identity_on_the_same_connection"]
fn exec_after() {
    let Some(mut s) = inherited_after_exec("exec") else {
        return;
    };
    let (code, head, body) = get_svid(&mut s);
    let close = if head.contains("connection: close") {
        "connection-close"
    } else {
        "keep-alive"
    };
    let closed = if closed_by_server(&mut s) {
        "closed"
    } else {
        "open"
    };
    println!(
        "AFTER EXEC {code} {} {close} {closed}",
        identity_word(&body)
    );
}

#[tokio::test]
async fn a_socket_handed_to_another_process_is_refused_once_the_connecting_one_is_gone() {
    // The pid-reuse guard: the pid recorded at connect names a process that exited (or, if
    // the pid was reused, another process): the holder of the socket is not attested as it.
    let daemon = Daemon::start(&tester_entry()).await;
    let result = daemon.dir.path().join("handover-result");
    let text = run_child(
        "handover_child",
        &[(SOCKET_ENV, &daemon.socket()), (RESULT_ENV, &result)],
    )
    .await;
    assert!(text.contains("BEFORE 200 identity"), "{text}");
    // The child has exited and been reaped; its successor writes what it got.
    let deadline = Instant::now() + GUARD;
    let got = loop {
        if let Ok(got) = std::fs::read_to_string(&result)
            && got.ends_with('\n')
        {
            break got;
        }
        assert!(Instant::now() < deadline, "hang guard: no handover result");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Unavailable (attestation failed) as 503, then the connection is closed.
    assert_eq!(got, "AFTER HANDOVER 503 none closed\n");
}

/// Child of the test above: connects, is served, hands the connection to a new process (the
/// same binary, so only the pid differs) and exits.
#[test]
#[ignore = "child process of a_socket_handed_to_another_process_is_refused_once_the_connecting_one_is_gone"]
fn handover_child() {
    let (Ok(result), Err(_)) = (std::env::var(RESULT_ENV), std::env::var(PARENT_ENV)) else {
        return;
    };
    let mut s = UnixStream::connect(std::env::var(SOCKET_ENV).unwrap()).unwrap();
    let (code, _, body) = get_svid(&mut s);
    println!("BEFORE {code} {}", identity_word(&body));
    // Not waited for on purpose: this process must be gone before its successor asks.
    #[allow(clippy::zombie_processes)]
    let _successor = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "handover_after", "--ignored", "--nocapture"])
        .env(PARENT_ENV, std::process::id().to_string())
        .env(RESULT_ENV, result)
        .stdin(Stdio::from(OwnedFd::from(s)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}

/// The process the socket was handed to: waits until the connecting process is gone, asks.
#[test]
#[ignore = "child process of a_socket_handed_to_another_process_is_refused_once_the_connecting_one_is_gone"]
fn handover_after() {
    let Ok(parent) = std::env::var(PARENT_ENV) else {
        return;
    };
    let Ok(result) = std::env::var(RESULT_ENV) else {
        return;
    };
    let deadline = Instant::now() + GUARD;
    while Path::new(&format!("/proc/{parent}")).exists() {
        assert!(Instant::now() < deadline, "hang guard: parent still there");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut s = inherited_connection();
    let (code, _, body) = get_svid(&mut s);
    let closed = if closed_by_server(&mut s) {
        "closed"
    } else {
        "open"
    };
    let line = format!("AFTER HANDOVER {code} {} {closed}\n", identity_word(&body));
    std::fs::write(result, line).unwrap();
}

// === a caller with no entry is answered, then closed ===

const DATA: u8 = 0x0;
const PING: u8 = 0x6;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// What a raw HTTP/2 client saw until the server closed the connection.
#[derive(Debug, Default)]
struct H2Seen {
    /// Frame types in order.
    kinds: Vec<u8>,
    /// The decoded header blocks the server sent.
    headers: Vec<Vec<(String, String)>>,
    /// The server's SETTINGS (identifier, value).
    settings: Vec<(u16, u32)>,
}

/// Reads frames until EOF (under the guard), acknowledging SETTINGS and PINGs like a client.
fn read_until_closed(s: &mut UnixStream) -> H2Seen {
    read_frames_until_closed(s, true)
}

/// [`read_until_closed`], acknowledging only when `ack`.
fn read_frames_until_closed(s: &mut UnixStream, ack: bool) -> H2Seen {
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut seen = H2Seen::default();
    let mut decoder = loona_hpack::Decoder::new();
    loop {
        let mut head = [0u8; 9];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return seen,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return seen,
            Err(e) => panic!("hang guard or read error: {e}; saw {seen:?}"),
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        let (kind, flags) = (head[3], head[4]);
        seen.kinds.push(kind);
        match kind {
            SETTINGS if ack && flags & ACK == 0 => {
                for p in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([p[0], p[1]]);
                    seen.settings
                        .push((id, u32::from_be_bytes([p[2], p[3], p[4], p[5]])));
                }
                let _ = s.write_all(&frame(SETTINGS, ACK, 0, &[]));
            }
            PING if ack && flags & ACK == 0 => {
                let _ = s.write_all(&frame(PING, ACK, 0, &payload));
            }
            HEADERS => {
                let fields = decoder.decode(&payload).unwrap();
                seen.headers.push(
                    fields
                        .into_iter()
                        .map(|(n, v)| {
                            (
                                String::from_utf8_lossy(&n).into_owned(),
                                String::from_utf8_lossy(&v).into_owned(),
                            )
                        })
                        .collect(),
                );
            }
            _ => {}
        }
    }
}

/// A FetchX509SVID call in raw frames (stream 1, request complete).
fn fetch_x509_svid_frames() -> Vec<u8> {
    let block = loona_hpack::Encoder::new().encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"workload.spiffe.io", b"true"),
    ]);
    [
        preface_and_settings(),
        frame(HEADERS, END_HEADERS, 1, &block),
        frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]),
    ]
    .concat()
}

#[tokio::test]
async fn a_caller_with_no_entry_is_answered_then_its_connection_is_closed() {
    // Only another uid has an entry: this process is a caller with none.
    let daemon = Daemon::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/other\"\nselectors = [\"unix:uid:{}\"]\n",
        common::own_uid().wrapping_add(4242)
    ))
    .await;

    // gRPC: PermissionDenied, then GOAWAY and the end of the connection.
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    s.write_all(&fetch_x509_svid_frames()).unwrap();
    let seen = tokio::task::spawn_blocking(move || read_until_closed(&mut s))
        .await
        .unwrap();
    let status = seen
        .headers
        .iter()
        .flatten()
        .find(|(n, _)| n == "grpc-status")
        .map(|(_, v)| v.as_str());
    assert_eq!(status, Some("7"), "PermissionDenied: {seen:?}");
    assert!(seen.kinds.contains(&GOAWAY), "{seen:?}");

    // The JSON view: 403 with `Connection: close`, then EOF.
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    let (code, head, body) = tokio::task::spawn_blocking(move || {
        let got = get_svid(&mut s);
        assert!(closed_by_server(&mut s), "the connection stays open");
        got
    })
    .await
    .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, r#"{"error":"no identity issued"}"#);

    // It may retry: a new connection is answered the same way.
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    let (code, _, _) = tokio::task::spawn_blocking(move || get_svid(&mut s))
        .await
        .unwrap();
    assert_eq!(code, 403);
    daemon.proc.wait_for_log("reason=\"no_identity\"").await;
}

// === deadlines (in-process, with short limits) ===

struct ShortLimits {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    refusals: Arc<Refusals>,
    cancel: CancellationToken,
    _ca: meshtrust::ca::Ca,
}

impl Drop for ShortLimits {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The Workload API served in this process with a 3 s idle and a 1 s header timeout, this uid
/// entitled to `spiffe://mesh-a.test/tester`.
async fn serve_short_limits() -> ShortLimits {
    use common::workload::{HOUR, entry, open_ca, storage};
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(meshtrust::clock::ManualClock::new(SystemTime::now()));
    let own = storage(&dir.path().join("a"));
    let ca = open_ca(own.clone(), "mesh-a.test", clock.clone(), HOUR);
    let peers = meshtrust::federation::pinned::PeerStore::open(own, vec![]).unwrap();
    let entries = vec![entry(
        "spiffe://mesh-a.test/tester",
        vec![meshtrust::config::Selector::Uid(common::own_uid())],
        &[],
        "",
    )];
    let deps = WorkloadApiDeps::new(ca.subscribe(), peers.subscribe(), entries, clock);
    let socket = dir.path().join("workload.sock");
    let listener = bind(&socket).unwrap();
    let metrics = Arc::new(meshtrust::metrics::workload_api::WorkloadApiMetrics::default());
    let refusals = metrics.refusals().clone();
    let options = ServeOptions {
        limits: Limits {
            // Longer than the header deadline, which must be what closes an unfinished block.
            idle_timeout: Duration::from_secs(3),
            header_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        metrics,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(serve_with(listener, deps, options, cancel.clone()));
    ShortLimits {
        _dir: dir,
        socket,
        refusals,
        cancel,
        _ca: ca,
    }
}

/// Sends `bytes` on a new connection and waits (under the guard) for the server to close it.
async fn closed_after_sending(socket: &Path, bytes: Vec<u8>) -> H2Seen {
    let mut s = UnixStream::connect(socket).unwrap();
    tokio::task::spawn_blocking(move || {
        s.write_all(&bytes).unwrap();
        read_until_closed(&mut s)
    })
    .await
    .unwrap()
}

/// [`closed_after_sending`] with a client that sends nothing more (no SETTINGS ACK).
async fn closed_after_sending_silent(socket: &Path, bytes: Vec<u8>) -> H2Seen {
    let mut s = UnixStream::connect(socket).unwrap();
    tokio::task::spawn_blocking(move || {
        s.write_all(&bytes).unwrap();
        read_frames_until_closed(&mut s, false)
    })
    .await
    .unwrap()
}

async fn eventually_counted(refusals: &Refusals, reason: RefusalReason, n: u64) {
    let deadline = Instant::now() + GUARD;
    while refusals.count(reason) < n {
        assert!(Instant::now() < deadline, "hang guard: {reason:?} < {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn idle_connections_and_unfinished_requests_are_closed_by_their_deadlines() {
    let api = serve_short_limits().await;
    let socket = &api.socket;

    // HTTP/2 after the preface and SETTINGS, then nothing: GOAWAY, then closed.
    let seen = closed_after_sending(socket, preface_and_settings()).await;
    assert!(seen.kinds.contains(&GOAWAY), "{seen:?}");
    // What the server advertised: the stream cap and h2's header list size, both ours.
    let max_streams = Limits::default().max_streams_per_connection;
    assert!(seen.settings.contains(&(0x3, max_streams)), "{seen:?}");
    assert!(seen.settings.contains(&(0x6, 16 * 1024)), "{seen:?}");
    eventually_counted(&api.refusals, RefusalReason::Idle, 1).await;

    // A header block never finished (below the cap): closed at the header deadline.
    let unfinished = [
        preface_and_settings(),
        frame(HEADERS, 0, 1, &[0x82]),
        frame(CONTINUATION, 0, 1, &[0x40; 1024]),
    ]
    .concat();
    // (The client acknowledges nothing: any frame would interrupt its own header block.)
    let seen = closed_after_sending_silent(socket, unfinished).await;
    assert!(
        !seen.kinds.contains(&GOAWAY),
        "an error, not a graceful close: {seen:?}"
    );
    eventually_counted(&api.refusals, RefusalReason::HeaderTimeout, 1).await;

    // Nothing at all, and an HTTP/1.1 request head never finished: the same deadline.
    closed_after_sending(socket, Vec::new()).await;
    eventually_counted(&api.refusals, RefusalReason::HeaderTimeout, 2).await;
    closed_after_sending(socket, b"GET /v1/x509-svid HTTP/1.1\r\n".to_vec()).await;
    eventually_counted(&api.refusals, RefusalReason::HeaderTimeout, 3).await;

    // HTTP/1.1 kept alive after a served request, then idle: closed. hyper starts its
    // header read timeout as soon as it waits for the next request head, so the (shorter)
    // header deadline is what closes an idle HTTP/1.1 connection.
    let mut s = UnixStream::connect(socket).unwrap();
    let (code, closed) = tokio::task::spawn_blocking(move || {
        let (code, _, _) = get_svid(&mut s);
        (code, closed_by_server(&mut s))
    })
    .await
    .unwrap();
    assert_eq!((code, closed), (200, true));
    eventually_counted(&api.refusals, RefusalReason::HeaderTimeout, 4).await;
}

#[tokio::test]
async fn an_open_stream_keeps_its_connection_past_the_idle_timeout() {
    // Only connections with nothing open idle out: a watcher's stream is not cut.
    let api = serve_short_limits().await;
    let endpoint = format!("unix://{}", api.socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("hang guard")
        .unwrap();
    assert!(first.is_ok(), "{first:?}");
    // Longer than the idle timeout with the stream open, then one more connection idles out:
    // the stream's connection was never counted idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(api.refusals.count(RefusalReason::Idle), 0);
    closed_after_sending(&api.socket, preface_and_settings()).await;
    eventually_counted(&api.refusals, RefusalReason::Idle, 1).await;
    assert_eq!(api.refusals.count(RefusalReason::Idle), 1);
}

// === accept errors ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_daemon_logs_one_accept_error_per_window_and_recovers() {
    // The issue's log flood: `accept failed: Too many open files` every 100 ms. Now one line
    // per 10 s, with the count of the ones not written.
    let test = "out_of_descriptors_the_daemon_logs_one_accept_error_per_window_and_recovers";
    if !root_or_skip(test) {
        return;
    }
    let daemon = Daemon::start(ROOT_ENTRY).await;
    daemon.assert_serves_root().await;
    // No descriptor left for an accepted connection: only 0-2 (stdio) are allowed, so even a
    // descriptor closed meanwhile cannot be reused.
    daemon.soft_limit_fds(3);
    let pending: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(daemon.socket()).unwrap())
        .collect();
    daemon.proc.wait_for_log("workload api accept failed").await;
    // The next line comes a window later and counts the failures in between (one per 100 ms
    // backoff while a connection waits in the backlog).
    let second = daemon
        .proc
        .wait_for_nth_log("workload api accept failed", 1)
        .await;
    let unlogged: u64 = second
        .split("unlogged=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {second:?}"));
    assert!(unlogged > 10, "{second}");
    assert_eq!(daemon.proc.count("workload api accept failed"), 2);
    eprintln!("{test}: {second}");

    // Descriptors back: the waiting connections are served, and so is root.
    daemon.soft_limit_fds(FD_LIMIT);
    drop(pending);
    daemon.assert_serves_root().await;
}

// === an open stream is re-attested before each update ===

#[tokio::test]
async fn an_open_stream_sends_no_update_to_the_binary_its_process_execd() {
    // A FetchX509SVID stream opened by the test binary is inherited by another binary (exec,
    // same pid). When the next update is due (here: a config reload), the stream attests the
    // caller again: the new binary matches no entry, and the stream ends instead of carrying
    // the next SVID and key.
    let daemon = Daemon::start(&tester_entry()).await;
    let copy = daemon.dir.path().join("another-binary");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stream_exec_child", "--ignored", "--nocapture"])
        .env(SOCKET_ENV, daemon.socket())
        .env(COPY_ENV, &copy)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    let next_line = async |lines: &mut tokio::io::Lines<_>, seen: &mut Vec<String>| {
        let line = tokio::time::timeout(GUARD, lines.next_line())
            .await
            .expect("hang guard: child output")
            .unwrap()
            .unwrap_or_else(|| panic!("child ended; it wrote {seen:?}"));
        seen.push(line.clone());
        line
    };
    while !next_line(&mut lines, &mut seen)
        .await
        .starts_with("WAITING")
    {}
    assert!(seen.iter().any(|l| l == "FIRST MESSAGE"), "{seen:?}");

    // An update is due: the entries change (a reload adds one for another uid).
    std::fs::write(
        daemon.dir.path().join("meshtrust.toml"),
        std::fs::read_to_string(daemon.dir.path().join("meshtrust.toml")).unwrap()
            + "[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/other\"\nselectors = [\"unix:uid:4242\"]\n",
    )
    .unwrap();
    daemon.proc.signal("HUP");
    daemon.proc.wait_for_log("config reloaded").await;
    let ended = next_line(&mut lines, &mut seen).await;
    assert_eq!(ended, "ENDED trailers, no data after the exec", "{seen:?}");
}

/// Child of the test above: opens a FetchX509SVID stream in raw frames, reads the first
/// message, then execs a copy of this binary that inherits the connection.
#[test]
#[ignore = "child process of an_open_stream_sends_no_update_to_the_binary_its_process_execd"]
fn stream_exec_child() {
    let Ok(copy) = std::env::var(COPY_ENV) else {
        return;
    };
    let mut s = UnixStream::connect(std::env::var(SOCKET_ENV).unwrap()).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(&fetch_x509_svid_frames()).unwrap();
    // Until the first DATA frame of stream 1 (the first message); acknowledge SETTINGS.
    loop {
        let (kind, flags, stream, _) = read_frame(&mut s).expect("EOF before the first message");
        if kind == SETTINGS && flags & ACK == 0 {
            s.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap();
        }
        if kind == DATA && stream == 1 {
            break;
        }
    }
    println!("FIRST MESSAGE");
    exec_with_connection(copy, "stream_exec_after", "stream", s);
}

/// The exec'd binary: waits on the inherited stream for what comes next.
#[test]
#[ignore = "child process of an_open_stream_sends_no_update_to_the_binary_its_process_execd"]
fn stream_exec_after() {
    let Some(mut s) = inherited_after_exec("stream") else {
        return;
    };
    s.set_read_timeout(Some(GUARD)).unwrap();
    println!("WAITING");
    std::io::stdout().flush().unwrap();
    let mut data = 0;
    let outcome = loop {
        match read_frame(&mut s) {
            None => break "EOF",
            Some((PING, flags, _, payload)) if flags & ACK == 0 => {
                let _ = s.write_all(&frame(PING, ACK, 0, &payload));
            }
            Some((DATA, _, 1, _)) => data += 1,
            Some((HEADERS, flags, 1, _)) if flags & END_STREAM != 0 => break "trailers",
            Some(_) => {}
        }
    };
    let data = if data == 0 {
        "no data".to_owned()
    } else {
        format!("{data} data frames")
    };
    println!("ENDED {outcome}, {data} after the exec");
}

/// One frame (type, flags, stream, payload); `None` at EOF.
fn read_frame(s: &mut UnixStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("hang guard or read error: {e}"),
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}
