//! x509pop node attestation: the agent proves possession of a node certificate that chains to
//! `[node_attestation] x509pop_ca_file`, by signing a challenge, not just by showing the
//! certificate.
//!
//! 1. The agent sends its chain (leaf first), 32 random bytes (`agent_nonce`) and the CSR for
//!    its agent SVID key. The chain is verified against the roots in the file (read at every
//!    attestation, so replacing the file takes effect at once), at the server's time: expired
//!    or foreign certificates are refused here. The node name is the leaf's subject CN, else its
//!    first DNS SAN, and must be one SPIFFE ID path segment.
//! 2. The server answers 32 random bytes (`x509pop_challenge`).
//! 3. The agent signs [`challenge_digest`] with the node certificate's key; the server verifies
//!    it with the leaf's public key (ECDSA P-256/P-384, Ed25519, RSA PKCS#1 v1.5 / PSS with
//!    SHA-256). The digest binds both nonces and the CSR, so a signature cannot be replayed for
//!    another challenge or another agent key.

use std::sync::Arc;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::attest::next;
use super::core::AgentSvid;
use super::peer::AgentPeer;
use super::proto::attest_request::Step;
use super::proto::{self, AttestResponse, attest_response};
use super::service::{Shared, status_of};
use crate::bundle::pem::parse_certs_pem;
use crate::metrics::agents::AgentRefusal;
use crate::node::{csr, validate_node_name};

/// The domain separation prefix of the signed digest.
pub const CONTEXT: &[u8] = b"meshtrust x509pop v1";
/// Length of both nonces.
pub const NONCE_LEN: usize = 32;
/// At most this many certificates in the chain.
pub const MAX_CHAIN: usize = 8;

/// What the agent signs with its node key: `SHA-256(CONTEXT || server_nonce || agent_nonce ||
/// SHA-256(csr))`, the 32-byte digest itself being the signed message (the signature scheme
/// hashes it again, as every ring/rustls signer does).
pub fn challenge_digest(server_nonce: &[u8], agent_nonce: &[u8], csr_der: &[u8]) -> [u8; 32] {
    let csr_hash = digest(&SHA256, csr_der);
    let mut msg = Vec::with_capacity(CONTEXT.len() + 2 * NONCE_LEN + 32);
    msg.extend_from_slice(CONTEXT);
    msg.extend_from_slice(server_nonce);
    msg.extend_from_slice(agent_nonce);
    msg.extend_from_slice(csr_hash.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &msg).as_ref());
    out
}

/// The node name a node certificate names: its CN, else its first DNS SAN.
///
/// # Errors
/// Why none is usable.
pub fn node_name(leaf: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let dns = || {
        cert.subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
            })
    };
    let name = cn
        .or_else(dns)
        .ok_or("node certificate has neither a CN nor a DNS SAN")?;
    validate_node_name(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

/// Verifies `chain` against `roots_pem` at `now`.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots_pem: &[u8],
    now: UnixTime,
) -> Result<(), String> {
    let roots = parse_certs_pem(roots_pem).map_err(|e| format!("x509pop_ca_file: {e}"))?;
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| format!("x509pop_ca_file: {e}"))?;
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| format!("node certificate: {e}"))
}

/// Verifies `sig` over `message` with the leaf's public key.
fn verify_signature(leaf: &[u8], message: &[u8], sig: &[u8]) -> Result<(), String> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let spki = cert.public_key().subject_public_key.data.as_ref();
    let algorithms: [&dyn VerificationAlgorithm; 6] = [
        &signature::ECDSA_P256_SHA256_ASN1,
        &signature::ECDSA_P384_SHA384_ASN1,
        &signature::ED25519,
        &signature::RSA_PKCS1_2048_8192_SHA256,
        &signature::RSA_PSS_2048_8192_SHA256,
        &signature::ECDSA_P256_SHA256_FIXED,
    ];
    let ok = algorithms.iter().any(|alg| {
        UnparsedPublicKey::new(*alg, spki)
            .verify(message, sig)
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the challenge signature does not verify with the node certificate's key".to_owned())
    }
}

/// Steps 1 to 3 (the first message is `chain` and `csr_der`); the SVID on success.
pub(super) async fn run(
    shared: &Shared,
    peer: &AgentPeer,
    chain: proto::X509PopChain,
    csr_der: Vec<u8>,
    inbound: &mut Streaming<proto::AttestRequest>,
    tx: &mpsc::Sender<Result<AttestResponse, Status>>,
) -> Result<AgentSvid, Status> {
    let core = &shared.core;
    let what = "x509pop attestation";
    let refuse = |node: &str, why: AgentRefusal, e: String| {
        core.record_refusal(node, what, why, &format_args!("{e} (from {})", peer.addr));
        Status::permission_denied(e)
    };
    let Some(ca_file) = core.attestation.x509pop_ca_file.clone() else {
        return Err(refuse(
            "?",
            AgentRefusal::MethodDisabled,
            "x509pop attestation is not configured on this server".to_owned(),
        ));
    };
    if chain.agent_nonce.len() != NONCE_LEN || chain.cert_chain.is_empty() {
        return Err(shared.bad_request(
            "?",
            what,
            "agent_nonce must be 32 bytes and the chain non-empty",
        ));
    }
    if chain.cert_chain.len() > MAX_CHAIN {
        return Err(shared.bad_request("?", what, "certificate chain too long"));
    }
    if let Err(e) = csr::verify(&csr_der) {
        return Err(status_of(&core.logged("?", what, e.into())));
    }
    let certs: Vec<CertificateDer<'static>> = chain
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let node = node_name(&certs[0]).map_err(|e| refuse("?", AgentRefusal::X509Pop, e))?;
    let roots = tokio::fs::read(&ca_file).await.map_err(|e| {
        tracing::error!(path = %ca_file.display(), error = %e, "x509pop_ca_file unreadable");
        Status::unavailable("x509pop roots unavailable")
    })?;
    let now = core.nodes.clock.now();
    let now = UnixTime::since_unix_epoch(
        now.duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verify_chain(&certs, &roots, now).map_err(|e| refuse(&node, AgentRefusal::X509Pop, e))?;

    let mut server_nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut server_nonce)
        .map_err(|_| Status::internal("no randomness"))?;
    let challenge = AttestResponse {
        step: Some(attest_response::Step::X509popChallenge(
            server_nonce.to_vec(),
        )),
    };
    tx.send(Ok(challenge))
        .await
        .map_err(|_| Status::cancelled("agent gone"))?;
    let answer = next(shared, peer, inbound).await?;
    let Some(Step::X509popSignature(sig)) = answer.step else {
        return Err(shared.bad_request(&node, what, "expected x509pop_signature"));
    };
    let message = challenge_digest(&server_nonce, &chain.agent_nonce, &csr_der);
    verify_signature(&certs[0], &message, &sig)
        .map_err(|e| refuse(&node, AgentRefusal::X509Pop, e))?;
    core.attest_x509pop(&node, &csr_der)
        .map_err(|e| status_of(&e))
}
