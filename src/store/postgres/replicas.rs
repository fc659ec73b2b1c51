//! This replica in the shared database: its stable id (a file in its `data_dir`), its
//! heartbeat (a row in `replica` renewed every [`HEARTBEAT`]), and the notifications it
//! listens to (`LISTEN meshtrust` on a dedicated connection, reconnecting after an outage).

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{PostgresStorage, pool_err};
use crate::clock::to_unix_millis;
use crate::store::StoreError;
use crate::store::shared::HEARTBEAT;

/// The file in `data_dir` holding the replica id.
pub const REPLICA_ID_FILE: &str = "replica-id";

/// The notification channel: raised by every write to the shared bundle.
pub const CHANNEL: &str = "meshtrust";

/// How long the listener waits before reconnecting after losing its connection.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Whether `id` looks like an id this module writes (`r-` and 16 hex digits).
fn well_formed(id: &str) -> bool {
    id.len() == 18 && id.starts_with("r-") && id[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads this replica's id from `data_dir`, creating it (random, 0600) on the first start.
///
/// # Errors
/// [`StoreError::Io`], or [`StoreError::Corrupt`] for a file that holds no id.
pub fn replica_id(data_dir: &Path) -> Result<String, StoreError> {
    use rand_core::RngCore as _;
    let path = data_dir.join(REPLICA_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if well_formed(id) {
                return Ok(id.to_owned());
            }
            return Err(StoreError::Corrupt(format!(
                "{}: not a replica id ({id:?}); delete it to get a new one",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let id: String = std::iter::once("r-".to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    // tempfile creates 0600; persisting is atomic.
    let mut tmp = tempfile::NamedTempFile::new_in(data_dir).map_err(io(data_dir))?;
    writeln!(tmp, "{id}").map_err(io(&path))?;
    tmp.as_file().sync_all().map_err(io(&path))?;
    tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
    Ok(id)
}

/// The address a replica advertises, shared with its heartbeat task.
pub type Address = Arc<Mutex<String>>;

/// What the serving daemon starts: the listener's connection settings and its channel.
pub struct Serving {
    /// Where to connect.
    pub config: tokio_postgres::Config,
    /// TLS as for the pool.
    pub tls: MakeRustlsConnect,
    /// Raised at each notification.
    pub changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

impl PostgresStorage {
    /// Renews this replica's row every [`HEARTBEAT`] (the first at once), on the store's
    /// runtime. A failed beat is retried at the next one; the probe reports the outage.
    pub(super) fn spawn_heartbeat(&self, started_at: SystemTime) {
        let Some(rt) = &self.rt else { return };
        let pool = self.pool.clone();
        let id = self.replica.clone();
        let address = self.address.clone();
        let started = to_unix_millis(started_at);
        rt.spawn(async move {
            loop {
                let addr = address.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let beat = async {
                    let client = pool.get().await.map_err(pool_err)?;
                    client
                        .execute(
                            "INSERT INTO replica (id, address, started_at, last_seen)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (id) DO UPDATE
                             SET address = $2, started_at = $3, last_seen = $4",
                            &[&id, &addr, &started, &to_unix_millis(SystemTime::now())],
                        )
                        .await?;
                    Ok::<_, StoreError>(())
                };
                if let Err(e) = tokio::time::timeout(super::connect::CONNECT_TIMEOUT, beat)
                    .await
                    .unwrap_or_else(|_| Err(super::unavailable("heartbeat timed out")))
                {
                    tracing::debug!(replica = %id, error = %e, "heartbeat failed; retrying");
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
    }

    /// Listens on [`CHANNEL`] on a connection of its own, raising `changes` at each
    /// notification and after each (re)connect, when some may have been missed.
    pub(super) fn spawn_listener(
        &self,
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        changes: watch::Sender<u64>,
    ) {
        let Some(rt) = &self.rt else { return };
        let target = self.target.clone();
        rt.spawn(async move {
            let mut connected_once = false;
            loop {
                match listen_once(&config, tls.clone(), &changes, connected_once).await {
                    Ok(()) => {
                        tracing::info!(database = %target, "notification connection closed; reconnecting");
                    }
                    Err(e) => {
                        tracing::debug!(database = %target, error = %e, "notification connection failed; retrying");
                    }
                }
                connected_once = true;
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        });
    }
}

/// One connection's life: connect, `LISTEN`, forward notifications until it ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    changes: &watch::Sender<u64>,
    reconnect: bool,
) -> Result<(), StoreError> {
    let (client, mut conn) =
        tokio::time::timeout(super::connect::CONNECT_TIMEOUT, config.connect(tls))
            .await
            .map_err(|_| super::unavailable("connect timed out"))??;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let bump = changes.clone();
    let drive = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    bump.send_modify(|n| *n = n.wrapping_add(1));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        let _ = closed_tx.send(());
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    if reconnect {
        // Notifications sent while disconnected are lost: read everything again.
        changes.send_modify(|n| *n = n.wrapping_add(1));
    }
    let _ = closed_rx.await;
    drop(client);
    drive.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let first = replica_id(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(well_formed(&first), "{first}");
        assert_eq!(replica_id(dir.path()).ok(), Some(first));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.path().join(REPLICA_ID_FILE))
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
    }

    #[test]
    fn a_file_that_holds_no_id_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.path().join(REPLICA_ID_FILE), "hello").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            replica_id(dir.path()),
            Err(StoreError::Corrupt(m)) if m.contains("not a replica id")
        ));
    }
}
