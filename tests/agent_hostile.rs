//! The agent against servers that misbehave, each answer refused, logged and counted, the
//! workloads served nothing false: a server that accepts TCP and says nothing (the agent moves
//! on to the next one after its connect timeout), and an agent API that presents a valid
//! server SVID but sends a view of another trust domain, or workload certificates for another
//! ID than asked (an in-test tonic server over rustls, with its own CA as `server_bundle`).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use meshtrust::agent_api::proto::agent_api_server::{AgentApi, AgentApiServer};
use meshtrust::agent_api::proto::{
    AgentSvid, AttestRequest, AttestResponse, Bundle, Entry, MintJwtSvidsRequest,
    MintJwtSvidsResponse, NodeView, RenewAgentRequest, SignWorkloadsRequest, SignWorkloadsResponse,
    SignedSvid, SyncRequest, attest_response,
};
use meshtrust::bundle::{TrustBundle, jwks};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use common::node_agent::{self, AgentConfig};

const TD: &str = "mesh-a.test";
const WEB: &str = "spiffe://mesh-a.test/web";

/// How the fake server lies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Its node view's own bundle is another trust domain's.
    ForeignBundle,
    /// It signs workload CSRs for another ID than the CSR's.
    WrongId,
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().clone();
        Self { params, key, der }
    }

    /// A certificate naming `id` for the key of `csr` (or a new key when none): DER.
    fn sign(&self, id: &str, csr: Option<&[u8]>) -> (CertificateDer<'static>, Option<KeyPair>) {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let uri = SanType::URI(id.try_into().unwrap());
        match csr {
            Some(der) => {
                let mut req = CertificateSigningRequestParams::from_der(
                    &CertificateSigningRequestDer::from(der),
                )
                .unwrap();
                req.params.subject_alt_names = vec![uri];
                (req.signed_by(&issuer).unwrap().der().clone(), None)
            }
            None => {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
                params.subject_alt_names = vec![uri];
                (
                    params.signed_by(&key, &issuer).unwrap().der().clone(),
                    Some(key),
                )
            }
        }
    }

    fn bundle_json(&self, td: &str) -> Vec<u8> {
        let mut b = TrustBundle::empty(meshtrust::spiffe_id::TrustDomain::new(td).unwrap());
        b.x509_authorities = vec![self.der.clone()];
        jwks::to_json(&b).unwrap()
    }
}

struct Liar {
    ca: Arc<Ca>,
    lie: Lie,
}

type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentApi for Liar {
    type AttestStream = Stream<AttestResponse>;
    type SyncStream = Stream<NodeView>;

    async fn attest(
        &self,
        request: Request<tonic::Streaming<AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        let first = request.into_inner().message().await?.unwrap();
        let id = format!("spiffe://{TD}/meshtrust/agent/n1");
        let (cert, _) = self.ca.sign(&id, Some(&first.csr));
        let answer = AttestResponse {
            step: Some(attest_response::Step::Svid(AgentSvid {
                spiffe_id: id,
                cert_chain: vec![cert.to_vec()],
                expires_at: 0,
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(answer)]))))
    }

    async fn renew_agent(
        &self,
        _: Request<RenewAgentRequest>,
    ) -> Result<Response<AgentSvid>, Status> {
        Err(Status::unimplemented("no"))
    }

    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<Self::SyncStream>, Status> {
        let td = if self.lie == Lie::ForeignBundle {
            "other.test"
        } else {
            TD
        };
        let view = NodeView {
            revision: 0,
            entries: vec![Entry {
                spiffe_id: WEB.to_owned(),
                selectors: vec![format!("unix:uid:{}", common::own_uid())],
                federates_with: vec![],
                hint: String::new(),
            }],
            own: Some(Bundle {
                trust_domain: td.to_owned(),
                spiffe_bundle_json: self.ca.bundle_json(td),
            }),
            peers: vec![],
            server_id: "liar".to_owned(),
        };
        use tokio_stream::StreamExt as _;
        let stream = tokio_stream::iter([Ok(view)]).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn sign_workloads(
        &self,
        request: Request<SignWorkloadsRequest>,
    ) -> Result<Response<SignWorkloadsResponse>, Status> {
        let svids = request
            .into_inner()
            .csrs
            .iter()
            .map(|csr| SignedSvid {
                spiffe_id: WEB.to_owned(),
                cert_chain: vec![
                    self.ca
                        .sign("spiffe://mesh-a.test/not-web", Some(csr))
                        .0
                        .to_vec(),
                ],
                error: String::new(),
            })
            .collect();
        Ok(Response::new(SignWorkloadsResponse { svids }))
    }

    async fn mint_jwt_svids(
        &self,
        _: Request<MintJwtSvidsRequest>,
    ) -> Result<Response<MintJwtSvidsResponse>, Status> {
        Err(Status::unimplemented("no"))
    }
}

/// Serves `liar` over TLS with a valid `spiffe://<td>/meshtrust/server` SVID; returns its
/// address. The task ends with the test's runtime.
async fn serve(liar: Liar) -> std::net::SocketAddr {
    let (cert, key) = liar
        .ca
        .sign(&format!("spiffe://{TD}/meshtrust/server"), None);
    let key = PrivateKeyDer::try_from(key.unwrap().serialize_der()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = AgentApiServer::new(liar);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                    .await;
            });
        }
    });
    addr
}

/// An agent of the liar (its CA as `server_bundle`): its folder and process.
async fn agent_of(root: &Path, lie: Lie) -> (std::path::PathBuf, common::daemon::Proc) {
    common::init();
    let ca = Arc::new(Ca::new());
    std::fs::write(
        root.join("liar.pem"),
        common::pem(std::slice::from_ref(&ca.der)),
    )
    .unwrap();
    let addr = serve(Liar { ca, lie }).await;
    let dir = root.join("agent");
    let config = AgentConfig::new(TD, &[addr], &root.join("liar.pem"))
        .join_token("any")
        .write(&dir);
    let agent = node_agent::spawn(&config).await;
    (dir, agent)
}

async fn nothing_served(dir: &Path) {
    let endpoint = format!("unix://{}", node_agent::workload_socket(dir).display());
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();
    let got = common::guard(client.fetch_x509_svid()).await;
    assert!(got.is_err(), "a lie was served: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_of_another_trust_domain_is_refused_whole() {
    let root = tempfile::tempdir().unwrap();
    let (dir, agent) = agent_of(root.path(), Lie::ForeignBundle).await;
    let line = agent.wait_for_log("reason=\"bad_answer\"").await;
    assert!(line.contains("other.test"), "{line}");
    let addr = common::metrics::listen_addr(&agent).await;
    common::metrics::scrape_until(&addr, "a bad answer counted", |s| {
        s.value_or_0(
            "meshtrust_agent_server_failures_total",
            "meshtrust_agent_server_failures_total{reason=\"bad_answer\"}",
        ) >= 1.0
    })
    .await;
    nothing_served(&dir).await;
    let status = common::status_json(&node_agent::admin_socket(&dir)).await;
    assert!(
        status["agent"]["last_sync"].is_null(),
        "nothing applied: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_certificate_for_another_id_is_not_served() {
    let root = tempfile::tempdir().unwrap();
    let (dir, agent) = agent_of(root.path(), Lie::WrongId).await;
    let line = agent.wait_for_log("workload SVID unusable").await;
    assert!(line.contains("not-web"), "{line}");
    let addr = common::metrics::listen_addr(&agent).await;
    common::metrics::scrape_until(&addr, "an unusable SVID counted", |s| {
        s.value_or_0(
            "meshtrust_agent_workload_svids_not_signed_total",
            "meshtrust_agent_workload_svids_not_signed_total{reason=\"unusable\"}",
        ) >= 1.0
    })
    .await;
    nothing_served(&dir).await;
}

/// A server that accepts TCP and never speaks: the agent gives up on it after its connect
/// timeout and syncs with the next server listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_costs_a_timeout_then_the_next_server_is_used() {
    let root = tempfile::tempdir().unwrap();
    common::init();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let sdir = root.path().join("server");
    let config = node_agent::server_config(TD, &node_agent::node_entry(WEB, "n1"));
    node_agent::ServerProc::prepare(&sdir, &config);
    let server = node_agent::ServerProc::start(&sdir).await;
    let token = server.token("n1").await;
    let dir = root.path().join("agent");
    let agent_config = AgentConfig::new(TD, &[silent_addr, server.addr], &server.bundle())
        .join_token(&token)
        .write(&dir);
    let agent = node_agent::spawn(&agent_config).await;
    let line = agent.wait_for_log("reason=\"connect\"").await;
    assert!(line.contains(&silent_addr.to_string()), "{line}");
    let connected = agent.wait_for_log("agent connected").await;
    assert!(connected.contains(&server.addr.to_string()), "{connected}");
    let endpoint = format!("unix://{}", node_agent::workload_socket(&dir).display());
    let id = common::eventually_some("web served", || {
        let endpoint = endpoint.clone();
        async move {
            let client = spiffe::WorkloadApiClient::connect_to(endpoint).await.ok()?;
            client.fetch_x509_svid().await.ok()
        }
    })
    .await;
    assert_eq!(id.spiffe_id().to_string(), WEB);
}
