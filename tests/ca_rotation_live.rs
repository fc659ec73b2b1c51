//! A CA rotation as users see it on a running `meshtrust serve` (the real binary, the real
//! clock, a 30 s CA): the bundle endpoint publishes the prepared CA next to the signing one, then
//! drops the old one, and an open FetchX509Bundles stream and an open FetchX509SVID stream
//! receive each step (CONTRACT.md "CA"; Federation 1.5.2: a new CA is published before it
//! signs; Workload API 1.7.3: changes are pushed on open streams). Each step is an event waited
//! for under the hang guard; the 30 s TTL only sets how soon the steps come.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::config::DaemonConfig;
use common::daemon::Proc;
use common::grpc::{next, x509_bundles, x509_svids};
use common::split_der;

const OWN: &str = "spiffe://mesh-a.test";

/// The bundle the endpoint serves (`curl -k`: an independent client; the https_spiffe check
/// of the endpoint is tested elsewhere): its X.509 authorities (DER) and its sequence.
fn served(addr: SocketAddr) -> (Vec<Vec<u8>>, u64) {
    use base64::Engine as _;
    let out = Command::new("curl")
        .args(["-sSk", "--fail-with-body", "--max-time", "30"])
        .arg(format!("https://{addr}/"))
        .output()
        .expect("curl is installed");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let certs = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k["x5c"][0].as_str().unwrap())
                .unwrap()
        })
        .collect();
    (certs, doc["spiffe_sequence"].as_u64().unwrap())
}

/// The bundle endpoint's address, from the ready line.
fn endpoint_addr(daemon: &Proc) -> SocketAddr {
    let log = daemon.log();
    log.split("bundle_endpoint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the ready line names the endpoint's address: {log}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_the_bundle_endpoint_and_open_workload_streams() {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("mesh-a.test")
        .ca("ca_ttl = \"30s\"\nx509_svid_ttl = \"10s\"\njwt_svid_ttl = \"10s\"")
        .bundle_endpoint(0, "1s")
        .entry("spiffe://mesh-a.test/rotating", &[])
        .write(dir.path());
    let daemon = Proc::serve(&config).await;
    let addr = endpoint_addr(&daemon);
    let socket = dir.path().join("workload.sock");
    let mut bundles = x509_bundles(&socket).await;
    let mut svids = x509_svids(&socket).await;

    let first = split_der(&next(&mut bundles).await.bundles[OWN]);
    assert_eq!(first.len(), 1, "one CA at first");
    let old = first[0].clone();
    let (at_start, seq_start) = served(addr);
    assert_eq!(at_start, first, "the endpoint and the stream agree");
    let svid = next(&mut svids).await;
    assert_eq!(split_der(&svid.svids[0].bundle), first);

    // Half-life: the prepared CA is published next to the signing one, on the open stream...
    let both = loop {
        let cas = split_der(&next(&mut bundles).await.bundles[OWN]);
        assert!(
            cas.contains(&old),
            "the old CA stays until its successor signs"
        );
        if cas.len() == 2 {
            break cas;
        }
    };
    let new = both.iter().find(|c| **c != old).unwrap().clone();
    // ... and on the endpoint, with a higher sequence.
    common::eventually("the endpoint publishes the prepared CA", || {
        served(addr).0 == both
    })
    .await;
    assert!(served(addr).1 > seq_start);

    // The old CA leaves the bundle once the new one signs and the old one's SVIDs expired.
    loop {
        let cas = split_der(&next(&mut bundles).await.bundles[OWN]);
        assert!(cas.contains(&new), "the new CA stays: {}", cas.len());
        if !cas.contains(&old) {
            break;
        }
    }
    common::eventually("the endpoint drops the old CA", || {
        !served(addr).0.contains(&old)
    })
    .await;
    // The SVID stream followed: its latest message carries a bundle without the old CA.
    loop {
        let msg = next(&mut svids).await;
        let cas = split_der(&msg.svids[0].bundle);
        if !cas.contains(&old) {
            assert!(cas.contains(&new), "{}", cas.len());
            break;
        }
    }
    assert_eq!(daemon.stop().code(), Some(0));
}
