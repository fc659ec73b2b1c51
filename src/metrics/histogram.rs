//! A latency histogram with fixed buckets from 0.1 ms to 1 s: lock-free to observe (one atomic
//! add per bucket hit and one for the sum), read only by the exposition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::text::sample;

/// Upper bounds (inclusive, nanoseconds) and their `le` labels: 1-2.5-5 steps, 0.1 ms to 1 s.
const BOUNDS: [(u64, &str); 13] = [
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
];

/// Observations per bucket (not cumulative; the last one is `+Inf`) and their sum.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS
            .iter()
            .position(|(bound, _)| nanos <= *bound)
            .unwrap_or(BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Writes `<name>_bucket` (cumulative, `le` last), `<name>_sum` and `<name>_count`. The count
    /// is the `+Inf` bucket of the same read, so the two always agree.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let last = with_le.len() - 1;
        let mut cumulative = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            with_le[last].1 = BOUNDS.get(i).map_or("+Inf", |(_, le)| le);
            sample(out, &bucket, &with_le, cumulative);
        }
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, cumulative);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // <= 0.0001
        h.observe(Duration::from_micros(100)); // exactly 0.0001: inclusive
        h.observe(Duration::from_millis(3)); // <= 0.005
        h.observe(Duration::from_secs(2)); // +Inf only
        let mut out = String::new();
        h.render(&mut out, "x_seconds", &[("method", "m")]);
        assert!(
            out.contains("x_seconds_bucket{method=\"m\",le=\"0.0001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{method=\"m\",le=\"0.0025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{method=\"m\",le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{method=\"m\",le=\"1\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{method=\"m\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{method=\"m\"} 4\n"), "{out}");
        assert!(
            out.contains("x_seconds_sum{method=\"m\"} 2.00315\n"),
            "{out}"
        );
        assert_eq!(h.count(), 4);
    }
}
