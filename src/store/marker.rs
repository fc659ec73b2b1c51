//! The CA marker: a small file in `data_dir` written once the CA's first state is committed,
//! so that a database that lost it (truncated to 0 bytes, deleted, replaced by an empty one)
//! is told apart from a first start.
//!
//! Why a file beside the database and not a row in it: whatever destroys the database (a
//! truncation, a restore of the wrong file, an `rm`) takes any row with it, and an empty
//! database is exactly what a first start looks like. The marker lives and dies with `data_dir`
//! itself: removing the whole folder is still a first start, which is what an operator who
//! does that means. The check is simply: marker present and no CA in the database means the
//! state was lost. Creating a fresh CA there takes an explicit flag (`--init-new-ca`).
//!
//! The marker is written after the CA is committed (a crash in between leaves a CA and no
//! marker, which the next start repairs by writing it), through a temporary file, fsync and
//! rename, so it is either absent or complete. Its content is for the operator who finds it;
//! only its presence is checked.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::sqlite::DB_FILE;

/// The marker's name inside `data_dir`.
pub const MARKER_FILE: &str = "meshtrust.ca-created";

/// The marker's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER_FILE)
}

/// Whether `data_dir` is marked as having held a CA.
///
/// # Errors
/// [`StoreError::Io`] when the marker cannot be looked at (other than not existing).
pub fn exists(data_dir: &Path) -> Result<bool, StoreError> {
    let marker = path(data_dir);
    match fs::symlink_metadata(&marker) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Io {
            path: marker.display().to_string(),
            source,
        }),
    }
}

/// The refusal for a marked `data_dir` whose database holds no CA; `why` says what was found.
pub fn lost(data_dir: &Path, why: &'static str) -> StoreError {
    StoreError::CaLost {
        dir: data_dir.display().to_string(),
        why,
    }
}

/// Checks the database file before it is opened (opening would create an empty one): in a
/// marked `data_dir`, a missing or empty `meshtrust.db` is a lost CA.
///
/// # Errors
/// [`StoreError::CaLost`], or [`StoreError::Io`] when the file cannot be looked at.
pub fn check_db_file(data_dir: &Path) -> Result<(), StoreError> {
    if !exists(data_dir)? {
        return Ok(());
    }
    let db = data_dir.join(DB_FILE);
    match fs::symlink_metadata(&db) {
        Ok(m) if m.len() == 0 => Err(lost(data_dir, "the database is empty (0 bytes)")),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(lost(data_dir, "the database file is missing"))
        }
        Err(source) => Err(StoreError::Io {
            path: db.display().to_string(),
            source,
        }),
    }
}

/// Writes (or rewrites) the marker atomically: temporary file, fsync, rename, fsync of the
/// folder. `about` is one line saying which CA it marks.
///
/// # Errors
/// [`StoreError::Io`].
pub fn write(data_dir: &Path, about: &str) -> Result<(), StoreError> {
    let marker = path(data_dir);
    let tmp = data_dir.join(format!("{MARKER_FILE}.tmp"));
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| StoreError::Io { path: p, source }
    };
    let text = format!(
        "{about}\n\
         meshtrust wrote this file when it created the CA in {DB_FILE}. While it exists, a\n\
         {DB_FILE} without a CA (lost, truncated, replaced) makes `serve` and `bundle show`\n\
         refuse to start instead of silently creating a new CA that no peer trusts.\n\
         Restore {DB_FILE} from a backup, or run once with --init-new-ca to start over.\n"
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &marker).map_err(io(&marker))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_missing_database_in_a_marked_folder_is_a_lost_ca() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        // Unmarked: a first start, whatever the database looks like.
        assert!(check_db_file(d).is_ok());
        write(d, "CA of test.example").unwrap_or_else(|e| panic!("{e}"));
        assert!(exists(d).unwrap_or(false));
        let err = check_db_file(d).expect_err("missing database");
        assert!(err.to_string().contains("missing"), "{err}");
        fs::write(d.join(DB_FILE), b"").unwrap_or_else(|e| panic!("{e}"));
        let err = check_db_file(d).expect_err("empty database");
        assert!(err.to_string().contains("0 bytes"), "{err}");
        assert!(err.to_string().contains("--init-new-ca"), "{err}");
        fs::write(d.join(DB_FILE), b"SQLite format 3\0").unwrap_or_else(|e| panic!("{e}"));
        assert!(check_db_file(d).is_ok());
    }
}
