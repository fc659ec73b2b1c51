//! CA private keys of a replica: files in its own `data_dir/ca-keys` (0700, files 0600), named
//! by the SHA-256 of the CA certificate they belong to. The shared database holds only the
//! certificates, so no CA key is ever in it.
//!
//! A key is written (atomically, fsynced) before the row that names its certificate is
//! committed, so a committed authority of this replica always has its key; keys whose
//! authority left the state are deleted after the next write.

use std::collections::HashSet;
use std::fs::{self, DirBuilder};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::store::{StoreError, StoredAuthority};
use crate::svid::PrivateKey;

/// The folder's name inside `data_dir`.
pub const KEY_DIR: &str = "ca-keys";

/// The key files of one replica.
#[derive(Debug)]
pub struct KeyDir {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The file name stem of the authority with this CA certificate.
pub fn stem(ca_cert: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, ca_cert)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl KeyDir {
    /// Opens (creating, 0700) `data_dir/ca-keys`.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        crate::store::ensure_data_dir(data_dir)?;
        let dir = data_dir.join(KEY_DIR);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        Ok(Self { dir })
    }

    fn file(&self, stem: &str, which: &str) -> PathBuf {
        self.dir.join(format!("{stem}.{which}.pk8"))
    }

    /// Writes both keys of `a` unless they are there.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn store(&self, a: &StoredAuthority) -> Result<(), StoreError> {
        let stem = stem(&a.ca_cert);
        for (which, key) in [("ca", &a.ca_key), ("jwt", &a.jwt_key)] {
            let path = self.file(&stem, which);
            if path.exists() {
                continue;
            }
            // tempfile creates 0600.
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
            tmp.write_all(key.pkcs8_der()).map_err(io(&path))?;
            tmp.as_file().sync_all().map_err(io(&path))?;
            tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// The (CA, JWT) keys of the authority with this certificate, if this replica holds them.
    ///
    /// # Errors
    /// [`StoreError::Io`] other than a missing file.
    pub fn load(&self, ca_cert: &[u8]) -> Result<Option<(PrivateKey, PrivateKey)>, StoreError> {
        let stem = stem(ca_cert);
        let read = |which: &str| -> Result<Option<PrivateKey>, StoreError> {
            let path = self.file(&stem, which);
            match fs::read(&path) {
                Ok(bytes) => Ok(Some(PrivateKey::from_pkcs8_der(bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            }
        };
        Ok(read("ca")?.zip(read("jwt")?))
    }

    /// Deletes the key files of authorities not in `keep` (certificate stems).
    pub fn retain(&self, keep: &HashSet<String>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.split('.').next() else {
                continue;
            };
            if name.ends_with(".pk8")
                && !keep.contains(stem)
                && let Err(e) = fs::remove_file(entry.path())
            {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot delete a pruned CA key");
            }
        }
    }
}
