//! The gRPC service ([`proto::agent_api_server::AgentApi`]): each RPC authorizes its caller
//! ([`super::peer::authorize`]; Attest excepted), calls [`AgentApiCore`] and answers. Refusals
//! are logged with the node and the reason and counted ([`AgentRefusal`]) before the status
//! goes out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::attest;
use super::core::{AgentApiCore, AgentApiError, AgentSvid};
use super::peer::{AgentPeer, Authorized, PeerError, authorize, cert_sha256};
use super::proto;
use super::registry::AgentRegistry;
use super::sync;
use crate::metrics::agents::AgentRefusal;
use crate::node::{NodeError, csr};

/// At most this many CSRs (or JWT requests) in one batch.
pub const MAX_BATCH: usize = 1000;
/// Each attestation step must arrive within this.
pub const ATTEST_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every RPC shares.
#[derive(Debug)]
pub struct Shared {
    /// The decisions.
    pub core: AgentApiCore,
    /// Attested agents.
    pub registry: Arc<AgentRegistry>,
    /// Named in every NodeView.
    pub server_id: String,
    /// Server shutdown: ends streams.
    pub cancel: CancellationToken,
}

/// The service.
#[derive(Debug, Clone)]
pub struct AgentService(pub Arc<Shared>);

/// The gRPC status of a core error.
pub fn status_of(e: &AgentApiError) -> Status {
    match e {
        AgentApiError::Refused(
            NodeError::UnknownToken | NodeError::ExpiredToken | NodeError::NotEntitled { .. },
        )
        | AgentApiError::MethodDisabled => Status::permission_denied(e.to_string()),
        AgentApiError::Refused(NodeError::BadCsr(_) | NodeError::BadName(_)) => {
            Status::invalid_argument(e.to_string())
        }
        AgentApiError::Ca(_) | AgentApiError::Refused(NodeError::Store(_)) => {
            Status::unavailable(e.to_string())
        }
        AgentApiError::Jwt(_) => Status::invalid_argument(e.to_string()),
        AgentApiError::Refused(_) => Status::internal(e.to_string()),
    }
}

/// The wire form of an agent SVID.
pub fn svid_proto(svid: &AgentSvid) -> proto::AgentSvid {
    proto::AgentSvid {
        spiffe_id: svid.spiffe_id.to_string(),
        cert_chain: AgentApiCore::chain(&svid.leaf)
            .into_iter()
            .map(|c| c.to_vec())
            .collect(),
        expires_at: unix(svid.leaf.not_after),
    }
}

/// Unix seconds.
pub fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Shared {
    /// The caller of `request`, authorized, or the refusal (logged and counted). With a store
    /// shared by replicas, an SVID this replica does not know yet (the agent attested or
    /// renewed on another one and failed over here) is looked up in the store once before it is
    /// refused.
    pub async fn authorize<T>(
        &self,
        request: &Request<T>,
        what: &str,
    ) -> Result<Authorized, Status> {
        let peer = peer_of(request)?;
        let now = self.core.nodes.clock.now();
        let ca = self.core.ca.borrow().clone();
        let mut result = authorize(&peer, &ca, &self.registry, now);
        if matches!(result, Err(PeerError::Unknown(_))) && self.registry.shared() {
            let registry = self.registry.clone();
            match tokio::task::spawn_blocking(move || registry.refresh()).await {
                Ok(Ok(_)) => result = authorize(&peer, &ca, &self.registry, now),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "agent registry: cannot read the shared store")
                }
                Err(e) => tracing::error!(error = %e, "agent registry refresh panicked"),
            }
        }
        result.map_err(|e| {
            let (why, status) = match &e {
                PeerError::Evicted(_) => (
                    AgentRefusal::Evicted,
                    Status::permission_denied(e.to_string()),
                ),
                _ => (
                    AgentRefusal::Unauthenticated,
                    Status::unauthenticated(e.to_string()),
                ),
            };
            let node = match &e {
                PeerError::Evicted(n) | PeerError::Unknown(n) => n.as_str(),
                _ => "?",
            };
            self.core
                .record_refusal(node, what, why, &format_args!("{e} (from {})", peer.addr));
            status
        })
    }

    /// Counts and logs a malformed request, and answers InvalidArgument.
    pub fn bad_request(&self, node: &str, what: &str, why: &str) -> Status {
        self.core
            .record_refusal(node, what, AgentRefusal::BadRequest, &why);
        Status::invalid_argument(why.to_owned())
    }
}

/// The listener's [`AgentPeer`] of a request.
#[allow(clippy::result_large_err)]
pub fn peer_of<T>(request: &Request<T>) -> Result<AgentPeer, Status> {
    request
        .extensions()
        .get::<AgentPeer>()
        .cloned()
        .ok_or_else(|| Status::internal("no connection information"))
}

#[tonic::async_trait]
impl proto::agent_api_server::AgentApi for AgentService {
    type AttestStream = ReceiverStream<Result<proto::AttestResponse, Status>>;
    type SyncStream = ReceiverStream<Result<proto::NodeView, Status>>;

    async fn attest(
        &self,
        request: Request<Streaming<proto::AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        let peer = peer_of(&request)?;
        let (tx, rx) = mpsc::channel(2);
        let shared = self.0.clone();
        tokio::spawn(attest::run(shared, peer, request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew_agent(
        &self,
        request: Request<proto::RenewAgentRequest>,
    ) -> Result<Response<proto::AgentSvid>, Status> {
        let shared = &self.0;
        let caller = shared.authorize(&request, "agent svid renewal").await?;
        let node = caller.session.node.clone();
        let csr = request.into_inner().csr;
        let svid = shared
            .core
            .renew_agent(&node, &csr)
            .map_err(|e| status_of(&e))?;
        let new = cert_sha256(&svid.leaf.cert);
        shared
            .registry
            .renewed(&node, caller.svid_sha256, new, svid.leaf.not_after)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(%node, not_after = %crate::clock::rfc3339(svid.leaf.not_after), "agent svid renewed");
        Ok(Response::new(svid_proto(&svid)))
    }

    async fn sync(
        &self,
        request: Request<proto::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = self.0.authorize(&request, "sync").await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(sync::run(self.0.clone(), caller, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn sign_workloads(
        &self,
        request: Request<proto::SignWorkloadsRequest>,
    ) -> Result<Response<proto::SignWorkloadsResponse>, Status> {
        let caller = self.0.authorize(&request, "workload csr").await?;
        let node = caller.session.node;
        let csrs = request.into_inner().csrs;
        if csrs.len() > MAX_BATCH {
            let why = format!("{} csrs in one batch; at most {MAX_BATCH}", csrs.len());
            return Err(self.0.bad_request(&node, "workload csr", &why));
        }
        let core = self.0.core.clone();
        // Signing is CPU work: off the async workers.
        let svids = tokio::task::spawn_blocking(move || {
            csrs.iter()
                .map(|der| {
                    let id = csr::verify(der)
                        .ok()
                        .and_then(|c| c.spiffe_id)
                        .map(|id| id.to_string())
                        .unwrap_or_default();
                    match core.sign_workload(&node, der) {
                        Ok(leaf) => proto::SignedSvid {
                            spiffe_id: id,
                            cert_chain: AgentApiCore::chain(&leaf)
                                .into_iter()
                                .map(|c| c.to_vec())
                                .collect(),
                            error: String::new(),
                        },
                        Err(e) => proto::SignedSvid {
                            spiffe_id: id,
                            cert_chain: Vec::new(),
                            error: e.to_string(),
                        },
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::SignWorkloadsResponse { svids }))
    }

    async fn mint_jwt_svids(
        &self,
        request: Request<proto::MintJwtSvidsRequest>,
    ) -> Result<Response<proto::MintJwtSvidsResponse>, Status> {
        let caller = self.0.authorize(&request, "jwt svid").await?;
        let requests = request.into_inner().requests;
        if requests.len() > MAX_BATCH {
            let why = format!(
                "{} jwt requests in one batch; at most {MAX_BATCH}",
                requests.len()
            );
            return Err(self.0.bad_request(&caller.session.node, "jwt svid", &why));
        }
        let svids = requests
            .iter()
            .map(|r| {
                match self
                    .0
                    .core
                    .mint_jwt(&caller.session.node, &r.spiffe_id, &r.audience)
                {
                    Ok(token) => proto::MintedJwtSvid {
                        spiffe_id: r.spiffe_id.clone(),
                        token,
                        error: String::new(),
                    },
                    Err(e) => proto::MintedJwtSvid {
                        spiffe_id: r.spiffe_id.clone(),
                        token: String::new(),
                        error: e.to_string(),
                    },
                }
            })
            .collect();
        Ok(Response::new(proto::MintJwtSvidsResponse { svids }))
    }
}
