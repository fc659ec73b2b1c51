//! The command line of CONTRACT.md ("Commands").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// meshtrust: a SPIFFE trust-bundle federation daemon (mini CA, bundle endpoint, peer bundle
/// pinning, Workload API).
#[derive(Debug, Parser)]
#[command(name = "meshtrust", version, about)]
pub struct Cli {
    /// Log format on stderr. Filtering follows RUST_LOG (default: info; warn for `demo`, which prints its own story).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon for one trust domain until SIGINT/SIGTERM.
    Serve {
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
        /// The CA state.
        #[command(flatten)]
        state: InitNewCaArg,
    },
    /// Validate a config file without binding anything.
    CheckConfig(ConfigArg),
    /// The trust bundle of this trust domain.
    Bundle {
        /// What to do with the bundle.
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// CA, own bundle and every federation relationship's state, from a running daemon.
    Status {
        /// The daemon's admin socket.
        #[arg(long)]
        admin_socket: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// The two-mesh demo on one machine (no containers): two daemons federate and two
    /// workloads in different meshes talk mTLS through sidecars. Ends with `demo: OK`.
    #[command(args_conflicts_with_subcommands = true)]
    Demo {
        /// Stay up after the demo and print the sockets and URLs to poke at.
        #[arg(long)]
        keep_running: bool,
        /// The demo's workloads, for containers.
        #[command(subcommand)]
        command: Option<DemoCommand>,
    },
    /// Federation relationships of a running daemon.
    Federation {
        /// What to do.
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// A workload's companion: fetch its SVID and bundles over the Workload API, write them to
    /// files or run an mTLS proxy.
    Sidecar(crate::sidecar::SidecarArgs),
    /// A Workload API client (like `spire-agent api fetch`): print this caller's SVIDs or
    /// bundles, write them as files, or follow their updates. Exit 0 once the answer arrived
    /// (a container health check), 1 when refused (the reason printed).
    Fetch(crate::fetch::FetchArgs),
}

/// `--config FILE`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
}

/// `--init-new-ca`.
#[derive(Debug, Args)]
pub struct InitNewCaArg {
    /// Create a new CA in a data_dir whose CA was lost (its database emptied, truncated or
    /// deleted while the data_dir's CA marker remains). Without it such a start is refused.
    /// Every peer must then be given the new bundle. Ignored when the data_dir holds a CA.
    #[arg(long)]
    pub init_new_ca: bool,
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Print the current bundle from the data dir (initialising the CA if the data dir is new,
    /// so that operators can exchange bootstrap bundles before the first start).
    Show {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// SPIFFE bundle JSON, or PEM CA certificates.
        #[arg(long, value_enum, default_value_t = BundleFormat::Spiffe)]
        format: BundleFormat,
        /// The CA state.
        #[command(flatten)]
        state: InitNewCaArg,
    },
}

/// Bundle output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BundleFormat {
    /// SPIFFE bundle JSON (JWK Set with spiffe_sequence and spiffe_refresh_hint).
    Spiffe,
    /// The X.509 CA certificates as PEM.
    Pem,
}

/// `federation` subcommands.
#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Fetch a peer's bundle now and print the outcome.
    Refresh {
        /// The peer trust domain.
        trust_domain: String,
        /// The daemon's admin socket.
        #[arg(long)]
        admin_socket: PathBuf,
    },
    /// Reset a relationship: forget the peer's pinned bundle, so that the configured bootstrap
    /// bundle (re-read from disk) authenticates its endpoint again and any spiffe_sequence is
    /// accepted; then fetch now and print the outcome. For a peer that published `keys: []` or
    /// restarted its sequence after losing its state.
    Reset {
        /// The peer trust domain.
        trust_domain: String,
        /// The daemon's admin socket.
        #[arg(long)]
        admin_socket: PathBuf,
    },
}

/// The demo workloads, runnable on their own (docker compose runs them).
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// A line echo service (answers `echo: <line>`).
    Echo {
        /// Where to listen (plain TCP; put an inbound sidecar in front).
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Send one line and print the answer.
    Call {
        /// `host:port` to connect to (an outbound sidecar's listener).
        #[arg(long)]
        connect: String,
        /// The line to send.
        #[arg(long, default_value = "hello")]
        message: String,
    },
}
