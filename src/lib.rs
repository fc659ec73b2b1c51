//! meshtrust: a SPIFFE trust-bundle federation daemon.
//!
//! One daemon per trust domain: a mini CA that issues X509-SVIDs, a bundle endpoint that publishes
//! the trust bundle, fetchers that pin peers' bundles, and the Workload API on a Unix socket.
//!
//! # Layout
//! - [`spiffe_id`]: `TrustDomain`, `SpiffeId` (validated).
//! - [`bundle`]: `TrustBundle` and its JSON (JWKS) and PEM forms.
//! - [`svid`]: issued X509-SVIDs and private keys (zeroized, redacted).
//! - [`ca`]: authorities, issuance, rotation; publishes `CaSnapshot`s on a watch channel.
//! - [`store`]: the durable state interface and its SQLite backend.
//! - [`config`]: the TOML config, validated into typed values.
//! - [`clock`]: the injectable clock.
//! - [`federation`]: pinned peer bundles, fetch status, bundle endpoint, fetchers.
//! - [`workload_api`]: the SPIFFE Workload API and its JSON view on a Unix socket.
//! - [`agent`]: the node agent process (sync from a server, serves the Workload API).
//! - [`app`]: wiring of the daemon's tasks; [`cli`], [`commands`]: the command line.

pub mod admin_api;
pub mod admin_client;
pub mod agent;
pub mod agent_api;
pub mod app;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod demo;
pub mod federation;
pub mod fetch;
pub mod listen;
pub mod manual;
pub mod metrics;
pub mod node;
pub mod reload;
pub mod sidecar;
pub mod signal;
pub mod spiffe_id;
pub mod store;
pub mod svid;
mod tls_signatures;
pub mod workload_api;
