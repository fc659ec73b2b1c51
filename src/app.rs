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
use crate::config::{Config, EntryConfig, StoreConfig};
use crate::federation::RefreshHandles;
use crate::federation::client::FetchLimits;
use crate::federation::endpoint::{self, EndpointError, ServeOptions};
use crate::federation::fetcher::{self, FetcherError, Fetchers};
use crate::federation::pinned::PeerStore;
use crate::federation::server_tls::ServerCerts;
use crate::federation::status::StatusBoard;
use crate::federation::verifier::OwnRoots;
use crate::metrics::{self, MetricsState, Registry};
use crate::reload::{self, LastReload, ReloadOutcome};
use crate::store::lock::DataDirLock;
use crate::store::sqlite::SqliteStorage;
use crate::store::{Storage, StoreError, marker};
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
    /// The agent API could not be set up.
    #[error(transparent)]
    AgentApi(#[from] crate::agent_api::tls::AgentTlsError),
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

fn store_err(config: &Config) -> impl FnOnce(StoreError) -> AppError + '_ {
    |source| AppError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    }
}

fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, AppError> {
    Ok(match &config.store {
        StoreConfig::Sqlite => {
            Arc::new(SqliteStorage::open(&config.data_dir).map_err(store_err(config))?)
        }
        StoreConfig::Postgres(pg) => Arc::new(
            crate::store::postgres::open_configured(pg, &config.data_dir)
                .map_err(store_err(config))?,
        ),
    })
}

/// Whether the state lives in `data_dir`'s SQLite file (whose loss [`marker`] detects).
fn sqlite_store(config: &Config) -> bool {
    matches!(config.store, StoreConfig::Sqlite)
}

/// How the state of `data_dir` may be opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateOptions {
    /// Create a new CA even though `data_dir` is marked as having held one that is now lost
    /// (`--init-new-ca`). Without it such a start is refused ([`StoreError::CaLost`]).
    pub init_new_ca: bool,
}

/// The opened state of a `data_dir` this process has locked.
struct OpenedState {
    lock: DataDirLock,
    storage: Arc<dyn Storage>,
    ca: Ca,
    /// Whether this start created the CA.
    created: bool,
}

/// Locks `data_dir`, opens the database and the CA, creating the CA on a first start only: a
/// `data_dir` marked as having held a CA ([`marker`]) whose database has none is refused
/// unless `opts.init_new_ca`. Nothing is created or written before these checks pass.
fn open_state(
    config: &Config,
    clock: Arc<dyn Clock>,
    opts: StateOptions,
) -> Result<OpenedState, AppError> {
    let dir = &config.data_dir;
    let lock = DataDirLock::acquire(dir).map_err(store_err(config))?;
    let marked = marker::exists(dir).map_err(store_err(config))?;
    if !opts.init_new_ca && sqlite_store(config) {
        marker::check_db_file(dir).map_err(store_err(config))?;
    }
    let storage = open_storage(config)?;
    let had_ca = storage.load_ca().map_err(store_err(config))?.is_some();
    if marked && !had_ca && !opts.init_new_ca {
        return Err(store_err(config)(marker::lost(
            dir,
            "the database holds no CA",
        )));
    }
    let ca = Ca::open(
        config.trust_domain.clone(),
        ca_policy(config),
        clock,
        storage.clone(),
    )?;
    let created = !had_ca;
    if created || !marked {
        let first = ca.snapshot();
        let fingerprint = first
            .bundle
            .x509_authorities
            .first()
            .map(|c| crate::bundle::summary::sha256_hex(c))
            .unwrap_or_default();
        let about = format!(
            "data_dir of the CA of trust domain {}; CA certificate sha256 {fingerprint} at marking",
            config.trust_domain
        );
        marker::write(dir, &about).map_err(store_err(config))?;
    }
    if created && marked {
        tracing::warn!(
            data_dir = %dir.display(),
            "created a NEW CA in a data_dir whose CA was lost (--init-new-ca): give every peer the new bundle"
        );
    } else if created {
        tracing::info!(data_dir = %dir.display(), trust_domain = %config.trust_domain, "created the CA");
    } else if opts.init_new_ca {
        tracing::warn!("--init-new-ca ignored: the data_dir holds a CA, which is kept");
    }
    Ok(OpenedState {
        lock,
        storage,
        ca,
        created,
    })
}

/// The bundle document from [`init_state_with`], and whether that call created the CA.
#[derive(Debug, Clone)]
pub struct InitState {
    /// The SPIFFE bundle JSON, as `meshtrust bundle show` prints it.
    pub bundle_json: Vec<u8>,
    /// True when this call created the CA (a first start, or `--init-new-ca`).
    pub created: bool,
}

/// Opens (creating if new) the CA state of `config` and returns the bundle document, as
/// `meshtrust bundle show` prints it: what operators hand their peers as bootstrap bundle.
///
/// # Errors
/// [`AppError`] when the state cannot be opened or created.
pub fn init_state(config: &Config) -> Result<Vec<u8>, AppError> {
    init_state_with(config, StateOptions::default()).map(|s| s.bundle_json)
}

/// [`init_state`] with options. A stored CA is read and printed as stored, without the
/// `data_dir` lock, so this works beside a running daemon (SQLite WAL lets readers in beside
/// the writer) and never blocks one from starting. Only when there is no CA yet is the lock
/// taken to create it, so creating a CA never races a running daemon; when a daemon holds the
/// lock, its stored CA is read again (it may have just created it).
///
/// # Errors
/// [`AppError`] when the state cannot be opened or created (a lost CA is refused unless
/// `opts.init_new_ca`), or is locked and holds no CA yet.
pub fn init_state_with(config: &Config, opts: StateOptions) -> Result<InitState, AppError> {
    let dir = &config.data_dir;
    let stored = |config: &Config| -> Result<Option<Vec<u8>>, AppError> {
        let storage = open_storage(config)?;
        Ok(storage
            .load_ca()
            .map_err(store_err(config))?
            .map(|record| record.bundle_json))
    };
    // Only a database that exists and is not a lost one's remains is opened without the lock
    // (opening creates the file).
    let readable = !sqlite_store(config)
        || (dir.join(crate::store::sqlite::DB_FILE).exists() && marker::check_db_file(dir).is_ok());
    if readable && let Some(bundle_json) = stored(config)? {
        return Ok(InitState {
            bundle_json,
            created: false,
        });
    }
    match open_state(config, Arc::new(SystemClock), opts) {
        Ok(state) => {
            let bundle_json = state.ca.snapshot().bundle_json.to_vec();
            drop(state.lock);
            Ok(InitState {
                bundle_json,
                created: state.created,
            })
        }
        Err(AppError::Store {
            source: StoreError::InUse { dir, pid },
            ..
        }) => match stored(config)? {
            Some(bundle_json) => Ok(InitState {
                bundle_json,
                created: false,
            }),
            None => Err(AppError::Store {
                dir: dir.clone(),
                source: StoreError::InUse { dir, pid },
            }),
        },
        Err(e) => Err(e),
    }
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
    /// The socket files this daemon bound, removed at shutdown only if still the same files.
    sockets: OwnSockets,
    /// Held until shutdown: one daemon per data_dir.
    lock: DataDirLock,
    /// The Workload API's entries, replaced by [`Daemon::reload`].
    entries: watch::Sender<Arc<Vec<EntryConfig>>>,
    /// Every entry, those for nodes included (the agent API's), replaced by [`Daemon::reload`].
    all_entries: watch::Sender<Arc<Vec<EntryConfig>>>,
    /// The running config.
    config: Config,
    /// The peer fetchers, for a reload.
    fetchers: Fetchers,
    /// The outcome of the last reload, for the admin API's status.
    last_reload: LastReload,
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
        None => crate::listen::tcp(addr).map_err(|source| AppError::Bind {
            what,
            at: addr.to_string(),
            source,
        }),
    }
}

/// Our bundle endpoint as `federation invite` describes it: the bound address, and the SVID's
/// ID with `https_spiffe`.
fn published_endpoint(
    config: &Config,
    addr: Option<SocketAddr>,
) -> Option<crate::federation::invite::PublishedEndpoint> {
    let be = config.bundle_endpoint.as_ref()?;
    let endpoint_spiffe_id = match &be.profile {
        crate::config::EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            Some(endpoint_spiffe_id.clone())
        }
        crate::config::EndpointProfile::HttpsWeb { .. } => None,
    };
    Some(crate::federation::invite::PublishedEndpoint {
        addr: addr?,
        endpoint_spiffe_id,
    })
}

/// A socket file as bound: its path and identity (device, inode).
#[derive(Debug)]
struct BoundSocket {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl BoundSocket {
    fn new(path: &std::path::Path) -> Self {
        Self {
            path: path.to_owned(),
            id: file_id(path),
        }
    }

    /// Removes the file if it is still the socket this daemon bound: never another daemon's,
    /// nor a file put there since.
    fn remove_if_ours(&self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket");
            }
        } else {
            tracing::info!(path = %self.path.display(), "socket file replaced since bound; left alone");
        }
    }
}

/// The socket files a daemon bound. Dropping it (at shutdown, or when a start fails after
/// binding) removes those that are still its own.
#[derive(Debug, Default)]
struct OwnSockets(Vec<BoundSocket>);

impl Drop for OwnSockets {
    fn drop(&mut self) {
        for socket in &self.0 {
            socket.remove_if_ours();
        }
    }
}

fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
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
        Self::start_with_state(config, clock, opts, StateOptions::default()).await
    }

    /// [`Daemon::start_with`] with [`StateOptions`] (`serve --init-new-ca`). The `data_dir`
    /// lock is taken first, before any socket is touched, and held until
    /// [`Daemon::shutdown`].
    ///
    /// # Errors
    /// [`AppError`] when the state, the CA or a listener cannot be set up.
    pub async fn start_with_state(
        config: Config,
        clock: Arc<dyn Clock>,
        opts: DaemonOptions,
        state: StateOptions,
    ) -> Result<Self, AppError> {
        crate::federation::fd_budget::raise_nofile_limit();
        let OpenedState {
            lock, storage, ca, ..
        } = open_state(&config, clock.clone(), state)?;
        let ca = Arc::new(ca);
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
        let agent_listener = match &config.agent_api {
            Some(a) => Some(bind_tcp("the agent api", None, a.listen).await?),
            None => None,
        };
        let mut sockets = OwnSockets::default();
        let admin_socket = config.admin_api.socket.clone();
        let admin_listener = admin_api::bind(&admin_socket).map_err(|source| AppError::Bind {
            what: "the admin socket",
            at: admin_socket.display().to_string(),
            source,
        })?;
        sockets.0.push(BoundSocket::new(&admin_socket));
        let workload_socket = config.workload_api.socket.clone();
        let workload_listener =
            workload_api::bind(&workload_socket).map_err(|source| AppError::Bind {
                what: "the workload api socket",
                at: workload_socket.display().to_string(),
                source,
            })?;
        sockets.0.push(BoundSocket::new(&workload_socket));

        let cancel = CancellationToken::new();
        // A start that fails from here on stops the tasks already spawned.
        let stop_on_error = cancel.clone().drop_guard();
        let tracker = TaskTracker::new();
        let registry = Registry::default();
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
        // Replicas of a shared store: one fetcher per peer at a time (a lease), and pins that
        // another replica wrote are read when it notifies (returns at once on SQLite).
        tracker.spawn(crate::federation::lease::run(
            peers.clone(),
            refresh.clone(),
            crate::federation::lease::lease_ttl(config.federation_min_refresh_interval),
            cancel.child_token(),
        ));

        let bundle_endpoint_addr = bundle_listener.as_ref().and_then(|l| l.local_addr().ok());
        // Replicas of a shared store list each other by their bundle endpoints.
        storage.announce(&bundle_endpoint_addr.map_or_else(String::new, |a| a.to_string()));
        if let (Some(listener), Some(be)) = (bundle_listener, &config.bundle_endpoint) {
            let (certs, task) = ServerCerts::start(
                &be.profile,
                ca.subscribe(),
                clock.clone(),
                cancel.child_token(),
            )
            .map_err(EndpointError::from)?;
            tracker.spawn(task);
            let options = ServeOptions {
                metrics: registry.bundle_endpoint.clone(),
                ..ServeOptions::default()
            };
            let serve = endpoint::serve_with(
                listener,
                ca.subscribe(),
                certs,
                options,
                cancel.child_token(),
            );
            tracker.spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "bundle endpoint stopped");
                }
            });
        }

        let (entries, entries_rx) = watch::channel(server_entries(&config.entries));
        tracker.spawn(workload_api::serve_with(
            workload_listener,
            WorkloadApiDeps {
                own: ca.subscribe().into(),
                peers: peers.subscribe().into(),
                entries: entries_rx,
                clock: clock.clone(),
            },
            workload_api::ServeOptions {
                limits: workload_api::Limits::default(),
                metrics: registry.workload_api.clone(),
            },
            cancel.child_token(),
        ));

        let (all_entries, all_entries_rx) = watch::channel(Arc::new(config.entries.clone()));
        let agents = Arc::new(
            crate::agent_api::registry::AgentRegistry::open(Some(storage.clone()))
                .map_err(store_err(&config))?,
        );
        let nodes = Arc::new(crate::node::admin::Nodes::with_state(
            clock.clone(),
            agents.clone(),
            crate::node::token::JoinTokens::with_store(storage.clone()),
        ));
        if let (Some(listener), Some(agent_api)) = (agent_listener, &config.agent_api) {
            let core = crate::agent_api::AgentApiCore {
                trust_domain: config.trust_domain.clone(),
                ca: ca.subscribe(),
                peers: peers.subscribe(),
                entries: all_entries_rx,
                nodes: nodes.clone(),
                attestation: config.node_attestation.clone(),
                metrics: registry.agents.clone(),
            };
            let limits = crate::agent_api::server::Limits::from_config(agent_api);
            crate::agent_api::start(
                listener,
                core,
                agents,
                limits,
                &tracker,
                cancel.child_token(),
            )?;
        }

        let last_reload = LastReload::default();
        let admin_state = AdminState {
            ca: ca.clone(),
            peers: peers.clone(),
            status: status.clone(),
            refresh: refresh.clone(),
            endpoint: published_endpoint(&config, bundle_endpoint_addr),
            nodes,
            entries: entries.subscribe(),
            last_reload: last_reload.clone(),
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
                registry,
            };
            tracker.spawn(metrics::serve(listener, state, cancel.child_token()));
        }
        ready.store(true, Ordering::Release);
        stop_on_error.disarm();
        let snapshot = ca.snapshot();
        tracing::info!(
            trust_domain = %config.trust_domain,
            sequence = snapshot.bundle.sequence.unwrap_or(0),
            authorities = snapshot.slots.len(),
            pinned_peers = peers.current().len(),
            bundle_endpoint = %bundle_endpoint_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()),
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
            sockets,
            lock,
            entries,
            all_entries,
            config,
            fetchers,
            last_reload,
            cancel,
            tracker,
        })
    }

    /// The config file the daemon was started from.
    pub fn config_file(&self) -> &std::path::Path {
        &self.config.source
    }

    /// Applies a re-read config (`SIGHUP`), all or nothing (see [`crate::reload`]): the entries
    /// and the federation relationships at once, or nothing at all when any part cannot apply
    /// (a relationship that cannot start, a section that needs a restart).
    ///
    /// # Errors
    /// Why nothing was applied, in words.
    pub fn reload(&mut self, new: Config) -> Result<ReloadOutcome, String> {
        let outcome = reload::diff(&self.config, &new);
        if !outcome.needs_restart.is_empty() {
            return Err(format!(
                "{} changed, which applies only after a restart; nothing applied (restart the \
                 daemon, or undo that change and send SIGHUP again)",
                outcome.needs_restart.join(", ")
            ));
        }
        // Every relationship's client is built before anything changes: a failure here
        // leaves the running relationships and entries as they were.
        if outcome.federation_changed {
            let (started, removed) = self
                .fetchers
                .apply(&new.federation)
                .map_err(|e| format!("{e}; nothing applied"))?;
            tracing::info!(?started, ?removed, "federation relationships updated");
            self.config.federation = new.federation;
        }
        if outcome.entries_changed {
            self.entries.send_replace(server_entries(&new.entries));
            self.all_entries.send_replace(Arc::new(new.entries.clone()));
            self.config.entries = new.entries;
        }
        Ok(outcome)
    }

    /// Records a reload's outcome for `meshtrust status`.
    pub fn record_reload(&self, result: Result<(), String>) {
        self.last_reload.record(result);
    }

    /// Stops every task, waiting up to [`SHUTDOWN_GRACE`], removes the socket files it bound
    /// (only if they are still the ones it bound) and lets go of the `data_dir` lock.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks did not stop within the grace period");
        }
        drop(self.sockets);
        drop(self.lock);
        tracing::info!("stopped");
    }
}

/// Runs the daemon until `shutdown` resolves. The caller installs the handlers behind `shutdown`
/// before calling; the SIGHUP handler is installed here before the daemon starts, so once it
/// logs `meshtrust ready` no signal it handles can take its default action (a SIGHUP received
/// during the start reloads right after it).
///
/// # Errors
/// [`AppError`] when the daemon cannot start.
pub async fn run(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    run_with(config, clock, StateOptions::default(), shutdown).await
}

/// [`run`] with [`StateOptions`] (`serve --init-new-ca`).
///
/// # Errors
/// [`AppError`] when the daemon cannot start.
pub async fn run_with(
    config: Config,
    clock: Arc<dyn Clock>,
    state: StateOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    // Every signal is caught before "meshtrust ready" is logged: SIGHUP's default action
    // would kill the daemon, and a signal future installs its handlers on its first poll.
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload is off");
            None
        }
    };
    tokio::pin!(shutdown);
    let early =
        std::future::poll_fn(|cx| std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready()))
            .await;
    if early {
        return Ok(());
    }
    let mut daemon =
        Daemon::start_with_state(config, clock, DaemonOptions::default(), state).await?;
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

/// The entries the server's own Workload API socket serves: those without `node` (node agents
/// serve the others).
fn server_entries(entries: &[EntryConfig]) -> Arc<Vec<EntryConfig>> {
    Arc::new(entries.iter().filter(|e| e.on_server()).cloned().collect())
}
