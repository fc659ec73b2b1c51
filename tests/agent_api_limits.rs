//! The attacker's test of `[agent_api] listen`: junk instead of TLS, a client certificate of
//! another CA, a connection that never says anything, a TLS connection that never calls, one
//! connection beyond `max_connections`, an oversized batch. Each is refused or closed, the
//! refusal logged with its reason and counted (`meshtrust_agent_refusals_total`), and the
//! server keeps serving agents.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use common::agent;
use common::node_agent::ServerProc;
use common::node_ca::NodeCa;
use meshtrust::agent_api::proto::{SignWorkloadsRequest, SyncRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn server(limits: &str) -> ServerProc {
    let dir = tempfile::tempdir().unwrap();
    let config = common::agent::api_config_with(limits, "");
    ServerProc::launch_in(dir, &config).await
}

/// Reads until the server closes the connection (EOF or reset), under the hang guard.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 4096];
    common::guard(async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn junk_silence_foreign_certificates_and_idle_connections_are_refused() {
    let server = server("handshake_timeout = \"1s\"\nidle_timeout = \"1s\"\n").await;

    // Not TLS at all.
    let mut junk = TcpStream::connect(server.addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(&mut junk).await;
    server.proc().wait_for_log("reason=\"handshake\"").await;

    // Nothing at all: closed at the handshake timeout.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    closed_by_server(&mut silent).await;

    // A client certificate from another CA (a node CA here): the handshake fails.
    let foreign = NodeCa::new("not the mesh");
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let (cert, key) = foreign.node_cert("web-1", now - day, now + day);
    let identity = agent::Identity {
        chain: vec![cert],
        key,
    };
    let tls = agent::tls_config(agent::TD, server.roots.clone(), Some(&identity));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("agent-api.invalid").unwrap();
    // TLS 1.3: the client finishes first; the server's refusal arrives on the first read.
    if let Ok(mut stream) = connector.connect(name, tcp).await {
        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        closed_by_server(&mut stream).await;
    }
    assert_eq!(server.refusals("handshake").await, 3.0);

    // TLS without a certificate, then nothing: closed once idle.
    let tls = agent::tls_config(agent::TD, server.roots.clone(), None);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("agent-api.invalid").unwrap();
    let mut idle = connector.connect(name, tcp).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(&mut idle).await;

    // A real agent is still served, and its open Sync stream keeps its connection.
    let identity = server.attested("web-1").await;
    let mut client = server.client(Some(&identity)).await;
    let mut views = client.sync(SyncRequest {}).await.unwrap().into_inner();
    common::guard(views.message()).await.unwrap().unwrap();

    // An oversized batch is refused as a whole.
    let csrs = vec![vec![0u8; 1]; 1001];
    let status = client
        .sign_workloads(SignWorkloadsRequest { csrs })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 1000"), "{status:?}");
    assert_eq!(server.refusals("bad_request").await, 1.0);
}

#[tokio::test]
async fn a_connection_beyond_the_cap_is_closed_at_once_and_counted() {
    let server = server("max_connections = 2\n").await;
    // Two connections hold both slots (in their handshakes, for up to 10 s).
    let _a = TcpStream::connect(server.addr).await.unwrap();
    let _b = TcpStream::connect(server.addr).await.unwrap();
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    closed_by_server(&mut third).await;
    server
        .proc()
        .wait_for_log("reason=\"connection_limit\"")
        .await;
    assert!(server.refusals("connection_limit").await >= 1.0);
}

#[tokio::test]
async fn a_flood_of_refused_calls_is_counted_in_full_and_logged_within_a_budget() {
    let server = server("").await;
    let mut anonymous = server.client(None).await;
    for _ in 0..100 {
        let status = anonymous.sync(SyncRequest {}).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(server.refusals("unauthenticated").await, 100.0);
    let lines = server.proc().count("reason=\"unauthenticated\"");
    let budget = meshtrust::metrics::agents::LOG_LINES_PER_WINDOW as usize;
    assert!(
        lines >= 1 && lines <= budget * 2,
        "{lines} lines logged for 100 refusals"
    );
}

#[tokio::test]
async fn a_call_whose_request_never_arrives_is_answered_deadline_exceeded() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let server = server("handshake_timeout = \"1s\"\n").await;
    let tls = agent::tls_config(agent::TD, server.roots.clone(), None);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("agent-api.invalid").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Headers of a unary call, then a body that never comes.
    let (_hold, rx) =
        tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, std::convert::Infallible>>(1);
    let request =
        http::Request::post("https://agent-api.invalid/meshtrust.agent.v1.AgentApi/SignWorkloads")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .unwrap();
    let response = common::guard(sender.send_request(request)).await.unwrap();
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4"),
        "DEADLINE_EXCEEDED: {response:?}"
    );
    server
        .proc()
        .wait_for_log("no request message within")
        .await;
    assert_eq!(server.refusals("bad_request").await, 1.0);
}
