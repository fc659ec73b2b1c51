//! The `meshtrust sidecar` command line.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::files_mode::Signal;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// `meshtrust sidecar [--workload-socket ADDR] <files|inbound|outbound> ...`
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// The Workload API socket: `unix:///absolute/path` or a filesystem path. Defaults to
    /// $SPIFFE_ENDPOINT_SOCKET, which must be a `unix:///absolute/path` URI.
    #[arg(long, global = true, value_name = "ADDR")]
    pub workload_socket: Option<String>,
    /// Which of this caller's identities to use, when the daemon registers several for it
    /// (default: the first, the Workload API's default SVID).
    #[arg(long, global = true, value_name = "SPIFFE_ID", value_parser = workload_id)]
    pub spiffe_id: Option<SpiffeId>,
    /// What to do with the SVID.
    #[command(subcommand)]
    pub mode: SidecarMode,
}

/// The sidecar's modes.
#[derive(Debug, Clone, Subcommand)]
pub enum SidecarMode {
    /// Write the SVID, its key and the bundles as PEM files into a folder, on every update.
    Files {
        /// The output folder (created if missing). `DIR/current` always points at a complete
        /// version; `DIR/svid.pem` etc. are stable links through it.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A shell command run with `sh -c` after each update (MESHTRUST_FILES_DIR is set).
        #[arg(long, value_name = "CMD")]
        on_update: Option<String>,
        /// A process to signal after each update (sent with kill(2)).
        #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
        signal_pid: Option<u32>,
        /// The signal sent to --signal-pid.
        #[arg(
            long,
            value_enum,
            ignore_case = true,
            default_value = "HUP",
            requires = "signal_pid"
        )]
        signal: Signal,
        /// Also keep a JWT-SVID for this audience in DIR/jwt_svid.token (0600), fetched again
        /// at half its lifetime (repeatable: one token for all the audiences given).
        #[arg(long, value_name = "AUDIENCE")]
        jwt_audience: Vec<String>,
    },
    /// Terminate mTLS from other workloads and forward plain TCP to the local service.
    Inbound {
        /// Where to accept mTLS (`host:port`).
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// The local service (`host:port`).
        #[arg(long, value_name = "ADDR")]
        forward: String,
        /// A caller SPIFFE ID to let in (repeatable).
        #[arg(long, value_name = "SPIFFE_ID", value_parser = workload_id)]
        allow: Vec<SpiffeId>,
        /// A trust domain whose every workload may call (repeatable).
        #[arg(long, value_name = "TRUST_DOMAIN")]
        allow_trust_domain: Vec<TrustDomain>,
    },
    /// Accept plain local connections and originate mTLS to one expected peer.
    Outbound {
        /// Where the local workload connects (`host:port`): a loopback address (127.0.0.0/8,
        /// ::1, or a name resolving only to those) unless --allow-non-loopback.
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// Let --listen be a non-loopback address. Whoever can reach it then connects to the
        /// peer under this workload's identity: only for a network that only this workload
        /// reaches (e.g. a pod's own interface).
        #[arg(long)]
        allow_non_loopback: bool,
        /// The remote inbound proxy (`host:port`).
        #[arg(long, value_name = "ADDR")]
        connect: String,
        /// The only SPIFFE ID the remote side may present.
        #[arg(long, value_name = "SPIFFE_ID", value_parser = workload_id)]
        expect: SpiffeId,
    },
}

/// A peer is a workload, so `--allow`/`--expect` need an ID with a path (X509-SVID 1.2.2).
fn workload_id(s: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::new_workload(s)
}
