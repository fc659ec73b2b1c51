//! The embedded backend: one SQLite file in `data_dir`, WAL mode, synchronous=FULL,
//! secure_delete on.
//!
//! The folder is made 0700 and the database 0600 (SQLite gives its `-wal`/`-shm` files the
//! database file's mode). Writes are single transactions. Keys do not outlive their rows:
//! `secure_delete` zeroes deleted content and freed pages, and every CA write ends with a
//! `wal_checkpoint(TRUNCATE)`, so the pre-images the WAL held (an old key's pages) are copied
//! over and the WAL file emptied, not left to linger until SQLite reuses it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    AgentRecord, AuthorityState, CaRecord, JoinTokenRecord, PinnedBundle, Storage, StoreError,
    StoredAuthority, ensure_data_dir,
};
use crate::clock::{from_unix_millis, to_unix_millis};
use crate::spiffe_id::TrustDomain;
use crate::svid::PrivateKey;

/// The database file's name inside `data_dir`.
pub const DB_FILE: &str = "meshtrust.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS authority (
    generation  INTEGER PRIMARY KEY,
    state       TEXT    NOT NULL,
    issued_at   INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    prune_after INTEGER,
    ca_cert     BLOB    NOT NULL,
    ca_key      BLOB    NOT NULL,
    jwt_kid     TEXT    NOT NULL,
    jwt_key     BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS own_bundle (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    sequence INTEGER NOT NULL,
    digest   BLOB    NOT NULL,
    json     BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS pinned_bundle (
    trust_domain TEXT PRIMARY KEY,
    json         BLOB    NOT NULL,
    sequence     INTEGER,
    fetched_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agent (
    node                 TEXT PRIMARY KEY,
    spiffe_id            TEXT    NOT NULL,
    method               TEXT    NOT NULL,
    address              TEXT    NOT NULL,
    attested_at          INTEGER NOT NULL,
    last_sync            INTEGER,
    svid_expires_at      INTEGER NOT NULL,
    evicted              INTEGER NOT NULL,
    svid_sha256          BLOB,
    previous_svid_sha256 BLOB
);
CREATE TABLE IF NOT EXISTS join_token (
    hash       BLOB PRIMARY KEY,
    node       TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
";

/// SQLite-backed [`Storage`].
#[derive(Debug)]
pub struct SqliteStorage {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) the state in `data_dir`.
    ///
    /// # Errors
    /// When the folder or file cannot be created or secured, or the database cannot be opened.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        ensure_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err(&path))?;
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Per connection, not stored in the file: set on every open.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_ca(conn: &Connection) -> Result<Option<CaRecord>, StoreError> {
    let own: Option<(i64, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT sequence, digest, json FROM own_bundle WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((sequence, digest, json)) = own else {
        return Ok(None);
    };
    let mut stmt = conn.prepare(
        "SELECT generation, state, issued_at, not_after, prune_after, ca_cert, ca_key, jwt_kid, jwt_key
         FROM authority ORDER BY generation",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Vec<u8>>(5)?,
            r.get::<_, Vec<u8>>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, Vec<u8>>(8)?,
        ))
    })?;
    let mut authorities = Vec::new();
    for row in rows {
        let (
            generation,
            state,
            issued_at,
            not_after,
            prune_after,
            ca_cert,
            ca_key,
            jwt_kid,
            jwt_key,
        ) = row?;
        authorities.push(StoredAuthority {
            generation: u64::try_from(generation)
                .map_err(|_| StoreError::Corrupt("negative generation".into()))?,
            state: AuthorityState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("authority state {state:?}")))?,
            issued_at: from_unix_millis(issued_at),
            not_after: from_unix_millis(not_after),
            prune_after: prune_after.map(from_unix_millis),
            ca_cert,
            ca_key: PrivateKey::from_pkcs8_der(ca_key),
            jwt_kid,
            jwt_key: PrivateKey::from_pkcs8_der(jwt_key),
        });
    }
    Ok(Some(CaRecord {
        authorities,
        bundle_sequence: u64::try_from(sequence)
            .map_err(|_| StoreError::Corrupt("negative sequence".into()))?,
        bundle_digest: digest,
        bundle_json: json,
    }))
}

fn write_ca(conn: &Connection, record: &CaRecord) -> Result<(), StoreError> {
    conn.execute("DELETE FROM authority", [])?;
    let mut insert = conn.prepare(
        "INSERT INTO authority
         (generation, state, issued_at, not_after, prune_after, ca_cert, ca_key, jwt_kid, jwt_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for a in &record.authorities {
        insert.execute(params![
            i64::try_from(a.generation).map_err(|_| StoreError::Corrupt("generation".into()))?,
            a.state.as_str(),
            to_unix_millis(a.issued_at),
            to_unix_millis(a.not_after),
            a.prune_after.map(to_unix_millis),
            a.ca_cert,
            a.ca_key.pkcs8_der(),
            a.jwt_kid,
            a.jwt_key.pkcs8_der(),
        ])?;
    }
    conn.execute(
        "INSERT INTO own_bundle (id, sequence, digest, json) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET sequence = ?1, digest = ?2, json = ?3",
        params![
            i64::try_from(record.bundle_sequence)
                .map_err(|_| StoreError::Corrupt("sequence".into()))?,
            record.bundle_digest,
            record.bundle_json
        ],
    )?;
    Ok(())
}

/// Copies the WAL into the database and empties it, so that no old page image (an authority
/// just deleted, its key zeroed in the new page by `secure_delete`) stays in the `-wal` file.
/// CA writes are rare (a few per CA lifetime). A reader holding an old snapshot (`bundle show`)
/// can make it stop short: the next write tries again, and nothing is wrong meanwhile.
fn truncate_wal(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    match result {
        Ok(0) => {}
        Ok(_) => tracing::debug!(
            "wal checkpoint stopped short (a reader is active); retried on the next write"
        ),
        Err(e) => tracing::warn!(error = %e, "wal checkpoint failed"),
    }
}

impl Storage for SqliteStorage {
    fn load_ca(&self) -> Result<Option<CaRecord>, StoreError> {
        read_ca(&self.conn())
    }

    fn init_ca(&self, record: &CaRecord) -> Result<CaRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(existing) = read_ca(&tx)? {
            return Ok(existing);
        }
        write_ca(&tx, record)?;
        tx.commit()?;
        Ok(record.clone())
    }

    fn save_ca(&self, record: &CaRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        write_ca(&tx, record)?;
        tx.commit()?;
        truncate_wal(&conn);
        Ok(())
    }

    fn load_pinned(&self) -> Result<Vec<PinnedBundle>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT trust_domain, json, sequence, fetched_at FROM pinned_bundle ORDER BY trust_domain",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (td, bundle_json, sequence, fetched_at) = row?;
            out.push(PinnedBundle {
                trust_domain: TrustDomain::new(&td)
                    .map_err(|e| StoreError::Corrupt(format!("pinned trust domain {td:?}: {e}")))?,
                bundle_json,
                sequence: sequence.and_then(|s| u64::try_from(s).ok()),
                fetched_at: from_unix_millis(fetched_at),
            });
        }
        Ok(out)
    }

    fn save_pinned(&self, b: &PinnedBundle) -> Result<(), StoreError> {
        let conn = self.conn();
        let changed = conn.execute(
            "INSERT INTO pinned_bundle (trust_domain, json, sequence, fetched_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(trust_domain) DO UPDATE SET json = ?2, sequence = ?3, fetched_at = ?4
             WHERE pinned_bundle.sequence IS NULL OR excluded.sequence IS NULL
                OR excluded.sequence >= pinned_bundle.sequence",
            params![
                b.trust_domain.as_str(),
                b.bundle_json,
                b.sequence.and_then(|s| i64::try_from(s).ok()),
                to_unix_millis(b.fetched_at)
            ],
        )?;
        if changed == 0 {
            let pinned: Option<i64> = conn.query_row(
                "SELECT sequence FROM pinned_bundle WHERE trust_domain = ?1",
                params![b.trust_domain.as_str()],
                |r| r.get(0),
            )?;
            return Err(StoreError::SequenceRollback {
                pinned: pinned.and_then(|p| u64::try_from(p).ok()).unwrap_or(0),
                received: b.sequence.unwrap_or(0),
            });
        }
        Ok(())
    }

    fn delete_pinned(&self, trust_domain: &TrustDomain) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM pinned_bundle WHERE trust_domain = ?1",
            params![trust_domain.as_str()],
        )?;
        Ok(())
    }

    fn load_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM agent ORDER BY node",
            super::agents::COLUMNS
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(AgentRecord::from_row(row?)?);
        }
        Ok(out)
    }

    fn save_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
        let (node, id, method, address, attested, last, expires, evicted, cur, prev) =
            record.to_row();
        self.conn().execute(
            &format!(
                "INSERT OR REPLACE INTO agent ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                super::agents::COLUMNS
            ),
            params![node, id, method, address, attested, last, expires, evicted, cur, prev],
        )?;
        Ok(())
    }

    fn save_join_token(&self, t: &JoinTokenRecord, now: SystemTime) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM join_token WHERE expires_at <= ?1",
            params![to_unix_millis(now)],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO join_token (hash, node, expires_at) VALUES (?1, ?2, ?3)",
            params![t.hash.to_vec(), t.node, to_unix_millis(t.expires_at)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn take_join_token(&self, hash: &[u8; 32]) -> Result<Option<JoinTokenRecord>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "DELETE FROM join_token WHERE hash = ?1 RETURNING node, expires_at",
                params![hash.to_vec()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        row.map(|(node, expires)| JoinTokenRecord::from_row(hash, node, expires))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn authority(generation: u64, fill: u8) -> StoredAuthority {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        StoredAuthority {
            generation,
            state: AuthorityState::Active,
            issued_at: t,
            not_after: t,
            prune_after: None,
            ca_cert: vec![0xc0; 400],
            ca_key: PrivateKey::from_pkcs8_der(vec![fill; 138]),
            jwt_kid: format!("kid-{generation}"),
            jwt_key: PrivateKey::from_pkcs8_der(vec![fill ^ 0xff; 138]),
        }
    }

    fn record(authorities: Vec<StoredAuthority>) -> CaRecord {
        CaRecord {
            authorities,
            bundle_sequence: 1,
            bundle_digest: vec![0; 32],
            bundle_json: b"{}".to_vec(),
        }
    }

    fn found(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn secure_delete_is_on() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let storage = SqliteStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let on: i64 = storage
            .conn()
            .query_row("PRAGMA secure_delete", [], |r| r.get(0))
            .unwrap_or(0);
        assert_eq!(on, 1);
    }

    /// The pruned authority here is the newest (its cell lies in the page's middle, where the
    /// rewrite of the others does not reach): without `secure_delete` its key stays in the
    /// page's free space; with it the bytes are zeroed.
    #[test]
    fn a_pruned_key_leaves_no_bytes_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let storage = SqliteStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let pruned = [0x5a; 138];
        storage
            .init_ca(&record(vec![authority(1, 0x11), authority(2, 0x5a)]))
            .unwrap_or_else(|e| panic!("{e}"));
        storage
            .save_ca(&record(vec![authority(1, 0x11)]))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(storage);
        let db = std::fs::read(dir.path().join(DB_FILE)).unwrap_or_default();
        assert!(found(&db, &[0x11; 138]), "the kept key is there");
        for name in [DB_FILE, "meshtrust.db-wal"] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap_or_default();
            assert!(!found(&bytes, &pruned), "the pruned CA key is in {name}");
        }
    }
}
