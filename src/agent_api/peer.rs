//! Who is calling: the connection's address and TLS client certificate (put on every request
//! by the listener), and the per-RPC check every call but Attest passes: a certificate was
//! presented (it chained to our authorities at the handshake), it is still within its validity,
//! it names exactly `spiffe://<td>/meshtrust/agent/<node>` and it is an SVID the registry
//! accepts for that node (attested, not evicted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ring::digest::{SHA256, digest};
use rustls::pki_types::{CertificateDer, UnixTime};

use super::registry::{AgentRegistry, Session};
use super::tls::verify_client_chain;
use crate::ca::CaSnapshot;
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
    /// The certificate no longer chains to our authorities in force.
    #[error("agent svid does not chain to our current bundle: {0}")]
    Untrusted(String),
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
    /// When the SVID it called with expires (a Sync stream ends then).
    pub not_after: SystemTime,
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
    ca: &CaSnapshot,
    registry: &AgentRegistry,
    now: SystemTime,
) -> Result<Authorized, PeerError> {
    let leaf = peer.leaf.as_ref().ok_or(PeerError::NoCertificate)?;
    let node = node_of(leaf, &ca.trust_domain)?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| {
            let secs = u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0);
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        })
        .map_err(|e| PeerError::NotAnAgent(e.to_string()))?;
    let unix = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    if !valid_at(leaf, unix) {
        return Err(PeerError::Expired);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    verify_client_chain(leaf, &[], &ca.bundle.x509_authorities, &provider, unix)
        .map_err(|e| PeerError::Untrusted(e.to_string()))?;
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
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

    use super::*;
    use crate::ca::{Ca, CaPolicy, KeyType};
    use crate::clock::SystemClock;
    use crate::store::AgentRecord;

    fn ca(dir: &std::path::Path) -> Ca {
        let storage = Arc::new(crate::store::sqlite::SqliteStorage::open(dir).unwrap());
        let policy = CaPolicy {
            key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(86_400),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            refresh_hint: Duration::from_secs(300),
        };
        Ca::open(
            TrustDomain::new("td").unwrap(),
            policy,
            Arc::new(SystemClock),
            storage,
        )
        .unwrap()
    }

    fn svid(ca: &Ca, id: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let public = crate::node::csr::verify(&csr).unwrap().public_key;
        let id = SpiffeId::new(id).unwrap();
        ca.snapshot()
            .sign_x509_svid_for_key(&id, &public, SystemTime::now())
            .unwrap()
            .cert
    }

    fn peer(leaf: CertificateDer<'static>) -> AgentPeer {
        AgentPeer {
            addr: "127.0.0.1:1".parse().unwrap(),
            leaf: Some(leaf),
        }
    }

    #[test]
    fn only_a_current_agent_svid_of_our_ca_authorizes() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ours, theirs) = (ca(d1.path()), ca(d2.path()));
        let snap = ours.snapshot();
        let registry = AgentRegistry::default();
        let now = SystemTime::now();
        let good = svid(&ours, "spiffe://td/meshtrust/agent/web-1");
        registry
            .attested(AgentRecord {
                node: "web-1".into(),
                spiffe_id: "spiffe://td/meshtrust/agent/web-1".into(),
                method: "join_token".into(),
                address: "127.0.0.1:1".into(),
                attested_at: now,
                last_sync: None,
                svid_expires_at: now + Duration::from_secs(3600),
                evicted: false,
                svid_sha256: Some(cert_sha256(&good)),
                previous_svid_sha256: None,
            })
            .unwrap();
        let ok = authorize(&peer(good.clone()), &snap, &registry, now).unwrap();
        assert_eq!(ok.session.node, "web-1");

        // Same name, another CA (same trust domain name): does not chain.
        let forged = svid(&theirs, "spiffe://td/meshtrust/agent/web-1");
        let e = authorize(&peer(forged), &snap, &registry, now).unwrap_err();
        assert!(matches!(e, PeerError::Untrusted(_)), "{e}");
        // Ours, but never attested (or from before the last attestation).
        let other = svid(&ours, "spiffe://td/meshtrust/agent/web-1");
        let e = authorize(&peer(other), &snap, &registry, now).unwrap_err();
        assert_eq!(e, PeerError::Unknown("web-1".into()));
        // A workload SVID is no agent's.
        let workload = svid(&ours, "spiffe://td/web");
        let e = authorize(&peer(workload), &snap, &registry, now).unwrap_err();
        assert!(matches!(e, PeerError::NotAnAgent(_)), "{e}");
        // Expired by now.
        let later = now + Duration::from_secs(7200);
        let e = authorize(&peer(good.clone()), &snap, &registry, later).unwrap_err();
        assert_eq!(e, PeerError::Expired);
        // No certificate at all.
        let none = AgentPeer {
            addr: "127.0.0.1:1".parse().unwrap(),
            leaf: None,
        };
        let e = authorize(&none, &snap, &registry, now).unwrap_err();
        assert_eq!(e, PeerError::NoCertificate);
        // Evicted.
        registry.evict("web-1").unwrap();
        let e = authorize(&peer(good), &snap, &registry, now).unwrap_err();
        assert_eq!(e, PeerError::Evicted("web-1".into()));
    }
}
