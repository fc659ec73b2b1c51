//! The shared backend: one PostgreSQL database for the replicas of one mesh
//! (`[store] kind = "postgres"`).
//!
//! The [`Storage`] interface is synchronous; tokio-postgres is not. Each [`PostgresStorage`]
//! owns a small runtime (one worker) that drives the pool's connections; a call runs its query
//! there and waits for the answer, so it works from plain threads and from inside the daemon's
//! runtime alike (blocking the caller for one round trip, as a SQLite write does). Every call
//! has a deadline: when the database cannot be reached the call fails with
//! [`StoreError::Unavailable`] instead of hanging.
//!
//! CA private keys never enter the database: they are files in this replica's `data_dir`
//! ([`keys`]); the rows hold the certificates.

mod bundle;
pub mod connect;
pub mod keys;
mod lease;
pub mod replicas;
pub mod schema;

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::GenericClient;

use super::{
    AgentRecord, AuthorityState, CaRecord, JoinTokenRecord, PinnedBundle, Storage, StoreError,
    StoreHealth, StoredAuthority, agents,
};
use crate::clock::{from_unix_millis, to_unix_millis};
use crate::spiffe_id::TrustDomain;

use crate::metrics::store::{CallOutcome, StoreMetrics};
pub use connect::{ConnectOptions, redact_url};
use keys::KeyDir;

/// How long one storage call may take before the store counts as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the database is probed, so that status and `/readyz` see an outage (and the
/// end of one) even when nothing is written.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The advisory lock serialising CA writes (`init_ca`, `save_ca`) across replicas.
const CA_LOCK: i64 = 0x6d65_7368_0000_00ca;

/// PostgreSQL-backed [`Storage`].
#[derive(Debug)]
pub struct PostgresStorage {
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    keys: KeyDir,
    target: String,
    health: Arc<Mutex<StoreHealth>>,
    metrics: Arc<StoreMetrics>,
    /// This replica's id ([`replicas::replica_id`]).
    replica: String,
    /// The address it advertises.
    address: replicas::Address,
    /// Raised on each notification from another replica.
    changes: tokio::sync::watch::Receiver<u64>,
    /// What the serving daemon's [`Storage::announce`] starts (heartbeat and listener); taken
    /// then, so commands beside it (`bundle show`) never register or listen.
    serving: Mutex<Option<replicas::Serving>>,
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime: let it go instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A pool failure: the connection could not be made (or the pool waited too long).
fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(super::error_chain(&e))
}

fn i64_of(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range")))
}

fn u64_of(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}")))
}

impl PostgresStorage {
    /// Connects, creates or migrates the schema, and keeps this replica's CA keys in
    /// `data_dir/ca-keys`.
    ///
    /// # Errors
    /// [`StoreError::Config`] for a bad URL or CA file or a too-new schema,
    /// [`StoreError::Unavailable`] when the database cannot be reached, else the failure.
    pub fn open(options: &ConnectOptions, data_dir: &Path) -> Result<Self, StoreError> {
        let keys = KeyDir::open(data_dir)?;
        let tls = options.tls()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("meshtrust-postgres")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                path: "postgres runtime".into(),
                source,
            })?;
        let manager = Manager::from_config(
            options.config.clone(),
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(connect::CONNECT_TIMEOUT))
            .recycle_timeout(Some(connect::CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let replica = replicas::replica_id(data_dir)?;
        let (changes_tx, changes) = tokio::sync::watch::channel(0);
        let storage = Self {
            rt: Some(rt),
            pool,
            keys,
            target: options.redacted.clone(),
            health: Arc::new(Mutex::new(StoreHealth::Available)),
            metrics: Arc::new(StoreMetrics::default()),
            replica,
            address: replicas::Address::default(),
            changes,
            serving: Mutex::new(Some(replicas::Serving {
                config: options.config.clone(),
                tls: options.tls()?,
                changes: changes_tx,
            })),
        };
        let found = storage.call(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            schema::migrate(&mut client).await
        })?;
        if found < schema::current() {
            tracing::info!(
                database = %storage.target,
                from = found,
                to = schema::current(),
                "store schema created or migrated"
            );
        }
        storage.adopt_legacy_rows()?;
        storage.spawn_probe();
        Ok(storage)
    }

    /// Probes the database every [`PROBE_INTERVAL`] on this store's runtime (ends with it).
    fn spawn_probe(&self) {
        let Some(rt) = &self.rt else { return };
        let pool = self.pool.clone();
        let health = self.health.clone();
        let target = self.target.clone();
        let metrics = self.metrics.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let probe = async {
                    let client = pool.get().await.map_err(pool_err)?;
                    client.simple_query("SELECT 1").await?;
                    Ok::<_, StoreError>(())
                };
                let outcome = tokio::time::timeout(connect::CONNECT_TIMEOUT, probe)
                    .await
                    .unwrap_or_else(|_| Err(unavailable("the database did not answer in time")));
                record_health(&health, &metrics, &target, &outcome);
            }
        });
    }

    /// The database, password redacted.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `f` on this store's runtime and waits for it, with [`CALL_TIMEOUT`].
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| unavailable("store closed"))?;
        let fut = f(self.pool.clone());
        let started = std::time::Instant::now();
        let (tx, rx) = mpsc::sync_channel(1);
        rt.spawn(async move {
            let out = tokio::time::timeout(CALL_TIMEOUT, fut)
                .await
                .unwrap_or_else(|_| Err(unavailable("the database did not answer in time")));
            let _ = tx.send(out);
        });
        let out = rx
            .recv()
            .unwrap_or_else(|_| Err(unavailable("store task ended")));
        self.metrics.observe(
            match &out {
                Ok(_) => CallOutcome::Ok,
                Err(StoreError::Unavailable(_)) => CallOutcome::Unavailable,
                Err(_) => CallOutcome::Error,
            },
            started.elapsed(),
        );
        record_health(&self.health, &self.metrics, &self.target, &out);
        out
    }

    fn attach_keys(&self, rows: Vec<AuthorityRow>) -> Result<Vec<StoredAuthority>, StoreError> {
        rows.into_iter()
            .map(|r| {
                let (ca_key, jwt_key) = self.keys.load(&r.ca_cert)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "authority {} is in the database but its key is not in this data_dir \
                         ({}/{}.*.pk8)",
                        r.generation,
                        keys::KEY_DIR,
                        keys::stem(&r.ca_cert)
                    ))
                })?;
                Ok(StoredAuthority {
                    generation: r.generation,
                    state: r.state,
                    issued_at: r.issued_at,
                    not_after: r.not_after,
                    prune_after: r.prune_after,
                    ca_cert: r.ca_cert,
                    ca_key,
                    jwt_kid: r.jwt_kid,
                    jwt_key,
                })
            })
            .collect()
    }

    fn record(&self, raw: RawRecord) -> Result<CaRecord, StoreError> {
        Ok(CaRecord {
            authorities: self.attach_keys(raw.authorities)?,
            bundle_sequence: raw.sequence,
            bundle_digest: raw.digest,
            bundle_json: raw.json,
        })
    }

    fn prune_keys(&self, record: &CaRecord) {
        let keep: HashSet<String> = record
            .authorities
            .iter()
            .map(|a| keys::stem(&a.ca_cert))
            .collect();
        self.keys.retain(&keep);
    }
}

/// Notes a call's outcome: an unavailable store, or its return (logged once per change).
fn record_health<T>(
    health: &Mutex<StoreHealth>,
    metrics: &StoreMetrics,
    target: &str,
    outcome: &Result<T, StoreError>,
) {
    let next = match outcome {
        Err(StoreError::Unavailable(why)) => StoreHealth::Unavailable(why.clone()),
        Err(_) => return,
        Ok(_) => StoreHealth::Available,
    };
    let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
    match (&*h, &next) {
        (StoreHealth::Available, StoreHealth::Unavailable(why)) => {
            metrics.transition();
            tracing::warn!(database = %target, error = %why, "store unavailable: serving what is held, changes wait");
        }
        (StoreHealth::Unavailable(_), StoreHealth::Available) => {
            metrics.transition();
            tracing::info!(database = %target, "store available again");
        }
        _ => {}
    }
    *h = next;
}

/// An authority row without its keys.
#[derive(Debug)]
struct AuthorityRow {
    generation: u64,
    state: AuthorityState,
    issued_at: std::time::SystemTime,
    not_after: std::time::SystemTime,
    prune_after: Option<std::time::SystemTime>,
    ca_cert: Vec<u8>,
    jwt_kid: String,
}

/// The CA state as the database holds it.
#[derive(Debug)]
struct RawRecord {
    authorities: Vec<AuthorityRow>,
    sequence: u64,
    digest: Vec<u8>,
    json: Vec<u8>,
}

/// The columns written for one authority (owned, so it can move into the store's task).
#[derive(Debug)]
struct AuthorityParams {
    generation: i64,
    state: &'static str,
    issued_at: i64,
    not_after: i64,
    prune_after: Option<i64>,
    ca_cert: Vec<u8>,
    jwt_kid: String,
}

#[derive(Debug)]
struct RecordParams {
    authorities: Vec<AuthorityParams>,
    sequence: i64,
    digest: Vec<u8>,
    json: Vec<u8>,
}

fn params_of(record: &CaRecord) -> Result<RecordParams, StoreError> {
    Ok(RecordParams {
        authorities: record
            .authorities
            .iter()
            .map(|a| {
                Ok(AuthorityParams {
                    generation: i64_of(a.generation, "generation")?,
                    state: a.state.as_str(),
                    issued_at: to_unix_millis(a.issued_at),
                    not_after: to_unix_millis(a.not_after),
                    prune_after: a.prune_after.map(to_unix_millis),
                    ca_cert: a.ca_cert.clone(),
                    jwt_kid: a.jwt_kid.clone(),
                })
            })
            .collect::<Result<_, StoreError>>()?,
        sequence: i64_of(record.bundle_sequence, "sequence")?,
        digest: record.bundle_digest.clone(),
        json: record.bundle_json.clone(),
    })
}

async fn read_ca(c: &impl GenericClient, replica: &str) -> Result<Option<RawRecord>, StoreError> {
    let Some(own) = c
        .query_opt(
            "SELECT sequence, digest, json FROM own_bundle WHERE id = 1",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    let rows = c
        .query(
            "SELECT generation, state, issued_at, not_after, prune_after, ca_cert, jwt_kid
             FROM authority WHERE replica = $1 ORDER BY generation",
            &[&replica],
        )
        .await?;
    let mut authorities = Vec::with_capacity(rows.len());
    for r in rows {
        let state: String = r.try_get(1)?;
        authorities.push(AuthorityRow {
            generation: u64_of(r.try_get(0)?, "generation")?,
            state: AuthorityState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("authority state {state:?}")))?,
            issued_at: from_unix_millis(r.try_get(2)?),
            not_after: from_unix_millis(r.try_get(3)?),
            prune_after: r.try_get::<_, Option<i64>>(4)?.map(from_unix_millis),
            ca_cert: r.try_get(5)?,
            jwt_kid: r.try_get(6)?,
        });
    }
    Ok(Some(RawRecord {
        authorities,
        sequence: u64_of(own.try_get(0)?, "sequence")?,
        digest: own.try_get(1)?,
        json: own.try_get(2)?,
    }))
}

async fn write_ca(
    c: &impl GenericClient,
    replica: &str,
    p: &RecordParams,
) -> Result<(), StoreError> {
    c.execute("DELETE FROM authority WHERE replica = $1", &[&replica])
        .await?;
    let insert = c
        .prepare(
            "INSERT INTO authority
             (generation, state, issued_at, not_after, prune_after, ca_cert, jwt_kid, replica)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    for a in &p.authorities {
        c.execute(
            &insert,
            &[
                &a.generation,
                &a.state,
                &a.issued_at,
                &a.not_after,
                &a.prune_after,
                &a.ca_cert,
                &a.jwt_kid,
                &replica,
            ],
        )
        .await?;
    }
    c.execute(
        "INSERT INTO own_bundle (id, sequence, digest, json) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET sequence = $1, digest = $2, json = $3",
        &[&p.sequence, &p.digest, &p.json],
    )
    .await?;
    Ok(())
}

impl Storage for PostgresStorage {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn metrics(&self) -> Option<Arc<StoreMetrics>> {
        Some(self.metrics.clone())
    }

    fn health(&self) -> StoreHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn load_ca(&self) -> Result<Option<CaRecord>, StoreError> {
        let replica = self.replica.clone();
        let raw = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            read_ca(&**client, &replica).await
        })?;
        raw.map(|r| self.record(r)).transpose()
    }

    fn init_ca(&self, record: &CaRecord) -> Result<CaRecord, StoreError> {
        for a in &record.authorities {
            self.keys.store(a)?;
        }
        let params = params_of(record)?;
        let replica = self.replica.clone();
        let existing = self.call(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CA_LOCK])
                .await?;
            if let Some(existing) = read_ca(&*tx, &replica).await? {
                return Ok(Some(existing));
            }
            write_ca(&*tx, &replica, &params).await?;
            tx.commit().await?;
            Ok(None)
        })?;
        match existing {
            None => Ok(record.clone()),
            Some(raw) => {
                let stored = self.record(raw)?;
                self.prune_keys(&stored);
                Ok(stored)
            }
        }
    }

    fn save_ca(&self, record: &CaRecord) -> Result<(), StoreError> {
        for a in &record.authorities {
            self.keys.store(a)?;
        }
        let params = params_of(record)?;
        let replica = self.replica.clone();
        self.call(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CA_LOCK])
                .await?;
            write_ca(&*tx, &replica, &params).await?;
            tx.commit().await?;
            Ok(())
        })?;
        self.prune_keys(record);
        Ok(())
    }

    fn load_pinned(&self) -> Result<Vec<PinnedBundle>, StoreError> {
        let rows = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT trust_domain, json, sequence, fetched_at FROM pinned_bundle
                     ORDER BY trust_domain",
                    &[],
                )
                .await?;
            rows.into_iter()
                .map(|r| {
                    Ok((
                        r.try_get::<_, String>(0)?,
                        r.try_get::<_, Vec<u8>>(1)?,
                        r.try_get::<_, Option<i64>>(2)?,
                        r.try_get::<_, i64>(3)?,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        rows.into_iter()
            .map(|(td, bundle_json, sequence, fetched_at)| {
                Ok(PinnedBundle {
                    trust_domain: TrustDomain::new(&td).map_err(|e| {
                        StoreError::Corrupt(format!("pinned trust domain {td:?}: {e}"))
                    })?,
                    bundle_json,
                    sequence: sequence.and_then(|s| u64::try_from(s).ok()),
                    fetched_at: from_unix_millis(fetched_at),
                })
            })
            .collect()
    }

    fn save_pinned(&self, b: &PinnedBundle) -> Result<(), StoreError> {
        let td = b.trust_domain.as_str().to_owned();
        let json = b.bundle_json.clone();
        let sequence = b.sequence.and_then(|s| i64::try_from(s).ok());
        let fetched_at = to_unix_millis(b.fetched_at);
        self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            // One statement: the guard and the write cannot be split by another replica.
            let changed = client
                .execute(
                    "INSERT INTO pinned_bundle (trust_domain, json, sequence, fetched_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (trust_domain)
                     DO UPDATE SET json = $2, sequence = $3, fetched_at = $4
                     WHERE pinned_bundle.sequence IS NULL OR EXCLUDED.sequence IS NULL
                        OR EXCLUDED.sequence >= pinned_bundle.sequence",
                    &[&td, &json, &sequence, &fetched_at],
                )
                .await?;
            if changed == 0 {
                let pinned: Option<i64> = client
                    .query_opt(
                        "SELECT sequence FROM pinned_bundle WHERE trust_domain = $1",
                        &[&td],
                    )
                    .await?
                    .and_then(|r| r.get(0));
                return Err(StoreError::SequenceRollback {
                    pinned: pinned.and_then(|p| u64::try_from(p).ok()).unwrap_or(0),
                    received: sequence.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                });
            }
            // The other replicas read the new pin at once.
            client
                .execute("SELECT pg_notify($1, $2)", &[&replicas::CHANNEL, &td])
                .await?;
            Ok(())
        })
    }

    fn replica_id(&self) -> Option<&str> {
        Some(&self.replica)
    }

    fn load_shared(&self) -> Result<crate::store::SharedBundle, StoreError> {
        self.read_shared()
    }

    fn publish(&self, update: &crate::store::ReplicaUpdate) -> Result<(), StoreError> {
        self.write_update(update)
    }

    fn announce(&self, address: &str) {
        address.clone_into(&mut self.address.lock().unwrap_or_else(|e| e.into_inner()));
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = serving {
            self.spawn_heartbeat(std::time::SystemTime::now());
            self.spawn_listener(s.config, s.tls, s.changes);
            tracing::info!(replica = %self.replica, address, database = %self.target, "serving as a replica of the shared store");
        }
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.clone())
    }

    fn fetch_lease(
        &self,
        peer: &TrustDomain,
        ttl: Duration,
    ) -> Result<Option<crate::store::Lease>, StoreError> {
        self.take_lease(peer, ttl).map(Some)
    }

    fn fetch_leases(&self) -> Result<Vec<(String, crate::store::Lease)>, StoreError> {
        self.read_leases()
    }

    fn delete_pinned(&self, trust_domain: &TrustDomain) -> Result<(), StoreError> {
        let td = trust_domain.as_str().to_owned();
        self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute("DELETE FROM pinned_bundle WHERE trust_domain = $1", &[&td])
                .await?;
            client
                .execute("SELECT pg_notify($1, $2)", &[&replicas::CHANNEL, &td])
                .await?;
            Ok(())
        })
    }

    fn load_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let sql = format!("SELECT {} FROM agent ORDER BY node", agents::COLUMNS);
            let rows = client.query(sql.as_str(), &[]).await?;
            rows.into_iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                        r.try_get(5)?,
                        r.try_get(6)?,
                        r.try_get(7)?,
                        r.try_get(8)?,
                        r.try_get(9)?,
                    ))
                })
                .collect::<Result<Vec<agents::AgentRow>, StoreError>>()
        })?;
        rows.into_iter().map(AgentRecord::from_row).collect()
    }

    fn save_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
        let row = record.to_row();
        self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let (node, id, method, address, attested, last, expires, evicted, cur, prev) = row;
            let sql = format!(
                "INSERT INTO agent ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (node) DO UPDATE SET spiffe_id = $2, method = $3, address = $4,
                 attested_at = $5, last_sync = $6, svid_expires_at = $7, evicted = $8,
                 svid_sha256 = $9, previous_svid_sha256 = $10",
                agents::COLUMNS
            );
            client
                .execute(
                    sql.as_str(),
                    &[
                        &node, &id, &method, &address, &attested, &last, &expires, &evicted, &cur,
                        &prev,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn save_join_token(&self, t: &JoinTokenRecord, now: SystemTime) -> Result<(), StoreError> {
        let (hash, node) = (t.hash.to_vec(), t.node.clone());
        let (expires, now) = (to_unix_millis(t.expires_at), to_unix_millis(now));
        self.call(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await?;
            tx.execute("DELETE FROM join_token WHERE expires_at <= $1", &[&now])
                .await?;
            tx.execute(
                "INSERT INTO join_token (hash, node, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (hash) DO UPDATE SET node = $2, expires_at = $3",
                &[&hash, &node, &expires],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn take_join_token(&self, hash: &[u8; 32]) -> Result<Option<JoinTokenRecord>, StoreError> {
        let key = hash.to_vec();
        let row = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    "DELETE FROM join_token WHERE hash = $1 RETURNING node, expires_at",
                    &[&key],
                )
                .await?;
            row.map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?)))
                .transpose()
        })?;
        row.map(|(node, expires)| JoinTokenRecord::from_row(hash, node, expires))
            .transpose()
    }
}

/// Opens the store `[store] kind = "postgres"` names, reading `url_file` now.
///
/// # Errors
/// As [`PostgresStorage::open`]; [`StoreError::Io`] when `url_file` cannot be read.
pub fn open_configured(
    config: &crate::config::PostgresConfig,
    data_dir: &Path,
) -> Result<PostgresStorage, StoreError> {
    let url = match &config.url {
        crate::config::PostgresUrl::Inline(url) => zeroize::Zeroizing::new(url.clone()),
        crate::config::PostgresUrl::File(path) => {
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                StoreError::Io {
                    path: path.display().to_string(),
                    source,
                }
            })?)
        }
    };
    let options = ConnectOptions::parse(url.trim(), config.ca_file.as_deref())?;
    PostgresStorage::open(&options, data_dir)
}
