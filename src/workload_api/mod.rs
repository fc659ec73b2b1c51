//! The SPIFFE Workload API (SPIFFE.md §3): generated gRPC bindings, caller attestation, identity
//! selection, the JWT-SVID minter/validator, the tonic service, its JSON view, the Unix-socket
//! server that serves both, and the HTTP/2 `:authority` filter for C-core gRPC clients
//! ([`h2_authority`]).
//!
//! - [`server`]: `bind` + `serve` (the entry points), per-connection attestation and dispatch.
//! - [`service`]: the gRPC service; [`grpc`]: its tower service (small stream buffers);
//!   `stream`: its server streams; [`json`]: the JSON view; `observe`: their metrics.
//! - [`state`]: inputs ([`WorkloadApiDeps`]), errors, change watching; `views`: what a caller
//!   is served; [`identity`]: entry matching and the SVID cache; [`jwt`]: JWT-SVIDs.

pub mod attest;
pub mod grpc;
pub mod h2_authority;
pub mod identity;
pub mod json;
pub mod jwt;
mod observe;
pub mod proto;
pub mod server;
pub mod service;
pub mod state;
mod stream;
mod views;

pub use server::{bind, serve, serve_with_metrics};
pub use state::{Attestation, WorkloadApiDeps, WorkloadApiError};
pub use stream::ResponseStream;
