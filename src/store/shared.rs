//! What replicas of one mesh share through one store: every replica's published authorities
//! (certificates and JWT public keys, never private keys), the one bundle document with its
//! `spiffe_sequence`, and the replicas themselves (id, address, heartbeat).
//!
//! Each replica writes only its own authorities; the bundle is the union of all of them and
//! is written in the same transaction, which raises the sequence once when the union changed.
//! A write names the sequence it was computed from, so two replicas can never overwrite each
//! other's change: the second gets [`super::StoreError::Conflict`], reads again and retries.

use std::time::SystemTime;

use super::{AuthorityState, CaRecord};

/// One replica's authority as the shared store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaAuthority {
    /// The replica whose `data_dir` holds its key.
    pub replica: String,
    /// Orders that replica's authorities.
    pub generation: u64,
    /// Life-cycle state.
    pub state: AuthorityState,
    /// When it was generated (and published).
    pub issued_at: SystemTime,
    /// The CA certificate's NotAfter.
    pub not_after: SystemTime,
    /// For retired authorities: when the last SVID it signed expires.
    pub prune_after: Option<SystemTime>,
    /// CA certificate, DER.
    pub ca_cert: Vec<u8>,
    /// This authority alone as a SPIFFE bundle document (its CA and its JWT key), so that
    /// other replicas can publish its JWT key; empty for rows written before replicas.
    pub jwks: Vec<u8>,
}

/// A replica of the mesh as registered in the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Its stable id (kept in its `data_dir`).
    pub id: String,
    /// The address it advertises (its bundle endpoint), empty if none.
    pub address: String,
    /// When it first registered.
    pub started_at: SystemTime,
    /// Its last heartbeat.
    pub last_seen: SystemTime,
}

/// The shared state as read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct SharedBundle {
    /// The bundle's `spiffe_sequence`; 0 while there is no bundle yet.
    pub sequence: u64,
    /// SHA-256 of the bundle content without its sequence.
    pub digest: Vec<u8>,
    /// The bundle document every replica serves for this sequence.
    pub json: Vec<u8>,
    /// Every replica's authorities.
    pub authorities: Vec<ReplicaAuthority>,
    /// The registered replicas.
    pub replicas: Vec<ReplicaInfo>,
}

/// One replica's write: its authorities (with keys, which stay in its `data_dir`), the new
/// bundle, and authorities of replicas dead for good whose SVIDs have all expired.
#[derive(Debug, Clone)]
pub struct ReplicaUpdate {
    /// This replica's authorities and the new bundle (sequence, digest, document).
    pub record: CaRecord,
    /// For each of `record.authorities`, in order: that authority alone as a bundle document.
    pub jwks: Vec<Vec<u8>>,
    /// The sequence the update was computed from (0: no bundle yet).
    pub base_sequence: u64,
    /// Other replicas' authorities to remove: (replica, generation).
    pub prune: Vec<(String, u64)>,
}

/// How often a replica renews its heartbeat.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// A replica whose heartbeat is older than this is presumed dead: its authorities are pruned
/// by the others once every SVID it may have signed has expired.
pub const REPLICA_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
