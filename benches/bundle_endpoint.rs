//! Figure 2: the HTTPS bundle endpoint against nginx serving the same bytes.
//!
//! One release daemon (`https_web`, an rcgen ECDSA P-256 leaf) and one Debian nginx
//! (`worker_processes 2`, `access_log off`, TLS 1.3 only, the same leaf and key, the bundle
//! document the daemon serves saved as a static file) run side by side on the 2 cores; wrk
//! (`-t2 -c64`) loads one of them at a time, alternating, for several rounds. Two figures, each
//! the median round: keep-alive requests/s (target >= 1.0x nginx) and new TLS connections/s,
//! `Connection: close` on every request (target >= 0.8x nginx). wrk competes for the same two
//! cores with whichever server it loads, alike for both.

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;

use std::process::Command;
use std::time::Duration;

use common::daemon::Spawned;
use common::fixtures::{DaemonConfig, Endpoint, web_cert};
use common::nginx::{Nginx, wait_listening};

/// GET / with curl: status, content type, body.
fn fetch(port: u16) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code} %{content_type}"])
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

/// The TLS version and cipher a default OpenSSL client negotiates (wrk links OpenSSL too).
fn negotiated(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "timeout 10 openssl s_client -brief -connect 127.0.0.1:{port} </dev/null 2>&1"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let pick = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .map(|l| l[key.len()..].trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    format!(
        "{} {} {}",
        pick("Protocol version:"),
        pick("Ciphersuite:"),
        pick("Server Temp Key:")
    )
}

#[derive(Debug, Default)]
struct WrkRun {
    rps: f64,
    errors: String,
    cpu_s: f64,
}

/// One bounded wrk run against `port`.
fn wrk(port: u16, close: bool, conns: u32, secs: u32, cpu: impl Fn() -> u64) -> WrkRun {
    let before = cpu();
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2".to_owned(),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--timeout".to_owned(),
        "5s".to_owned(),
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let ticks = cpu() - before;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let errors = text
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    WrkRun {
        rps,
        errors,
        cpu_s: ticks as f64 / common::clock_ticks_per_sec() as f64,
    }
}

fn main() {
    let smoke = common::smoke();
    if !common::have_tools(&["wrk", "nginx", "curl", "openssl"]) {
        return;
    }
    let (rounds, secs, conns) = if smoke { (1, 1, 8) } else { (3, 10, 64) };

    let dir = tempfile::tempdir().unwrap();
    let cert = web_cert(dir.path());
    let daemon_port = common::free_port();
    let config = DaemonConfig {
        endpoint: Some(Endpoint::Web {
            port: daemon_port,
            cert: cert.clone(),
        }),
        ..DaemonConfig::minimal()
    }
    .write(dir.path());
    let mut daemon = Spawned::serve(&config);
    daemon.wait_ready(Duration::from_secs(30));
    wait_listening(daemon_port, Duration::from_secs(10));
    let (head, body) = fetch(daemon_port);
    assert!(
        head.starts_with("200 application/json"),
        "bundle endpoint answered {head}; log:\n{}",
        daemon.log_tail()
    );

    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx_port = common::free_port();
    let nginx = Nginx::start(&nginx_dir, nginx_port, &cert, &body);
    let (nhead, nbody) = fetch(nginx_port);
    assert!(
        nhead.starts_with("200 application/json"),
        "nginx answered {nhead}"
    );
    assert_eq!(
        nbody, body,
        "nginx must serve the very bytes the daemon serves"
    );
    common::note(&format!(
        "endpoint: {} byte bundle; TLS as a default OpenSSL client negotiates it: meshtrust {}, nginx {}",
        body.len(),
        negotiated(daemon_port),
        negotiated(nginx_port)
    ));

    let daemon_pid = daemon.pid();
    let ticks_daemon = || common::cpu_ticks(daemon_pid);
    let ticks_nginx = || nginx.cpu_ticks();
    for (close, label, target, bar) in [
        (false, "keep-alive req/s", ">= 1.00x nginx", 1.0),
        (
            true,
            "new TLS conn/s (Connection: close)",
            ">= 0.80x nginx",
            0.8,
        ),
    ] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut detail = Vec::new();
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                let a = wrk(daemon_port, close, conns, secs, ticks_daemon);
                let b = wrk(nginx_port, close, conns, secs, ticks_nginx);
                (a, b)
            } else {
                let b = wrk(nginx_port, close, conns, secs, ticks_nginx);
                let a = wrk(daemon_port, close, conns, secs, ticks_daemon);
                (a, b)
            };
            detail.push(format!(
                "round {round}: meshtrust {:.0}/s (server CPU {:.1}s{}) nginx {:.0}/s (server CPU {:.1}s{})",
                a.rps,
                a.cpu_s,
                if a.errors.is_empty() { String::new() } else { format!(", {}", a.errors) },
                b.rps,
                b.cpu_s,
                if b.errors.is_empty() { String::new() } else { format!(", {}", b.errors) },
            ));
            ours.push(a.rps);
            theirs.push(b.rps);
        }
        let (o, t) = (common::median(&ours), common::median(&theirs));
        common::row(
            &format!("2. bundle endpoint {label}, wrk -t2 -c{conns} -d{secs}s"),
            &format!("{o:.0}/s"),
            &format!("{t:.0}/s nginx 1.22 (2 workers)"),
            Some(o / t),
            target,
            common::Met::from(o / t >= bar),
        );
        common::note(&format!("endpoint {label}: {}", detail.join(" | ")));
    }
    drop(nginx);
    daemon.stop();
}
