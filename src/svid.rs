//! X509-SVIDs as issued to workloads: the certificate chain and its private key.

use std::fmt;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::spiffe_id::SpiffeId;

/// An X509-SVID with its private key.
///
/// The key is PKCS#8 DER, zeroized on drop and never printed by `Debug`.
#[derive(Clone)]
pub struct X509Svid {
    /// The identity in the leaf's URI SAN.
    pub spiffe_id: SpiffeId,
    /// Leaf first; our CAs are roots, so this is the leaf alone.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER private key of the leaf.
    pub private_key: PrivateKey,
    /// The leaf's NotAfter.
    pub not_after: SystemTime,
    /// The leaf's NotBefore.
    pub not_before: SystemTime,
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("certs", &self.cert_chain.len())
            .field("private_key", &self.private_key)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A PKCS#8 DER private key: zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct PrivateKey(Zeroizing<Vec<u8>>);

impl PrivateKey {
    /// Takes ownership of PKCS#8 DER bytes.
    pub fn from_pkcs8_der(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    /// The PKCS#8 DER bytes. Every caller keeps the copy it makes zeroized too.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0
    }

    /// PEM (`BEGIN PRIVATE KEY`), zeroized on drop.
    pub fn to_pem(&self) -> Zeroizing<String> {
        use base64::Engine as _;
        const BEGIN: &str = "-----BEGIN PRIVATE KEY-----\n";
        const END: &str = "-----END PRIVATE KEY-----\n";
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*self.0));
        // Exactly the final length: a String that grows reallocates and frees its old buffer
        // without zeroizing it.
        let capacity = BEGIN.len() + b64.len() + b64.len().div_ceil(64) + END.len();
        let mut pem = Zeroizing::new(String::with_capacity(capacity));
        pem.push_str(BEGIN);
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str(END);
        debug_assert_eq!(pem.len(), capacity);
        pem
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted {} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::PrivateKey;

    #[test]
    fn the_pem_form_is_built_in_one_buffer_of_its_exact_size() {
        // P-256 and RSA-2048 PKCS#8 sizes, and the 64-column edge cases.
        for len in [138, 1217, 1218, 48, 47, 1] {
            let pem = PrivateKey::from_pkcs8_der(vec![7; len]).to_pem();
            assert_eq!(pem.capacity(), pem.len(), "{len}-byte key");
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert!(pem.ends_with("\n-----END PRIVATE KEY-----\n"));
        }
    }
}
