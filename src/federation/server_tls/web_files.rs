//! `https_web`: the operator's certificate and key files, loaded at start and reloaded when
//! they change (a bad new file is logged and the previous certificate kept).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::{ServerCerts, ServerTlsError};
use crate::bundle::pem::parse_certs_pem;

/// Polls `cert_file` and `key_file` every `interval` (https_web) and installs them when their
/// size or modification time changed and they load; a file that does not load is logged and
/// the previous certificate kept. Runs until `cancel`.
pub async fn reload_web_files(
    certs: Arc<ServerCerts>,
    cert_file: PathBuf,
    key_file: PathBuf,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut seen = signature(&cert_file, &key_file);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = signature(&cert_file, &key_file);
        if now == seen {
            continue;
        }
        // Taken before reading: a write still in progress changes it again and is retried.
        seen = now;
        match load_web_files(&cert_file, &key_file) {
            Ok(key) => {
                certs.install(key, None);
                tracing::info!(cert_file = %cert_file.display(), "bundle endpoint certificate reloaded");
            }
            Err(e) => {
                certs.failed();
                tracing::warn!(error = %e, "bundle endpoint certificate not reloaded; keeping the previous one");
            }
        }
    }
}

type FileSig = Option<(SystemTime, u64)>;

fn signature(cert_file: &Path, key_file: &Path) -> (FileSig, FileSig) {
    let sig = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    (sig(cert_file), sig(key_file))
}

/// Loads an https_web certificate: `cert_file` a PEM chain (leaf first), `key_file` a PEM
/// private key (PKCS#8, or SEC1 / PKCS#1) that must match the leaf.
///
/// # Errors
/// [`ServerTlsError`] naming the file that cannot be read, parsed or used.
pub fn load_web_files(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, ServerTlsError> {
    let read = |p: &Path| {
        std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|source| ServerTlsError::Read {
                path: p.display().to_string(),
                source,
            })
    };
    let chain = parse_certs_pem(&read(cert_file)?).map_err(|source| ServerTlsError::Pem {
        path: cert_file.display().to_string(),
        source,
    })?;
    let key_error = |reason: String| ServerTlsError::Key {
        path: key_file.display().to_string(),
        reason,
    };
    // The error type says what is wrong without quoting the key.
    let key =
        PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| key_error(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| key_error(e.to_string()))
}
