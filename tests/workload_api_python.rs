//! The unmodified Python `spiffe` package (py-spiffe 0.3.2 from PyPI, a grpcio C-core client)
//! against a real daemon: it sends the socket path as `:authority` (DEPENDENCIES.md), fetches the
//! SVID, the bundles and the X.509 context with a federated bundle, and a JWT-SVID validated back
//! through the server (SPIFFE.md §3, WAPI 1.7.x; interop requirement of the Workload API issue).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::eventually;
use common::mesh::Mesh;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_spiffe_package_fetches_svid_bundles_context_and_jwt_unmodified() {
    common::init();
    let Some(python) = common::python::interpreter() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let entry = common::config::entry(
        "spiffe://mesh-a.test/py",
        common::own_uid(),
        &["mesh-b.test"],
    );
    let (mut a, mut b) = Mesh::pair(root.path(), &entry, "", false).await;
    let db = b.start().await;
    let da = a.start().await;
    let td_b = common::td("mesh-b.test");
    eventually("mesh-a pins mesh-b", || da.peers.get(&td_b).is_some()).await;

    let socket = format!("unix://{}", da.workload_socket.display());
    let out = tokio::process::Command::new(&python)
        .arg(common::python::script("fetch.py"))
        .arg(&socket)
        .kill_on_drop(true)
        .output();
    let out = common::guard(out).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["spiffe_id"], "spiffe://mesh-a.test/py");
    assert_eq!(got["chain_len"], 1);
    // Own and federated bundles, each under its own trust domain (TD&B 1.4.1).
    assert_eq!(
        got["bundle_trust_domains"],
        serde_json::json!(["mesh-a.test", "mesh-b.test"])
    );
    assert_eq!(
        got["context_svids"],
        serde_json::json!(["spiffe://mesh-a.test/py"])
    );
    assert_eq!(got["jwt_subject"], "spiffe://mesh-a.test/py");
    assert_eq!(got["validated_subject"], "spiffe://mesh-a.test/py");
    da.shutdown().await;
    db.shutdown().await;
}
