//! The files-mode loop: write each new context with [`FilesWriter`], then tell the workload
//! (`--on-update CMD`, `--signal-pid PID --signal SIG`).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use clap::ValueEnum;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::Reporter;
use super::client::ContextRx;
use super::files::{FilesError, FilesWriter};

/// A hang guard on `--on-update` and the signal sender: a stuck hook must not stop rotations.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait before retrying a failed write when no new context arrives meanwhile.
const WRITE_RETRY: Duration = Duration::from_secs(5);

/// Why a post-update hook failed (reported; the files are written regardless).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The command could not be started.
    #[error("cannot run {what}: {source}")]
    Spawn {
        /// Which hook.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The command ran longer than the hang guard and was killed.
    #[error("{0} did not finish within {HOOK_TIMEOUT:?} and was killed")]
    Timeout(&'static str),
    /// The command exited unsuccessfully.
    #[error("{what} failed: {status}")]
    Failed {
        /// Which hook.
        what: &'static str,
        /// Its exit status.
        status: ExitStatus,
    },
}

/// The signals `--signal` can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Signal {
    /// SIGHUP: the usual "reload your config" signal.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGINT.
    Int,
    /// SIGTERM.
    Term,
    /// SIGQUIT.
    Quit,
}

impl Signal {
    /// The name `kill -s` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hup => "HUP",
            Self::Usr1 => "USR1",
            Self::Usr2 => "USR2",
            Self::Int => "INT",
            Self::Term => "TERM",
            Self::Quit => "QUIT",
        }
    }
}

/// Files-mode settings.
#[derive(Debug, Clone)]
pub struct FilesOptions {
    /// `--out DIR`.
    pub dir: PathBuf,
    /// `--on-update CMD`, run with `sh -c` after each update.
    pub on_update: Option<String>,
    /// `--signal-pid PID` and `--signal SIG`, sent after each update.
    pub signal: Option<(u32, Signal)>,
}

/// Writes every context published on `ctx` until `cancel` fires or the watcher stops.
///
/// # Errors
/// [`FilesError`] only when the output folder cannot be opened at all; later write failures
/// are reported and retried.
pub async fn run_files(
    mut ctx: ContextRx,
    opts: FilesOptions,
    report: Reporter,
    cancel: CancellationToken,
) -> Result<(), FilesError> {
    let mut writer = FilesWriter::open(&opts.dir)?;
    let mut retry = false;
    loop {
        let current = ctx.borrow_and_update().clone();
        if let Some(current) = current {
            match writer.write(&current) {
                Ok(w) => {
                    retry = false;
                    let mut line = format!(
                        "files: wrote the svid of {} and {} bundle(s) to {} (version {})",
                        current.svid.spiffe_id,
                        current.bundles.len(),
                        writer.dir().display(),
                        w.version
                    );
                    for td in &w.removed {
                        line.push_str(&format!("; removed the bundle of {td}"));
                    }
                    report.line(line);
                    after_update(&opts, &report).await;
                }
                Err(e) => {
                    retry = true;
                    report.line(format!("files: cannot write the update: {e}"));
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = ctx.changed() => if changed.is_err() { return Ok(()) },
            () = tokio::time::sleep(WRITE_RETRY), if retry => {}
        }
    }
}

async fn after_update(opts: &FilesOptions, report: &Reporter) {
    if let Some(cmd) = &opts.on_update {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(cmd)
            .env("MESHTRUST_FILES_DIR", &opts.dir);
        match run_hook("--on-update", command).await {
            Ok(()) => report.line(format!("files: ran --on-update {cmd:?}")),
            Err(e) => report.line(format!("files: {e}")),
        }
    }
    if let Some((pid, signal)) = opts.signal {
        // The shell's `kill` builtin: no unsafe code and no extra crate for kill(2).
        let mut command = Command::new("sh");
        command
            .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal.as_str()])
            .arg(pid.to_string());
        match run_hook("the signal", command).await {
            Ok(()) => report.line(format!("files: sent SIG{} to pid {pid}", signal.as_str())),
            Err(e) => report.line(format!("files: SIG{} to pid {pid}: {e}", signal.as_str())),
        }
    }
}

async fn run_hook(what: &'static str, mut command: Command) -> Result<(), HookError> {
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let mut child = command
        .spawn()
        .map_err(|source| HookError::Spawn { what, source })?;
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HookError::Failed { what, status }),
        Ok(Err(source)) => Err(HookError::Spawn { what, source }),
        Err(_) => Err(HookError::Timeout(what)),
    }
}
