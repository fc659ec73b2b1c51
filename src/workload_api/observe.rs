//! Workload API metrics at the edge, without touching the service: [`Observed`] wraps the gRPC
//! tower service and [`json`] wraps the JSON view's handler. Both record each call once, at its
//! first answer, into [`WorkloadApiMetrics`]:
//!
//! - gRPC: a trailers-only response (an error before any message) records its `grpc-status`;
//!   otherwise the first message records `ok` (a unary call's response, a stream's first
//!   update), or trailers that come first record their status. A call dropped before any
//!   answer (the client went away) records `cancelled`. The time is from the request to that
//!   answer, so a stream's latency is its time to the first SVID or bundle.
//! - JSON: the HTTP status of the response, mapped to the same outcome names.
//!
//! A gRPC call also holds an open-stream gauge until its response body is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::gauge::Open;
use crate::metrics::workload_api::{Method, Outcome, WorkloadApiMetrics};

/// The gRPC status header / trailer.
const GRPC_STATUS: &str = "grpc-status";

/// Records one call's answer once; unanswered when dropped, it records `cancelled`.
#[derive(Debug)]
struct Answer {
    metrics: Arc<WorkloadApiMetrics>,
    method: Method,
    started: Instant,
    recorded: bool,
}

impl Answer {
    fn new(metrics: Arc<WorkloadApiMetrics>, method: Method) -> Self {
        Self {
            metrics,
            method,
            started: Instant::now(),
            recorded: false,
        }
    }

    fn record(&mut self, outcome: Outcome) {
        if !self.recorded {
            self.recorded = true;
            self.metrics
                .answered(self.method, outcome, self.started.elapsed());
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.record(Outcome::CANCELLED);
    }
}

/// The gRPC service `S`, counted.
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    metrics: Arc<WorkloadApiMetrics>,
}

impl<S> Observed<S> {
    /// `inner`, counted into `metrics`.
    pub(crate) fn new(metrics: Arc<WorkloadApiMetrics>, inner: S) -> Self {
        Self { inner, metrics }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<S, B> tower::Service<Request<B>> for Observed<S>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = Method::of_grpc_path(request.uri().path());
        let open = self.metrics.stream_opened(method);
        let mut answer = Answer::new(self.metrics.clone(), method);
        let response = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = response.await;
            let (parts, body) = response.into_parts();
            if let Some(status) = parts.headers.get(GRPC_STATUS) {
                answer.record(Outcome::of_grpc_status(status.as_bytes()));
            }
            let body = ObservedBody {
                inner: body,
                answer,
                _open: open,
            };
            Ok(Response::from_parts(parts, tonic::body::Body::new(body)))
        })
    }
}

/// A gRPC response body that records the call's answer from its first frame.
struct ObservedBody {
    inner: tonic::body::Body,
    answer: Answer,
    _open: Open,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let outcome = match frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => trailers
                        .get(GRPC_STATUS)
                        .map_or(Outcome::UNKNOWN, |s| Outcome::of_grpc_status(s.as_bytes())),
                    None => Outcome::OK,
                },
                Some(Err(status)) => Outcome::of_code(status.code() as i32),
                None => Outcome::UNKNOWN,
            };
            this.answer.record(outcome);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs the JSON view's `handle` for `request`, counting its answer.
pub(crate) fn json<B, F, H>(
    metrics: Arc<WorkloadApiMetrics>,
    request: Request<B>,
    handle: H,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + use<B, F, H>
where
    H: FnOnce(Request<B>) -> F,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
{
    let mut answer = Answer::new(metrics, Method::of_json_path(request.uri().path()));
    let response = handle(request);
    async move {
        let Ok(response) = response.await;
        answer.record(Outcome::of_http_status(response.status()));
        Ok(response)
    }
}
