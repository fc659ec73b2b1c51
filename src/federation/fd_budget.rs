//! The file descriptor budget: every listener shares one fd table with the Unix sockets, the
//! peer fetchers and the store, so no listener may take it all (issue 9: 300 idle TCP clients
//! once starved the Workload API and the admin socket).
//!
//! - [`raise_nofile_limit`], called first thing at start: the soft `RLIMIT_NOFILE` (often 1,024
//!   under systemd) is raised to the hard one, as Go's runtime does.
//! - [`endpoint_connection_cap`]: the bundle endpoint's share, a quarter of what is left after
//!   [`RESERVED_FDS`], at least [`MIN_ENDPOINT_CONNECTIONS`] and at most
//!   [`MAX_ENDPOINT_CONNECTIONS`]. With a 256 limit that is 48 connections, with 1,024 it is 240,
//!   with 65,536 it is the 10,000 ceiling.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors set aside before any listener's share: stdio, the SQLite files (database, WAL,
/// shared memory), the runtime (epoll, wakers, signals), the listeners themselves, the fetchers'
/// connections.
pub const RESERVED_FDS: u64 = 64;
/// The bundle endpoint never accepts fewer concurrent connections than this, whatever the limit.
pub const MIN_ENDPOINT_CONNECTIONS: usize = 8;
/// Nor more than this (a connection costs a task and ~50 KiB of TLS and HTTP buffers).
pub const MAX_ENDPOINT_CONNECTIONS: usize = 10_000;
/// What the soft limit is raised to when the hard limit is "unlimited" (Linux's default
/// `fs.nr_open`).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// The soft `RLIMIT_NOFILE` now (`u64::MAX` when unlimited).
pub fn soft_nofile_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force after.
/// A failure is logged and the limit left as it was.
pub fn raise_nofile_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let target = limit.maximum.unwrap_or(UNLIMITED_TARGET);
    if soft >= target {
        return soft;
    }
    let new = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => {
            tracing::debug!(from = soft, to = target, "raised the open file limit");
            target
        }
        Err(e) => {
            tracing::warn!(soft, hard = ?limit.maximum, error = %e, "cannot raise the open file limit");
            soft
        }
    }
}

/// The bundle endpoint's concurrent connection cap for a soft fd limit of `nofile`.
pub fn endpoint_connection_cap(nofile: u64) -> usize {
    let share = nofile.saturating_sub(RESERVED_FDS) / 4;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(MIN_ENDPOINT_CONNECTIONS, MAX_ENDPOINT_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_takes_a_quarter_of_what_the_reserve_leaves_within_bounds() {
        for (nofile, cap) in [
            (0, MIN_ENDPOINT_CONNECTIONS),
            (64, MIN_ENDPOINT_CONNECTIONS),
            (256, 48),
            (1024, 240),
            (65_536, MAX_ENDPOINT_CONNECTIONS),
            (u64::MAX, MAX_ENDPOINT_CONNECTIONS),
        ] {
            assert_eq!(endpoint_connection_cap(nofile), cap, "nofile {nofile}");
        }
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let after = raise_nofile_limit();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current.unwrap_or(u64::MAX), after);
        if let Some(hard) = limit.maximum {
            assert_eq!(after, hard);
        }
    }
}
