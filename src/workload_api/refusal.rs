//! Every place the Workload API refuses or closes a connection goes through [`Refusals::record`]
//! with a [`RefusalReason`], so they can be counted (for metrics) and logged without letting an
//! attacker flood the log: one line per [`LOG_WINDOW`] per reason, with the count of the ones
//! not logged. The same limiter keeps accept errors (`EMFILE`) to one line per window.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one log line per reason in this window (the rest are counted in the next line).
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Why a connection was refused or closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The socket's peer credentials could not be read: closed at once.
    NoPeerCredentials,
    /// [`Limits::max_connections`](super::Limits) were open: closed at once.
    TooManyConnections,
    /// The caller's uid already held [`Limits::max_connections_per_uid`](super::Limits):
    /// closed at once.
    TooManyConnectionsForUid,
    /// The caller matches no entry (or not the one it asked for): answered PermissionDenied /
    /// 403, then the connection is closed (the client may retry).
    NoIdentity,
    /// The caller could not be attested for a request (its process exited or changed):
    /// answered Unavailable / 503, then the connection is closed.
    AttestationFailed,
    /// The first bytes, an HTTP/2 header block or an HTTP/1.1 request head did not arrive
    /// within [`Limits::header_timeout`](super::Limits).
    HeaderTimeout,
    /// No stream or request was open for [`Limits::idle_timeout`](super::Limits).
    Idle,
}

impl RefusalReason {
    /// Every reason, in declaration order (for metrics labels).
    pub const ALL: [Self; 7] = [
        Self::NoPeerCredentials,
        Self::TooManyConnections,
        Self::TooManyConnectionsForUid,
        Self::NoIdentity,
        Self::AttestationFailed,
        Self::HeaderTimeout,
        Self::Idle,
    ];

    /// A short stable label (`too_many_connections_for_uid`), for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPeerCredentials => "no_peer_credentials",
            Self::TooManyConnections => "too_many_connections",
            Self::TooManyConnectionsForUid => "too_many_connections_for_uid",
            Self::NoIdentity => "no_identity",
            Self::AttestationFailed => "attestation_failed",
            Self::HeaderTimeout => "header_timeout",
            Self::Idle => "idle",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// How loud its log line is: a cap reached is worth an operator's attention (warn); a
    /// caller refused or too slow is info; an idle connection closed is routine (debug).
    fn level(self) -> tracing::Level {
        match self {
            Self::TooManyConnections | Self::TooManyConnectionsForUid | Self::NoPeerCredentials => {
                tracing::Level::WARN
            }
            Self::NoIdentity | Self::AttestationFailed | Self::HeaderTimeout => {
                tracing::Level::INFO
            }
            Self::Idle => tracing::Level::DEBUG,
        }
    }
}

/// Counts of refusals by reason, and their rate-limited log.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; RefusalReason::ALL.len()],
    logs: [LogLimiter; RefusalReason::ALL.len()],
}

impl Refusals {
    /// No refusal yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one refusal and logs it unless a line for `reason` was written in the last
    /// [`LOG_WINDOW`].
    pub fn record(&self, reason: RefusalReason, uid: Option<u32>) {
        let i = reason.index();
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let Some(unlogged) = self.logs[i].hit(Instant::now()) else {
            return;
        };
        let level = reason.level();
        let reason = reason.as_str();
        if level == tracing::Level::WARN {
            tracing::warn!(reason, uid, unlogged, "workload api refused a connection");
        } else if level == tracing::Level::INFO {
            tracing::info!(reason, uid, unlogged, "workload api closed a connection");
        } else {
            tracing::debug!(reason, uid, unlogged, "workload api closed a connection");
        }
    }

    /// How many refusals for `reason` so far.
    pub fn count(&self, reason: RefusalReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }
}

/// One log line per window: the first event logs at once, the next ones in the window are
/// counted and reported by the first line of a later window.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    last: Option<Instant>,
    unlogged: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(LOG_WINDOW)
    }
}

impl LogLimiter {
    /// A limiter allowing one line per `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// An event at `now`: `Some(n)` when a line should be written (`n` events since the last
    /// line were not logged), `None` when this one is only counted.
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.last {
            Some(last) if now.saturating_duration_since(last) < self.window => {
                st.unlogged += 1;
                None
            }
            _ => {
                st.last = Some(now);
                Some(std::mem::take(&mut st.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_count_of_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.hit(t0), Some(0));
        for ms in [1, 100, 9_999] {
            assert_eq!(limiter.hit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(limiter.hit(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(limiter.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(limiter.hit(t0 + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let refusals = Refusals::new();
        for _ in 0..5 {
            refusals.record(RefusalReason::TooManyConnectionsForUid, Some(65534));
        }
        refusals.record(RefusalReason::Idle, None);
        assert_eq!(refusals.count(RefusalReason::TooManyConnectionsForUid), 5);
        assert_eq!(refusals.count(RefusalReason::Idle), 1);
        assert_eq!(refusals.count(RefusalReason::NoIdentity), 0);
        let labels: Vec<_> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), 7);
        assert!(
            RefusalReason::ALL
                .iter()
                .enumerate()
                .all(|(i, r)| r.index() == i)
        );
    }
}
