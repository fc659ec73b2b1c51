//! An `https_web` verifier for when the platform's roots cannot be loaded (no CA certificates
//! installed, a bad `SSL_CERT_FILE`): every handshake fails with that reason. The peer then
//! shows as `failing` with the cause, the daemon and its other peers keep running, and the
//! fetch succeeds once the roots exist again after a restart.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
