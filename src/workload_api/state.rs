//! What the Workload API reads, shared by the gRPC service and the JSON view: the inputs
//! ([`WorkloadApiDeps`]), the SVID cache, the caller's attestation as carried on each request,
//! the errors both front ends map to their status codes, and the wait for "something changed".

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::attest::CallerInfo;
use super::identity::{self, SvidCache};
use super::jwt::JwtError;
use super::source::{Feed, OwnSnapshot, PeerBundles};
use crate::ca::CaError;
use crate::clock::Clock;
use crate::config::EntryConfig;

/// The metadata key every Workload API call must carry with the value `true` (Workload
/// Endpoint §3, SPIFFE.md 1.6.3). Also the HTTP header of the JSON view.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Everything the Workload API serves from. All inputs are watches ([`Feed`]s), so streams wake
/// on a change and a slow stream never holds anything up (a watch keeps only the latest value).
/// Its own types ([`super::source`]): the server feeds them from its CA and fetchers, a node
/// agent from what it synced.
#[derive(Debug, Clone)]
pub struct WorkloadApiDeps {
    /// Our bundle and the issuer of our SVIDs (on a server, `Ca::subscribe().into()`).
    pub own: Feed<Arc<OwnSnapshot>>,
    /// Peer bundles (on a server, `PeerStore::subscribe().into()`).
    pub peers: Feed<Arc<PeerBundles>>,
    /// Registration entries in config order. A watch so that a config reload can replace them;
    /// a caller whose identities vanish then sees its streams end with PermissionDenied. The
    /// sender may be dropped at once when entries never change ([`WorkloadApiDeps::new`]).
    pub entries: watch::Receiver<Arc<Vec<EntryConfig>>>,
    /// Issuance, renewal and JWT times.
    pub clock: Arc<dyn Clock>,
}

impl WorkloadApiDeps {
    /// Deps with a fixed set of entries.
    pub fn new(
        own: impl Into<Feed<Arc<OwnSnapshot>>>,
        peers: impl Into<Feed<Arc<PeerBundles>>>,
        entries: Vec<EntryConfig>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (_, entries) = watch::channel(Arc::new(entries));
        Self {
            own: own.into(),
            peers: peers.into(),
            entries,
            clock,
        }
    }
}

/// The outcome of attesting a connection's peer, attached to every request on that connection
/// (as an `http::Extensions` entry) by the server.
#[derive(Debug, Clone)]
pub enum Attestation {
    /// The kernel's view of the caller.
    Attested(Arc<CallerInfo>),
    /// Attestation failed; every call answers Unavailable (the client retries).
    Failed(Arc<str>),
}

impl Attestation {
    /// The caller, or [`WorkloadApiError::Attestation`].
    ///
    /// # Errors
    /// When attestation failed.
    pub fn caller(&self) -> Result<Arc<CallerInfo>, WorkloadApiError> {
        match self {
            Self::Attested(caller) => Ok(caller.clone()),
            Self::Failed(why) => Err(WorkloadApiError::Attestation(why.to_string())),
        }
    }
}

/// Why a call fails; each front end maps it to its code (gRPC status / HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    /// No `workload.spiffe.io: true` (InvalidArgument / 400).
    #[error("security header missing from request")]
    MissingHeader,
    /// The caller matches no entry, or not the requested one (PermissionDenied / 403).
    #[error("no identity issued")]
    NoIdentity,
    /// The caller could not be attested (Unavailable / 503).
    #[error("caller attestation failed: {0}")]
    Attestation(String),
    /// A request field is missing or malformed (InvalidArgument / 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// A JWT-SVID did not validate (InvalidArgument).
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// No SVID can be served right now: the CA cannot issue, or an agent has none synced yet
    /// (Unavailable / 503).
    #[error("cannot issue: {0}")]
    Ca(String),
    /// The server is stopping (Unavailable / 503).
    #[error("workload api is shutting down")]
    ShuttingDown,
    /// A bug (Internal / 500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CaError> for WorkloadApiError {
    fn from(e: CaError) -> Self {
        Self::Ca(e.to_string())
    }
}

impl From<WorkloadApiError> for tonic::Status {
    fn from(e: WorkloadApiError) -> Self {
        use WorkloadApiError::*;
        let message = e.to_string();
        match e {
            MissingHeader | InvalidArgument(_) | Jwt(_) => Self::invalid_argument(message),
            NoIdentity => Self::permission_denied(message),
            Attestation(_) | Ca(_) | ShuttingDown => Self::unavailable(message),
            Internal(_) => Self::internal(message),
        }
    }
}

/// The state behind both front ends.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) deps: WorkloadApiDeps,
    pub(crate) svids: SvidCache,
    /// Cancelled at shutdown: streams end (Unavailable) so connections can close.
    pub(crate) cancel: CancellationToken,
}

impl Shared {
    pub(crate) fn new(deps: WorkloadApiDeps, cancel: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            deps,
            svids: SvidCache::new(),
            cancel,
        })
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.deps.clock.now()
    }

    /// The caller of a request, from the server's [`Attestation`] extension.
    pub(crate) fn caller(ext: &http::Extensions) -> Result<Arc<CallerInfo>, WorkloadApiError> {
        ext.get::<Attestation>()
            .ok_or_else(|| WorkloadApiError::Attestation("connection was not attested".to_owned()))?
            .caller()
    }
}

/// A consistent view of the inputs, taken at once (and marked seen, for [`Watchers::wait`]).
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    pub(crate) own: Arc<OwnSnapshot>,
    pub(crate) peers: Arc<PeerBundles>,
    pub(crate) entries: Arc<Vec<EntryConfig>>,
}

impl Inputs {
    /// The caller's identities (config order, first = default), or [`WorkloadApiError::NoIdentity`].
    pub(crate) fn identities(
        &self,
        caller: &CallerInfo,
    ) -> Result<Vec<&EntryConfig>, WorkloadApiError> {
        let ids = identity::identities(&self.entries, caller);
        if ids.is_empty() {
            Err(WorkloadApiError::NoIdentity)
        } else {
            Ok(ids)
        }
    }
}

/// What wakes a stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// An input changed or a renewal is due: rebuild and compare.
    Changed,
    /// The server is stopping.
    Cancelled,
}

/// A stream's own receivers of every input (cheap clones: an `Arc` and a version each).
#[derive(Debug)]
pub(crate) struct Watchers {
    own: Feed<Arc<OwnSnapshot>>,
    peers: Feed<Arc<PeerBundles>>,
    entries: watch::Receiver<Arc<Vec<EntryConfig>>>,
    cancel: CancellationToken,
}

/// Longest sleep of a stream without a change: bounds the effect of a wall-clock jump on
/// renewal (renewal times are wall-clock times from the injectable clock).
const MAX_SLEEP: Duration = Duration::from_secs(300);
/// Shortest sleep before a due renewal is retried, so a clock running behind cannot spin.
const MIN_SLEEP: Duration = Duration::from_millis(50);

impl Watchers {
    pub(crate) fn new(shared: &Shared) -> Self {
        Self {
            own: shared.deps.own.clone(),
            peers: shared.deps.peers.clone(),
            entries: shared.deps.entries.clone(),
            cancel: shared.cancel.clone(),
        }
    }

    /// The current inputs, marked as seen.
    pub(crate) fn inputs(&mut self) -> Inputs {
        Inputs {
            own: self.own.current(),
            peers: self.peers.current(),
            entries: self.entries.borrow_and_update().clone(),
        }
    }

    /// Waits for a change of any input, for `until` (a renewal time) to pass, or for shutdown.
    pub(crate) async fn wait(&mut self, until: Option<Duration>) -> Wake {
        let sleep = until.unwrap_or(MAX_SLEEP).clamp(MIN_SLEEP, MAX_SLEEP);
        tokio::select! {
            () = self.cancel.cancelled() => Wake::Cancelled,
            () = self.own.changed() => Wake::Changed,
            () = self.peers.changed() => Wake::Changed,
            () = changed(&mut self.entries) => Wake::Changed,
            () = tokio::time::sleep(sleep) => Wake::Changed,
        }
    }
}

/// Resolves on the next change; never when the sender is gone (no more changes can come).
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
