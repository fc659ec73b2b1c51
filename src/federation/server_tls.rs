//! The certificate our bundle endpoint presents (SPIFFE Federation §5, SPIFFE.md §1.5 item 6).
//!
//! [`ServerCerts`] is the listener's [`ResolvesServerCert`]: it holds the current
//! [`CertifiedKey`] behind a lock that is read once per handshake, so a new certificate takes
//! effect on the next handshake while the one [`ServerConfig`] (and its session cache and
//! ticket keys) lives as long as the listener. Two tasks keep it current:
//! - [`renew_svid`] (`https_spiffe`): an X509-SVID for the endpoint SPIFFE ID from our own CA,
//!   re-issued at half its lifetime and whenever the authority it should chain to changes
//!   ([`CaSnapshot::endpoint_signer`]: the newest authority published for at least half its
//!   lifetime, so that a peer whose last good fetch was up to `ca_ttl/2` ago still authenticates
//!   the endpoint across a rotation and catches up by itself; the old CA keeps signing this one
//!   SVID until it expires, and stays published meanwhile). The endpoint always proves its
//!   identity with a key the published bundle vouches for;
//! - [`reload_web_files`] (`https_web`): the operator's PEM files, reloaded when they change;
//!   a bad new file is logged and the previous certificate kept.

use crate::bundle::pem::PemError;
use crate::ca::CaError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ca::CaSnapshot;
use crate::clock::Clock;
use crate::config::EndpointProfile;
use crate::spiffe_id::SpiffeId;

mod web_files;
use crate::svid::X509Svid;
pub use web_files::{load_web_files, reload_web_files};

/// A failure to load, issue or use the bundle endpoint's certificate.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A certificate or key file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file holds no usable PEM chain.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: PemError,
    },
    /// A private key cannot be parsed, is of an unsupported type, or does not match the leaf.
    #[error("{path}: private key: {reason}")]
    Key {
        /// The file (or the SVID's ID).
        path: String,
        /// The cause; never the key itself.
        reason: String,
    },
    /// The CA could not issue the endpoint's X509-SVID.
    #[error("issuing the endpoint svid: {0}")]
    Issue(#[from] CaError),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[source] rustls::Error),
}

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
    /// serving nothing. The first `https_spiffe` SVID is issued now too (handshakes fail closed
    /// while there is none); a failed issuance is logged and retried by the task.
    ///
    /// # Errors
    /// [`ServerTlsError`] when the `https_web` files cannot be loaded.
    pub fn start(
        profile: &EndpointProfile,
        ca: watch::Receiver<Arc<CaSnapshot>>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Result<(Arc<Self>, CertTask), ServerTlsError> {
        let certs = Arc::new(Self::new(clock));
        let task: CertTask = match profile {
            EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                // The first SVID now, so the listener never answers a handshake without one
                // when the CA can sign; a failure here is retried by the task.
                let snapshot = ca.borrow().clone();
                let first = issue_into(&certs, &snapshot, endpoint_spiffe_id)
                    .inspect_err(|e| {
                        certs.failed();
                        tracing::error!(error = %e, "bundle endpoint svid issuance failed; retrying");
                    })
                    .ok();
                Box::pin(renew_svid_from(
                    certs.clone(),
                    ca,
                    endpoint_spiffe_id.clone(),
                    SVID_RECHECK,
                    cancel,
                    first,
                ))
            }
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
    /// [`ServerTlsError::Tls`] if rustls refuses the protocol versions or the ticketer.
    pub fn tls_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, ServerTlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(ServerTlsError::Tls)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(ServerTlsError::Tls)?;
        Ok(Arc::new(config))
    }

    /// A [`CertifiedKey`] from an issued X509-SVID (leaf alone: our CAs are roots).
    ///
    /// # Errors
    /// [`ServerTlsError::Key`] if rustls cannot use the key.
    pub fn svid_key(&self, svid: &X509Svid) -> Result<CertifiedKey, ServerTlsError> {
        let der = PrivatePkcs8KeyDer::from(svid.private_key.pkcs8_der().to_vec());
        CertifiedKey::from_der(svid.cert_chain.clone(), der.into(), &self.provider).map_err(|e| {
            ServerTlsError::Key {
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
    ca: watch::Receiver<Arc<CaSnapshot>>,
    id: SpiffeId,
    recheck: Duration,
    cancel: CancellationToken,
) {
    renew_svid_from(certs, ca, id, recheck, cancel, None).await;
}

/// (CA generation that signed the current SVID, when to renew it)
type Issued = Option<(u64, SystemTime)>;

/// Issues an SVID for `id` from `snapshot` and installs it in `certs`.
fn issue_into(
    certs: &ServerCerts,
    snapshot: &CaSnapshot,
    id: &SpiffeId,
) -> Result<(u64, SystemTime), ServerTlsError> {
    let now = certs.clock.now();
    let (svid, signer) = snapshot.issue_endpoint_svid(id, now)?;
    let generation = signer.authority.generation;
    let key = certs.svid_key(&svid)?;
    certs.install(key, Some(svid.not_after));
    // Half-life renewal, or the switch to another authority if sooner; an SVID cut short by its
    // CA's end is renewed at the switch only (which is no later than that end).
    // Half of the life left from now (not from the back-dated NotBefore: with an SVID TTL
    // shorter than the back-dating, that would be in the past and renew in a loop).
    let half = svid.not_after.duration_since(now).unwrap_or_default() / 2;
    let renew_at = if svid.not_after >= signer.authority.not_after {
        signer.switch_at
    } else {
        (now + half).min(signer.switch_at)
    };
    tracing::info!(
        spiffe_id = %id,
        ca_generation = generation,
        ca_state = signer.state.as_str(),
        not_after = %crate::clock::rfc3339(svid.not_after),
        renew_at = %crate::clock::rfc3339(renew_at),
        "bundle endpoint svid issued"
    );
    Ok((generation, renew_at))
}

async fn renew_svid_from(
    certs: Arc<ServerCerts>,
    mut ca: watch::Receiver<Arc<CaSnapshot>>,
    id: SpiffeId,
    recheck: Duration,
    cancel: CancellationToken,
    mut issued: Issued,
) {
    let mut ca_open = true;
    loop {
        let snapshot = ca.borrow_and_update().clone();
        let now = certs.clock.now();
        let generation = snapshot
            .endpoint_signer(now)
            .map(|s| s.authority.generation);
        let due = issued.is_none_or(|(g, renew_at)| Some(g) != generation || now >= renew_at);
        let mut retry = false;
        if due {
            match issue_into(&certs, &snapshot, &id) {
                Ok(done) => issued = Some(done),
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
