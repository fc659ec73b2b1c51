//! When a peer is fetched next: the refresh interval after a success, the backoff after a
//! failure (see the parent module's documentation for the policy).

use std::time::Duration;

use rand_core::RngCore as _;

/// Poll interval when the pinned bundle has no `spiffe_refresh_hint` (TD&B 1.4.12, Fed. 1.5.3).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest poll interval whatever the hint, unless `federation_min_refresh_interval` says
/// otherwise: a hostile or careless peer's `spiffe_refresh_hint: 0` cannot make us poll it (and
/// log) more often than this.
pub const MIN_INTERVAL: Duration = crate::config::DEFAULT_FEDERATION_MIN_REFRESH_INTERVAL;
/// The lowest floor an operator can set (`federation_min_refresh_interval`).
pub const MIN_INTERVAL_FLOOR: Duration = Duration::from_secs(1);
/// The longest poll interval whatever the hint.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The first retry delay after a failure (before jitter).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// No retry comes sooner than this, whatever the jitter.
const MIN_RETRY: Duration = Duration::from_millis(500);

/// The poll interval after a success: the hint (or [`DEFAULT_INTERVAL`]) clamped to
/// [`min`, [`MAX_INTERVAL`]], `min` itself kept within [[`MIN_INTERVAL_FLOOR`], [`MAX_INTERVAL`]].
pub fn refresh_interval(hint: Option<Duration>, min: Duration) -> Duration {
    let min = min.clamp(MIN_INTERVAL_FLOOR, MAX_INTERVAL);
    hint.unwrap_or(DEFAULT_INTERVAL).clamp(min, MAX_INTERVAL)
}

/// Jittered exponential backoff: delays in [3/4, 5/4] of a base that starts at
/// [`INITIAL_BACKOFF`] and doubles, each capped at the normal interval.
#[derive(Debug)]
pub(super) struct Backoff {
    base: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            base: INITIAL_BACKOFF,
        }
    }

    pub(super) fn reset(&mut self) {
        self.base = INITIAL_BACKOFF;
    }

    pub(super) fn next_delay(&mut self, cap: Duration) -> Duration {
        let base = self.base.min(cap);
        self.base = base.saturating_mul(2);
        let frac = f64::from(rand_core::OsRng.next_u32()) / f64::from(u32::MAX);
        base.mul_f64(0.75 + 0.5 * frac).min(cap).max(MIN_RETRY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_hint_clamped_to_thirty_seconds_and_one_day_with_five_minutes_by_default()
    {
        // Federation 1.5.3, TD&B 1.4.12; issue 9: a hint of 0 cannot make us poll in a loop.
        for (hint, expected) in [
            (None, DEFAULT_INTERVAL),
            (Some(Duration::ZERO), Duration::from_secs(30)),
            (Some(Duration::from_millis(10)), Duration::from_secs(30)),
            (Some(Duration::from_secs(29)), Duration::from_secs(30)),
            (Some(Duration::from_secs(60)), Duration::from_secs(60)),
            (Some(Duration::from_secs(7 * 24 * 3600)), MAX_INTERVAL),
        ] {
            assert_eq!(
                refresh_interval(hint, MIN_INTERVAL),
                expected,
                "hint {hint:?}"
            );
        }
    }

    #[test]
    fn an_explicit_floor_lowers_the_minimum_but_never_below_one_second() {
        let one = Duration::from_secs(1);
        assert_eq!(refresh_interval(Some(Duration::ZERO), one), one);
        assert_eq!(refresh_interval(Some(Duration::from_secs(2)), one), 2 * one);
        assert_eq!(refresh_interval(Some(Duration::ZERO), Duration::ZERO), one);
    }

    #[test]
    fn backoff_starts_near_one_second_doubles_stays_under_the_interval_and_resets() {
        // Federation 1.5.12: no aggressive retries.
        let cap = Duration::from_secs(60);
        for _ in 0..200 {
            let mut b = Backoff::new();
            let mut base = INITIAL_BACKOFF;
            for _ in 0..10 {
                let d = b.next_delay(cap);
                let low = base.min(cap).mul_f64(0.75);
                assert!(d >= low && d <= cap, "{d:?} for base {base:?}");
                assert!(d <= base.mul_f64(1.25), "{d:?} for base {base:?}");
                base = base.saturating_mul(2);
            }
            b.reset();
            assert!(b.next_delay(cap) <= INITIAL_BACKOFF.mul_f64(1.25));
        }
    }

    #[test]
    fn backoff_never_retries_sooner_than_half_a_second_even_with_a_tiny_interval() {
        let mut b = Backoff::new();
        for _ in 0..20 {
            assert!(b.next_delay(MIN_INTERVAL_FLOOR) >= MIN_RETRY);
        }
    }
}
