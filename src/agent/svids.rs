//! Keys and certificates on the node: a new P-256 key and CSR for every SVID (agent or
//! workload; keys never leave the node), the SVID rebuilt from the server's chain, and the
//! jittered renewal time (around half life, spread so a thousand nodes do not renew at once).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer as _;
use zeroize::Zeroizing;

use super::AgentError;
use crate::spiffe_id::SpiffeId;
use crate::svid::{PrivateKey, X509Svid};

/// A fresh key and a CSR for it (asking for `id` when given; an agent CSR names nothing, the
/// server names the agent).
///
/// # Errors
/// [`AgentError::Key`] when key generation or signing fails.
pub fn key_and_csr(id: Option<&SpiffeId>) -> Result<(PrivateKey, Vec<u8>), AgentError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    if let Some(id) = id {
        let uri = id
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| AgentError::Key(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AgentError::Key(e.to_string()))?
        .der()
        .to_vec();
    let pkcs8 = Zeroizing::new(key.serialize_der());
    Ok((PrivateKey::from_pkcs8_der(pkcs8.to_vec()), csr))
}

/// The SVID made of the server's `chain` (leaf first) and our `key`, checked to name `id`.
///
/// # Errors
/// [`AgentError::BadSvid`] when the chain is empty, does not parse or names another ID.
pub fn svid_from_chain(
    id: &SpiffeId,
    chain: Vec<Vec<u8>>,
    key: PrivateKey,
) -> Result<X509Svid, AgentError> {
    let leaf = chain
        .first()
        .ok_or_else(|| AgentError::BadSvid(format!("{id}: empty chain")))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| AgentError::BadSvid(format!("{id}: {e}")))?;
    crate::federation::verifier::check_leaf(leaf, id)
        .map_err(|e| AgentError::BadSvid(e.to_string()))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let not_before = at(cert.validity().not_before.timestamp());
    let not_after = at(cert.validity().not_after.timestamp());
    Ok(X509Svid {
        spiffe_id: id.clone(),
        cert_chain: chain.into_iter().map(CertificateDer::from).collect(),
        private_key: key,
        not_after,
        not_before,
    })
}

/// When to renew an SVID valid from `not_before` to `not_after`: between 45 % and 55 % of its
/// lifetime (uniform), so renewals of many nodes spread instead of meeting.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life.mul_f64(0.45 + 0.10 * unit_random())
}

/// A uniform number in [0, 1) from the OS generator.
pub fn unit_random() -> f64 {
    use rand_core::RngCore as _;
    // 53 random bits: every f64 step in [0, 1).
    (rand_core::OsRng.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
}

/// A uniform duration in [0, `max`).
pub fn jitter(max: Duration) -> Duration {
    max.mul_f64(unit_random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_around_half_life_and_spreads() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(3600);
        let times: Vec<SystemTime> = (0..200).map(|_| renewal_time(start, end)).collect();
        for t in &times {
            let at = t.duration_since(start).unwrap().as_secs_f64();
            assert!((1620.0..=1980.0).contains(&at), "{at}");
        }
        let first = times[0];
        assert!(
            times.iter().any(|t| *t != first),
            "jittered, not one instant"
        );
    }

    #[test]
    fn a_csr_names_the_workload_id_and_verifies() {
        let id = SpiffeId::new("spiffe://td/web").unwrap();
        let (key, csr) = key_and_csr(Some(&id)).unwrap();
        let checked = crate::node::csr::verify(&csr).unwrap();
        assert_eq!(checked.spiffe_id, Some(id));
        assert!(!key.pkcs8_der().is_empty());
        let (_, agent_csr) = key_and_csr(None).unwrap();
        assert_eq!(
            crate::node::csr::verify(&agent_csr).unwrap().spiffe_id,
            None
        );
    }
}
