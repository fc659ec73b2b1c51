//! `meshtrust fetch`: a Workload API client over gRPC, like `spire-agent api fetch`. It asks
//! the socket given by `--socket` (or `SPIFFE_ENDPOINT_SOCKET`) for this caller's X509-SVIDs,
//! JWT-SVIDs or bundles, prints what it got ([`show`]), optionally writes it as files
//! ([`write`]), and with `--watch` follows the stream until SIGINT/SIGTERM.
//!
//! Exit codes: 0 when the answer arrived (so `meshtrust fetch x509` is a container health
//! check: 0 once an SVID is served), 1 when the Workload API refused (its reason printed, e.g.
//! PermissionDenied "no identity issued") or could not be reached, 64 for a usage error.

pub mod args;
pub mod files;
pub mod show;
pub mod write;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tonic::Code;

pub use args::{FetchArgs, FetchWhat, StreamOptions};

use crate::sidecar::client::{self, WorkloadClient};
use crate::sidecar::endpoint::{self, EndpointError};
use crate::workload_api::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use files::WriteError;
use show::Shown;

/// Why `meshtrust fetch` failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No usable socket address (exit 64).
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A bad argument found after parsing (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The socket could not be reached.
    #[error("cannot reach the workload api at {socket}: {reason}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The deepest cause, in words.
        reason: String,
    },
    /// The caller has no identity here (PermissionDenied).
    #[error("refused by the workload api: {0}")]
    Refused(String),
    /// Any other gRPC error.
    #[error("the workload api answered {code}: {message}")]
    Rpc {
        /// The status code's name.
        code: String,
        /// Its message.
        message: String,
    },
    /// Nothing arrived in time.
    #[error("no answer from the workload api within {0:?}")]
    Timeout(Duration),
    /// The stream ended (the daemon stopped).
    #[error("the workload api closed the stream")]
    StreamEnded,
    /// `--write` failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Reading the token from stdin failed.
    #[error("cannot read the token from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl FetchError {
    /// True for command-line mistakes (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Endpoint(_) | Self::Usage(_))
    }
}

impl From<tonic::Status> for FetchError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::PermissionDenied => Self::Refused(status.message().to_owned()),
            code => Self::Rpc {
                code: format!("{code:?}"),
                message: status.message().to_owned(),
            },
        }
    }
}

/// The `meshtrust fetch` command.
///
/// # Errors
/// [`FetchError`]; [`FetchError::is_usage`] tells exit 64 from exit 1.
pub fn command(args: FetchArgs) -> Result<(), FetchError> {
    let env = std::env::var(endpoint::ENDPOINT_ENV).ok();
    let socket = endpoint::resolve_named("--socket", args.socket.as_deref(), env.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FetchError::Runtime)?;
    rt.block_on(run(args, socket))
}

/// Where the printed answers go.
fn emit(shown: &Shown, json: bool) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(shown.render(json).as_bytes());
    let _ = out.flush();
}

async fn run(args: FetchArgs, socket: PathBuf) -> Result<(), FetchError> {
    let json = args.json;
    let timeout = args.timeout;
    match args.what {
        FetchWhat::Jwt {
            audience,
            spiffe_id,
            write,
        } => {
            if audience.iter().any(String::is_empty) {
                return Err(FetchError::Usage("--audience must not be empty".to_owned()));
            }
            let request = JwtsvidRequest {
                audience,
                spiffe_id: spiffe_id.unwrap_or_default(),
            };
            let msg = within(timeout, async {
                let mut c = connect(&socket).await?;
                Ok(c.fetch_jwtsvid(request).await?.into_inner())
            })
            .await?;
            if let Some(dir) = &write {
                write::jwt(dir, &msg)?;
            }
            emit(&show::jwt(&msg, SystemTime::now()), json);
            Ok(())
        }
        FetchWhat::Validate { audience, token } => {
            let token = match token.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(t) => t.to_owned(),
            };
            if token.is_empty() {
                return Err(FetchError::Usage("no token to validate".to_owned()));
            }
            let request = ValidateJwtsvidRequest {
                audience,
                svid: token,
            };
            let msg = within(timeout, async {
                let mut c = connect(&socket).await?;
                Ok(c.validate_jwtsvid(request).await?.into_inner())
            })
            .await?;
            emit(&show::validated(&msg), json);
            Ok(())
        }
        FetchWhat::X509(opts) => follow(&socket, &opts, json, timeout, Stream::X509).await,
        FetchWhat::Bundles(opts) => follow(&socket, &opts, json, timeout, Stream::Bundles).await,
        FetchWhat::JwtBundles(opts) => {
            follow(&socket, &opts, json, timeout, Stream::JwtBundles).await
        }
    }
}

/// The three server streams.
#[derive(Debug, Clone, Copy)]
enum Stream {
    X509,
    Bundles,
    JwtBundles,
}

/// One open stream, whatever its message type, turned into "show and write" steps.
enum Open {
    X509(tonic::Streaming<crate::workload_api::proto::X509svidResponse>),
    Bundles(tonic::Streaming<crate::workload_api::proto::X509BundlesResponse>),
    JwtBundles(tonic::Streaming<crate::workload_api::proto::JwtBundlesResponse>),
}

impl Open {
    async fn start(socket: &Path, which: Stream) -> Result<Self, FetchError> {
        let mut c = connect(socket).await?;
        Ok(match which {
            Stream::X509 => Self::X509(c.fetch_x509svid(X509svidRequest {}).await?.into_inner()),
            Stream::Bundles => Self::Bundles(
                c.fetch_x509_bundles(X509BundlesRequest {})
                    .await?
                    .into_inner(),
            ),
            Stream::JwtBundles => Self::JwtBundles(
                c.fetch_jwt_bundles(JwtBundlesRequest {})
                    .await?
                    .into_inner(),
            ),
        })
    }

    /// The next message, shown (and written to `dir`).
    async fn next(&mut self, dir: Option<&Path>) -> Result<Shown, FetchError> {
        let now = SystemTime::now();
        Ok(match self {
            Self::X509(s) => {
                let msg = s.message().await?.ok_or(FetchError::StreamEnded)?;
                if let Some(dir) = dir {
                    write::x509(dir, &msg)?;
                }
                show::x509(&msg, now)
            }
            Self::Bundles(s) => {
                let msg = s.message().await?.ok_or(FetchError::StreamEnded)?;
                if let Some(dir) = dir {
                    write::x509_bundles(dir, &msg)?;
                }
                show::x509_bundles(&msg, now)
            }
            Self::JwtBundles(s) => {
                let msg = s.message().await?.ok_or(FetchError::StreamEnded)?;
                if let Some(dir) = dir {
                    write::jwt_bundles(dir, &msg)?;
                }
                show::jwt_bundles(&msg)
            }
        })
    }
}

/// The first message (under `timeout`), then with `--watch` every further one until a stop
/// signal.
async fn follow(
    socket: &Path,
    opts: &StreamOptions,
    json: bool,
    timeout: Duration,
    which: Stream,
) -> Result<(), FetchError> {
    // Installed first: a stop sent once the first answer is printed is a clean exit.
    let signals = if opts.watch {
        Some(crate::signal::ShutdownSignals::install().map_err(FetchError::Runtime)?)
    } else {
        None
    };
    let dir = opts.write.as_deref();
    let (mut stream, first) = within(timeout, async {
        let mut stream = Open::start(socket, which).await?;
        let first = stream.next(dir).await?;
        Ok((stream, first))
    })
    .await?;
    emit(&first, json);
    let Some(signals) = signals else {
        return Ok(());
    };
    let stop = signals.recv();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            next = stream.next(dir) => emit(&next?, json),
        }
    }
}

async fn within<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, FetchError>>,
) -> Result<T, FetchError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn connect(socket: &Path) -> Result<WorkloadClient, FetchError> {
    client::connect(socket)
        .await
        .map_err(|e| FetchError::Connect {
            socket: socket.to_owned(),
            reason: deepest(&e),
        })
}

/// The innermost cause of an error (for a transport error, the OS error in words).
pub fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn read_stdin() -> Result<String, FetchError> {
    let mut text = String::new();
    std::io::stdin()
        .take(crate::workload_api::jwt::MAX_TOKEN_LEN as u64 + 1)
        .read_to_string(&mut text)
        .map_err(FetchError::Stdin)?;
    Ok(text.trim().to_owned())
}
