//! The SPIFFE Workload API (SPIFFE.md §3): generated gRPC bindings and caller attestation.

pub mod attest;
pub mod proto;
