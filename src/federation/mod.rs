//! SPIFFE federation (SPIFFE_Federation): our bundle endpoint, and the peers' bundles we pin.
//!
//! - [`pinned`]: [`pinned::PeerStore`], the one writer of peer bundles (persisted, never rolled
//!   back), published on a `watch` channel.
//! - [`status`]: per-peer fetch status for the admin API and metrics.
//! - [`RefreshHandles`]: how the admin API asks a peer's fetcher to fetch now, or to reset the
//!   relationship (forget the pinned bundle, back to the bootstrap bundle) and fetch.

pub mod client;
pub mod endpoint;
pub mod fd_budget;
pub mod fetcher;
pub mod invite;
pub mod invite_join;
pub mod lease;
pub mod pinned;
pub mod server_tls;
pub mod status;
pub mod verifier;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::spiffe_id::TrustDomain;
use crate::store::StoreError;

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

/// Why an operator reset was refused. Nothing changed then: the pinned bundle stays.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The relationship could not run on its bootstrap bundle (e.g. the file is unreadable).
    #[error("reset refused, nothing changed: {0}")]
    Refused(fetcher::FetcherError),
    /// The pinned bundle could not be deleted from the state.
    #[error("reset failed, nothing changed: {0}")]
    Store(#[from] StoreError),
}

/// An operator's request to a fetcher; the fetcher answers on the oneshot once the fetch it
/// triggers has finished.
#[derive(Debug)]
pub enum RefreshRequest {
    /// Fetch now.
    Refresh(oneshot::Sender<FetchReport>),
    /// Forget the pinned bundle (the bootstrap bundle, re-read, authenticates the endpoint again
    /// and any sequence is accepted), then fetch now (`federation reset --force`).
    Reset(oneshot::Sender<Result<FetchReport, ResetError>>),
    /// Fetch now authenticated by the bootstrap bundle (re-read) alone, and only on success
    /// replace the pinned bundle whatever its sequence (`federation reset`).
    Replace(oneshot::Sender<Result<FetchReport, ResetError>>),
}

/// The senders to every peer fetcher's refresh queue.
#[derive(Debug, Clone, Default)]
pub struct RefreshHandles(Arc<RwLock<BTreeMap<TrustDomain, mpsc::Sender<RefreshRequest>>>>);

impl RefreshHandles {
    /// Handles from each fetcher's queue sender.
    pub fn new(senders: BTreeMap<TrustDomain, mpsc::Sender<RefreshRequest>>) -> Self {
        Self(Arc::new(RwLock::new(senders)))
    }

    /// Sets (or with `None` removes) one peer's queue: a relationship added or removed by a
    /// config reload.
    pub fn set(&self, td: TrustDomain, sender: Option<mpsc::Sender<RefreshRequest>>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        match sender {
            Some(tx) => map.insert(td, tx),
            None => map.remove(&td),
        };
    }

    fn sender(&self, td: &TrustDomain) -> Option<mpsc::Sender<RefreshRequest>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(td)
            .cloned()
    }

    /// Asks `td`'s fetcher to fetch now and waits for the outcome. `None` when `td` is not a
    /// configured peer or its fetcher has stopped.
    pub async fn refresh(&self, td: &TrustDomain) -> Option<FetchReport> {
        let tx = self.sender(td)?;
        let (reply, outcome) = oneshot::channel();
        tx.send(RefreshRequest::Refresh(reply)).await.ok()?;
        outcome.await.ok()
    }

    /// Asks `td`'s fetcher to reset the relationship, and waits for the outcome: with `force`,
    /// forget the pinned bundle and then fetch; without, fetch with the bootstrap bundle and
    /// replace the pinned bundle only if that succeeds. `None` when `td` is not a configured
    /// peer or its fetcher has stopped.
    pub async fn reset(
        &self,
        td: &TrustDomain,
        force: bool,
    ) -> Option<Result<FetchReport, ResetError>> {
        let tx = self.sender(td)?;
        let (reply, outcome) = oneshot::channel();
        let request = if force {
            RefreshRequest::Reset(reply)
        } else {
            RefreshRequest::Replace(reply)
        };
        tx.send(request).await.ok()?;
        outcome.await.ok()
    }
}
