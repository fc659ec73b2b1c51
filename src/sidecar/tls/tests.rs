//! The per-trust-domain verifier and the live-reloading TLS configs, with real CAs of several
//! trust domains and real rustls handshakes over in-memory pipes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::sidecar::test_support::{TestCa, channel, context, response};
use crate::spiffe_id::SpiffeId;

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn now() -> UnixTime {
    UnixTime::now()
}

/// mesh-b's view: its own SVID `/echo`, federating with mesh-a only.
struct Fixture {
    a: TestCa,
    b: TestCa,
    c: TestCa,
}

impl Fixture {
    fn new() -> Self {
        Self {
            a: TestCa::new("mesh-a.test"),
            b: TestCa::new("mesh-b.test"),
            c: TestCa::new("mesh-c.test"),
        }
    }

    fn verifier(&self, authorizer: Authorizer) -> SpiffeVerifier {
        // The receiver keeps the last value after the sender is gone.
        let (_tx, rx) = channel(context(&self.b, "/echo", &[&self.a]));
        SpiffeVerifier::new(rx, authorizer)
    }
}

fn allow_frontend() -> Authorizer {
    Authorizer::one_of([id("spiffe://mesh-a.test/frontend")], []).unwrap()
}

#[test]
fn a_federated_peer_verifies_with_its_own_trust_domains_bundle() {
    // WAPI 1.7.6: validate the peer with the bundle of the peer's own trust domain.
    let f = Fixture::new();
    let v = f.verifier(allow_frontend());
    let peer = f.a.issue("/frontend");
    for role in [PeerRole::Client, PeerRole::Server] {
        let got = v
            .verify_peer(&peer.cert_chain[0], &[], now(), role)
            .unwrap();
        assert_eq!(got, peer.spiffe_id);
    }
}

#[test]
fn a_leaf_signed_by_another_trust_domains_ca_is_refused() {
    // SPIFFE-ID 1.1.7 / §4.1.2: mesh-a's CA cannot speak for mesh-b. mesh-a signs an ID of
    // mesh-b; both bundles are held, but only mesh-b's is used for a mesh-b ID.
    let f = Fixture::new();
    let v = f.verifier(Authorizer::one_of([], [f.b.td.clone(), f.a.td.clone()]).unwrap());
    let forged = f.a.issue_id(&id("spiffe://mesh-b.test/echo"));
    let err = v
        .verify_peer(&forged.cert_chain[0], &[], now(), PeerRole::Client)
        .unwrap_err();
    assert!(
        matches!(&err, TlsError::Chain { trust_domain, .. } if trust_domain == &f.b.td),
        "{err}"
    );
    // And the reverse: mesh-b's own CA signing a mesh-a ID.
    let forged = f.b.issue_id(&id("spiffe://mesh-a.test/frontend"));
    let err = v
        .verify_peer(&forged.cert_chain[0], &[], now(), PeerRole::Server)
        .unwrap_err();
    assert!(matches!(err, TlsError::Chain { .. }), "{err}");
}

#[test]
fn a_trust_domain_without_a_bundle_is_refused() {
    // WAPI 1.7.6: no bundle for the peer's trust domain = untrusted.
    let f = Fixture::new();
    let v = f.verifier(Authorizer::one_of([], [f.c.td.clone()]).unwrap());
    let stranger = f.c.issue("/x");
    let err = v
        .verify_peer(&stranger.cert_chain[0], &[], now(), PeerRole::Client)
        .unwrap_err();
    assert!(matches!(err, TlsError::UnknownTrustDomain { .. }), "{err}");
}

#[test]
fn a_revoked_trust_domain_verifies_nothing() {
    // TD&B 1.4.7: an empty bundle invalidates every SVID of that trust domain.
    let f = Fixture::new();
    let svid = f.b.issue("/echo");
    let msg = response(&svid, &f.b.bundle(), &[(&f.a, Vec::new())]);
    let (_tx, rx) = channel(X509Context::from_response(msg, SystemTime::now()).unwrap());
    let v = SpiffeVerifier::new(rx, allow_frontend());
    let peer = f.a.issue("/frontend");
    let err = v
        .verify_peer(&peer.cert_chain[0], &[], now(), PeerRole::Client)
        .unwrap_err();
    assert!(matches!(err, TlsError::RevokedTrustDomain { .. }), "{err}");
}

#[test]
fn a_verified_but_unlisted_peer_is_refused_by_name() {
    let f = Fixture::new();
    let v = f.verifier(allow_frontend());
    let other = f.a.issue("/other");
    let err = v
        .verify_peer(&other.cert_chain[0], &[], now(), PeerRole::Client)
        .unwrap_err();
    assert!(matches!(err, TlsError::NotAllowed(_)), "{err}");
    assert!(
        err.to_string().contains("spiffe://mesh-a.test/other"),
        "{err}"
    );
}

#[test]
fn expired_leaves_and_ca_certificates_are_refused() {
    // X509-SVID 1.2.13 (path validation includes validity) and 1.2.14 (leaf profile).
    let f = Fixture::new();
    let v = f.verifier(Authorizer::one_of([], [f.a.td.clone()]).unwrap());
    let peer = f.a.issue("/frontend");
    let after = peer.not_after + Duration::from_secs(60);
    let later = UnixTime::since_unix_epoch(after.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    let err = v
        .verify_peer(&peer.cert_chain[0], &[], later, PeerRole::Client)
        .unwrap_err();
    assert!(matches!(err, TlsError::Chain { .. }), "{err}");
    let err = v
        .verify_peer(&f.a.bundle()[0], &[], now(), PeerRole::Client)
        .unwrap_err();
    assert!(matches!(err, TlsError::Leaf(_)), "{err}");
}

/// One mTLS exchange over an in-memory pipe: the client sends "ping", the server answers
/// "pong". Returns the peer IDs each side saw, or the first failure.
async fn exchange(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<(SpiffeId, SpiffeId), String> {
    let (c, s) = tokio::io::duplex(1 << 16);
    let work = async { tokio::join!(serve_once(server, s), call_once(client, c)) };
    let (s, c) = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("hang guard");
    Ok((s?, c?))
}

async fn serve_once(config: Arc<ServerConfig>, io: DuplexStream) -> Result<SpiffeId, String> {
    let mut s = TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(|e| format!("server: {e}"))?;
    let peer = peer_id(s.get_ref().1.peer_certificates()).ok_or("server: no peer id")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("server read: {e}"))?;
    s.write_all(b"pong")
        .await
        .map_err(|e| format!("server write: {e}"))?;
    s.flush().await.map_err(|e| format!("server flush: {e}"))?;
    Ok(peer)
}

async fn call_once(config: Arc<ClientConfig>, io: DuplexStream) -> Result<SpiffeId, String> {
    let name = ServerName::try_from("mesh-b.test").unwrap();
    let mut c = TlsConnector::from(config)
        .connect(name, io)
        .await
        .map_err(|e| format!("client: {e}"))?;
    let peer = peer_id(c.get_ref().1.peer_certificates()).ok_or("client: no peer id")?;
    c.write_all(b"ping")
        .await
        .map_err(|e| format!("client write: {e}"))?;
    c.flush().await.map_err(|e| format!("client flush: {e}"))?;
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf)
        .await
        .map_err(|e| format!("client read: {e}"))?;
    Ok(peer)
}

#[tokio::test]
async fn handshakes_follow_rotations_without_rebuilding_the_configs() {
    crate::sidecar::test_support::install_provider();
    let f = Fixture::new();
    let (server_tx, server_rx) = channel(context(&f.b, "/echo", &[&f.a]));
    let (client_tx, client_rx) = channel(context(&f.a, "/frontend", &[&f.b]));
    let server = server_config(server_rx, allow_frontend()).unwrap();
    let client = client_config(
        client_rx,
        Authorizer::exact(id("spiffe://mesh-b.test/echo")),
    )
    .unwrap();

    let (seen_by_server, seen_by_client) = exchange(server.clone(), client.clone()).await.unwrap();
    assert_eq!(seen_by_server.as_str(), "spiffe://mesh-a.test/frontend");
    assert_eq!(seen_by_client.as_str(), "spiffe://mesh-b.test/echo");

    // A new server SVID (new key) is presented at the next handshake, same config objects.
    let before = server_tx.borrow().clone().unwrap().svid.cert_chain[0].clone();
    server_tx.send_replace(Some(Arc::new(context(&f.b, "/echo", &[&f.a]))));
    let after = server_tx.borrow().clone().unwrap().svid.cert_chain[0].clone();
    assert_ne!(before, after);
    exchange(server.clone(), client.clone()).await.unwrap();

    // The client is given a different identity: the server's policy now refuses it.
    client_tx.send_replace(Some(Arc::new(context(&f.a, "/other", &[&f.b]))));
    let err = exchange(server.clone(), client.clone()).await.unwrap_err();
    assert!(err.contains("server"), "{err}");
    client_tx.send_replace(Some(Arc::new(context(&f.a, "/frontend", &[&f.b]))));
    exchange(server.clone(), client.clone()).await.unwrap();

    // mesh-a's bundle is revoked on the server side (TD&B 1.4.7): refused from now on.
    let svid = f.b.issue("/echo");
    let revoked = response(&svid, &f.b.bundle(), &[(&f.a, Vec::new())]);
    server_tx.send_replace(Some(Arc::new(
        X509Context::from_response(revoked, SystemTime::now()).unwrap(),
    )));
    assert!(exchange(server.clone(), client.clone()).await.is_err());
}

#[tokio::test]
async fn an_expired_own_svid_is_never_presented() {
    crate::sidecar::test_support::install_provider();
    let f = Fixture::new();
    let mut expired = context(&f.b, "/echo", &[&f.a]);
    expired.svid.not_after = SystemTime::now() - Duration::from_secs(1);
    let (_stx, server_rx) = channel(expired);
    let (_ctx, client_rx) = channel(context(&f.a, "/frontend", &[&f.b]));
    assert!(matches!(ready(&server_rx), Err(TlsError::Expired(_))));
    assert!(ready(&client_rx).is_ok());
    let server = server_config(server_rx, allow_frontend()).unwrap();
    let client = client_config(
        client_rx,
        Authorizer::exact(id("spiffe://mesh-b.test/echo")),
    )
    .unwrap();
    let err = exchange(server, client).await.unwrap_err();
    assert!(err.contains("server"), "{err}");
}
