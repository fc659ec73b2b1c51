//! The node agents family: refusals by reason (attestation, CSRs, unauthenticated or evicted
//! callers, the listener's own: connection cap, handshakes, bad requests; each also logged
//! with the node and the reason by the agent API), and attestations.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// The counters.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    refused: [AtomicU64; 11],
    attested: AtomicU64,
}

impl AgentMetrics {
    /// Counts one refusal.
    pub fn refused(&self, why: AgentRefusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one successful attestation.
    pub fn attested(&self) {
        self.attested.fetch_add(1, Ordering::Relaxed);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
