//! The schema, created and migrated by the daemon: numbered migrations applied in one
//! transaction under an advisory lock, so that several replicas starting at once apply each
//! exactly once (the others wait for the lock, then find the version already reached).

use tokio_postgres::Client;

use crate::store::StoreError;

/// The advisory lock key taken while migrating ("meshtrust" in ASCII, truncated).
pub const MIGRATION_LOCK: i64 = 0x6d65_7368_7472_7573;

/// Migration `n` (1-based) brings the schema from version `n - 1` to `n`. Append only.
pub const MIGRATIONS: &[&str] = &[
    // 1: the state of the SQLite backend, without private keys (they stay in data_dir).
    "CREATE TABLE authority (
        generation  BIGINT  PRIMARY KEY,
        state       TEXT    NOT NULL,
        issued_at   BIGINT  NOT NULL,
        not_after   BIGINT  NOT NULL,
        prune_after BIGINT,
        ca_cert     BYTEA   NOT NULL,
        jwt_kid     TEXT    NOT NULL
    );
    CREATE TABLE own_bundle (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        sequence BIGINT  NOT NULL,
        digest   BYTEA   NOT NULL,
        json     BYTEA   NOT NULL
    );
    CREATE TABLE pinned_bundle (
        trust_domain TEXT   PRIMARY KEY,
        json         BYTEA  NOT NULL,
        sequence     BIGINT,
        fetched_at   BIGINT NOT NULL
    );",
    // 2: the node agent registry (src/agent_api/registry.rs).
    "CREATE TABLE agent (
        node                 TEXT    PRIMARY KEY,
        spiffe_id            TEXT    NOT NULL,
        method               TEXT    NOT NULL,
        address              TEXT    NOT NULL,
        attested_at          BIGINT  NOT NULL,
        last_sync            BIGINT,
        svid_expires_at      BIGINT  NOT NULL,
        evicted              BOOLEAN NOT NULL,
        svid_sha256          BYTEA,
        previous_svid_sha256 BYTEA
    );
    CREATE TABLE join_token (
        hash       BYTEA  PRIMARY KEY,
        node       TEXT   NOT NULL,
        expires_at BIGINT NOT NULL
    );",
    // 3: replicas of one mesh. Each authority belongs to the replica holding its key (rows of
    // a single daemon, replica '', are adopted by the replica that holds their keys); each
    // carries its bundle contribution (CA and JWT key) so any replica can publish the union.
    // Replicas register and beat; a fetch lease per peer lets one replica fetch it.
    "ALTER TABLE authority ADD COLUMN replica TEXT NOT NULL DEFAULT '';
    ALTER TABLE authority ADD COLUMN jwks BYTEA NOT NULL DEFAULT '\\x';
    ALTER TABLE authority DROP CONSTRAINT authority_pkey;
    ALTER TABLE authority ADD PRIMARY KEY (replica, generation);
    CREATE TABLE replica (
        id         TEXT   PRIMARY KEY,
        address    TEXT   NOT NULL,
        started_at BIGINT NOT NULL,
        last_seen  BIGINT NOT NULL
    );
    CREATE TABLE fetch_lease (
        trust_domain TEXT   PRIMARY KEY,
        holder       TEXT   NOT NULL,
        expires_at   BIGINT NOT NULL,
        acquired_at  BIGINT NOT NULL
    );",
];

/// The schema version this binary writes.
pub fn current() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Creates or migrates the schema; returns the version found before.
///
/// # Errors
/// On database failure, or [`StoreError::Config`] when the database's schema is newer than
/// this binary knows (a newer replica migrated it: upgrade this one).
pub async fn migrate(client: &mut Client) -> Result<i32, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS meshtrust_schema (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )",
    )
    .await?;
    let found: i32 = tx
        .query_opt("SELECT version FROM meshtrust_schema WHERE id = 1", &[])
        .await?
        .map_or(0, |row| row.get(0));
    if found > current() {
        return Err(StoreError::Config(format!(
            "the database's schema is version {found}, newer than this binary's {}: upgrade meshtrust",
            current()
        )));
    }
    let start = usize::try_from(found).unwrap_or(0);
    for migration in &MIGRATIONS[start..] {
        tx.batch_execute(migration).await?;
    }
    if found < current() {
        tx.execute(
            "INSERT INTO meshtrust_schema (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = $1",
            &[&current()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
