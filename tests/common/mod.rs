//! Shared test helpers: temp dirs, the rustls provider, PEM files for openssl.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod daemon;
pub mod mesh;
pub mod python;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;

use rustls_pki_types::CertificateDer;

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// PEM for a list of certificates.
pub fn pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Runs `openssl verify -x509_strict -purpose <purpose>` of `leaf` against `roots`.
/// Returns (success, combined output).
pub fn openssl_verify(
    dir: &Path,
    roots: &[CertificateDer<'_>],
    leaf: &CertificateDer<'_>,
    purpose: &str,
) -> (bool, String) {
    let ca = dir.join("roots.pem");
    let cert = dir.join("leaf.pem");
    std::fs::write(&ca, pem(roots)).unwrap();
    std::fs::write(&cert, pem(std::slice::from_ref(leaf))).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The meshtrust binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshtrust"))
}
