//! Shared by the bench binaries: the smoke switch, the result rows that `benches/run.sh` turns
//! into one table, statistics, probes of other processes, and fixtures (certificates, configs,
//! a spawned daemon).
//!
//! Benches print figures; nothing here asserts on time. A bench fails (panics) only when the
//! thing it measures did not work, e.g. a server that answered with the wrong bytes.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod daemon;
pub mod fixtures;
pub mod nginx;
pub mod peer_server;
pub mod uds_http;

use std::time::Duration;

/// How this bench binary was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cargo bench` (which passes `--bench`): real sizes, figures printed.
    Full,
    /// `--smoke` or `MESHTRUST_BENCH_SMOKE=1`: every part once with tiny sizes, nothing recorded.
    Smoke,
    /// Neither, i.e. `cargo test --all-targets` running the bench binaries as tests: like
    /// criterion, each bench runs once in smoke sizes, silently; parts that need nginx or wrk
    /// are skipped when those are not installed.
    CargoTest,
}

pub fn mode() -> Mode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--smoke")
        || std::env::var("MESHTRUST_BENCH_SMOKE").is_ok_and(|v| v == "1")
    {
        Mode::Smoke
    } else if args.iter().any(|a| a == "--bench") {
        Mode::Full
    } else {
        Mode::CargoTest
    }
}

/// Tiny sizes, nothing recorded (smoke runs and `cargo test`).
pub fn smoke() -> bool {
    mode() != Mode::Full
}

/// Whether every tool in `tools` is on PATH. Under `cargo test` a missing tool skips the part
/// that needs it; in a bench run (run.sh installs them) it is an error.
pub fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        mode() == Mode::CargoTest,
        "{missing:?} missing: run benches/run.sh, which installs nginx and wrk"
    );
    eprintln!("skipped: {missing:?} not installed (benches/run.sh installs them)");
    false
}

/// The value of `--NAME VALUE` on the command line, if given.
pub fn arg(name: &str) -> Option<String> {
    let flag = format!("--{name}");
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy)]
pub enum Met {
    Yes,
    No,
    /// Smoke runs record no figures, so they judge nothing.
    Smoke,
    /// No target for this row (a supporting figure).
    NotApplicable,
}

impl Met {
    pub fn from(ok: bool) -> Self {
        if smoke() {
            Self::Smoke
        } else if ok {
            Self::Yes
        } else {
            Self::No
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Yes => "yes",
            Self::No => "**NO**",
            Self::Smoke => "smoke",
            Self::NotApplicable => "-",
        }
    }
}

/// One table row, printed as `ROW|figure|value|baseline|ratio|target|met` for run.sh.
pub fn row(figure: &str, value: &str, baseline: &str, ratio: Option<f64>, target: &str, met: Met) {
    if mode() == Mode::CargoTest {
        return;
    }
    let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    println!(
        "ROW|{figure}|{value}|{baseline}|{ratio}|{target}|{}",
        met.as_str()
    );
}

/// A free-text note that run.sh copies under the table.
pub fn note(text: &str) {
    if mode() == Mode::CargoTest {
        return;
    }
    println!("NOTE|{text}");
}

/// The median; the mean of the middle two for an even count. NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident set size of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Proportional set size of `pid` in KiB: shared pages split between the processes sharing
/// them, so that the processes of a multi-process server add up fairly.
pub fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of `pid` so far, in clock ticks (`/proc/<pid>/stat` fields 14, 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; everything after its ')' splits cleanly.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let get = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    get(14).unwrap_or(0) + get(15).unwrap_or(0)
}

/// Clock ticks per second, as `/proc/<pid>/stat` counts them.
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The pids of `pid`'s direct children (`/proc/<pid>/task/*/children`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// A port that was free a moment ago on 127.0.0.1 (for processes that must be told a port
/// before they start: nginx, and the daemon's config).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1); this crate forbids `unsafe`.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}
