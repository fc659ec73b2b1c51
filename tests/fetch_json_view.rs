//! The Workload API's JSON view serves JWT too (issue 10 item 7, CONTRACT.md "Workload API JSON
//! view"), through the real daemon and curl: `/v1/jwt-svid` tokens validate back through
//! ValidateJWTSVID, `/v1/jwt-bundles` is the JWKS per trust domain that FetchJWTBundles sends,
//! `/` lists the routes; the same header and attestation as the other routes; an attacker's
//! huge query string or audience list is refused cleanly and the daemon keeps serving.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use common::config::{DaemonConfig, entry};
use common::daemon::Proc;
use common::grpc::{next, open_jwt_bundles, with_header, workload_client};
use common::http::Curl;
use common::own_uid;
use meshtrust::workload_api::proto::ValidateJwtsvidRequest;

const ME: &str = "spiffe://mesh-a.test/json";
const OTHER: &str = "spiffe://mesh-a.test/json-other";

async fn daemon(dir: &Path) -> (Proc, PathBuf) {
    let config = DaemonConfig::new("mesh-a.test")
        .section(&format!("{}hint = \"first\"\n", entry(ME, own_uid(), &[])))
        .section(&entry(OTHER, own_uid(), &[]))
        .write(dir);
    (Proc::serve(&config).await, dir.join("workload.sock"))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_from_the_json_view_validate_through_the_grpc_api() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path()).await;

    // One token per identity of the caller, for both audiences.
    let reply = Curl::get(&sock, "/v1/jwt-svid?audience=svc-a&audience=svc%20b")
        .send()
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let doc = json(&reply.body);
    let svids = doc["svids"].as_array().unwrap();
    let ids: Vec<_> = svids
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ME, OTHER]);
    assert_eq!(svids[0]["hint"], "first");
    assert_eq!(svids[1]["hint"], "");
    assert!(
        svids[0]["expires_at"].as_str().unwrap().ends_with('Z'),
        "{doc}"
    );

    // ValidateJWTSVID (the gRPC API, our generated client) accepts it for either audience.
    let mut client = workload_client(&sock).await;
    for audience in ["svc-a", "svc b"] {
        let valid = client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: svids[0]["token"].as_str().unwrap().to_owned(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(valid.spiffe_id, ME);
    }

    // spiffe_id picks one; one the caller does not hold is refused like FetchJWTSVID does.
    let one = Curl::get(
        &sock,
        "/v1/jwt-svid?audience=a&spiffe_id=spiffe%3A%2F%2Fmesh-a.test%2Fjson-other",
    )
    .send()
    .await;
    assert_eq!(one.status, 200, "{}", one.body);
    let doc = json(&one.body);
    assert_eq!(doc["svids"].as_array().unwrap().len(), 1);
    assert_eq!(doc["svids"][0]["spiffe_id"], OTHER);
    let none = Curl::get(
        &sock,
        "/v1/jwt-svid?audience=a&spiffe_id=spiffe://mesh-a.test/nobody",
    )
    .send()
    .await;
    assert_eq!(
        (none.status, json(&none.body)["error"].as_str().unwrap()),
        (403, "no identity issued")
    );

    // No audience: 400 with SPIRE's words; no header: 400 as on the other routes.
    let bare = Curl::get(&sock, "/v1/jwt-svid").send().await;
    assert_eq!(bare.status, 400);
    assert_eq!(json(&bare.body)["error"], "audience must be specified");
    let no_header = Curl::get(&sock, "/v1/jwt-svid?audience=a")
        .without_header()
        .send()
        .await;
    assert_eq!(no_header.status, 400);
    assert_eq!(
        json(&no_header.body)["error"],
        "security header missing from request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bundles_are_the_jwks_fetch_jwt_bundles_sends_and_the_root_lists_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path()).await;
    let reply = Curl::get(&sock, "/v1/jwt-bundles").send().await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let doc = json(&reply.body);
    let mut client = workload_client(&sock).await;
    let grpc = next(&mut open_jwt_bundles(&mut client).await).await;
    let want: serde_json::Value =
        serde_json::from_slice(&grpc.bundles["spiffe://mesh-a.test"]).unwrap();
    assert_eq!(doc["bundles"]["spiffe://mesh-a.test"], want);
    assert_eq!(doc["bundles"].as_object().unwrap().len(), 1, "{doc}");
    let no_header = Curl::get(&sock, "/v1/jwt-bundles")
        .without_header()
        .send()
        .await;
    assert_eq!(no_header.status, 400);

    // `/`: every route, without needing the header (it tells nothing about the caller).
    let routes = Curl::get(&sock, "/").without_header().send().await;
    assert_eq!(routes.status, 200, "{}", routes.body);
    let paths: Vec<String> = json(&routes.body)["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/x509-svid",
            "/v1/x509-bundles",
            "/v1/jwt-svid",
            "/v1/jwt-bundles",
            "/"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_queries_and_audience_lists_are_refused_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path()).await;

    // More audiences than allowed, in a short query: refused before any token is minted.
    let many = vec!["audience=x"; 100].join("&");
    let reply = Curl::get(&sock, &format!("/v1/jwt-svid?{many}"))
        .send()
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        json(&reply.body)["error"],
        "too many audiences (at most 32)"
    );

    // A query over the bound: refused by length, not parsed.
    let long = format!("/v1/jwt-svid?audience={}", "a".repeat(9000));
    let reply = Curl::get(&sock, &long).send().await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        json(&reply.body)["error"]
            .as_str()
            .unwrap()
            .starts_with("query string too long")
    );

    // A request line far past what HTTP/1.1 parsing accepts: refused by the server (414 URI
    // Too Long), no answer with a token.
    let huge = format!("/v1/jwt-svid?audience={}", "a".repeat(100_000));
    let reply = Curl::get(&sock, &huge).send().await;
    assert!(
        matches!(reply.status, 400 | 414 | 431),
        "{}: {}",
        reply.status,
        reply.body
    );
    assert!(!reply.body.contains("token"), "{}", reply.body);

    // Unknown parameters are named, not ignored (a typo must not mint a token for no audience).
    let reply = Curl::get(&sock, "/v1/jwt-svid?audiences=a").send().await;
    assert_eq!(reply.status, 400);
    assert!(
        json(&reply.body)["error"]
            .as_str()
            .unwrap()
            .contains("\"audiences\"")
    );

    // Still serving.
    let ok = Curl::get(&sock, "/v1/jwt-svid?audience=a").send().await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}
