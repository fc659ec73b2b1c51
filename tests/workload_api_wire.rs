//! Wire compatibility of the Workload API as the daemon serves it: the real `meshtrust serve`
//! on a real Unix socket, called by the unmodified `spiffe` crate client (what sidecars and other
//! Rust workloads use) and by our generated client. A denial or an identity can only reach
//! those clients if the service name, the method paths (`/SpiffeWorkloadAPI/FetchX509SVID`, ...)
//! and the message types of our proto match the standard; the header check and the codes are
//! the daemon's own (Workload Endpoint 1.6: InvalidArgument without `workload.spiffe.io: true`,
//! PermissionDenied for a caller with no identity; SPIFFE.md §3.4).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::PathBuf;

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::grpc::{with_header, workload_client};
use meshtrust::workload_api::proto::{WitsvidRequest, X509svidRequest};
use tonic::Code;

/// The daemon's words for "no identity for this caller"; the `spiffe` crate maps
/// PermissionDenied with them to `WorkloadApiError::NoIdentityIssued`.
const NO_IDENTITY: &str = "no identity issued";

const ENTRY_ID: &str = "spiffe://mesh-a.test/wire";

/// A daemon whose one entry is for `uid` (this process's uid: an identity for us; another: none).
async fn daemon(uid: u32) -> (tempfile::TempDir, Proc, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("mesh-a.test")
        .section(&common::config::entry(ENTRY_ID, uid, &[]))
        .write(dir.path());
    let socket = dir.path().join("workload.sock");
    let proc = Proc::serve(&config).await;
    (dir, proc, socket)
}

/// A uid that is not this process's: an entry for it gives this process no identity.
fn other_uid() -> u32 {
    common::own_uid() + 4242
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_crate_client_gets_an_identity_or_no_identity_issued_from_the_daemon() {
    let (_dir, _daemon, socket) = daemon(common::own_uid()).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("spiffe client connects over the unix socket");
    let svid = common::guard(client.fetch_x509_svid()).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ENTRY_ID);

    let (_dir, _daemon, socket) = daemon(other_uid()).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .expect("spiffe client connects over the unix socket");
    let err = common::guard(client.fetch_x509_svid())
        .await
        .expect_err("no entry for this caller");
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "expected PermissionDenied(\"{NO_IDENTITY}\") to surface as NoIdentityIssued, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_client_reaches_the_daemon_and_the_daemon_checks_the_header() {
    let (_dir, _daemon, socket) = daemon(other_uid()).await;
    let mut client = workload_client(&socket).await;

    let status = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("no entry for this caller");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), NO_IDENTITY);

    // The daemon closes a connection after refusing a caller without an entry: each check
    // below opens its own (reusing this one races that close: Cancelled instead of the answer).
    // The daemon's own check of the security header, before anything else.
    let mut client = workload_client(&socket).await;
    let status = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect_err("no security header");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "security header missing from request");

    let mut client = workload_client(&socket).await;
    let status = client
        .fetch_witsvid(with_header(WitsvidRequest::default()))
        .await
        .expect_err("WIT is not served");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // With an identity, the same client gets its X509-SVID over the same method path.
    let (_dir, _daemon, socket) = daemon(common::own_uid()).await;
    let mut client = workload_client(&socket).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = common::grpc::next(&mut stream).await;
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, ENTRY_ID);
}
