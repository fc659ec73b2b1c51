//! SPIFFE federation (SPIFFE_Federation): our bundle endpoint, and the peers' bundles we pin.
//!
//! - [`pinned`]: [`pinned::PeerStore`], the one writer of peer bundles (persisted, never rolled
//!   back), published on a `watch` channel.
//! - [`status`]: per-peer fetch status for the admin API and metrics.

pub mod pinned;
pub mod status;
