//! What one caller, or all of them, may hold on the Workload API socket (mode 0777: any local
//! uid can connect). The limits keep an attacking uid from stopping another uid from getting
//! its SVID: it can hold at most [`Limits::max_connections_per_uid`] connections, each with at
//! most [`Limits::max_streams_per_connection`] streams, and connections it leaves idle close.
//!
//! | limit | default | why this value |
//! |---|---|---|
//! | `max_connections` | 8192 | total; also at most half the soft `RLIMIT_NOFILE` (re-read every second), so the other listeners, the store and the fetchers keep descriptors |
//! | `max_connections_per_uid` | 1024 | a gRPC client multiplexes a process's calls on one connection: 1024 processes of one uid each with its own connection (a busy node where every pod runs as one uid); also at most half the total, so one uid never fills the table |
//! | `max_streams_per_connection` | 128 | an X509Source and a JWTSource hold one stream each; nginx's HTTP/2 default is 128 (RFC 9113 asks for at least 100) |
//! | `idle_timeout` | 60 s | a connection with no open stream or request closes (HTTP/2 GOAWAY, clients reconnect transparently); an idle HTTP/1.1 keep-alive closes at `header_timeout` already |
//! | `header_timeout` | 10 s | to send the first bytes, to finish an HTTP/2 header block, to send an HTTP/1.1 request head |
//!
//! Not tunable: a header block is at most [`MAX_HEADER_BLOCK`](super::h2_authority::MAX_HEADER_BLOCK)
//! (16 KiB, hyper's own `max_header_list_size`), and a connection that was told to close gets
//! [`CLOSE_GRACE`] to finish what is in flight before it is dropped.

use std::time::Duration;

/// How long a connection told to close (GOAWAY, `Connection: close`) may take to finish its
/// in-flight responses before it is dropped (a client that never reads cannot hold it).
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The Workload API's connection limits (see the module docs for the defaults and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, all callers together. Above it a new connection is closed at
    /// once (the client retries). Clamped to half the soft `RLIMIT_NOFILE`, re-read every second.
    pub max_connections: usize,
    /// Connections open at once per attested uid (`SO_PEERCRED`). Above it a new connection of
    /// that uid is closed at once.
    pub max_connections_per_uid: usize,
    /// Concurrent HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
    /// A connection with no open stream (HTTP/2) or request (HTTP/1.1) for this long is closed.
    /// (An HTTP/1.1 connection waiting for its next request is closed sooner, at
    /// `header_timeout`: hyper runs its header read timeout while it waits for a request head.)
    pub idle_timeout: Duration,
    /// Deadline for the first bytes of a connection, for completing an HTTP/2 header block
    /// (HEADERS + CONTINUATION), and for an HTTP/1.1 request head.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_connections_per_uid: 1024,
            max_streams_per_connection: 128,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The limits as enforced, given the soft `RLIMIT_NOFILE` (`None`: unknown): the total at
    /// most half of it, the per-uid cap at most half the total (so one uid never fills the
    /// table), each at least 1.
    pub fn effective(&self, soft_nofile: Option<u64>) -> Self {
        let fd_share = soft_nofile
            .map(|n| usize::try_from(n / 2).unwrap_or(usize::MAX))
            .unwrap_or(usize::MAX);
        let max_connections = self.max_connections.min(fd_share).max(1);
        let max_connections_per_uid = self.max_connections_per_uid.min(max_connections / 2).max(1);
        Self {
            max_connections,
            max_connections_per_uid,
            max_streams_per_connection: self.max_streams_per_connection.max(1),
            ..self.clone()
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (no `unsafe`, no libc).
/// `None` when it cannot be read or is unlimited.
pub fn soft_nofile() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_soft_nofile(&text)
}

fn parse_soft_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_limit_bounds_the_total_and_the_total_bounds_one_uid() {
        let d = Limits::default();
        assert_eq!(d.effective(None), d);
        assert_eq!(d.effective(Some(1 << 20)), d);
        let low = d.effective(Some(256));
        assert_eq!(
            (low.max_connections, low.max_connections_per_uid),
            (128, 64)
        );
        // systemd's default soft limit, when nothing raised it.
        let systemd = d.effective(Some(1024));
        assert_eq!(
            (systemd.max_connections, systemd.max_connections_per_uid),
            (512, 256)
        );
        let tiny = d.effective(Some(1));
        assert_eq!((tiny.max_connections, tiny.max_connections_per_uid), (1, 1));
        assert_eq!(low.idle_timeout, d.idle_timeout);
    }

    #[test]
    fn soft_nofile_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63704                63704                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_soft_nofile(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_soft_nofile(unlimited), None);
        assert!(soft_nofile().is_some_and(|n| n > 0));
    }
}
