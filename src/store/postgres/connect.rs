//! The PostgreSQL URL and TLS: libpq's URL form, with `sslmode` `disable` or `verify-full`.
//!
//! tokio-postgres knows neither `verify-full` nor `sslrootcert`, so they are taken out of the
//! URL here: `verify-full` becomes TLS required, authenticated by rustls (ring) against the CA
//! file (`sslrootcert=` in the URL or `[store] ca_file`) with the host name checked. Modes that
//! encrypt without authenticating the server (`allow`, `prefer`, `require`, `verify-ca`) are
//! refused: a password sent to whoever answers is not protected. Without `sslmode`, plain TCP
//! is allowed only to a loopback address or a Unix socket.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// How long connecting may take before the store counts as unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A checked connection target.
#[derive(Clone)]
pub struct ConnectOptions {
    /// For tokio-postgres (TLS mode set, our parameters taken out).
    pub config: tokio_postgres::Config,
    /// The roots for `verify-full`; `None` for plain connections.
    pub ca_file: Option<PathBuf>,
    /// The URL with its password replaced, for messages.
    pub redacted: String,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &self.redacted)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`, for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable url)".to_owned(),
    }
}

impl ConnectOptions {
    /// Checks `url` (`postgres://` or `postgresql://`) and its TLS settings; `ca_file` is
    /// `[store] ca_file`. Reads no file.
    ///
    /// # Errors
    /// [`StoreError::Config`] naming what is wrong (never the password).
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let bad = |m: String| StoreError::Config(m);
        let mut parsed = url::Url::parse(url.trim())
            .map_err(|e| bad(format!("not a URL ({e}): {}", redact_url(url))))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad(format!(
                "scheme {:?}: expected postgres:// or postgresql://",
                parsed.scheme()
            )));
        }
        let mut sslmode = None;
        let mut rootcert = None;
        let mut kept = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match &*k {
                "sslmode" => sslmode = Some(v.into_owned()),
                "sslrootcert" => rootcert = Some(PathBuf::from(v.into_owned())),
                _ => kept.push((k.into_owned(), v.into_owned())),
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let redacted = redact_url(parsed.as_str());
        let mut config = tokio_postgres::Config::from_str(parsed.as_str())
            .map_err(|e| bad(format!("{redacted}: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("meshtrust");
        let ca = ca_file.map(Path::to_path_buf).or(rootcert);
        let ca_file = match sslmode.as_deref() {
            Some("verify-full") => {
                let Some(ca) = ca else {
                    return Err(bad(
                        "sslmode=verify-full needs the server's CA: [store] ca_file or sslrootcert= in the URL"
                            .to_owned(),
                    ));
                };
                config.ssl_mode(SslMode::Require);
                Some(ca)
            }
            Some("disable") => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            None => {
                if let Some(host) = config.get_hosts().iter().find(|h| !is_local(h)) {
                    return Err(bad(format!(
                        "host {} is not local: set sslmode=verify-full (with a CA file), or \
                         sslmode=disable to send credentials in clear on purpose",
                        host_name(host)
                    )));
                }
                config.ssl_mode(SslMode::Disable);
                None
            }
            Some(other) => {
                return Err(bad(format!(
                    "sslmode={other} does not authenticate the server: use verify-full (or disable)"
                )));
            }
        };
        Ok(Self {
            config,
            ca_file,
            redacted,
        })
    }

    /// The rustls connector (ring provider): the CA file's roots, or none for a plain
    /// connection (tokio-postgres then never starts TLS).
    ///
    /// # Errors
    /// [`StoreError::Config`] when the CA file cannot be read or holds no certificate.
    pub fn tls(&self) -> Result<MakeRustlsConnect, StoreError> {
        let mut roots = RootCertStore::empty();
        if let Some(path) = &self.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Config(format!(
                    "{}: no CA certificate",
                    path.display()
                )));
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost" || IpAddr::from_str(name).is_ok_and(|ip| ip.is_loopback())
        }
    }
}

fn host_name(host: &Host) -> String {
    match host {
        Host::Unix(p) => p.display().to_string(),
        Host::Tcp(name) => name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match ConnectOptions::parse(url, None) {
            Ok(_) => panic!("{url} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn verify_full_needs_a_ca_and_requires_tls() {
        assert!(err("postgres://u@db.example:5432/m?sslmode=verify-full").contains("ca_file"));
        let o = ConnectOptions::parse(
            "postgres://u:pw@db.example/m?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(o.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert!(!o.redacted.contains("pw"), "{}", o.redacted);
    }

    #[test]
    fn unauthenticated_tls_and_remote_plain_text_are_refused() {
        for mode in ["require", "prefer", "allow", "verify-ca"] {
            let e = err(&format!("postgres://u@db.example/m?sslmode={mode}"));
            assert!(e.contains("does not authenticate"), "{e}");
        }
        assert!(err("postgres://u@db.example/m").contains("not local"));
        assert!(err("mysql://u@localhost/m").contains("scheme"));
    }

    #[test]
    fn local_plain_text_is_allowed_and_the_password_never_shows() {
        let o = ConnectOptions::parse("postgres://u:s3cret@127.0.0.1:5/m", None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.config.get_ssl_mode(), SslMode::Disable);
        assert!(!format!("{o:?}").contains("s3cret"));
        assert!(!redact_url("postgres://u:s3cret@h/m").contains("s3cret"));
    }
}
