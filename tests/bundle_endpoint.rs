//! The bundle endpoint over real TLS on 127.0.0.1, https_spiffe profile: what it serves
//! (Federation 1.5.1, 1.5.10), which certificate it presents and how that follows CA rotation
//! (SPIFFE.md §2 "Serving"), the TLS versions it speaks (Federation 1.5.6) and no client auth
//! (Federation 1.5.9). Limits and shutdown: tests/bundle_endpoint_limits.rs; https_web:
//! tests/bundle_endpoint_web.rs.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
mod endpoint_client;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use endpoint_client::fixture::{Certs, H1, H2_H1, HOUR, ID, sequence, start};
use endpoint_client::{Answer, Conn, GUARD, connect, eventually, get, spiffe_client, uri_sans};
use http::{Method, StatusCode, Version};
use meshtrust::clock::Clock;
use meshtrust::federation::endpoint::ServeOptions;
use rustls::ProtocolVersion;

/// Federation 1.5.1, 1.5.10: `GET /` is the current bundle as UTF-8 JSON with
/// `Content-Type: application/json`; https_spiffe (SPIFFE.md §2): the leaf is an X509-SVID for
/// the endpoint ID that chains to our bundle. Federation 1.5.9: the client has no certificate.
#[tokio::test]
async fn get_serves_the_bundle_json_with_an_svid_over_http1_and_http2() {
    let f = start(ServeOptions::default(), Certs::Start).await;
    let snapshot = f.ca.snapshot();

    let (mut conn, answer) = get(f.addr, f.bundle_client(H1), "localhost").await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(b"http/1.1".as_slice()));
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert_eq!(answer.body, snapshot.bundle_json);
    assert!(std::str::from_utf8(&answer.body).is_ok());
    assert_eq!(sequence(&answer.body), snapshot.bundle.sequence.unwrap());
    assert_eq!(uri_sans(&conn.leaf), vec![ID.to_owned()]);

    // Same connection (keep-alive): HEAD, other methods, other paths.
    let head = conn.send(Method::HEAD, "/").await.unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-length"],
        snapshot.bundle_json.len().to_string()
    );
    assert_eq!(head.headers["content-type"], "application/json");
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let a = conn.send(method, "/").await.unwrap();
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(a.headers["allow"], "GET, HEAD");
    }
    assert_eq!(
        conn.send(Method::GET, "/x").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        conn.send(Method::GET, "/").await.unwrap().body,
        snapshot.bundle_json
    );

    // HTTP/2 through ALPN.
    let (mut conn, answer) = get(f.addr, f.bundle_client(H2_H1), "localhost")
        .await
        .unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(b"h2".as_slice()));
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(answer.body, snapshot.bundle_json);
    assert_eq!(answer.headers["content-type"], "application/json");
    let head = conn.send(Method::HEAD, "/").await.unwrap();
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-length"],
        snapshot.bundle_json.len().to_string()
    );
    assert_eq!(
        conn.send(Method::POST, "/").await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        conn.send(Method::GET, "/x").await.unwrap().status,
        StatusCode::NOT_FOUND
    );

    // Federation 1.5.6: TLS 1.2 is spoken too; TLS 1.3 is preferred.
    let (conn, _) = get(
        f.addr,
        f.client(&snapshot.bundle.x509_authorities, H1, true),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(conn.tls_version, ProtocolVersion::TLSv1_2);
    let (conn, _) = get(f.addr, f.bundle_client(H1), "localhost").await.unwrap();
    assert_eq!(conn.tls_version, ProtocolVersion::TLSv1_3);

    // A client pinning another ID refuses the endpoint (the ID check is real).
    let other = spiffe_client(
        &snapshot.bundle.x509_authorities,
        "spiffe://mesh-a.test/other",
        f.clock.clone(),
        H1,
        false,
    );
    let err = connect(f.addr, other, "localhost")
        .await
        .err()
        .expect("a client pinning another ID refuses the endpoint");
    assert!(
        format!("{err:#}").contains("unexpected spiffe id"),
        "refused for its ID: {err:#}"
    );
    assert_eq!(f.certs.failures(), 0);
}

/// Waits (under the hang guard) until a GET of `addr` with `client` is answered with a
/// connection and an answer that `wanted` accepts; returns them.
async fn answered(
    what: &str,
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    wanted: impl Fn(&Conn, &Answer) -> bool,
) -> (Conn, Answer) {
    let wanted = &wanted;
    eventually(what, || {
        let client = client.clone();
        async move {
            get(addr, client, "localhost")
                .await
                .ok()
                .filter(|(c, a)| wanted(c, a))
        }
    })
    .await
}

fn not_before(der: &[u8]) -> SystemTime {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let secs = cert.validity().not_before.timestamp();
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

/// SPIFFE.md §2 "Serving": the SVID is "issued by this CA and rotated with it", renewed well
/// before expiry (at half its lifetime) and at once when the CA's active authority changes;
/// Federation 1.5.10: the most up-to-date bundle is served. All on the same listener.
#[tokio::test]
async fn the_svid_renews_at_half_life_and_follows_a_ca_rotation_on_the_same_listener() {
    let f = start(ServeOptions::default(), Certs::Renew).await;
    let t0 = f.clock.now();
    let first = f.ca.snapshot();
    let old_ca = first.active().unwrap().cert.clone();
    let old_client = f.client(std::slice::from_ref(&old_ca), H1, false);
    let (conn, answer) = get(f.addr, old_client.clone(), "localhost").await.unwrap();
    let leaf0 = conn.leaf.clone();
    let seq0 = sequence(&answer.body);

    // Past half of the 1 h SVID lifetime, with no CA change: a new SVID from the same CA.
    f.clock.advance(40 * 60 * Duration::from_secs(1));
    answered("a renewed svid", f.addr, &old_client, |c, _| {
        c.leaf != leaf0
    })
    .await;

    // The next CA is published at L/2 (12 h): the served bundle follows at once.
    f.clock.set(t0 + 12 * HOUR);
    assert!(f.ca.tick().unwrap());
    let (_, answer) = get(f.addr, old_client.clone(), "localhost").await.unwrap();
    assert_eq!(answer.body, f.ca.snapshot().bundle_json);
    assert!(sequence(&answer.body) > seq0);

    // At 19:45 the SVID is renewed by time; the next renewal by time would be at ~20:15.
    f.clock
        .set(t0 + 19 * HOUR + 45 * 60 * Duration::from_secs(1));
    let t1945 = f.clock.now() - meshtrust::ca::BACKDATE;
    answered("an svid issued at 19:45", f.addr, &old_client, |c, _| {
        not_before(&c.leaf) == t1945
    })
    .await;

    // At 20:00 (5L/6) the prepared CA becomes active, but the endpoint keeps presenting an SVID
    // of the retired CA (still published) so that a peer that has not fetched since the new CA
    // was published still authenticates it (hardening issue, item 5).
    f.clock.set(t0 + 20 * HOUR);
    assert!(f.ca.tick().unwrap());
    let now = f.ca.snapshot();
    let new_ca = now.active().unwrap().cert.clone();
    assert_ne!(new_ca, old_ca);
    let still = "the endpoint still answers a client of the old CA";
    let (conn, answer) = answered(still, f.addr, &old_client, |_, _| true).await;
    assert_eq!(uri_sans(&conn.leaf), vec![ID.to_owned()]);
    assert_eq!(answer.body, now.bundle_json);

    // When the old CA expires (L), the endpoint's SVID comes from the new CA.
    f.clock.set(t0 + 24 * HOUR);
    f.ca.tick().unwrap();
    let now = f.ca.snapshot();
    let client = f.client(&[new_ca], H2_H1, false);
    let (conn, answer) = answered("an svid of the new ca", f.addr, &client, |_, _| true).await;
    assert_eq!(uri_sans(&conn.leaf), vec![ID.to_owned()]);
    assert_eq!(answer.body, now.bundle_json);
    // The old CA alone no longer vouches for what is presented.
    let err = connect(f.addr, old_client, "localhost")
        .await
        .err()
        .expect("the old CA alone refuses the endpoint");
    // The new CA has the old one's name, so the chain builds and its signature fails (or the
    // expired old CA is refused by date first).
    let text = format!("{err:#}");
    assert!(
        text.contains("BadSignature") || text.contains("Expired"),
        "refused for the signature or the date: {text}"
    );
    assert!(!f.server.is_finished());
    assert_eq!(f.certs.failures(), 0);
}

/// Runs `openssl s_client` against the endpoint with `args`; returns (success, output).
async fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(GUARD, child).await.unwrap().unwrap();
    (out.status.success(), common::output_text(&out))
}

/// Federation 1.5.6 (Mozilla intermediate): TLS 1.0 and 1.1 are refused by the server, as
/// openssl sees it; TLS 1.2 and 1.3 handshake, and the presented leaf carries the endpoint ID.
#[tokio::test]
async fn openssl_sees_tls_1_2_and_1_3_only_and_the_svid_uri_san() {
    let f = start(ServeOptions::default(), Certs::Start).await;
    for version in ["-tls1_2", "-tls1_3"] {
        let (ok, out) = s_client(f.addr, &[version]).await;
        assert!(ok, "{version}: {out}");
        assert!(out.contains("BEGIN CERTIFICATE"), "{out}");
    }
    // SECLEVEL=0 lets this openssl offer the old versions, so a refusal comes from the server.
    for version in ["-tls1_1", "-tls1"] {
        let (ok, out) = s_client(f.addr, &[version, "-cipher", "DEFAULT@SECLEVEL=0"]).await;
        assert!(!ok, "{version} was accepted: {out}");
        // The hello went out and the server answered it with an alert (rustls sends
        // handshake_failure), rather than openssl giving up before sending.
        assert!(out.contains("SSL alert number"), "{version}: {out}");
        assert!(!out.contains("no protocols available"), "{version}: {out}");
    }

    // The leaf as openssl prints it.
    let (ok, out) = s_client(f.addr, &[]).await;
    assert!(ok, "{out}");
    let start = out.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = out.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("leaf.pem");
    std::fs::write(&pem, &out[start..end]).unwrap();
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("URI:{ID}")), "{text}");
}
