//! Who may call the Workload API (Workload Endpoint §3, §5, §6; SPIFFE.md 1.6.3, 1.6.6, 1.6.7,
//! 1.7.12) and the JSON view on the same socket (CONTRACT.md "Workload API"). Other callers are
//! real processes run as uid 65534 with `setpriv` (that test needs root: required in CI, skipped
//! with a printed note elsewhere).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use common::http::{Curl, curl_program};
use common::workload::*;
use meshtrust::config::Selector;
use meshtrust::workload_api::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, WitBundlesRequest, WitsvidRequest,
    X509BundlesRequest, X509svidRequest,
};
use tonic::Code;

const NOBODY: u32 = 65534;
const CHILD_ENV: &str = "MESHTRUST_TEST_WORKLOAD_ENDPOINT";

/// `curl` against the JSON view, as this process's uid or as uid 65534: (status, JSON body).
async fn curl(
    socket: &Path,
    as_nobody: bool,
    header: bool,
    extra: &[&str],
    path: &str,
) -> (u16, serde_json::Value) {
    let mut request = Curl::get(socket, path).args(extra);
    if as_nobody {
        request = request.run_as(NOBODY);
    }
    if !header {
        request = request.without_header();
    }
    let reply = request.send().await;
    (
        reply.status,
        serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn every_call_without_the_exact_security_header_is_invalid_argument() {
    // Workload Endpoint 1.6.3: value `true`, case-sensitive; checked before anything else.
    let mesh = Mesh::start(default_entries()).await;
    let mut c = mesh.raw_client().await;
    for value in [None, Some("True"), Some("false"), Some("")] {
        fn request<M>(m: M, value: Option<&str>) -> tonic::Request<M> {
            let mut r = tonic::Request::new(m);
            if let Some(v) = value {
                r.metadata_mut()
                    .insert("workload.spiffe.io", v.parse().unwrap());
            }
            r
        }
        let codes = [
            c.fetch_x509svid(request(X509svidRequest {}, value))
                .await
                .map(drop)
                .unwrap_err(),
            c.fetch_x509_bundles(request(X509BundlesRequest {}, value))
                .await
                .map(drop)
                .unwrap_err(),
            c.fetch_jwtsvid(request(
                JwtsvidRequest {
                    audience: vec!["a".into()],
                    spiffe_id: String::new(),
                },
                value,
            ))
            .await
            .map(drop)
            .unwrap_err(),
            c.fetch_jwt_bundles(request(JwtBundlesRequest {}, value))
                .await
                .map(drop)
                .unwrap_err(),
            c.validate_jwtsvid(request(
                ValidateJwtsvidRequest {
                    audience: "a".into(),
                    svid: "x".into(),
                },
                value,
            ))
            .await
            .map(drop)
            .unwrap_err(),
            c.fetch_witsvid(request(WitsvidRequest::default(), value))
                .await
                .map(drop)
                .unwrap_err(),
            c.fetch_wit_bundles(request(WitBundlesRequest {}, value))
                .await
                .map(drop)
                .unwrap_err(),
        ];
        for status in codes {
            assert_eq!(status.code(), Code::InvalidArgument, "{value:?}");
            assert_eq!(status.message(), "security header missing from request");
        }
    }
    // With the header, WIT is simply not implemented (Workload API 1.7.12).
    let status = c
        .fetch_witsvid(with_header(WitsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = c
        .fetch_wit_bundles(with_header(WitBundlesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn the_json_view_serves_the_same_content_as_grpc() {
    // CONTRACT "Workload API": same header, attestation and content; the SVID is the cached one.
    let mesh = Mesh::start(default_entries()).await;
    let mut stream = mesh.x509svid_stream().await;
    let grpc = next_msg(&mut stream).await;

    let (code, json) = curl(&mesh.socket, false, true, &[], "/v1/x509-svid").await;
    assert_eq!(code, 200, "{json}");
    let svids = json["svids"].as_array().unwrap();
    // curl is root but not the test binary: `second` (unix:path) is not its identity.
    assert_eq!(svids.len(), 1);
    assert_eq!(grpc.svids.len(), 2);
    for (j, g) in svids.iter().zip(&grpc.svids) {
        assert_eq!(j["spiffe_id"], g.spiffe_id.as_str());
        assert_eq!(j["hint"], g.hint.as_str());
        let cert = rustls_pki_types::CertificateDer::from(g.x509_svid.clone());
        assert_eq!(j["x509_svid_pem"], common::pem(&[cert]));
        let key = j["x509_svid_key_pem"].as_str().unwrap();
        use rustls_pki_types::pem::PemObject as _;
        let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key.as_bytes()).unwrap();
        assert_eq!(key.secret_pkcs8_der(), g.x509_svid_key.as_slice());
        let own: Vec<_> = mesh.own_ca_certs().into_iter().map(Into::into).collect();
        assert_eq!(j["bundle_pem"], common::pem(&own));
        let expires = j["expires_at"].as_str().unwrap();
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            .unwrap();
    }
    let peer_b: Vec<_> = mesh.peer_b_certs().into_iter().map(Into::into).collect();
    assert_eq!(
        json["federated_bundles"],
        serde_json::json!({ "spiffe://mesh-b.test": common::pem(&peer_b) })
    );

    let (code, json) = curl(&mesh.socket, false, true, &[], "/v1/x509-bundles").await;
    assert_eq!(code, 200);
    let own: Vec<_> = mesh.own_ca_certs().into_iter().map(Into::into).collect();
    assert_eq!(
        json,
        serde_json::json!({ "bundles": {
            "spiffe://mesh-a.test": common::pem(&own),
            "spiffe://mesh-b.test": common::pem(&peer_b),
        }})
    );

    let (code, json) = curl(&mesh.socket, false, false, &[], "/v1/x509-svid").await;
    assert_eq!(
        (code, json),
        (
            400,
            serde_json::json!({"error": "security header missing from request"})
        )
    );
    let (code, _) = curl(&mesh.socket, false, true, &[], "/v1/other").await;
    assert_eq!(code, 404);
    let (code, _) = curl(&mesh.socket, false, true, &["-X", "POST"], "/v1/x509-svid").await;
    assert_eq!(code, 405);
}

#[tokio::test]
async fn another_uid_gets_permission_denied_or_its_own_path_bound_identity() {
    // Workload Endpoint 1.6.6-1.6.7: kernel attestation; no entry = PermissionDenied / 403.
    // Runs clients as another uid with setpriv.
    if !common::daemon::root_or_skip(
        "another_uid_gets_permission_denied_or_its_own_path_bound_identity",
    ) {
        return;
    }
    let mut entries = default_entries();
    entries.push(entry(
        "spiffe://mesh-a.test/curl",
        vec![Selector::Uid(65534), Selector::Path(curl_program())],
        &["*"],
        "curl",
    ));
    entries.push(entry(
        "spiffe://mesh-a.test/not-curl",
        vec![
            Selector::Uid(65534),
            Selector::Path("/usr/bin/false".into()),
        ],
        &[],
        "",
    ));
    let mesh = Mesh::start(entries).await;

    // curl as uid 65534 matches the uid+path entry only: its SVID, all peers (`*`).
    let (code, json) = curl(&mesh.socket, true, true, &[], "/v1/x509-svid").await;
    assert_eq!(code, 200, "{json}");
    let ids: Vec<_> = json["svids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spiffe_id"].clone())
        .collect();
    assert_eq!(ids, ["spiffe://mesh-a.test/curl"]);
    assert_eq!(json["federated_bundles"].as_object().unwrap().len(), 2);

    // The test binary as uid 65534 matches nothing: the spiffe crate sees NoIdentityIssued.
    let out = guard(
        tokio::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_sees_no_identity",
                "--nocapture",
            ])
            .env(CHILD_ENV, mesh.endpoint())
            .output(),
    )
    .await
    .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");

    // And with the uid entry removed, curl is denied too (403 JSON).
    mesh.set_entries(default_entries());
    let (code, json) = curl(&mesh.socket, true, true, &[], "/v1/x509-bundles").await;
    assert_eq!(
        (code, json),
        (403, serde_json::json!({"error": "no identity issued"}))
    );
}

/// Runs only as the child of the test above, as uid 65534.
#[tokio::test]
#[ignore = "child process of another_uid_gets_permission_denied_or_its_own_path_bound_identity"]
async fn child_sees_no_identity() {
    let endpoint = std::env::var(CHILD_ENV).expect("run by the parent test");
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap();
    let err = guard(client.fetch_x509_svid()).await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    // The daemon closes a connection once it has refused its caller (README, limits): the next
    // call goes on a new one (on the same one it races the GOAWAY: cancelled, ten-run loop).
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap();
    let err = guard(client.fetch_jwt_bundles()).await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_socket_is_0777_and_replaces_a_stale_one() {
    // CONTRACT: mode 0777; a socket file left by a crash does not stop a restart.
    let mesh = Mesh::start(default_entries()).await;
    let meta = std::fs::symlink_metadata(&mesh.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    // A socket a live server listens on is never replaced.
    let err = meshtrust::workload_api::bind(&mesh.socket).expect_err("a live socket: refused");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");

    // The crash: a real daemon killed with SIGKILL leaves its socket file behind. (Not a
    // listener of this process: a child that a concurrent test forks holds a copy of this
    // process's descriptors until it execs, and a connect to the "stale" socket would succeed.)
    let dir = tempfile::tempdir().unwrap();
    let config = common::config::DaemonConfig::new("mesh-a.test").write(dir.path());
    let daemon = common::daemon::Proc::serve(&config).await;
    drop(daemon); // SIGKILL, waited for
    let stale = dir.path().join("workload.sock");
    let meta = std::fs::symlink_metadata(&stale).expect("the crash left the socket file");
    assert!(meta.file_type().is_socket());
    let again = meshtrust::workload_api::bind(&stale).expect("a stale socket is replaced");
    let meta = std::fs::symlink_metadata(&stale).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    drop(again);

    let regular = mesh.dir.path().join("file");
    std::fs::write(&regular, "x").unwrap();
    let err = meshtrust::workload_api::bind(&regular).expect_err("not a socket: refused");
    assert_eq!(
        std::fs::read_to_string(&regular).unwrap(),
        "x",
        "never deletes other files ({err})"
    );
}

#[tokio::test]
async fn a_service_without_attestation_answers_unavailable() {
    // Workload Endpoint 1.6.7: Unavailable when the caller cannot be attested (retry).
    use meshtrust::workload_api::WorkloadApiDeps;
    use meshtrust::workload_api::service::WorkloadApi;
    let mesh = Mesh::start(default_entries()).await;
    let deps = WorkloadApiDeps::new(
        mesh.ca.subscribe(),
        mesh.peers.subscribe(),
        default_entries(),
        std::sync::Arc::new(meshtrust::clock::SystemClock),
    );
    let api = WorkloadApi::new(deps, tokio_util::sync::CancellationToken::new());
    let path = mesh.dir.path().join("plain.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api.into_server())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", path.display()))
        .await
        .unwrap();
    let err = guard(client.fetch_x509_svid()).await.unwrap_err();
    use spiffe::transport::{GrpcStatusCode, TransportError};
    assert!(
        matches!(
            &err,
            spiffe::WorkloadApiError::Transport(TransportError::Status(s))
                if s.code() == GrpcStatusCode::Unavailable
        ),
        "{err:?}"
    );
}
