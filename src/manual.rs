//! Shell completions and the man page, generated from the clap definitions of [`crate::cli`], so
//! they never drift from the real command line.

use std::io::Write;

use clap::CommandFactory as _;

use crate::cli::{Cli, Shell};

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_owned();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes the man page (roff): `meshtrust(1)`, followed by one section per subcommand with its
/// own synopsis and options, so `man ./meshtrust.1` documents every command.
///
/// # Errors
/// When `out` cannot be written.
pub fn man(out: &mut dyn Write) -> std::io::Result<()> {
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_subcommand(sub, cmd.get_name(), out)?;
    }
    out.write_all(OPERATIONS.as_bytes())
}

/// What an operator needs beyond the options: signals, exit codes, environment, files.
const OPERATIONS: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
\fBserve\fR re-reads its config file: \fB[[entry]]\fR and \fB[[federation]]\fR changes apply at once and
reach every connected workload's stream, all or nothing: a config that does not load, a peer
that cannot start or a change to a section that needs a restart applies nothing, and
\fBmeshtrust status\fR says why.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Graceful shutdown: listeners close, streams end, tasks get up to 10 seconds; exit 0.
.SH EXIT STATUS
.TP
0
Success.
.TP
1
A runtime failure (the daemon could not start or run, a refused fetch, an unreachable admin socket).
.TP
64
A bad config or command line (the message names the file, the line and the key).
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter (default \fBinfo\fR), e.g. \fBmeshtrust=debug\fR.
.TP
\fBSPIFFE_ENDPOINT_SOCKET\fR
Where workload-side commands (\fBsidecar\fR) find the Workload API, e.g. \fBunix:///run/meshtrust/workload.sock\fR.
.SH FILES
.TP
\fIdata_dir\fR/meshtrust.db
The state: CA keys (0600), the published bundle and its sequence, pinned peer bundles. Back it up;
losing it means a new CA that no peer trusts.
.TP
\fIworkload_api.socket\fR
The SPIFFE Workload API (gRPC) and its JSON view; mode 0777, callers are attested by the kernel.
.TP
\fIadmin_api.socket\fR
Status and operations; mode 0600: whoever can open it operates the daemon.
"#;

fn render_subcommand(
    sub: &clap::Command,
    parent: &str,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = format!("{parent} {}", sub.get_name());
    let page = clap_mangen::Man::new(sub.clone().bin_name(name.clone()));
    writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    if sub.get_arguments().any(|a| !a.is_hide_set()) {
        page.render_options_section(out)?;
    }
    for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_subcommand(nested, &name, out)?;
    }
    Ok(())
}
