//! Issuance metrics: SVIDs signed by the CA, by type, signing failures and the signing latency.
//! The CA owns one ([`crate::ca::Ca::issuance_metrics`]); every snapshot carries it, so whoever
//! signs with a snapshot is counted without any other wiring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::histogram::Histogram;
use super::text::{family, sample};

/// What was signed (the `type` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidType {
    /// An X509-SVID (key generation included).
    X509,
    /// A JWT-SVID.
    Jwt,
}

impl SvidType {
    const ALL: [Self; 2] = [Self::X509, Self::Jwt];

    /// The `type` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }
}

/// The CA's signing counters.
#[derive(Debug, Default)]
pub struct IssuanceMetrics {
    signed: [AtomicU64; 2],
    failed: [AtomicU64; 2],
    latency: [Histogram; 2],
}

impl IssuanceMetrics {
    /// Runs `sign`, counting its result and timing it.
    ///
    /// # Errors
    /// `sign`'s error, unchanged.
    pub fn sign<T, E>(&self, kind: SvidType, sign: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let started = Instant::now();
        let result = sign();
        let i = kind as usize;
        self.latency[i].observe(started.elapsed());
        let counter = if result.is_ok() {
            &self.signed[i]
        } else {
            &self.failed[i]
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// SVIDs of `kind` signed so far.
    pub fn signed(&self, kind: SvidType) -> u64 {
        self.signed[kind as usize].load(Ordering::Relaxed)
    }

    pub(super) fn render(&self, out: &mut String) {
        family(
            out,
            "meshtrust_svids_signed_total",
            "counter",
            "SVIDs signed by the CA, by type (x509, jwt).",
        );
        for kind in SvidType::ALL {
            sample(
                out,
                "meshtrust_svids_signed_total",
                &[("type", kind.label())],
                self.signed[kind as usize].load(Ordering::Relaxed),
            );
        }
        family(
            out,
            "meshtrust_svid_signing_failures_total",
            "counter",
            "SVID signings that failed, by type.",
        );
        for kind in SvidType::ALL {
            sample(
                out,
                "meshtrust_svid_signing_failures_total",
                &[("type", kind.label())],
                self.failed[kind as usize].load(Ordering::Relaxed),
            );
        }
        family(
            out,
            "meshtrust_svid_signing_duration_seconds",
            "histogram",
            "Time to sign an SVID (an X509-SVID's key generation included), by type.",
        );
        for kind in SvidType::ALL {
            self.latency[kind as usize].render(
                out,
                "meshtrust_svid_signing_duration_seconds",
                &[("type", kind.label())],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_and_failures_are_counted_apart() {
        let m = IssuanceMetrics::default();
        assert_eq!(m.sign(SvidType::Jwt, || Ok::<_, ()>(1)), Ok(1));
        assert_eq!(m.sign(SvidType::Jwt, || Err::<u8, _>("no")), Err("no"));
        assert_eq!(m.signed(SvidType::Jwt), 1);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("meshtrust_svid_signing_failures_total{type=\"jwt\"} 1\n"));
        assert!(out.contains("meshtrust_svid_signing_duration_seconds_count{type=\"jwt\"} 2\n"));
        assert!(out.contains("meshtrust_svids_signed_total{type=\"x509\"} 0\n"));
    }
}
