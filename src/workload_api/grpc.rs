//! The gRPC tower service served on the socket: the generated `SpiffeWorkloadApiServer`, except
//! that the three server streams are dispatched here with a codec whose encode buffer starts
//! small.
//!
//! Why: tonic's default codec gives every response stream an 8 KiB encode buffer for its whole
//! life, while a Workload API stream sends a few-KiB message every few hours. Measured with
//! `tests/workload_api_memory.rs` (10,000 FetchX509SVID streams over 100 connections), the server
//! holds ~10 KiB per stream with the default codec and ~7 KiB with this one; the rest is the
//! last encoded message (kept by tonic's buffer), hyper's per-stream task and h2's stream state.
//! Everything else about the calls (paths, decoding limits, no compression) is what the
//! generated server does, through the same `tonic::server::Grpc`.
//!
//! Key copies: an `X509SVIDResponse` carries a copy of each SVID's private key (PKCS#8). The
//! encoder reserves the message's exact size before encoding (so the encode buffer is not
//! reallocated with the key in it) and zeroizes the message's key bytes right after
//! ([`Wipe`]). The encoded frame itself belongs to tonic and hyper from then on: it is freed,
//! not wiped, once written to the socket.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::server::{Grpc, ServerStreamingService};
use tonic_prost::ProstDecoder;
use zeroize::Zeroize as _;

use super::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use super::service::WorkloadApi;
use super::stream::ResponseStream;

/// Initial encode buffer of a response stream: it grows to fit a message when needed.
const ENCODE_BUFFER: usize = 256;
/// tonic's default: flush once this much is buffered.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost encoding with a small initial encode buffer and key copies wiped ([`WipingEncoder`]);
/// decoding as tonic's default.
#[derive(Debug)]
struct StreamCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for StreamCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// A response message whose secret bytes are zeroized once it has been encoded.
pub trait Wipe {
    /// Overwrites every copy of key material the message holds.
    fn wipe(&mut self);
}

impl Wipe for X509svidResponse {
    fn wipe(&mut self) {
        for svid in &mut self.svids {
            svid.x509_svid_key.zeroize();
        }
    }
}

impl Wipe for X509BundlesResponse {
    fn wipe(&mut self) {}
}

impl Wipe for JwtBundlesResponse {
    fn wipe(&mut self) {}
}

/// Prost encoding into a buffer reserved to the message's size, then [`Wipe`].
#[derive(Debug)]
struct WipingEncoder<T>(PhantomData<fn(T)>);

impl<T: prost::Message + Wipe> Encoder for WipingEncoder<T> {
    type Item = T;
    type Error = tonic::Status;

    fn encode(&mut self, mut item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.reserve(item.encoded_len());
        let result = item
            .encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding a response: {e}")));
        item.wipe();
        result
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

impl<T, U> Codec for StreamCodec<T, U>
where
    T: prost::Message + Wipe + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WipingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WipingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Adapts one streaming method of [`WorkloadApi`] to tonic's `ServerStreamingService`.
macro_rules! streaming_method {
    ($name:ident, $request:ty, $response:ty, $method:ident) => {
        struct $name(WorkloadApi);

        impl ServerStreamingService<$request> for $name {
            type Response = $response;
            type ResponseStream = ResponseStream<$response>;
            type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

            fn call(&mut self, request: tonic::Request<$request>) -> Self::Future {
                let api = self.0.clone();
                Box::pin(async move { SpiffeWorkloadApi::$method(&api, request).await })
            }
        }
    };
}

streaming_method!(
    FetchX509Svid,
    X509svidRequest,
    X509svidResponse,
    fetch_x509svid
);
streaming_method!(
    FetchX509Bundles,
    X509BundlesRequest,
    X509BundlesResponse,
    fetch_x509_bundles
);
streaming_method!(
    FetchJwtBundles,
    JwtBundlesRequest,
    JwtBundlesResponse,
    fetch_jwt_bundles
);

/// The Workload API as one tower service (what the server hands to hyper's HTTP/2 server).
#[derive(Debug, Clone)]
pub struct WorkloadApiService {
    api: WorkloadApi,
    generated: SpiffeWorkloadApiServer<WorkloadApi>,
}

impl WorkloadApiService {
    /// The service for `api`.
    pub fn new(api: WorkloadApi) -> Self {
        Self {
            generated: SpiffeWorkloadApiServer::new(api.clone()),
            api,
        }
    }
}

impl<B> tower::Service<http::Request<B>> for WorkloadApiService
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let api = self.api.clone();
        match request.uri().path() {
            "/SpiffeWorkloadAPI/FetchX509SVID" => Box::pin(async move {
                let mut grpc = Grpc::new(StreamCodec::default());
                Ok(grpc.server_streaming(FetchX509Svid(api), request).await)
            }),
            "/SpiffeWorkloadAPI/FetchX509Bundles" => Box::pin(async move {
                let mut grpc = Grpc::new(StreamCodec::default());
                Ok(grpc.server_streaming(FetchX509Bundles(api), request).await)
            }),
            "/SpiffeWorkloadAPI/FetchJWTBundles" => Box::pin(async move {
                let mut grpc = Grpc::new(StreamCodec::default());
                Ok(grpc.server_streaming(FetchJwtBundles(api), request).await)
            }),
            _ => self.generated.call(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload_api::proto::X509svid;

    #[test]
    fn an_encoded_x509_svid_response_has_its_key_copies_wiped() {
        let mut response = X509svidResponse {
            svids: vec![
                X509svid {
                    x509_svid_key: vec![0x42; 138],
                    ..Default::default()
                };
                2
            ],
            ..Default::default()
        };
        let encoded = prost::Message::encode_to_vec(&response);
        assert!(encoded.windows(138).any(|w| w == [0x42; 138]));
        response.wipe();
        assert!(response.svids.iter().all(|s| s.x509_svid_key.is_empty()));
    }
}
