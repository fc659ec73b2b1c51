//! Test fixtures: real CAs (`meshtrust::ca::Ca` on SQLite in a temp dir) for several trust
//! domains, and Workload API messages built from what they issue.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use super::client::ContextRx;
use super::context::X509Context;
use crate::bundle::pem::certs_to_der_concat;
use crate::ca::{Ca, CaPolicy, KeyType};
use crate::clock::SystemClock;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::sqlite::SqliteStorage;
use crate::svid::X509Svid;
use crate::workload_api::proto::{X509svid, X509svidResponse};

/// One trust domain's CA with its state folder.
pub(crate) struct TestCa {
    pub ca: Ca,
    pub td: TrustDomain,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(td: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new(td).unwrap();
        let policy = CaPolicy {
            key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            refresh_hint: Duration::from_secs(300),
        };
        let storage = Arc::new(SqliteStorage::open(dir.path()).unwrap());
        let ca = Ca::open(td.clone(), policy, Arc::new(SystemClock), storage).unwrap();
        Self { ca, td, _dir: dir }
    }

    /// An SVID for `spiffe://<td><path>`.
    pub fn issue(&self, path: &str) -> X509Svid {
        self.issue_id(&SpiffeId::from_path(&self.td, path).unwrap())
    }

    /// An SVID for any ID, signed by this CA (even an ID of another trust domain: a forgery).
    pub fn issue_id(&self, id: &SpiffeId) -> X509Svid {
        let snap = self.ca.snapshot();
        let active = snap.active().unwrap();
        active
            .issue_x509_svid(id, Duration::from_secs(3600), SystemTime::now())
            .unwrap()
    }

    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.ca.snapshot().bundle.x509_authorities.clone()
    }
}

/// A FetchX509SVID message: `svid` with `own` as its bundle, plus federated bundles keyed
/// `spiffe://td` as the Workload API sends them.
pub(crate) fn response(
    svid: &X509Svid,
    own: &[CertificateDer<'_>],
    federated: &[(&TestCa, Vec<CertificateDer<'static>>)],
) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: svid.spiffe_id.to_string(),
            x509_svid: certs_to_der_concat(&svid.cert_chain),
            x509_svid_key: svid.private_key.pkcs8_der().to_vec(),
            bundle: certs_to_der_concat(own),
            hint: String::new(),
        }],
        federated_bundles: federated
            .iter()
            .map(|(ca, certs)| (ca.td.id_string(), certs_to_der_concat(certs)))
            .collect(),
        ..Default::default()
    }
}

/// A context for `path` in `ca`'s trust domain that federates with `peers`.
pub(crate) fn context(ca: &TestCa, path: &str, peers: &[&TestCa]) -> X509Context {
    let svid = ca.issue(path);
    let federated: Vec<_> = peers.iter().map(|p| (*p, p.bundle())).collect();
    X509Context::from_response(response(&svid, &ca.bundle(), &federated), SystemTime::now())
        .unwrap()
}

/// A watch channel holding `ctx`, as the watcher publishes it.
pub(crate) fn channel(ctx: X509Context) -> (watch::Sender<Option<Arc<X509Context>>>, ContextRx) {
    watch::channel(Some(Arc::new(ctx)))
}

/// ring as the process default (rustls picks it anyway when it is the only provider).
pub(crate) fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
