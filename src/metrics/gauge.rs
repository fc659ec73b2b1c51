//! Gauges of open things (connections, streams): [`Gauge::open`] counts one up and the returned
//! [`Open`] guard counts it down when dropped, so every exit path (error, panic, cancellation)
//! is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// How many of something are open now.
#[derive(Debug, Default, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// One more open until the guard drops.
    #[must_use = "the gauge counts down when the guard drops"]
    pub fn open(&self) -> Open {
        self.0.fetch_add(1, Ordering::Relaxed);
        Open(self.0.clone())
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts its [`Gauge`] down on drop.
#[derive(Debug)]
pub struct Open(Arc<AtomicI64>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_counts_down_on_drop() {
        let g = Gauge::default();
        let a = g.open();
        let b = g.open();
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(g.get(), 1);
        drop(b);
        assert_eq!(g.get(), 0);
    }
}
