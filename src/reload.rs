//! `SIGHUP`: re-read the config file and apply what can change under a running daemon, all or
//! nothing: the running state always matches one config file.
//!
//! Registration entries (`[[entry]]`, with their `federates_with`) apply at once: the Workload
//! API streams of every connected workload push the new identities and bundle sets, and a
//! caller whose last identity went away gets PermissionDenied. Federation relationships
//! (`[[federation]]`) apply at once too: a removed peer's fetcher stops and its bundle leaves
//! the streams, an added one starts fetching, a changed one restarts. Everything else (trust
//! domain, CA, listeners, sockets) needs a restart; a reload that changes such a section applies
//! nothing and names the sections. A config that does not load changes nothing and is logged
//! with the key at fault; so does a relationship that cannot start (a missing bootstrap bundle).
//! The outcome of the last reload is in `meshtrust status` ([`LastReload`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::app::Daemon;
use crate::config::Config;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Whether the entries changed (and were applied).
    pub entries_changed: bool,
    /// Whether the federation relationships changed (and were applied).
    pub federation_changed: bool,
    /// Sections that differ from the running config but need a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The outcome of the last reload, as `GET /v1/status` shows it (`last_reload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadRecord {
    /// When (RFC 3339).
    pub at: String,
    /// `applied` or `refused`.
    pub outcome: &'static str,
    /// Why it was refused.
    pub error: Option<String>,
}

/// The last reload's outcome, shared by the daemon (writer) and the admin API (reader).
#[derive(Debug, Clone, Default)]
pub struct LastReload(Arc<Mutex<Option<ReloadRecord>>>);

impl LastReload {
    /// Records a reload now: applied (`Ok`) or refused with why.
    pub fn record(&self, result: Result<(), String>) {
        let record = ReloadRecord {
            at: crate::clock::rfc3339(std::time::SystemTime::now()),
            outcome: if result.is_ok() { "applied" } else { "refused" },
            error: result.err(),
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// The last reload, if any since the start.
    pub fn get(&self) -> Option<ReloadRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Compares `running` with `new`: the entries to apply and the sections left as they are.
pub fn diff(running: &Config, new: &Config) -> ReloadOutcome {
    let mut needs_restart = Vec::new();
    let checks: [(&'static str, bool); 11] = [
        ("trust_domain", running.trust_domain == new.trust_domain),
        ("data_dir", running.data_dir == new.data_dir),
        ("ca", running.ca == new.ca),
        (
            "bundle_endpoint",
            running.bundle_endpoint == new.bundle_endpoint,
        ),
        ("workload_api", running.workload_api == new.workload_api),
        ("admin_api", running.admin_api == new.admin_api),
        ("metrics", running.metrics == new.metrics),
        (
            "federation_min_refresh_interval",
            running.federation_min_refresh_interval == new.federation_min_refresh_interval,
        ),
        ("store", running.store == new.store),
        ("agent_api", running.agent_api == new.agent_api),
        (
            "node_attestation",
            running.node_attestation == new.node_attestation,
        ),
    ];
    for (section, same) in checks {
        if !same {
            needs_restart.push(section);
        }
    }
    ReloadOutcome {
        entries_changed: running.entries != new.entries,
        federation_changed: running.federation != new.federation,
        needs_restart,
    }
}

/// Loads `path` for a reload.
///
/// # Errors
/// The config error, as `check-config` prints it.
pub fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

/// Re-reads the daemon's config file and applies it (all or nothing), logging and recording
/// what happened.
pub fn from_disk(daemon: &mut Daemon) {
    let path = daemon.config_file().to_path_buf();
    match load(&path).and_then(|new| daemon.reload(new)) {
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "config reload refused; nothing changed");
            daemon.record_reload(Err(e));
        }
        Ok(outcome) => {
            tracing::info!(
                file = %path.display(),
                entries_changed = outcome.entries_changed,
                federation_changed = outcome.federation_changed,
                "config reloaded"
            );
            daemon.record_reload(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    const BASE: &str = "trust_domain = \"a.test\"\ndata_dir = \"/d\"\n[workload_api]\nsocket = \"/w.sock\"\n[admin_api]\nsocket = \"/a.sock\"\n";

    #[test]
    fn entries_apply_and_other_sections_are_named_for_a_restart() {
        let running = config(BASE);
        let same = diff(&running, &config(BASE));
        assert!(!same.entries_changed && same.needs_restart.is_empty());

        let with_entry = format!(
            "{BASE}[[entry]]\nspiffe_id = \"spiffe://a.test/w\"\nselectors = [\"unix:uid:1\"]\n"
        );
        let more = diff(&running, &config(&with_entry));
        assert!(more.entries_changed);
        assert!(more.needs_restart.is_empty());

        let moved = BASE
            .replace("/d", "/elsewhere")
            .replace("/w.sock", "/x.sock");
        let restart = diff(&running, &config(&moved));
        assert!(!restart.entries_changed);
        assert_eq!(restart.needs_restart, ["data_dir", "workload_api"]);
    }
}
