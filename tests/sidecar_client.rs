//! The sidecar's Workload API client against a scripted Workload API server (the generated
//! tonic server on a real Unix socket): the security header on every call, messages published
//! only after validation, a bad message skipped with the stream kept up, reconnection after the
//! stream ends, and a stop on InvalidArgument (SPIFFE.md §3.4, 1.6.3, 1.6.7, 1.7.5).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use meshtrust::bundle::pem::certs_to_der_concat;
use meshtrust::ca::Ca;
use meshtrust::clock::SystemClock;
use meshtrust::sidecar::{ClientError, Reporter, X509Watcher};
use meshtrust::spiffe_id::SpiffeId;
use meshtrust::workload_api::proto::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use meshtrust::workload_api::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::net::UnixListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

type Item = Result<X509svidResponse, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What one FetchX509SVID call gets: an immediate error, or these items and then either the
/// end of the stream or a stream held open.
enum Call {
    Fail(Status),
    Stream { items: Vec<Item>, hold: bool },
}

#[derive(Default)]
struct Script {
    calls: Mutex<VecDeque<Call>>,
    seen: Mutex<Vec<bool>>,
}

struct ScriptedApi(Arc<Script>);

#[tonic::async_trait]
impl SpiffeWorkloadApi for ScriptedApi {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = BoxStream<WitsvidResponse>;
    type FetchWITBundlesStream = BoxStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let header = request
            .metadata()
            .get("workload.spiffe.io")
            .is_some_and(|v| v == "true");
        self.0.seen.lock().unwrap().push(header);
        if !header {
            return Err(Status::invalid_argument("security header missing"));
        }
        let call = self.0.calls.lock().unwrap().pop_front();
        match call {
            None => Err(Status::unavailable("script exhausted")),
            Some(Call::Fail(status)) => Err(status),
            Some(Call::Stream { items, hold }) => {
                let items = tokio_stream::iter(items);
                if hold {
                    Ok(Response::new(Box::pin(
                        items.chain(tokio_stream::pending()),
                    )))
                } else {
                    Ok(Response::new(Box::pin(items)))
                }
            }
        }
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("test service"))
    }
}

fn spawn_server(dir: &Path, script: Arc<Script>) -> PathBuf {
    let path = dir.join("workload.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(ScriptedApi(script)))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    path
}

fn ca(dir: &Path) -> Ca {
    common::workload::open_ca(
        common::workload::storage(dir),
        "mesh-a.test",
        Arc::new(SystemClock),
        common::workload::HOUR,
    )
}

fn message(ca: &Ca, path: &str) -> X509svidResponse {
    let snap = ca.snapshot();
    let id = SpiffeId::new(format!("spiffe://mesh-a.test{path}")).unwrap();
    let svid = snap.issue_x509_svid(&id, SystemTime::now()).unwrap();
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: id.to_string(),
            x509_svid: certs_to_der_concat(&svid.cert_chain),
            x509_svid_key: svid.private_key.pkcs8_der().to_vec(),
            bundle: certs_to_der_concat(&snap.bundle.x509_authorities),
            hint: String::new(),
        }],
        ..Default::default()
    }
}

fn collecting_reporter() -> (Reporter, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reporter = Reporter::new(move |l| sink.lock().unwrap().push(l.to_owned()));
    (reporter, lines)
}

#[tokio::test]
async fn bad_messages_are_skipped_and_a_closed_stream_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&dir.path().join("ca"));
    let mut broken = message(&ca, "/second");
    broken.svids[0].x509_svid_key = message(&ca, "/second").svids[0].x509_svid_key.clone();
    let script = Arc::new(Script::default());
    script.calls.lock().unwrap().extend([
        // First stream: a good message, a message whose key is another SVID's (dropped,
        // WAPI 1.7.5), then the server closes the stream.
        Call::Stream {
            items: vec![Ok(message(&ca, "/first")), Ok(broken)],
            hold: false,
        },
        // Retried (Workload Endpoint 1.6.7): PermissionDenied and Unavailable are transient.
        Call::Fail(Status::permission_denied("no identity issued")),
        Call::Stream {
            items: vec![Ok(message(&ca, "/third"))],
            hold: true,
        },
    ]);
    let socket = spawn_server(dir.path(), script.clone());
    let (reporter, lines) = collecting_reporter();
    let cancel = CancellationToken::new();
    let mut watcher = X509Watcher::spawn(socket, reporter, cancel.clone());

    let first = watcher.first().await.unwrap();
    assert_eq!(first.svid.spiffe_id.as_str(), "spiffe://mesh-a.test/first");
    let mut rx = watcher.subscribe();
    let third = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|c| {
            c.as_ref()
                .is_some_and(|c| c.svid.spiffe_id.path() != "/first")
        }),
    )
    .await
    .expect("hang guard")
    .unwrap()
    .clone()
    .unwrap();
    // The broken message never replaced the good one: the next published context is /third.
    assert_eq!(third.svid.spiffe_id.as_str(), "spiffe://mesh-a.test/third");
    // Every call carried the security header (Workload Endpoint 1.6.3).
    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(seen, [true, true, true]);
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.starts_with("svid update dropped:")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("retrying in 1s")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("retrying in 2s")),
        "{lines:?}"
    );
    cancel.cancel();
    watcher.stopped().await.unwrap();
}

#[tokio::test]
async fn invalid_argument_stops_the_watcher_with_an_error() {
    // Workload Endpoint 1.6.7: InvalidArgument means "report, don't retry".
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Script::default());
    script
        .calls
        .lock()
        .unwrap()
        .push_back(Call::Fail(Status::invalid_argument("bad request")));
    let socket = spawn_server(dir.path(), script.clone());
    let (reporter, _lines) = collecting_reporter();
    let mut watcher = X509Watcher::spawn(socket, reporter, CancellationToken::new());
    let err = tokio::time::timeout(Duration::from_secs(30), watcher.first())
        .await
        .expect("hang guard")
        .unwrap_err();
    assert_eq!(err, ClientError::InvalidArgument("bad request".into()));
    assert_eq!(script.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_absent_socket_is_retried_until_the_server_appears() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&dir.path().join("ca"));
    let socket = dir.path().join("workload.sock");
    let (reporter, lines) = collecting_reporter();
    let mut watcher = X509Watcher::spawn(socket.clone(), reporter, CancellationToken::new());
    let waiting = lines.clone();
    tokio::time::timeout(Duration::from_secs(30), async {
        while waiting.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("hang guard");
    let script = Arc::new(Script::default());
    script.calls.lock().unwrap().push_back(Call::Stream {
        items: vec![Ok(message(&ca, "/late"))],
        hold: true,
    });
    spawn_server(dir.path(), script);
    let ctx = tokio::time::timeout(Duration::from_secs(30), watcher.first())
        .await
        .expect("hang guard")
        .unwrap();
    assert_eq!(ctx.svid.spiffe_id.as_str(), "spiffe://mesh-a.test/late");
    assert!(lines.lock().unwrap()[0].contains("cannot connect"));
}
