//! The SPIFFE Workload API on a Unix socket (SPIFFE.md §3): generated gRPC bindings, caller
//! attestation, and the HTTP/2 `:authority` filter for C-core gRPC clients.

pub mod attest;
pub mod h2_authority;
pub mod proto;
