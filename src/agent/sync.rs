//! The sync task: connect to a server (in config order, the next one after a failure), attest
//! once, hold one `Sync` stream and apply every node view, sign what is due (new entries at
//! once with a short random spread, renewals around half life with jitter), renew the agent
//! SVID, and on any failure move on to the next server. With every server down it retries with
//! a jittered backoff capped at [`MAX_BACKOFF`], while the Workload API serves from the cache.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::attest::{self, refused};
use super::config::{AgentConfig, ServerAddr};
use super::connect::{ClientAuth, connect};
use super::state::AgentState;
use super::status::{Failure, SyncMetrics};
use super::{AgentError, svids};
use crate::agent_api::proto::agent_api_client::AgentApiClient;
use crate::agent_api::proto::{RenewAgentRequest, SignWorkloadsRequest, SyncRequest};
use crate::spiffe_id::SpiffeId;
use crate::svid::PrivateKey;

/// The longest wait between two rounds over the server list.
pub const MAX_BACKOFF: Duration = Duration::from_millis(1500);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// New entries are signed within this random delay of their arrival: a new entry for every
/// node does not reach the servers as one burst, and still reaches workloads well within 1 s.
pub const NEW_ENTRY_SPREAD: Duration = Duration::from_millis(200);
/// After a signing round that left something due (a refusal), wait this long before the next.
const RETRY_SIGNING: Duration = Duration::from_secs(2);
/// Unary calls to a server, at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The same failure of the same server is logged again after this (counted every time).
const LOG_REPEAT_EVERY: Duration = Duration::from_secs(60);
/// The longest sleep without looking at the state (re-publishes expiries).
const MAX_IDLE: Duration = Duration::from_secs(5);

/// Why a session with one server ended.
#[derive(Debug)]
struct Ended {
    /// Whether a sync stream was open (then the next server is tried at once).
    synced: bool,
    error: AgentError,
}

/// How a session with one server ended without a failure.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// Cancelled: the agent stops.
    Cancelled,
    /// The agent SVID was renewed: the connection presents the old one, which the server will
    /// refuse once it expires, so the agent reconnects to the same server with the new one.
    Renewed,
}

fn ended(synced: bool) -> impl Fn(AgentError) -> Ended {
    move |error| Ended { synced, error }
}

/// Runs until `cancel`.
pub async fn run(
    state: Arc<AgentState>,
    config: Arc<AgentConfig>,
    metrics: Arc<SyncMetrics>,
    cancel: CancellationToken,
) {
    let server_id = config.server_id();
    let n = config.servers.len();
    let mut start = 0;
    let mut backoff = FIRST_BACKOFF;
    // Per server: the last failure logged and when; a repeat is logged once a minute at most.
    let mut logged: Vec<Option<(Failure, Instant)>> = vec![None; n];
    while !cancel.is_cancelled() {
        let mut moved = false;
        // Servers that refused the agent SVID this round: when all did, it is evicted.
        let mut refused_by = 0;
        for k in 0..n {
            let i = (start + k) % n;
            let server = &config.servers[i];
            let result = session(&state, &config, server, &server_id, &metrics, &cancel).await;
            state.set_connected(None);
            state.jwt_link().set(None);
            match result {
                Ok(Closed::Cancelled) => return,
                Ok(Closed::Renewed) => {
                    tracing::info!(server = %server.url, "reconnecting with the renewed agent SVID");
                    start = i;
                    backoff = FIRST_BACKOFF;
                    moved = true;
                    break;
                }
                Err(Ended { synced, error }) => {
                    let why = if synced && matches!(error, AgentError::Connect(_)) {
                        Failure::Stream
                    } else {
                        Failure::of(&error)
                    };
                    metrics.failed(why);
                    if let AgentError::SvidRefused(_) = error {
                        refused_by += 1;
                    }
                    let repeat = logged[i].is_some_and(|(last, at)| {
                        last == why && !synced && at.elapsed() < LOG_REPEAT_EVERY
                    });
                    if repeat {
                        tracing::debug!(server = %server.url, reason = why.label(), error = %error, "agent: server still failing");
                    } else {
                        logged[i] = Some((why, Instant::now()));
                        if let AgentError::Usage(_) = error {
                            tracing::error!(server = %server.url, error = %error, "agent cannot attest");
                        } else {
                            tracing::warn!(server = %server.url, reason = why.label(), error = %error, synced, "agent: server connection ended");
                        }
                    }
                    if synced {
                        // The connected server died: the next one, now.
                        start = (i + 1) % n;
                        backoff = FIRST_BACKOFF;
                        moved = true;
                        break;
                    }
                }
            }
            if cancel.is_cancelled() {
                return;
            }
        }
        if moved {
            continue;
        }
        if refused_by == n {
            tracing::warn!(
                "every server refused the agent SVID (evicted): attesting again with a new join token"
            );
            state.drop_agent();
        }
        state.publish();
        let wait = backoff / 2 + svids::jitter(backoff / 2);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session(
    state: &Arc<AgentState>,
    config: &AgentConfig,
    server: &ServerAddr,
    server_id: &SpiffeId,
    metrics: &SyncMetrics,
    cancel: &CancellationToken,
) -> Result<Closed, Ended> {
    let now = SystemTime::now();
    if state
        .agent()
        .is_some_and(|(_, svid, _)| svid.not_after <= now)
    {
        tracing::warn!("agent SVID expired while no server could renew it; attesting again");
        state.drop_agent();
    }
    if state.agent().is_none() {
        let proof = &config.attestation;
        if let Some(hash) = state.token_already_used(proof) {
            return Err(ended(false)(AgentError::Usage(format!(
                "attestation.join_token_file holds the token already used (sha256 {hash}); \
                 waiting for a new one"
            ))));
        }
        let mut anon = connect(state, server, server_id, ClientAuth::Anonymous)
            .await
            .map_err(ended(false))?;
        let (node, svid) = match attest::attest(&mut anon, proof, &config.trust_domain).await {
            Ok(attested) => attested,
            Err(e @ AgentError::Refused(_)) => {
                // A refused token is burned (or never was): never present it again.
                state.mark_token_used(proof);
                return Err(ended(false)(e));
            }
            Err(e) => return Err(ended(false)(e)),
        };
        tracing::info!(%node, spiffe_id = %svid.spiffe_id, server = %server.url, "agent attested");
        state.mark_token_used(proof);
        state.set_agent(&node, svid).map_err(ended(false))?;
    }
    let mut client = connect(state, server, server_id, ClientAuth::AgentSvid)
        .await
        .map_err(ended(false))?;
    let mut views = match client.sync(SyncRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ended(false)(svid_refused_or(s))),
    };
    state.set_connected(Some(&server.url));
    state.jwt_link().set(Some(client.clone()));
    tracing::info!(server = %server.url, "agent connected");
    let mut sign_at: Option<Instant> = None;
    let mut retry_after = Instant::now();
    loop {
        let wall = SystemTime::now();
        let due_in = state
            .next_deadline()
            .map_or(MAX_IDLE, |t| {
                t.duration_since(wall).unwrap_or(Duration::ZERO)
            })
            .min(MAX_IDLE);
        let mut wake = (Instant::now() + due_in).max(retry_after);
        if let Some(at) = sign_at {
            wake = wake.min(at);
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(Closed::Cancelled),
            message = views.message() => match message {
                Ok(Some(view)) => {
                    let revision = view.revision;
                    state.apply_view(view, &server.url).map_err(ended(true))?;
                    tracing::debug!(revision, "node view applied");
                    if state.missing_any() && sign_at.is_none() {
                        sign_at = Some(Instant::now() + svids::jitter(NEW_ENTRY_SPREAD));
                    }
                }
                Ok(None) => return Err(ended(true)(AgentError::Connect("the server ended the sync stream".into()))),
                Err(s) => return Err(ended(true)(svid_refused_or(s))),
            },
            () = tokio::time::sleep_until(wake) => {
                sign_at = None;
                let renewed = renew_agent_if_due(state, &mut client).await.map_err(ended(true))?;
                let left = sign_due(state, &mut client, metrics).await.map_err(ended(true))?;
                if left {
                    retry_after = Instant::now() + RETRY_SIGNING;
                }
                state.publish();
                if renewed {
                    return Ok(Closed::Renewed);
                }
            }
        }
    }
}

/// A refusal of the agent SVID (PermissionDenied, Unauthenticated): evicted, or a replica that
/// does not know it yet. [`run`] forgets the SVID only when every server refused it in a round.
fn svid_refused_or(s: tonic::Status) -> AgentError {
    if matches!(
        s.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) {
        AgentError::SvidRefused(s.message().to_owned())
    } else {
        refused(s)
    }
}

/// Renews the agent SVID when due; `Ok(true)` when it did.
async fn renew_agent_if_due(
    state: &AgentState,
    client: &mut AgentApiClient<Channel>,
) -> Result<bool, AgentError> {
    let Some((node, _, renew_at)) = state.agent() else {
        return Ok(false);
    };
    if SystemTime::now() < renew_at {
        return Ok(false);
    }
    let (key, csr) = svids::key_and_csr(None)?;
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.renew_agent(RenewAgentRequest { csr }))
        .await
        .map_err(|_| AgentError::Connect("RenewAgent timed out".into()))?;
    let svid = match answer {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(svid_refused_or(s)),
    };
    let id = SpiffeId::new(&svid.spiffe_id).map_err(|e| AgentError::Refused(e.to_string()))?;
    let svid = svids::svid_from_chain(&id, svid.cert_chain, key)?;
    tracing::info!(%node, not_after = %crate::clock::rfc3339(svid.not_after), "agent SVID renewed");
    state.set_agent(&node, svid)?;
    Ok(true)
}

/// Signs every due workload SVID in one batch. `Ok(true)`: something is still due (refused).
async fn sign_due(
    state: &AgentState,
    client: &mut AgentApiClient<Channel>,
    metrics: &SyncMetrics,
) -> Result<bool, AgentError> {
    let due = state.due();
    if due.is_empty() {
        return Ok(false);
    }
    let mut keys: Vec<(SpiffeId, PrivateKey)> = Vec::with_capacity(due.len());
    let mut csrs = Vec::with_capacity(due.len());
    for id in due {
        let (key, csr) = svids::key_and_csr(Some(&id))?;
        keys.push((id, key));
        csrs.push(csr);
    }
    let answer = tokio::time::timeout(
        CALL_TIMEOUT,
        client.sign_workloads(SignWorkloadsRequest { csrs }),
    )
    .await
    .map_err(|_| AgentError::Connect("SignWorkloads timed out".into()))?
    .map_err(refused)?
    .into_inner();
    let mut signed = Vec::new();
    let mut left = answer.svids.len() != keys.len();
    if left {
        tracing::warn!(
            asked = keys.len(),
            answered = answer.svids.len(),
            "SignWorkloads answered another number of SVIDs than CSRs"
        );
    }
    let roots = state.server_roots();
    for ((id, key), svid) in keys.into_iter().zip(answer.svids) {
        if svid.cert_chain.is_empty() {
            tracing::warn!(spiffe_id = %id, error = %svid.error, "workload SVID refused by the server");
            metrics.not_signed(false);
            left = true;
            continue;
        }
        let checked = svids::svid_from_chain(&id, svid.cert_chain, key).and_then(|s| {
            if svids::signed_by_one_of(&s.cert_chain[0], &roots) {
                Ok(s)
            } else {
                Err(AgentError::BadSvid(format!(
                    "{id}: not signed by an authority of our bundle"
                )))
            }
        });
        match checked {
            Ok(s) => signed.push(s),
            Err(e) => {
                tracing::warn!(spiffe_id = %id, error = %e, "workload SVID unusable");
                metrics.not_signed(true);
                left = true;
            }
        }
    }
    if !signed.is_empty() {
        metrics.signed(signed.len());
        tracing::info!(count = signed.len(), "workload SVIDs signed");
    }
    state.add_svids(signed)?;
    Ok(left)
}
