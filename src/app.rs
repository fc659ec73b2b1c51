//! Wiring: the one place where the daemon's tasks are built, connected and stopped.
//!
//! Writers: the CA (own authorities and bundle) and the peer fetchers (pinned peer bundles,
//! through [`PeerStore`]); both persist to the [`Storage`] first and then publish `Arc`
//! snapshots on `watch` channels. Readers: the bundle endpoint, the Workload API, the admin API
//! and the metrics. Every task runs on one [`TaskTracker`] under one [`CancellationToken`];
//! shutdown cancels the token and waits up to [`SHUTDOWN_GRACE`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin_api::{self, AdminState};
use crate::ca::{Ca, CaError, CaPolicy};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, EntryConfig};
use crate::federation::RefreshHandles;
use crate::federation::client::FetchLimits;
use crate::federation::endpoint::{self, EndpointError};
use crate::federation::fetcher::{self, FetcherError, Fetchers};
use crate::federation::pinned::PeerStore;
use crate::federation::server_tls::ServerCerts;
use crate::federation::status::StatusBoard;
use crate::federation::verifier::OwnRoots;
use crate::metrics::{self, MetricsState};
use crate::reload::{self, ReloadOutcome};
use crate::store::sqlite::SqliteStorage;
use crate::store::{Storage, StoreError};
use crate::workload_api::{self, WorkloadApiDeps};

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
    /// A listener could not be bound.
    #[error("cannot listen on {what} {at}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address or path.
        at: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A federation relationship could not be set up (e.g. a bad bootstrap bundle).
    #[error(transparent)]
    Fetcher(#[from] FetcherError),
    /// The bundle endpoint could not be set up (e.g. unreadable https_web certificate files).
    #[error("bundle endpoint: {0}")]
    Endpoint(#[from] EndpointError),
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

fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, AppError> {
    let storage = SqliteStorage::open(&config.data_dir).map_err(|source| AppError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    Ok(Arc::new(storage))
}

/// Opens (creating if new) the CA state of `config` and returns the bundle document, as
/// `meshtrust bundle show` prints it: what operators hand their peers as bootstrap bundle.
///
/// # Errors
/// [`AppError`] when the state cannot be opened or created.
pub fn init_state(config: &Config) -> Result<Vec<u8>, AppError> {
    let storage = open_storage(config)?;
    if let Some(record) = storage.load_ca().map_err(|source| AppError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    })? {
        return Ok(record.bundle_json);
    }
    let ca = Ca::open(
        config.trust_domain.clone(),
        ca_policy(config),
        Arc::new(SystemClock),
        storage,
    )?;
    Ok(ca.snapshot().bundle_json.to_vec())
}

/// Listeners handed in by the caller instead of binding the configured addresses (tests and
/// the demo bind `127.0.0.1:0` first, so that two daemons can name each other's ports).
#[derive(Debug, Default)]
pub struct DaemonOptions {
    /// For `[bundle_endpoint] listen`.
    pub bundle_listener: Option<TcpListener>,
    /// For `[metrics] listen`.
    pub metrics_listener: Option<TcpListener>,
}

/// A running daemon and the handles tests and the demo look at.
#[derive(Debug)]
pub struct Daemon {
    /// The CA (sole writer of the own bundle).
    pub ca: Arc<Ca>,
    /// Pinned peer bundles (sole writer of peer bundles).
    pub peers: Arc<PeerStore>,
    /// Per-peer fetch status.
    pub status: Arc<StatusBoard>,
    /// Ask a fetcher to fetch now.
    pub refresh: RefreshHandles,
    /// The bundle endpoint's bound address.
    pub bundle_endpoint_addr: Option<SocketAddr>,
    /// The metrics listener's bound address.
    pub metrics_addr: Option<SocketAddr>,
    /// The Workload API socket.
    pub workload_socket: PathBuf,
    /// The admin API socket.
    pub admin_socket: PathBuf,
    /// The Workload API's entries, replaced by [`Daemon::reload`].
    entries: watch::Sender<Arc<Vec<EntryConfig>>>,
    /// The running config.
    config: Config,
    /// The peer fetchers, for a reload.
    fetchers: Fetchers,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

async fn bind_tcp(
    what: &'static str,
    given: Option<TcpListener>,
    addr: SocketAddr,
) -> Result<TcpListener, AppError> {
    match given {
        Some(l) => Ok(l),
        None => TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind {
                what,
                at: addr.to_string(),
                source,
            }),
    }
}

impl Daemon {
    /// Opens the state, brings the CA up to date and starts every task.
    ///
    /// # Errors
    /// [`AppError`] when the state, the CA or a listener cannot be set up.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Self, AppError> {
        Self::start_with(config, clock, DaemonOptions::default()).await
    }

    /// [`Daemon::start`] with pre-bound listeners.
    ///
    /// # Errors
    /// [`AppError`] when the state, the CA or a listener cannot be set up.
    pub async fn start_with(
        config: Config,
        clock: Arc<dyn Clock>,
        opts: DaemonOptions,
    ) -> Result<Self, AppError> {
        crate::federation::fd_budget::raise_nofile_limit();
        let storage = open_storage(&config)?;
        let ca = Arc::new(Ca::open(
            config.trust_domain.clone(),
            ca_policy(&config),
            clock.clone(),
            storage.clone(),
        )?);
        let peer_tds = config
            .federation
            .iter()
            .map(|f| f.trust_domain.clone())
            .collect();
        let peers = Arc::new(
            PeerStore::open(storage.clone(), peer_tds).map_err(|source| AppError::Store {
                dir: config.data_dir.display().to_string(),
                source,
            })?,
        );
        let status = Arc::new(fetcher::status_board(&config.federation));

        // Bind everything before starting anything: a busy port fails the start cleanly.
        let bundle_listener = match &config.bundle_endpoint {
            Some(be) => {
                Some(bind_tcp("the bundle endpoint", opts.bundle_listener, be.listen).await?)
            }
            None => None,
        };
        let metrics_listener = match &config.metrics {
            Some(m) => Some(bind_tcp("metrics", opts.metrics_listener, m.listen).await?),
            None => None,
        };
        let admin_socket = config.admin_api.socket.clone();
        let admin_listener = admin_api::bind(&admin_socket).map_err(|source| AppError::Bind {
            what: "the admin socket",
            at: admin_socket.display().to_string(),
            source,
        })?;
        let workload_socket = config.workload_api.socket.clone();
        let workload_listener =
            workload_api::bind(&workload_socket).map_err(|source| AppError::Bind {
                what: "the workload api socket",
                at: workload_socket.display().to_string(),
                source,
            })?;

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(ca.clone().run(cancel.child_token()));

        let fetchers = Fetchers::start(
            &config.federation,
            peers.clone(),
            status.clone(),
            OwnRoots::from_ca(ca.subscribe()),
            clock.clone(),
            &tracker,
            cancel.child_token(),
            FetchLimits {
                min_interval: config.federation_min_refresh_interval,
                ..FetchLimits::default()
            },
        )?;
        let refresh = fetchers.refresh_handles();

        let bundle_endpoint_addr = bundle_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let (Some(listener), Some(be)) = (bundle_listener, &config.bundle_endpoint) {
            let (certs, task) = ServerCerts::start(
                &be.profile,
                ca.subscribe(),
                clock.clone(),
                cancel.child_token(),
            )
            .map_err(EndpointError::from)?;
            tracker.spawn(task);
            let serve = endpoint::serve(listener, ca.subscribe(), certs, cancel.child_token());
            tracker.spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "bundle endpoint stopped");
                }
            });
        }

        let (entries, entries_rx) = watch::channel(Arc::new(config.entries.clone()));
        tracker.spawn(workload_api::serve(
            workload_listener,
            WorkloadApiDeps {
                ca: ca.subscribe(),
                peers: peers.subscribe(),
                entries: entries_rx,
                clock: clock.clone(),
            },
            cancel.child_token(),
        ));

        let admin_state = AdminState {
            ca: ca.clone(),
            peers: peers.clone(),
            status: status.clone(),
            refresh: refresh.clone(),
        };
        tracker.spawn(admin_api::serve(
            admin_listener,
            admin_state,
            cancel.child_token(),
        ));

        let ready = Arc::new(AtomicBool::new(false));
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = metrics_listener {
            let state = MetricsState {
                ca: ca.clone(),
                peers: peers.clone(),
                status: status.clone(),
                ready: ready.clone(),
                clock: clock.clone(),
            };
            tracker.spawn(metrics::serve(listener, state, cancel.child_token()));
        }
        ready.store(true, Ordering::Release);
        let snapshot = ca.snapshot();
        tracing::info!(
            trust_domain = %config.trust_domain,
            sequence = snapshot.bundle.sequence.unwrap_or(0),
            authorities = snapshot.slots.len(),
            pinned_peers = peers.current().len(),
            bundle_endpoint = ?bundle_endpoint_addr,
            workload_socket = %workload_socket.display(),
            admin_socket = %admin_socket.display(),
            "meshtrust ready"
        );
        Ok(Self {
            ca,
            peers,
            status,
            refresh,
            bundle_endpoint_addr,
            metrics_addr,
            workload_socket,
            admin_socket,
            entries,
            config,
            fetchers,
            cancel,
            tracker,
        })
    }

    /// The config file the daemon was started from.
    pub fn config_file(&self) -> &std::path::Path {
        &self.config.source
    }

    /// Applies a re-read config (`SIGHUP`): the entries and the federation relationships now,
    /// the rest only after a restart (see [`crate::reload`]). The running config is kept for
    /// the sections not applied.
    pub fn reload(&mut self, new: Config) -> ReloadOutcome {
        let mut outcome = reload::diff(&self.config, &new);
        if outcome.federation_changed {
            match self.fetchers.apply(&new.federation) {
                Ok((started, removed)) => {
                    tracing::info!(?started, ?removed, "federation relationships updated");
                    self.config.federation = new.federation;
                }
                Err(e) => {
                    tracing::error!(error = %e, "federation change refused; the relationships run as before");
                    outcome.federation_changed = false;
                }
            }
        }
        if outcome.entries_changed {
            self.entries.send_replace(Arc::new(new.entries.clone()));
            self.config.entries = new.entries;
        }
        outcome
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
        let _ = std::fs::remove_file(&self.admin_socket);
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
    let mut daemon = Daemon::start(config, clock).await?;
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload is off");
            None
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = async { hangup.as_mut()?.recv().await } => {
                reload::from_disk(&mut daemon);
            }
        }
    }
    daemon.shutdown().await;
    Ok(())
}
