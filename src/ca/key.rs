//! CA and JWT signing keys: generation, PKCS#8 storage form, redacted `Debug`.

use std::fmt;

use rcgen::{
    KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, PublicKeyData,
    SignatureAlgorithm, SigningKey,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use zeroize::Zeroize as _;

use super::CaError;
use crate::bundle::{EcCurve, JwtPublicKey};
use crate::svid::PrivateKey;

/// The CA key algorithm (`[ca] key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (default).
    #[default]
    EcP256,
    /// ECDSA P-384 with SHA-384.
    EcP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
}

impl KeyType {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
        }
    }

    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcP256 => &PKCS_ECDSA_P256_SHA256,
            Self::EcP384 => &PKCS_ECDSA_P384_SHA384,
            Self::Rsa2048 => &PKCS_RSA_SHA256,
        }
    }
}

/// Generates a CA key of the given type, returned as PKCS#8 DER.
///
/// ring cannot generate RSA keys, so RSA keys come from the pure-Rust `rsa` crate and are then
/// used (loaded from PKCS#8) by ring for signing.
pub(crate) fn generate_ca_key(key_type: KeyType) -> Result<PrivateKey, CaError> {
    match key_type {
        KeyType::EcP256 | KeyType::EcP384 => {
            let mut kp = KeyPair::generate_for(key_type.algorithm()).map_err(CaError::Rcgen)?;
            let key = PrivateKey::from_pkcs8_der(kp.serialized_der().to_vec());
            // rcgen keeps its own PKCS#8 copy inside `kp`: wipe it before it is freed.
            kp.zeroize();
            Ok(key)
        }
        KeyType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
                .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
            let doc = key
                .to_pkcs8_der()
                .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
            Ok(PrivateKey::from_pkcs8_der(doc.as_bytes().to_vec()))
        }
    }
}

/// An rcgen key pair whose PKCS#8 copy (rcgen keeps one beside the signing key) is zeroized
/// when it is dropped: the CA key as the issuer holds it for the authority's whole life.
pub(crate) struct CaSigningKey(KeyPair);

impl PublicKeyData for CaSigningKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PublicKeyData::algorithm(&self.0)
    }
}

impl SigningKey for CaSigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

impl Drop for CaSigningKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for CaSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CaSigningKey(<redacted>)")
    }
}

/// Loads a stored CA key for signing with rcgen.
pub(crate) fn load_ca_key(key: &PrivateKey, key_type: KeyType) -> Result<CaSigningKey, CaError> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(key.pkcs8_der());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, key_type.algorithm())
        .map(CaSigningKey)
        .map_err(CaError::Rcgen)
}

/// Finds the key type of a stored PKCS#8 key by trying each algorithm.
pub(crate) fn detect_key_type(key: &PrivateKey) -> Result<KeyType, CaError> {
    [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048]
        .into_iter()
        .find(|kt| load_ca_key(key, *kt).is_ok())
        .ok_or_else(|| CaError::Corrupt("CA key is not a supported PKCS#8 key".into()))
}

/// An ES256 JWT-SVID signing key with its `kid`.
pub struct JwtSigningKey {
    /// The key ID published in the bundle and set in every token header.
    pub kid: String,
    pkcs8: PrivateKey,
    pair: EcdsaKeyPair,
}

impl JwtSigningKey {
    /// A new random key with a random `kid`.
    pub(crate) fn generate() -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| CaError::KeyGeneration("ecdsa p-256".into()))?;
        let mut kid = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut kid)
            .map_err(|_| CaError::KeyGeneration("random kid".into()))?;
        use base64::Engine as _;
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kid);
        Self::load(kid, PrivateKey::from_pkcs8_der(doc.as_ref().to_vec()))
    }

    /// Loads a stored key.
    pub(crate) fn load(kid: String, pkcs8: PrivateKey) -> Result<Self, CaError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.pkcs8_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| CaError::Corrupt(format!("JWT key: {e}")))?;
        Ok(Self { kid, pkcs8, pair })
    }

    /// The PKCS#8 form, for storage.
    pub fn pkcs8(&self) -> &PrivateKey {
        &self.pkcs8
    }

    /// The public key as published in the bundle.
    pub fn public_key(&self) -> JwtPublicKey {
        // Uncompressed point: 0x04 || x || y.
        let point = self.pair.public_key().as_ref();
        JwtPublicKey::Ec {
            crv: EcCurve::P256,
            x: point[1..33].to_vec(),
            y: point[33..65].to_vec(),
        }
    }

    /// Signs `message` (ES256, fixed-size r||s).
    ///
    /// # Errors
    /// [`CaError::Signing`] if ring fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| CaError::Signing("jwt".into()))
    }
}

impl fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigningKey")
            .field("kid", &self.kid)
            .field("key", &self.pkcs8)
            .finish()
    }
}
