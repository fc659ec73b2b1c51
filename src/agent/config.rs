//! The agent's config file (CONTRACT.md "An agent's config"): TOML read into serde structs that
//! deny unknown keys, then validated into [`AgentConfig`]. Errors are the daemon's own
//! [`ConfigError`] (file, key, message), so a bad config exits 64 naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The longest Unix socket path Linux can bind.
const MAX_SOCKET_PATH_LEN: usize = 107;

/// A validated agent config.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The file it came from (relative paths are resolved in its folder).
    pub source: PathBuf,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// Agent SVID, cached workload SVIDs, bundles and entries (0700 folder, 0600 files).
    pub data_dir: PathBuf,
    /// The servers' agent API addresses, tried in this order.
    pub servers: Vec<ServerAddr>,
    /// SPIFFE bundle (JSON) or PEM that authenticates the servers at first contact.
    pub server_bundle: PathBuf,
    /// How the agent proves its node.
    pub attestation: NodeProof,
    /// The Workload API socket.
    pub workload_socket: PathBuf,
    /// The agent's admin socket (`GET /v1/status`).
    pub admin_socket: PathBuf,
    /// The Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
}

/// One `servers` element: `https://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// As written (for logs and status).
    pub url: String,
    /// `HOST:PORT` to dial.
    pub authority: String,
}

/// `[attestation]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeProof {
    /// A one-time join token read from this file (needed only until the first attestation).
    JoinToken(PathBuf),
    /// x509pop: a node certificate chain (PEM) and its PKCS#8 key (PEM).
    X509Pop {
        /// Leaf first.
        cert_file: PathBuf,
        /// The node key.
        key_file: PathBuf,
    },
}

impl AgentConfig {
    /// The ID the servers present: `spiffe://<td>/meshtrust/server`.
    pub fn server_id(&self) -> SpiffeId {
        SpiffeId::from_path(&self.trust_domain, crate::config::DEFAULT_ENDPOINT_PATH)
            .unwrap_or_else(|_| self.trust_domain.to_spiffe_id())
    }

    /// Reads and validates an agent config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Validates config text; `source` names it in errors and anchors relative paths.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key.
    pub fn from_toml(text: &str, source: &Path) -> Result<Self, ConfigError> {
        let raw: RawAgent =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(source, text, &e))?;
        let cx = Cx {
            file: source,
            base: source.parent().unwrap_or(Path::new("")),
        };
        let td_text = cx.required("trust_domain", raw.trust_domain)?;
        if td_text.contains(":/") {
            return Err(cx.invalid("trust_domain", "expected a bare trust domain name"));
        }
        let trust_domain = TrustDomain::new(&td_text).map_err(|e| {
            cx.invalid(
                "trust_domain",
                format!("invalid trust domain {td_text:?}: {e}"),
            )
        })?;
        let data_dir = cx.path("data_dir", cx.required("data_dir", raw.data_dir)?)?;
        let listed = cx.required("servers", raw.servers)?;
        if listed.is_empty() {
            return Err(cx.invalid("servers", "list at least one server (https://HOST:PORT)"));
        }
        let servers = listed
            .iter()
            .enumerate()
            .map(|(i, s)| cx.server(&format!("servers[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let bundle = cx.required("server_bundle", raw.server_bundle)?;
        let server_bundle = cx.existing_file("server_bundle", bundle)?;
        let attestation = cx.attestation(cx.required("attestation", raw.attestation)?)?;
        let workload_socket = cx.socket("workload_api", raw.workload_api)?;
        let admin_socket = cx.socket("admin_api", raw.admin_api)?;
        if workload_socket == admin_socket {
            return Err(cx.invalid("admin_api.socket", "must differ from workload_api.socket"));
        }
        let metrics = match raw.metrics {
            None => None,
            Some(m) => {
                let listen = cx.required("metrics.listen", m.listen)?;
                Some(listen.parse().map_err(|e| {
                    cx.invalid(
                        "metrics.listen",
                        format!("expected IP:PORT, got {listen:?}: {e}"),
                    )
                })?)
            }
        };
        Ok(Self {
            source: source.to_owned(),
            trust_domain,
            data_dir,
            servers,
            server_bundle,
            attestation,
            workload_socket,
            admin_socket,
            metrics,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document")]
struct RawAgent {
    trust_domain: Option<String>,
    data_dir: Option<String>,
    servers: Option<Vec<String>>,
    server_bundle: Option<String>,
    attestation: Option<RawAttestation>,
    workload_api: Option<RawSocket>,
    admin_api: Option<RawSocket>,
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawAttestation {
    join_token_file: Option<String>,
    x509pop_cert_file: Option<String>,
    x509pop_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSocket {
    socket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawMetrics {
    listen: Option<String>,
}

struct Cx<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Cx<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.invalid(key, "missing required key"))
    }

    fn path(&self, key: &str, value: String) -> Result<PathBuf, ConfigError> {
        if value.is_empty() {
            return Err(self.invalid(key, "path must not be empty"));
        }
        Ok(self.base.join(value))
    }

    fn existing_file(&self, key: &str, value: String) -> Result<PathBuf, ConfigError> {
        let path = self.path(key, value)?;
        if !path.is_file() {
            return Err(self.invalid(key, format!("{} is not a readable file", path.display())));
        }
        Ok(path)
    }

    fn server(&self, key: &str, text: &str) -> Result<ServerAddr, ConfigError> {
        let url = url::Url::parse(text).map_err(|e| {
            self.invalid(
                key,
                format!("expected https://HOST:PORT, got {text:?}: {e}"),
            )
        })?;
        let plain = url.path().is_empty() || url.path() == "/";
        if url.scheme() != "https"
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || !plain
        {
            return Err(self.invalid(
                key,
                format!("expected https://HOST:PORT (no path, user, query), got {text:?}"),
            ));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(self.invalid(key, format!("{text:?} names no host")));
        };
        Ok(ServerAddr {
            url: text.to_owned(),
            authority: format!("{host}:{port}"),
        })
    }

    fn attestation(&self, raw: RawAttestation) -> Result<NodeProof, ConfigError> {
        match (
            raw.join_token_file,
            raw.x509pop_cert_file,
            raw.x509pop_key_file,
        ) {
            (Some(token), None, None) => Ok(NodeProof::JoinToken(
                self.path("attestation.join_token_file", token)?,
            )),
            (None, Some(cert), Some(key)) => Ok(NodeProof::X509Pop {
                cert_file: self.existing_file("attestation.x509pop_cert_file", cert)?,
                key_file: self.existing_file("attestation.x509pop_key_file", key)?,
            }),
            (Some(_), _, _) => Err(self.invalid(
                "attestation.join_token_file",
                "give join_token_file or x509pop_cert_file + x509pop_key_file, not both",
            )),
            (None, Some(_), None) => {
                Err(self.invalid("attestation.x509pop_key_file", "missing required key"))
            }
            (None, None, Some(_)) => {
                Err(self.invalid("attestation.x509pop_cert_file", "missing required key"))
            }
            (None, None, None) => Err(self.invalid(
                "attestation",
                "give join_token_file, or x509pop_cert_file and x509pop_key_file",
            )),
        }
    }

    fn socket(&self, section: &str, raw: Option<RawSocket>) -> Result<PathBuf, ConfigError> {
        let key = format!("{section}.socket");
        let raw = self.required(section, raw)?;
        let path = self.path(&key, self.required(&key, raw.socket)?)?;
        if path.as_os_str().len() > MAX_SOCKET_PATH_LEN {
            return Err(self.invalid(&key, format!("longer than {MAX_SOCKET_PATH_LEN} bytes")));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.pem"), "x").unwrap();
        std::fs::write(dir.path().join("node.pem"), "x").unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path)
    }

    const GOOD: &str = r#"
trust_domain = "mesh-a.test"
data_dir = "state"
servers = ["https://127.0.0.1:8081", "https://server-2.test:9000"]
server_bundle = "b.pem"
[attestation]
join_token_file = "token"
[workload_api]
socket = "w.sock"
[admin_api]
socket = "a.sock"
[metrics]
listen = "127.0.0.1:0"
"#;

    #[test]
    fn the_contract_example_parses() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.servers[1].authority, "server-2.test:9000");
        assert_eq!(
            c.server_id().as_str(),
            "spiffe://mesh-a.test/meshtrust/server"
        );
        assert!(matches!(c.attestation, NodeProof::JoinToken(_)));
        assert!(c.data_dir.ends_with("state"));
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases = [
            (
                GOOD.replace("trust_domain = \"mesh-a.test\"", ""),
                "trust_domain",
            ),
            (
                GOOD.replace("servers = [", "servers = [\"http://x:1\", "),
                "servers[0]",
            ),
            (
                GOOD.replace("servers = [", "servers = [\"https://x:1/path\", "),
                "servers[0]",
            ),
            (
                GOOD.replace(
                    "[\"https://127.0.0.1:8081\", \"https://server-2.test:9000\"]",
                    "[]",
                ),
                "servers",
            ),
            (GOOD.replace("b.pem", "missing.pem"), "server_bundle"),
            (
                GOOD.replace("join_token_file = \"token\"", ""),
                "attestation",
            ),
            (
                GOOD.replace(
                    "join_token_file = \"token\"",
                    "x509pop_cert_file = \"node.pem\"",
                ),
                "attestation.x509pop_key_file",
            ),
            (
                GOOD.replace(
                    "join_token_file = \"token\"",
                    "join_token_file = \"t\"\nx509pop_cert_file = \"node.pem\"",
                ),
                "attestation.join_token_file",
            ),
            (GOOD.replace("a.sock", "w.sock"), "admin_api.socket"),
            (GOOD.replace("127.0.0.1:0", "nowhere"), "metrics.listen"),
            (
                GOOD.replace("[metrics]", "[metrics]\nbogus = 1"),
                "metrics.bogus",
            ),
        ];
        for (text, key) in cases {
            let e = load(&text).unwrap_err();
            assert_eq!(e.key(), Some(key), "{e}");
        }
    }
}
