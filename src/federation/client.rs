//! Fetching one peer's SPIFFE bundle over HTTPS (SPIFFE Federation §5, SPIFFE.md "Decisions",
//! §6.6 and §7.11): unlike go-spiffe's `FetchBundle`, we require `200`, cap the body, time out
//! every fetch, and follow redirects only to `https` URLs without userinfo, through the same
//! client (so the same TLS checks, including the pinned endpoint SPIFFE ID), never storing them.
//!
//! Every fetch opens a new connection (no pooling): each one authenticates the endpoint against
//! the authorities in force at that moment (a rotation or a revocation applies at once).
//! Proxies from the environment are not used: bundle endpoints are reached directly.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use url::Url;

use super::pinned::PinError;
use super::verifier::{NoRootsVerifier, SpiffeEndpointVerifier};
use crate::bundle::jwks::{self, JwksError, ParsedBundle};
use crate::spiffe_id::TrustDomain;

/// Default connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of a whole fetch: connect, TLS, request and body.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest bundle document we read (SPIFFE.md "Decisions": 1 MiB).
pub const MAX_BODY: usize = 1 << 20;
/// The most redirects one fetch follows.
pub const MAX_REDIRECTS: usize = 3;
/// The most keys a peer bundle document may hold (a real one holds a handful: two or three CAs
/// and their JWT keys); above it the document is refused whole, before any key is decoded.
pub const MAX_KEYS: usize = jwks::MAX_KEYS;

/// The bounds of one fetch; [`Default`] is the daemon's (tests shorten the timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// TCP connect.
    pub connect_timeout: Duration,
    /// The whole fetch, body included: a slow drip or a stalled server ends here.
    pub total_timeout: Duration,
    /// Body bytes; counted while streaming, whatever `Content-Length` says.
    pub max_body: usize,
    /// Redirects followed per fetch.
    pub max_redirects: usize,
    /// The shortest interval between two polls whatever the peer's refresh hint
    /// (`federation_min_refresh_interval`).
    pub min_interval: Duration,
    /// Keys per bundle document at most; a document with more is refused whole.
    pub max_keys: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            total_timeout: TOTAL_TIMEOUT,
            max_body: MAX_BODY,
            max_redirects: MAX_REDIRECTS,
            min_interval: super::fetcher::MIN_INTERVAL,
            max_keys: MAX_KEYS,
        }
    }
}

/// A fetched and parsed bundle, with what the fetcher logs about it.
#[derive(Debug)]
pub struct Fetched {
    /// The bundle and the keys left out of it.
    pub parsed: ParsedBundle,
    /// Where it came from after redirects.
    pub final_url: Url,
    /// Body size.
    pub bytes: usize,
    /// How long the fetch took.
    pub elapsed_ms: u64,
}

/// Why a fetch (or pinning its result) failed. The pinned bundle stays in force.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The HTTPS client could not be built.
    #[error("cannot set up the https client: {0}")]
    Setup(String),
    /// No TCP connection.
    #[error("connect: {0}")]
    Connect(String),
    /// The TLS handshake failed: endpoint not authenticated.
    #[error("tls: {0}")]
    Tls(String),
    /// The deadline passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Anything but `200 OK`, even with a valid body.
    #[error("http status {0}")]
    HttpStatus(u16),
    /// The body is larger than the cap.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    /// Not a SPIFFE bundle document.
    #[error(transparent)]
    Parse(#[from] JwksError),
    /// A redirect we do not follow.
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// Any other HTTP failure (protocol error, connection reset while reading...).
    #[error("http: {0}")]
    Http(String),
    /// The fetched bundle was not pinned (rollback, storage).
    #[error(transparent)]
    Pin(#[from] PinError),
}

impl FetchError {
    /// The metric and status label of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Setup(_) => "setup",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Timeout(_) => "timeout",
            Self::HttpStatus(_) => "http_status",
            Self::TooLarge(_) => "too_large",
            Self::Parse(JwksError::TooManyKeys { .. }) => "too_many_keys",
            Self::Parse(_) => "parse",
            Self::Redirect(_) => "redirect",
            Self::Http(_) => "http",
            Self::Pin(PinError::SequenceRollback { .. }) => "sequence_rollback",
            Self::Pin(PinError::SequenceMissing { .. }) => "sequence_missing",
            Self::Pin(_) => "store",
        }
    }
}

/// The redirect policy's refusal, found again in the reqwest error's sources.
#[derive(Debug)]
struct RedirectRefused(String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for RedirectRefused {}

/// The HTTPS client of one relationship.
#[derive(Debug)]
pub struct PeerClient {
    trust_domain: TrustDomain,
    url: Url,
    http: reqwest::Client,
    limits: FetchLimits,
}

impl PeerClient {
    /// `https_spiffe`: the endpoint is authenticated by `verifier` only (no hostname check).
    ///
    /// # Errors
    /// [`FetchError::Setup`] if the client cannot be built.
    pub fn https_spiffe(
        trust_domain: TrustDomain,
        url: Url,
        verifier: SpiffeEndpointVerifier,
        limits: FetchLimits,
    ) -> Result<Self, FetchError> {
        let config = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Self::new(trust_domain, url, config, limits)
    }

    /// `https_web`: Web PKI with the hostname check, against `roots` (a `ca_file`), or the
    /// platform's roots when `None`.
    ///
    /// # Errors
    /// [`FetchError::Setup`] if no root is usable or the client cannot be built.
    pub fn https_web(
        trust_domain: TrustDomain,
        url: Url,
        roots: Option<Vec<CertificateDer<'static>>>,
        limits: FetchLimits,
    ) -> Result<Self, FetchError> {
        let config = match roots {
            Some(roots) => {
                let mut store = RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(roots);
                if added == 0 {
                    return Err(FetchError::Setup("no usable root certificate".to_owned()));
                }
                builder()?.with_root_certificates(store)
            }
            None => {
                let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
                    match rustls_platform_verifier::Verifier::new(provider()) {
                        Ok(v) => Arc::new(v),
                        Err(e) => {
                            tracing::error!(peer = %trust_domain, error = %e, "no system root certificates: this https_web peer fails until they are installed or ca_file is set");
                            Arc::new(NoRootsVerifier::new(e.to_string(), provider()))
                        }
                    };
                builder()?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
            }
        }
        .with_no_client_auth();
        Self::new(trust_domain, url, config, limits)
    }

    /// A client whose endpoint is authenticated by `verifier` alone (no hostname check): for
    /// `federation join`'s first contact, whose roots are not known before the fetch.
    ///
    /// # Errors
    /// [`FetchError::Setup`] if the client cannot be built.
    pub fn with_verifier(
        trust_domain: TrustDomain,
        url: Url,
        verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
        limits: FetchLimits,
    ) -> Result<Self, FetchError> {
        let config = builder()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Self::new(trust_domain, url, config, limits)
    }

    fn new(
        trust_domain: TrustDomain,
        url: Url,
        mut config: ClientConfig,
        limits: FetchLimits,
    ) -> Result<Self, FetchError> {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // A resumed session skips certificate verification: every fetch must check the endpoint
        // against the authorities in force now (a rotation, a revocation by `keys: []`).
        config.resumption = rustls::client::Resumption::disabled();
        let max_redirects = limits.max_redirects;
        let td = trust_domain.clone();
        let redirects = Policy::custom(move |attempt| {
            let refuse = |why: String| RedirectRefused(why);
            let url = attempt.url();
            if attempt.previous().len() > max_redirects {
                attempt.error(refuse(format!("more than {max_redirects} redirects")))
            } else if url.scheme() != "https" {
                let why = format!("target {url} is not https");
                attempt.error(refuse(why))
            } else if !url.username().is_empty() || url.password().is_some() {
                attempt.error(refuse("target has userinfo".to_owned()))
            } else {
                // Followed for this fetch only, never stored (SPIFFE Federation §5.2, 1.5.11).
                // Debug only: the fetch's one log line names the final URL.
                tracing::debug!(trust_domain = %td, target = %url, status = %attempt.status(), "following redirect");
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.total_timeout)
            .redirect(redirects)
            .pool_max_idle_per_host(0)
            .no_proxy()
            .https_only(true)
            .user_agent(concat!("meshtrust/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Setup(chain(&e)))?;
        Ok(Self {
            trust_domain,
            url,
            http,
            limits,
        })
    }

    /// The configured peer trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The configured bundle endpoint URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Fetches and parses the bundle under the configured trust domain. Logs nothing: the
    /// fetcher writes one line per fetch (SPIFFE Federation §7.6, 1.5.14) with the outcome.
    ///
    /// # Errors
    /// [`FetchError`]: nothing was received that may be pinned.
    pub async fn fetch(&self) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.limits.total_timeout, self.fetch_inner())
            .await
            .unwrap_or(Err(FetchError::Timeout(self.limits.total_timeout)));
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        result.map(|(parsed, final_url, bytes)| Fetched {
            parsed,
            final_url,
            bytes,
            elapsed_ms,
        })
    }

    async fn fetch_inner(&self) -> Result<(ParsedBundle, Url, usize), FetchError> {
        let mut response = self
            .http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.classify(&e))?;
        let final_url = response.url().clone();
        if response.status() != StatusCode::OK {
            return Err(FetchError::HttpStatus(response.status().as_u16()));
        }
        let max = self.limits.max_body;
        if response
            .content_length()
            .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
        {
            return Err(FetchError::TooLarge(max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e))? {
            if body.len() + chunk.len() > max {
                return Err(FetchError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        let parsed = jwks::parse_with_max_keys(&self.trust_domain, &body, self.limits.max_keys)?;
        Ok((parsed, final_url, body.len()))
    }

    fn classify(&self, e: &reqwest::Error) -> FetchError {
        if let Some(refused) = find::<RedirectRefused>(e) {
            return FetchError::Redirect(refused.0.clone());
        }
        if let Some(tls) = find_rustls(e) {
            return FetchError::Tls(describe_tls(tls));
        }
        if e.is_timeout() {
            return FetchError::Timeout(self.limits.total_timeout);
        }
        if e.is_redirect() {
            return FetchError::Redirect(chain(e));
        }
        if e.is_connect() {
            return FetchError::Connect(chain(e));
        }
        FetchError::Http(chain(e))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A ring-only TLS 1.2/1.3 client config builder (Mozilla intermediate, SPIFFE Federation §5).
fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, FetchError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Setup(e.to_string()))
}

/// The first error of type `T` among `e` and its sources.
fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// The rustls error. tokio-rustls wraps it in an `io::Error`, which the connector wraps in another
/// `io::Error`, and `io::Error::source()` skips the wrapped error: descend with `get_ref()`.
fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

/// rustls prints a custom certificate error with `Debug`; show our verifier's message instead.
fn describe_tls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            format!("invalid peer certificate: {other}")
        }
        other => other.to_string(),
    }
}

/// `e` and its sources, joined.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = err.source();
    }
    out
}
