//! Wiring: one place where the daemon's tasks are built, connected and stopped.
//!
//! Writers: the CA (own authorities and bundle). Readers subscribe to its `watch` channel.
//! Every task runs on one [`TaskTracker`] under one [`CancellationToken`]; shutdown cancels the
//! token and waits up to [`SHUTDOWN_GRACE`] for the tasks to finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ca::{Ca, CaError, CaPolicy};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::sqlite::SqliteStorage;
use crate::store::{Storage, StoreError};

/// How long shutdown waits for tasks to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The published refresh hint when no bundle endpoint is configured.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

/// A failure to start the daemon.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The state could not be opened.
    #[error("state in {dir}: {source}")]
    Store {
        /// The data dir.
        dir: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The CA could not be loaded or initialised.
    #[error("ca: {0}")]
    Ca(#[from] CaError),
}

/// The CA settings of a config.
pub fn ca_policy(config: &Config) -> CaPolicy {
    CaPolicy {
        key_type: config.ca.key_type,
        ca_ttl: config.ca.ca_ttl,
        x509_svid_ttl: config.ca.x509_svid_ttl,
        jwt_svid_ttl: config.ca.jwt_svid_ttl,
        refresh_hint: config
            .bundle_endpoint
            .as_ref()
            .map_or(DEFAULT_REFRESH_HINT, |b| b.refresh_hint),
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    /// The CA (sole writer of the own bundle).
    pub ca: Arc<Ca>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Daemon {
    /// Opens the state, brings the CA up to date and starts every task.
    ///
    /// # Errors
    /// [`AppError`] when the state, the CA or a listener cannot be set up.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Self, AppError> {
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&config.data_dir).map_err(
            |source| AppError::Store {
                dir: config.data_dir.display().to_string(),
                source,
            },
        )?);
        let ca = Arc::new(Ca::open(
            config.trust_domain.clone(),
            ca_policy(&config),
            clock.clone(),
            storage.clone(),
        )?);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(ca.clone().run(cancel.child_token()));
        let snapshot = ca.snapshot();
        tracing::info!(
            trust_domain = %config.trust_domain,
            sequence = snapshot.bundle.sequence.unwrap_or(0),
            authorities = snapshot.slots.len(),
            "meshtrust ready"
        );
        Ok(Self {
            ca,
            cancel,
            tracker,
        })
    }

    /// Stops every task, waiting up to [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks did not stop within the grace period");
        }
        tracing::info!("stopped");
    }
}

/// Runs the daemon until `shutdown` resolves.
///
/// # Errors
/// [`AppError`] when the daemon cannot start.
pub async fn run(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let daemon = Daemon::start(config, clock).await?;
    shutdown.await;
    daemon.shutdown().await;
    Ok(())
}
