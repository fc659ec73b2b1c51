//! Node agents in tests: the agent's config file ([`AgentConfig`]), `meshtrust agent` as a
//! [`Proc`], and the one server harness of every agent test ([`ServerProc`]: a `meshtrust serve`
//! with `[agent_api]`, its bundle file for `server_bundle`, join tokens, and agent API clients
//! for the tests that speak the protocol themselves). The agent API's client helpers are in
//! `agent.rs`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

use super::agent::{Client, Identity};
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
    /// Its trust domain.
    pub td: String,
    /// The X.509 authorities of its bundle file: what agent API clients trust.
    pub roots: Vec<CertificateDer<'static>>,
    /// The temp dir it lives in, when [`ServerProc::launch`] made one.
    tmp: Option<tempfile::TempDir>,
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

    /// Prepares and starts `config` in a new temp dir (removed with the server).
    pub async fn launch(config: &DaemonConfig) -> Self {
        Self::launch_in(tempfile::tempdir().unwrap(), config).await
    }

    /// [`ServerProc::launch`] in `tmp`, which may hold files the config names.
    pub async fn launch_in(tmp: tempfile::TempDir, config: &DaemonConfig) -> Self {
        super::init();
        Self::prepare(tmp.path(), config);
        let mut server = Self::start(tmp.path()).await;
        server.tmp = Some(tmp);
        server
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
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("meshtrust.toml")).unwrap()).unwrap();
        let td = config["trust_domain"].as_str().unwrap().to_owned();
        let shown = std::fs::read(dir.join("bundle.pem")).unwrap();
        let roots = meshtrust::bundle::pem::parse_bootstrap(&super::td(&td), &shown)
            .unwrap()
            .x509_authorities;
        Self {
            td,
            dir: dir.to_owned(),
            config_path: dir.join("meshtrust.toml"),
            proc: Some(proc),
            addr,
            roots,
            tmp: None,
        }
    }

    /// Stops it (SIGTERM, a clean exit) and serves the same config and data_dir again.
    pub async fn restart(mut self) -> Self {
        assert!(self.proc.take().unwrap().stop().success());
        let tmp = self.tmp.take();
        let mut server = Self::start(&self.dir).await;
        server.tmp = tmp;
        server
    }

    /// An agent API client presenting `identity`, if any.
    pub async fn client(&self, identity: Option<&Identity>) -> Client {
        super::agent::connect(self.addr, &self.td, &self.roots, identity).await
    }

    /// A new agent of `node`, attested with a fresh token.
    pub async fn attested(&self, node: &str) -> Identity {
        let token = self.token(node).await;
        let mut anonymous = self.client(None).await;
        super::agent::attest_join_token(&mut anonymous, &token)
            .await
            .unwrap()
            .0
    }

    /// `meshtrust_agent_refusals_total{reason="<reason>"}` now (the config needs `[metrics]`).
    pub async fn refusals(&self, reason: &str) -> f64 {
        let addr = super::metrics::listen_addr(self.proc()).await;
        let name = "meshtrust_agent_refusals_total";
        super::metrics::scrape(&addr).value(
            name,
            "counter",
            &format!("{name}{{reason=\"{reason}\"}}"),
        )
    }

    /// The bundle file an agent bootstraps from: `meshtrust bundle show` when it was prepared
    /// (SPIFFE bundle JSON, despite the name; `server_bundle` takes either form).
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
    pub async fn joining_agent(&self, node: &str, dir: &Path) -> PathBuf {
        let token = self.token(node).await;
        AgentConfig::new(&self.td, &[self.addr], &self.bundle())
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
