//! Wiring of the agent process: state from the cache, then every listener bound (Workload API,
//! admin socket, metrics), then the sync task; all under one cancellation token, stopped on
//! SIGTERM/SIGINT within a grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{AgentConfig, NodeProof};
use super::state::AgentState;
use super::status::{Endpoints, SyncMetrics, admin_router, metrics_router};
use super::{AgentError, sync};
use crate::clock::SystemClock;
use crate::metrics::workload_api::WorkloadApiMetrics;
use crate::workload_api;

/// How long shutdown waits for tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// While no server is connected, how often the time left on the cache is logged.
const OFFLINE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` resolves.
///
/// # Errors
/// [`AgentError::Usage`] for a config-level problem (exit 64), others when it cannot start.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    crate::federation::fd_budget::raise_nofile_limit();
    let bytes = std::fs::read(&config.server_bundle).map_err(|e| {
        AgentError::Usage(format!(
            "server_bundle: {}: {e}",
            config.server_bundle.display()
        ))
    })?;
    let bootstrap =
        crate::bundle::pem::parse_bootstrap(&config.trust_domain, &bytes).map_err(|e| {
            AgentError::Usage(format!(
                "server_bundle: {}: {e}",
                config.server_bundle.display()
            ))
        })?;
    let state = AgentState::open(
        config.trust_domain.clone(),
        &config.data_dir,
        bootstrap,
        Arc::new(SystemClock),
    )?;
    if state.agent().is_none()
        && let NodeProof::JoinToken(file) = &config.attestation
        && !file.is_file()
    {
        return Err(AgentError::Usage(format!(
            "attestation.join_token_file: {} does not exist (the agent has not attested yet)",
            file.display()
        )));
    }

    let bind = |what: &'static str, at: &std::path::Path, e: std::io::Error| AgentError::Bind {
        what,
        at: at.display().to_string(),
        source: e,
    };
    let workload_listener = workload_api::bind(&config.workload_socket)
        .map_err(|e| bind("the workload api socket", &config.workload_socket, e))?;
    let admin_listener = crate::admin_api::bind(&config.admin_socket)
        .map_err(|e| bind("the admin socket", &config.admin_socket, e))?;
    let metrics_listener = match config.metrics {
        Some(addr) => Some(crate::listen::tcp(addr).map_err(|e| AgentError::Bind {
            what: "metrics",
            at: addr.to_string(),
            source: e,
        })?),
        None => None,
    };

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let wl_metrics = Arc::new(WorkloadApiMetrics::default());
    tracker.spawn(workload_api::serve_with(
        workload_listener,
        state.deps(),
        workload_api::ServeOptions {
            limits: workload_api::Limits::default(),
            metrics: wl_metrics.clone(),
        },
        cancel.child_token(),
    ));
    let sync_metrics = Arc::new(SyncMetrics::default());
    let endpoints = Endpoints {
        state: state.clone(),
        workload_api: wl_metrics,
        sync: sync_metrics.clone(),
    };
    let admin_cancel = cancel.child_token();
    let admin_app = admin_router(endpoints.clone());
    tracker.spawn(async move {
        let served = axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(admin_cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "agent admin socket stopped");
        }
    });
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = metrics_listener {
        tracker.spawn(crate::metrics::serve_app(
            listener,
            metrics_router(endpoints),
            cancel.child_token(),
        ));
    }
    let config = Arc::new(config);
    tracker.spawn(sync::run(
        state.clone(),
        config.clone(),
        sync_metrics,
        cancel.child_token(),
    ));
    tracker.spawn(offline_log(state.clone(), cancel.child_token()));
    tracing::info!(
        trust_domain = %config.trust_domain,
        node = %state.agent().map(|(n, _, _)| n).unwrap_or_else(|| "-".into()),
        servers = config.servers.len(),
        workload_socket = %config.workload_socket.display(),
        admin_socket = %config.admin_socket.display(),
        metrics = %metrics_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        "meshtrust agent ready"
    );
    shutdown.await;
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("agent tasks did not stop within the grace period");
    }
    for socket in [&config.workload_socket, &config.admin_socket] {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// While no server is connected: logs how long the cache can still serve.
async fn offline_log(state: Arc<AgentState>, cancel: CancellationToken) {
    // The first look comes soon after the start, once the first connection had its chance.
    let mut wait = Duration::from_secs(3);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = OFFLINE_LOG_EVERY;
        if state.connected() {
            continue;
        }
        match state.first_expiry_seconds() {
            Some(secs) => tracing::warn!(
                first_expiry_seconds = secs,
                "no server connected; serving cached SVIDs, the first expires in {secs}s"
            ),
            None => tracing::warn!("no server connected and nothing cached to serve"),
        }
    }
}

/// `meshtrust agent --config FILE`: exit 64 for a bad config (naming the key), 1 when the
/// agent cannot start.
///
/// # Errors
/// The exit code.
pub fn command(path: Option<&std::path::Path>) -> Result<(), u8> {
    let Some(path) = path else {
        eprintln!(
            "meshtrust: agent: --config FILE is required to run an agent (or a subcommand: \
             list, evict)"
        );
        return Err(crate::commands::EX_USAGE);
    };
    let config = AgentConfig::load(path).map_err(|e| {
        eprintln!("meshtrust: bad config: {e}");
        crate::commands::EX_USAGE
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("meshtrust: starting the async runtime: {e}");
            1
        })?;
    let result = rt.block_on(async move {
        let signals = crate::signal::ShutdownSignals::install();
        let shutdown = async {
            match signals {
                Ok(signals) => signals.recv().await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for signals");
                    std::future::pending::<()>().await;
                }
            }
        };
        run(config, shutdown).await
    });
    result.map_err(|e| {
        eprintln!("meshtrust: agent: {e}");
        if matches!(e, AgentError::Usage(_)) {
            crate::commands::EX_USAGE
        } else {
            1
        }
    })
}
