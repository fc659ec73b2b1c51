//! Generated prost messages and tonic client/server for the SPIFFE Workload API
//! (`proto/workload.proto`, SPIFFE.md §3.3).
//!
//! The code is checked in (`gen/workload.rs`) rather than built by a build script, so building
//! meshtrust needs neither `protoc` nor codegen crates; `tests/proto_bootstrap.rs` fails when the
//! file no longer matches the proto (regenerate with
//! `MESHTRUST_REGEN_PROTO=1 cargo test --test proto_bootstrap`).
//!
//! The proto has no package, so everything sits at this module's root and the gRPC paths are
//! `/SpiffeWorkloadAPI/<Method>`. prost renames messages to Rust case: `X509SVIDResponse` is
//! [`X509svidResponse`], `JWTSVID` is [`Jwtsvid`], `ValidateJWTSVIDRequest` is
//! [`ValidateJwtsvidRequest`], and so on. The server trait is
//! [`spiffe_workload_api_server::SpiffeWorkloadApi`], the client
//! [`spiffe_workload_api_client::SpiffeWorkloadApiClient`].
//!
//! No lint allowance is needed here: with the crate's lints, `cargo clippy --all-targets -- -D
//! warnings` is clean on the generated code (every type derives `Debug`, nothing unwraps), and the
//! client/server modules carry tonic's own narrow `#![allow]`s. Add a targeted `#[expect]` on the
//! `include!` only if a future generator version trips a lint.

include!("gen/workload.rs");
