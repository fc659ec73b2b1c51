//! The certificate our bundle endpoint presents (SPIFFE Federation §5, SPIFFE.md §1.5 item 6).
//!
//! [`ServerCerts`] is the listener's [`ResolvesServerCert`]: it holds the current
//! [`CertifiedKey`] behind a lock that is read once per handshake, so a new certificate takes
//! effect on the next handshake while the one [`ServerConfig`] (and its session cache and
//! ticket keys) lives as long as the listener. Two tasks keep it current:
//! - [`renew_svid`] (`https_spiffe`): an X509-SVID for the endpoint SPIFFE ID from our own CA,
//!   re-issued at half its lifetime and whenever the CA's active authority changes, so the
//!   endpoint always proves its identity with a key the published bundle vouches for;
//! - [`reload_web_files`] (`https_web`): the operator's PEM files, reloaded when they change;
//!   a bad new file is logged and the previous certificate kept.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::endpoint::EndpointError;
use crate::bundle::pem::parse_certs_pem;
use crate::ca::CaSnapshot;
use crate::clock::Clock;
use crate::config::EndpointProfile;
use crate::spiffe_id::SpiffeId;
use crate::svid::X509Svid;

/// How often [`ServerCerts::start`] polls `https_web` files for changes.
pub const WEB_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How often [`ServerCerts::start`]'s renewal task re-reads the clock at most, so a
/// wall-clock jump is noticed (like `Ca::run`).
pub const SVID_RECHECK: Duration = Duration::from_secs(30);
/// How long a failed SVID issuance waits before the next try.
const RETRY: Duration = Duration::from_secs(5);

/// The ALPN protocols we offer, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A background task that keeps a [`ServerCerts`] current; spawn it next to the listener.
pub type CertTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    /// Past this instant the certificate is never presented (SVIDs only; a Web PKI certificate
    /// is the operator's, and presenting it expired gives clients the clearest error).
    not_after: Option<SystemTime>,
}

/// The endpoint's current certificate, for rustls to pick at each handshake.
///
/// Before the first certificate is installed, or once an SVID has expired, handshakes fail
/// closed (no certificate is ever invented or presented expired).
pub struct ServerCerts {
    current: RwLock<Option<Current>>,
    clock: Arc<dyn Clock>,
    provider: Arc<CryptoProvider>,
    /// Failed issuances or reloads since start: for status and metrics, and for tests to know a
    /// bad file was seen.
    failures: AtomicU64,
}

impl ServerCerts {
    /// Empty certificates judged by `clock` (the clock the CA issues with).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            current: RwLock::new(None),
            clock,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            failures: AtomicU64::new(0),
        }
    }

    /// Sets up the certificates for `profile` and returns the task that keeps them current.
    ///
    /// `https_web` files are loaded now, so a broken file stops the daemon at start rather than
    /// serving nothing. The first `https_spiffe` SVID is issued as soon as the task first runs
    /// (handshakes fail closed until then); a failed issuance is logged and retried.
    ///
    /// # Errors
    /// [`EndpointError`] when the `https_web` files cannot be loaded.
    pub fn start(
        profile: &EndpointProfile,
        ca: watch::Receiver<Arc<CaSnapshot>>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Result<(Arc<Self>, CertTask), EndpointError> {
        let certs = Arc::new(Self::new(clock));
        let task: CertTask = match profile {
            EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => Box::pin(renew_svid(
                certs.clone(),
                ca,
                endpoint_spiffe_id.clone(),
                SVID_RECHECK,
                cancel,
            )),
            EndpointProfile::HttpsWeb {
                cert_file,
                key_file,
            } => {
                certs.install(load_web_files(cert_file, key_file)?, None);
                Box::pin(reload_web_files(
                    certs.clone(),
                    cert_file.clone(),
                    key_file.clone(),
                    WEB_POLL_INTERVAL,
                    cancel,
                ))
            }
        };
        Ok((certs, task))
    }

    /// Presents `key` from the next handshake on, until `not_after` if given.
    pub fn install(&self, key: CertifiedKey, not_after: Option<SystemTime>) {
        let current = Current {
            key: Arc::new(key),
            not_after,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
    }

    /// What a handshake now would present: `None` before the first certificate or after an
    /// SVID's expiry.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        match current.not_after {
            Some(t) if self.clock.now() >= t => None,
            _ => Some(current.key),
        }
    }

    /// How many issuances or reloads have failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The listener's TLS configuration: TLS 1.2 and 1.3 only with rustls' ring suites (ECDHE
    /// and AEAD only, which meets Mozilla "intermediate", Federation §5), no client
    /// authentication (Federation 1.5.9), ALPN `h2` then `http/1.1`, stateless resumption
    /// tickets. Certificates come from `self` at every handshake.
    ///
    /// # Errors
    /// [`EndpointError::Tls`] if rustls refuses the protocol versions or the ticketer.
    pub fn tls_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, EndpointError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(EndpointError::Tls)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(EndpointError::Tls)?;
        Ok(Arc::new(config))
    }

    /// A [`CertifiedKey`] from an issued X509-SVID (leaf alone: our CAs are roots).
    ///
    /// # Errors
    /// [`EndpointError::Key`] if rustls cannot use the key.
    pub fn svid_key(&self, svid: &X509Svid) -> Result<CertifiedKey, EndpointError> {
        let der = PrivatePkcs8KeyDer::from(svid.private_key.pkcs8_der().to_vec());
        CertifiedKey::from_der(svid.cert_chain.clone(), der.into(), &self.provider).map_err(|e| {
            EndpointError::Key {
                path: svid.spiffe_id.to_string(),
                reason: e.to_string(),
            }
        })
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.current();
        if key.is_none() {
            tracing::warn!("bundle endpoint has no valid certificate; refusing the handshake");
        }
        key
    }
}

impl fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ServerCerts")
            .field("has_certificate", &current.is_some())
            .field("not_after", &current.as_ref().and_then(|c| c.not_after))
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

/// Keeps an X509-SVID for `id` in `certs` (https_spiffe, SPIFFE.md §2 "Serving": the server
/// certificate MUST be a valid X509-SVID). Issues at once, then again at half the SVID's
/// lifetime and whenever the CA's active generation changes, until `cancel`. The clock is
/// re-read at least every `recheck` (sleeps are in real time, the lifetime is by the clock).
pub async fn renew_svid(
    certs: Arc<ServerCerts>,
    mut ca: watch::Receiver<Arc<CaSnapshot>>,
    id: SpiffeId,
    recheck: Duration,
    cancel: CancellationToken,
) {
    // (generation that signed it, when to renew)
    let mut issued: Option<(u64, SystemTime)> = None;
    let mut ca_open = true;
    loop {
        let snapshot = ca.borrow_and_update().clone();
        let now = certs.clock.now();
        let generation = snapshot.active().map(|a| a.generation);
        let due = issued.is_none_or(|(g, renew_at)| Some(g) != generation || now >= renew_at);
        let mut retry = false;
        if due {
            let result = snapshot
                .issue_x509_svid(&id, now)
                .map_err(EndpointError::from)
                .and_then(|svid| Ok((certs.svid_key(&svid)?, svid)));
            match result {
                Ok((key, svid)) => {
                    certs.install(key, Some(svid.not_after));
                    let half = svid
                        .not_after
                        .duration_since(svid.not_before)
                        .unwrap_or_default()
                        / 2;
                    issued = Some((generation.unwrap_or(0), svid.not_before + half));
                    tracing::info!(
                        spiffe_id = %id,
                        ca_generation = generation.unwrap_or(0),
                        not_after = %crate::clock::rfc3339(svid.not_after),
                        "bundle endpoint svid issued"
                    );
                }
                Err(e) => {
                    certs.failed();
                    tracing::error!(spiffe_id = %id, error = %e, "bundle endpoint svid issuance failed; retrying");
                    retry = true;
                }
            }
        }
        // After a failure, RETRY; otherwise until the renewal is due, re-reading the clock at
        // least every `recheck`.
        let wait = match issued {
            _ if retry => RETRY.min(recheck),
            Some((_, renew_at)) => renew_at.duration_since(now).unwrap_or_default().clamp(
                Duration::from_millis(20),
                recheck.max(Duration::from_millis(20)),
            ),
            None => recheck,
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = ca.changed(), if ca_open => ca_open = changed.is_ok(),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

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
/// [`EndpointError`] naming the file that cannot be read, parsed or used.
pub fn load_web_files(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, EndpointError> {
    let read = |p: &Path| {
        std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|source| EndpointError::Read {
                path: p.display().to_string(),
                source,
            })
    };
    let chain = parse_certs_pem(&read(cert_file)?).map_err(|source| EndpointError::Pem {
        path: cert_file.display().to_string(),
        source,
    })?;
    let key_error = |reason: String| EndpointError::Key {
        path: key_file.display().to_string(),
        reason,
    };
    // The error type says what is wrong without quoting the key.
    let key =
        PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| key_error(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| key_error(e.to_string()))
}
