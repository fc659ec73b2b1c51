//! The Workload API's server streams: the first message at once, then the full state whenever
//! it differs from the last one sent (Workload API §4.3, SPIFFE.md 1.7.2-1.7.3).
//!
//! A stream is a state machine polled by the h2 stream's own task (no extra task, no queue): it
//! waits on its own `watch` receivers, so a slow client only delays itself (h2 flow control stops
//! polling it) and never makes another stream lag or drop updates. A dropped stream (the client
//! cancelled) simply stops being polled. The stream ends with PermissionDenied when the caller
//! loses every identity, and with Unavailable when issuance fails or the server stops; clients
//! retry both with backoff (Workload Endpoint §6).
//!
//! The caller is attested when the stream opens and again before every update it would be
//! sent (when the server passed the connection's [`ConnectedPeer`]): a process that exec'd
//! another binary, or is gone with its socket handed over, is not sent the next SVID of the
//! identity it had; its stream ends (PermissionDenied or Unavailable).

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::Stream;

use super::attest::{CallerInfo, ConnectedPeer};
use super::state::{Inputs, Shared, Wake, Watchers, WorkloadApiError};
use super::views::{BundlesView, X509SvidView};

/// A boxed response stream, as the tonic trait's associated types.
pub type ResponseStream<M> = Pin<Box<dyn Stream<Item = Result<M, tonic::Status>> + Send>>;

/// The content of one kind of stream.
pub(crate) trait View: Sized + Send + 'static {
    /// The message sent.
    type Message: Send + 'static;
    /// The caller's view now.
    fn build(
        shared: &Shared,
        caller: &CallerInfo,
        inputs: &Inputs,
    ) -> Result<Self, WorkloadApiError>;
    /// Whether a message built from `self` would equal one built from `other`.
    fn same_as(&self, other: &Self) -> bool;
    /// The message.
    fn to_message(&self) -> Self::Message;
    /// When the view must be rebuilt even if no input changed (SVID renewal).
    fn due_at(&self) -> Option<SystemTime> {
        None
    }
}

/// FetchX509SVID.
impl View for X509SvidView {
    type Message = super::proto::X509svidResponse;
    fn build(
        shared: &Shared,
        caller: &CallerInfo,
        inputs: &Inputs,
    ) -> Result<Self, WorkloadApiError> {
        let ids = inputs.identities(caller)?;
        X509SvidView::build(inputs, &ids, &shared.svids, shared.now())
    }
    fn same_as(&self, other: &Self) -> bool {
        self.same_content(other)
    }
    fn to_message(&self) -> Self::Message {
        self.to_proto()
    }
    fn due_at(&self) -> Option<SystemTime> {
        self.renew_at()
    }
}

/// FetchX509Bundles.
#[derive(Debug)]
pub(crate) struct X509Bundles(pub(crate) BundlesView);

impl View for X509Bundles {
    type Message = super::proto::X509BundlesResponse;
    fn build(_: &Shared, caller: &CallerInfo, inputs: &Inputs) -> Result<Self, WorkloadApiError> {
        Ok(Self(BundlesView::build(
            inputs,
            &inputs.identities(caller)?,
        )))
    }
    fn same_as(&self, other: &Self) -> bool {
        self.0.same_x509(&other.0)
    }
    fn to_message(&self) -> Self::Message {
        self.0.to_x509_proto()
    }
}

/// FetchJWTBundles.
#[derive(Debug)]
pub(crate) struct JwtBundles(pub(crate) BundlesView);

impl View for JwtBundles {
    type Message = super::proto::JwtBundlesResponse;
    fn build(_: &Shared, caller: &CallerInfo, inputs: &Inputs) -> Result<Self, WorkloadApiError> {
        Ok(Self(BundlesView::build(
            inputs,
            &inputs.identities(caller)?,
        )))
    }
    fn same_as(&self, other: &Self) -> bool {
        self.0.same_jwt(&other.0)
    }
    fn to_message(&self) -> Self::Message {
        self.0.to_jwt_proto()
    }
}

/// Per-stream state: what was last sent and how to wait for the next change.
struct State<V> {
    shared: Arc<Shared>,
    caller: Arc<CallerInfo>,
    /// The connection's peer, attested again before each update (`None`: the caller stays).
    peer: Option<Arc<ConnectedPeer>>,
    watchers: Watchers,
    /// Built by the handler and not yet sent.
    first: Option<V>,
    last: Option<V>,
    done: bool,
}

/// Starts a stream of `V`: builds the first view now, so that errors (no identity, issuance)
/// become the call's status, and returns the stream that sends it and every change.
///
/// # Errors
/// The [`WorkloadApiError`] of the first build.
pub(crate) fn start<V: View>(
    shared: Arc<Shared>,
    caller: Arc<CallerInfo>,
    peer: Option<Arc<ConnectedPeer>>,
) -> Result<ResponseStream<V::Message>, WorkloadApiError> {
    let mut watchers = Watchers::new(&shared);
    let first = V::build(&shared, &caller, &watchers.inputs())?;
    let state = State {
        shared,
        caller,
        peer,
        watchers,
        first: Some(first),
        last: None,
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(state, next)))
}

async fn next<V: View>(mut st: State<V>) -> Option<(Result<V::Message, tonic::Status>, State<V>)> {
    if st.done {
        return None;
    }
    if let Some(view) = st.first.take() {
        let message = view.to_message();
        st.last = Some(view);
        return Some((Ok(message), st));
    }
    loop {
        let until = st
            .last
            .as_ref()
            .and_then(V::due_at)
            .map(|due| due.duration_since(st.shared.now()).unwrap_or_default());
        if st.watchers.wait(until).await == Wake::Cancelled {
            st.done = true;
            return Some((Err(WorkloadApiError::ShuttingDown.into()), st));
        }
        if let Some(peer) = &st.peer {
            match peer.attest() {
                Ok(caller) if caller == *st.caller => {}
                Ok(caller) => st.caller = Arc::new(caller),
                Err(e) => {
                    tracing::info!(uid = st.caller.uid, pid = ?st.caller.pid, error = %e, "workload api stream ended: caller attestation failed");
                    st.done = true;
                    let e = WorkloadApiError::Attestation(e.to_string());
                    return Some((Err(e.into()), st));
                }
            }
        }
        let inputs = st.watchers.inputs();
        match V::build(&st.shared, &st.caller, &inputs) {
            Err(e) => {
                tracing::info!(uid = st.caller.uid, pid = ?st.caller.pid, error = %e, "workload api stream ended");
                st.done = true;
                return Some((Err(e.into()), st));
            }
            Ok(view) if st.last.as_ref().is_some_and(|last| last.same_as(&view)) => {}
            Ok(view) => {
                let message = view.to_message();
                st.last = Some(view);
                return Some((Ok(message), st));
            }
        }
    }
}
