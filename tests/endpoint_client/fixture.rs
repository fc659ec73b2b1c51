//! The https_spiffe test fixture: a CA on SQLite state in a temp dir, a manual clock, and a
//! running bundle endpoint.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshtrust::ca::{Ca, CaPolicy, KeyType};
use meshtrust::clock::ManualClock;
use meshtrust::config::EndpointProfile;
use meshtrust::federation::endpoint::{self, EndpointError, ServeOptions};
use meshtrust::federation::server_tls::{ServerCerts, renew_svid};
use meshtrust::spiffe_id::{SpiffeId, TrustDomain};
use meshtrust::store::Storage;
use meshtrust::store::sqlite::SqliteStorage;
use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::spiffe_client;

pub const HOUR: Duration = Duration::from_secs(3600);
pub const ID: &str = "spiffe://mesh-a.test/meshtrust/server";
pub const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
pub const H1: &[&[u8]] = &[b"http/1.1"];

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub ca: Arc<Ca>,
    pub addr: SocketAddr,
    pub certs: Arc<ServerCerts>,
    pub cancel: CancellationToken,
    pub server: JoinHandle<Result<(), EndpointError>>,
}

impl Fixture {
    /// A client that accepts exactly our endpoint ID under `roots`.
    pub fn client(
        &self,
        roots: &[CertificateDer<'static>],
        alpn: &[&[u8]],
        tls12_only: bool,
    ) -> Arc<rustls::ClientConfig> {
        spiffe_client(roots, ID, self.clock.clone(), alpn, tls12_only)
    }

    /// A client trusting the whole published bundle.
    pub fn bundle_client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        self.client(&self.ca.snapshot().bundle.x509_authorities, alpn, false)
    }
}

/// How the endpoint gets its certificate.
#[derive(Clone, Copy, PartialEq)]
pub enum Certs {
    /// `ServerCerts::start`, as the daemon does.
    Start,
    /// `renew_svid` re-reading the manual clock every 50 ms.
    Renew,
    /// None at all.
    Nothing,
}

/// A CA on SQLite state in a temp dir, with a manual clock at the real time (so openssl, which
/// checks validity against the real clock, accepts the first SVID), and a running endpoint.
pub async fn start(options: ServeOptions, how: Certs) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
    let clock = Arc::new(ManualClock::new(now));
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir.path()).unwrap());
    let policy = CaPolicy {
        key_type: KeyType::EcP256,
        ca_ttl: 24 * HOUR,
        x509_svid_ttl: HOUR,
        jwt_svid_ttl: Duration::from_secs(300),
        refresh_hint: Duration::from_secs(300),
    };
    let ca = Arc::new(
        Ca::open(
            TrustDomain::new("mesh-a.test").unwrap(),
            policy,
            clock.clone(),
            storage,
        )
        .unwrap(),
    );
    let cancel = CancellationToken::new();
    let id = SpiffeId::new(ID).unwrap();
    let certs = match how {
        Certs::Start => {
            let profile = EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: id,
            };
            let (certs, task) =
                ServerCerts::start(&profile, ca.subscribe(), clock.clone(), cancel.clone())
                    .unwrap();
            tokio::spawn(task);
            certs
        }
        Certs::Renew => {
            let certs = Arc::new(ServerCerts::new(clock.clone()));
            let recheck = Duration::from_millis(50);
            let task = renew_svid(certs.clone(), ca.subscribe(), id, recheck, cancel.clone());
            tokio::spawn(task);
            certs
        }
        Certs::Nothing => Arc::new(ServerCerts::new(clock.clone())),
    };
    let listener = meshtrust::listen::tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(endpoint::serve_with(
        listener,
        ca.subscribe(),
        certs.clone(),
        options,
        cancel.clone(),
    ));
    Fixture {
        _dir: dir,
        clock,
        ca,
        addr,
        certs,
        cancel,
        server,
    }
}

pub fn sequence(body: &[u8]) -> u64 {
    let td = TrustDomain::new("mesh-a.test").unwrap();
    let parsed = meshtrust::bundle::jwks::parse(&td, body).unwrap();
    assert_eq!(parsed.bundle.refresh_hint, Some(Duration::from_secs(300)));
    parsed.bundle.sequence.unwrap()
}
