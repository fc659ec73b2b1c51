//! The CSRs a node agent sends. Keys stay on the node: the agent generates each key and sends
//! a CSR; the server verifies the CSR's signature with the CSR's own key (proof that the agent
//! holds it), takes the public key and the one requested SPIFFE ID, and nothing else (subject,
//! key usages, extensions are the server's own profile). A workload ID is granted only when
//! one of the requesting node's entries names it: a compromised agent gets nothing beyond its
//! own node's identities.

use rcgen::{CertificateSigningRequestParams, PublicKey, SanType};
use rustls_pki_types::CertificateSigningRequestDer;

use super::NodeError;
use crate::config::EntryConfig;
use crate::spiffe_id::SpiffeId;

/// The largest CSR accepted (an RSA-8192 CSR is under 2 KiB).
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// A CSR whose signature verified: its key and what it asks for.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The public key to certify (the only thing taken into the certificate).
    pub public_key: PublicKey,
    /// The URI SAN it asks for, when it has exactly one that is a SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
}

/// Parses `der` and verifies its signature.
///
/// # Errors
/// [`NodeError::BadCsr`]: too long, not a CSR, a bad signature, an unsupported extension,
/// more than one URI SAN or a URI SAN that is no SPIFFE ID.
pub fn verify(der: &[u8]) -> Result<CheckedCsr, NodeError> {
    if der.len() > MAX_CSR_LEN {
        return Err(NodeError::BadCsr(format!(
            "{} bytes; at most {MAX_CSR_LEN}",
            der.len()
        )));
    }
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
        .map_err(|e| NodeError::BadCsr(e.to_string()))?;
    let uris: Vec<&str> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str()),
            _ => None,
        })
        .collect();
    let spiffe_id = match uris.as_slice() {
        [] => None,
        [one] => Some(
            SpiffeId::new(one).map_err(|e| NodeError::BadCsr(format!("uri san {one:?}: {e}")))?,
        ),
        _ => return Err(NodeError::BadCsr("more than one uri san".to_owned())),
    };
    Ok(CheckedCsr {
        public_key: csr.public_key,
        spiffe_id,
    })
}

/// A workload CSR from the agent of `node`: verified, and its SPIFFE ID named by one of the
/// entries that node serves.
///
/// # Errors
/// [`NodeError::BadCsr`] (see [`verify`], or no SPIFFE ID), [`NodeError::NotEntitled`].
pub fn check_workload_csr(
    der: &[u8],
    node: &str,
    entries: &[EntryConfig],
) -> Result<(SpiffeId, PublicKey), NodeError> {
    let csr = verify(der)?;
    let id = csr
        .spiffe_id
        .ok_or_else(|| NodeError::BadCsr("no spiffe id uri san".to_owned()))?;
    if !entries.iter().any(|e| e.on_node(node) && e.spiffe_id == id) {
        return Err(NodeError::NotEntitled {
            id: id.to_string(),
            node: node.to_owned(),
        });
    }
    Ok((id, csr.public_key))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

    use super::*;
    use crate::config::{FederatesWith, NodeScope};

    fn csr_for(uris: &[&str], key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.serialize_request(key).unwrap().der().to_vec()
    }

    fn entry(id: &str, node: Option<NodeScope>) -> EntryConfig {
        EntryConfig {
            spiffe_id: SpiffeId::new(id).unwrap(),
            selectors: vec!["unix:uid:1000".parse().unwrap()],
            federates_with: FederatesWith::Only(vec![]),
            hint: None,
            node,
        }
    }

    fn entries() -> Vec<EntryConfig> {
        vec![
            entry("spiffe://td/web", Some(NodeScope::Node("web-1".into()))),
            entry("spiffe://td/db", Some(NodeScope::Node("db-1".into()))),
            entry("spiffe://td/log", Some(NodeScope::All)),
            entry("spiffe://td/local", None),
        ]
    }

    #[test]
    fn a_node_gets_its_own_and_every_node_entries_only() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        for (id, ok) in [
            ("spiffe://td/web", true),
            ("spiffe://td/log", true),
            ("spiffe://td/db", false),
            ("spiffe://td/local", false),
            ("spiffe://td/unknown", false),
        ] {
            let got = check_workload_csr(&csr_for(&[id], &key), "web-1", &entries());
            match got {
                Ok((got_id, public)) => {
                    assert!(ok, "{id} granted");
                    assert_eq!(got_id.as_str(), id);
                    assert_eq!(
                        rcgen::PublicKeyData::der_bytes(&public),
                        rcgen::PublicKeyData::der_bytes(&key),
                        "the CSR's key"
                    );
                }
                Err(e) => {
                    assert!(!ok, "{id} refused: {e}");
                    assert_eq!(
                        e,
                        NodeError::NotEntitled {
                            id: id.to_owned(),
                            node: "web-1".to_owned()
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn a_csr_with_a_bad_signature_is_refused() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_for(&["spiffe://td/web"], &key);
        let last = der.len() - 1;
        der[last] ^= 0x01; // inside the signature
        let err = check_workload_csr(&der, "web-1", &entries()).unwrap_err();
        assert!(
            matches!(&err, NodeError::BadCsr(why) if why.contains("signature")),
            "{err}"
        );
    }

    #[test]
    fn garbage_several_uris_or_no_spiffe_id_are_refused() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let bad = |der: &[u8]| check_workload_csr(der, "web-1", &entries()).unwrap_err();
        assert!(matches!(bad(b"not a csr"), NodeError::BadCsr(_)));
        assert!(
            matches!(bad(&vec![0u8; MAX_CSR_LEN + 1]), NodeError::BadCsr(w) if w.contains("at most"))
        );
        let two = csr_for(&["spiffe://td/web", "spiffe://td/log"], &key);
        assert!(matches!(bad(&two), NodeError::BadCsr(w) if w.contains("more than one")));
        let none = csr_for(&[], &key);
        assert!(matches!(bad(&none), NodeError::BadCsr(w) if w.contains("no spiffe id")));
        let http = csr_for(&["https://td/web"], &key);
        assert!(matches!(bad(&http), NodeError::BadCsr(w) if w.contains("uri san")));
    }

    #[test]
    fn the_ca_certifies_only_the_csr_key_under_its_own_profile() {
        use std::sync::Arc;
        use std::time::{Duration, SystemTime};

        use crate::ca::{Ca, CaPolicy, KeyType};
        use crate::clock::SystemClock;
        use crate::spiffe_id::TrustDomain;
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::store::sqlite::SqliteStorage::open(dir.path()).unwrap());
        let policy = CaPolicy {
            key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(86_400),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            refresh_hint: Duration::from_secs(300),
        };
        let td = TrustDomain::new("td").unwrap();
        let ca = Ca::open(td, policy, Arc::new(SystemClock), storage).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI("spiffe://td/web".try_into().unwrap())];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        let (id, public) = check_workload_csr(&der, "web-1", &entries()).unwrap();
        let snap = ca.snapshot();
        let leaf = snap
            .sign_x509_svid_for_key(&id, &public, SystemTime::now())
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert).unwrap();
        let spk = &cert.public_key().subject_public_key.data;
        assert_eq!(spk.as_ref(), rcgen::PublicKeyData::der_bytes(&key));
        assert!(
            !cert.is_ca(),
            "the CSR asked for cA=true; the profile is the server's"
        );
        let (_, ca_cert) =
            x509_parser::parse_x509_certificate(&snap.active().unwrap().cert).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }
}
