//! Certificate profiles (X509-SVID §3, §4): the CA certificate and the leaf X509-SVID.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber, SigningKey,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroize as _;

use super::CaError;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{PrivateKey, X509Svid};

/// How far NotBefore is set in the past, for peers whose clocks run a little behind.
pub const BACKDATE: Duration = Duration::from_secs(10);

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Signing("random serial".into()))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and 16 bytes long, never 0
    Ok(SerialNumber::from_slice(&bytes))
}

fn uri_san(id: &SpiffeId) -> Result<SanType, CaError> {
    let uri = rcgen::string::Ia5String::try_from(id.as_str())
        .map_err(|e| CaError::Signing(format!("uri san: {e}")))?;
    Ok(SanType::URI(uri))
}

/// A self-signed CA certificate for `td` (X509-SVID 1.2.4, 1.2.5, 1.2.7, 1.2.9, 1.2.10;
/// SPIFFE-ID 1.1.8): URI SAN `spiffe://<td>`, critical KeyUsage keyCertSign+cRLSign only,
/// critical BasicConstraints cA=true with pathLen 0 (it signs leaves only), no name constraints.
pub(crate) fn new_ca_cert(
    td: &TrustDomain,
    key: &impl SigningKey,
    now: SystemTime,
    ttl: Duration,
) -> Result<(CertificateDer<'static>, SystemTime), CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshtrust");
    dn.push(DnType::CommonName, format!("{td} CA"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![uri_san(&td.to_spiffe_id())?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = (now - BACKDATE).into();
    let not_after = now + ttl;
    params.not_after = not_after.into();
    let cert = params.self_signed(key).map_err(CaError::Rcgen)?;
    Ok((cert.der().clone(), truncate_to_secs(not_after)))
}

/// X.509 times have one-second resolution: what the certificate says.
fn truncate_to_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Issues an X509-SVID for `id` signed by `issuer` (X509-SVID 1.2.1-1.2.3, 1.2.7, 1.2.9,
/// 1.2.11, 1.2.12): exactly one URI SAN, non-empty subject, cA=false (extension present),
/// critical KeyUsage digitalSignature (+keyEncipherment, keyAgreement like SPIRE), EKU
/// serverAuth+clientAuth, random serial, NotBefore back-dated, NotAfter = min(now+ttl, CA
/// NotAfter). The leaf key is a fresh ECDSA P-256 key whatever the CA key type.
pub(crate) fn new_x509_svid(
    issuer: &Issuer<'static, super::key::CaSigningKey>,
    ca_not_after: SystemTime,
    id: &SpiffeId,
    ttl: Duration,
    now: SystemTime,
) -> Result<X509Svid, CaError> {
    if id.path().is_empty() {
        return Err(CaError::NotAWorkloadId(id.clone()));
    }
    let mut key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Rcgen)?;
    let leaf = svid_for_key(issuer, ca_not_after, id, ttl, now, &key);
    let private_key = PrivateKey::from_pkcs8_der(key.serialized_der().to_vec());
    // rcgen's own PKCS#8 copy of the leaf key: wiped before it is freed.
    key.zeroize();
    let leaf = leaf?;
    Ok(X509Svid {
        spiffe_id: id.clone(),
        cert_chain: vec![leaf.cert],
        private_key,
        not_after: leaf.not_after,
        not_before: leaf.not_before,
    })
}

/// A leaf certificate signed for a key held elsewhere (a node agent's CSR).
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Its NotBefore.
    pub not_before: SystemTime,
    /// Its NotAfter.
    pub not_after: SystemTime,
}

/// The X509-SVID profile of [`new_x509_svid`] for `key`, a public key from elsewhere: nothing
/// but the key is taken from the requester.
pub(crate) fn svid_for_key(
    issuer: &Issuer<'static, super::key::CaSigningKey>,
    ca_not_after: SystemTime,
    id: &SpiffeId,
    ttl: Duration,
    now: SystemTime,
    key: &impl rcgen::PublicKeyData,
) -> Result<SignedLeaf, CaError> {
    if id.path().is_empty() {
        return Err(CaError::NotAWorkloadId(id.clone()));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshtrust");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![uri_san(id)?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let not_before = truncate_to_secs(now - BACKDATE);
    let not_after = truncate_to_secs((now + ttl).min(ca_not_after));
    if not_after <= now {
        return Err(CaError::Expired);
    }
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.signed_by(key, issuer).map_err(CaError::Rcgen)?;
    Ok(SignedLeaf {
        cert: cert.der().clone(),
        not_before,
        not_after,
    })
}
