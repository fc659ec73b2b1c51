//! The command line of CONTRACT.md ("Commands").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// meshtrust: a SPIFFE trust-bundle federation daemon (mini CA, bundle endpoint, peer bundle
/// pinning, Workload API).
#[derive(Debug, Parser)]
#[command(name = "meshtrust", version, about)]
pub struct Cli {
    /// Log lines on stderr as text or json (filtered by RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, hide_possible_values = true)]
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
    /// Run the daemon for one trust domain until SIGINT/SIGTERM; SIGHUP re-reads the config.
    #[command(
        long_about = "Run the daemon for one trust domain until SIGINT/SIGTERM.\n\n\
        SIGHUP re-reads the config file and applies the [[entry]] and [[federation]] changes at \
        once, all or nothing: a config that does not load, a relationship that cannot start \
        (e.g. a missing bootstrap bundle) or a change to a section that needs a restart \
        (trust_domain, data_dir, [ca], listeners, sockets) applies nothing. `meshtrust status` \
        shows the outcome of the last reload."
    )]
    Serve {
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
        /// The CA state.
        #[command(flatten)]
        state: InitNewCaArg,
    },
    /// Validate a config file without binding anything; print warnings about what works
    /// today but will hurt. Exit 64 on an error (or, with --strict, on a warning).
    CheckConfig(CheckConfigArgs),
    /// The trust bundle of this trust domain.
    Bundle {
        /// What to do with the bundle.
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// CA, own bundle and every federation relationship's state, from a running daemon.
    Status {
        /// Where the daemon's admin socket is.
        #[command(flatten)]
        admin: AdminTarget,
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
    /// Print a shell completion script (e.g. `meshtrust completions bash >
    /// /etc/bash_completion.d/meshtrust`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) of meshtrust and its subcommands (e.g. `meshtrust man >
    /// meshtrust.1`).
    Man,
    /// Join tokens for node agents (admin API of a server).
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// `agent --config FILE`: run a node agent. `agent list` / `agent evict NODE`: the attested
    /// agents of a server (its admin API).
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        /// The agent process's arguments.
        #[command(flatten)]
        run: AgentRunArgs,
        /// The server's agents.
        #[command(subcommand)]
        command: Option<AgentCommand>,
    },
}

/// `meshtrust agent --config FILE` (the node agent process).
#[derive(Debug, Args)]
pub struct AgentRunArgs {
    /// The agent's config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `agent` subcommands (on a server).
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// The attested agents: SPIFFE ID, node, method, address, connected, last sync, SVID expiry,
    /// evicted.
    List {
        /// Print `[{"spiffe_id","node","method","address","connected","last_sync",
        /// "svid_expires_at","evicted"}]`.
        #[arg(long)]
        json: bool,
        /// Where the server is.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Evict the agent of NODE (a node name or its agent SPIFFE ID): its Sync streams end at
    /// once and its SVID is refused until it attests again with a new token.
    Evict {
        /// The node name, or `spiffe://<td>/meshtrust/agent/<node>`.
        node: String,
        /// Where the server is.
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Shells for `completions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a one-time join token for node NAME and print it.
    Create {
        /// The node name (one SPIFFE ID path segment): the agent becomes
        /// `spiffe://<td>/meshtrust/agent/NAME`.
        #[arg(long)]
        node: String,
        /// How long the token may be used (e.g. `10m`, at most 7 days).
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// Print `{"token","node","expires_at"}`.
        #[arg(long)]
        json: bool,
        /// Where the server is.
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// `--config FILE`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
}

/// `check-config`'s arguments.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The config file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Also read what the daemon reads at start (bootstrap bundles: present, parseable, of
    /// the right trust domain), and fail (exit 64) on warnings too.
    #[arg(long)]
    pub strict: bool,
}

/// Default admin socket, when neither `--admin-socket` nor `--config` is given.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/meshtrust/admin.sock";

/// How an admin command finds the daemon's admin socket: `--admin-socket PATH`, or
/// `--config FILE` (its `[admin_api] socket`), else [`DEFAULT_ADMIN_SOCKET`].
#[derive(Debug, Clone, Args)]
pub struct AdminTarget {
    /// The daemon's admin socket [default: /run/meshtrust/admin.sock].
    #[arg(long, conflicts_with = "config")]
    pub admin_socket: Option<PathBuf>,
    /// The daemon's config file: its [admin_api] socket is used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
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
        /// Where the daemon's admin socket is.
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Reset a relationship: fetch the peer's bundle authenticated by the configured bootstrap
    /// bundle (re-read from disk) alone, and only if that succeeds replace the pinned bundle
    /// with it, whatever its spiffe_sequence. For a peer that published `keys: []` or lost its
    /// state and changed its CA. A failed fetch changes nothing.
    Reset {
        /// The peer trust domain.
        trust_domain: String,
        /// Where the daemon's admin socket is.
        #[command(flatten)]
        admin: AdminTarget,
        /// Forget the pinned bundle first, even if the fetch then fails (workloads lose the
        /// peer's bundle until a fetch succeeds).
        #[arg(long)]
        force: bool,
    },
    /// Print a one-line peering token for this daemon's bundle (trust domain, bundle endpoint
    /// URL, endpoint SPIFFE ID, SHA-256 of its CA certificates, expiry), for the other
    /// organisation's `meshtrust federation join`. Not secret, but hand it over a channel you
    /// trust not to alter it: it is what authenticates the first contact.
    Invite {
        /// The daemon's admin socket.
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        admin_socket: Option<PathBuf>,
        /// The daemon's config file (its [admin_api] socket is used).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long the token is accepted (1m to 7d).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// The bundle endpoint URL peers reach (default: https://<listen address>/; required
        /// when listening on 0.0.0.0 or behind NAT or a load balancer).
        #[arg(long)]
        url: Option<String>,
        /// Print the token's fields as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join a peer from its invite token: fetch its bundle over https_spiffe, accept it only if
    /// its CA certificates match the token's digest and its endpoint proves the token's SPIFFE
    /// ID, write it as the bootstrap bundle, and print the [[federation]] block to add (or
    /// append it with --config FILE --write; then SIGHUP the daemon). A refused token writes
    /// nothing and exits 1.
    Join {
        /// The token printed by the peer's `meshtrust federation invite`.
        token: String,
        /// Where to write the peer's bundle (0644; must not exist).
        #[arg(long)]
        bootstrap_out: PathBuf,
        /// Our config file: the block's paths are made relative to it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Append the block to --config (refused if it already federates with the peer).
        #[arg(long, requires = "config")]
        write: bool,
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
