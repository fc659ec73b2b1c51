//! The agent as the Workload API's [`Issuer`]: X509-SVIDs are the ones the agent had signed
//! from its own keys (nothing is minted on request: a caller gets what the sync task holds);
//! JWT-SVIDs are asked of the connected server (`MintJwtSvids`: JWT keys stay on the servers),
//! so they are Unavailable while no server is connected.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tonic::transport::Channel;

use crate::agent_api::proto::agent_api_client::AgentApiClient;
use crate::agent_api::proto::{JwtSvidRequest, MintJwtSvidsRequest};
use crate::spiffe_id::SpiffeId;
use crate::svid::X509Svid;
use crate::workload_api::identity::{CachedSvid, SvidCache};
use crate::workload_api::{Issuer, JwtSvidFuture, WorkloadApiError};

/// How long a JWT-SVID request to the server may take.
const JWT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection JWT-SVIDs are asked on: set by the sync task while a server is connected.
#[derive(Debug, Clone, Default)]
pub struct JwtLink(Arc<Mutex<Option<AgentApiClient<Channel>>>>);

impl JwtLink {
    /// Uses `client` from now on (`None`: no server).
    pub fn set(&self, client: Option<AgentApiClient<Channel>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = client;
    }

    fn get(&self) -> Option<AgentApiClient<Channel>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The SVIDs the agent holds, by SPIFFE ID.
#[derive(Debug, Default)]
pub struct AgentIssuer {
    svids: BTreeMap<SpiffeId, Arc<X509Svid>>,
    jwt: JwtLink,
}

impl AgentIssuer {
    /// An issuer serving `svids`, asking JWT-SVIDs on `jwt`.
    pub fn new(svids: BTreeMap<SpiffeId, Arc<X509Svid>>, jwt: JwtLink) -> Self {
        Self { svids, jwt }
    }
}

impl Issuer for AgentIssuer {
    fn x509_svid(
        &self,
        id: &SpiffeId,
        _cache: &SvidCache,
        now: SystemTime,
    ) -> Result<CachedSvid, WorkloadApiError> {
        let svid = self
            .svids
            .get(id)
            .ok_or_else(|| WorkloadApiError::Ca(format!("the agent holds no SVID for {id} yet")))?;
        Ok(CachedSvid {
            svid: svid.clone(),
            // The sync task publishes a renewed SVID itself (streams wake on it); this only
            // bounds a stream's sleep, never below a second.
            renew_at: svid.not_after.max(now + Duration::from_secs(1)),
        })
    }

    fn jwt_svid(&self, id: &SpiffeId, audience: &[String], _now: SystemTime) -> JwtSvidFuture {
        let client = self.jwt.get();
        let request = MintJwtSvidsRequest {
            requests: vec![JwtSvidRequest {
                spiffe_id: id.to_string(),
                audience: audience.to_vec(),
            }],
        };
        Box::pin(async move {
            let unavailable = |why: String| WorkloadApiError::Ca(format!("jwt-svid: {why}"));
            let mut client = client.ok_or_else(|| unavailable("no server connected".into()))?;
            let answer = tokio::time::timeout(JWT_TIMEOUT, client.mint_jwt_svids(request))
                .await
                .map_err(|_| unavailable("the server did not answer in time".into()))?
                .map_err(|s| unavailable(s.message().to_owned()))?
                .into_inner();
            let minted = answer
                .svids
                .into_iter()
                .next()
                .ok_or_else(|| unavailable("empty answer".into()))?;
            if minted.token.is_empty() {
                return Err(unavailable(format!("refused: {}", minted.error)));
            }
            Ok(minted.token)
        })
    }
}
