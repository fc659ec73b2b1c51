//! The bundle endpoint's limits, over real TLS on 127.0.0.1: it fails closed without a
//! certificate, drops silent clients, caps connections, and stops on cancellation.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
mod endpoint_client;

use std::time::Duration;

use endpoint_client::fixture::{Certs, H1, ID, start};
use endpoint_client::{GUARD, connect, get};
use meshtrust::clock::Clock;
use meshtrust::federation::endpoint::ServeOptions;
use meshtrust::spiffe_id::SpiffeId;
use tokio::io::AsyncReadExt as _;

/// Hang guard for the silent clients: far above the 200 ms under test, and below hyper's
/// 30 s default header timeout, so a timeout that was not applied fails the test.
const SILENT_GUARD: Duration = Duration::from_secs(10);

/// The server ended the handshake with an alert (access denied): it had no certificate to
/// present.
fn assert_handshake_refused<T>(result: anyhow::Result<T>) {
    let Err(err) = result else {
        panic!("the handshake succeeded without a certificate")
    };
    assert!(
        format!("{err:#}").contains("received fatal alert: AccessDenied"),
        "{err:#}"
    );
}

/// Never an invented or expired certificate: with none installed, handshakes fail closed.
#[tokio::test]
async fn without_a_certificate_handshakes_fail_closed() {
    let f = start(ServeOptions::default(), Certs::Nothing).await;
    assert!(f.certs.current().is_none());
    assert_handshake_refused(connect(f.addr, f.bundle_client(H1), "localhost").await);
    // An SVID past its NotAfter (by the CA's clock) is not presented either.
    let svid =
        f.ca.snapshot()
            .issue_x509_svid(&SpiffeId::new(ID).unwrap(), f.clock.now())
            .unwrap();
    f.certs
        .install(f.certs.svid_key(&svid).unwrap(), Some(svid.not_after));
    assert!(get(f.addr, f.bundle_client(H1), "localhost").await.is_ok());
    f.clock.set(svid.not_after);
    assert!(f.certs.current().is_none());
    assert_handshake_refused(connect(f.addr, f.bundle_client(H1), "localhost").await);
}

/// Cancellation stops accepting and `serve` returns once connections are closed.
#[tokio::test]
async fn cancel_stops_the_listener_and_serve_returns() {
    let mut f = start(ServeOptions::default(), Certs::Start).await;
    let (_idle_keep_alive, _) = get(f.addr, f.bundle_client(H1), "localhost").await.unwrap();
    f.cancel.cancel();
    let result = tokio::time::timeout(GUARD, &mut f.server)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok());
    let err = tokio::net::TcpStream::connect(f.addr)
        .await
        .expect_err("the listener is closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// Slow clients hold no slot forever: a silent TCP client is dropped after the handshake
/// timeout, a silent TLS client after the header read timeout.
#[tokio::test]
async fn silent_clients_are_dropped() {
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(200),
        header_read_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let f = start(options, Certs::Start).await;

    let mut tcp = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(SILENT_GUARD, tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    let tcp = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(f.bundle_client(H1))
        .connect(name, tcp)
        .await
        .unwrap();
    let n = tokio::time::timeout(SILENT_GUARD, tls.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

/// At the connection cap, the next client waits for a slot instead of being served.
#[tokio::test]
async fn at_the_connection_cap_new_clients_wait_for_a_slot() {
    let options = ServeOptions {
        max_connections: 1,
        ..ServeOptions::default()
    };
    let f = start(options, Certs::Start).await;
    let holder = get(f.addr, f.bundle_client(H1), "localhost").await.unwrap();
    let client = f.bundle_client(H1);
    let addr = f.addr;
    let mut second = tokio::spawn(async move { get(addr, client, "localhost").await });
    // Not a timing check: the second client cannot be served while the slot is held.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err()
    );
    drop(holder);
    let (_, answer) = tokio::time::timeout(GUARD, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer.body, f.ca.snapshot().bundle_json);
}
