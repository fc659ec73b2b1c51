//! meshtrust: a SPIFFE trust-bundle federation daemon.
//!
//! One daemon per trust domain: a mini CA that issues X509-SVIDs, a bundle endpoint that publishes
//! the trust bundle, fetchers that pin peers' bundles, and the Workload API on a Unix socket.
//!
//! # Layout
//! - [`spiffe_id`]: `TrustDomain`, `SpiffeId` (validated).
//! - [`bundle`]: `TrustBundle` and its JSON (JWKS) and PEM forms.
//! - [`workload_api`]: the Workload API socket, incl. the HTTP/2 `:authority` filter for C-core clients.

pub mod bundle;
pub mod spiffe_id;
pub mod workload_api;
