//! Wire-compatibility check of the generated Workload API bindings (`workload_api::proto`).
//!
//! A throwaway service built on the generated tonic server listens on a real Unix socket and
//! answers FetchX509SVID with PermissionDenied. The unmodified `spiffe` crate client (what
//! sidecars and other Rust workloads use) must see exactly that denial: it can only get there if
//! the service name, the method path `/SpiffeWorkloadAPI/FetchX509SVID` and the message types of
//! our proto match the standard. The real service lives elsewhere; this one only proves the wire.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use meshtrust::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshtrust::workload_api::proto::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use meshtrust::workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Code, Request, Response, Status};

/// SPIRE's wording for "no identity for this caller"; the `spiffe` crate maps it to
/// `WorkloadApiError::NoIdentityIssued`.
const NO_IDENTITY: &str = "no identity issued";

/// Test-only Workload API: checks the security header like a real server must, then denies.
#[derive(Debug)]
struct DenyingWorkloadApi;

/// The Workload Endpoint spec's security header check (SPIFFE.md §3.4): InvalidArgument if absent,
/// so a denial seen by the client also proves that the client sent the header.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

type Empty<T> = tokio_stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for DenyingWorkloadApi {
    type FetchX509SVIDStream = Empty<X509svidResponse>;
    type FetchX509BundlesStream = Empty<X509BundlesResponse>;
    type FetchJWTBundlesStream = Empty<JwtBundlesResponse>;
    type FetchWITSVIDStream = Empty<WitsvidResponse>;
    type FetchWITBundlesStream = Empty<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        Err(Status::permission_denied(NO_IDENTITY))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("test service"))
    }
}

/// Serves [`DenyingWorkloadApi`] on `<dir>/workload.sock` until the test's runtime ends.
fn spawn_server(dir: &Path) -> PathBuf {
    let path = dir.join("workload.sock");
    let listener = UnixListener::bind(&path).expect("bind unix socket");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(DenyingWorkloadApi))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    path
}

#[tokio::test]
async fn spiffe_crate_client_sees_permission_denied_from_generated_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = spawn_server(dir.path());

    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("spiffe client connects over the unix socket");
    let err = client
        .fetch_x509_svid()
        .await
        .expect_err("the test service denies every caller");

    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "expected PermissionDenied(\"{NO_IDENTITY}\") to surface as NoIdentityIssued, got {err:?}"
    );
}

#[tokio::test]
async fn generated_client_reaches_generated_server_over_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = spawn_server(dir.path());

    // The URI is a placeholder: the connector below ignores it and dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect over the unix socket");
    let mut client = SpiffeWorkloadApiClient::new(channel);

    let mut request = Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("ascii value"));
    let status = client
        .fetch_x509svid(request)
        .await
        .expect_err("the test service denies every caller");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), NO_IDENTITY);

    let status = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect_err("no security header");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .fetch_witsvid(WitsvidRequest::default())
        .await
        .expect_err("WIT is not served");
    assert_eq!(status.code(), Code::Unimplemented);
}
