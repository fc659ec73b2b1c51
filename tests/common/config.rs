//! The one config writer: a `meshtrust.toml` built from the sections a test needs, with the
//! sockets and the state in the daemon's own folder (relative paths resolve against it).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A daemon config under construction. Every config has `trust_domain`, `data_dir = "data"`,
/// `workload.sock` and `admin.sock`; the rest is added.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    head: String,
    sections: String,
}

/// The sockets every config has, in the daemon's folder.
const SOCKETS: &str =
    "[workload_api]\nsocket = \"workload.sock\"\n[admin_api]\nsocket = \"admin.sock\"\n";

impl DaemonConfig {
    /// The minimal config of `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        Self {
            // Peers may be polled every second (the daemon's floor is 30 s unless lowered).
            head: format!(
                "trust_domain = \"{trust_domain}\"\ndata_dir = \"data\"\nfederation_min_refresh_interval = \"1s\"\n"
            ),
            sections: String::new(),
        }
    }

    /// The minimal config of `trust_domain` with the daemon's own defaults for every top-level
    /// key (its 30 s refresh floor included): for tests of those defaults.
    pub fn plain(trust_domain: &str) -> Self {
        Self {
            head: format!("trust_domain = \"{trust_domain}\"\ndata_dir = \"data\"\n"),
            sections: String::new(),
        }
    }

    /// Raw top-level `key = value` lines, added before every section.
    pub fn top(mut self, lines: &str) -> Self {
        self.head.push_str(lines);
        if !lines.ends_with('\n') {
            self.head.push('\n');
        }
        self
    }

    /// A `[ca]` section holding `lines` (e.g. `ca_ttl = "30s"`).
    pub fn ca(self, lines: &str) -> Self {
        self.section(&format!("[ca]\n{lines}\n"))
    }

    /// An https_spiffe `[bundle_endpoint]` on `127.0.0.1:port`.
    pub fn bundle_endpoint(self, port: u16, refresh_hint: &str) -> Self {
        self.section(&format!(
            "[bundle_endpoint]\nlisten = \"127.0.0.1:{port}\"\nrefresh_hint = \"{refresh_hint}\"\n"
        ))
    }

    /// `[metrics]` on an ephemeral port (its address is logged: [`super::metrics::listen_addr`]).
    pub fn metrics(self) -> Self {
        self.section("[metrics]\nlisten = \"127.0.0.1:0\"\n")
    }

    /// An https_spiffe `[bundle_endpoint]` on an ephemeral port holding `lines` as well (e.g.
    /// `endpoint_spiffe_id = ...`; none when empty).
    pub fn bundle_endpoint_any_port(self, lines: &str) -> Self {
        self.section(&format!(
            "[bundle_endpoint]\nlisten = \"127.0.0.1:0\"\n{lines}"
        ))
    }

    /// An https_spiffe `[[federation]]` relationship with `td` at `url`, its endpoint
    /// `spiffe://td/meshtrust/server` unless `endpoint_id` says otherwise, bootstrapped from
    /// `peers/<td>.json` when `bootstrap` is set.
    pub fn peer(self, td: &str, url: &str, endpoint_id: Option<&str>, bootstrap: bool) -> Self {
        let path = format!("peers/{td}.json");
        self.federation(td, url, endpoint_id, bootstrap.then_some(path.as_str()))
    }

    /// [`DaemonConfig::peer`] bootstrapped from `bootstrap` (relative to the daemon's folder;
    /// JSON or PEM).
    pub fn peer_bootstrapped_from(self, td: &str, url: &str, bootstrap: &str) -> Self {
        self.federation(td, url, None, Some(bootstrap))
    }

    fn federation(
        self,
        td: &str,
        url: &str,
        endpoint_id: Option<&str>,
        bootstrap: Option<&str>,
    ) -> Self {
        let id =
            endpoint_id.map_or_else(|| format!("spiffe://{td}/meshtrust/server"), str::to_owned);
        let mut text = format!(
            "[[federation]]\ntrust_domain = \"{td}\"\nbundle_endpoint_url = \"{url}\"\nprofile = \"https_spiffe\"\nendpoint_spiffe_id = \"{id}\"\n"
        );
        if let Some(path) = bootstrap {
            writeln!(text, "bootstrap_bundle = \"{path}\"").unwrap();
        }
        self.section(&text)
    }

    /// A registration entry for this test process's uid (what the Workload API attests for it
    /// and for the children it runs), federating with `federates_with` (`["*"]` for all).
    pub fn entry(self, spiffe_id: &str, federates_with: &[&str]) -> Self {
        self.section(&entry(spiffe_id, super::own_uid(), federates_with))
    }

    /// Raw TOML appended as it is (tables and arrays of tables only).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push_str(toml);
        if !toml.ends_with('\n') {
            self.sections.push('\n');
        }
        self
    }

    /// The sections added so far, without the base config (to append to another config).
    pub fn sections(&self) -> String {
        self.sections.clone()
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        format!("{}{SOCKETS}{}", self.head, self.sections)
    }

    /// Writes `<dir>/meshtrust.toml` (creating `dir` and `dir/peers`); returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir.join("peers")).unwrap();
        let path = dir.join("meshtrust.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}

/// An `[[entry]]` for `uid` federating with `federates_with` (none when empty).
pub fn entry(spiffe_id: &str, uid: u32, federates_with: &[&str]) -> String {
    let mut text =
        format!("[[entry]]\nspiffe_id = \"{spiffe_id}\"\nselectors = [\"unix:uid:{uid}\"]\n");
    if !federates_with.is_empty() {
        let list: Vec<String> = federates_with.iter().map(|t| format!("\"{t}\"")).collect();
        writeln!(text, "federates_with = [{}]", list.join(", ")).unwrap();
    }
    text
}
