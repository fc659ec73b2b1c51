//! The SPIFFE Workload API served on a Unix socket (SPIFFE.md §3).

pub mod h2_authority;
