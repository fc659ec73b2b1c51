//! One Sync stream: the node's full view at once (revision 0), then a new one as soon as
//! anything in it changes: the entries (SIGHUP), our CA (rotation), a peer bundle the node's
//! entries federate with. Push, not poll: the stream waits on the `watch` channels the writers
//! publish on, so a change reaches the agent in one round trip. A change that leaves the
//! node's view as it was sends nothing.
//!
//! The stream ends with PermissionDenied the moment the node is evicted (its session token),
//! with Unauthenticated when the agent SVID it was opened with expires (the agent renews and
//! opens a new one), with Unavailable when the server shuts down (agents reconnect to another
//! replica), and when the agent goes away.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;

use super::peer::Authorized;
use super::proto;
use super::service::Shared;
use super::view::to_proto;

/// The current wire view of `node`, without revision.
fn current(shared: &Shared, node: &str) -> proto::NodeView {
    let view = shared.core.node_view(node);
    let own_json = shared.core.ca.borrow().bundle_json.clone();
    to_proto(&view, &own_json, &shared.server_id)
}

/// Runs one stream until it ends.
pub(super) async fn run(
    shared: Arc<Shared>,
    caller: Authorized,
    tx: mpsc::Sender<Result<proto::NodeView, Status>>,
) {
    let node = caller.session.node.clone();
    let clock = shared.core.nodes.clock.clone();
    let registry = shared.registry.clone();
    registry.sync_opened(&node, &caller.addr.to_string(), clock.now());
    tracing::info!(%node, addr = %caller.addr, "agent sync stream opened");
    let mut ca = shared.core.ca.clone();
    let mut peers = shared.core.peers.clone();
    let mut entries = shared.core.entries.clone();
    ca.mark_unchanged();
    peers.mark_unchanged();
    entries.mark_unchanged();
    let expiry = caller
        .not_after
        .duration_since(clock.now())
        .unwrap_or_default();
    let expired = tokio::time::sleep(expiry);
    tokio::pin!(expired);
    let mut last = current(&shared, &node);
    let mut revision = 0u64;
    let mut sent = last.clone();
    sent.revision = revision;
    let mut outcome = if tx.send(Ok(sent)).await.is_ok() {
        registry.synced(&node, clock.now());
        None
    } else {
        Some("agent gone")
    };
    while outcome.is_none() {
        let changed = tokio::select! {
            () = caller.session.ended.cancelled() => {
                let status = Status::permission_denied(format!("agent of node {node:?} evicted or re-attested: attest again"));
                let _ = tx.send(Err(status)).await;
                outcome = Some("evicted or re-attested");
                continue;
            }
            () = shared.cancel.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                outcome = Some("server shutting down");
                continue;
            }
            () = &mut expired => {
                let status = Status::unauthenticated("agent svid expired: renew it and sync again");
                let _ = tx.send(Err(status)).await;
                outcome = Some("agent svid expired");
                continue;
            }
            () = tx.closed() => {
                outcome = Some("agent gone");
                continue;
            }
            r = ca.changed() => r.is_ok(),
            r = peers.changed() => r.is_ok(),
            r = entries.changed() => r.is_ok(),
        };
        if !changed {
            outcome = Some("server state closed");
            continue;
        }
        let view = current(&shared, &node);
        if view == last {
            continue;
        }
        revision += 1;
        last = view;
        let mut sent = last.clone();
        sent.revision = revision;
        if tx.send(Ok(sent)).await.is_err() {
            outcome = Some("agent gone");
        } else {
            registry.synced(&node, clock.now());
            tracing::debug!(%node, revision, "agent sync view sent");
        }
    }
    registry.sync_closed(&node);
    tracing::info!(%node, reason = outcome.unwrap_or_default(), "agent sync stream closed");
}
