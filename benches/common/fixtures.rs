//! Certificates and config files for the benches, written into a temp dir.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshtrust::bundle::{TrustBundle, jwks};
use meshtrust::spiffe_id::TrustDomain;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::CertificateDer;

/// A Web PKI style server certificate: an ECDSA P-256 leaf for `localhost` and `127.0.0.1`,
/// signed by an ECDSA P-256 root. Both servers under comparison present exactly these files.
#[derive(Debug, Clone)]
pub struct WebCert {
    /// The leaf alone, PEM (the root is the client's trust anchor, as on the web).
    pub cert_pem: PathBuf,
    /// The leaf's PKCS#8 PEM key.
    pub key_pem: PathBuf,
    /// The root, PEM: what a client trusts (`ca_file`).
    pub ca_pem: PathBuf,
}

pub fn web_cert(dir: &Path) -> WebCert {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.distinguished_name
        .push(DnType::CommonName, "meshtrust bench root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root, root_key);

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let out = WebCert {
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
        ca_pem: dir.join("root.pem"),
    };
    std::fs::write(&out.cert_pem, leaf_cert.pem()).unwrap();
    std::fs::write(&out.key_pem, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&out.ca_pem, root_cert.pem()).unwrap();
    out
}

/// A SPIFFE bundle document for `td` with one fresh self-signed CA: what a peer publishes.
pub fn peer_bundle_json(td: &str, sequence: u64, refresh_hint: Duration) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, td);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(
        rcgen::string::Ia5String::try_from(format!("spiffe://{td}")).unwrap(),
    )];
    let cert = params.self_signed(&key).unwrap();
    let bundle = TrustBundle {
        trust_domain: TrustDomain::new(td).unwrap(),
        x509_authorities: vec![CertificateDer::from(cert.der().to_vec())],
        jwt_authorities: Vec::new(),
        sequence: Some(sequence),
        refresh_hint: Some(refresh_hint),
    };
    jwks::to_json(&bundle).unwrap()
}

/// How the daemon's bundle endpoint presents itself.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `https_web` with these files.
    Web { port: u16, cert: WebCert },
    /// `https_spiffe` with the default endpoint SVID.
    Spiffe { port: u16 },
}

/// A daemon config in `dir`: trust domain `bench.test`, state in `dir/data`, sockets in `dir`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub endpoint: Option<Endpoint>,
    pub metrics_port: Option<u16>,
    /// Appended verbatim: `[[federation]]` blocks.
    pub federation: String,
    /// Entries: `(spiffe id path, selector, federates_with "*"?)`.
    pub entries: Vec<(String, String, bool)>,
}

impl DaemonConfig {
    /// The usual shape: an entry for uid 0 (the benches run as root) receiving every peer.
    pub fn minimal() -> Self {
        Self {
            endpoint: None,
            metrics_port: None,
            federation: String::new(),
            entries: vec![(
                "/bench/workload".to_owned(),
                format!("unix:uid:{}", current_uid()),
                true,
            )],
        }
    }

    /// Writes `dir/meshtrust.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let mut text = String::from("trust_domain = \"bench.test\"\ndata_dir = \"data\"\n");
        match &self.endpoint {
            None => {}
            Some(Endpoint::Web { port, cert }) => {
                let _ = write!(
                    text,
                    "[bundle_endpoint]\nlisten = \"127.0.0.1:{port}\"\nprofile = \"https_web\"\n\
                     cert_file = \"{}\"\nkey_file = \"{}\"\nrefresh_hint = \"5m\"\n",
                    cert.cert_pem.display(),
                    cert.key_pem.display()
                );
            }
            Some(Endpoint::Spiffe { port }) => {
                let _ = write!(
                    text,
                    "[bundle_endpoint]\nlisten = \"127.0.0.1:{port}\"\nrefresh_hint = \"5m\"\n"
                );
            }
        }
        text.push_str("[workload_api]\nsocket = \"workload.sock\"\n");
        text.push_str("[admin_api]\nsocket = \"admin.sock\"\n");
        if let Some(port) = self.metrics_port {
            let _ = write!(text, "[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
        }
        text.push_str(&self.federation);
        for (path, selector, all) in &self.entries {
            let _ = write!(
                text,
                "[[entry]]\nspiffe_id = \"spiffe://bench.test{path}\"\nselectors = [\"{selector}\"]\n"
            );
            if *all {
                text.push_str("federates_with = [\"*\"]\n");
            }
        }
        let path = dir.join("meshtrust.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The uid this process runs as (from /proc, since the crate forbids `unsafe`).
pub fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
