//! The one gRPC client of the Workload API over its Unix socket: our generated bindings, the
//! security header, a stream's next message under the hang guard.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::Path;

use hyper_util::rt::TokioIo;
use meshtrust::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshtrust::workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use tokio::net::UnixStream;
use tonic::transport::Channel;

/// Our generated client.
pub type Client = SpiffeWorkloadApiClient<Channel>;

/// Our generated client on the Workload API socket `socket` (the URI is a placeholder: the
/// connector dials the socket). Add the header per request with [`with_header`].
pub async fn workload_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let socket = socket.to_owned();
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost");
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let socket = socket.clone();
        async move { UnixStream::connect(socket).await.map(TokioIo::new) }
    }));
    let channel = super::guard(connect).await.unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

/// `message` with the Workload API security header (`workload.spiffe.io: true`).
pub fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// Opens FetchX509SVID on `client` (with the header).
pub async fn open_x509svid(client: &mut Client) -> tonic::Streaming<X509svidResponse> {
    super::guard(client.fetch_x509svid(with_header(X509svidRequest {})))
        .await
        .unwrap()
        .into_inner()
}

/// Opens FetchX509Bundles on `client` (with the header).
pub async fn open_x509_bundles(client: &mut Client) -> tonic::Streaming<X509BundlesResponse> {
    super::guard(client.fetch_x509_bundles(with_header(X509BundlesRequest {})))
        .await
        .unwrap()
        .into_inner()
}

/// Opens FetchJWTBundles on `client` (with the header).
pub async fn open_jwt_bundles(client: &mut Client) -> tonic::Streaming<JwtBundlesResponse> {
    super::guard(client.fetch_jwt_bundles(with_header(JwtBundlesRequest {})))
        .await
        .unwrap()
        .into_inner()
}

/// A FetchX509Bundles stream on `socket`, as this process.
pub async fn x509_bundles(socket: &Path) -> tonic::Streaming<X509BundlesResponse> {
    open_x509_bundles(&mut workload_client(socket).await).await
}

/// A FetchX509SVID stream on `socket`, as this process.
pub async fn x509_svids(socket: &Path) -> tonic::Streaming<X509svidResponse> {
    open_x509svid(&mut workload_client(socket).await).await
}

/// The next message of a stream, under the hang guard; panics if the stream ends or fails.
pub async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    super::guard(stream.message())
        .await
        .unwrap()
        .expect("the stream is still open")
}
