//! The shutdown trigger: SIGINT or SIGTERM.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM handlers, installed by [`ShutdownSignals::install`]: from then on either
/// signal is caught (never its default action) and waits for [`ShutdownSignals::recv`].
#[derive(Debug)]
pub struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers now (not on first poll), so a daemon can say it is ready only once
    /// a stop request would take the graceful path.
    ///
    /// # Errors
    /// If the signal handlers cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM since [`ShutdownSignals::install`], logging which.
    pub async fn recv(mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    }
}

/// Resolves on the first SIGINT or SIGTERM, logging which.
///
/// # Errors
/// If the signal handlers cannot be installed.
pub async fn shutdown_signal() -> std::io::Result<()> {
    ShutdownSignals::install()?.recv().await;
    Ok(())
}
