//! The attested node agents as stored (the agent registry, `src/agent_api/registry.rs`): one
//! row per node, written whole. Shared by the SQLite and PostgreSQL backends; replicas that
//! share a PostgreSQL store share the table (`meshtrust agent list` on any of them).

use std::time::SystemTime;

use super::StoreError;
use crate::clock::{from_unix_millis, to_unix_millis};

/// One attested agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// The node name (key).
    pub node: String,
    /// `spiffe://<td>/meshtrust/agent/<node>`.
    pub spiffe_id: String,
    /// `join_token` or `x509pop`.
    pub method: String,
    /// The agent's address as last seen (`ip:port`).
    pub address: String,
    /// When it last attested.
    pub attested_at: SystemTime,
    /// When it last opened a Sync stream.
    pub last_sync: Option<SystemTime>,
    /// Its current agent SVID's NotAfter.
    pub svid_expires_at: SystemTime,
    /// Evicted: refused until it attests again.
    pub evicted: bool,
    /// SHA-256 of the current agent SVID (DER); `None` once evicted.
    pub svid_sha256: Option<[u8; 32]>,
    /// SHA-256 of the SVID it last renewed under (still accepted while it switches).
    pub previous_svid_sha256: Option<[u8; 32]>,
}

/// An unused join token as stored: its SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// The node it attests.
    pub node: String,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

impl JoinTokenRecord {
    pub(super) fn from_row(hash: &[u8], node: String, expires_at: i64) -> Result<Self, StoreError> {
        Ok(Self {
            hash: <[u8; 32]>::try_from(hash)
                .map_err(|_| StoreError::Corrupt("join token hash is not 32 bytes".to_owned()))?,
            node,
            expires_at: from_unix_millis(expires_at),
        })
    }
}

/// The columns in table order, for both backends.
pub(super) const COLUMNS: &str = "node, spiffe_id, method, address, attested_at, last_sync, \
     svid_expires_at, evicted, svid_sha256, previous_svid_sha256";

/// A row as plain values (times in Unix milliseconds).
pub(super) type AgentRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    bool,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn hash_of(bytes: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, StoreError> {
    bytes
        .map(|b| {
            <[u8; 32]>::try_from(b.as_slice())
                .map_err(|_| StoreError::Corrupt("agent svid hash is not 32 bytes".to_owned()))
        })
        .transpose()
}

impl AgentRecord {
    pub(super) fn to_row(&self) -> AgentRow {
        (
            self.node.clone(),
            self.spiffe_id.clone(),
            self.method.clone(),
            self.address.clone(),
            to_unix_millis(self.attested_at),
            self.last_sync.map(to_unix_millis),
            to_unix_millis(self.svid_expires_at),
            self.evicted,
            self.svid_sha256.map(|h| h.to_vec()),
            self.previous_svid_sha256.map(|h| h.to_vec()),
        )
    }

    pub(super) fn from_row(row: AgentRow) -> Result<Self, StoreError> {
        let (node, spiffe_id, method, address, attested, last, expires, evicted, cur, prev) = row;
        Ok(Self {
            node,
            spiffe_id,
            method,
            address,
            attested_at: from_unix_millis(attested),
            last_sync: last.map(from_unix_millis),
            svid_expires_at: from_unix_millis(expires),
            evicted,
            svid_sha256: hash_of(cur)?,
            previous_svid_sha256: hash_of(prev)?,
        })
    }
}
