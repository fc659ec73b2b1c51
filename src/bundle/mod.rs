//! Trust bundles: the authorities of one trust domain (SPIFFE Trust Domain and Bundle §3, §4).
//!
//! A [`TrustBundle`] is always kept together with its trust domain name and never merged with
//! another trust domain's bundle (SPIFFE.md 1.4.1, 1.5.5). The JSON form (a JWK Set with
//! `spiffe_sequence` and `spiffe_refresh_hint`) lives in [`jwks`]; PEM in [`pem`].

use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::spiffe_id::TrustDomain;

mod jwk;
pub mod jwks;
pub mod pem;
pub mod summary;
#[cfg(test)]
mod test_support;

/// The authorities of one trust domain, as published or as pinned from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    /// The trust domain these authorities speak for: the configured name, never the URL's host.
    pub trust_domain: TrustDomain,
    /// X.509 CA certificates (`use: x509-svid`), DER, in publication order.
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// JWT-SVID signing keys (`use: jwt-svid`).
    pub jwt_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence`: rises on every content change of the publisher's bundle.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`: how often consumers should poll, whole seconds on the wire.
    pub refresh_hint: Option<Duration>,
}

impl TrustBundle {
    /// An empty bundle (no authorities): for a peer, this means everything was revoked.
    pub fn empty(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: None,
            refresh_hint: None,
        }
    }

    /// True when the bundle holds no authority at all (revocation, SPIFFE.md 1.4.7).
    pub fn is_empty(&self) -> bool {
        self.x509_authorities.is_empty() && self.jwt_authorities.is_empty()
    }

    /// Same keys, ignoring sequence and refresh hint.
    pub fn same_authorities(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain
            && self.x509_authorities == other.x509_authorities
            && self.jwt_authorities == other.jwt_authorities
    }
}

/// A JWT-SVID signing key as published in a bundle (`use: jwt-svid`, `kid` required).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The key ID tokens name in their `kid` header.
    pub kid: String,
    /// The public key.
    pub key: JwtPublicKey,
}

/// A JWT signing public key, by key type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtPublicKey {
    /// `kty: EC`: the curve and the big-endian coordinates (each exactly the curve size).
    Ec {
        /// The curve.
        crv: EcCurve,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
    /// `kty: RSA`: modulus and public exponent, big-endian, no leading zeros.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

impl JwtPublicKey {
    /// The JWK `kty` name: `EC` or `RSA`.
    pub fn kty(&self) -> &'static str {
        match self {
            Self::Ec { .. } => "EC",
            Self::Rsa { .. } => "RSA",
        }
    }
}

/// The EC curves we read and write in JWKs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcCurve {
    /// `P-256`, 32-byte coordinates.
    P256,
    /// `P-384`, 48-byte coordinates.
    P384,
}

impl EcCurve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    /// The curve with this JWK `crv` name (case-sensitive), if we support it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            _ => None,
        }
    }

    /// Coordinate length in bytes.
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}
