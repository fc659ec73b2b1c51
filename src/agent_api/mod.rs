//! The server side of node agents: `[agent_api] listen`, gRPC over TLS ([`server`], [`tls`]).
//! The server presents `spiffe://<td>/meshtrust/server`; agents attest ([`attest`]: join
//! token or [`x509pop`]), then call with their agent SVID as TLS client certificate
//! ([`peer`]): renew it, Sync their node's view ([`sync`], pushed on every change), have
//! workload CSRs signed and JWT-SVIDs minted for their node's entries only ([`service`]).
//! The decisions are [`AgentApiCore`], independent of the transport; the attested agents are
//! the [`registry`] (persisted through the store, read by `meshtrust agent list`). Every
//! refusal is logged with the node and the reason and counted
//! ([`crate::metrics::agents::AgentMetrics`]). The wire protocol is [`proto`]
//! (`proto/agent.proto`).

mod attest;
pub mod core;
pub mod peer;
pub mod proto;
pub mod registry;
pub mod server;
pub mod service;
mod sync;
pub mod tls;
mod view;
pub mod x509pop;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use self::core::{AgentApiCore, AgentApiError, AgentSvid, NodeView};
use self::registry::AgentRegistry;
use self::service::Shared;

/// Starts the agent API on `listener`: its certificate task and the listener, on `tracker`,
/// until `cancel`.
///
/// # Errors
/// [`tls::AgentTlsError`] when the TLS configuration cannot be built.
pub fn start(
    listener: TcpListener,
    core: AgentApiCore,
    registry: Arc<AgentRegistry>,
    limits: server::Limits,
    tracker: &TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<(), tls::AgentTlsError> {
    let (config, cert_task) = tls::server_config(
        core.ca.clone(),
        core.nodes.clock.clone(),
        cancel.child_token(),
    )?;
    tracker.spawn(cert_task);
    let server_id = listener
        .local_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
    if registry.shared() {
        tracker.spawn(
            registry
                .clone()
                .follow(registry::FOLLOW_INTERVAL, cancel.child_token()),
        );
    }
    let shared = Arc::new(Shared {
        core,
        registry,
        server_id,
        cancel,
    });
    tracker.spawn(server::serve(listener, config, shared, limits));
    Ok(())
}
