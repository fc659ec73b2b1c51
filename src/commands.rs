//! The subcommands' bodies, mapping failures to exit codes: 64 (EX_USAGE) for a bad config or
//! command line, 1 for a runtime failure.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::app::{self, StateOptions};
use crate::bundle::pem;
use crate::cli::{BundleCommand, BundleFormat, Command, InitNewCaArg, LogFormat};
use crate::clock::SystemClock;
use crate::config::Config;

/// sysexits EX_USAGE: a bad config or command line.
pub const EX_USAGE: u8 = 64;

/// Runs one subcommand to completion (text logs).
pub fn run(command: Command) -> ExitCode {
    run_with(command, LogFormat::Text)
}

/// Runs one subcommand to completion; `log_format` also shapes the sidecar's report lines.
pub fn run_with(command: Command, log_format: LogFormat) -> ExitCode {
    let result = match command {
        Command::CheckConfig(arg) => load_config(&arg.config).map(|c| {
            println!(
                "{}: ok (trust domain {})",
                c.source.display(),
                c.trust_domain
            );
        }),
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
        Command::Status { admin_socket, json } => {
            runtime_failure(crate::admin_client::status(&admin_socket, json))
        }
        Command::Demo {
            keep_running,
            command,
        } => runtime_failure(crate::demo::run(keep_running, command)),
        Command::Federation { command } => {
            runtime_failure(crate::admin_client::federation(command))
        }
        Command::Sidecar(args) => crate::sidecar::command(args, log_format == LogFormat::Json)
            .map_err(|e| {
                eprintln!("meshtrust: sidecar: {e}");
                if e.is_usage() { EX_USAGE } else { 1 }
            }),
        Command::Fetch(args) => crate::fetch::command(args).map_err(|e| {
            eprintln!("meshtrust: fetch: {e}");
            if e.is_usage() { EX_USAGE } else { 1 }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

fn load_config(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("meshtrust: bad config: {e}");
        EX_USAGE
    })
}

fn runtime_failure(result: anyhow::Result<()>) -> Result<(), u8> {
    result.map_err(|e| {
        eprintln!("meshtrust: {}", describe(&e));
        1
    })
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
