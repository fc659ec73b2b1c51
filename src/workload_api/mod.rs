//! The SPIFFE Workload API (SPIFFE.md §3): generated gRPC bindings, caller attestation, identity
//! selection, the JWT-SVID minter/validator, the tonic service, its JSON view and the Unix-socket
//! server that serves both.

pub mod attest;
pub mod identity;
pub mod jwt;
pub mod proto;
