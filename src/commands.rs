//! The subcommands' bodies, mapping failures to exit codes: 64 (EX_USAGE) for a bad config or
//! command line, 1 for a runtime failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::app::{self, StateOptions};
use crate::bundle::pem;
use crate::cli::{
    BundleCommand, BundleFormat, Command, FederationCommand, InitNewCaArg, LogFormat,
};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::federation::invite_join::JoinRequest;

/// sysexits EX_USAGE: a bad config or command line.
pub const EX_USAGE: u8 = 64;

/// A command-line or config mistake found after parsing (an invalid trust domain argument, a
/// config without an admin socket): the command exits [`EX_USAGE`], not 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs one subcommand to completion (text logs).
pub fn run(command: Command) -> ExitCode {
    run_with(command, LogFormat::Text)
}

/// Runs one subcommand to completion; `log_format` also shapes the sidecar's report lines.
pub fn run_with(command: Command, log_format: LogFormat) -> ExitCode {
    let result = match command {
        Command::CheckConfig(args) => check_config(&args),
        Command::Serve { config, state } => load_config(&config.config)
            .and_then(|c| runtime_failure(serve(c, state_options(&state)))),
        Command::Bundle {
            command:
                BundleCommand::Show {
                    config,
                    format,
                    state,
                },
        } => load_config(&config)
            .and_then(|c| runtime_failure(bundle_show(&c, format, state_options(&state)))),
        Command::Status { admin, json } => {
            runtime_failure(crate::admin_client::status(&admin, json))
        }
        Command::Demo {
            keep_running,
            command,
        } => runtime_failure(crate::demo::run(keep_running, command)),
        Command::Federation {
            command:
                FederationCommand::Invite {
                    admin_socket,
                    config,
                    ttl,
                    url,
                    json,
                },
        } => admin_socket_of(admin_socket, config.as_deref()).and_then(|socket| {
            runtime_failure(crate::admin_client::invite(
                &socket,
                &ttl,
                url.as_deref(),
                json,
            ))
        }),
        Command::Federation {
            command:
                FederationCommand::Join {
                    token,
                    bootstrap_out,
                    config,
                    write,
                },
        } => join(JoinRequest {
            token,
            bootstrap_out,
            config,
            write,
        }),
        Command::Federation { command } => {
            runtime_failure(crate::admin_client::federation(command))
        }
        Command::Token { command } => crate::node::cli::token(command),
        Command::Agent {
            command: Some(command),
            ..
        } => crate::node::cli::agents(command),
        Command::Agent { command: None, run } => match run.config {
            Some(path) => crate::agent::run::command(&path),
            None => crate::node::cli::agent_process_not_built(&run),
        },
        Command::Sidecar(args) => crate::sidecar::command(args, log_format == LogFormat::Json)
            .map_err(|e| {
                eprintln!("meshtrust: sidecar: {e}");
                if e.is_usage() { EX_USAGE } else { 1 }
            }),
        Command::Fetch(args) => crate::fetch::command(args).map_err(|e| {
            eprintln!("meshtrust: fetch: {e}");
            if e.is_usage() { EX_USAGE } else { 1 }
        }),
        Command::Completions { shell } => {
            crate::manual::completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Man => runtime_failure(
            crate::manual::man(&mut std::io::stdout().lock()).context("writing the man page"),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// The admin socket from `--admin-socket`, or from the `[admin_api]` of `--config` (a bad
/// config exits 64).
fn admin_socket_of(socket: Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf, u8> {
    match (socket, config) {
        (Some(socket), _) => Ok(socket),
        (None, Some(path)) => load_config(path).map(|c| c.admin_api.socket),
        (None, None) => {
            eprintln!("meshtrust: give --admin-socket PATH or --config FILE");
            Err(EX_USAGE)
        }
    }
}

/// `meshtrust federation join`: a bad `--config` exits 64; a refused token 1, nothing written.
fn join(req: JoinRequest) -> Result<(), u8> {
    if let Some(path) = &req.config {
        load_config(path)?;
    }
    let run = || -> anyhow::Result<crate::federation::invite_join::Joined> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let joined = rt.block_on(crate::federation::invite_join::join(
            &req,
            crate::federation::client::FetchLimits::default(),
            std::time::SystemTime::now(),
        ))?;
        Ok(joined)
    };
    let joined = match run() {
        Ok(j) => j,
        Err(e) => {
            eprintln!("meshtrust: join refused, nothing written: {}", describe(&e));
            return Err(1);
        }
    };
    let td = &joined.invite.trust_domain;
    eprintln!(
        "meshtrust: {td}'s bundle accepted: {} X.509 CA (sha256 {} as the invite says), its endpoint {} proved {}; written to {}",
        joined.bundle.x509_authorities.len(),
        joined.invite.x509_authorities_sha256,
        joined.invite.url,
        joined.invite.endpoint_spiffe_id,
        joined.bootstrap_out.display()
    );
    match &joined.appended_to {
        Some(file) => println!(
            "appended the [[federation]] block for {td} to {}; apply it with SIGHUP to the daemon \
             (and add \"{td}\" to federates_with of the entries that should receive its bundle)",
            file.display()
        ),
        None => print!(
            "{}\n# Add this block to the config, add \"{td}\" to federates_with of the entries that should \
             receive its bundle, then send SIGHUP to the daemon.\n",
            joined.block
        ),
    }
    Ok(())
}

fn load_config(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("meshtrust: bad config: {e}");
        EX_USAGE
    })
}

/// Prints the error; exits 64 for a [`UsageError`], else 1.
fn runtime_failure(result: anyhow::Result<()>) -> Result<(), u8> {
    result.map_err(|e| {
        eprintln!("meshtrust: {}", describe(&e));
        if e.chain().any(|c| c.is::<UsageError>()) {
            EX_USAGE
        } else {
            1
        }
    })
}

/// `check-config [--strict]`: errors exit 64; warnings are printed (and exit 64 with
/// `--strict`, which also reads the bootstrap bundles the daemon reads at start).
fn check_config(args: &crate::cli::CheckConfigArgs) -> Result<(), u8> {
    let c = load_config(&args.config.config)?;
    let mut findings = crate::config::lint::warnings(&c);
    if args.strict {
        findings.extend(crate::config::lint::start_checks(&c));
    }
    for f in &findings {
        eprintln!("meshtrust: warning: {}: {f}", c.source.display());
    }
    if args.strict && !findings.is_empty() {
        eprintln!(
            "meshtrust: {}: {} (--strict)",
            c.source.display(),
            crate::admin_client::count(findings.len(), "warning", "warnings")
        );
        return Err(EX_USAGE);
    }
    let warned = if findings.is_empty() {
        String::new()
    } else {
        format!(
            ", {}",
            crate::admin_client::count(findings.len(), "warning", "warnings")
        )
    };
    println!(
        "{}: ok (trust domain {}{warned})",
        c.source.display(),
        c.trust_domain
    );
    Ok(())
}

/// The error and its causes on one line, each cause once: many of our messages already quote
/// their source, so a cause whose text is already in the line is not repeated.
pub fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn state_options(arg: &InitNewCaArg) -> StateOptions {
    StateOptions {
        init_new_ca: arg.init_new_ca,
    }
}

fn serve(config: Config, state: StateOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Installed before the daemon starts (and says it is ready): a stop request from then
        // on takes the graceful path.
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
        app::run_with(config, Arc::new(SystemClock), state, shutdown).await
    })?;
    Ok(())
}

fn bundle_show(config: &Config, format: BundleFormat, state: StateOptions) -> anyhow::Result<()> {
    let init = app::init_state_with(config, state)
        .with_context(|| format!("reading the state in {}", config.data_dir.display()))?;
    if init.created {
        eprintln!(
            "meshtrust: created a new CA for trust domain {} in {}",
            config.trust_domain,
            config.data_dir.display()
        );
    }
    let json = init.bundle_json;
    match format {
        BundleFormat::Spiffe => println!("{}", String::from_utf8_lossy(&json)),
        BundleFormat::Pem => {
            let parsed = crate::bundle::jwks::parse(&config.trust_domain, &json)?;
            print!("{}", pem::certs_to_pem(&parsed.bundle.x509_authorities));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("state in /x: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Outer(io)).context("starting");
        assert_eq!(describe(&e), "starting: state in /x: no such file");
    }
}
