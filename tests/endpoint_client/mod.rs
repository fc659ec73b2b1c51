//! A small HTTPS client for the bundle endpoint tests: real rustls and hyper connections that
//! expose what the server presented (leaf certificate, TLS version, ALPN).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod fixture;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtrust::clock::Clock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{
    ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[allow(unused_imports)]
pub use crate::common::GUARD;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[allow(unused_imports)]
pub use crate::common::uri_sans;

/// The https_spiffe check of SPIFFE.md §2 "Consuming": the chain verifies against `roots` at
/// the test clock's time (no host name check), and the leaf's ID is exactly `id`.
#[derive(Debug)]
pub struct SvidVerifier {
    roots: RootCertStore,
    id: String,
    clock: Arc<dyn Clock>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let since = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            UnixTime::since_unix_epoch(since),
            self.provider.signature_verification_algorithms.all,
        )?;
        if uri_sans(end_entity) != [self.id.clone()] {
            return Err(rustls::Error::General("unexpected spiffe id".into()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

static TLS12_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];

fn versions(tls12_only: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12_only {
        &TLS12_ONLY
    } else {
        rustls::DEFAULT_VERSIONS
    }
}

/// A client config for an https_spiffe endpoint `id` trusting `roots` (DER).
pub fn spiffe_client(
    roots: &[CertificateDer<'static>],
    id: &str,
    clock: Arc<dyn Clock>,
    alpn: &[&[u8]],
    tls12_only: bool,
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let verifier = SvidVerifier {
        roots: store,
        id: id.to_owned(),
        clock,
        provider: provider(),
    };
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls12_only))
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session reports the certificate of the
    // session it resumes, not the one the server presents now.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// A Web PKI client config trusting `roots`.
pub fn web_client(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session reports the certificate of the
    // session it resumes, not the one the server presents now.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// One open HTTPS connection; dropping it closes the socket.
pub struct Conn {
    sender: Sender,
    task: tokio::task::JoinHandle<()>,
    /// The leaf the server presented.
    pub leaf: CertificateDer<'static>,
    /// The negotiated TLS version.
    pub tls_version: ProtocolVersion,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response, body collected.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
}

/// Connects (TLS, then HTTP/2 if ALPN chose `h2`, else HTTP/1.1).
pub async fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>, name: &str) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned())?;
    let tls = TlsConnector::from(cfg).connect(name, tcp).await?;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?
        .clone()
        .into_owned();
    let tls_version = session.protocol_version().context("no version")?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let (sender, task) = if alpn.as_deref() == Some(b"h2") {
        let (s, c) = http2::handshake(TokioExecutor::new(), io).await?;
        (Sender::H2(s), tokio::spawn(async move { drop(c.await) }))
    } else {
        let (s, c) = http1::handshake(io).await?;
        (Sender::H1(s), tokio::spawn(async move { drop(c.await) }))
    };
    Ok(Conn {
        sender,
        task,
        leaf,
        tls_version,
        alpn,
    })
}

impl Conn {
    /// Sends `method path` and collects the answer.
    pub async fn send(&mut self, method: Method, path: &str) -> anyhow::Result<Answer> {
        let res = match &mut self.sender {
            Sender::H1(s) => {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "localhost")
                    .body(Empty::new())?;
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let req = Request::builder()
                    .method(method)
                    .uri(format!("https://localhost{path}"))
                    .version(Version::HTTP_2)
                    .body(Empty::new())?;
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = res.status();
        let version = res.version();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
            version,
        })
    }
}

/// Connects and GETs `/` once.
pub async fn get(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    name: &str,
) -> anyhow::Result<(Conn, Answer)> {
    let mut conn = connect(addr, cfg, name).await?;
    let answer = conn.send(Method::GET, "/").await?;
    if answer.status != StatusCode::OK {
        bail!("status {}", answer.status);
    }
    Ok((conn, answer))
}

#[allow(unused_imports)]
pub use crate::common::eventually_some as eventually;
