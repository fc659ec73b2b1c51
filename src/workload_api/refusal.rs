//! Every place the Workload API refuses or closes a connection goes through [`Refusals::record`]
//! with a [`RefusalReason`], so they can be counted (for metrics) and logged without letting an
//! attacker flood the log: one line per [`LOG_WINDOW`] per reason, with the count of the ones
//! not logged. The same limiter keeps accept errors (`EMFILE`) to one line per window.
//!
//! A caller refused for want of an identity ([`Refusals::record_caller`]) gets its own line
//! instead, naming its pid, uid, gid and executable: one per caller (uid, gid, executable) per
//! window, so an operator sees every distinct caller that matches no entry while a loop of one
//! caller still writes one line per window.

use std::collections::HashMap;
use std::path::PathBuf;
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

/// How many distinct callers the per-caller log limiter remembers; beyond that (callers whose
/// last line is older than the window are forgotten first) the reason's own limiter applies.
pub const MAX_CALLERS_LOGGED: usize = 1024;

/// Who a caller is, for the per-caller log limit: uid, gid and executable (a pid changes with
/// every run of a loop, so it is not part of it).
type CallerKey = (u32, u32, Option<PathBuf>);

/// Counts of refusals by reason, and their rate-limited log.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; RefusalReason::ALL.len()],
    logs: [LogLimiter; RefusalReason::ALL.len()],
    /// Per caller: when its last line was written, and how many refusals since were not.
    callers: Mutex<HashMap<CallerKey, LimiterState>>,
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

    /// Counts one refusal of an attested caller and logs it with the caller's pid, uid, gid and
    /// executable, at most once per [`LOG_WINDOW`] per caller (uid, gid, executable).
    pub fn record_caller(&self, reason: RefusalReason, caller: &super::attest::CallerInfo) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
        let key = (caller.uid, caller.gid, caller.exe.clone());
        let Some(unlogged) = self.caller_hit(key, Instant::now()) else {
            return;
        };
        let why = match reason {
            RefusalReason::NoIdentity => "no entry matches",
            _ => reason.as_str(),
        };
        let exe = caller
            .exe
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |p| p.display().to_string());
        tracing::info!(
            reason = reason.as_str(),
            pid = caller.pid,
            uid = caller.uid,
            gid = caller.gid,
            exe = %exe,
            unlogged,
            "workload api caller refused: {why}"
        );
    }

    /// The per-caller limiter: `Some(unlogged)` when a line is due. When it remembers
    /// [`MAX_CALLERS_LOGGED`] callers, the ones out of their window are forgotten; if all are in
    /// theirs, the reason's limiter decides for the newcomer.
    fn caller_hit(&self, key: CallerKey, now: Instant) -> Option<u64> {
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = callers.get_mut(&key) {
            return match st.last {
                Some(last) if now.saturating_duration_since(last) < LOG_WINDOW => {
                    st.unlogged += 1;
                    None
                }
                _ => {
                    st.last = Some(now);
                    Some(std::mem::take(&mut st.unlogged))
                }
            };
        }
        if callers.len() >= MAX_CALLERS_LOGGED {
            callers.retain(|_, st| {
                st.last
                    .is_some_and(|last| now.saturating_duration_since(last) < LOG_WINDOW)
            });
            if callers.len() >= MAX_CALLERS_LOGGED {
                drop(callers);
                return self.logs[RefusalReason::NoIdentity.index()].hit(now);
            }
        }
        callers.insert(
            key,
            LimiterState {
                last: Some(now),
                unlogged: 0,
            },
        );
        Some(0)
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
    fn a_caller_is_logged_once_per_window_and_another_caller_at_once() {
        let refusals = Refusals::new();
        let t0 = Instant::now();
        let key = |uid: u32| (uid, uid, Some(PathBuf::from("/usr/bin/curl")));
        assert_eq!(refusals.caller_hit(key(1000), t0), Some(0));
        assert_eq!(
            refusals.caller_hit(key(1000), t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            refusals.caller_hit(key(1001), t0 + Duration::from_secs(1)),
            Some(0)
        );
        assert_eq!(refusals.caller_hit(key(1000), t0 + LOG_WINDOW), Some(1));
        // A flood of distinct callers: bounded memory, then the reason's own limiter.
        let t1 = t0 + LOG_WINDOW;
        for uid in 0..u32::try_from(MAX_CALLERS_LOGGED).unwrap() {
            refusals.caller_hit(key(10_000 + uid), t1);
        }
        let callers = refusals.callers.lock().unwrap().len();
        assert_eq!(callers, MAX_CALLERS_LOGGED);
        // The table is full of callers in their window: newcomers share the reason's limiter,
        // which the flood's overflow already used in this window.
        assert_eq!(refusals.caller_hit(key(99_999), t1), None);
        // A window later the stale callers are forgotten and a newcomer has its line again.
        assert_eq!(refusals.caller_hit(key(99_998), t1 + LOG_WINDOW), Some(0));
        let callers = refusals.callers.lock().unwrap().len();
        assert!(callers < MAX_CALLERS_LOGGED, "{callers}");
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
