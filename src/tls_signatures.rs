//! The handshake-signature half of rustls' certificate verifier traits. Every verifier of ours
//! (the bundle fetcher's `https_spiffe` one, the `https_web` one without system roots, the
//! sidecar's per-trust-domain one) decides trust in its own way but checks the handshake
//! signature the same way, with its crypto provider's algorithms; this writes that part once.

/// Expands, inside an `impl ServerCertVerifier` (or `ClientCertVerifier`) block, to
/// `verify_tls12_signature`, `verify_tls13_signature` and `supported_verify_schemes` using
/// `self.<field>: Arc<CryptoProvider>`.
macro_rules! provider_signature_checks {
    ($field:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$field.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$field.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$field
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

pub(crate) use provider_signature_checks;
