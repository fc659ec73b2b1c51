//! The `meshtrust` binary: parse the command line, set up logging and the crypto provider, run.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use meshtrust::cli::{Cli, LogFormat};
use meshtrust::commands;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(commands::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The demo prints its own story on stdout; the daemons' info logs would drown it.
    let default_level = match cli.command {
        meshtrust::cli::Command::Demo { .. } => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, default_level);
    // ring is the only provider compiled in; make it the process default for every client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    commands::run_with(cli.command, cli.log_format)
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: logs sent to a file or journald stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
