//! One CA generation: an X.509 CA (certificate and key) and a JWT signing key, published
//! together and rotated together.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::Issuer;
use rustls_pki_types::CertificateDer;

use super::CaError;
use super::issue;
use super::key::{self, CaSigningKey, JwtSigningKey, KeyType};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::{AuthorityState, StoredAuthority};
use crate::svid::{PrivateKey, X509Svid};

/// The immutable material of one CA generation.
pub struct Authority {
    /// Orders authorities in the bundle.
    pub generation: u64,
    /// The CA certificate (self-signed, DER).
    pub cert: CertificateDer<'static>,
    /// When it was generated, i.e. first published.
    pub issued_at: SystemTime,
    /// The CA certificate's NotAfter.
    pub not_after: SystemTime,
    /// The JWT-SVID signing key of this generation.
    pub jwt: JwtSigningKey,
    key: PrivateKey,
    issuer: Issuer<'static, CaSigningKey>,
}

impl Authority {
    /// Generates a new CA for `td` valid from `now` for `ttl`.
    pub(crate) fn generate(
        td: &TrustDomain,
        key_type: KeyType,
        generation: u64,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Self, CaError> {
        let key = key::generate_ca_key(key_type)?;
        let pair = key::load_ca_key(&key, key_type)?;
        let (cert, not_after) = issue::new_ca_cert(td, &pair, now, ttl)?;
        let issuer = Issuer::from_ca_cert_der(&cert, pair).map_err(CaError::Rcgen)?;
        Ok(Self {
            generation,
            cert,
            issued_at: now,
            not_after,
            jwt: JwtSigningKey::generate()?,
            key,
            issuer,
        })
    }

    /// Loads a stored authority.
    pub(crate) fn from_stored(s: &StoredAuthority) -> Result<Self, CaError> {
        let key_type = key::detect_key_type(&s.ca_key)?;
        let pair = key::load_ca_key(&s.ca_key, key_type)?;
        let cert = CertificateDer::from(s.ca_cert.clone());
        let issuer = Issuer::from_ca_cert_der(&cert, pair).map_err(CaError::Rcgen)?;
        Ok(Self {
            generation: s.generation,
            cert,
            issued_at: s.issued_at,
            not_after: s.not_after,
            jwt: JwtSigningKey::load(s.jwt_kid.clone(), s.jwt_key.clone())?,
            key: s.ca_key.clone(),
            issuer,
        })
    }

    /// The storage form.
    pub(crate) fn to_stored(
        &self,
        state: AuthorityState,
        prune_after: Option<SystemTime>,
    ) -> StoredAuthority {
        StoredAuthority {
            generation: self.generation,
            state,
            issued_at: self.issued_at,
            not_after: self.not_after,
            prune_after,
            ca_cert: self.cert.to_vec(),
            ca_key: self.key.clone(),
            jwt_kid: self.jwt.kid.clone(),
            jwt_key: self.jwt.pkcs8().clone(),
        }
    }

    /// The whole lifetime, from generation to NotAfter.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }

    /// Issues an X509-SVID signed by this CA.
    ///
    /// # Errors
    /// [`CaError`] for a root-path ID, an expired CA or a signing failure.
    pub fn issue_x509_svid(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<X509Svid, CaError> {
        issue::new_x509_svid(&self.issuer, self.not_after, id, ttl, now)
    }

    /// Signs an X509-SVID for `id` and `key`, a public key held elsewhere (a node agent's CSR).
    ///
    /// # Errors
    /// As [`Authority::issue_x509_svid`].
    pub fn sign_x509_svid_for_key(
        &self,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<issue::SignedLeaf, CaError> {
        issue::svid_for_key(&self.issuer, self.not_after, id, ttl, now, key)
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("generation", &self.generation)
            .field("issued_at", &self.issued_at)
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}
