//! The `meshtrust fetch` command line.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `meshtrust fetch [--socket ADDR] [--json] <x509|jwt|bundles|jwt-bundles|validate> ...`
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The Workload API socket: `unix:///absolute/path` or a filesystem path. Defaults to
    /// $SPIFFE_ENDPOINT_SOCKET (a `unix:///absolute/path` URI).
    #[arg(long, global = true, value_name = "ADDR")]
    pub socket: Option<String>,
    /// Print JSON (one document per answer, one per line with --watch) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up when the (first) answer has not come within this long, e.g. `10s`: a health
    /// check never hangs on a stuck socket.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = crate::config::parse_duration)]
    pub timeout: std::time::Duration,
    /// What to fetch.
    #[command(subcommand)]
    pub what: FetchWhat,
}

/// `--write DIR` and `--watch`, for the streamed answers.
#[derive(Debug, Clone, Args)]
pub struct StreamOptions {
    /// Also write what arrived as files into DIR (created if missing; each file replaced
    /// atomically, private keys and tokens 0600).
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
    /// Follow the stream: print (and write) every update until SIGINT/SIGTERM.
    #[arg(long)]
    pub watch: bool,
}

/// What `meshtrust fetch` asks the Workload API for.
#[derive(Debug, Clone, Subcommand)]
pub enum FetchWhat {
    /// This caller's X509-SVIDs and bundles (FetchX509SVID). Files: svid.pem, svid_key.pem,
    /// bundle.pem, federated/<td>.pem (further SVIDs: svid.N.pem, svid_key.N.pem).
    X509(StreamOptions),
    /// JWT-SVIDs for an audience (FetchJWTSVID). File: jwt_svid.token (further: jwt_svid.N.token).
    Jwt {
        /// The token's audience (repeatable; at least one).
        #[arg(long, value_name = "AUDIENCE", required = true)]
        audience: Vec<String>,
        /// Only the JWT-SVID of this SPIFFE ID (default: one per identity of the caller).
        #[arg(long, value_name = "SPIFFE_ID")]
        spiffe_id: Option<String>,
        /// Also write the tokens into DIR (0600, replaced atomically).
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// The X.509 bundles this caller may use (FetchX509Bundles). Files: <td>.pem.
    Bundles(StreamOptions),
    /// The JWT bundles this caller may use (FetchJWTBundles). Files: <td>.jwks.json.
    JwtBundles(StreamOptions),
    /// Validate a JWT-SVID for an audience (ValidateJWTSVID); prints its SPIFFE ID and claims.
    Validate {
        /// The audience the token must carry.
        #[arg(long, value_name = "AUDIENCE")]
        audience: String,
        /// The token; read from stdin when absent or `-`.
        token: Option<String>,
    },
}
