//! Store metrics: whether the store can be reached, the calls made to a shared (PostgreSQL)
//! store by outcome, their latency, and the changes of reachability. The backend owns one
//! ([`crate::store::Storage::metrics`]); `/metrics` reads it through the peer store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::Histogram;
use super::text::{family, sample};

/// A call's outcome (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// It succeeded.
    Ok,
    /// The database refused it (a query error).
    Error,
    /// The database could not be reached in time.
    Unavailable,
}

impl CallOutcome {
    const ALL: [Self; 3] = [Self::Ok, Self::Error, Self::Unavailable];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The counters of one store.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    calls: [AtomicU64; 3],
    latency: Histogram,
    transitions: AtomicU64,
    lease_changes: AtomicU64,
}

impl StoreMetrics {
    /// Counts one call and its duration.
    pub fn observe(&self, outcome: CallOutcome, took: Duration) {
        self.calls[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
    }

    /// Counts a change between available and unavailable.
    pub fn transition(&self) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a peer's fetch lease taken by this replica from another (or a free one).
    pub fn lease_change(&self) {
        self.lease_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls so far with `outcome`.
    pub fn calls(&self, outcome: CallOutcome) -> u64 {
        self.calls[outcome as usize].load(Ordering::Relaxed)
    }

    /// `meshtrust_store_up{kind}` and the call families: with samples when `self` is given (a
    /// shared store), as empty families otherwise (SQLite), so that dashboards and alert rules
    /// find the same names on every daemon.
    pub(super) fn render(kind: &str, up: bool, this: Option<&Self>, out: &mut String) {
        family(
            out,
            "meshtrust_store_up",
            "gauge",
            "1 when the store can be reached (sqlite: always), 0 during an outage.",
        );
        sample(out, "meshtrust_store_up", &[("kind", kind)], u64::from(up));
        family(
            out,
            "meshtrust_store_calls_total",
            "counter",
            "Calls to the shared store, by outcome (ok, error, unavailable).",
        );
        if let Some(m) = this {
            for o in CallOutcome::ALL {
                sample(
                    out,
                    "meshtrust_store_calls_total",
                    &[("outcome", o.label())],
                    m.calls(o),
                );
            }
        }
        family(
            out,
            "meshtrust_store_call_duration_seconds",
            "histogram",
            "Time of one call to the shared store (a transaction), answered or not.",
        );
        if let Some(m) = this {
            m.latency
                .render(out, "meshtrust_store_call_duration_seconds", &[]);
        }
        family(
            out,
            "meshtrust_store_availability_changes_total",
            "counter",
            "Changes of the store between reachable and unreachable.",
        );
        if let Some(m) = this {
            sample(
                out,
                "meshtrust_store_availability_changes_total",
                &[],
                m.transitions.load(Ordering::Relaxed),
            );
        }
        family(
            out,
            "meshtrust_store_lease_changes_total",
            "counter",
            "Peer fetch leases this replica took (free, expired or another replica's).",
        );
        if let Some(m) = this {
            sample(
                out,
                "meshtrust_store_lease_changes_total",
                &[],
                m.lease_changes.load(Ordering::Relaxed),
            );
        }
    }
}
