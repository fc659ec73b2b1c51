//! The SPIFFE Workload API (SPIFFE.md §3): generated gRPC bindings, caller attestation, identity
//! selection, the JWT-SVID minter/validator, the tonic service, its JSON view, the Unix-socket
//! server that serves both, and the HTTP/2 `:authority` filter for C-core gRPC clients
//! ([`h2_authority`]).
//!
//! - [`server`]: `bind` + `serve` (the entry points), per-request attestation and dispatch;
//!   `connection`: the connection table, idle timeout and close; [`limits`]: the [`Limits`]
//!   that keep one uid from starving another; [`refusal`]: every refusal, counted by reason.
//! - [`service`]: the gRPC service; [`grpc`]: its tower service (small stream buffers);
//!   `stream`: its server streams; [`json`]: the JSON view; `observe`: their metrics.
//! - [`source`]: the seam to whoever provides identities ([`OwnSnapshot`], [`Issuer`],
//!   [`PeerBundles`], [`Feed`]): the server's CA and fetchers, or a node agent's sync.
//! - [`state`]: inputs ([`WorkloadApiDeps`]), errors, change watching; `views`: what a caller
//!   is served; [`identity`]: entry matching and the SVID cache; [`jwt`]: JWT-SVIDs.

pub mod attest;
mod connection;
pub mod grpc;
pub mod h2_authority;
pub mod identity;
pub mod json;
pub mod jwt;
pub mod limits;
mod observe;
pub mod proto;
pub mod refusal;
pub mod server;
pub mod service;
pub mod source;
pub mod state;
mod stream;
mod views;

pub use limits::Limits;
pub use refusal::{RefusalReason, Refusals};
pub use server::{ServeOptions, bind, serve, serve_with};
pub use source::{Feed, Issuer, JwtSvidFuture, OwnSnapshot, PeerBundles};
pub use state::{Attestation, WorkloadApiDeps, WorkloadApiError};
pub use stream::ResponseStream;
