//! The running relationships: one fetcher task per `[[federation]]` peer, each under its own
//! cancel token, so that a config reload can add, remove or restart one without touching the
//! others.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::setup::{Purpose, build_client};
use super::{FetcherError, PeerFetcher, QUEUE, status_board};
use crate::clock::Clock;
use crate::config::FederationConfig;
use crate::federation::RefreshHandles;
use crate::federation::client::{FetchLimits, PeerClient};
use crate::federation::pinned::PeerStore;
use crate::federation::status::StatusBoard;
use crate::federation::verifier::OwnRoots;
use crate::spiffe_id::TrustDomain;

/// Every peer fetcher of a daemon.
#[derive(Debug)]
pub struct Fetchers {
    store: Arc<PeerStore>,
    status: Arc<StatusBoard>,
    own_roots: OwnRoots,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    limits: FetchLimits,
    running: BTreeMap<TrustDomain, (FederationConfig, CancellationToken)>,
    refresh: RefreshHandles,
}

impl Fetchers {
    /// Starts one fetcher per peer. Bootstrap bundles and CA files are read first, so a bad one
    /// fails the start, naming the file, and nothing is spawned.
    ///
    /// # Errors
    /// [`FetcherError`] for the first relationship that cannot start.
    #[expect(clippy::too_many_arguments, reason = "the fetchers' whole context")]
    pub fn start(
        peers: &[FederationConfig],
        store: Arc<PeerStore>,
        status: Arc<StatusBoard>,
        own_roots: OwnRoots,
        clock: Arc<dyn Clock>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
        limits: FetchLimits,
    ) -> Result<Self, FetcherError> {
        let clients = peers
            .iter()
            .map(|peer| build_client(peer, &store, &own_roots, limits, Purpose::Start))
            .collect::<Result<Vec<_>, _>>()?;
        let mut fetchers = Self {
            store,
            status,
            own_roots,
            clock,
            tracker: tracker.clone(),
            cancel,
            limits,
            running: BTreeMap::new(),
            refresh: RefreshHandles::default(),
        };
        for (config, client) in peers.iter().zip(clients) {
            fetchers.spawn(config.clone(), client);
        }
        Ok(fetchers)
    }

    /// The admin API's way to each fetcher.
    pub fn refresh_handles(&self) -> RefreshHandles {
        self.refresh.clone()
    }

    /// Applies a new list of relationships (a config reload): a removed peer's fetcher stops and
    /// its pinned bundle is dropped; an added one starts; a changed one (URL, profile, files)
    /// restarts and keeps its pinned bundle; the others run on undisturbed. Returns the trust
    /// domains (added or restarted, removed).
    ///
    /// # Errors
    /// [`FetcherError`] when an added or changed relationship cannot start (e.g. its bootstrap
    /// bundle is unreadable); nothing changes then.
    pub fn apply(
        &mut self,
        peers: &[FederationConfig],
    ) -> Result<(Vec<TrustDomain>, Vec<TrustDomain>), FetcherError> {
        let started: Vec<&FederationConfig> = peers
            .iter()
            .filter(|p| {
                self.running
                    .get(&p.trust_domain)
                    .is_none_or(|(c, _)| c != *p)
            })
            .collect();
        let removed: Vec<TrustDomain> = self
            .running
            .keys()
            .filter(|td| !peers.iter().any(|p| &p.trust_domain == *td))
            .cloned()
            .collect();
        let clients = started
            .iter()
            .map(|p| build_client(p, &self.store, &self.own_roots, self.limits, Purpose::Start))
            .collect::<Result<Vec<_>, _>>()?;
        if let Err(e) = self
            .store
            .set_peers(peers.iter().map(|p| p.trust_domain.clone()).collect())
        {
            tracing::error!(error = %e, "cannot update the federation peers in the state");
        }
        for td in started.iter().map(|p| &p.trust_domain).chain(&removed) {
            if let Some((_, token)) = self.running.remove(td) {
                token.cancel();
                self.refresh.set(td.clone(), None);
            }
        }
        self.status.set(status_board(peers).all());
        let started_tds = started.iter().map(|p| p.trust_domain.clone()).collect();
        for (config, client) in started.into_iter().zip(clients) {
            self.spawn(config.clone(), client);
        }
        Ok((started_tds, removed))
    }

    fn spawn(&mut self, config: FederationConfig, client: PeerClient) {
        let td = client.trust_domain().clone();
        let (tx, rx) = mpsc::channel(QUEUE);
        // After a restart the pinned bundle keeps its age: the status and the metrics show when
        // it was fetched before any new fetch succeeds.
        if let Some(fetched_at) = self.store.fetched_at(&td) {
            self.status
                .update(&td, |s| s.last_success = Some(fetched_at));
        }
        let token = self.cancel.child_token();
        let fetcher = PeerFetcher {
            td: td.clone(),
            config: config.clone(),
            own_roots: self.own_roots.clone(),
            limits: self.limits,
            client,
            store: self.store.clone(),
            status: self.status.clone(),
            clock: self.clock.clone(),
        };
        let span = tracing::info_span!("fetcher", peer = %td);
        self.tracker
            .spawn(fetcher.run(rx, token.clone()).instrument(span));
        self.refresh.set(td.clone(), Some(tx));
        self.running.insert(td, (config, token));
    }
}
