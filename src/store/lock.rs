//! One process per `data_dir`: an exclusive, non-blocking `flock` on `data_dir/meshtrust.pid`,
//! which then holds the owner's pid.
//!
//! The lock, not the pid, is the truth: the kernel drops it when the process exits, even after
//! `kill -9`, so a stale pid in the file never blocks a start. The file is never deleted (a
//! process that opened it just before a delete would lock an unlinked file while a third one
//! locks a new one); its content is cleared when the owner lets go. The pid is written after the
//! lock is taken, so a reader may find the file empty for an instant: it then says so.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use super::{StoreError, ensure_data_dir};

/// The lock and pid file's name inside `data_dir`.
pub const PID_FILE: &str = "meshtrust.pid";

/// Held for as long as this process owns `data_dir`; dropping it lets go.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` (0700) if needed and takes its lock without waiting.
    ///
    /// # Errors
    /// [`StoreError::InUse`] naming the owner's pid when another process (or another
    /// [`DataDirLock`] in this one) holds it; [`StoreError::Io`] when the folder or file cannot
    /// be created.
    pub fn acquire(data_dir: &Path) -> Result<Self, StoreError> {
        ensure_data_dir(data_dir)?;
        let path = data_dir.join(PID_FILE);
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::InUse {
                    dir: data_dir.display().to_string(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { file, path })
    }

    /// The pid file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Still locked here: nobody reads a half-cleared file as an owner. Closing the file
        // right after releases the lock.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap_or_else(|e| panic!("{e}"));
        match DataDirLock::acquire(&data) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        let again = DataDirLock::acquire(&data).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(again.path()).unwrap_or_default();
        assert_eq!(text.trim(), std::process::id().to_string());
    }
}
