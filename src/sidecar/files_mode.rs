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

/// A hang guard on `--on-update`: a stuck hook must not stop rotations.
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

/// Why `--signal-pid` could not be signalled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// No such process.
    #[error("no process with pid {0} (has it exited?)")]
    NoProcess(u32),
    /// Another user's process.
    #[error("not permitted to signal pid {0} (it belongs to another user)")]
    NotPermitted(u32),
    /// 0 or beyond `pid_t`: it would name a group or nothing.
    #[error("{0} is not a process id")]
    BadPid(u32),
    /// Anything else kill(2) said.
    #[error("kill(2) on pid {pid} failed: {reason}")]
    Other {
        /// The pid.
        pid: u32,
        /// The errno in words.
        reason: String,
    },
}

/// Sends `signal` to `pid` with kill(2) (no shell, no `kill` program).
///
/// # Errors
/// [`SignalError`] in plain words.
pub fn send_signal(pid: u32, signal: Signal) -> Result<(), SignalError> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(SignalError::BadPid(pid))?;
    rustix::process::kill_process(target, signal.number()).map_err(|e| match e {
        rustix::io::Errno::SRCH => SignalError::NoProcess(pid),
        rustix::io::Errno::PERM => SignalError::NotPermitted(pid),
        other => SignalError::Other {
            pid,
            reason: std::io::Error::from(other).to_string(),
        },
    })
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
    /// The signal for kill(2).
    fn number(self) -> rustix::process::Signal {
        use rustix::process::Signal as S;
        match self {
            Self::Hup => S::HUP,
            Self::Usr1 => S::USR1,
            Self::Usr2 => S::USR2,
            Self::Int => S::INT,
            Self::Term => S::TERM,
            Self::Quit => S::QUIT,
        }
    }

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
        match send_signal(pid, signal) {
            Ok(()) => report.line(format!("files: sent SIG{} to pid {pid}", signal.as_str())),
            Err(e) => report.line(format!(
                "files: cannot send SIG{} to pid {pid}: {e}",
                signal.as_str()
            )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_sent_natively_with_errors_in_words() {
        // A child that has exited and been reaped: its pid names no process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(
            send_signal(pid, Signal::Hup),
            Err(SignalError::NoProcess(pid))
        );
        assert_eq!(send_signal(0, Signal::Hup), Err(SignalError::BadPid(0)));
        assert_eq!(
            send_signal(u32::MAX, Signal::Hup).unwrap_err().to_string(),
            "4294967295 is not a process id"
        );
        // A live process receives it (SIGTERM ends `sleep`).
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        send_signal(sleeper.id(), Signal::Term).unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(sleeper.wait().unwrap().signal(), Some(15));
    }
}
