//! The node agent (`meshtrust agent --config FILE`): one per host, it attests to a server once,
//! holds one push stream of its node's view (entries and the bundles they need), has the
//! workload SVIDs signed from keys it generates itself, and serves the same Workload API module
//! as the server ([`crate::workload_api`], same limits, same `SO_PEERCRED` attestation) from
//! what it synced, through restarts and server outages (the cache in `data_dir`).
//!
//! - [`config`]: the agent's config file; [`cache`]: what `data_dir` keeps (0700/0600, atomic).
//! - [`state`]: held, published and persisted state; [`view`]: node views parsed;
//!   [`issuer`]: the Workload API's issuer from held SVIDs; [`svids`]: keys, CSRs, renewal times.
//! - [`connect`]: gRPC over TLS to one server; [`attest`]: join token and x509pop;
//!   [`sync`]: failover, the sync stream, signing and renewal.
//! - [`status`]: the admin socket and metrics; [`run`]: the wiring.

pub mod attest;
pub mod cache;
pub mod config;
pub mod connect;
pub mod issuer;
pub mod run;
pub mod state;
pub mod status;
pub mod svids;
pub mod sync;
pub mod view;

pub use config::AgentConfig;
pub use run::run;

/// Why the agent, or one of its steps, failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A config-level problem found at start (exit 64); the message names the key.
    #[error("{0}")]
    Usage(String),
    /// `data_dir` cannot be made or secured.
    #[error("data_dir {0}")]
    DataDir(String),
    /// The cache cannot be read or written.
    #[error("cache: {0}")]
    Cache(String),
    /// A key or CSR could not be made.
    #[error("key: {0}")]
    Key(String),
    /// A certificate from the server is unusable.
    #[error("svid from the server: {0}")]
    BadSvid(String),
    /// A node view is malformed (nothing of it applied).
    #[error("node view: {0}")]
    BadView(String),
    /// The TLS client could not be set up.
    #[error("tls: {0}")]
    Tls(String),
    /// The server could not be reached, or the connection failed.
    #[error("connection: {0}")]
    Connect(String),
    /// The server refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The server refused the agent SVID (evicted, or unknown to that replica).
    #[error("agent svid refused: {0}")]
    SvidRefused(String),
    /// No agent SVID (attest first).
    #[error("not attested")]
    NotAttested,
    /// A listener could not be bound.
    #[error("cannot listen on {what} {at}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address or path.
        at: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<tonic::Status> for AgentError {
    fn from(s: tonic::Status) -> Self {
        attest::refused(s)
    }
}
