//! One task per `[[federation]]` peer: fetch its bundle, pin it, record the outcome, sleep
//! (SPIFFE Federation §4.1, §6.2; SPIFFE.md §2 "Consuming").
//!
//! Schedule: the first fetch happens at start. After a success the next one is due after the
//! pinned bundle's `spiffe_refresh_hint` ([`DEFAULT_INTERVAL`] when absent, Federation 1.5.3),
//! clamped to [[`FetchLimits::min_interval`], [`MAX_INTERVAL`]]: a peer can make us poll at most
//! every 30 s ([`MIN_INTERVAL`]; `federation_min_refresh_interval` lowers it to 1 s for tests and
//! the demo) and at least once a day. Each fetch writes one log line. After a failure the pinned bundle stays in
//! force and we retry with a jittered exponential backoff from [`INITIAL_BACKOFF`], doubling, never
//! beyond the normal interval (Federation 1.5.12 asks for no aggressive retries; a short first
//! retry recovers quickly from a blip); a success resets it. A [`RefreshRequest`] fetches at once
//! and is answered with the [`FetchReport`]; a reset request first forgets the pinned bundle and
//! rebuilds the client on the bootstrap bundle re-read from disk (the fetcher does it between two
//! fetches, so no fetch in flight can pin the forgotten bundle again). Cancellation stops the
//! task at any point.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod runner;
mod schedule;
mod setup;

pub use runner::Fetchers;
pub use setup::read_bootstrap_bundle;

use schedule::Backoff;
pub use schedule::{
    DEFAULT_INTERVAL, INITIAL_BACKOFF, MAX_INTERVAL, MIN_INTERVAL, MIN_INTERVAL_FLOOR,
    refresh_interval,
};
use setup::{Purpose, build_client};

use super::client::{FetchError, FetchLimits, Fetched, PeerClient};
use super::pinned::{PeerStore, PinOutcome};
use super::status::{PeerState, PeerStatus, StatusBoard};
use super::verifier::OwnRoots;
use super::{FetchReport, RefreshHandles, RefreshRequest, ResetError};
use crate::clock::Clock;
use crate::config::{FederationConfig, PeerProfile};
use crate::spiffe_id::TrustDomain;

/// Refresh requests waiting per peer; more make `RefreshHandles::refresh` wait.
const QUEUE: usize = 8;
/// How many reasons for ignored keys (and notes) a fetch's log line quotes; the rest are counted.
pub const LOGGED_REASONS: usize = 3;

/// `"[index] reason; ..."` for the first [`LOGGED_REASONS`] items, each cut to 200 bytes.
fn first_reasons<'a>(items: impl Iterator<Item = (usize, &'a String)>) -> String {
    let mut out = String::new();
    for (index, reason) in items.take(LOGGED_REASONS) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        let mut cut = reason.len().min(200);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&format!("[{index}] {}", &reason[..cut]));
    }
    out
}

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

/// A status board listing every configured peer, none fetched yet (the fetchers seed the time of
/// the last success from the pinned state when they start).
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
    Fetchers::start(
        peers, store, status, own_roots, clock, tracker, cancel, limits,
    )
    .map(|f| f.refresh_handles())
}

/// One peer's loop.
#[derive(Debug)]
struct PeerFetcher {
    td: TrustDomain,
    /// For rebuilding the client on a reset.
    config: FederationConfig,
    own_roots: OwnRoots,
    limits: FetchLimits,
    client: PeerClient,
    store: Arc<PeerStore>,
    status: Arc<StatusBoard>,
    clock: Arc<dyn Clock>,
}

impl PeerFetcher {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<RefreshRequest>,
        cancel: CancellationToken,
    ) {
        tracing::info!(url = %self.client.url(), "fetcher started");
        let mut backoff = Backoff::new();
        let mut requests_open = true;
        let mut pending: Option<RefreshRequest> = None;
        loop {
            // Among replicas sharing a store, only the lease holder fetches on schedule (an
            // operator's request is served by the replica asked); the others get the holder's
            // pins from the store (`lease`), and look at the lease again before long.
            let follow = pending.is_none() && !self.store.leases().fetches_here(&self.td);
            let delay = if follow {
                self.store.leases().poll_every()
            } else {
                let result = tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    r = self.fetch_and_pin() => r,
                };
                let interval = refresh_interval(
                    self.store.get(&self.td).and_then(|b| b.refresh_hint),
                    self.limits.min_interval,
                );
                let delay = if result.is_ok() {
                    backoff.reset();
                    interval
                } else {
                    backoff.next_delay(interval)
                };
                let report = self.record(result, delay, interval);
                // The asker may have gone away: nothing to do then.
                match pending.take() {
                    Some(RefreshRequest::Refresh(reply)) => {
                        let _ = reply.send(report);
                    }
                    // (A `Replace` is answered where it is handled, never left pending.)
                    Some(RefreshRequest::Reset(reply) | RefreshRequest::Replace(reply)) => {
                        let _ = reply.send(Ok(report));
                    }
                    None => {}
                }
                delay
            };
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
                        Some(RefreshRequest::Replace(reply)) => {
                            let outcome = tokio::select! {
                                biased;
                                () = cancel.cancelled() => {
                                    tracing::info!("fetcher stopped");
                                    return;
                                }
                                r = self.reset_by_fetch() => r,
                            };
                            match outcome {
                                Err(e) => {
                                    tracing::warn!(error = %e, "federation relationship reset refused");
                                    let _ = reply.send(Err(e));
                                }
                                // Nothing changed: the pinned bundle and the schedule go on.
                                Ok(Err(e)) => {
                                    let report = self.unchanged_report(&e);
                                    tracing::warn!(error = report.error.as_deref().unwrap_or_default(), "federation relationship reset not done: the fetch authenticated by the bootstrap bundle failed; the pinned bundle stays");
                                    let _ = reply.send(Ok(report));
                                }
                                Ok(Ok(outcome)) => {
                                    let interval = refresh_interval(
                                        self.store.get(&self.td).and_then(|b| b.refresh_hint),
                                        self.limits.min_interval,
                                    );
                                    backoff.reset();
                                    let report = self.record(Ok(outcome), interval, interval);
                                    let _ = reply.send(Ok(report));
                                    sleep.as_mut().reset(tokio::time::Instant::now() + interval);
                                }
                            }
                        }
                        Some(RefreshRequest::Reset(reply)) => match self.reset() {
                            Ok(()) => {
                                pending = Some(RefreshRequest::Reset(reply));
                                break;
                            }
                            // Refused: nothing changed, the schedule goes on.
                            Err(e) => {
                                tracing::warn!(error = %e, "federation relationship reset refused");
                                let _ = reply.send(Err(e));
                            }
                        },
                        Some(request) => {
                            pending = Some(request);
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

    /// The operator reset: a new client on the bootstrap bundle re-read from disk (refused,
    /// changing nothing, when that fails), then the pinned bundle is forgotten (published: the
    /// Workload API streams drop the peer's bundle until a fetch pins one) along with the time of
    /// the last success, which dated it.
    fn reset(&mut self) -> Result<(), ResetError> {
        let client = build_client(
            &self.config,
            &self.store,
            &self.own_roots,
            self.limits,
            Purpose::Reset,
        )
        .map_err(ResetError::Refused)?;
        let forgotten = self.store.reset(&self.td)?;
        self.client = client;
        self.status.update(&self.td, |s| s.last_success = None);
        tracing::warn!(
            forgotten_sequence = ?forgotten.as_ref().and_then(|b| b.sequence),
            forgotten_authorities = forgotten.as_ref().map_or(0, |b| b.x509_authorities.len()),
            "federation relationship reset by the operator: pinned bundle forgotten, the bootstrap bundle authenticates the endpoint and any sequence is accepted"
        );
        Ok(())
    }

    /// The operator reset without `--force`: a fetch authenticated by the bootstrap bundle alone
    /// (re-read from disk; the peer's pinned bundle is ignored), and only when it succeeds the
    /// fetched bundle replaces the pinned one whatever its sequence, in one publication (the
    /// Workload API streams never see the peer without a bundle). A failed fetch changes
    /// nothing. The outer error is a reset refused before any fetch (bootstrap unreadable).
    async fn reset_by_fetch(&mut self) -> Result<Result<PinOutcome, FetchError>, ResetError> {
        let build = |purpose| {
            build_client(
                &self.config,
                &self.store,
                &self.own_roots,
                self.limits,
                purpose,
            )
            .map_err(ResetError::Refused)
        };
        let normal = build(Purpose::Reset)?;
        let probe = build(Purpose::ResetProbe)?;
        let parsed = match probe.fetch().await {
            Ok(fetched) => fetched.parsed,
            Err(e) => return Ok(Err(e)),
        };
        let previous = self.store.get(&self.td);
        let outcome = match self.store.replace(parsed.bundle, self.clock.now()) {
            Ok(outcome) => outcome,
            Err(e) => return Ok(Err(e.into())),
        };
        self.client = normal;
        tracing::warn!(
            replaced_sequence = ?previous.as_ref().and_then(|b| b.sequence),
            sequence = ?self.store.get(&self.td).and_then(|b| b.sequence),
            "federation relationship reset by the operator: the bundle fetched over the bootstrap bundle replaced the pinned one"
        );
        Ok(Ok(outcome))
    }

    /// The report of a fetch that changed nothing (a reset not done).
    fn unchanged_report(&self, e: &FetchError) -> FetchReport {
        let pinned = self.store.get(&self.td);
        FetchReport {
            trust_domain: self.td.to_string(),
            ok: false,
            changed: false,
            sequence: pinned.as_ref().and_then(|b| b.sequence),
            authorities: pinned.as_ref().map_or(0, |b| b.x509_authorities.len()),
            error: Some(self.describe(e, true)),
        }
    }

    /// A fetch error as the status and the operator see it: an `UnknownIssuer` (the endpoint's
    /// certificate is not signed by any CA we trust for it; `BadSignature` when one of those
    /// CAs has the same name as its real issuer, as a peer's new CA does) carries a hint on
    /// what to check.
    /// `over_bootstrap`: the fetch was authenticated by the bootstrap bundle alone (a reset).
    fn describe(&self, e: &FetchError, over_bootstrap: bool) -> String {
        let text = e.to_string();
        let untrusted = text.contains("UnknownIssuer") || text.contains("BadSignature");
        if !(matches!(e, FetchError::Tls(_)) && untrusted) {
            return text;
        }
        let hint = match &self.config.profile {
            PeerProfile::HttpsSpiffe {
                endpoint_spiffe_id,
                bootstrap_bundle,
            } => {
                let id_td = endpoint_spiffe_id.trust_domain();
                if id_td == self.own_roots.trust_domain() {
                    format!("the endpoint's certificate is not signed by our own CA ({id_td})")
                } else if self.store.get(id_td).is_some() && !over_bootstrap {
                    format!(
                        "the endpoint's certificate is not signed by a CA of the pinned bundle of \
                         {id_td}: if {id_td} lost its state and has a new CA, put its new bundle \
                         (`meshtrust bundle show` there) in bootstrap_bundle and run \
                         `meshtrust federation reset {}`",
                        self.td
                    )
                } else {
                    let file = bootstrap_bundle.as_ref().map_or_else(
                        || "(none configured)".to_owned(),
                        |f| f.display().to_string(),
                    );
                    format!(
                        "the endpoint's certificate is not signed by a CA of the bootstrap bundle \
                         {file}: is it {id_td}'s current bundle (`meshtrust bundle show` on \
                         {id_td}'s daemon)?"
                    )
                }
            }
            PeerProfile::HttpsWeb { ca_file } => format!(
                "the endpoint's certificate does not chain to {}",
                ca_file.as_ref().map_or_else(
                    || "the system's roots".to_owned(),
                    |f| format!("the roots of ca_file {}", f.display())
                )
            ),
        };
        format!("{text} (hint: {hint})")
    }

    /// One fetch, and its one log line: what was fetched, the outcome, and for a bundle with
    /// ignored keys their count and the first [`LOGGED_REASONS`] reasons (a hostile peer's junk
    /// keys are one line, not one per key).
    async fn fetch_and_pin(&self) -> Result<PinOutcome, FetchError> {
        let url = self.client.url();
        let fetched = match self.client.fetch().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%url, kind = e.kind(), error = %e, "peer bundle fetch failed");
                return Err(e);
            }
        };
        let Fetched {
            parsed,
            final_url,
            bytes,
            elapsed_ms,
        } = fetched;
        let b = &parsed.bundle;
        let (sequence, refresh_hint_s) = (b.sequence, b.refresh_hint.map(|d| d.as_secs()));
        let (x509_authorities, jwt_authorities) =
            (b.x509_authorities.len(), b.jwt_authorities.len());
        let skipped = parsed.skipped.len();
        let skipped_first = first_reasons(parsed.skipped.iter().map(|s| (s.index, &s.reason)));
        let notes = parsed.notes.len();
        let notes_first = first_reasons(parsed.notes.iter().map(|n| (n.index, &n.note)));
        let outcome = self.store.pin(parsed.bundle, self.clock.now());
        macro_rules! fetch_line {
            ($level:ident, $result:expr, $msg:literal) => {
                tracing::$level!(
                    %url, %final_url, bytes, elapsed_ms, ?sequence, ?refresh_hint_s,
                    x509_authorities, jwt_authorities, skipped, skipped_first, notes, notes_first,
                    result = $result, $msg
                )
            };
        }
        match &outcome {
            Ok(PinOutcome::Updated) if skipped > 0 => {
                fetch_line!(
                    warn,
                    "pinned",
                    "peer bundle fetched and pinned; some keys ignored"
                )
            }
            Ok(PinOutcome::Updated) => {
                fetch_line!(info, "pinned", "peer bundle fetched and pinned")
            }
            Ok(PinOutcome::Unchanged) if skipped > 0 => {
                fetch_line!(
                    warn,
                    "unchanged",
                    "peer bundle fetched, unchanged; some keys ignored"
                )
            }
            Ok(PinOutcome::Unchanged) => {
                fetch_line!(info, "unchanged", "peer bundle fetched, unchanged")
            }
            // Refused and counted; the pinned bundle stays (SPIFFE.md "Decisions").
            Err(e) => tracing::warn!(
                %url, %final_url, bytes, elapsed_ms, ?sequence, x509_authorities, jwt_authorities,
                skipped, skipped_first, error = %e, "fetched peer bundle not pinned; the pinned bundle stays"
            ),
        }
        Ok(outcome?)
    }

    fn record(
        &self,
        result: Result<PinOutcome, FetchError>,
        delay: Duration,
        interval: Duration,
    ) -> FetchReport {
        let now = self.clock.now();
        let pinned = self.store.get(&self.td);
        let label = result.as_ref().map_or_else(FetchError::kind, |_| "ok");
        let error = result.as_ref().err().map(|e| self.describe(e, false));
        // The pinned bundle's fetch time, as stored: the same value after a restart.
        let fetched_at = self.store.fetched_at(&self.td).unwrap_or(now);
        self.status.update(&self.td, |s| {
            s.last_attempt = Some(now);
            s.next_refresh = Some(now + delay);
            s.refresh_interval = Some(interval);
            *s.fetches.entry(label).or_insert(0) += 1;
            if error.is_some() {
                s.state = PeerState::Failing;
                s.last_error.clone_from(&error);
            } else {
                s.state = PeerState::Ok;
                s.last_success = Some(fetched_at);
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
