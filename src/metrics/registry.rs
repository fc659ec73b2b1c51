//! The counters of one daemon's listeners. The daemon creates one [`Registry`], hands each
//! listener its part, and gives the metrics server the whole (for reading). One per daemon, not
//! per process: two daemons in one process (the demo) each count their own traffic.

use std::sync::Arc;

use super::bundle_endpoint::BundleEndpointMetrics;
use super::workload_api::WorkloadApiMetrics;

/// What the listeners write and `/metrics` reads. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Written by the Workload API server.
    pub workload_api: Arc<WorkloadApiMetrics>,
    /// Written by the bundle endpoint.
    pub bundle_endpoint: Arc<BundleEndpointMetrics>,
    /// Written by the agent API.
    pub agents: Arc<super::agents::AgentMetrics>,
}
