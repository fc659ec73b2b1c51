//! x509pop from the agent's side: a node CA (`[node_attestation] x509pop_ca_file`), node
//! certificates it signs, and the challenge-response of the Attest stream, signed with the node
//! key (or, for the attacker's case, another one).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;

use meshtrust::agent_api::proto::{
    AgentSvid, AttestRequest, AttestResponse, attest_request, attest_response,
};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::CertificateDer;

use super::agent::{Client, Identity, csr, new_key};

/// A node certificate authority for x509pop (`[node_attestation] x509pop_ca_file`).
pub struct NodeCa {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl NodeCa {
    /// A new self-signed CA.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// Its PEM, for the server's x509pop_ca_file.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A node certificate with subject CN `cn`, valid from `not_before` to `not_after`: its
    /// DER and key.
    pub fn node_cert(
        &self,
        cn: &str,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> (CertificateDer<'static>, Arc<KeyPair>) {
        let key = new_key();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = rcgen::Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        let cert = params.signed_by(&*key, &issuer).unwrap();
        (cert.der().clone(), key)
    }
}

/// Signs `message` with the P-256 `key` (ASN.1 ECDSA, SHA-256), as an agent's node key does.
pub fn sign_p256(key: &KeyPair, message: &[u8]) -> Vec<u8> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der(), &rng)
            .unwrap();
    pair.sign(&rng, message).unwrap().as_ref().to_vec()
}

/// x509pop attestation with `chain` (leaf first), answering the challenge with a signature by
/// `signer` (the node key, or another one for the attacker's case): the identity to call with.
pub async fn attest_x509pop(
    client: &mut Client,
    chain: &[CertificateDer<'static>],
    signer: &KeyPair,
) -> Result<(Identity, AgentSvid), tonic::Status> {
    use meshtrust::agent_api::proto::X509PopChain;
    let key = new_key();
    let csr_der = csr(&key, None);
    let agent_nonce = [7u8; 32].to_vec();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(AttestRequest {
        step: Some(attest_request::Step::X509popChain(X509PopChain {
            cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
            agent_nonce: agent_nonce.clone(),
        })),
        csr: csr_der.clone(),
    })
    .await
    .unwrap();
    let mut answers = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let next = |m: Result<Option<AttestResponse>, tonic::Status>| match m {
        Ok(Some(a)) => Ok(a.step),
        Ok(None) => Err(tonic::Status::unknown("attest stream ended")),
        Err(s) => Err(s),
    };
    let Some(attest_response::Step::X509popChallenge(challenge)) =
        next(super::guard(answers.message()).await)?
    else {
        panic!("expected a challenge");
    };
    let digest =
        meshtrust::agent_api::x509pop::challenge_digest(&challenge, &agent_nonce, &csr_der);
    tx.send(AttestRequest {
        step: Some(attest_request::Step::X509popSignature(sign_p256(
            signer, &digest,
        ))),
        csr: Vec::new(),
    })
    .await
    .unwrap();
    let Some(attest_response::Step::Svid(svid)) = next(super::guard(answers.message()).await)?
    else {
        panic!("expected an svid");
    };
    Ok((Identity::of(&svid, key), svid))
}
