//! The demo's two meshes: one folder each under the demo's work folder, a config written the way
//! an operator would, listeners bound on `127.0.0.1:0` before the configs are written (so each
//! mesh can name the other's port), and the peering: each mesh invites the other
//! (`meshtrust federation invite`) and joins with the other's token (`meshtrust federation join
//! --write`), which fetches and checks the peer's bundle and adds the `[[federation]]` block.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::{self, Daemon, DaemonOptions};
use crate::bundle::summary;
use crate::clock::{SystemClock, rfc3339};
use crate::config::Config;

/// How often each mesh tells its peer to poll: short, so the demo's steps happen within seconds.
const REFRESH_HINT: &str = "5s";

/// A demo step failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A file or listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The generated config does not load (a bug in the demo).
    #[error("the demo's config for {0}: {1}")]
    Config(String, String),
    /// The daemon could not start.
    #[error("starting {0}: {1}")]
    Start(String, app::AppError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MeshError {
    let what = what.into();
    move |source| MeshError::Io { what, source }
}

/// One workload registered in a mesh, for the uid running the demo.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Its path under the trust domain, e.g. `/ns/default/sa/frontend`.
    pub path: &'static str,
    /// Its hint.
    pub hint: &'static str,
}

/// One mesh of the demo, before and after its daemon starts.
#[derive(Debug)]
pub struct DemoMesh {
    /// `mesh-a`.
    pub name: &'static str,
    /// `<work>/mesh-a`.
    pub dir: PathBuf,
    bundle_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    /// The bundle endpoint's port.
    pub port: u16,
    /// The metrics port.
    pub metrics_port: u16,
}

impl DemoMesh {
    /// Creates `<work>/<name>/peers` and binds the mesh's listeners.
    ///
    /// # Errors
    /// [`MeshError::Io`].
    pub async fn new(work: &Path, name: &'static str) -> Result<Self, MeshError> {
        let dir = work.join(name);
        std::fs::create_dir_all(dir.join("peers")).map_err(io(format!("creating {name}")))?;
        let bind = |what| async move {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(io(format!("binding {what}")))?;
            let port = l.local_addr().map_err(io("local address"))?.port();
            Ok::<_, MeshError>((l, port))
        };
        let (bundle_listener, port) = bind("a bundle endpoint").await?;
        let (metrics_listener, metrics_port) = bind("a metrics listener").await?;
        Ok(Self {
            name,
            dir,
            bundle_listener: Some(bundle_listener),
            metrics_listener: Some(metrics_listener),
            port,
            metrics_port,
        })
    }

    /// `mesh-a.test`.
    pub fn trust_domain(&self) -> String {
        format!("{}.test", self.name)
    }

    /// The bundle endpoint URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    /// The bundle endpoint's SPIFFE ID.
    pub fn endpoint_id(&self) -> String {
        format!("spiffe://{}/meshtrust/server", self.trust_domain())
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("meshtrust.toml")
    }

    /// The Workload API socket.
    pub fn workload_socket(&self) -> PathBuf {
        self.dir.join("workload.sock")
    }

    /// Writes `meshtrust.toml` with no peer yet (`federation join` adds it), registering
    /// `workloads` for the uid running the demo (the Workload API attests callers by uid), each
    /// receiving every peer's bundle (`federates_with = ["*"]`).
    ///
    /// # Errors
    /// [`MeshError::Io`] when the uid cannot be read or the file cannot be written.
    pub fn write_config(&self, workloads: &[Workload]) -> Result<(), MeshError> {
        let uid = std::fs::metadata("/proc/self")
            .map_err(io("reading this process's uid"))?
            .uid();
        let td = self.trust_domain();
        let mut text = format!(
            r#"# Written by `meshtrust demo`: {td}. Its peer is added by `meshtrust federation join`.
trust_domain = "{td}"
data_dir = "data"
# The demo rotates and revokes in seconds: poll the peer as often as its hint asks.
federation_min_refresh_interval = "1s"

[ca]
key_type = "ec-p256"
ca_ttl = "24h"
x509_svid_ttl = "1h"

[bundle_endpoint]
listen = "127.0.0.1:{port}"
profile = "https_spiffe"
endpoint_spiffe_id = "{endpoint_id}"
refresh_hint = "{REFRESH_HINT}"

[workload_api]
socket = "workload.sock"

[admin_api]
socket = "admin.sock"

[metrics]
listen = "127.0.0.1:{metrics_port}"
"#,
            port = self.port,
            endpoint_id = self.endpoint_id(),
            metrics_port = self.metrics_port,
        );
        for w in workloads {
            let _ = write!(
                text,
                r#"
[[entry]]
spiffe_id = "spiffe://{td}{path}"
selectors = ["unix:uid:{uid}"]
federates_with = ["*"]
hint = "{hint}"
"#,
                path = w.path,
                hint = w.hint,
            );
        }
        std::fs::write(self.config_path(), text)
            .map_err(io(format!("writing {}", self.config_path().display())))
    }

    /// Where this mesh keeps `peer`'s bootstrap bundle.
    pub fn bootstrap_path(&self, peer: &DemoMesh) -> PathBuf {
        self.dir
            .join("peers")
            .join(format!("{}.json", peer.trust_domain()))
    }

    /// The config as the daemon reads it.
    ///
    /// # Errors
    /// [`MeshError::Config`].
    pub fn config(&self) -> Result<Config, MeshError> {
        Config::load(&self.config_path())
            .map_err(|e| MeshError::Config(self.trust_domain(), e.to_string()))
    }

    /// Starts the daemon on the pre-bound listeners.
    ///
    /// # Errors
    /// [`MeshError::Start`].
    pub async fn start(&mut self) -> Result<Daemon, MeshError> {
        let config = self.config()?;
        let opts = DaemonOptions {
            bundle_listener: self.bundle_listener.take(),
            metrics_listener: self.metrics_listener.take(),
        };
        Daemon::start_with(config, Arc::new(SystemClock), opts)
            .await
            .map_err(|e| MeshError::Start(self.trust_domain(), e))
    }
}

/// A pinned bundle in one line.
pub fn describe_bundle(bundle: &crate::bundle::TrustBundle) -> String {
    let cas: Vec<String> = summary::summarize(&bundle.x509_authorities)
        .into_iter()
        .map(|a| format!("sha256 {}…", &a.sha256[..16]))
        .collect();
    format!(
        "sequence {}, {} X.509 CA ({}), {} JWT key, earliest expiry {}",
        bundle.sequence.unwrap_or(0),
        bundle.x509_authorities.len(),
        cas.join(", "),
        bundle.jwt_authorities.len(),
        summary::earliest_expiry(&bundle.x509_authorities).map_or_else(|| "-".to_owned(), rfc3339)
    )
}
