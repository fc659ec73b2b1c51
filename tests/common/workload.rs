//! A Workload API under test: our CA (`mesh-a.test`) and two peer CAs (`mesh-b.test`,
//! `mesh-c.test`) on SQLite in temp dirs, the peers' bundles pinned in a real `PeerStore`, and
//! `serve` on a Unix socket in a temp dir. Clients: the `spiffe` crate and our generated client.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshtrust::ca::{Ca, CaPolicy, KeyType};
use meshtrust::clock::{Clock, ManualClock};
use meshtrust::config::{EntryConfig, FederatesWith, Selector};
use meshtrust::federation::pinned::PeerStore;
use meshtrust::spiffe_id::{SpiffeId, TrustDomain};
use meshtrust::store::Storage;
use meshtrust::store::sqlite::SqliteStorage;
use meshtrust::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshtrust::workload_api::{WorkloadApiDeps, bind, serve};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const HOUR: Duration = Duration::from_secs(3600);

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

pub fn policy(x509_svid_ttl: Duration) -> CaPolicy {
    CaPolicy {
        key_type: KeyType::EcP256,
        ca_ttl: 24 * HOUR,
        x509_svid_ttl,
        jwt_svid_ttl: Duration::from_secs(300),
        refresh_hint: Duration::from_secs(300),
    }
}

pub fn storage(dir: &Path) -> Arc<dyn Storage> {
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(SqliteStorage::open(dir).unwrap())
}

pub fn open_ca(storage: Arc<dyn Storage>, name: &str, clock: Arc<dyn Clock>, ttl: Duration) -> Ca {
    Ca::open(td(name), policy(ttl), clock, storage).unwrap()
}

/// This test process's executable as the kernel reports it (what `unix:path` compares).
pub fn own_exe() -> PathBuf {
    std::fs::read_link("/proc/self/exe").unwrap()
}

/// This test process's uid (root in CI, anyone elsewhere): what attestation sees for it.
pub fn own_uid_selector() -> Selector {
    Selector::Uid(super::own_uid())
}

pub fn entry(spiffe_id: &str, selectors: Vec<Selector>, fw: &[&str], hint: &str) -> EntryConfig {
    EntryConfig {
        spiffe_id: id(spiffe_id),
        selectors,
        federates_with: if fw == ["*"] {
            FederatesWith::All
        } else {
            FederatesWith::Only(fw.iter().map(|t| td(t)).collect())
        },
        hint: (!hint.is_empty()).then(|| hint.to_owned()),
        node: None,
    }
}

/// The usual registrations of the test process (its own uid): `first` (default, federates with
/// mesh-b) and `second` (also needs the test binary's path, federates with nobody).
pub fn default_entries() -> Vec<EntryConfig> {
    vec![
        entry(
            "spiffe://mesh-a.test/workload/first",
            vec![own_uid_selector()],
            &["mesh-b.test"],
            "first",
        ),
        entry(
            "spiffe://mesh-a.test/workload/second",
            vec![own_uid_selector(), Selector::Path(own_exe())],
            &[],
            "second",
        ),
        entry(
            "spiffe://mesh-a.test/workload/other-user",
            vec![Selector::Uid(4242)],
            &["*"],
            "",
        ),
    ]
}

pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Drives our CA when the mesh was started with a manual clock.
    pub clock: Option<Arc<ManualClock>>,
    pub ca: Arc<Ca>,
    pub peers: Arc<PeerStore>,
    pub peer_b: Ca,
    pub peer_b_clock: Arc<ManualClock>,
    pub peer_c: Ca,
    pub peer_c_clock: Arc<ManualClock>,
    pub entries: watch::Sender<Arc<Vec<EntryConfig>>>,
    pub cancel: CancellationToken,
    pub server: tokio::task::JoinHandle<()>,
}

impl Mesh {
    /// Our CA on a manual clock set to now, 1 h X509-SVIDs.
    pub async fn start(entries: Vec<EntryConfig>) -> Self {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        Self::start_with(clock.clone(), Some(clock), HOUR, entries).await
    }

    pub async fn start_with(
        clock: Arc<dyn Clock>,
        manual: Option<Arc<ManualClock>>,
        x509_svid_ttl: Duration,
        entries: Vec<EntryConfig>,
    ) -> Self {
        super::init();
        let dir = tempfile::tempdir().unwrap();
        // Other uids (setpriv tests) must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let own = storage(&dir.path().join("a"));
        let ca = Arc::new(open_ca(
            own.clone(),
            "mesh-a.test",
            clock.clone(),
            x509_svid_ttl,
        ));
        // A peer's CA in `dir/<sub>`, on a manual clock of its own.
        let peer = |sub: &str, td: &str| {
            let clock = Arc::new(ManualClock::new(SystemTime::now()));
            let ca = open_ca(storage(&dir.path().join(sub)), td, clock.clone(), HOUR);
            (ca, clock)
        };
        let (peer_b, peer_b_clock) = peer("b", "mesh-b.test");
        let (peer_c, peer_c_clock) = peer("c", "mesh-c.test");
        let peers =
            Arc::new(PeerStore::open(own, vec![td("mesh-b.test"), td("mesh-c.test")]).unwrap());
        for peer in [&peer_b, &peer_c] {
            peers
                .pin((*peer.snapshot().bundle).clone(), SystemTime::now())
                .unwrap();
        }
        let (entries_tx, entries_rx) = watch::channel(Arc::new(entries));
        let deps = WorkloadApiDeps {
            own: ca.subscribe().into(),
            peers: peers.subscribe().into(),
            entries: entries_rx,
            clock,
        };
        let socket = dir.path().join("sock").join("workload.sock");
        let listener = bind(&socket).unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, deps, cancel.clone()));
        Self {
            dir,
            socket,
            clock: manual,
            ca,
            peers,
            peer_b,
            peer_b_clock,
            peer_c,
            peer_c_clock,
            entries: entries_tx,
            cancel,
            server,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub async fn spiffe_client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.endpoint())
            .await
            .unwrap()
    }

    /// Our generated client; add the header per request with [`with_header`].
    pub async fn raw_client(&self) -> SpiffeWorkloadApiClient<Channel> {
        super::grpc::workload_client(&self.socket).await
    }

    /// A FetchX509SVID stream of this process on a connection of its own.
    pub async fn x509svid_stream(
        &self,
    ) -> tonic::Streaming<meshtrust::workload_api::proto::X509svidResponse> {
        super::grpc::x509_svids(&self.socket).await
    }

    /// Rotates peer mesh-b's CA one step (a prepared authority joins its bundle) and pins the
    /// new bundle, as the federation fetcher would.
    pub fn rotate_peer_b(&self) {
        self.rotate(&self.peer_b, &self.peer_b_clock);
    }

    /// The same for peer mesh-c.
    pub fn rotate_peer_c(&self) {
        self.rotate(&self.peer_c, &self.peer_c_clock);
    }

    fn rotate(&self, peer: &Ca, clock: &ManualClock) {
        clock.advance(12 * HOUR + Duration::from_secs(1));
        assert!(peer.tick().unwrap());
        let bundle = (*peer.snapshot().bundle).clone();
        self.peers.pin(bundle, SystemTime::now()).unwrap();
    }

    /// Replaces the registration entries (a config reload).
    pub fn set_entries(&self, entries: Vec<EntryConfig>) {
        self.entries.send_replace(Arc::new(entries));
    }

    pub fn own_ca_certs(&self) -> Vec<Vec<u8>> {
        der_list(&self.ca.snapshot().bundle.x509_authorities)
    }

    pub fn peer_b_certs(&self) -> Vec<Vec<u8>> {
        der_list(&self.peer_b.snapshot().bundle.x509_authorities)
    }
}

pub fn der_list(certs: &[rustls_pki_types::CertificateDer<'_>]) -> Vec<Vec<u8>> {
    certs.iter().map(|c| c.to_vec()).collect()
}

#[allow(unused_imports)]
pub use super::grpc::{
    next as next_msg, open_jwt_bundles, open_x509_bundles, open_x509svid, with_header,
};
#[allow(unused_imports)]
pub use super::{GUARD, guard};
