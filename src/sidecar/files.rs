//! Files mode: the SVID, its key and the bundles written into `--out DIR` for workloads that read
//! PEM files (nginx, envoy, openssl...).
//!
//! # Layout
//! ```text
//! DIR/.v<N>/svid.pem            leaf + chain (PEM), 0644
//! DIR/.v<N>/svid_key.pem        PKCS#8 key (PEM), 0600
//! DIR/.v<N>/bundle.pem          our trust domain's CAs
//! DIR/.v<N>/federated/<td>.pem  one per federated trust domain
//! DIR/.v<N>/bundles.json        SPIFFE bundle map of every trust domain (ours included)
//! DIR/current -> .v<N>          swapped atomically on each update
//! DIR/svid.pem -> current/svid.pem, and the same for svid_key.pem, bundle.pem,
//! bundles.json and federated/ (stable paths)
//! ```
//!
//! # Atomicity
//! A version folder is complete and fsynced before anyone can see it; then a new `current`
//! symlink is made under a temporary name and renamed over the old one (rename(2) is atomic),
//! and DIR is fsynced. So `current` never shows a key beside a certificate of another version.
//! A reader that needs both files consistent must resolve `current` once (`realpath
//! DIR/current`) and read both from there: opening `DIR/svid.pem` and then `DIR/svid_key.pem`
//! can straddle a swap, the same caveat as Kubernetes' atomic volume writer. The previous
//! version stays on disk until the next update, so such a reader never finds its folder gone
//! mid-read except across two quick updates; a trust domain that disappears is gone from the
//! next version (WAPI 1.7.4).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::bundle::{TrustBundle, jwks, pem};
use crate::spiffe_id::TrustDomain;

use super::context::X509Context;

/// The name of the symlink to the live version.
pub const CURRENT: &str = "current";

/// The files of a version, each also exposed as `DIR/<name> -> current/<name>`.
pub const STABLE_NAMES: [&str; 5] = [
    "svid.pem",
    "svid_key.pem",
    "bundle.pem",
    "bundles.json",
    "federated",
];

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A bundle could not be written as SPIFFE bundle JSON.
    #[error("bundle of {trust_domain}: {source}")]
    Bundle {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The cause.
        #[source]
        source: jwks::JwksError,
    },
    /// serde_json failed (not expected).
    #[error("bundles.json: {0}")]
    Json(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FilesError + 'a {
    move |source| FilesError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What one update wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The version number (`.v<N>`).
    pub version: u64,
    /// The version folder.
    pub path: PathBuf,
    /// Federated trust domains written.
    pub federated: Vec<TrustDomain>,
    /// Federated trust domains whose file disappeared with this version.
    pub removed: Vec<TrustDomain>,
}

/// Writes versions into one folder and swaps `current`.
#[derive(Debug)]
pub struct FilesWriter {
    dir: PathBuf,
    next: u64,
    federated: Vec<TrustDomain>,
}

impl FilesWriter {
    /// Opens (creating) `dir`. Versions left by an earlier run are kept until the first write,
    /// so a workload keeps reading them meanwhile; numbering continues after them.
    ///
    /// # Errors
    /// [`FilesError::Io`] when the folder cannot be created or listed.
    pub fn open(dir: &Path) -> Result<Self, FilesError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let last = versions(dir)?.into_iter().max().unwrap_or(0);
        Ok(Self {
            dir: dir.to_owned(),
            next: last + 1,
            federated: Vec::new(),
        })
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `ctx` as a new version and makes it current.
    ///
    /// # Errors
    /// [`FilesError`]; `current` then still points at the previous complete version.
    pub fn write(&mut self, ctx: &X509Context) -> Result<Written, FilesError> {
        let version = self.next;
        self.next += 1;
        let name = format!(".v{version}");
        let vdir = self.dir.join(&name);
        if vdir.exists() {
            fs::remove_dir_all(&vdir).map_err(io_err("removing", &vdir))?;
        }
        let fed_dir = vdir.join("federated");
        fs::create_dir_all(&fed_dir).map_err(io_err("creating", &fed_dir))?;

        let chain = pem::certs_to_pem(&ctx.svid.cert_chain);
        write_file(&vdir.join("svid.pem"), chain.as_bytes(), 0o644)?;
        let key = ctx.svid.private_key.to_pem();
        write_file(&vdir.join("svid_key.pem"), key.as_bytes(), 0o600)?;
        let own = pem::certs_to_pem(ctx.own_bundle());
        write_file(&vdir.join("bundle.pem"), own.as_bytes(), 0o644)?;
        let mut federated = Vec::new();
        for (td, certs) in ctx.federated() {
            let path = fed_dir.join(format!("{td}.pem"));
            write_file(&path, pem::certs_to_pem(certs).as_bytes(), 0o644)?;
            federated.push(td.clone());
        }
        write_file(&vdir.join("bundles.json"), &bundle_map(ctx)?, 0o644)?;
        sync_dir(&fed_dir)?;
        sync_dir(&vdir)?;

        swap_symlink(&self.dir, CURRENT, Path::new(&name))?;
        for stable in STABLE_NAMES {
            ensure_symlink(&self.dir, stable, &Path::new(CURRENT).join(stable))?;
        }
        sync_dir(&self.dir)?;
        self.prune(version)?;

        let removed = self
            .federated
            .iter()
            .filter(|td| !federated.contains(td))
            .cloned()
            .collect();
        self.federated.clone_from(&federated);
        Ok(Written {
            version,
            path: vdir,
            federated,
            removed,
        })
    }

    /// Removes versions older than the previous one.
    fn prune(&self, current: u64) -> Result<(), FilesError> {
        for v in versions(&self.dir)? {
            if v + 1 < current {
                let path = self.dir.join(format!(".v{v}"));
                fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
            }
        }
        Ok(())
    }
}

/// The SPIFFE bundle map (TD&B 1.4.11): `{"trust_domains": {"<bare td>": <bundle>}}`, every
/// trust domain of the context, without per-bundle sequence or refresh hint.
fn bundle_map(ctx: &X509Context) -> Result<Vec<u8>, FilesError> {
    let mut map = BTreeMap::new();
    for (td, certs) in &ctx.bundles {
        let mut bundle = TrustBundle::empty(td.clone());
        bundle.x509_authorities.clone_from(certs);
        let json = jwks::to_json(&bundle).map_err(|source| FilesError::Bundle {
            trust_domain: td.clone(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| FilesError::Json(e.to_string()))?;
        map.insert(td.as_str().to_owned(), value);
    }
    let doc = serde_json::json!({ "trust_domains": map });
    serde_json::to_vec_pretty(&doc).map_err(|e| FilesError::Json(e.to_string()))
}

fn versions(dir: &Path) -> Result<Vec<u64>, FilesError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(".v"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(v);
        }
    }
    Ok(out)
}

/// Creates `path` (never through an existing file or symlink), writes and fsyncs it.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FilesError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("creating", path))?;
    file.write_all(bytes).map_err(io_err("writing", path))?;
    file.sync_all().map_err(io_err("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), FilesError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Points `dir/name` at `target` atomically: a temporary symlink renamed over it.
fn swap_symlink(dir: &Path, name: &str, target: &Path) -> Result<(), FilesError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &tmp)(e)),
    }
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("linking", &tmp))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_err("renaming onto", &path))
}

/// Makes `dir/name -> target` unless it already is exactly that; replaces whatever else is
/// there (an old regular file, say), but never a folder.
fn ensure_symlink(dir: &Path, name: &str, target: &Path) -> Result<(), FilesError> {
    let path = dir.join(name);
    match fs::read_link(&path) {
        Ok(existing) if existing == target => Ok(()),
        _ => swap_symlink(dir, name, target),
    }
}

#[cfg(test)]
mod tests;
