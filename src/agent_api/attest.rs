//! The Attest stream: the first step names the method. `join_token`: token + CSR, one answer.
//! `x509pop`: chain + agent nonce + CSR, then our challenge, then the agent's signature, then
//! the SVID ([`super::x509pop`]). Each step must arrive within [`ATTEST_STEP_TIMEOUT`]; a
//! successful attestation is recorded in the registry before the SVID is sent.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::core::AgentSvid;
use super::peer::{AgentPeer, cert_sha256};
use super::proto::attest_request::Step;
use super::proto::{self, AttestResponse, attest_response};
use super::service::{ATTEST_STEP_TIMEOUT, Shared, status_of, svid_proto};
use super::x509pop;
use crate::store::AgentRecord;

type Tx = mpsc::Sender<Result<AttestResponse, Status>>;

/// The next message of the stream, or the status to end with (logged and counted).
pub(super) async fn next(
    shared: &Shared,
    peer: &AgentPeer,
    inbound: &mut Streaming<proto::AttestRequest>,
) -> Result<proto::AttestRequest, Status> {
    let what = "attestation";
    match tokio::time::timeout(ATTEST_STEP_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(shared.bad_request(
            "?",
            what,
            &format!(
                "stream from {} ended before the attestation finished",
                peer.addr
            ),
        )),
        Ok(Err(status)) => Err(shared.bad_request(
            "?",
            what,
            &format!("from {}: {}", peer.addr, status.message()),
        )),
        Err(_) => Err(shared.bad_request(
            "?",
            what,
            &format!(
                "no attestation step from {} within {ATTEST_STEP_TIMEOUT:?}",
                peer.addr
            ),
        )),
    }
}

/// Runs one Attest stream to its end.
pub(super) async fn run(
    shared: Arc<Shared>,
    peer: AgentPeer,
    mut inbound: Streaming<proto::AttestRequest>,
    tx: Tx,
) {
    let result = async {
        let first = next(&shared, &peer, &mut inbound).await?;
        let (svid, method) = match first.step {
            Some(Step::JoinToken(t)) => {
                let svid = shared
                    .core
                    .attest_join_token(&t.token, &first.csr)
                    .map_err(|e| status_of(&e))?;
                (svid, "join_token")
            }
            Some(Step::X509popChain(chain)) => {
                let svid =
                    x509pop::run(&shared, &peer, chain, first.csr, &mut inbound, &tx).await?;
                (svid, "x509pop")
            }
            Some(Step::X509popSignature(_)) | None => {
                return Err(shared.bad_request(
                    "?",
                    "attestation",
                    "the first step must be join_token or x509pop_chain",
                ));
            }
        };
        record(&shared, &peer, &svid, method)?;
        Ok(svid)
    }
    .await;
    let answer = result.map(|svid| AttestResponse {
        step: Some(attest_response::Step::Svid(svid_proto(&svid))),
    });
    // The agent may be gone; nothing to do then.
    let _ = tx.send(answer).await;
}

#[allow(clippy::result_large_err)]
fn record(shared: &Shared, peer: &AgentPeer, svid: &AgentSvid, method: &str) -> Result<(), Status> {
    let record = AgentRecord {
        node: svid.node.clone(),
        spiffe_id: svid.spiffe_id.to_string(),
        method: method.to_owned(),
        address: peer.addr.to_string(),
        attested_at: shared.core.nodes.clock.now(),
        last_sync: None,
        svid_expires_at: svid.leaf.not_after,
        evicted: false,
        svid_sha256: Some(cert_sha256(&svid.leaf.cert)),
        previous_svid_sha256: None,
    };
    shared.registry.attested(record).map_err(|e| {
        tracing::error!(node = %svid.node, error = %e, "agent api: attestation not recorded");
        Status::unavailable(e.to_string())
    })
}
