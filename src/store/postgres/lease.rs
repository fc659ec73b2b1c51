//! Fetch leases on PostgreSQL: one row per peer naming the replica that fetches it until
//! `expires_at`. One statement takes or renews the leases of every peer at once (a round
//! trip per round, however many peers), each only when it is free, lapsed or already ours,
//! timed by the database's clock (replicas' clocks may differ).

use std::time::Duration;

use super::{PostgresStorage, i64_of, pool_err};
use crate::clock::from_unix_millis;
use crate::spiffe_id::TrustDomain;
use crate::store::{Lease, StoreError};

/// Takes what can be taken; reports every asked peer's holder, and whether this statement took
/// the lease from nobody or from another replica (`before`: the rows as they were before the
/// insert, the same snapshot for every part of one statement). A renewal keeps `acquired_at`.
const TAKE: &str = "
WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
before AS (SELECT trust_domain, holder FROM fetch_lease WHERE trust_domain = ANY($1)),
taken AS (
    INSERT INTO fetch_lease AS l (trust_domain, holder, expires_at, acquired_at)
    SELECT td, $2, now.ms + $3, now.ms FROM unnest($1::text[]) AS td, now
    ON CONFLICT (trust_domain) DO UPDATE
    SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at,
        acquired_at = CASE WHEN l.holder = EXCLUDED.holder
                           THEN l.acquired_at ELSE EXCLUDED.acquired_at END
    WHERE l.holder = EXCLUDED.holder OR l.expires_at <= EXCLUDED.acquired_at
    RETURNING trust_domain, holder, expires_at
)
SELECT t.trust_domain, t.holder, t.expires_at, b.holder IS DISTINCT FROM t.holder
FROM taken t LEFT JOIN before b USING (trust_domain)
UNION ALL
SELECT f.trust_domain, f.holder, f.expires_at, false FROM fetch_lease f
WHERE f.trust_domain = ANY($1) AND f.trust_domain NOT IN (SELECT trust_domain FROM taken)";

impl PostgresStorage {
    /// [`crate::store::Storage::fetch_leases_take`].
    pub(super) fn take_leases(
        &self,
        peers: &[TrustDomain],
        ttl: Duration,
    ) -> Result<Vec<(String, Lease)>, StoreError> {
        let tds: Vec<String> = peers.iter().map(|p| p.as_str().to_owned()).collect();
        let me = self.replica.clone();
        let ttl_ms = i64_of(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX), "ttl")?;
        let leases: Vec<(String, Lease)> = self.call(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client.query(TAKE, &[&tds, &me, &ttl_ms]).await?;
            rows.iter()
                .map(|row| {
                    // Not "acquired_at is this statement's now": a renewal in the same
                    // millisecond as the taking would count as a second taking.
                    let acquired: bool = row.try_get(3)?;
                    Ok((
                        row.try_get(0)?,
                        Lease {
                            acquired,
                            holder: row.try_get(1)?,
                            expires_at: from_unix_millis(row.try_get(2)?),
                        },
                    ))
                })
                .collect()
        })?;
        for _ in leases.iter().filter(|(_, l)| l.acquired) {
            self.metrics.lease_change();
        }
        Ok(leases)
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
