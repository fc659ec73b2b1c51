//! Durable state behind one small interface, [`Storage`]: the CA authorities with the own bundle's
//! sequence, and the pinned peer bundles.
//!
//! Every write is one transaction, so `kill -9` at any moment leaves either the old or the new
//! state. The interface is synchronous and coarse (whole records, no queries); [`sqlite`] is
//! the embedded backend, [`postgres`] the shared one (`[store] kind = "postgres"`), which keeps
//! CA private keys in `data_dir`, never in the database.

pub mod agents;
pub mod lock;
pub mod marker;
pub mod postgres;
pub mod shared;
pub mod sqlite;

pub use shared::{ReplicaAuthority, ReplicaInfo, ReplicaUpdate, SharedBundle};

use std::fmt;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::SystemTime;

pub use agents::{AgentRecord, JoinTokenRecord};

use crate::spiffe_id::TrustDomain;
use crate::svid::PrivateKey;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL refused a query (the server's message, with its SQLSTATE).
    #[error("postgres: {0}")]
    Postgres(String),
    /// The database cannot be reached now (connection refused, timed out, pool exhausted):
    /// what needs it waits and is retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A pin whose `spiffe_sequence` is below the stored one for that peer: refused by the
    /// store itself, so two writers (replicas) can never pin out of order.
    #[error("spiffe_sequence went backwards: pinned {pinned}, received {received}")]
    SequenceRollback {
        /// The stored sequence.
        pinned: u64,
        /// The refused one.
        received: u64,
    },
    /// The `[store]` settings cannot be used (URL, TLS, schema newer than this binary).
    #[error("store config: {0}")]
    Config(String),
    /// Creating or securing the data directory or database file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The shared bundle changed since it was read (another replica wrote first): nothing was
    /// written; read again and retry.
    #[error("the shared bundle moved on (sequence {stored}, expected {expected}): retry")]
    Conflict {
        /// The sequence stored now.
        stored: u64,
        /// The sequence the write was based on.
        expected: u64,
    },
    /// Stored data that cannot be read back.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// Another process holds the `data_dir` lock ([`lock::DataDirLock`]).
    #[error(
        "data_dir in use by {} ({dir}): another meshtrust daemon or command runs on it; \
         one data_dir serves one daemon",
        pid.map_or_else(|| "another process (pid not written yet)".to_owned(), |p| format!("pid {p}"))
    )]
    InUse {
        /// The data dir.
        dir: String,
        /// The owner's pid, from the pid file.
        pid: Option<u32>,
    },
    /// The data dir held a CA ([`marker`]) and its database has none any more.
    #[error(
        "{dir}/{db}: {why}, but this data_dir held a CA (marked by {dir}/{marker}): the CA state \
         was lost. Starting would silently create a new CA that no peer trusts and that no SVID \
         in use chains to. Restore the database from a backup, or, to really start over with a \
         new CA (every peer must then be given the new bundle), run once with --init-new-ca",
        db = sqlite::DB_FILE,
        marker = marker::MARKER_FILE
    )]
    CaLost {
        /// The data dir.
        dir: String,
        /// What was found.
        why: &'static str,
    },
}

/// An error and its causes, `a: b: c` (tokio-postgres and deadpool keep the server's message
/// in the sources; their own `Display` says only "db error").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl From<tokio_postgres::Error> for StoreError {
    /// A failure without a SQLSTATE (closed connection, I/O, TLS) means the database is
    /// unavailable; a query the server refused is [`StoreError::Postgres`].
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() || e.code().is_none() {
            Self::Unavailable(error_chain(&e))
        } else {
            Self::Postgres(error_chain(&e))
        }
    }
}

/// Creates `data_dir` if missing and makes it 0700 (it holds CA keys). Only `data_dir` itself
/// is private: the folders above it are created like `mkdir -p` does (the umask's mode), since
/// they often hold the sockets workloads must reach too.
///
/// # Errors
/// [`StoreError::Io`].
pub fn ensure_data_dir(data_dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: data_dir.display().to_string(),
        source,
    };
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io)?;
    }
    match DirBuilder::new().mode(0o700).create(data_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && data_dir.is_dir() => {}
        Err(e) => return Err(io(e)),
    }
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Where an authority is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityState {
    /// Published in the bundle, not signing yet.
    Prepared,
    /// Published and signing.
    Active,
    /// Published, no longer signing; leaves the bundle at `prune_after`.
    Retired,
}

impl AuthorityState {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prepared" => Some(Self::Prepared),
            "active" => Some(Self::Active),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

/// One CA generation as stored: X.509 CA and JWT signing key, rotated together.
#[derive(Clone)]
pub struct StoredAuthority {
    /// Increases by one per new authority; orders the bundle.
    pub generation: u64,
    /// Life-cycle state.
    pub state: AuthorityState,
    /// When it was generated (and so first published).
    pub issued_at: SystemTime,
    /// The CA certificate's NotAfter.
    pub not_after: SystemTime,
    /// For retired authorities: when the last SVID it signed has expired.
    pub prune_after: Option<SystemTime>,
    /// CA certificate, DER.
    pub ca_cert: Vec<u8>,
    /// CA private key, PKCS#8 DER.
    pub ca_key: PrivateKey,
    /// JWT key ID.
    pub jwt_kid: String,
    /// JWT signing key, PKCS#8 DER.
    pub jwt_key: PrivateKey,
}

impl fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredAuthority")
            .field("generation", &self.generation)
            .field("state", &self.state)
            .field("not_after", &self.not_after)
            .field("prune_after", &self.prune_after)
            .field("ca_key", &self.ca_key)
            .field("jwt_kid", &self.jwt_kid)
            .field("jwt_key", &self.jwt_key)
            .finish_non_exhaustive()
    }
}

/// The CA's whole durable state, written at once.
#[derive(Debug, Clone)]
pub struct CaRecord {
    /// All authorities still in the bundle.
    pub authorities: Vec<StoredAuthority>,
    /// The own bundle's `spiffe_sequence`.
    pub bundle_sequence: u64,
    /// SHA-256 of the bundle content without its sequence: a change bumps the sequence.
    pub bundle_digest: Vec<u8>,
    /// The published bundle document, as served.
    pub bundle_json: Vec<u8>,
}

/// A peer's pinned bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedBundle {
    /// The configured trust domain it is pinned under.
    pub trust_domain: TrustDomain,
    /// Our canonical SPIFFE bundle JSON of the usable keys.
    pub bundle_json: Vec<u8>,
    /// The peer's `spiffe_sequence`, if it sent one.
    pub sequence: Option<u64>,
    /// When it was fetched.
    pub fetched_at: SystemTime,
}

/// Who fetches a peer, among replicas sharing a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's replica id.
    pub holder: String,
    /// When it lapses unless renewed (the database's clock).
    pub expires_at: SystemTime,
    /// Whether this call made this replica the holder (it was free, expired or another's).
    pub acquired: bool,
}

/// Whether the store can be reached now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// The last call or probe succeeded.
    Available,
    /// It cannot be reached: what the daemon holds is served, changes wait and are retried.
    Unavailable(String),
}

/// Durable state. Implementations make every call atomic.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str {
        "sqlite"
    }
    /// Reachability now (a local file always is).
    fn health(&self) -> StoreHealth {
        StoreHealth::Available
    }
    /// Call counters and latency, for a shared store.
    fn metrics(&self) -> Option<std::sync::Arc<crate::metrics::store::StoreMetrics>> {
        None
    }
    /// The CA state, if any.
    ///
    /// # Errors
    /// On database failure or unreadable rows.
    fn load_ca(&self) -> Result<Option<CaRecord>, StoreError>;
    /// Stores `record` only if no CA state exists yet, and returns the state that is stored
    /// afterwards (ours, or the one another process wrote first).
    ///
    /// # Errors
    /// On database failure.
    fn init_ca(&self, record: &CaRecord) -> Result<CaRecord, StoreError>;
    /// Replaces the CA state.
    ///
    /// # Errors
    /// On database failure.
    fn save_ca(&self, record: &CaRecord) -> Result<(), StoreError>;
    /// Every pinned peer bundle.
    ///
    /// # Errors
    /// On database failure.
    fn load_pinned(&self) -> Result<Vec<PinnedBundle>, StoreError>;
    /// Pins (inserts or replaces) a peer bundle, unless both it and the stored one carry a
    /// sequence and its is lower (checked in the same statement as the write).
    ///
    /// # Errors
    /// [`StoreError::SequenceRollback`], or on database failure.
    fn save_pinned(&self, bundle: &PinnedBundle) -> Result<(), StoreError>;
    /// Forgets a peer's pinned bundle (relationship removed or reset).
    ///
    /// # Errors
    /// On database failure.
    fn delete_pinned(&self, trust_domain: &TrustDomain) -> Result<(), StoreError>;
    /// Every attested node agent (the agent registry).
    ///
    /// # Errors
    /// On database failure or unreadable rows.
    fn load_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// Inserts or replaces the agent of `record.node`.
    ///
    /// # Errors
    /// On database failure.
    fn save_agent(&self, record: &AgentRecord) -> Result<(), StoreError>;

    /// This replica's id, when the store is shared by replicas of one mesh ([`shared`]);
    /// `None` for a store of one daemon. With an id, the CA publishes through
    /// [`Storage::load_shared`] and [`Storage::publish`] instead of `save_ca`.
    fn replica_id(&self) -> Option<&str> {
        None
    }
    /// The shared bundle with every replica's authorities, and the replicas.
    ///
    /// # Errors
    /// On database failure; [`StoreError::Config`] on a store that is not shared.
    fn load_shared(&self) -> Result<SharedBundle, StoreError> {
        Err(StoreError::Config(format!(
            "the {} store is not shared by replicas",
            self.kind()
        )))
    }
    /// Writes this replica's authorities and the shared bundle in one transaction, unless the
    /// shared bundle's sequence is no longer `update.base_sequence` ([`StoreError::Conflict`]).
    ///
    /// # Errors
    /// [`StoreError::Conflict`], or on database failure.
    fn publish(&self, update: &ReplicaUpdate) -> Result<(), StoreError> {
        let _ = update;
        Err(StoreError::Config(format!(
            "the {} store is not shared by replicas",
            self.kind()
        )))
    }
    /// Called by the serving daemon (not by commands opening the store beside it): registers
    /// this replica with the address it advertises (its bundle endpoint, or empty) and starts
    /// its heartbeat and its listening for the others' changes.
    fn announce(&self, address: &str) {
        let _ = address;
    }
    /// Takes or renews, for `ttl`, the lease to fetch `peer`, unless another replica holds
    /// it unexpired; returns who holds it now. `None`: the store is not shared, every peer is
    /// fetched by this daemon.
    ///
    /// # Errors
    /// On database failure.
    fn fetch_lease(
        &self,
        peer: &TrustDomain,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let _ = (peer, ttl);
        Ok(None)
    }
    /// Every peer's fetch lease (trust domain, lease).
    ///
    /// # Errors
    /// On database failure.
    fn fetch_leases(&self) -> Result<Vec<(String, Lease)>, StoreError> {
        Ok(Vec::new())
    }
    /// A counter raised whenever another replica may have changed the shared state (a
    /// notification, or a reconnect after which some may have been missed).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Stores an unused join token by its SHA-256 (never the token), forgetting expired ones.
    ///
    /// # Errors
    /// On database failure.
    fn save_join_token(&self, token: &JoinTokenRecord, now: SystemTime) -> Result<(), StoreError>;
    /// Removes the join token with SHA-256 `hash` and returns it, in one statement: of two
    /// replicas consuming one token at once, exactly one gets it.
    ///
    /// # Errors
    /// On database failure.
    fn take_join_token(&self, hash: &[u8; 32]) -> Result<Option<JoinTokenRecord>, StoreError>;
}
