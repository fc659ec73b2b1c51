//! The shared bundle on PostgreSQL: every replica's authorities and the one bundle document,
//! read in one snapshot and written in one transaction under the CA advisory lock, which
//! checks the sequence the write was computed from and notifies the other replicas.

use std::collections::HashSet;

use tokio_postgres::GenericClient;
use tokio_postgres::IsolationLevel;

use super::{CA_LOCK, PostgresStorage, RecordParams, i64_of, params_of, pool_err, u64_of};
use crate::clock::from_unix_millis;
use crate::store::shared::{ReplicaAuthority, ReplicaInfo, ReplicaUpdate, SharedBundle};
use crate::store::{AuthorityState, StoreError};

/// The parameters of one update, owned so they can move into the store's task.
#[derive(Debug)]
struct UpdateParams {
    replica: String,
    record: RecordParams,
    jwks: Vec<Vec<u8>>,
    base: i64,
    prune: Vec<(String, i64)>,
}

async fn read_shared(c: &impl GenericClient) -> Result<SharedBundle, StoreError> {
    let mut shared = SharedBundle::default();
    if let Some(own) = c
        .query_opt(
            "SELECT sequence, digest, json FROM own_bundle WHERE id = 1",
            &[],
        )
        .await?
    {
        shared.sequence = u64_of(own.try_get(0)?, "sequence")?;
        shared.digest = own.try_get(1)?;
        shared.json = own.try_get(2)?;
    }
    for r in c
        .query(
            "SELECT replica, generation, state, issued_at, not_after, prune_after, ca_cert, jwks
             FROM authority ORDER BY replica, generation",
            &[],
        )
        .await?
    {
        let state: String = r.try_get(2)?;
        shared.authorities.push(ReplicaAuthority {
            replica: r.try_get(0)?,
            generation: u64_of(r.try_get(1)?, "generation")?,
            state: AuthorityState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("authority state {state:?}")))?,
            issued_at: from_unix_millis(r.try_get(3)?),
            not_after: from_unix_millis(r.try_get(4)?),
            prune_after: r.try_get::<_, Option<i64>>(5)?.map(from_unix_millis),
            ca_cert: r.try_get(6)?,
            jwks: r.try_get(7)?,
        });
    }
    for r in c
        .query(
            "SELECT id, address, started_at, last_seen FROM replica ORDER BY id",
            &[],
        )
        .await?
    {
        shared.replicas.push(ReplicaInfo {
            id: r.try_get(0)?,
            address: r.try_get(1)?,
            started_at: from_unix_millis(r.try_get(2)?),
            last_seen: from_unix_millis(r.try_get(3)?),
        });
    }
    Ok(shared)
}

impl PostgresStorage {
    /// Reads the shared state in one consistent snapshot.
    pub(super) fn read_shared(&self) -> Result<SharedBundle, StoreError> {
        self.call(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let shared = read_shared(&*tx).await?;
            tx.commit().await?;
            Ok(shared)
        })
    }

    /// Writes `update` if the shared sequence is still its base; notifies the replicas.
    pub(super) fn write_update(&self, update: &ReplicaUpdate) -> Result<(), StoreError> {
        for a in &update.record.authorities {
            self.keys.store(a)?;
        }
        if update.jwks.len() != update.record.authorities.len() {
            return Err(StoreError::Corrupt(
                "one bundle document per authority is needed".into(),
            ));
        }
        let params = UpdateParams {
            replica: self.replica.clone(),
            record: params_of(&update.record)?,
            jwks: update.jwks.clone(),
            base: i64_of(update.base_sequence, "sequence")?,
            prune: update
                .prune
                .iter()
                .map(|(r, g)| Ok((r.clone(), i64_of(*g, "generation")?)))
                .collect::<Result<_, StoreError>>()?,
        };
        self.call(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CA_LOCK])
                .await?;
            let stored: i64 = tx
                .query_opt("SELECT sequence FROM own_bundle WHERE id = 1", &[])
                .await?
                .map_or(Ok(0), |r| r.try_get(0))?;
            if stored != params.base {
                return Err(StoreError::Conflict {
                    stored: u64_of(stored, "sequence")?,
                    expected: u64_of(params.base, "sequence")?,
                });
            }
            write_update(&*tx, &params).await?;
            tx.commit().await?;
            Ok(())
        })?;
        let keep: HashSet<String> = update
            .record
            .authorities
            .iter()
            .map(|a| super::keys::stem(&a.ca_cert))
            .collect();
        self.keys.retain(&keep);
        Ok(())
    }

    /// Takes over the authorities of a single daemon (rows without a replica, written before
    /// replicas existed) whose keys this replica's `data_dir` holds.
    pub(super) fn adopt_legacy_rows(&self) -> Result<(), StoreError> {
        let certs: Vec<Vec<u8>> = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query("SELECT ca_cert FROM authority WHERE replica = ''", &[])
                .await?;
            rows.iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect::<Result<_, StoreError>>()
        })?;
        let mut mine = Vec::new();
        for cert in certs {
            if self.keys.load(&cert)?.is_some() {
                mine.push(cert);
            }
        }
        if mine.is_empty() {
            return Ok(());
        }
        let replica = self.replica.clone();
        let adopted = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            Ok(client
                .execute(
                    "UPDATE authority SET replica = $1 WHERE replica = '' AND ca_cert = ANY($2)",
                    &[&replica, &mine],
                )
                .await?)
        })?;
        tracing::info!(replica = %self.replica, adopted, "authorities of the single daemon adopted by this replica");
        Ok(())
    }
}

async fn write_update(c: &impl GenericClient, p: &UpdateParams) -> Result<(), StoreError> {
    c.execute("DELETE FROM authority WHERE replica = $1", &[&p.replica])
        .await?;
    let insert = c
        .prepare(
            "INSERT INTO authority
             (replica, generation, state, issued_at, not_after, prune_after, ca_cert, jwt_kid, jwks)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    for (a, jwks) in p.record.authorities.iter().zip(&p.jwks) {
        c.execute(
            &insert,
            &[
                &p.replica,
                &a.generation,
                &a.state,
                &a.issued_at,
                &a.not_after,
                &a.prune_after,
                &a.ca_cert,
                &a.jwt_kid,
                jwks,
            ],
        )
        .await?;
    }
    for (replica, generation) in &p.prune {
        c.execute(
            "DELETE FROM authority WHERE replica = $1 AND generation = $2",
            &[replica, generation],
        )
        .await?;
        // A replica dead for good whose last authority left goes from the list too.
        c.execute(
            "DELETE FROM replica WHERE id = $1
             AND NOT EXISTS (SELECT 1 FROM authority WHERE authority.replica = $1)",
            &[replica],
        )
        .await?;
    }
    let r = &p.record;
    c.execute(
        "INSERT INTO own_bundle (id, sequence, digest, json) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET sequence = $1, digest = $2, json = $3",
        &[&r.sequence, &r.digest, &r.json],
    )
    .await?;
    // Delivered at commit, to every replica listening (this one included: harmless).
    c.execute(
        "SELECT pg_notify($1, $2)",
        &[&super::replicas::CHANNEL, &r.sequence.to_string()],
    )
    .await?;
    Ok(())
}
