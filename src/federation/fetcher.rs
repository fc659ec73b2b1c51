//! One task per `[[federation]]` peer: fetch its bundle, pin it, record the outcome, sleep
//! (SPIFFE Federation §4.1, §6.2; SPIFFE.md §2 "Consuming").
//!
//! Schedule: the first fetch happens at start. After a success the next one is due after the
//! pinned bundle's `spiffe_refresh_hint` ([`DEFAULT_INTERVAL`] when absent, Federation 1.5.3),
//! clamped to [[`MIN_INTERVAL`], [`MAX_INTERVAL`]]: a peer can make us poll at most once a second
//! (so short demo hints work) and at least once a day. After a failure the pinned bundle stays in
//! force and we retry with a jittered exponential backoff from [`INITIAL_BACKOFF`], doubling, never
//! beyond the normal interval (Federation 1.5.12 asks for no aggressive retries; a short first
//! retry recovers quickly from a blip); a success resets it. A [`RefreshRequest`] fetches at once
//! and is answered with the [`FetchReport`]. Cancellation stops the task at any point.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

mod schedule;

use schedule::Backoff;
pub use schedule::{
    DEFAULT_INTERVAL, INITIAL_BACKOFF, MAX_INTERVAL, MIN_INTERVAL, refresh_interval,
};

use super::client::{FetchError, FetchLimits, PeerClient};
use super::pinned::{PeerStore, PinOutcome};
use super::status::{PeerState, PeerStatus, StatusBoard};
use super::verifier::{EndpointRoots, OwnRoots, SpiffeEndpointVerifier};
use super::{FetchReport, RefreshHandles, RefreshRequest};
use crate::bundle::{TrustBundle, pem};
use crate::clock::Clock;
use crate::config::{FederationConfig, PeerProfile};
use crate::spiffe_id::TrustDomain;

/// Refresh requests waiting per peer; more make `RefreshHandles::refresh` wait.
const QUEUE: usize = 8;

/// A relationship that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    /// The bootstrap bundle is missing or unreadable and nothing is pinned to replace it.
    #[error("federation peer {trust_domain}: bootstrap_bundle {}: {reason}", file.display())]
    Bootstrap {
        /// The peer.
        trust_domain: TrustDomain,
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The `ca_file` is missing or holds no certificate.
    #[error("federation peer {trust_domain}: ca_file {}: {reason}", file.display())]
    CaFile {
        /// The peer.
        trust_domain: TrustDomain,
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The HTTPS client cannot be built.
    #[error("federation peer {trust_domain}: {source}")]
    Client {
        /// The peer.
        trust_domain: TrustDomain,
        /// The cause.
        #[source]
        source: FetchError,
    },
}

/// The status label of a profile.
pub fn profile_name(profile: &PeerProfile) -> &'static str {
    match profile {
        PeerProfile::HttpsSpiffe { .. } => "https_spiffe",
        PeerProfile::HttpsWeb { .. } => "https_web",
    }
}

/// A status board listing every configured peer, none fetched yet.
pub fn status_board(peers: &[FederationConfig]) -> StatusBoard {
    StatusBoard::new(peers.iter().map(|p| {
        PeerStatus::new(
            p.trust_domain.clone(),
            p.url.to_string(),
            profile_name(&p.profile),
        )
    }))
}

/// Starts one fetcher per peer with the default [`FetchLimits`]. Bootstrap bundles and CA files
/// are read here, so a bad one fails the start, naming the file. `own_roots` authenticates
/// endpoint IDs in our own trust domain.
///
/// # Errors
/// [`FetcherError`] for the first relationship that cannot start; nothing is spawned then.
pub fn spawn_fetchers(
    peers: &[FederationConfig],
    store: Arc<PeerStore>,
    status: Arc<StatusBoard>,
    own_roots: OwnRoots,
    clock: Arc<dyn Clock>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<RefreshHandles, FetcherError> {
    let limits = FetchLimits::default();
    spawn_fetchers_with_limits(
        peers, store, status, own_roots, clock, tracker, cancel, limits,
    )
}

/// [`spawn_fetchers`] with other [`FetchLimits`] (tests use short timeouts).
///
/// # Errors
/// As [`spawn_fetchers`].
#[expect(clippy::too_many_arguments, reason = "spawn_fetchers plus the limits")]
pub fn spawn_fetchers_with_limits(
    peers: &[FederationConfig],
    store: Arc<PeerStore>,
    status: Arc<StatusBoard>,
    own_roots: OwnRoots,
    clock: Arc<dyn Clock>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
    limits: FetchLimits,
) -> Result<RefreshHandles, FetcherError> {
    let clients = peers
        .iter()
        .map(|peer| build_client(peer, &store, &own_roots, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let mut senders = BTreeMap::new();
    for client in clients {
        let td = client.trust_domain().clone();
        let (tx, rx) = mpsc::channel(QUEUE);
        senders.insert(td.clone(), tx);
        let fetcher = PeerFetcher {
            td: td.clone(),
            client,
            store: store.clone(),
            status: status.clone(),
            clock: clock.clone(),
        };
        let span = tracing::info_span!("fetcher", peer = %td);
        tracker.spawn(fetcher.run(rx, cancel.child_token()).instrument(span));
    }
    Ok(RefreshHandles::new(senders))
}

fn build_client(
    peer: &FederationConfig,
    store: &PeerStore,
    own_roots: &OwnRoots,
    limits: FetchLimits,
) -> Result<PeerClient, FetcherError> {
    let td = peer.trust_domain.clone();
    let client_err = |source| FetcherError::Client {
        trust_domain: td.clone(),
        source,
    };
    match &peer.profile {
        PeerProfile::HttpsSpiffe {
            endpoint_spiffe_id,
            bootstrap_bundle,
        } => {
            let id_td = endpoint_spiffe_id.trust_domain();
            let roots = if id_td == own_roots.trust_domain() {
                if bootstrap_bundle.is_some() {
                    tracing::warn!(peer = %td, "bootstrap_bundle ignored: the endpoint ID is in our own trust domain");
                }
                EndpointRoots::Own(own_roots.clone())
            } else {
                let bootstrap = match bootstrap_bundle {
                    Some(file) => read_bootstrap(&td, id_td, file, store)?,
                    None => None,
                };
                if bootstrap.is_none() && store.get(id_td).is_none() && id_td == &td {
                    tracing::warn!(peer = %td, "no bootstrap bundle and nothing pinned: fetches fail until a bundle is pinned");
                }
                EndpointRoots::Peer {
                    trust_domain: id_td.clone(),
                    pinned: store.subscribe(),
                    bootstrap,
                }
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = SpiffeEndpointVerifier::new(endpoint_spiffe_id.clone(), roots, provider);
            PeerClient::https_spiffe(td.clone(), peer.url.clone(), verifier, limits)
                .map_err(client_err)
        }
        PeerProfile::HttpsWeb { ca_file } => {
            let roots = ca_file
                .as_ref()
                .map(|file| {
                    std::fs::read(file)
                        .map_err(|e| e.to_string())
                        .and_then(|pem| pem::parse_certs_pem(&pem).map_err(|e| e.to_string()))
                        .map_err(|reason| FetcherError::CaFile {
                            trust_domain: td.clone(),
                            file: file.clone(),
                            reason,
                        })
                })
                .transpose()?;
            PeerClient::https_web(td.clone(), peer.url.clone(), roots, limits).map_err(client_err)
        }
    }
}

/// Reads a bootstrap bundle for the endpoint ID's trust domain `id_td`. A missing or bad file is
/// an error, unless a bundle of `id_td` is already pinned (it is only needed until then): that
/// case is logged and the relationship runs on the pinned bundle.
fn read_bootstrap(
    peer: &TrustDomain,
    id_td: &TrustDomain,
    file: &Path,
    store: &PeerStore,
) -> Result<Option<Arc<TrustBundle>>, FetcherError> {
    let read = std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| pem::parse_bootstrap(id_td, &bytes).map_err(|e| e.to_string()));
    match read {
        Ok(bundle) => Ok(Some(Arc::new(bundle))),
        Err(reason) if store.get(id_td).is_some() => {
            tracing::warn!(peer = %peer, file = %file.display(), %reason, "bootstrap bundle unreadable; using the pinned bundle");
            Ok(None)
        }
        Err(reason) => Err(FetcherError::Bootstrap {
            trust_domain: peer.clone(),
            file: file.to_owned(),
            reason,
        }),
    }
}

/// One peer's loop.
#[derive(Debug)]
struct PeerFetcher {
    td: TrustDomain,
    client: PeerClient,
    store: Arc<PeerStore>,
    status: Arc<StatusBoard>,
    clock: Arc<dyn Clock>,
}

impl PeerFetcher {
    async fn run(self, mut requests: mpsc::Receiver<RefreshRequest>, cancel: CancellationToken) {
        tracing::info!(url = %self.client.url(), "fetcher started");
        let mut backoff = Backoff::new();
        let mut requests_open = true;
        let mut pending: Option<RefreshRequest> = None;
        loop {
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                r = self.fetch_and_pin() => r,
            };
            let interval = refresh_interval(self.store.get(&self.td).and_then(|b| b.refresh_hint));
            let delay = if result.is_ok() {
                backoff.reset();
                interval
            } else {
                backoff.next_delay(interval)
            };
            let report = self.record(result, delay);
            if let Some(reply) = pending.take() {
                // The asker may have gone away: nothing to do then.
                let _ = reply.send(report);
            }
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        tracing::info!("fetcher stopped");
                        return;
                    }
                    request = requests.recv(), if requests_open => match request {
                        Some(reply) => {
                            pending = Some(reply);
                            break;
                        }
                        None => requests_open = false,
                    },
                    () = &mut sleep => break,
                }
            }
        }
        tracing::info!("fetcher stopped");
    }

    async fn fetch_and_pin(&self) -> Result<PinOutcome, FetchError> {
        let parsed = self.client.fetch().await?;
        let outcome = self.store.pin(parsed.bundle, self.clock.now());
        match &outcome {
            Ok(PinOutcome::Updated) => tracing::info!("peer bundle pinned"),
            Ok(PinOutcome::Unchanged) => tracing::debug!("peer bundle unchanged"),
            // Refused and counted; the pinned bundle stays (SPIFFE.md "Decisions").
            Err(e) => tracing::warn!(error = %e, "fetched peer bundle not pinned"),
        }
        Ok(outcome?)
    }

    fn record(&self, result: Result<PinOutcome, FetchError>, delay: Duration) -> FetchReport {
        let now = self.clock.now();
        let pinned = self.store.get(&self.td);
        let label = result.as_ref().map_or_else(FetchError::kind, |_| "ok");
        let error = result.as_ref().err().map(ToString::to_string);
        self.status.update(&self.td, |s| {
            s.last_attempt = Some(now);
            s.next_refresh = Some(now + delay);
            *s.fetches.entry(label).or_insert(0) += 1;
            if error.is_some() {
                s.state = PeerState::Failing;
                s.last_error.clone_from(&error);
            } else {
                s.state = PeerState::Ok;
                s.last_success = Some(now);
                s.last_error = None;
            }
        });
        FetchReport {
            trust_domain: self.td.to_string(),
            ok: result.is_ok(),
            changed: matches!(result, Ok(PinOutcome::Updated)),
            sequence: pinned.as_ref().and_then(|b| b.sequence),
            authorities: pinned.as_ref().map_or(0, |b| b.x509_authorities.len()),
            error,
        }
    }
}
