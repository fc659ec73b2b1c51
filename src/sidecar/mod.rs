//! `meshtrust sidecar`: a workload's companion and a plain *client* of the Workload API.
//!
//! It holds a FetchX509SVID stream open ([`client`]), validates each message into an
//! [`X509Context`] ([`context`]) and then either writes PEM files ([`files`], [`files_mode`]) or
//! runs an mTLS proxy ([`proxy`]) whose rustls configs ([`tls`]) verify peers against the bundle
//! of their own trust domain and authorize them ([`authorize`]).
//!
//! Every update and connection is printed as one line in plain words through a [`Reporter`]
//! (stdout for the command; the demo and tests pass their own).

pub mod args;
pub mod authorize;
pub mod client;
pub mod context;
pub mod endpoint;
pub mod files;
pub mod files_mode;
pub mod jwt_file;
pub mod leaf;
pub mod proxy;
#[cfg(test)]
mod test_support;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

pub use args::{SidecarArgs, SidecarMode};
pub use client::{ClientError, ContextRx, X509Watcher};
pub use context::X509Context;

use authorize::{AuthorizeError, Authorizer};
use endpoint::EndpointError;
use files::FilesError;
use files_mode::FilesOptions;
use proxy::ProxyError;
use tls::TlsError;

/// Where the one-line reports go.
#[derive(Clone)]
pub struct Reporter(Arc<dyn Fn(&str) + Send + Sync>);

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reporter")
    }
}

impl Reporter {
    /// Reports through `f`.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// One line per report on stdout (the command's default).
    pub fn stdout() -> Self {
        Self::new(|line| println!("{line}"))
    }

    /// One JSON object per report on stdout (`--log-format json`), shaped like the JSON log
    /// lines: `{"timestamp","level","fields":{"message"},"target":"meshtrust::sidecar"}`;
    /// `level` is `WARN` for the lines that start with `WARNING`.
    pub fn stdout_json() -> Self {
        Self::new(|line| println!("{}", json_line(line, std::time::SystemTime::now())))
    }

    /// Reports one line.
    pub fn line(&self, line: impl AsRef<str>) {
        (self.0)(line.as_ref());
    }
}

/// One report as a JSON log line.
fn json_line(line: &str, now: SystemTime) -> String {
    let level = if line.starts_with("WARNING") {
        "WARN"
    } else {
        "INFO"
    };
    serde_json::json!({
        "timestamp": crate::clock::rfc3339(now),
        "level": level,
        "fields": { "message": line },
        "target": "meshtrust::sidecar",
    })
    .to_string()
}

/// Why the sidecar stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The Workload API address is unusable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The inbound policy is empty.
    #[error(transparent)]
    Authorize(#[from] AuthorizeError),
    /// A TLS config could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The proxy cannot listen.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The output folder cannot be used.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The Workload API watcher stopped for good.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A bad argument found after parsing.
    #[error("{0}")]
    Usage(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl SidecarError {
    /// True for command-line mistakes (exit 64), false for runtime failures (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Endpoint(_)
                | Self::Authorize(_)
                | Self::Usage(_)
                | Self::Proxy(ProxyError::NotLoopback { .. })
        )
    }
}

/// Runs the sidecar until `cancel` fires or the Workload API watcher stops for good.
///
/// # Errors
/// [`SidecarError`]: a bad address or policy before anything starts, a bind or folder failure,
/// or the watcher's [`ClientError`].
pub async fn run(
    args: SidecarArgs,
    env_socket: Option<String>,
    report: Reporter,
    cancel: CancellationToken,
) -> Result<(), SidecarError> {
    run_on(args, env_socket, None, report, cancel).await
}

/// [`run`] with the proxy's listener already bound (the demo binds `127.0.0.1:0` first so that
/// it can print the command line with the real port); `None` binds `--listen`.
///
/// # Errors
/// As [`run`].
pub async fn run_on(
    args: SidecarArgs,
    env_socket: Option<String>,
    listener: Option<tokio::net::TcpListener>,
    report: Reporter,
    cancel: CancellationToken,
) -> Result<(), SidecarError> {
    let socket = endpoint::resolve(args.workload_socket.as_deref(), env_socket.as_deref())?;
    let want = args.spiffe_id;
    let cancel = cancel.child_token();
    // Stop the other tasks when this function returns, whatever the reason.
    let _guard = cancel.clone().drop_guard();
    // Arguments are checked and listeners bound before the Workload API is contacted, so a bad
    // command line fails at once.
    let plan = match args.mode {
        SidecarMode::Files {
            out,
            on_update,
            signal_pid,
            signal,
            jwt_audience,
        } => {
            if jwt_audience.iter().any(String::is_empty) {
                return Err(SidecarError::Usage(
                    "--jwt-audience must not be empty".to_owned(),
                ));
            }
            let jwt = (!jwt_audience.is_empty()).then(|| jwt_file::JwtFileOptions {
                socket: socket.clone(),
                dir: out.clone(),
                audience: jwt_audience,
                spiffe_id: want.clone(),
            });
            Plan::Files(
                FilesOptions {
                    dir: out,
                    on_update,
                    signal: signal_pid.map(|pid| (pid, signal)),
                },
                jwt,
            )
        }
        SidecarMode::Inbound {
            listen,
            forward,
            allow,
            allow_trust_domain,
        } => {
            let authorizer = Authorizer::one_of(allow, allow_trust_domain)?;
            let listener = bind_or(listener, &listen).await?;
            Plan::Inbound(listener, forward, authorizer)
        }
        SidecarMode::Outbound {
            listen,
            connect,
            expect,
            allow_non_loopback,
        } => {
            let listener = match listener {
                Some(l) => l,
                None => proxy::bind_outbound(&listen, allow_non_loopback).await?,
            };
            let local = listener.local_addr().ok();
            match local {
                Some(addr) if addr.ip().is_loopback() => report.line(format!(
                    "outbound: {addr} is loopback only: only processes on this host can connect"
                )),
                Some(addr) => report.line(format!(
                    "outbound: WARNING {addr} is not loopback (--allow-non-loopback): whoever can \
                     reach it connects to {expect} as this workload"
                )),
                None => {}
            }
            Plan::Outbound(listener, connect, expect)
        }
    };
    let watcher = X509Watcher::spawn_for(socket, want, report.clone(), cancel.child_token());
    tokio::spawn(expiry_alarm(
        watcher.subscribe(),
        report.clone(),
        cancel.clone(),
    ));
    let ctx = watcher.subscribe();
    let work: std::pin::Pin<Box<dyn Future<Output = Result<(), SidecarError>> + Send>> = match plan
    {
        Plan::Files(opts, jwt) => Box::pin(async move {
            if let Some(jwt) = jwt {
                tokio::spawn(jwt_file::run(jwt, report.clone(), cancel.clone()));
            }
            files_mode::run_files(ctx, opts, report, cancel.clone()).await?;
            Ok(())
        }),
        Plan::Inbound(listener, forward, authorizer) => {
            let config = tls::server_config(ctx.clone(), authorizer)?;
            Box::pin(async move {
                proxy::run_inbound(listener, forward, config, ctx, report, cancel.clone()).await;
                Ok(())
            })
        }
        Plan::Outbound(listener, connect, expect) => {
            let config = tls::client_config(ctx.clone(), Authorizer::exact(expect.clone()))?;
            Box::pin(async move {
                let cancel = cancel.clone();
                proxy::run_outbound(listener, connect, expect, config, ctx, report, cancel).await;
                Ok(())
            })
        }
    };
    tokio::select! {
        r = work => r?,
        r = watcher.stopped() => r?,
    }
    Ok(())
}

/// What a mode will run, once its arguments are checked and its listener bound.
enum Plan {
    Files(FilesOptions, Option<jwt_file::JwtFileOptions>),
    Inbound(tokio::net::TcpListener, String, Authorizer),
    Outbound(tokio::net::TcpListener, String, crate::spiffe_id::SpiffeId),
}

async fn bind_or(
    given: Option<tokio::net::TcpListener>,
    listen: &str,
) -> Result<tokio::net::TcpListener, SidecarError> {
    Ok(match given {
        Some(l) => l,
        None => proxy::bind(listen).await?,
    })
}

/// The `meshtrust sidecar` command: a runtime, SIGINT/SIGTERM as the stop, reports on stdout
/// (as JSON lines when `json`, for `--log-format json`).
///
/// # Errors
/// As [`run`], plus [`SidecarError::Runtime`].
pub fn command(args: SidecarArgs, json: bool) -> Result<(), SidecarError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(SidecarError::Runtime)?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        // Installed before the sidecar reports anything: a stop sent on reading a report is
        // graceful.
        if let Ok(signals) = crate::signal::ShutdownSignals::install() {
            tokio::spawn(async move {
                signals.recv().await;
                on_signal.cancel();
            });
        }
        let env = std::env::var(endpoint::ENDPOINT_ENV).ok();
        let report = if json {
            Reporter::stdout_json()
        } else {
            Reporter::stdout()
        };
        run(args, env, report, cancel).await
    })
}

/// Says loudly when the current SVID expires and no new one has replaced it: the proxies then
/// refuse new connections, and files mode leaves stale files in place.
pub async fn expiry_alarm(mut ctx: ContextRx, report: Reporter, cancel: CancellationToken) {
    loop {
        let current = ctx.borrow_and_update().clone();
        let deadline = current.as_ref().map(|c| {
            let left = c
                .svid
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = ctx.changed() => if changed.is_err() { return },
            () = sleep_until(deadline), if deadline.is_some() => {
                if let Some(c) = current {
                    tracing::error!(spiffe_id = %c.svid.spiffe_id, "svid expired and no new one arrived");
                    report.line(format!(
                        "WARNING: the svid of {} expired at {} and no new one arrived from the workload api; \
                         new connections are refused and written files are stale",
                        c.svid.spiffe_id,
                        crate::clock::rfc3339(c.svid.not_after)
                    ));
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = ctx.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod json_tests {
    #[test]
    fn report_lines_become_json_log_lines() {
        let at = std::time::SystemTime::UNIX_EPOCH;
        let v: serde_json::Value =
            serde_json::from_str(&super::json_line("WARNING: the svid \"x\" expired", at)).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["fields"]["message"], "WARNING: the svid \"x\" expired");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00Z");
        let v: serde_json::Value =
            serde_json::from_str(&super::json_line("svid update: x", at)).unwrap();
        assert_eq!(v["level"], "INFO");
    }
}
