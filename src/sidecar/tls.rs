//! rustls configs for the mTLS proxies, built once and reading the latest [`X509Context`] at
//! every handshake, so SVID and bundle rotations reach running listeners without restarting
//! them or dropping established connections.
//!
//! Peer verification (both directions) follows go-spiffe's `x509svid.Verify` (SPIFFE.md §6.4):
//! the leaf must be an X509-SVID leaf (X509-SVID §5.2); the chain is verified **only** against
//! the bundle of the leaf's own trust domain (SPIFFE-ID 1.1.7, WAPI 1.7.6): our bundle for our
//! trust domain, the federated one for a peer trust domain, and a trust domain we hold no
//! bundle for is refused. Then the [`Authorizer`] decides. Hostnames are never checked: a
//! SPIFFE peer is named by its ID.
//!
//! Session resumption is off on both sides: a resumed session skips certificate verification,
//! which would let a peer in after its bundle was revoked or its SVID expired.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::authorize::{AuthorizeError, Authorizer};
use super::client::ContextRx;
use super::context::X509Context;
use super::leaf::{self, LeafError};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Why a config cannot be built or a peer is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// No SVID has arrived yet, so there is nothing to verify against or present.
    #[error("no svid received from the workload api yet")]
    NoContext,
    /// Our SVID expired and no new one arrived: no new connection is made or accepted.
    #[error("our svid expired at {0} and no new one arrived")]
    Expired(String),
    /// The peer's leaf is not an X509-SVID leaf.
    #[error("peer certificate: {0}")]
    Leaf(#[from] LeafError),
    /// The peer's trust domain is neither ours nor a federated one.
    #[error("{id}: no bundle for trust domain {trust_domain}")]
    UnknownTrustDomain {
        /// The peer.
        id: SpiffeId,
        /// Its trust domain.
        trust_domain: TrustDomain,
    },
    /// The peer's trust domain has an empty bundle (revoked, SPIFFE.md 1.4.7).
    #[error("{id}: the bundle of {trust_domain} holds no authority (revoked)")]
    RevokedTrustDomain {
        /// The peer.
        id: SpiffeId,
        /// Its trust domain.
        trust_domain: TrustDomain,
    },
    /// The chain does not verify against the peer trust domain's bundle.
    #[error("{id}: chain not verified by the bundle of {trust_domain}: {reason}")]
    Chain {
        /// The peer.
        id: SpiffeId,
        /// Its trust domain.
        trust_domain: TrustDomain,
        /// rustls/webpki's reason.
        reason: String,
    },
    /// Verified, but not allowed.
    #[error(transparent)]
    NotAllowed(#[from] AuthorizeError),
    /// rustls refused the config.
    #[error("tls config: {0}")]
    Config(String),
}

impl From<TlsError> for rustls::Error {
    fn from(e: TlsError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The latest context, refusing an expired SVID.
fn usable(ctx: &ContextRx) -> Result<Arc<X509Context>, TlsError> {
    let current = ctx.borrow().clone().ok_or(TlsError::NoContext)?;
    if current.is_expired(SystemTime::now()) {
        return Err(TlsError::Expired(crate::clock::rfc3339(
            current.svid.not_after,
        )));
    }
    Ok(current)
}

/// Presents the current SVID; none once it has expired, so the handshake fails.
#[derive(Debug)]
pub struct SvidResolver {
    ctx: ContextRx,
}

impl SvidResolver {
    /// A resolver over the watcher's channel.
    pub fn new(ctx: ContextRx) -> Self {
        Self { ctx }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match usable(&self.ctx) {
            Ok(c) => Some(c.certified_key().clone()),
            Err(e) => {
                tracing::warn!(error = %e, "no svid to present");
                None
            }
        }
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Which side of the handshake the peer is on (it decides the EKU webpki checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is a TLS client (inbound proxy): clientAuth.
    Client,
    /// The peer is a TLS server (outbound proxy): serverAuth.
    Server,
}

/// Verifies peers per trust domain, then authorizes them.
#[derive(Debug)]
pub struct SpiffeVerifier {
    ctx: ContextRx,
    authorizer: Authorizer,
    provider: Arc<CryptoProvider>,
}

impl SpiffeVerifier {
    /// A verifier over the watcher's channel with this policy.
    pub fn new(ctx: ContextRx, authorizer: Authorizer) -> Self {
        Self {
            ctx,
            authorizer,
            provider: provider(),
        }
    }

    /// Verifies `end_entity` (+ `intermediates`) as an X509-SVID of `role` against the bundle
    /// of its own trust domain in the current context, then authorizes its ID.
    ///
    /// # Errors
    /// The [`TlsError`] saying why the peer is refused.
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<SpiffeId, TlsError> {
        let ctx = self.ctx.borrow().clone().ok_or(TlsError::NoContext)?;
        let id = leaf::inspect(end_entity)?.spiffe_id;
        let td = id.trust_domain().clone();
        let Some(bundle) = ctx.bundle_for(&td) else {
            return Err(TlsError::UnknownTrustDomain {
                id,
                trust_domain: td,
            });
        };
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(bundle.iter().cloned());
        if roots.is_empty() {
            return Err(TlsError::RevokedTrustDomain {
                id,
                trust_domain: td,
            });
        }
        let chain = |reason: String| TlsError::Chain {
            id: id.clone(),
            trust_domain: td.clone(),
            reason,
        };
        match role {
            PeerRole::Client => {
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| chain(e.to_string()))?
                    .verify_client_cert(end_entity, intermediates, now)
                    .map_err(|e| chain(e.to_string()))?;
            }
            PeerRole::Server => {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)
                    .map_err(|e| chain(e.to_string()))?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots,
                    intermediates,
                    now,
                    self.provider.signature_verification_algorithms.all,
                )
                .map_err(|e| chain(e.to_string()))?;
            }
        }
        self.authorizer.authorize(&id)?;
        Ok(id)
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify_peer(end_entity, intermediates, now, PeerRole::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    crate::tls_signatures::provider_signature_checks!(provider);
}

impl ClientCertVerifier for SpiffeVerifier {
    /// No CA names are sent: the acceptable roots depend on the client's trust domain, which is
    /// only known from its certificate.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify_peer(end_entity, intermediates, now, PeerRole::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

/// The inbound side: requires a client SVID, verified per trust domain and authorized.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the protocol versions (it does not with ring).
pub fn server_config(
    ctx: ContextRx,
    authorizer: Authorizer,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(SpiffeVerifier::new(ctx.clone(), authorizer));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SvidResolver::new(ctx)));
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The outbound side: presents our SVID and accepts exactly the server `authorizer` allows.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the protocol versions (it does not with ring).
pub fn client_config(
    ctx: ContextRx,
    authorizer: Authorizer,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(SpiffeVerifier::new(ctx.clone(), authorizer));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SvidResolver::new(ctx)));
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Whether a new connection may be made or accepted now (a current, unexpired SVID).
///
/// # Errors
/// [`TlsError::NoContext`] or [`TlsError::Expired`].
pub fn ready(ctx: &ContextRx) -> Result<(), TlsError> {
    usable(ctx).map(|_| ())
}

/// The verified peer ID of an established connection.
pub fn peer_id(certs: Option<&[CertificateDer<'static>]>) -> Option<SpiffeId> {
    leaf::inspect(certs?.first()?).ok().map(|l| l.spiffe_id)
}

#[cfg(test)]
mod tests;
