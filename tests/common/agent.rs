//! The agent API from the outside, as an agent (or an attacker) sees it: a tonic client from
//! `meshtrust::agent_api::proto` over rustls, authenticating the server as
//! `spiffe://<td>/meshtrust/server` against the server's bundle (`meshtrust bundle show`),
//! with or without a client certificate; keys and CSRs made here (keys stay with the caller).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use meshtrust::agent_api::proto::agent_api_client::AgentApiClient;
use meshtrust::agent_api::proto::{
    AgentSvid, AttestRequest, AttestResponse, JoinToken, attest_request, attest_response,
};
use meshtrust::federation::verifier::{EndpointRoots, OwnRoots, SpiffeEndpointVerifier};
use meshtrust::spiffe_id::SpiffeId;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::Channel;

/// The generated client.
pub type Client = AgentApiClient<Channel>;

/// What a client presents: its chain and key.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<KeyPair>,
}

impl Identity {
    /// The identity an attestation answered: `svid`'s chain with the `key` its CSR was made of.
    pub fn of(svid: &AgentSvid, key: Arc<KeyPair>) -> Self {
        Self {
            chain: svid
                .cert_chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect(),
            key,
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The client TLS config: the server must be `spiffe://<td>/meshtrust/server` under `roots`.
pub fn tls_config(
    td: &str,
    roots: Vec<CertificateDer<'static>>,
    identity: Option<&Identity>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_id = SpiffeId::new(format!("spiffe://{td}/meshtrust/server")).unwrap();
    let roots = EndpointRoots::Own(OwnRoots::new(super::td(td), move || roots.clone()));
    let verifier = Arc::new(SpiffeEndpointVerifier::new(
        server_id,
        roots,
        provider.clone(),
    ));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.serialize_der()));
            builder
                .with_client_auth_cert(id.chain.clone(), key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A client of the agent API at `addr` with `tls`.
pub async fn connect_with(addr: SocketAddr, tls: rustls::ClientConfig) -> Client {
    let connector = TlsConnector::from(Arc::new(tls));
    let endpoint = tonic::transport::Endpoint::from_static("http://agent-api.invalid");
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("agent-api.invalid").unwrap();
            connector.connect(name, tcp).await.map(TokioIo::new)
        }
    }));
    AgentApiClient::new(super::guard(connect).await.unwrap())
}

/// A client of the agent API at `addr`, trusting `roots`, presenting `identity` if any.
pub async fn connect(
    addr: SocketAddr,
    td: &str,
    roots: &[CertificateDer<'static>],
    identity: Option<&Identity>,
) -> Client {
    connect_with(addr, tls_config(td, roots.to_vec(), identity)).await
}

/// A new P-256 key.
pub fn new_key() -> Arc<KeyPair> {
    Arc::new(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap())
}

/// A DER CSR for `key`, asking for `uri` if given.
pub fn csr(key: &KeyPair, uri: Option<&str>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    }
    params.serialize_request(key).unwrap().der().to_vec()
}

/// One Attest call with `first` as the only message: its first answer (or status).
pub async fn attest_once(
    client: &mut Client,
    first: AttestRequest,
) -> Result<AttestResponse, tonic::Status> {
    let mut answers = client.attest(tokio_stream::once(first)).await?.into_inner();
    match super::guard(answers.message()).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(tonic::Status::unknown(
            "attest stream ended without an answer",
        )),
        Err(s) => Err(s),
    }
}

/// Join-token attestation of a new key: the identity to call with, and the SVID message.
pub async fn attest_join_token(
    client: &mut Client,
    token: &str,
) -> Result<(Identity, AgentSvid), tonic::Status> {
    let key = new_key();
    let request = AttestRequest {
        step: Some(attest_request::Step::JoinToken(JoinToken {
            token: token.to_owned(),
        })),
        csr: csr(&key, None),
    };
    let answer = attest_once(client, request).await?;
    let Some(attest_response::Step::Svid(svid)) = answer.step else {
        panic!("expected an svid, got {answer:?}");
    };
    Ok((Identity::of(&svid, key), svid))
}

/// `meshtrust token create --node NODE --json` on `admin_socket`: the token.
pub async fn create_token(admin_socket: &Path, node: &str, ttl: &str) -> String {
    let out = super::cli_async(&[
        "token",
        "create",
        "--node",
        node,
        "--ttl",
        ttl,
        "--json",
        "--admin-socket",
        admin_socket.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// The URI SAN of a DER certificate.
pub fn uri_of(cert: &[u8]) -> String {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .unwrap()
}

/// The agent API address a server logged.
pub async fn agent_api_addr(server: &super::daemon::Proc) -> SocketAddr {
    server
        .logged_addr("agent api listening")
        .await
        .parse()
        .unwrap()
}

/// The trust domain of [`api_server`].
pub const TD: &str = "mesh-a.test";

/// The config of [`api_server`], without starting anything.
pub fn api_config(extra: &str) -> super::config::DaemonConfig {
    api_config_with("", extra)
}

/// [`api_config`] with `agent_api` lines (limits) in `[agent_api]`.
pub fn api_config_with(agent_api: &str, extra: &str) -> super::config::DaemonConfig {
    use super::node_agent::node_entry;
    super::config::DaemonConfig::new(TD)
        .metrics()
        .section(&format!(
            "[agent_api]\nlisten = \"127.0.0.1:0\"\n{agent_api}"
        ))
        .section(&node_entry("spiffe://mesh-a.test/web", "web-1"))
        .section(&node_entry("spiffe://mesh-a.test/db", "db-1"))
        .section(&node_entry("spiffe://mesh-a.test/log", "*"))
        .section(extra)
}

/// A real `meshtrust serve` of [`TD`] for tests that speak the agent API themselves: `[agent_api]`
/// on an ephemeral port, metrics, and entries `web` (node web-1), `db` (db-1) and `log` (every
/// node), plus `extra` sections.
pub async fn api_server(extra: &str) -> super::node_agent::ServerProc {
    super::node_agent::ServerProc::launch(&api_config(extra)).await
}
