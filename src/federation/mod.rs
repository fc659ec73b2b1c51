//! SPIFFE federation (SPIFFE_Federation): our bundle endpoint, and the peers' bundles we pin.
//!
//! - [`pinned`]: [`pinned::PeerStore`], the one writer of peer bundles (persisted, never rolled
//!   back), published on a `watch` channel.
//! - [`status`]: per-peer fetch status for the admin API and metrics.
//! - [`RefreshHandles`]: how the admin API asks a peer's fetcher to fetch now.

pub mod client;
pub mod endpoint;
pub mod fetcher;
pub mod pinned;
pub mod server_tls;
pub mod status;
pub mod verifier;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::spiffe_id::TrustDomain;

/// The outcome of one fetch, as reported to an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchReport {
    /// The peer.
    pub trust_domain: String,
    /// Whether the fetch succeeded and the bundle was accepted.
    pub ok: bool,
    /// Whether the pinned bundle changed.
    pub changed: bool,
    /// The pinned bundle's sequence after the fetch.
    pub sequence: Option<u64>,
    /// The pinned bundle's X.509 authorities after the fetch.
    pub authorities: usize,
    /// Why it failed.
    pub error: Option<String>,
}

/// A request to fetch now; the fetcher answers on the oneshot.
pub type RefreshRequest = oneshot::Sender<FetchReport>;

/// The senders to every peer fetcher's refresh queue.
#[derive(Debug, Clone, Default)]
pub struct RefreshHandles(Arc<BTreeMap<TrustDomain, mpsc::Sender<RefreshRequest>>>);

impl RefreshHandles {
    /// Handles from each fetcher's queue sender.
    pub fn new(senders: BTreeMap<TrustDomain, mpsc::Sender<RefreshRequest>>) -> Self {
        Self(Arc::new(senders))
    }

    /// Asks `td`'s fetcher to fetch now and waits for the outcome. `None` when `td` is not a
    /// configured peer or its fetcher has stopped.
    pub async fn refresh(&self, td: &TrustDomain) -> Option<FetchReport> {
        let tx = self.0.get(td)?;
        let (reply, outcome) = oneshot::channel();
        tx.send(reply).await.ok()?;
        outcome.await.ok()
    }
}
