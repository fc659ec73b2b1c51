//! The server side of node agents, independent of the transport: attestation (join tokens),
//! agent SVIDs from the agent's CSR, workload SVIDs from CSRs checked against the node's
//! entries, and what a node is sent (its entries and only the bundles they need). Every
//! refusal is logged with the node and the reason and counted
//! ([`crate::metrics::agents::AgentMetrics`]).
//!
//! Not yet here: the gRPC-over-TLS transport (`[agent_api] listen`) and the push stream; the
//! wire protocol is [`proto`] (`proto/agent.proto`).

pub mod core;
pub mod proto;

pub use self::core::{AgentApiCore, AgentApiError, AgentSvid, NodeView};
