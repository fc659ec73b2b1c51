//! The agent API's TLS: the server presents an X509-SVID of its own trust domain
//! (`spiffe://<td>/meshtrust/server`, kept current by the bundle endpoint's
//! [`ServerCerts`] and [`renew_svid`]: re-issued at half-life and on CA rotation), TLS 1.3 only
//! (agents are ours), ALPN `h2`.
//!
//! Client certificates are optional at the TLS layer (an agent attesting has none yet); a
//! certificate that is offered must chain to our CA's authorities in force *at the handshake*
//! ([`AgentClientVerifier`], roots read per handshake so rotation needs no restart). Who the
//! certificate names, and whether that node is evicted, is decided per RPC (`service.rs`).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DistinguishedName, RootCertStore, ServerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ca::CaSnapshot;
use crate::clock::Clock;
use crate::federation::server_tls::{CertTask, SVID_RECHECK, ServerCerts, renew_svid};
use crate::federation::verifier::valid_at;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentTlsError {
    /// rustls refused the configuration.
    #[error("agent api tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The server SPIFFE ID could not be formed.
    #[error("agent api server id: {0}")]
    Id(String),
}

/// The SPIFFE ID the agent API presents: `spiffe://<td>/meshtrust/server`.
///
/// # Errors
/// [`AgentTlsError::Id`] (cannot happen for a valid trust domain).
pub fn server_id(td: &TrustDomain) -> Result<SpiffeId, AgentTlsError> {
    SpiffeId::new(format!("spiffe://{td}/meshtrust/server"))
        .map_err(|e| AgentTlsError::Id(e.to_string()))
}

/// Verifies offered client certificates against our CA's authorities in force now.
pub struct AgentClientVerifier {
    ca: watch::Receiver<Arc<CaSnapshot>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for AgentClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClientVerifier")
            .finish_non_exhaustive()
    }
}

impl AgentClientVerifier {
    /// A verifier reading the authorities from `ca` at every handshake.
    pub fn new(ca: watch::Receiver<Arc<CaSnapshot>>, provider: Arc<CryptoProvider>) -> Self {
        Self { ca, provider }
    }
}

/// Verifies a client chain against `authorities` (those within their validity at `now`), with
/// `provider`'s algorithms: at the handshake, and again at every RPC (a long-lived connection
/// outlives an authority leaving the bundle).
///
/// # Errors
/// The rustls error: no authority in force, a chain that does not verify, an expired leaf.
pub fn verify_client_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    authorities: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(
        authorities
            .iter()
            .filter(|a| valid_at(a, now))
            .cloned()
            .collect::<Vec<_>>(),
    );
    if roots.is_empty() {
        return Err(rustls::Error::General(
            "no x509 authority of ours in force".to_owned(),
        ));
    }
    // Parse first: a junk certificate fails here with a clear error.
    ParsedCertificate::try_from(end_entity)?;
    // Built per call: the authorities follow the CA's rotations. A handful of roots.
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    inner
        .verify_client_cert(end_entity, intermediates, now)
        .map(|_| ())
}

impl ClientCertVerifier for AgentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let authorities = self.ca.borrow().bundle.x509_authorities.clone();
        verify_client_chain(end_entity, intermediates, &authorities, &self.provider, now)?;
        Ok(ClientCertVerified::assertion())
    }

    crate::tls_signatures::provider_signature_checks!(provider);
}

/// The listener's certificates and the task that keeps them current.
///
/// # Errors
/// [`AgentTlsError`] when rustls refuses the configuration.
pub fn server_config(
    ca: watch::Receiver<Arc<CaSnapshot>>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) -> Result<(Arc<ServerConfig>, CertTask), AgentTlsError> {
    let id = server_id(&ca.borrow().trust_domain)?;
    let certs = Arc::new(ServerCerts::new(clock));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AgentClientVerifier::new(ca.clone(), provider.clone()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let task: CertTask = Box::pin(renew_svid(certs, ca, id, SVID_RECHECK, cancel));
    Ok((Arc::new(config), task))
}
