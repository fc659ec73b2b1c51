//! The node agents family: attestation and CSR refusals by reason (each also logged with the
//! node and the reason by the agent API).

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
}

impl AgentRefusal {
    /// Every reason, in label order.
    pub const ALL: [Self; 6] = [
        Self::UnknownToken,
        Self::ExpiredToken,
        Self::MethodDisabled,
        Self::BadCsr,
        Self::NotEntitled,
        Self::Evicted,
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
        }
    }
}

/// The counters.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    refused: [AtomicU64; 6],
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
