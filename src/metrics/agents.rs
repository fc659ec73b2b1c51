//! The node agents family: refusals by reason (attestation, CSRs, unauthenticated or evicted
//! callers, the listener's own: connection cap, handshakes, bad requests; each also logged
//! with the node and the reason by the agent API), attestations, and open Sync streams.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::text::{family, sample};

/// Why the agent API refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRefusal {
    /// Join token never issued or already used.
    UnknownToken,
    /// Join token expired.
    ExpiredToken,
    /// `[node_attestation] join_token = false`.
    MethodDisabled,
    /// A CSR that does not parse or whose signature fails.
    BadCsr,
    /// A CSR for an ID none of the node's entries names.
    NotEntitled,
    /// An evicted agent.
    Evicted,
    /// A call without an accepted agent SVID (none, not an agent's, expired, not current).
    Unauthenticated,
    /// x509pop: a node certificate that does not chain, expired, or a wrong signature.
    X509Pop,
    /// A connection beyond the listener's cap.
    ConnectionLimit,
    /// A TLS handshake that failed or did not finish in time.
    Handshake,
    /// A request too large, a batch too long, or an attestation not following the protocol.
    BadRequest,
}

impl AgentRefusal {
    /// Every reason, in label order.
    pub const ALL: [Self; 11] = [
        Self::UnknownToken,
        Self::ExpiredToken,
        Self::MethodDisabled,
        Self::BadCsr,
        Self::NotEntitled,
        Self::Evicted,
        Self::Unauthenticated,
        Self::X509Pop,
        Self::ConnectionLimit,
        Self::Handshake,
        Self::BadRequest,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownToken => "unknown_token",
            Self::ExpiredToken => "expired_token",
            Self::MethodDisabled => "method_disabled",
            Self::BadCsr => "bad_csr",
            Self::NotEntitled => "not_entitled",
            Self::Evicted => "evicted",
            Self::Unauthenticated => "unauthenticated",
            Self::X509Pop => "x509pop",
            Self::ConnectionLimit => "connection_limit",
            Self::Handshake => "handshake",
            Self::BadRequest => "bad_request",
        }
    }
}

/// At most this many log lines per refusal reason per [`LOG_WINDOW`]; the rest are counted
/// only, and the next logged line says how many were not logged. The log stays bounded however
/// many refused calls an attacker makes on one connection.
pub const LOG_LINES_PER_WINDOW: u32 = 20;
/// See [`LOG_LINES_PER_WINDOW`].
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Copy)]
struct LogWindow {
    start: Option<Instant>,
    lines: u32,
    unlogged: u64,
}

/// The counters.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    log: Mutex<[LogWindow; 11]>,
    refused: [AtomicU64; 11],
    attested: AtomicU64,
    sync_streams: AtomicU64,
}

impl AgentMetrics {
    /// Counts one refusal; `Some(n)` when it is to be logged (`n` refusals of that reason were
    /// not logged since the last line), `None` when the reason's log budget for this window is
    /// spent.
    pub fn refused(&self, why: AgentRefusal) -> Option<u64> {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let w = &mut log[why as usize];
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= LOG_WINDOW)
        {
            w.start = Some(now);
            w.lines = 0;
        }
        if w.lines < LOG_LINES_PER_WINDOW {
            w.lines += 1;
            Some(std::mem::take(&mut w.unlogged))
        } else {
            w.unlogged += 1;
            None
        }
    }

    /// Counts one successful attestation.
    pub fn attested(&self) {
        self.attested.fetch_add(1, Ordering::Relaxed);
    }

    /// A Sync stream opened; closes (the gauge goes down) when the guard drops.
    pub fn sync_opened(self: &std::sync::Arc<Self>) -> SyncStreamGuard {
        self.sync_streams.fetch_add(1, Ordering::Relaxed);
        SyncStreamGuard(self.clone())
    }

    /// Open Sync streams now.
    pub fn sync_streams(&self) -> u64 {
        self.sync_streams.load(Ordering::Relaxed)
    }

    /// Refusals so far for `why`.
    pub fn refusals(&self, why: AgentRefusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    /// The family in Prometheus text.
    pub fn render(&self, out: &mut String) {
        family(
            out,
            "meshtrust_agent_refusals_total",
            "counter",
            "Node agent attestations and CSRs refused, by reason.",
        );
        for why in AgentRefusal::ALL {
            sample(
                out,
                "meshtrust_agent_refusals_total",
                &[("reason", why.label())],
                self.refusals(why),
            );
        }
        family(
            out,
            "meshtrust_agent_attestations_total",
            "counter",
            "Node agents attested.",
        );
        sample(
            out,
            "meshtrust_agent_attestations_total",
            &[],
            self.attested.load(Ordering::Relaxed),
        );
        family(
            out,
            "meshtrust_agent_sync_streams",
            "gauge",
            "Open Sync streams of node agents (about one per connected agent).",
        );
        sample(
            out,
            "meshtrust_agent_sync_streams",
            &[],
            self.sync_streams(),
        );
    }
}

/// Counts one open Sync stream while it lives.
#[derive(Debug)]
pub struct SyncStreamGuard(std::sync::Arc<AgentMetrics>);

impl Drop for SyncStreamGuard {
    fn drop(&mut self) {
        self.0.sync_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_counted_but_the_log_lines_per_window_are_bounded() {
        let m = AgentMetrics::default();
        let logged = (0..100)
            .filter(|_| m.refused(AgentRefusal::Unauthenticated).is_some())
            .count();
        assert_eq!(logged, LOG_LINES_PER_WINDOW as usize);
        assert_eq!(m.refusals(AgentRefusal::Unauthenticated), 100);
        assert_eq!(
            m.refused(AgentRefusal::Evicted),
            Some(0),
            "another reason has its own budget"
        );
    }

    #[test]
    fn refusals_are_counted_and_rendered_by_reason() {
        let m = AgentMetrics::default();
        m.refused(AgentRefusal::NotEntitled);
        m.refused(AgentRefusal::NotEntitled);
        m.attested();
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("meshtrust_agent_refusals_total{reason=\"not_entitled\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("meshtrust_agent_refusals_total{reason=\"unknown_token\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("meshtrust_agent_attestations_total 1\n"),
            "{out}"
        );
    }
}
