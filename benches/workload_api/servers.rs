//! The two servers the client side measures, each run as a child process of this bench (so
//! that its RSS is its own): the real daemon (`--role daemon`), and the no-op baseline
//! (`--role noop`): the same generated tonic server answering from prebuilt messages with no
//! attestation, no issuance and no state. Both read commands on stdin: `pin` (a new bundle for
//! peer0.test: `PeerStore::pin` in the daemon, a watch channel in the baseline) and `quit`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt as _, stream};
use meshtrust::app::{Daemon, DaemonOptions};
use meshtrust::bundle::jwks;
use meshtrust::ca::{Ca, CaPolicy, KeyType};
use meshtrust::clock::{Clock as _, SystemClock};
use meshtrust::config::Config;
use meshtrust::spiffe_id::{SpiffeId, TrustDomain};
use meshtrust::store::sqlite::SqliteStorage;
use meshtrust::workload_api::proto::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use meshtrust::workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::sync::watch;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};

use crate::common::fixtures::peer_bundle_json;

pub const PEER: &str = "peer0.test";

/// A new bundle for peer0.test with a fresh CA; `sequence` rises with every change.
pub fn peer_bundle(sequence: u64) -> meshtrust::bundle::TrustBundle {
    let json = peer_bundle_json(PEER, sequence, Duration::from_secs(3600));
    jwks::parse(&TrustDomain::new(PEER).unwrap(), &json)
        .unwrap()
        .bundle
}

/// Lines on stdin until EOF (read on a thread: tokio's `io-std` is not enabled).
async fn commands(mut on_pin: impl FnMut(u64)) {
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut sequence = 100;
    while let Some(line) = lines.recv().await {
        match line.trim() {
            "pin" => {
                sequence += 1;
                on_pin(sequence);
                println!("pinned {sequence}");
            }
            "quit" => break,
            _ => {}
        }
    }
}

/// `--role daemon --config FILE`: the real daemon, in this process.
pub async fn daemon(config: PathBuf) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .try_init();
    let config = Config::load(&config).unwrap();
    let socket = config.workload_api.socket.clone();
    let daemon = Daemon::start_with(config, Arc::new(SystemClock), DaemonOptions::default())
        .await
        .unwrap();
    // The first fetch pins peer0.test (sequence 1) from the bench's test server.
    let td = TrustDomain::new(PEER).unwrap();
    for _ in 0..3000 {
        if daemon.peers.get(&td).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(daemon.peers.get(&td).is_some(), "peer0.test never pinned");
    println!("ready {}", socket.display());
    let peers = daemon.peers.clone();
    commands(|sequence| {
        peers.pin(peer_bundle(sequence), SystemTime::now()).unwrap();
    })
    .await;
    daemon.shutdown().await;
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The no-op baseline: prebuilt messages, a watch channel for bundle changes.
#[derive(Debug)]
struct Noop {
    svid: X509svidResponse,
    bundles: watch::Receiver<Arc<X509BundlesResponse>>,
}

fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument("security header missing")),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Noop {
    type FetchX509SVIDStream = Boxed<X509svidResponse>;
    type FetchX509BundlesStream = Boxed<X509BundlesResponse>;
    type FetchJWTBundlesStream = Boxed<JwtBundlesResponse>;
    type FetchWITSVIDStream = Boxed<WitsvidResponse>;
    type FetchWITBundlesStream = Boxed<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        // Like a real server: one message now, then the stream stays open.
        let first = stream::once(std::future::ready(Ok(self.svid.clone())));
        Ok(Response::new(Box::pin(first.chain(stream::pending()))))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        let updates = WatchStream::new(self.bundles.clone()).map(|b| Ok((*b).clone()));
        Ok(Response::new(Box::pin(updates)))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

fn bundles_response(own: &[u8], peer: &meshtrust::bundle::TrustBundle) -> X509BundlesResponse {
    let mut r = X509BundlesResponse::default();
    r.bundles
        .insert("spiffe://bench.test".to_owned(), own.to_vec());
    r.bundles.insert(
        format!("spiffe://{PEER}"),
        peer.x509_authorities
            .iter()
            .flat_map(|c| c.to_vec())
            .collect(),
    );
    r
}

/// `--role noop --socket PATH`: the baseline server, with messages of the daemon's sizes.
pub async fn noop(socket: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::open(
        TrustDomain::new("bench.test").unwrap(),
        CaPolicy {
            key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            refresh_hint: Duration::from_secs(300),
        },
        Arc::new(SystemClock),
        Arc::new(SqliteStorage::open(dir.path()).unwrap()),
    )
    .unwrap();
    let snap = ca.snapshot();
    let id = SpiffeId::new("spiffe://bench.test/bench/workload").unwrap();
    let svid = snap.issue_x509_svid(&id, SystemClock.now()).unwrap();
    let own: Vec<u8> = snap
        .bundle
        .x509_authorities
        .iter()
        .flat_map(|c| c.to_vec())
        .collect();
    let peer = peer_bundle(1);
    let bundles = bundles_response(&own, &peer);
    let svid = X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: id.to_string(),
            x509_svid: svid.cert_chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: svid.private_key.pkcs8_der().to_vec(),
            bundle: own.clone(),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: bundles
            .bundles
            .iter()
            .filter(|(k, _)| k.contains(PEER))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let (tx, rx) = watch::channel(Arc::new(bundles));
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(Noop { svid, bundles: rx }))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    println!("ready {}", socket.display());
    commands(|sequence| {
        tx.send_replace(Arc::new(bundles_response(&own, &peer_bundle(sequence))));
    })
    .await;
}
