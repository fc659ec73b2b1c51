//! The Workload API client: one FetchX509SVID stream held open, each good message published as
//! an [`X509Context`] on a `watch` channel, reconnecting like go-spiffe (SPIFFE.md §3.4, §6.7).
//!
//! - Every call carries `workload.spiffe.io: true` (Workload Endpoint 1.6.3), added by an
//!   interceptor so no call can forget it.
//! - Linear backoff 1 s, 2 s, ... capped at 30 s, reset after each good message. InvalidArgument
//!   stops the watcher with an error (1.6.7: "report, don't retry"); everything else
//!   (Unavailable, PermissionDenied, a dropped socket, the stream ending) is retried.
//! - A message that fails validation is reported and skipped; the stream stays up and the last
//!   good context stays published (go-spiffe does the same).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::Reporter;
use super::context::X509Context;
use crate::spiffe_id::SpiffeId;
use crate::workload_api::proto::X509svidRequest;
use crate::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the watcher stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server said the request is malformed; retrying cannot help (Workload Endpoint 1.6.7).
    #[error("the workload api rejected the request as invalid: {0}")]
    InvalidArgument(String),
    /// The watcher was cancelled before it got a first SVID.
    #[error("the workload api watcher stopped before receiving an svid")]
    Stopped,
    /// The watcher task panicked.
    #[error("the workload api watcher failed: {0}")]
    Task(String),
}

/// Adds the security header to every call (Workload Endpoint §3).
#[derive(Debug, Clone, Copy, Default)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        Ok(request)
    }
}

/// A Workload API client whose every call carries the security header.
pub type WorkloadClient = SpiffeWorkloadApiClient<InterceptedService<Channel, SecurityHeader>>;

/// Connects to the Workload API on the Unix socket `path` (plaintext HTTP/2, Workload Endpoint
/// §3.1). The `http://localhost` URI is a placeholder: the connector dials the socket, and
/// `localhost` is the `:authority` go-spiffe and the Rust `spiffe` crate send too.
///
/// # Errors
/// The transport error when the socket cannot be reached.
pub async fn connect(path: &Path) -> Result<WorkloadClient, tonic::transport::Error> {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel,
        SecurityHeader,
    ))
}

/// The linear backoff of go-spiffe's Workload API client.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempts: u32,
}

impl Backoff {
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        (Duration::from_secs(1) * self.attempts).min(MAX_BACKOFF)
    }

    pub(crate) fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// The latest validated context; `None` until the first one arrives.
pub type ContextRx = watch::Receiver<Option<Arc<X509Context>>>;

/// A running FetchX509SVID watcher.
#[derive(Debug)]
pub struct X509Watcher {
    rx: ContextRx,
    task: JoinHandle<Result<(), ClientError>>,
}

impl X509Watcher {
    /// Starts watching the Workload API at `socket` until `cancel` fires.
    pub fn spawn(socket: PathBuf, report: Reporter, cancel: CancellationToken) -> Self {
        Self::spawn_for(socket, None, report, cancel)
    }

    /// [`X509Watcher::spawn`] following the SVID for `want` (the default SVID when `None`).
    pub fn spawn_for(
        socket: PathBuf,
        want: Option<SpiffeId>,
        report: Reporter,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(watch_loop(socket, want, tx, report, cancel));
        Self { rx, task }
    }

    /// A receiver of the latest context (for TLS resolvers, the files writer...).
    pub fn subscribe(&self) -> ContextRx {
        self.rx.clone()
    }

    /// The latest context, if one has arrived.
    pub fn current(&self) -> Option<Arc<X509Context>> {
        self.rx.borrow().clone()
    }

    /// Waits for the first context (retrying connections meanwhile).
    ///
    /// # Errors
    /// When the watcher stops first: [`ClientError::InvalidArgument`], or
    /// [`ClientError::Stopped`] when it was cancelled.
    pub async fn first(&mut self) -> Result<Arc<X509Context>, ClientError> {
        let mut rx = self.rx.clone();
        let got = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|c| c.clone());
        match got {
            Some(ctx) => Ok(ctx),
            None => match (&mut self.task).await {
                Ok(Ok(())) => Err(ClientError::Stopped),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(ClientError::Task(e.to_string())),
            },
        }
    }

    /// Waits until the watcher stops: `Ok` when cancelled, the error otherwise.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] or [`ClientError::Task`].
    pub async fn stopped(self) -> Result<(), ClientError> {
        self.task
            .await
            .map_err(|e| ClientError::Task(e.to_string()))?
    }
}

/// How one stream ended.
enum StreamEnd {
    /// Retry after the backoff, with this reason.
    Retry(String),
    /// Stop for good.
    Stop(ClientError),
}

fn classify(status: &Status) -> StreamEnd {
    match status.code() {
        Code::InvalidArgument => {
            StreamEnd::Stop(ClientError::InvalidArgument(status.message().to_owned()))
        }
        code => StreamEnd::Retry(format!("{code:?}: {}", status.message())),
    }
}

async fn watch_loop(
    socket: PathBuf,
    want: Option<SpiffeId>,
    tx: watch::Sender<Option<Arc<X509Context>>>,
    report: Reporter,
    cancel: CancellationToken,
) -> Result<(), ClientError> {
    let mut backoff = Backoff::default();
    loop {
        let end = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            end = one_stream(&socket, want.as_ref(), &tx, &report, &mut backoff) => end,
        };
        let reason = match end {
            StreamEnd::Stop(e) => {
                report.line(format!("workload api: stopping: {e}"));
                return Err(e);
            }
            StreamEnd::Retry(reason) => reason,
        };
        let delay = backoff.next_delay();
        report.line(format!(
            "workload api at {}: {reason}; retrying in {}s",
            socket.display(),
            delay.as_secs()
        ));
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn one_stream(
    socket: &Path,
    want: Option<&SpiffeId>,
    tx: &watch::Sender<Option<Arc<X509Context>>>,
    report: &Reporter,
    backoff: &mut Backoff,
) -> StreamEnd {
    let mut client = match connect(socket).await {
        Ok(c) => c,
        Err(e) => return StreamEnd::Retry(format!("cannot connect: {}", source_chain(&e))),
    };
    let mut stream = match client.fetch_x509svid(X509svidRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return classify(&status),
    };
    loop {
        match stream.message().await {
            Ok(Some(msg)) => match X509Context::from_response_for(msg, SystemTime::now(), want) {
                Ok(ctx) => {
                    backoff.reset();
                    let line = format!("svid update: {}", ctx.describe());
                    // In force first, then reported: whoever reads the line can use it.
                    tx.send_replace(Some(Arc::new(ctx)));
                    report.line(line);
                }
                Err(e) => report.line(format!("svid update dropped: {e}")),
            },
            Ok(None) => return StreamEnd::Retry("the stream ended".to_owned()),
            Err(status) => return classify(&status),
        }
    }
}

/// The error and its causes, each said once: a cause whose words are already in the line (a
/// wrapper quoting its source) is left out, and tonic's bare "transport error" says nothing.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let words = err.to_string();
        if !words.is_empty() && words != "transport error" && !text.contains(&words) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&words);
        }
        next = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_linear_capped_and_resets() {
        // SPIFFE.md §3.4: 1 s, 2 s ... capped at 30 s, reset after each good message.
        let mut b = Backoff::default();
        let first: Vec<u64> = (0..3).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(first, [1, 2, 3]);
        for _ in 0..40 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), MAX_BACKOFF);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn a_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Transport(#[source] Outer);
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Outer(#[source] std::io::Error);
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = Transport(Outer(io()));
        assert_eq!(source_chain(&e), io().to_string());
    }

    #[test]
    fn only_invalid_argument_stops_the_watcher() {
        // Workload Endpoint 1.6.7: InvalidArgument = don't retry; the others are retried.
        assert!(matches!(
            classify(&Status::invalid_argument("no header")),
            StreamEnd::Stop(ClientError::InvalidArgument(_))
        ));
        for status in [
            Status::unavailable("x"),
            Status::permission_denied("x"),
            Status::unknown("x"),
        ] {
            assert!(matches!(classify(&status), StreamEnd::Retry(_)));
        }
    }
}
