//! The one HTTP-over-Unix-socket helper: `curl --unix-socket`, an independent client, against
//! the Workload API's JSON view. A reply always carries curl's outcome: a daemon that is gone
//! fails the test instead of passing a negative check.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use meshtrust::bundle::pem::parse_certs_pem;
use rustls_pki_types::CertificateDer;

/// An HTTP answer: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

fn curl_args(socket: &Path, path: &str, header: bool) -> Vec<String> {
    let mut args = vec![
        "-sS".to_owned(),
        "--max-time".to_owned(),
        "30".to_owned(),
        "-w".to_owned(),
        "\n%{http_code}".to_owned(),
        "--unix-socket".to_owned(),
        socket.display().to_string(),
    ];
    if header {
        args.extend(["-H".to_owned(), "workload.spiffe.io: true".to_owned()]);
    }
    args.push(format!("http://localhost{path}"));
    args
}

fn reply(out: &Output, socket: &Path, path: &str) -> Reply {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {path} on {} failed ({}): {}{text}",
        socket.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap();
    Reply {
        status: code.trim().parse().unwrap(),
        body: body.to_owned(),
    }
}

/// `GET path` on the Workload API JSON view at `socket`, with the security header.
pub fn workload_get(socket: &Path, path: &str) -> Reply {
    let out = Command::new("curl")
        .args(curl_args(socket, path, true))
        .output()
        .expect("curl is installed");
    reply(&out, socket, path)
}

/// [`workload_get`] without the security header.
pub fn workload_get_without_header(socket: &Path, path: &str) -> Reply {
    let out = Command::new("curl")
        .args(curl_args(socket, path, false))
        .output()
        .expect("curl is installed");
    reply(&out, socket, path)
}

/// [`workload_get`] from an async test (the curl child does not block a runtime worker).
pub async fn workload_get_async(socket: &Path, path: &str) -> Reply {
    let out = tokio::process::Command::new("curl")
        .args(curl_args(socket, path, true))
        .kill_on_drop(true)
        .output();
    let out = super::guard(out).await.expect("curl is installed");
    reply(&out, socket, path)
}

/// The X.509 bundles of `GET /v1/x509-bundles` (which must answer 200), by trust domain ID.
pub fn parse_x509_bundles(reply: &Reply) -> BTreeMap<String, Vec<CertificateDer<'static>>> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    doc["bundles"]
        .as_object()
        .unwrap_or_else(|| panic!("no bundles in {doc}"))
        .iter()
        .map(|(td, pem)| {
            let certs = parse_certs_pem(pem.as_str().unwrap().as_bytes()).unwrap();
            (td.clone(), certs)
        })
        .collect()
}

/// The bundles served at `socket` right now.
pub async fn x509_bundles(socket: &Path) -> BTreeMap<String, Vec<CertificateDer<'static>>> {
    parse_x509_bundles(&workload_get_async(socket, "/v1/x509-bundles").await)
}
