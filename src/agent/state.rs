//! The agent's state: what it holds (agent SVID, node view, workload SVIDs), what it publishes
//! to its Workload API (the module's own snapshot types on watch channels) and what it persists.
//!
//! One-way flow: the sync task writes here; [`AgentState::publish`] turns the held state into
//! `Arc` snapshots for the Workload API; the admin and metrics endpoints read [`AgentState::status`].
//! Publishing never shows a caller an entry without its SVID: SVIDs are added to the issuer
//! before the entries that need them and removed only after those entries are gone; an expired
//! SVID's entry is withdrawn (so its callers get PermissionDenied, not a dead certificate).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::cache;
use super::issuer::{AgentIssuer, JwtLink};
use super::view::{self, View};
use super::{AgentError, svids};
use crate::agent_api::proto;
use crate::bundle::TrustBundle;
use crate::clock::Clock;
use crate::config::EntryConfig;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::X509Svid;
use crate::workload_api::{OwnSnapshot, PeerBundles, WorkloadApiDeps};

mod persist;
mod report;
#[cfg(test)]
mod tests;

pub use report::{AgentView, IdentityView, StatusView};

/// An SVID held with its (jittered) renewal time.
#[derive(Debug, Clone)]
pub struct Held {
    /// The SVID and its key.
    pub svid: Arc<X509Svid>,
    /// When to renew it.
    pub renew_at: SystemTime,
}

impl Held {
    /// An SVID received at `now`: renewed around the half of what is left of it (NotBefore is
    /// back-dated by the CA, so it is not the issue time), never sooner than a second.
    fn received(svid: X509Svid, now: SystemTime) -> Self {
        let from = now.max(svid.not_before);
        Self {
            renew_at: svids::renewal_time(from, svid.not_after).max(now + MIN_RENEW_DELAY),
            svid: Arc::new(svid),
        }
    }

    /// An SVID read from the cache: its issue time taken as NotBefore plus the CA's back-dating.
    fn restored(svid: X509Svid) -> Self {
        let issued = (svid.not_before + crate::ca::BACKDATE).min(svid.not_after);
        Self {
            renew_at: svids::renewal_time(issued, svid.not_after),
            svid: Arc::new(svid),
        }
    }
}

/// The shortest time between receiving an SVID and renewing it.
const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Inner {
    node: Option<String>,
    agent: Option<Held>,
    view: Option<View>,
    svids: BTreeMap<SpiffeId, Held>,
    server_id: Option<String>,
    last_sync: Option<SystemTime>,
    connected: Option<String>,
    used_token: Option<String>,
    /// The SVIDs last published to the Workload API.
    published: BTreeMap<SpiffeId, Arc<X509Svid>>,
    /// The own bundle last published.
    published_bundle: Option<Arc<TrustBundle>>,
}

/// The agent's state, shared by its tasks.
#[derive(Debug)]
pub struct AgentState {
    td: TrustDomain,
    inner: Mutex<Inner>,
    cache_path: PathBuf,
    bootstrap: Arc<TrustBundle>,
    clock: Arc<dyn Clock>,
    jwt: JwtLink,
    own: watch::Sender<Arc<OwnSnapshot>>,
    peers: watch::Sender<Arc<PeerBundles>>,
    entries: watch::Sender<Arc<Vec<EntryConfig>>>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl AgentState {
    /// A state read from the cache in `data_dir` (if any), publishing the bootstrap bundle and
    /// no identity until a view arrives.
    ///
    /// # Errors
    /// [`AgentError`] when the folder cannot be secured or the cache is damaged.
    pub fn open(
        td: TrustDomain,
        data_dir: &std::path::Path,
        bootstrap: TrustBundle,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, AgentError> {
        let cache_path = cache::prepare_dir(data_dir)?;
        let bootstrap = Arc::new(bootstrap);
        let jwt = JwtLink::default();
        let (own, _) = watch::channel(Arc::new(OwnSnapshot {
            bundle: bootstrap.clone(),
            issuer: Arc::new(AgentIssuer::default()),
        }));
        let (peers, _) = watch::channel(Arc::new(PeerBundles::new()));
        let (entries, _) = watch::channel(Arc::new(Vec::new()));
        let state = Arc::new(Self {
            td,
            inner: Mutex::new(Inner::default()),
            cache_path,
            bootstrap,
            clock,
            jwt,
            own,
            peers,
            entries,
        });
        if let Some(c) = cache::load(&state.cache_path)? {
            state.restore(c)?;
        }
        state.publish();
        Ok(state)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Workload API's inputs.
    pub fn deps(&self) -> WorkloadApiDeps {
        WorkloadApiDeps {
            own: self.own.subscribe().into(),
            peers: self.peers.subscribe().into(),
            entries: self.entries.subscribe(),
            clock: self.clock.clone(),
        }
    }

    /// Where JWT-SVIDs are asked for.
    pub fn jwt_link(&self) -> &JwtLink {
        &self.jwt
    }

    /// The node name and agent SVID, if attested.
    pub fn agent(&self) -> Option<(String, Arc<X509Svid>, SystemTime)> {
        let inner = self.lock();
        let agent = inner.agent.as_ref()?;
        Some((
            inner.node.clone().unwrap_or_default(),
            agent.svid.clone(),
            agent.renew_at,
        ))
    }

    /// The X.509 roots that authenticate servers now: the last synced own bundle, else the
    /// bootstrap bundle (first contact).
    pub fn server_roots(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        match &self.lock().view {
            Some(v) => v.own.x509_authorities.clone(),
            None => self.bootstrap.x509_authorities.clone(),
        }
    }

    /// Takes a new agent SVID (after attestation or renewal) and persists it.
    ///
    /// # Errors
    /// [`AgentError::Cache`] when it cannot be persisted.
    pub fn set_agent(&self, node: &str, svid: X509Svid) -> Result<(), AgentError> {
        {
            let mut inner = self.lock();
            if inner.node.as_deref() != Some(node) {
                // Another node name: nothing synced for the old one applies.
                inner.view = None;
                inner.svids.clear();
            }
            inner.node = Some(node.to_owned());
            inner.agent = Some(Held::received(svid, self.clock.now()));
        }
        self.save()
    }

    /// Forgets the agent SVID (refused as evicted): the next connection attests again.
    pub fn drop_agent(&self) {
        self.lock().agent = None;
        let _ = self.save();
    }

    /// Applies a node view, publishes and persists it.
    ///
    /// # Errors
    /// [`AgentError::BadView`] (nothing applied), [`AgentError::Cache`].
    pub fn apply_view(&self, raw: proto::NodeView, server: &str) -> Result<(), AgentError> {
        {
            let mut inner = self.lock();
            let node = inner.node.clone().unwrap_or_default();
            let parsed = view::parse(raw, &self.td, &node)?;
            inner.server_id = Some(if parsed.raw.server_id.is_empty() {
                server.to_owned()
            } else {
                parsed.raw.server_id.clone()
            });
            inner.view = Some(parsed);
            inner.last_sync = Some(self.clock.now());
        }
        self.publish();
        // SVIDs whose entry is gone are dropped once the entries no longer name them.
        {
            let mut inner = self.lock();
            let wanted: Vec<SpiffeId> = inner
                .view
                .iter()
                .flat_map(|v| v.entries.iter().map(|e| e.spiffe_id.clone()))
                .collect();
            inner.svids.retain(|id, _| wanted.contains(id));
        }
        self.publish();
        self.save()
    }

    /// The workload IDs that need a (new) SVID now: no SVID, or past its renewal time.
    pub fn due(&self) -> Vec<SpiffeId> {
        let now = self.clock.now();
        let inner = self.lock();
        let mut out: Vec<SpiffeId> = Vec::new();
        for e in inner.view.iter().flat_map(|v| v.entries.iter()) {
            let fresh = inner
                .svids
                .get(&e.spiffe_id)
                .is_some_and(|h| now < h.renew_at);
            if !fresh && !out.contains(&e.spiffe_id) {
                out.push(e.spiffe_id.clone());
            }
        }
        out
    }

    /// Whether some workload ID has no SVID at all (a new entry: signed without waiting).
    pub fn missing_any(&self) -> bool {
        let inner = self.lock();
        inner
            .view
            .iter()
            .flat_map(|v| v.entries.iter())
            .any(|e| !inner.svids.contains_key(&e.spiffe_id))
    }

    /// The next moment something is due: a renewal (workload or agent) or an expiry.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        let now = self.clock.now();
        let inner = self.lock();
        // An expiry already past is not a deadline any more (it was published when it passed).
        let expiries = inner
            .svids
            .values()
            .map(|h| h.svid.not_after)
            .filter(|t| *t > now);
        inner
            .svids
            .values()
            .map(|h| h.renew_at)
            .chain(expiries)
            .chain(inner.agent.iter().map(|a| a.renew_at))
            .min()
    }

    /// Takes new workload SVIDs, publishes and persists them.
    ///
    /// # Errors
    /// [`AgentError::Cache`].
    pub fn add_svids(&self, new: Vec<X509Svid>) -> Result<(), AgentError> {
        if new.is_empty() {
            return Ok(());
        }
        {
            let mut inner = self.lock();
            let now = self.clock.now();
            for svid in new {
                inner
                    .svids
                    .insert(svid.spiffe_id.clone(), Held::received(svid, now));
            }
        }
        self.publish();
        self.save()
    }

    /// Records which server the agent is connected to (`None`: none).
    pub fn set_connected(&self, server: Option<&str>) {
        self.lock().connected = server.map(str::to_owned);
    }

    /// Whether a server is connected.
    pub fn connected(&self) -> bool {
        self.lock().connected.is_some()
    }

    /// Publishes the held state to the Workload API: the issuer first (every unexpired SVID),
    /// then the peers, then the entries that have an unexpired SVID.
    pub fn publish(&self) {
        let now = self.clock.now();
        let (issuer, bundle, peers, entries) = {
            let inner = self.lock();
            let live: BTreeMap<SpiffeId, Arc<X509Svid>> = inner
                .svids
                .iter()
                .filter(|(_, h)| now < h.svid.not_after)
                .map(|(id, h)| (id.clone(), h.svid.clone()))
                .collect();
            let entries: Vec<EntryConfig> = inner
                .view
                .iter()
                .flat_map(|v| v.entries.iter())
                .filter(|e| live.contains_key(&e.spiffe_id))
                .cloned()
                .collect();
            let bundle = inner
                .view
                .as_ref()
                .map_or_else(|| self.bootstrap.clone(), |v| v.own.clone());
            let peers = inner
                .view
                .as_ref()
                .map(|v| v.peers.clone())
                .unwrap_or_default();
            (live, bundle, peers, entries)
        };
        // Nothing new for the issuer: no new snapshot (every open stream would wake for it).
        let same_own = {
            let inner = self.lock();
            inner.published_bundle.as_deref() == Some(&*bundle)
                && inner.published.len() == issuer.len()
                && inner
                    .published
                    .iter()
                    .zip(&issuer)
                    .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
        };
        if same_own {
            if **self.peers.borrow() != peers {
                self.peers.send_replace(Arc::new(peers));
            }
            if **self.entries.borrow() != entries {
                self.entries.send_replace(Arc::new(entries));
            }
            return;
        }
        // Keep what callers may still be served until the entries that need it are gone.
        let mut merged = {
            let mut inner = self.lock();
            inner.published_bundle = Some(bundle.clone());
            std::mem::replace(&mut inner.published, issuer.clone())
        };
        for (id, svid) in &issuer {
            merged.insert(id.clone(), svid.clone());
        }
        let own = |svids: BTreeMap<SpiffeId, Arc<X509Svid>>| {
            Arc::new(OwnSnapshot {
                bundle: bundle.clone(),
                issuer: Arc::new(AgentIssuer::new(svids, self.jwt.clone())),
            })
        };
        self.own.send_replace(own(merged));
        if **self.peers.borrow() != peers {
            self.peers.send_replace(Arc::new(peers));
        }
        if **self.entries.borrow() != entries {
            self.entries.send_replace(Arc::new(entries));
        }
        self.own.send_replace(own(issuer));
    }
}
