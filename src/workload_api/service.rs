//! The `SpiffeWorkloadAPI` gRPC service (Workload API §5-§7, SPIFFE.md 1.6 and 1.7, SPIRE's error
//! codes and messages from §3.4).
//!
//! Every call first checks the security header (InvalidArgument, before anything else), then the
//! request's fields, then the caller's attestation (Unavailable) and identities
//! (PermissionDenied). The caller comes from the [`Attestation`](super::Attestation) the server attached to the
//! request; a service used without that server answers Unavailable.
//!
//! ValidateJWTSVID validates with the bundles the caller could fetch itself: ours and the peers
//! its entries federate with. A token from any other trust domain is "no JWT bundle".

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::attest::{CallerInfo, ConnectedPeer};
use super::identity;
use super::jwt;
use super::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse,
    WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use super::state::{Inputs, SECURITY_HEADER, Shared, Watchers, WorkloadApiDeps, WorkloadApiError};
use super::stream::{self, JwtBundles, ResponseStream, X509Bundles};
use super::views::{BundlesView, X509SvidView};
use crate::spiffe_id::SpiffeId;

/// The Workload API service. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    shared: Arc<Shared>,
}

impl WorkloadApi {
    /// A service over `deps`; its streams end (Unavailable) when `cancel` fires.
    pub fn new(deps: WorkloadApiDeps, cancel: CancellationToken) -> Self {
        Self {
            shared: Shared::new(deps, cancel),
        }
    }

    /// Shares the state (SVID cache) with the JSON view.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The service over the JSON view's state: its JWT routes answer through the same calls.
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The tonic server for this service (to serve over HTTP/2).
    pub fn into_server(self) -> SpiffeWorkloadApiServer<Self> {
        SpiffeWorkloadApiServer::new(self)
    }

    /// Header check, then the attested caller.
    fn admit<T>(request: &Request<T>) -> Result<Arc<CallerInfo>, WorkloadApiError> {
        check_header(request)?;
        Shared::caller(request.extensions())
    }

    fn inputs(&self) -> Inputs {
        Watchers::new(&self.shared).inputs()
    }
}

/// Workload Endpoint §3: `workload.spiffe.io` must be exactly `true`.
fn check_header<T>(request: &Request<T>) -> Result<(), WorkloadApiError> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(WorkloadApiError::MissingHeader),
    }
}

fn invalid(message: &str) -> WorkloadApiError {
    WorkloadApiError::InvalidArgument(message.to_owned())
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = ResponseStream<WitsvidResponse>;
    type FetchWITBundlesStream = ResponseStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = Self::admit(&request)?;
        let peer = request.extensions().get::<Arc<ConnectedPeer>>().cloned();
        let stream = stream::start::<X509SvidView>(self.shared.clone(), caller, peer)?;
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = Self::admit(&request)?;
        let peer = request.extensions().get::<Arc<ConnectedPeer>>().cloned();
        let stream = stream::start::<X509Bundles>(self.shared.clone(), caller, peer)?;
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        let req = request.get_ref();
        // SPIRE's order and wording (SPIFFE.md §3.4).
        if req.audience.is_empty() {
            return Err(invalid("audience must be specified").into());
        }
        if req.audience.iter().any(String::is_empty) {
            return Err(invalid("audience must not contain an empty value").into());
        }
        let wanted = match req.spiffe_id.as_str() {
            "" => None,
            s => Some(SpiffeId::new(s).map_err(|e| {
                WorkloadApiError::InvalidArgument(format!("invalid requested SPIFFE ID: {e}"))
            })?),
        };
        let caller = Shared::caller(request.extensions())?;
        let inputs = self.inputs();
        let mut ids = inputs.identities(&caller)?;
        if let Some(wanted) = &wanted {
            ids.retain(|e| &e.spiffe_id == wanted);
            if ids.is_empty() {
                return Err(WorkloadApiError::NoIdentity.into());
            }
        }
        let now = self.shared.now();
        let hints = identity::unique_hints(&ids);
        let mut svids = Vec::with_capacity(ids.len());
        for (entry, hint) in ids.iter().zip(hints) {
            let svid = inputs
                .own
                .issuer
                .jwt_svid(&entry.spiffe_id, &req.audience, now)
                .await?;
            svids.push(Jwtsvid {
                spiffe_id: entry.spiffe_id.to_string(),
                svid,
                hint,
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = Self::admit(&request)?;
        let peer = request.extensions().get::<Arc<ConnectedPeer>>().cloned();
        let stream = stream::start::<JwtBundles>(self.shared.clone(), caller, peer)?;
        Ok(Response::new(stream))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(invalid("audience must be specified").into());
        }
        if req.svid.is_empty() {
            return Err(invalid("svid must be specified").into());
        }
        let caller = Shared::caller(request.extensions())?;
        let inputs = self.inputs();
        let ids = inputs.identities(&caller)?;
        let bundles = BundlesView::build(&inputs, &ids);
        let valid = jwt::validate(
            &req.svid,
            &req.audience,
            |td| bundles.get(td),
            self.shared.now(),
        )
        .map_err(WorkloadApiError::from)?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: valid.spiffe_id.to_string(),
            claims: Some(jwt::claims_to_struct(&valid.claims)),
        }))
    }

    /// WIT-SVIDs are not supported (Workload API §7, SPIFFE.md 1.7.12).
    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("WIT-SVIDs are not supported"))
    }

    /// WIT bundles are not supported (Workload API §7, SPIFFE.md 1.7.12).
    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("WIT-SVIDs are not supported"))
    }
}
