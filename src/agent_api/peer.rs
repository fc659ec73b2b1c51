//! Who is calling: the connection's address and TLS client certificate (put on every request
//! by the listener), and the per-RPC check every call but Attest passes: a certificate was
//! presented (it chained to our authorities at the handshake), it is still within its validity,
//! it names exactly `spiffe://<td>/meshtrust/agent/<node>` and it is an SVID the registry
//! accepts for that node (attested, not evicted).

use std::net::SocketAddr;
use std::time::SystemTime;

use ring::digest::{SHA256, digest};
use rustls::pki_types::{CertificateDer, UnixTime};

use super::registry::{AgentRegistry, Session};
use crate::federation::verifier::{SvidError, check_leaf, valid_at};
use crate::node::agent_id;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// What the listener knows about a connection, on every request's extensions.
#[derive(Debug, Clone)]
pub struct AgentPeer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The TLS client certificate (leaf), if one was presented.
    pub leaf: Option<CertificateDer<'static>>,
}

/// Why a call was not authorized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    /// No client certificate on the connection.
    #[error("no client certificate: attest first, then call with the agent svid")]
    NoCertificate,
    /// The certificate is no agent SVID of ours.
    #[error("client certificate is not an agent svid of this trust domain: {0}")]
    NotAnAgent(String),
    /// The certificate expired since the handshake.
    #[error("agent svid expired")]
    Expired,
    /// The node is evicted.
    #[error("agent of node {0:?} is evicted: attest again with a new token")]
    Evicted(String),
    /// Not an SVID issued since the node's last attestation.
    #[error("agent svid of node {0:?} is not current: attest again")]
    Unknown(String),
}

/// An authorized caller.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Its session (node name, ended on eviction).
    pub session: Session,
    /// SHA-256 of the SVID it called with.
    pub svid_sha256: [u8; 32],
    /// Its address.
    pub addr: SocketAddr,
}

/// SHA-256 of a certificate.
pub fn cert_sha256(cert: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, cert).as_ref());
    out
}

/// The node an agent SVID names: its one URI SAN must be `spiffe://<td>/meshtrust/agent/<n>`.
///
/// # Errors
/// [`PeerError::NotAnAgent`].
pub fn node_of(leaf: &[u8], td: &TrustDomain) -> Result<String, PeerError> {
    let not = |e: SvidError| PeerError::NotAnAgent(e.to_string());
    let prefix = format!("spiffe://{td}/meshtrust/agent/");
    // check_leaf wants the exact ID: find it first, then check the whole profile against it.
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| PeerError::NotAnAgent(e.to_string()))?;
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
        })
        .ok_or_else(|| PeerError::NotAnAgent("no uri san".to_owned()))?;
    let node = uri
        .strip_prefix(&prefix)
        .ok_or_else(|| PeerError::NotAnAgent(format!("{uri} is not under {prefix}")))?;
    let expected: SpiffeId =
        agent_id(td, node).map_err(|e| PeerError::NotAnAgent(e.to_string()))?;
    check_leaf(leaf, &expected).map_err(not)?;
    Ok(node.to_owned())
}

/// Authorizes a call from `peer`.
///
/// # Errors
/// [`PeerError`].
pub fn authorize(
    peer: &AgentPeer,
    td: &TrustDomain,
    registry: &AgentRegistry,
    now: SystemTime,
) -> Result<Authorized, PeerError> {
    let leaf = peer.leaf.as_ref().ok_or(PeerError::NoCertificate)?;
    let node = node_of(leaf, td)?;
    if !valid_at(
        leaf,
        UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        ),
    ) {
        return Err(PeerError::Expired);
    }
    if registry.is_evicted(&node) {
        return Err(PeerError::Evicted(node));
    }
    let svid_sha256 = cert_sha256(leaf);
    let session = registry
        .session(&node, &svid_sha256)
        .ok_or(PeerError::Unknown(node))?;
    Ok(Authorized {
        session,
        svid_sha256,
        addr: peer.addr,
    })
}
