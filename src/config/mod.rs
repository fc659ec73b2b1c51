//! The daemon's configuration: a TOML file (CONTRACT.md "Configuration (TOML)") turned into a
//! typed [`Config`].
//!
//! Parse, don't validate: [`Config::load`] reads the file into serde structs that deny unknown
//! keys (`raw.rs`), then checks every rule and builds domain types (`validate.rs`). Whatever holds
//! a [`Config`] can trust it: trust domains and SPIFFE IDs are valid, durations are positive and
//! consistent, relative paths are resolved against the config file's folder, and every
//! federation relationship names its trust domain, URL and profile explicitly (SPIFFE.md §1.5
//! item 7). Errors name the file and the key ([`ConfigError`]).
//!
//! Parsing touches the filesystem only to check that `bundle_endpoint.cert_file`,
//! `bundle_endpoint.key_file` and `federation[].ca_file` exist. A `bootstrap_bundle` is checked
//! when the daemon starts instead: it is only needed until a peer bundle is pinned in `data_dir`,
//! and the demo configs point at files that exist only inside the containers.

mod duration;
mod error;
pub mod lint;
mod raw;
mod selector;
mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spiffe_id::{SpiffeId, TrustDomain};

pub use duration::{format_duration, parse_duration};
pub use error::ConfigError;
pub use selector::Selector;

/// Default `[ca] ca_ttl`.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default `[ca] x509_svid_ttl`.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default `[ca] jwt_svid_ttl`.
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(5 * 60);
/// Default `[bundle_endpoint] refresh_hint` (SPIFFE Federation §4.1 recommends a low default).
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(5 * 60);
/// Default `federation_min_refresh_interval`: a peer's `spiffe_refresh_hint` cannot make us poll
/// it more often than this.
pub const DEFAULT_FEDERATION_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The largest `federation_min_refresh_interval` (the fetchers poll at least once a day).
pub const MAX_FEDERATION_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The path of the default bundle endpoint SPIFFE ID, `spiffe://<td>/meshtrust/server`.
pub const DEFAULT_ENDPOINT_PATH: &str = "/meshtrust/server";
/// The longest hint we accept, in bytes (SPIFFE Workload API §8).
pub const MAX_HINT_LEN: usize = 1024;

/// A validated configuration for one trust domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from: for messages, and the folder relative paths were resolved in.
    pub source: PathBuf,
    /// Our trust domain: the CA signs only IDs in it.
    pub trust_domain: TrustDomain,
    /// Where the SQLite state lives (CA keys, bundle sequence, pinned peer bundles).
    pub data_dir: PathBuf,
    /// How the CA makes keys and how long its certificates live.
    pub ca: CaConfig,
    /// Where we publish our bundle; `None` publishes nothing.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// The SPIFFE Workload API socket.
    pub workload_api: WorkloadApiConfig,
    /// The admin API socket.
    pub admin_api: AdminApiConfig,
    /// The Prometheus endpoint; `None` serves none.
    pub metrics: Option<MetricsConfig>,
    /// `[store]`: where the shared state lives (SQLite in `data_dir` by default).
    pub store: StoreConfig,
    /// One relationship per peer trust domain, in file order; trust domains are unique.
    pub federation: Vec<FederationConfig>,
    /// The shortest poll interval of every peer, whatever its `spiffe_refresh_hint` says
    /// (`federation_min_refresh_interval`): at least 1s, at most a day.
    pub federation_min_refresh_interval: Duration,
    /// Registration entries, in file order; non-empty hints are unique.
    pub entries: Vec<EntryConfig>,
    /// Where node agents connect; `None`: no agents.
    pub agent_api: Option<AgentApiConfig>,
    /// How node agents prove which node they run on.
    pub node_attestation: NodeAttestationConfig,
}

/// `[agent_api]`: the server side of node agents (gRPC over TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Concurrent connections at most (default 10,000).
    pub max_connections: usize,
    /// A TLS handshake must finish within this (default 10 s).
    pub handshake_timeout: Duration,
    /// A connection without an open call for this long is closed (default 60 s).
    pub idle_timeout: Duration,
}

/// `[node_attestation]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAttestationConfig {
    /// Whether join tokens are accepted (default true).
    pub join_token: bool,
    /// PEM roots node certificates must chain to for `x509pop`; `None`: no x509pop.
    pub x509pop_ca_file: Option<PathBuf>,
}

impl Default for NodeAttestationConfig {
    fn default() -> Self {
        Self {
            join_token: true,
            x509pop_ca_file: None,
        }
    }
}

/// `[ca]`: invariant `x509_svid_ttl <= ca_ttl / 2` and `jwt_svid_ttl <= ca_ttl / 2`.
#[derive(Debug, Clone, PartialEq)]
pub struct CaConfig {
    /// The CA key algorithm (workload SVID keys are always ECDSA P-256).
    pub key_type: KeyType,
    /// Lifetime of each CA certificate; rotation prepares the next at 1/2 and activates it at 5/6.
    pub ca_ttl: Duration,
    /// Lifetime of X509-SVIDs (never beyond the issuing CA's NotAfter).
    pub x509_svid_ttl: Duration,
    /// Lifetime of JWT-SVIDs.
    pub jwt_svid_ttl: Duration,
}

/// The CA key algorithm: the CA's own type (`ec-p256`, `ec-p384`, `rsa-2048`).
pub use crate::ca::KeyType;

/// `[bundle_endpoint]`: where and how we publish our bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleEndpointConfig {
    /// The HTTPS listen address.
    pub listen: SocketAddr,
    /// Published as `spiffe_refresh_hint`: at least 1s, whole seconds.
    pub refresh_hint: Duration,
    /// How the endpoint authenticates itself to clients.
    pub profile: EndpointProfile,
}

/// How our bundle endpoint authenticates itself (SPIFFE Federation §5).
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointProfile {
    /// Present an X509-SVID issued by our own CA.
    HttpsSpiffe {
        /// The SVID's ID: in our trust domain, non-root path; no entry may claim it.
        endpoint_spiffe_id: SpiffeId,
    },
    /// Present a Web PKI certificate from files (reloaded when they change).
    HttpsWeb {
        /// PEM certificate chain; existed when the config was parsed.
        cert_file: PathBuf,
        /// PKCS#8 PEM key; existed when the config was parsed.
        key_file: PathBuf,
    },
}

/// `[workload_api]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadApiConfig {
    /// The Unix socket path (fits in `sun_path`).
    pub socket: PathBuf,
}

/// `[admin_api]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminApiConfig {
    /// The Unix socket path (fits in `sun_path`, differs from the Workload API's).
    pub socket: PathBuf,
}

/// `[store]`: the backend of the durable state.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StoreConfig {
    /// One SQLite file in `data_dir` (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by the replicas of one mesh.
    Postgres(PostgresConfig),
}

/// `[store] kind = "postgres"`.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// Where the connection URL comes from.
    pub url: PostgresUrl,
    /// Roots that authenticate the server with `sslmode=verify-full` (else `sslrootcert` in the
    /// URL).
    pub ca_file: Option<PathBuf>,
}

/// The PostgreSQL URL: inline (its password redacted in `Debug`) or read from a file at start.
#[derive(Clone, PartialEq)]
pub enum PostgresUrl {
    /// `url`.
    Inline(String),
    /// `url_file`: read when the daemon starts, so the secret stays out of the config.
    File(PathBuf),
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(url) => f
                .debug_tuple("Inline")
                .field(&crate::store::postgres::redact_url(url))
                .finish(),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// The HTTP listen address (differs from the bundle endpoint's).
    pub listen: SocketAddr,
    /// Why `listen` is not a loopback address (e.g. "scraped by Prometheus over the compose
    /// network"): the metrics are unauthenticated, so `check-config` warns about a non-loopback
    /// address without one. Never empty.
    pub non_loopback_reason: Option<String>,
}

/// One `[[federation]]`: a peer trust domain whose bundle we fetch and pin.
#[derive(Debug, Clone, PartialEq)]
pub struct FederationConfig {
    /// The peer's trust domain, never derived from the URL; not ours.
    pub trust_domain: TrustDomain,
    /// The peer's bundle endpoint: `https`, no userinfo, no fragment.
    pub url: url::Url,
    /// How we authenticate the peer's endpoint.
    pub profile: PeerProfile,
}

/// How we authenticate a peer's bundle endpoint (SPIFFE.md §2, relationship table).
#[derive(Debug, Clone, PartialEq)]
pub enum PeerProfile {
    /// The endpoint presents an X509-SVID with exactly this ID.
    HttpsSpiffe {
        /// In this peer's, our own, or another configured peer's trust domain, so that some
        /// bundle we hold can validate it.
        endpoint_spiffe_id: SpiffeId,
        /// Bundle (SPIFFE JSON or PEM) that validates the first fetch of a self-serving endpoint.
        /// Not checked at parse time: the daemon reads it at start if no bundle is pinned yet.
        bootstrap_bundle: Option<PathBuf>,
    },
    /// The endpoint presents a Web PKI certificate for the URL's host.
    HttpsWeb {
        /// Roots to trust instead of the system's; existed when the config was parsed.
        ca_file: Option<PathBuf>,
    },
}

/// One `[[entry]]`: which workloads get which SPIFFE ID.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryConfig {
    /// In our trust domain, non-root path.
    pub spiffe_id: SpiffeId,
    /// Non-empty; a caller must match all of them.
    pub selectors: Vec<Selector>,
    /// Which peer bundles this workload receives.
    pub federates_with: FederatesWith,
    /// Non-empty, at most [`MAX_HINT_LEN`] bytes, unique across entries; `hint = ""` is `None`.
    pub hint: Option<String>,
    /// Which node agents serve it; `None`: the server's own Workload API socket.
    pub node: Option<NodeScope>,
}

/// `[[entry]] node`: which node agents serve an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeScope {
    /// `"*"`: every node.
    All,
    /// One node, by name (a valid SPIFFE ID path segment).
    Node(String),
}

impl NodeScope {
    /// Whether an agent of `node` serves the entry.
    pub fn includes(&self, node: &str) -> bool {
        match self {
            Self::All => true,
            Self::Node(name) => name == node,
        }
    }
}

impl EntryConfig {
    /// Served by the server's own socket (no `node`).
    pub fn on_server(&self) -> bool {
        self.node.is_none()
    }

    /// Served by the agent of `node`.
    pub fn on_node(&self, node: &str) -> bool {
        self.node.as_ref().is_some_and(|scope| scope.includes(node))
    }
}

/// Which peer bundles an entry's workloads receive.
#[derive(Debug, Clone, PartialEq)]
pub enum FederatesWith {
    /// `["*"]`: every configured peer.
    All,
    /// These configured peers (distinct, not our own trust domain); absent or `[]` is none.
    Only(Vec<TrustDomain>),
}

impl FederatesWith {
    /// Whether the peer `trust_domain`'s bundle goes to this entry's workloads.
    pub fn includes(&self, trust_domain: &TrustDomain) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.contains(trust_domain),
        }
    }
}

/// See [`Config::admin_socket_of`].
///
/// # Errors
/// As [`Config::admin_socket_of`].
pub fn admin_socket_of(path: &Path) -> Result<PathBuf, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError::from_toml(path, &text, &e))?;
    let invalid = |message: &str| ConfigError::Invalid {
        file: path.to_owned(),
        key: "admin_api.socket".to_owned(),
        message: message.to_owned(),
    };
    let socket = table
        .get("admin_api")
        .and_then(|t| t.get("socket"))
        .ok_or_else(|| invalid("missing required key (the admin socket to reach)"))?
        .as_str()
        .ok_or_else(|| invalid("expected a string"))?;
    if socket.is_empty() {
        return Err(invalid("path must not be empty"));
    }
    Ok(path.parent().unwrap_or(Path::new("")).join(socket))
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read, else as [`Config::from_toml`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Validates config text; `source` names it in errors and anchors relative paths.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for TOML errors, unknown keys and wrong value types;
    /// [`ConfigError::Invalid`] for any broken rule or missing required key.
    pub fn from_toml(text: &str, source: &Path) -> Result<Self, ConfigError> {
        let raw = toml::from_str(text).map_err(|e| ConfigError::from_toml(source, text, &e))?;
        validate::validate(raw, source)
    }

    /// The `[admin_api] socket` of the config file at `path`, resolved against its folder as the
    /// daemon resolves it, without validating the rest of the file: what the admin commands
    /// (`status`, `federation ...`) read with `--config`.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read, is not TOML or names no admin socket.
    pub fn admin_socket_of(path: &Path) -> Result<PathBuf, ConfigError> {
        admin_socket_of(path)
    }

    /// The relationship with `trust_domain`, if it is a configured peer.
    pub fn peer(&self, trust_domain: &TrustDomain) -> Option<&FederationConfig> {
        self.federation
            .iter()
            .find(|peer| &peer.trust_domain == trust_domain)
    }
}
