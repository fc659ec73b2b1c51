//! One local HTTPS server standing in for many federation peers: `GET /peer/N` answers peer N's
//! bundle document. TLS with the bench's Web PKI leaf (so peers are `https_web` with `ca_file`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::fixtures::WebCert;

/// What the server counted.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
}

/// Serves `bundles[N]` at `/peer/N` on 127.0.0.1 until the runtime ends; returns the address.
pub async fn spawn(cert: &WebCert, bundles: Vec<Bytes>) -> (SocketAddr, Arc<Counters>) {
    spawn_shared(cert, Arc::new(RwLock::new(bundles))).await
}

/// [`spawn`] on documents the bench may replace while it serves them (a peer's bundle change).
pub async fn spawn_shared(
    cert: &WebCert,
    bundles: Arc<RwLock<Vec<Bytes>>>,
) -> (SocketAddr, Arc<Counters>) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert_pem)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&cert.key_pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            c.connections.fetch_add(1, Ordering::Relaxed);
            let (acceptor, bundles, c) = (acceptor.clone(), bundles.clone(), c.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    c.requests.fetch_add(1, Ordering::Relaxed);
                    let body = req
                        .uri()
                        .path()
                        .strip_prefix("/peer/")
                        .and_then(|n| n.parse::<usize>().ok())
                        .and_then(|n| bundles.read().unwrap().get(n).cloned());
                    let resp = match body {
                        Some(b) => Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(b)),
                        None => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::new())),
                    };
                    async move { resp }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, counters)
}
