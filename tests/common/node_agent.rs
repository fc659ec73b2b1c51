//! Node agents in tests: the agent's config file ([`AgentConfig`]), `meshtrust agent` as a
//! [`Proc`], and the server side an agent process needs ([`ServerProc`]: a `meshtrust serve` with
//! `[agent_api]`, its bundle file for `server_bundle`, join tokens). The agent API's own
//! client helpers are in `agent.rs`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::config::DaemonConfig;
use super::daemon::Proc;

/// What the agent logs once every listener is bound.
pub const READY: &str = "meshtrust agent ready";

/// An agent config under construction; sockets, `data_dir` and the token file sit in the
/// agent's own folder.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    td: String,
    servers: Vec<String>,
    server_bundle: PathBuf,
    token: Option<String>,
    x509pop: Option<(String, String)>,
}

impl AgentConfig {
    /// An agent of `td` for `servers` (tried in order), trusting `server_bundle` first.
    pub fn new(td: &str, servers: &[SocketAddr], server_bundle: &Path) -> Self {
        Self {
            td: td.to_owned(),
            servers: servers.iter().map(|a| format!("https://{a}")).collect(),
            server_bundle: server_bundle.to_owned(),
            token: None,
            x509pop: None,
        }
    }

    /// Attests with `token` (written to `<dir>/token`).
    pub fn join_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Attests with x509pop: the node certificate chain and its PKCS#8 key, both PEM (written
    /// to `<dir>/node.pem` and `<dir>/node-key.pem`).
    pub fn x509pop(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.x509pop = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let attestation = if self.x509pop.is_some() {
            "x509pop_cert_file = \"node.pem\"\nx509pop_key_file = \"node-key.pem\"\n"
        } else {
            "join_token_file = \"token\"\n"
        };
        let servers: Vec<String> = self.servers.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "trust_domain = \"{}\"\ndata_dir = \"data\"\nservers = [{}]\nserver_bundle = \"{}\"\n\
             [attestation]\n{attestation}\
             [workload_api]\nsocket = \"workload.sock\"\n[admin_api]\nsocket = \"admin.sock\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            self.td,
            servers.join(", "),
            self.server_bundle.display()
        )
    }

    /// Writes `<dir>/agent.toml` (and `<dir>/token`); returns the config's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        if let Some(token) = &self.token {
            std::fs::write(dir.join("token"), token).unwrap();
        }
        if let Some((cert, key)) = &self.x509pop {
            std::fs::write(dir.join("node.pem"), cert).unwrap();
            std::fs::write(dir.join("node-key.pem"), key).unwrap();
        }
        let path = dir.join("agent.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}

/// The agent's Workload API socket in its folder.
pub fn workload_socket(dir: &Path) -> PathBuf {
    dir.join("workload.sock")
}

/// The agent's admin socket in its folder.
pub fn admin_socket(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// `meshtrust agent --config FILE`, waited for until its listeners are bound.
pub async fn spawn(config: &Path) -> Proc {
    let p = Proc::spawn(&["agent", "--config", config.to_str().unwrap()]);
    p.wait_for_log(READY).await;
    p
}

/// [`spawn`] through `wrapper` (e.g. in a network namespace).
pub async fn spawn_in(config: &Path, wrapper: &[&str]) -> Proc {
    let p = Proc::spawn_wrapped(wrapper, &["agent", "--config", config.to_str().unwrap()]);
    p.wait_for_log(READY).await;
    p
}

/// A `meshtrust serve` with `[agent_api]` on an ephemeral port.
#[derive(Debug)]
pub struct ServerProc {
    /// Its folder.
    pub dir: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
    /// The process.
    pub proc: Option<Proc>,
    /// The agent API address.
    pub addr: SocketAddr,
}

/// The base server config of `td` for agents, with `entries` (raw `[[entry]]` tables).
pub fn server_config(td: &str, entries: &str) -> DaemonConfig {
    server_config_on(td, "127.0.0.1:0", entries)
}

/// [`server_config`] with the agent API on `listen`.
pub fn server_config_on(td: &str, listen: &str, entries: &str) -> DaemonConfig {
    DaemonConfig::new(td)
        .section(&format!("[agent_api]\nlisten = \"{listen}\"\n"))
        .section(entries)
}

/// An `[[entry]]` served by the agent of `node` to this test's uid.
pub fn node_entry(spiffe_id: &str, node: &str) -> String {
    format!(
        "{}node = \"{node}\"\n",
        super::config::entry(spiffe_id, super::own_uid(), &[])
    )
}

impl ServerProc {
    /// Writes `config` in `dir` and creates the CA (`bundle show`), without starting.
    pub fn prepare(dir: &Path, config: &DaemonConfig) -> PathBuf {
        let path = config.write(dir);
        let shown = super::cli(&["bundle", "show", "--config", path.to_str().unwrap()]);
        assert_eq!(shown.code, 0, "{}", shown.stderr);
        std::fs::write(dir.join("bundle.pem"), shown.stdout).unwrap();
        path
    }

    /// Starts the server of an already prepared `dir`.
    pub async fn start(dir: &Path) -> Self {
        let proc = Proc::serve(&dir.join("meshtrust.toml")).await;
        Self::started(dir, proc).await
    }

    /// [`ServerProc::start`] through `wrapper` (e.g. in a network namespace).
    pub async fn start_in(dir: &Path, wrapper: &[&str]) -> Self {
        let config_path = dir.join("meshtrust.toml");
        let proc = Proc::spawn_wrapped(
            wrapper,
            &["serve", "--config", config_path.to_str().unwrap()],
        );
        proc.wait_for_log(super::daemon::READY).await;
        Self::started(dir, proc).await
    }

    async fn started(dir: &Path, proc: Proc) -> Self {
        let addr = super::agent::agent_api_addr(&proc).await;
        Self {
            dir: dir.to_owned(),
            config_path: dir.join("meshtrust.toml"),
            proc: Some(proc),
            addr,
        }
    }

    /// The bundle file an agent bootstraps from (PEM of the CA when it was prepared).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    /// The server's admin socket.
    pub fn admin(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// A one-time join token for `node`.
    pub async fn token(&self, node: &str) -> String {
        super::agent::create_token(&self.admin(), node, "5m").await
    }

    /// The config of an agent of this server in `dir`, on node `node`, joining with a fresh token
    /// and bootstrapping from [`ServerProc::bundle`]: what most agent tests start.
    pub async fn joining_agent(&self, td: &str, node: &str, dir: &Path) -> PathBuf {
        let token = self.token(node).await;
        AgentConfig::new(td, &[self.addr], &self.bundle())
            .join_token(&token)
            .write(dir)
    }

    /// The running process.
    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().unwrap()
    }

    /// Rewrites the config with `config` and sends SIGHUP; waits for the reload to apply.
    pub async fn reload(&self, config: &DaemonConfig) {
        let before = self.proc().count("config reloaded");
        config.write(&self.dir);
        self.proc().signal("HUP");
        self.proc()
            .wait_for_nth_log("config reloaded", before)
            .await;
    }
}

/// Copies a prepared (not started) server folder to `to`: a second replica with the same CA
/// key and config, for failover tests (with a shared `[store]`, the same CA and agent table).
pub fn copy_replica(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}
