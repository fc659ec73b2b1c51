//! What the agent keeps in `data_dir` to serve through restarts with every server down: its
//! agent SVID and key, the last node view (entries and bundles, as the server sent it) and the
//! workload SVIDs with their keys. One JSON file, `cache.json`, written atomically (a temporary
//! file in the same folder, fsync, rename) with mode 0600 in a 0700 folder. Keys are PKCS#8
//! DER in base64; the in-memory copies are zeroized ([`crate::svid::PrivateKey`]).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AgentError;

/// The cache file's name in `data_dir`.
pub const CACHE_FILE: &str = "cache.json";

/// One certificate chain with its key, as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredSvid {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// DER certificates, leaf first, base64.
    pub chain: Vec<String>,
    /// PKCS#8 DER key, base64.
    pub key: String,
}

impl std::fmt::Debug for StoredSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Drop for StoredSvid {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.key.zeroize();
    }
}

impl StoredSvid {
    /// Encodes a chain and key.
    pub fn new(spiffe_id: &str, chain: &[Vec<u8>], key: &[u8]) -> Self {
        Self {
            spiffe_id: spiffe_id.to_owned(),
            chain: chain.iter().map(|c| B64.encode(c)).collect(),
            key: B64.encode(key),
        }
    }

    /// The DER certificates.
    ///
    /// # Errors
    /// [`AgentError::Cache`] when the base64 is damaged.
    pub fn chain_der(&self) -> Result<Vec<Vec<u8>>, AgentError> {
        self.chain
            .iter()
            .map(|c| B64.decode(c).map_err(|e| AgentError::Cache(e.to_string())))
            .collect()
    }

    /// The key's PKCS#8 DER (zeroized on drop).
    ///
    /// # Errors
    /// [`AgentError::Cache`] when the base64 is damaged.
    pub fn key_der(&self) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        B64.decode(&self.key)
            .map(Zeroizing::new)
            .map_err(|e| AgentError::Cache(e.to_string()))
    }
}

/// The whole cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cache {
    /// The node name the agent attested as.
    pub node: Option<String>,
    /// The agent SVID.
    pub agent: Option<StoredSvid>,
    /// The last `NodeView` (protobuf, base64): entries, own bundle, peer bundles.
    pub view: Option<String>,
    /// Which server sent it.
    pub server_id: Option<String>,
    /// When (Unix seconds).
    pub last_sync: Option<i64>,
    /// Workload SVIDs.
    #[serde(default)]
    pub svids: Vec<StoredSvid>,
    /// SHA-256 (hex) of the join token last used: never presented twice.
    #[serde(default)]
    pub used_token_sha256: Option<String>,
}

/// The cache file of `data_dir`, and the folder made 0700.
///
/// # Errors
/// [`AgentError::DataDir`] when the folder cannot be made or secured.
pub fn prepare_dir(data_dir: &Path) -> Result<PathBuf, AgentError> {
    let fail = |e: std::io::Error| AgentError::DataDir(format!("{}: {e}", data_dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(fail)?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    Ok(data_dir.join(CACHE_FILE))
}

/// Reads the cache; `Ok(None)` when there is none yet.
///
/// # Errors
/// [`AgentError::Cache`] when the file exists but cannot be read or parsed.
pub fn load(path: &Path) -> Result<Option<Cache>, AgentError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::Cache(format!("{}: {e}", path.display()))),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AgentError::Cache(format!("{}: {e}", path.display())))
}

/// Writes the cache atomically, 0600.
///
/// # Errors
/// [`AgentError::Cache`] on any I/O failure (the old file is then left as it was).
pub fn save(path: &Path, cache: &Cache) -> Result<(), AgentError> {
    let fail = |e: std::io::Error| AgentError::Cache(format!("{}: {e}", path.display()));
    let json =
        Zeroizing::new(serde_json::to_vec(cache).map_err(|e| AgentError::Cache(e.to_string()))?);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{CACHE_FILE}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    file.write_all(&json).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn the_cache_round_trips_in_a_private_folder_and_a_0600_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let path = prepare_dir(&dir).unwrap();
        assert_eq!(load(&path).unwrap().map(|c| c.node), None);
        let cache = Cache {
            node: Some("web-1".into()),
            agent: Some(StoredSvid::new(
                "spiffe://td/meshtrust/agent/web-1",
                &[vec![1, 2]],
                &[9; 8],
            )),
            ..Cache::default()
        };
        save(&path, &cache).unwrap();
        save(&path, &cache).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let back = load(&path).unwrap().unwrap();
        let agent = back.agent.as_ref().unwrap();
        assert_eq!(agent.chain_der().unwrap(), vec![vec![1, 2]]);
        assert_eq!(&*agent.key_der().unwrap(), &[9; 8]);
        assert!(
            !format!("{back:?}").contains(&agent.key),
            "key redacted in Debug"
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(load(&path), Err(AgentError::Cache(_))));
    }
}
