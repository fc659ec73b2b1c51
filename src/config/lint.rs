//! `check-config`'s warnings: what a valid config does that works today but will hurt, each
//! naming its key. [`warnings`] looks at the config and the folders on the way to the workload
//! socket; [`start_checks`] (`--strict`) also reads what the daemon reads at start (the
//! bootstrap bundles), so a wrong file is caught before the daemon runs.

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::{Config, PeerProfile, Selector};

/// One finding: the key it is about, and what will hurt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The key, as errors name it (`metrics.listen`, `entry[0].selectors`).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The warnings about `config` (no file is read but the folders' modes).
pub fn warnings(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    if let Some(m) = &config.metrics
        && !m.listen.ip().is_loopback()
        && m.non_loopback_reason.is_none()
    {
        out.push(Warning {
            key: "metrics.listen".to_owned(),
            message: format!(
                "{} is not a loopback address, and the metrics are served to anyone who can \
                 connect (they name the trust domain, its peers and their state): listen on \
                 127.0.0.1, or say why not in metrics.non_loopback_reason",
                m.listen
            ),
        });
    }
    out.extend(unreachable_socket(config));
    out
}

/// Entries whose uid cannot reach the workload socket: a folder on the way to it that exists and
/// that uid cannot search, or the socket inside `data_dir` (created 0700).
fn unreachable_socket(config: &Config) -> Vec<Warning> {
    let socket = &config.workload_api.socket;
    let mut out = Vec::new();
    for (i, entry) in config.entries.iter().enumerate() {
        let key = format!("entry[{i}].selectors");
        for selector in &entry.selectors {
            let Selector::Uid(uid) = selector else {
                continue;
            };
            if *uid == 0 || *uid == own_uid() {
                continue;
            }
            if socket.starts_with(&config.data_dir) {
                out.push(Warning {
                    key: key.clone(),
                    message: format!(
                        "{} is inside data_dir {}, which is 0700: uid {uid} cannot reach it; \
                         move workload_api.socket out of data_dir",
                        socket.display(),
                        config.data_dir.display()
                    ),
                });
                continue;
            }
            if let Some((folder, mode, owner)) = blocking_folder(socket, *uid) {
                out.push(Warning {
                    key: key.clone(),
                    message: format!(
                        "uid {uid} cannot reach the workload socket {}: the folder {} (mode \
                         {mode:04o}, owner uid {owner}) does not let it through; make that \
                         folder searchable (e.g. chmod o+x) or move workload_api.socket",
                        socket.display(),
                        folder.display()
                    ),
                });
            }
        }
    }
    out
}

fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The first existing folder above `socket` that `uid` certainly cannot search: not its owner
/// with the owner's x bit, no group x bit (its groups are unknown here, so a group bit counts
/// as reachable) and no other x bit. Folders not created yet are made like `mkdir -p`.
fn blocking_folder(socket: &Path, uid: u32) -> Option<(&Path, u32, u32)> {
    let mut folders: Vec<&Path> = socket.ancestors().skip(1).collect();
    folders.reverse();
    for folder in folders {
        if folder.as_os_str().is_empty() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(folder) else {
            // Missing: the daemon creates it (and those below) like `mkdir -p`.
            return None;
        };
        let mode = meta.mode() & 0o7777;
        let searchable = (meta.uid() == uid && mode & 0o100 != 0) || mode & 0o011 != 0;
        if !searchable {
            return Some((folder, mode, meta.uid()));
        }
    }
    None
}

/// What the daemon reads at start, read now: every `https_spiffe` peer's bootstrap bundle must
/// exist, parse, and hold CAs of the endpoint ID's trust domain only (a bundle handed over by
/// the wrong mesh names the trust domain it is from).
pub fn start_checks(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    for (i, peer) in config.federation.iter().enumerate() {
        let PeerProfile::HttpsSpiffe {
            endpoint_spiffe_id,
            bootstrap_bundle: Some(file),
        } = &peer.profile
        else {
            continue;
        };
        let id_td = endpoint_spiffe_id.trust_domain();
        if id_td == &config.trust_domain {
            continue;
        }
        if let Err(reason) = crate::federation::fetcher::read_bootstrap_bundle(id_td, file) {
            out.push(Warning {
                key: format!("federation[{i}].bootstrap_bundle"),
                message: format!(
                    "{}: {reason} (read at start until a bundle of {id_td} is pinned)",
                    file.display()
                ),
            });
        }
    }
    out
}
