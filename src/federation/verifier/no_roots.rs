//! An `https_web` verifier for when the platform's roots cannot be loaded (no CA certificates
//! installed, a bad `SSL_CERT_FILE`): every handshake fails with that reason. The peer then
//! shows as `failing` with the cause, the daemon and its other peers keep running, and the
//! fetch succeeds once the roots exist again after a restart.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Refuses every server certificate with `reason`.
#[derive(Debug)]
pub struct NoRootsVerifier {
    reason: String,
    provider: Arc<CryptoProvider>,
}

impl NoRootsVerifier {
    /// A verifier that fails with `reason` (why the platform's roots are unavailable).
    pub fn new(reason: String, provider: Arc<CryptoProvider>) -> Self {
        Self { reason, provider }
    }
}

impl ServerCertVerifier for NoRootsVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(format!(
            "no system root certificates: {}",
            self.reason
        )))
    }

    crate::tls_signatures::provider_signature_checks!(provider);
}
