//! Fetch leases on PostgreSQL: one row per peer naming the replica that fetches it until
//! `expires_at`. Taking or renewing is one statement that succeeds only when the lease is
//! free, lapsed or already ours, timed by the database's clock (replicas' clocks may differ).

use std::time::Duration;

use super::{PostgresStorage, i64_of, pool_err};
use crate::clock::from_unix_millis;
use crate::spiffe_id::TrustDomain;
use crate::store::{Lease, StoreError};

impl PostgresStorage {
    /// [`crate::store::Storage::fetch_lease`].
    pub(super) fn take_lease(
        &self,
        peer: &TrustDomain,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let td = peer.as_str().to_owned();
        let me = self.replica.clone();
        let ttl_ms = i64_of(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX), "ttl")?;
        let lease = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let taken = client
                .query_opt(
                    "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
                     INSERT INTO fetch_lease AS l (trust_domain, holder, expires_at, acquired_at)
                     SELECT $1, $2, ms + $3, ms FROM now
                     ON CONFLICT (trust_domain) DO UPDATE
                     SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at,
                         acquired_at = CASE WHEN l.holder = EXCLUDED.holder
                                            THEN l.acquired_at ELSE EXCLUDED.acquired_at END
                     WHERE l.holder = EXCLUDED.holder OR l.expires_at <= EXCLUDED.acquired_at
                     RETURNING holder, expires_at, acquired_at",
                    &[&td, &me, &ttl_ms],
                )
                .await?;
            let row = match taken {
                Some(row) => row,
                None => client
                    .query_one(
                        "SELECT holder, expires_at, 0::bigint FROM fetch_lease
                         WHERE trust_domain = $1",
                        &[&td],
                    )
                    .await?,
            };
            let holder: String = row.try_get(0)?;
            let expires_at: i64 = row.try_get(1)?;
            let acquired_at: i64 = row.try_get(2)?;
            Ok(Lease {
                acquired: holder == me && acquired_at == expires_at - ttl_ms,
                holder,
                expires_at: from_unix_millis(expires_at),
            })
        })?;
        if lease.acquired {
            self.metrics.lease_change();
        }
        Ok(lease)
    }

    /// [`crate::store::Storage::fetch_leases`].
    pub(super) fn read_leases(&self) -> Result<Vec<(String, Lease)>, StoreError> {
        self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT trust_domain, holder, expires_at FROM fetch_lease ORDER BY trust_domain",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        Lease {
                            holder: r.try_get(1)?,
                            expires_at: from_unix_millis(r.try_get(2)?),
                            acquired: false,
                        },
                    ))
                })
                .collect()
        })
    }
}
