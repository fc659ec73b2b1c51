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

use prost::Message as _;
use serde::Serialize;
use tokio::sync::watch;

use super::cache::{self, Cache, StoredSvid};
use super::config::NodeProof;
use super::issuer::{AgentIssuer, JwtLink};
use super::view::{self, View};
use super::{AgentError, svids};
use crate::agent_api::proto;
use crate::bundle::TrustBundle;
use crate::clock::{Clock, rfc3339};
use crate::config::EntryConfig;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{PrivateKey, X509Svid};
use crate::workload_api::{OwnSnapshot, PeerBundles, WorkloadApiDeps};

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

/// `GET /v1/status` of an agent.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Our trust domain.
    pub trust_domain: String,
    /// The agent's part.
    pub agent: AgentView,
}

/// The agent section of the status.
#[derive(Debug, Serialize)]
pub struct AgentView {
    /// The node name.
    pub node: Option<String>,
    /// The agent SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// When the agent SVID expires.
    pub svid_expires_at: Option<String>,
    /// The server connected to (its URL), if any.
    pub server: Option<String>,
    /// The replica that sent the last view.
    pub server_id: Option<String>,
    /// When the last view arrived.
    pub last_sync: Option<String>,
    /// The node view's revision.
    pub revision: Option<u64>,
    /// Seconds until the first cached SVID expires.
    pub first_expiry_seconds: Option<i64>,
    /// The identities held.
    pub identities: Vec<IdentityView>,
}

/// One held identity.
#[derive(Debug, Serialize)]
pub struct IdentityView {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// Its NotAfter.
    pub expires_at: String,
    /// When it will be renewed.
    pub renew_at: String,
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

    fn restore(&self, c: Cache) -> Result<(), AgentError> {
        let mut inner = self.lock();
        inner.node.clone_from(&c.node);
        let node = c.node.clone().unwrap_or_default();
        if let Some(agent) = &c.agent {
            inner.agent = Some(Held::restored(stored_svid(agent)?));
        }
        if let Some(v) = &c.view {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| AgentError::Cache(e.to_string()))?;
            let raw = proto::NodeView::decode(bytes.as_slice())
                .map_err(|e| AgentError::Cache(e.to_string()))?;
            inner.view = Some(view::parse(raw, &self.td, &node)?);
        }
        for s in &c.svids {
            let svid = stored_svid(s)?;
            inner
                .svids
                .insert(svid.spiffe_id.clone(), Held::restored(svid));
        }
        inner.server_id = c.server_id;
        inner.used_token = c.used_token_sha256;
        inner.last_sync = c
            .last_sync
            .map(|s| UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        tracing::info!(
            node = %node,
            identities = inner.svids.len(),
            "agent cache loaded from {}",
            self.cache_path.display()
        );
        Ok(())
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

    /// The hash of the join token in `proof`'s file when it is the one already used.
    pub fn token_already_used(&self, proof: &NodeProof) -> Option<String> {
        let hash = token_hash(proof)?;
        (self.lock().used_token.as_ref() == Some(&hash)).then_some(hash)
    }

    /// Remembers the join token of `proof` as used (persisted with the next save).
    pub fn mark_token_used(&self, proof: &NodeProof) {
        if let Some(hash) = token_hash(proof) {
            self.lock().used_token = Some(hash);
        }
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
        let inner = self.lock();
        inner
            .svids
            .values()
            .flat_map(|h| [h.renew_at, h.svid.not_after])
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
        // Keep what callers may still be served until the entries that need it are gone.
        let mut merged = {
            let mut inner = self.lock();
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

    fn save(&self) -> Result<(), AgentError> {
        use base64::Engine as _;
        let c = {
            let inner = self.lock();
            Cache {
                node: inner.node.clone(),
                agent: inner.agent.as_ref().map(|a| stored(&a.svid)),
                view: inner.view.as_ref().map(|v| {
                    base64::engine::general_purpose::STANDARD.encode(v.raw.encode_to_vec())
                }),
                server_id: inner.server_id.clone(),
                last_sync: inner.last_sync.map(unix),
                svids: inner.svids.values().map(|h| stored(&h.svid)).collect(),
                used_token_sha256: inner.used_token.clone(),
            }
        };
        cache::save(&self.cache_path, &c)
    }

    /// Seconds until the first held workload SVID expires (negative: already expired).
    pub fn first_expiry_seconds(&self) -> Option<i64> {
        let now = unix(self.clock.now());
        let inner = self.lock();
        inner
            .svids
            .values()
            .map(|h| unix(h.svid.not_after) - now)
            .min()
    }

    /// The agent SVID's NotAfter (Unix seconds).
    pub fn agent_expires_at(&self) -> Option<i64> {
        self.lock().agent.as_ref().map(|a| unix(a.svid.not_after))
    }

    /// When the last view arrived (Unix seconds).
    pub fn last_sync(&self) -> Option<i64> {
        self.lock().last_sync.map(unix)
    }

    /// What `GET /v1/status` shows.
    pub fn status(&self) -> StatusView {
        let first_expiry_seconds = self.first_expiry_seconds();
        let inner = self.lock();
        StatusView {
            trust_domain: self.td.to_string(),
            agent: AgentView {
                node: inner.node.clone(),
                spiffe_id: inner.agent.as_ref().map(|a| a.svid.spiffe_id.to_string()),
                svid_expires_at: inner.agent.as_ref().map(|a| rfc3339(a.svid.not_after)),
                server: inner.connected.clone(),
                server_id: inner.server_id.clone(),
                last_sync: inner.last_sync.map(rfc3339),
                revision: inner.view.as_ref().map(|v| v.raw.revision),
                first_expiry_seconds,
                identities: inner
                    .svids
                    .values()
                    .map(|h| IdentityView {
                        spiffe_id: h.svid.spiffe_id.to_string(),
                        expires_at: rfc3339(h.svid.not_after),
                        renew_at: rfc3339(h.renew_at),
                    })
                    .collect(),
            },
        }
    }
}

fn token_hash(proof: &NodeProof) -> Option<String> {
    let NodeProof::JoinToken(file) = proof else {
        return None;
    };
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(file).ok()?);
    let digest = ring::digest::digest(&ring::digest::SHA256, text.trim().as_bytes());
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn stored(svid: &X509Svid) -> StoredSvid {
    let chain: Vec<Vec<u8>> = svid.cert_chain.iter().map(|c| c.to_vec()).collect();
    StoredSvid::new(
        svid.spiffe_id.as_str(),
        &chain,
        svid.private_key.pkcs8_der(),
    )
}

fn stored_svid(s: &StoredSvid) -> Result<X509Svid, AgentError> {
    let id = SpiffeId::new(&s.spiffe_id).map_err(|e| AgentError::Cache(e.to_string()))?;
    let key = PrivateKey::from_pkcs8_der(s.key_der()?.to_vec());
    svids::svid_from_chain(&id, s.chain_der()?, key)
}
