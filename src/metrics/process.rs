//! The process itself, under the standard `process_*` names (the ones every Prometheus client
//! library exports, so existing dashboards work), read from `/proc/self` at each scrape, and
//! `meshtrust_build_info`. A value that cannot be read is left out, never reported as 0.

use std::path::Path;

use super::text::{family, sample};

/// Clock ticks per second of the times in `/proc/<pid>/stat`: the kernel reports them in
/// `USER_HZ`, which is 100 on every architecture Linux runs this on (`getconf CLK_TCK`).
const USER_HZ: f64 = 100.0;

/// What `/proc` says about this process.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// `VmRSS` / `VmSize` (kB) from `/proc/self/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The soft "Max open files" of `/proc/self/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (CPU seconds, start time in seconds since the epoch) from `/proc/self/stat` and the boot
/// time (`btime` of `/proc/stat`).
fn cpu_and_start(stat: &str, boot_time: Option<u64>) -> (Option<f64>, Option<f64>) {
    // Fields after the command name, which may itself hold spaces and parentheses: field 3
    // (state) is index 0, utime (14) index 11, stime (15) index 12, starttime (22) index 19.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (None, None);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let cpu = match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => Some((u + s) as f64 / USER_HZ),
        _ => None,
    };
    let start = match (ticks(19), boot_time) {
        (Some(t), Some(boot)) => Some(boot as f64 + t as f64 / USER_HZ),
        _ => None,
    };
    (cpu, start)
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn read(proc_self: &Path) -> Stats {
    let text = |name: &str| std::fs::read_to_string(proc_self.join(name)).ok();
    let status = text("status").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s));
    let (cpu_seconds, start_time_seconds) = cpu_and_start(&text("stat").unwrap_or_default(), boot);
    Stats {
        resident_bytes: status_kib(&status, "VmRSS"),
        virtual_bytes: status_kib(&status, "VmSize"),
        // Like the other client libraries, the count includes the descriptor that reads it.
        open_fds: std::fs::read_dir(proc_self.join("fd"))
            .ok()
            .map(|d| d.count() as u64),
        max_fds: max_open_files(&text("limits").unwrap_or_default()),
        cpu_seconds,
        start_time_seconds,
    }
}

/// Writes the process families and `meshtrust_build_info`.
pub(super) fn render(out: &mut String) {
    let stats = read(Path::new("/proc/self"));
    let mut one = |name: &str, kind: &str, help: &str, value: Option<String>| {
        family(out, name, kind, help);
        if let Some(v) = value {
            sample(out, name, &[], v);
        }
    };
    let s = |v: Option<u64>| v.map(|v| v.to_string());
    let f = |v: Option<f64>| v.map(|v| v.to_string());
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s(stats.resident_bytes),
    );
    one(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        s(stats.virtual_bytes),
    );
    one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        s(stats.open_fds),
    );
    one(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors (the soft limit).",
        s(stats.max_fds),
    );
    one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        f(stats.cpu_seconds),
    );
    one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        f(stats.start_time_seconds),
    );
    family(
        out,
        "meshtrust_build_info",
        "gauge",
        "Always 1; the version of the running binary is the label.",
    );
    sample(
        out,
        "meshtrust_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let status = "Name:\tmeshtrust\nVmSize:\t    3892 kB\nVmRSS:\t    2012 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(2012 * 1024));
        assert_eq!(status_kib(status, "VmSize"), Some(3892 * 1024));
        let limits = "Limit   Soft Limit  Hard Limit  Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "3330 (a b) c) R 3325 3325 16183 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 74060 3133440 358";
        let (cpu, start) = cpu_and_start(stat, boot_time("cpu 1 2\nbtime 1796538909\n"));
        assert_eq!(cpu, Some(3.0));
        assert_eq!(start, Some(1_796_538_909.0 + 740.6));
    }

    #[test]
    fn this_process_is_read() {
        let stats = read(Path::new("/proc/self"));
        assert!(stats.resident_bytes.unwrap() > 0);
        let (open, max) = (stats.open_fds.unwrap(), stats.max_fds.unwrap());
        assert!(open > 0 && open <= max, "{open} {max}");
        assert!(stats.start_time_seconds.unwrap() > 1.0e9);
    }
}
