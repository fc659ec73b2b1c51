//! The one HTTP-over-Unix-socket helper: `curl --unix-socket`, an independent client, against
//! the Workload API's JSON view. A reply always carries curl's outcome: a daemon that is gone
//! fails the test instead of passing a negative check.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use meshtrust::bundle::pem::parse_certs_pem;
use rustls_pki_types::CertificateDer;

/// An HTTP answer: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// curl itself, resolved (what a `unix:path` selector for curl names).
pub fn curl_program() -> PathBuf {
    std::fs::canonicalize("/usr/bin/curl").expect("curl is installed")
}

/// One curl request on the Workload API socket.
#[derive(Debug, Clone)]
pub struct Curl<'a> {
    socket: &'a Path,
    path: &'a str,
    header: bool,
    extra: Vec<&'a str>,
    as_uid: Option<u32>,
}

impl<'a> Curl<'a> {
    /// `GET path` on `socket`, with the security header, as this process.
    pub fn get(socket: &'a Path, path: &'a str) -> Self {
        Self {
            socket,
            path,
            header: true,
            extra: Vec::new(),
            as_uid: None,
        }
    }

    /// Without the security header.
    pub fn without_header(mut self) -> Self {
        self.header = false;
        self
    }

    /// More curl arguments (`-X POST`, ...).
    pub fn args(mut self, extra: &[&'a str]) -> Self {
        self.extra.extend_from_slice(extra);
        self
    }

    /// Run as `uid` (gid the same, no groups) with setpriv: needs root.
    pub fn run_as(mut self, uid: u32) -> Self {
        self.as_uid = Some(uid);
        self
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = match self.as_uid {
            Some(uid) => {
                let mut c = tokio::process::Command::new("setpriv");
                let id = uid.to_string();
                c.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
                    .arg(curl_program());
                c
            }
            None => tokio::process::Command::new(curl_program()),
        };
        cmd.args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(self.socket)
        .args(&self.extra);
        if self.header {
            cmd.args(["-H", "workload.spiffe.io: true"]);
        }
        cmd.arg(format!("http://localhost{}", self.path))
            .kill_on_drop(true);
        cmd
    }

    fn reply(&self, out: &Output) -> Reply {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {} on {} failed ({}): {}{text}",
            self.path,
            self.socket.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, code) = text.rsplit_once('\n').unwrap();
        Reply {
            status: code.trim().parse().unwrap(),
            body: body.to_owned(),
        }
    }

    /// Runs it from an async test, under the hang guard.
    pub async fn send(&self) -> Reply {
        let out = super::guard(self.command().output()).await.unwrap();
        self.reply(&out)
    }

    /// Runs it from a test without a runtime.
    pub fn send_blocking(&self) -> Reply {
        let out = self.command().into_std().output().unwrap();
        self.reply(&out)
    }
}

/// `GET path` on the Workload API JSON view at `socket`, with the security header.
pub fn workload_get(socket: &Path, path: &str) -> Reply {
    Curl::get(socket, path).send_blocking()
}

/// [`workload_get`] from an async test (the curl child does not block a runtime worker).
pub async fn workload_get_async(socket: &Path, path: &str) -> Reply {
    Curl::get(socket, path).send().await
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

/// `curl ARGS` (any URL, e.g. `-k https://...`): the HTTP status it printed, 0 when there was
/// no HTTP answer (a TLS port spoken to in plain HTTP, say).
pub fn curl_status(args: &[&str]) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The body `curl -sk URL` received with a 200 (any server certificate accepted: for comparing
/// what several servers serve), `None` otherwise.
pub fn curl_body_insecure(url: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("curl")
        .args(["-sk", "--fail", "--max-time", "10", url])
        .output()
        .expect("curl runs");
    out.status.success().then_some(out.stdout)
}
