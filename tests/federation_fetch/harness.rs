//! A peer trust domain (a real `Ca` on SQLite, manual clock) behind a hostile endpoint, and our
//! side (a `PeerStore` on SQLite, the status board, the fetchers).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshtrust::bundle::{TrustBundle, jwks};
use meshtrust::ca::{Ca, CaPolicy, KeyType};
use meshtrust::clock::{ManualClock, SystemClock};
use meshtrust::config::{FederationConfig, PeerProfile};
use meshtrust::federation::client::FetchLimits;
use meshtrust::federation::fetcher::{FetcherError, spawn_fetchers_with_limits, status_board};
use meshtrust::federation::pinned::PeerStore;
use meshtrust::federation::status::{PeerStatus, StatusBoard};
use meshtrust::federation::verifier::OwnRoots;
use meshtrust::federation::{FetchReport, RefreshHandles};
use meshtrust::spiffe_id::{SpiffeId, TrustDomain};
use meshtrust::store::Storage;
use meshtrust::store::sqlite::SqliteStorage;
use rustls::ServerConfig;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hostile::tls_config;

pub const HOUR: Duration = Duration::from_secs(3600);
pub const OWN: &str = "mesh-a.test";
pub const PEER: &str = "mesh-b.test";
pub const ENDPOINT: &str = "spiffe://mesh-b.test/meshtrust/server";

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

/// A trust domain's CA on its own SQLite state, driven by a manual clock.
#[derive(Debug)]
pub struct PeerCa {
    pub clock: Arc<ManualClock>,
    pub ca: Ca,
    _dir: TempDir,
}

impl PeerCa {
    /// A CA for `name` (1 h CAs, 30 min SVIDs) whose clock starts at `start`.
    pub fn new(name: &str, start: SystemTime) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir.path()).unwrap());
        let policy = CaPolicy {
            key_type: KeyType::EcP256,
            ca_ttl: HOUR,
            x509_svid_ttl: HOUR / 2,
            jwt_svid_ttl: Duration::from_secs(300),
            refresh_hint: Duration::from_secs(300),
        };
        let ca = Ca::open(td(name), policy, clock.clone(), storage).unwrap();
        Self {
            clock,
            ca,
            _dir: dir,
        }
    }

    /// A CA whose clock is the real time.
    pub fn now(name: &str) -> Self {
        Self::new(name, SystemTime::now())
    }

    /// A TLS identity: an X509-SVID for `spiffe_id` from the active authority.
    pub fn endpoint_tls(&self, spiffe_id: &str) -> Arc<ServerConfig> {
        let svid = self
            .ca
            .snapshot()
            .issue_x509_svid(&id(spiffe_id), self.clock_now())
            .unwrap();
        tls_config(svid.cert_chain.clone(), svid.private_key.pkcs8_der())
    }

    fn clock_now(&self) -> SystemTime {
        meshtrust::clock::Clock::now(&*self.clock)
    }

    /// The published bundle.
    pub fn bundle(&self) -> TrustBundle {
        (*self.ca.snapshot().bundle).clone()
    }

    /// The bundle document exactly as a meshtrust endpoint serves it.
    pub fn bundle_json(&self) -> Vec<u8> {
        self.ca.snapshot().bundle_json.to_vec()
    }
}

/// `bundle` with another sequence, as a document.
pub fn with_sequence(bundle: &TrustBundle, sequence: u64) -> Vec<u8> {
    let mut b = bundle.clone();
    b.sequence = Some(sequence);
    jwks::to_json(&b).unwrap()
}

/// Our side of the relationships.
#[derive(Debug)]
pub struct Ours {
    pub store: Arc<PeerStore>,
    pub status: Arc<StatusBoard>,
    pub refresh: RefreshHandles,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub dir: TempDir,
}

impl Ours {
    /// A temp dir for state and files (bootstrap bundles, CA files).
    pub fn dir() -> TempDir {
        tempfile::tempdir().unwrap()
    }

    /// Starts fetchers for `peers` with `own` roots and `limits`, state in `dir`.
    pub fn start(
        dir: TempDir,
        peers: &[FederationConfig],
        own: OwnRoots,
        limits: FetchLimits,
    ) -> Result<Self, FetcherError> {
        let storage: Arc<dyn Storage> =
            Arc::new(SqliteStorage::open(&dir.path().join("state")).unwrap());
        let tds = peers.iter().map(|p| p.trust_domain.clone()).collect();
        let store = Arc::new(PeerStore::open(storage, tds).unwrap());
        let status = Arc::new(status_board(peers));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let refresh = spawn_fetchers_with_limits(
            peers,
            store.clone(),
            status.clone(),
            own,
            Arc::new(SystemClock),
            &tracker,
            cancel.clone(),
            limits,
        )?;
        Ok(Self {
            store,
            status,
            refresh,
            cancel,
            tracker,
            dir,
        })
    }

    /// Asks the peer's fetcher to fetch now (hang guard: 30 s).
    pub async fn refresh(&self, name: &str) -> FetchReport {
        tokio::time::timeout(Duration::from_secs(30), self.refresh.refresh(&td(name)))
            .await
            .expect("refresh hung")
            .expect("fetcher is running")
    }

    /// Asks the peer's fetcher to fetch now and asserts the fetch failed for `reason` (a
    /// refusal with its reason, never just any failure).
    pub async fn refresh_refused(&self, name: &str, reason: &str) -> FetchReport {
        let report = self.refresh(name).await;
        assert_refused(&report, reason);
        report
    }

    /// The peer's status.
    pub fn status(&self, name: &str) -> PeerStatus {
        self.status.get(&td(name)).unwrap()
    }

    /// The peer's pinned bundle.
    pub fn pinned(&self, name: &str) -> Option<Arc<TrustBundle>> {
        self.store.get(&td(name))
    }

    /// Writes a file in the temp dir.
    pub fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// An https_spiffe relationship with mesh-b.test.
pub fn spiffe_peer(url: url::Url, bootstrap: Option<PathBuf>) -> FederationConfig {
    spiffe_peer_with_id(url, ENDPOINT, bootstrap)
}

/// An https_spiffe relationship with mesh-b.test whose endpoint is `endpoint_id`.
pub fn spiffe_peer_with_id(
    url: url::Url,
    endpoint_id: &str,
    bootstrap: Option<PathBuf>,
) -> FederationConfig {
    FederationConfig {
        trust_domain: td(PEER),
        url,
        profile: PeerProfile::HttpsSpiffe {
            endpoint_spiffe_id: id(endpoint_id),
            bootstrap_bundle: bootstrap,
        },
    }
}

/// Roots for our own trust domain that hold nothing (fail closed).
pub fn no_own_roots() -> OwnRoots {
    OwnRoots::new(td(OWN), Vec::new)
}

/// Short limits so that timeouts take a second, not fifteen.
pub fn short_limits() -> FetchLimits {
    FetchLimits {
        connect_timeout: Duration::from_secs(1),
        total_timeout: Duration::from_secs(2),
        ..FetchLimits::default()
    }
}

/// Asserts `report` is a failed fetch whose error says `reason`.
#[track_caller]
pub fn assert_refused(report: &FetchReport, reason: &str) {
    assert!(!report.ok, "expected a refusal for {reason:?}: {report:?}");
    let error = report.error.as_deref().unwrap_or_default();
    assert!(error.contains(reason), "{reason:?} in: {report:?}");
}
