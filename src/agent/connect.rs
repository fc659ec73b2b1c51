//! The agent's connection to one server: gRPC (tonic) over TLS (rustls, ring) on TCP. The
//! server must present an X509-SVID naming `spiffe://<td>/meshtrust/server` that chains to our
//! trust domain's authorities as the agent knows them at the handshake (the bootstrap bundle
//! until the first sync, then the synced, rotating own bundle). The agent presents its agent
//! SVID as the client certificate, or nothing for `Attest`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::AgentError;
use super::config::ServerAddr;
use super::state::AgentState;
use crate::agent_api::proto::agent_api_client::AgentApiClient;
use crate::federation::verifier::{EndpointRoots, OwnRoots, SpiffeEndpointVerifier};
use crate::spiffe_id::SpiffeId;

/// TCP connect plus TLS handshake, at most.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings while connected: a server gone without a FIN (cut link, host lost) is noticed
/// within about interval + timeout; a server process that dies is noticed at once (its kernel
/// resets the connection). Every ping costs the server a TLS record each way and two wake-ups:
/// at 500 ms, 1,000 idle agents cost it 6 % of a core (BENCHMARKS.md, issue 14), at 3 s 1 %.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest message accepted from a server (a node view with many bundles).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Which certificate the agent presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None (attestation).
    Anonymous,
    /// The agent SVID.
    AgentSvid,
}

fn tls_config(
    state: &Arc<AgentState>,
    server_id: &SpiffeId,
    auth: ClientAuth,
) -> Result<ClientConfig, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let td = server_id.trust_domain().clone();
    let roots_state = state.clone();
    let roots = EndpointRoots::Own(OwnRoots::new(td, move || roots_state.server_roots()));
    let verifier = SpiffeEndpointVerifier::new(server_id.clone(), roots, provider.clone());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match (auth, state.agent()) {
        (ClientAuth::AgentSvid, Some((_, svid, _))) => {
            let chain: Vec<CertificateDer<'static>> = svid.cert_chain.clone();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                svid.private_key.pkcs8_der().to_vec(),
            ));
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| AgentError::Tls(e.to_string()))?
        }
        (ClientAuth::AgentSvid, None) => return Err(AgentError::NotAttested),
        (ClientAuth::Anonymous, _) => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A connected client of `server`'s agent API.
///
/// # Errors
/// [`AgentError::Connect`] when the TCP connection or the TLS handshake fails in time
/// (a server that is not who it must be fails here).
pub async fn connect(
    state: &Arc<AgentState>,
    server: &ServerAddr,
    server_id: &SpiffeId,
    auth: ClientAuth,
) -> Result<AgentApiClient<Channel>, AgentError> {
    let config = Arc::new(tls_config(state, server_id, auth)?);
    let authority = server.authority.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.clone();
        let authority = authority.clone();
        async move {
            let tcp = TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            // The name is not checked (the verifier pins the SPIFFE ID); SNI carries the host.
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = ServerName::try_from(host).unwrap_or_else(|_| {
                ServerName::try_from("meshtrust-server").expect("a valid name")
            });
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let endpoint = Endpoint::from_shared(format!("https://{}", server.authority))
        .map_err(|e| AgentError::Connect(format!("{}: {e}", server.url)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        endpoint.connect_with_connector(connector),
    )
    .await
    .map_err(|_| AgentError::Connect(format!("{}: timed out", server.url)))?
    .map_err(|e| {
        if tls_refused(&e) {
            AgentError::Tls(format!("{}: {}", server.url, chain(&e)))
        } else {
            AgentError::Connect(format!("{}: {}", server.url, chain(&e)))
        }
    })?;
    Ok(AgentApiClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// An error and its sources on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Whether the TLS handshake failed (the server is not who it must be, or refused us), as
/// opposed to the server being unreachable.
fn tls_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        // io::Error hides the error it wraps from source(): look inside.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cur = err.source();
    }
    false
}
