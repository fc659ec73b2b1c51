//! Per-peer fetch status: written by the fetchers, read by the admin API and the metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::spiffe_id::TrustDomain;

/// The state names of CONTRACT.md's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// The last fetch succeeded.
    Ok,
    /// The last fetch failed; the pinned bundle (if any) stays in force.
    Failing,
    /// No fetch has finished yet.
    NeverFetched,
}

impl PeerState {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failing => "failing",
            Self::NeverFetched => "never_fetched",
        }
    }
}

/// One relationship's fetch history.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// The configured peer trust domain.
    pub trust_domain: TrustDomain,
    /// The configured bundle endpoint URL.
    pub url: String,
    /// `https_spiffe` or `https_web`.
    pub profile: &'static str,
    /// Ok, failing or never fetched.
    pub state: PeerState,
    /// When a fetch last succeeded.
    pub last_success: Option<SystemTime>,
    /// When a fetch last finished.
    pub last_attempt: Option<SystemTime>,
    /// Why the last fetch failed.
    pub last_error: Option<String>,
    /// When the next fetch is due.
    pub next_refresh: Option<SystemTime>,
    /// The normal polling interval now: the peer's refresh hint, clamped by the poll floor and
    /// ceiling (failures retry sooner, with backoff).
    pub refresh_interval: Option<Duration>,
    /// Fetches by result label (`ok`, or the failure kind).
    pub fetches: BTreeMap<&'static str, u64>,
}

impl PeerStatus {
    /// A relationship that has not fetched yet.
    pub fn new(trust_domain: TrustDomain, url: String, profile: &'static str) -> Self {
        Self {
            trust_domain,
            url,
            profile,
            state: PeerState::NeverFetched,
            last_success: None,
            last_attempt: None,
            last_error: None,
            next_refresh: None,
            refresh_interval: None,
            fetches: BTreeMap::new(),
        }
    }
}

/// The status of every relationship.
#[derive(Debug, Default)]
pub struct StatusBoard {
    peers: Mutex<BTreeMap<TrustDomain, PeerStatus>>,
}

impl StatusBoard {
    /// A board with these relationships, none fetched.
    pub fn new(peers: impl IntoIterator<Item = PeerStatus>) -> Self {
        Self {
            peers: Mutex::new(
                peers
                    .into_iter()
                    .map(|p| (p.trust_domain.clone(), p))
                    .collect(),
            ),
        }
    }

    /// Replaces the relationships (a config reload): one still configured with the same URL and
    /// profile keeps its status; the others start afresh.
    pub fn set(&self, peers: impl IntoIterator<Item = PeerStatus>) {
        let mut map = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        *map = peers
            .into_iter()
            .map(|fresh| {
                let kept = map
                    .remove(&fresh.trust_domain)
                    .filter(|old| old.url == fresh.url && old.profile == fresh.profile);
                (fresh.trust_domain.clone(), kept.unwrap_or(fresh))
            })
            .collect();
    }

    /// Changes one peer's status.
    pub fn update(&self, td: &TrustDomain, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(s) = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(td)
        {
            f(s);
        }
    }

    /// A copy of one peer's status.
    pub fn get(&self, td: &TrustDomain) -> Option<PeerStatus> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(td)
            .cloned()
    }

    /// A copy of every status, by trust domain.
    pub fn all(&self) -> Vec<PeerStatus> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
