//! Node attestation from the agent's side (`Attest` stream, proto/agent.proto): a join token
//! read from its file, or x509pop (the node certificate chain, then a signature with the node
//! key over the server's challenge, binding both nonces and the CSR). Either way the agent
//! sends a CSR for a fresh key and gets back its agent SVID; the key never leaves the node.

use std::path::Path;
use std::time::Duration;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::AgentError;
use super::config::NodeProof;
use super::svids;
use crate::agent_api::proto::agent_api_client::AgentApiClient;
use crate::agent_api::proto::{
    self, AttestRequest, AttestResponse, JoinToken, X509PopChain, attest_request, attest_response,
};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::X509Svid;

/// How long the whole exchange may take.
const ATTEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The domain separator of the x509pop signature.
pub const X509POP_CONTEXT: &[u8] = b"meshtrust x509pop v1";

/// The node name of an agent ID `spiffe://<td>/meshtrust/agent/<node>`.
///
/// # Errors
/// [`AgentError::Refused`] when the server named something else.
pub fn node_of(id: &SpiffeId, td: &TrustDomain) -> Result<String, AgentError> {
    let node = id
        .as_str()
        .strip_prefix(&format!("spiffe://{td}/meshtrust/agent/"))
        .ok_or_else(|| AgentError::Refused(format!("the server named this agent {id}")))?;
    crate::node::validate_node_name(node).map_err(|e| AgentError::Refused(e.to_string()))?;
    Ok(node.to_owned())
}

/// Attests with `proof` on `client`: the node name and the agent SVID.
///
/// # Errors
/// [`AgentError::Usage`] when the proof cannot be read (names the config key),
/// [`AgentError::Refused`] when the server refuses, [`AgentError::Connect`] on transport errors.
pub async fn attest(
    client: &mut AgentApiClient<Channel>,
    proof: &NodeProof,
    td: &TrustDomain,
) -> Result<(String, X509Svid), AgentError> {
    let (key, csr) = svids::key_and_csr(None)?;
    let (tx, rx) = mpsc::channel::<AttestRequest>(2);
    let pop = match proof {
        NodeProof::JoinToken(file) => {
            let token = read_token(file)?;
            send(
                &tx,
                attest_request::Step::JoinToken(JoinToken {
                    token: token.to_string(),
                }),
                &csr,
            )
            .await?;
            None
        }
        NodeProof::X509Pop {
            cert_file,
            key_file,
        } => {
            let chain = read_chain(cert_file)?;
            let mut nonce = [0u8; 32];
            SystemRandom::new()
                .fill(&mut nonce)
                .map_err(|_| AgentError::Key("no randomness".into()))?;
            let step = attest_request::Step::X509popChain(X509PopChain {
                cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
                agent_nonce: nonce.to_vec(),
            });
            send(&tx, step, &csr).await?;
            Some((key_file.clone(), nonce))
        }
    };
    let exchange = async {
        let mut answers = client
            .attest(ReceiverStream::new(rx))
            .await
            .map_err(refused)?
            .into_inner();
        loop {
            let answer: AttestResponse = answers
                .message()
                .await
                .map_err(refused)?
                .ok_or_else(|| AgentError::Refused("the server ended attestation".into()))?;
            match answer.step {
                Some(attest_response::Step::X509popChallenge(challenge)) => {
                    let Some((key_file, nonce)) = &pop else {
                        return Err(AgentError::Refused("unexpected x509pop challenge".into()));
                    };
                    let signature = sign_challenge(key_file, &challenge, nonce, &csr)?;
                    send(&tx, attest_request::Step::X509popSignature(signature), &[]).await?;
                }
                Some(attest_response::Step::Svid(svid)) => return Ok(svid),
                None => return Err(AgentError::Refused("empty attestation answer".into())),
            }
        }
    };
    let svid: proto::AgentSvid = tokio::time::timeout(ATTEST_TIMEOUT, exchange)
        .await
        .map_err(|_| AgentError::Connect("attestation timed out".into()))??;
    let id = SpiffeId::new(&svid.spiffe_id).map_err(|e| AgentError::Refused(e.to_string()))?;
    let node = node_of(&id, td)?;
    Ok((node, svids::svid_from_chain(&id, svid.cert_chain, key)?))
}

async fn send(
    tx: &mpsc::Sender<AttestRequest>,
    step: attest_request::Step,
    csr: &[u8],
) -> Result<(), AgentError> {
    tx.send(AttestRequest {
        step: Some(step),
        csr: csr.to_vec(),
    })
    .await
    .map_err(|_| AgentError::Connect("attestation stream closed".into()))
}

/// A gRPC status as a refusal (PermissionDenied and friends) or a transport failure.
pub fn refused(s: tonic::Status) -> AgentError {
    use tonic::Code::*;
    match s.code() {
        PermissionDenied | Unauthenticated | InvalidArgument | FailedPrecondition | NotFound => {
            AgentError::Refused(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => AgentError::Connect(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn read_token(file: &Path) -> Result<Zeroizing<String>, AgentError> {
    let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
        AgentError::Usage(format!(
            "attestation.join_token_file: {}: {e} (needed until the agent has attested)",
            file.display()
        ))
    })?);
    let token = Zeroizing::new(text.trim().to_owned());
    if token.is_empty() {
        return Err(AgentError::Usage(format!(
            "attestation.join_token_file: {} is empty",
            file.display()
        )));
    }
    Ok(token)
}

fn read_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            AgentError::Usage(format!(
                "attestation.x509pop_cert_file: {}: {e}",
                file.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(AgentError::Usage(format!(
            "attestation.x509pop_cert_file: {} holds no certificate",
            file.display()
        )));
    }
    Ok(chain)
}

/// The bytes the x509pop signature covers: SHA-256(context || server nonce || agent nonce ||
/// SHA-256(csr)).
pub fn challenge_digest(server_nonce: &[u8], agent_nonce: &[u8], csr: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(X509POP_CONTEXT.len() + 96);
    msg.extend_from_slice(X509POP_CONTEXT);
    msg.extend_from_slice(server_nonce);
    msg.extend_from_slice(agent_nonce);
    msg.extend_from_slice(digest(&SHA256, csr).as_ref());
    digest(&SHA256, &msg).as_ref().to_vec()
}

fn sign_challenge(
    key_file: &Path,
    server_nonce: &[u8],
    agent_nonce: &[u8],
    csr: &[u8],
) -> Result<Vec<u8>, AgentError> {
    let usage = |e: String| {
        AgentError::Usage(format!(
            "attestation.x509pop_key_file: {}: {e}",
            key_file.display()
        ))
    };
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| usage(e.to_string()))?;
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return Err(usage("expected a PKCS#8 key (BEGIN PRIVATE KEY)".into()));
    };
    let message = challenge_digest(server_nonce, agent_nonce, csr);
    let rng = SystemRandom::new();
    let der = pkcs8.secret_pkcs8_der();
    for alg in [
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &ECDSA_P384_SHA384_ASN1_SIGNING,
    ] {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, der, &rng) {
            return pair
                .sign(&rng, &message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| usage("signing failed".into()));
        }
    }
    let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| usage(format!("unsupported key: {e}")))?;
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut sig)
        .map_err(|_| usage("signing failed".into()))?;
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_comes_from_the_agent_id_only() {
        let td = TrustDomain::new("td").unwrap();
        let ok = SpiffeId::new("spiffe://td/meshtrust/agent/web-1").unwrap();
        assert_eq!(node_of(&ok, &td).unwrap(), "web-1");
        for bad in [
            "spiffe://td/web",
            "spiffe://other/meshtrust/agent/x",
            "spiffe://td/meshtrust/agent/a/b",
        ] {
            let id = SpiffeId::new(bad).unwrap();
            assert!(
                matches!(node_of(&id, &td), Err(AgentError::Refused(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_challenge_binds_both_nonces_and_the_csr() {
        let a = challenge_digest(&[1; 32], &[2; 32], b"csr");
        assert_eq!(a.len(), 32);
        assert_ne!(a, challenge_digest(&[1; 32], &[2; 32], b"other csr"));
        assert_ne!(a, challenge_digest(&[2; 32], &[1; 32], b"csr"));
    }
}
