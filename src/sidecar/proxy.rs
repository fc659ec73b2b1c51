//! The two mTLS proxies.
//!
//! - inbound: accepts mTLS from other workloads, verifies and authorizes the caller's SVID, and
//!   forwards the plain bytes to the local service. A refused caller gets a failed handshake
//!   and the sidecar prints a line naming it.
//! - outbound: accepts plain connections from the local workload and originates mTLS to the
//!   expected peer.
//!
//! Both copy in both directions with `copy_bidirectional`, so a half-close on one side (EOF,
//! TLS close_notify) is passed on as a half-close on the other while the reverse direction keeps
//! flowing. The TLS configs read the latest SVID and bundles at each handshake, so rotations
//! never restart a listener or touch an established connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Reporter;
use super::client::ContextRx;
use super::tls;
use crate::spiffe_id::SpiffeId;

/// A hang guard on TLS handshakes and upstream connects (not a timing requirement).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a proxy cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The outbound proxy's listen address is not loopback-only, and no option allowed it.
    #[error(
        "--listen {addr}: {resolved} is not a loopback address; whoever could reach it would \
         connect to the peer under this workload's identity. Listen on 127.0.0.1 or [::1], or \
         pass --allow-non-loopback if only this workload can reach that address"
    )]
    NotLoopback {
        /// The address as given.
        addr: String,
        /// The first non-loopback address it resolves to.
        resolved: std::net::SocketAddr,
    },
}

/// Binds the outbound proxy's listen address: every address it resolves to must be loopback
/// unless `allow_non_loopback`.
///
/// # Errors
/// [`ProxyError::NotLoopback`] before anything is bound, or [`ProxyError::Bind`].
pub async fn bind_outbound(
    addr: &str,
    allow_non_loopback: bool,
) -> Result<TcpListener, ProxyError> {
    let bind_err = |source| ProxyError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(bind_err)?
        .collect();
    if !allow_non_loopback && let Some(open) = resolved.iter().find(|a| !a.ip().is_loopback()) {
        return Err(ProxyError::NotLoopback {
            addr: addr.to_owned(),
            resolved: *open,
        });
    }
    TcpListener::bind(&resolved[..]).await.map_err(bind_err)
}

/// Binds a proxy's listen address (`host:port`).
///
/// # Errors
/// [`ProxyError::Bind`].
pub async fn bind(addr: &str) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves the inbound proxy on `listener` until `cancel` fires: mTLS in (with `config` from
/// [`tls::server_config`]), plain TCP out to `forward` (`host:port`).
pub async fn run_inbound(
    listener: TcpListener,
    forward: String,
    config: Arc<ServerConfig>,
    ctx: ContextRx,
    report: Reporter,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let forward = Arc::<str>::from(forward);
    accept_loop(listener, "inbound", &report, &cancel, |tcp, from| {
        let (acceptor, forward, ctx, report) = (
            acceptor.clone(),
            forward.clone(),
            ctx.clone(),
            report.clone(),
        );
        async move { inbound(tcp, from, acceptor, &forward, &ctx, &report).await }
    })
    .await;
}

/// Serves the outbound proxy on `listener` until `cancel` fires: plain TCP in, mTLS out to
/// `connect` (`host:port`) with `config` from [`tls::client_config`], whose authorizer only
/// accepts `expect`.
pub async fn run_outbound(
    listener: TcpListener,
    connect: String,
    expect: SpiffeId,
    config: Arc<ClientConfig>,
    ctx: ContextRx,
    report: Reporter,
    cancel: CancellationToken,
) {
    let connector = TlsConnector::from(config);
    // The name only feeds SNI: the verifier ignores it and checks the SPIFFE ID instead.
    let server_name = ServerName::try_from(expect.trust_domain().as_str().to_owned())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("a valid DNS name"));
    let connect = Arc::<str>::from(connect);
    accept_loop(listener, "outbound", &report, &cancel, |local, from| {
        let (connector, name, connect, expect, ctx, report) = (
            connector.clone(),
            server_name.clone(),
            connect.clone(),
            expect.clone(),
            ctx.clone(),
            report.clone(),
        );
        async move {
            outbound(
                local, from, connector, name, &connect, &expect, &ctx, &report,
            )
            .await
        }
    })
    .await;
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &str,
    report: &Reporter,
    cancel: &CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        report.line(format!("{what}: listening on {addr}"));
    }
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, from)) => {
                let conn = handle(tcp, from);
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = conn => {}
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn inbound(
    tcp: TcpStream,
    from: SocketAddr,
    acceptor: TlsAcceptor,
    forward: &str,
    ctx: &ContextRx,
    report: &Reporter,
) {
    if let Err(e) = tls::ready(ctx) {
        report.line(format!("inbound: refused {from}: {e}"));
        return;
    }
    let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report.line(format!("inbound: refused {from}: {}", plain_words(&e)));
            return;
        }
        Err(_) => {
            report.line(format!("inbound: refused {from}: tls handshake timed out"));
            return;
        }
    };
    let peer = describe_peer(tls::peer_id(stream.get_ref().1.peer_certificates()));
    let mut upstream = match connect_tcp(forward).await {
        Ok(s) => s,
        Err(e) => {
            report.line(format!(
                "inbound: accepted {peer} from {from} but the local service at {forward} is down: {}",
                plain_words(&e)
            ));
            // A TLS goodbye, so the caller's side sees a clean close rather than a cut.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return;
        }
    };
    report.line(format!(
        "inbound: accepted {peer} from {from}, forwarding to {forward}"
    ));
    let result = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
    report.line(format!("inbound: {peer} from {from} {}", ended(result)));
}

#[allow(clippy::too_many_arguments)] // one connection's whole context; a struct would only rename them
async fn outbound(
    mut local: TcpStream,
    from: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
    connect: &str,
    expect: &SpiffeId,
    ctx: &ContextRx,
    report: &Reporter,
) {
    if let Err(e) = tls::ready(ctx) {
        report.line(format!("outbound: refused {from}: {e}"));
        return;
    }
    let tcp = match connect_tcp(connect).await {
        Ok(s) => s,
        Err(e) => {
            report.line(format!(
                "outbound: {from} cannot reach {connect}: {}",
                plain_words(&e)
            ));
            return;
        }
    };
    let mut stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                report.line(format!(
                    "outbound: {from} refused {expect} at {connect}: {}",
                    plain_words(&e)
                ));
                return;
            }
            Err(_) => {
                report.line(format!(
                    "outbound: {from} to {connect}: tls handshake timed out"
                ));
                return;
            }
        };
    let peer = describe_peer(tls::peer_id(stream.get_ref().1.peer_certificates()));
    report.line(format!("outbound: {from} connected to {peer} at {connect}"));
    let result = tokio::io::copy_bidirectional(&mut local, &mut stream).await;
    report.line(format!("outbound: {from} to {peer} {}", ended(result)));
}

async fn connect_tcp(addr: &str) -> io::Result<TcpStream> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

fn describe_peer(id: Option<SpiffeId>) -> String {
    id.map_or_else(|| "an unidentified peer".to_owned(), |id| id.to_string())
}

fn ended(result: io::Result<(u64, u64)>) -> String {
    match result {
        Ok((a, b)) => format!("closed ({a} bytes in, {b} bytes out)"),
        Err(e) => format!("ended with an error: {}", plain_words(&e)),
    }
}

/// An I/O error in plain words: what happened to the connection, never a library's internals
/// or a documentation URL (rustls' "peer closed connection without sending TLS close_notify:
/// https://docs.rs/..." is a peer that hung up, usually because its service is down).
fn plain_words(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            "the other side hung up without closing the session (its service may be down)"
                .to_owned()
        }
        io::ErrorKind::ConnectionRefused => "connection refused (nothing listens there)".to_owned(),
        io::ErrorKind::ConnectionReset => "the connection was reset by the other side".to_owned(),
        io::ErrorKind::BrokenPipe => "the other side closed the connection".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => strip_url(&handshake_error(e)),
    }
}

/// The text before a `: https://...` tail.
fn strip_url(text: &str) -> String {
    match text.find(": http") {
        Some(at) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// The reason of a TLS failure in words: our verifier's message (which names the refused
/// SPIFFE ID) when it is the cause, rustls' otherwise.
fn handshake_error(e: &io::Error) -> String {
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return other.0.to_string();
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_read_as_plain_words() {
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: \
             https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        let words = plain_words(&eof);
        assert!(
            !words.contains("https://") && !words.contains("close_notify"),
            "{words}"
        );
        assert!(words.contains("service may be down"), "{words}");
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            plain_words(&refused),
            "connection refused (nothing listens there)"
        );
        let other = io::Error::other("bad thing: https://example.invalid/doc");
        assert_eq!(plain_words(&other), "bad thing");
    }
}
