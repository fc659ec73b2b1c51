//! `meshtrust federation join TOKEN`: the first contact with a peer, authenticated by its invite
//! token (see [`invite`](super::invite) for what the token authenticates).
//!
//! 1. The token is decoded and checked (format, trust domain, expiry) before any network access.
//! 2. First fetch: the endpoint must present an X509-SVID for the token's endpoint SPIFFE ID
//!    (the X509-SVID profile checks of [`check_leaf`]), but its chain cannot be checked yet: the
//!    roots are what is being fetched. The bundle received is only a candidate.
//! 3. The candidate is accepted only if the SHA-256 of its X.509 authorities equals the token's.
//! 4. Second fetch, through the daemon's own `https_spiffe` client and verifier with the
//!    candidate as the bootstrap bundle: the endpoint's SVID must chain to those authorities.
//!    Its bundle must have the same digest (a rotation in between is refused: ask again).
//! 5. Only then is anything written: the bundle (0644, atomically, never over an existing file)
//!    and, with `--write`, the config (atomically, keeping its mode), after checking that the
//!    new config text is valid. A failure writes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, OtherError};

use super::client::{FetchError, FetchLimits, PeerClient};
use super::invite::{Invite, InviteError, authorities_digest};
use super::pinned::PeerBundles;
use super::verifier::{EndpointRoots, SpiffeEndpointVerifier, check_leaf};
use crate::bundle::TrustBundle;
use crate::config::Config;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Why a join was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token itself.
    #[error(transparent)]
    Invite(#[from] InviteError),
    /// The first fetch failed (unreachable, wrong endpoint ID, not a bundle...).
    #[error("fetching {trust_domain}'s bundle from {url}: {source}")]
    Fetch {
        /// The token's trust domain.
        trust_domain: TrustDomain,
        /// The token's URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<FetchError>,
    },
    /// The bundle served is not the one the token commits to.
    #[error(
        "the bundle served at {url} does not match the invite: its CA certificates hash to {got}, the token says {expected}. The token was edited, points at another server, or {trust_domain} changed CAs since it was made: ask for a new invite"
    )]
    DigestMismatch {
        /// The token's trust domain.
        trust_domain: TrustDomain,
        /// The token's URL.
        url: String,
        /// The token's digest.
        expected: String,
        /// The fetched bundle's.
        got: String,
    },
    /// The endpoint did not prove an SVID chaining to the bundle the token commits to.
    #[error(
        "{url} serves the bundle the invite names, but could not prove it is {endpoint}: {source}"
    )]
    Unproven {
        /// The token's URL.
        url: String,
        /// The token's endpoint ID.
        endpoint: SpiffeId,
        /// The cause.
        #[source]
        source: Box<FetchError>,
    },
    /// The invite is for our own trust domain.
    #[error("the invite is for {0}, this config's own trust domain")]
    OwnTrustDomain(TrustDomain),
    /// `--write` for a peer the config already has.
    #[error(
        "{file} already federates with {trust_domain}; nothing written (remove its [[federation]] block first to join again)"
    )]
    AlreadyPeer {
        /// The config file.
        file: String,
        /// The peer.
        trust_domain: TrustDomain,
    },
    /// The config file does not load now, or would not after the change.
    #[error("{0}")]
    Config(String),
    /// `--bootstrap-out` exists.
    #[error("{0} exists; nothing written (remove it or choose another --bootstrap-out)")]
    Exists(String),
    /// Writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JoinError {
    let what = what.into();
    move |source| JoinError::Io { what, source }
}

/// The first fetch's verifier: the leaf must be an X509-SVID for `endpoint_id`; its chain is
/// not checked, because the roots are what is being fetched. What it lets through is only a
/// candidate, accepted once its digest matches the token and a second fetch, verified with
/// [`SpiffeEndpointVerifier`], proves the endpoint.
#[derive(Debug)]
struct FirstContactVerifier {
    endpoint_id: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FirstContactVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_leaf(end_entity, &self.endpoint_id).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    crate::tls_signatures::provider_signature_checks!(provider);
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Fetches the invite's bundle and authenticates it and its endpoint (steps 2-4 above).
///
/// # Errors
/// [`JoinError`]: the bundle was not accepted.
pub async fn fetch_verified(
    invite: &Invite,
    limits: FetchLimits,
) -> Result<TrustBundle, JoinError> {
    let td = &invite.trust_domain;
    let url = invite.url.to_string();
    let fetch_err = |source| JoinError::Fetch {
        trust_domain: td.clone(),
        url: url.clone(),
        source: Box::new(source),
    };
    let first = PeerClient::with_verifier(
        td.clone(),
        invite.url.clone(),
        Arc::new(FirstContactVerifier {
            endpoint_id: invite.endpoint_spiffe_id.clone(),
            provider: provider(),
        }),
        limits,
    )
    .map_err(fetch_err)?
    .fetch()
    .await
    .map_err(fetch_err)?;
    let mismatch = |got: String| JoinError::DigestMismatch {
        trust_domain: td.clone(),
        url: url.clone(),
        expected: invite.x509_authorities_sha256.clone(),
        got,
    };
    let got = authorities_digest(&first.parsed.bundle.x509_authorities);
    if got != invite.x509_authorities_sha256 {
        return Err(mismatch(got));
    }
    // Nothing pinned: the candidate, now authenticated by the token, is the only root.
    let (_, pinned) = tokio::sync::watch::channel(Arc::new(PeerBundles::new()));
    let roots = EndpointRoots::Peer {
        trust_domain: td.clone(),
        pinned,
        bootstrap: Some(Arc::new(first.parsed.bundle)),
    };
    let verifier =
        SpiffeEndpointVerifier::new(invite.endpoint_spiffe_id.clone(), roots, provider());
    let unproven = |source| JoinError::Unproven {
        url: url.clone(),
        endpoint: invite.endpoint_spiffe_id.clone(),
        source: Box::new(source),
    };
    let second = PeerClient::https_spiffe(td.clone(), invite.url.clone(), verifier, limits)
        .map_err(fetch_err)?
        .fetch()
        .await
        .map_err(unproven)?;
    let got = authorities_digest(&second.parsed.bundle.x509_authorities);
    if got != invite.x509_authorities_sha256 {
        return Err(mismatch(got));
    }
    Ok(second.parsed.bundle)
}

/// What `join` was asked to do.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The token as pasted.
    pub token: String,
    /// Where the bundle goes (must not exist).
    pub bootstrap_out: PathBuf,
    /// The config the block is for (paths in it are made relative to its folder).
    pub config: Option<PathBuf>,
    /// Append the block to `config`.
    pub write: bool,
}

/// What a join did.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The accepted invite.
    pub invite: Invite,
    /// The pinned-to-be bundle.
    pub bundle: TrustBundle,
    /// Where it was written.
    pub bootstrap_out: PathBuf,
    /// The `[[federation]]` block.
    pub block: String,
    /// The config file it was appended to (`--write`).
    pub appended_to: Option<PathBuf>,
}

/// The `[[federation]]` block for `invite`, its bootstrap bundle at `bootstrap`.
pub fn federation_block(invite: &Invite, bootstrap: &str, now: SystemTime) -> String {
    format!(
        "# Added by `meshtrust federation join` on {date}: invite from {td}, CA certificates sha256 {digest}.\n\
         [[federation]]\n\
         trust_domain = \"{td}\"\n\
         bundle_endpoint_url = \"{url}\"\n\
         profile = \"https_spiffe\"\n\
         endpoint_spiffe_id = \"{id}\"\n\
         bootstrap_bundle = {bootstrap}\n",
        date = crate::clock::rfc3339(now),
        td = invite.trust_domain,
        digest = invite.x509_authorities_sha256,
        url = invite.url,
        id = invite.endpoint_spiffe_id,
        // A TOML basic string with any character escaped as needed.
        bootstrap = toml::Value::String(bootstrap.to_owned()),
    )
}

/// The bootstrap path as the config should name it: relative to the config's folder when the
/// file is inside it, else absolute.
fn config_path_for(bootstrap: &Path, config: Option<&Path>) -> Result<String, JoinError> {
    let abs = std::path::absolute(bootstrap).map_err(io("resolving --bootstrap-out"))?;
    if let Some(dir) = config.and_then(Path::parent) {
        let dir = std::path::absolute(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map_err(io("resolving the config's folder"))?;
        if let Ok(rel) = abs.strip_prefix(&dir) {
            return Ok(rel.display().to_string());
        }
    }
    Ok(abs.display().to_string())
}

/// Writes `bytes` to `path` atomically with `mode`: a temp file beside it, renamed into place;
/// with `replace == false` the rename refuses an existing file (never followed if a symlink).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), JoinError> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display().to_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".meshtrust-join-")
        .tempfile_in(dir)
        .map_err(io(format!("creating a temp file beside {shown}")))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io(format!("writing {shown}")))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {shown}")))?;
    let persisted = if replace {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            JoinError::Exists(shown.clone())
        } else {
            JoinError::Io {
                what: format!("writing {shown}"),
                source: e.error,
            }
        }
    })
}

/// Runs a join: checks, fetches, verifies, then writes (see the module docs).
///
/// # Errors
/// [`JoinError`]; nothing was written then.
pub async fn join(
    req: &JoinRequest,
    limits: FetchLimits,
    now: SystemTime,
) -> Result<Joined, JoinError> {
    let invite = Invite::decode(&req.token, now)?;
    let config = match &req.config {
        Some(path) => {
            let config = Config::load(path)
                .map_err(|e| JoinError::Config(format!("{e} (fix the config before joining)")))?;
            if config.trust_domain == invite.trust_domain {
                return Err(JoinError::OwnTrustDomain(invite.trust_domain));
            }
            if req.write && config.peer(&invite.trust_domain).is_some() {
                return Err(JoinError::AlreadyPeer {
                    file: path.display().to_string(),
                    trust_domain: invite.trust_domain,
                });
            }
            Some(path.as_path())
        }
        None => None,
    };
    if std::fs::symlink_metadata(&req.bootstrap_out).is_ok() {
        return Err(JoinError::Exists(req.bootstrap_out.display().to_string()));
    }
    let bundle = fetch_verified(&invite, limits).await?;
    let json = crate::bundle::jwks::to_json(&bundle)
        .map_err(|e| JoinError::Config(format!("cannot write the fetched bundle: {e}")))?;
    let block = federation_block(&invite, &config_path_for(&req.bootstrap_out, config)?, now);
    // The new config text is checked before anything is written.
    let new_config = match (req.write, config) {
        (true, Some(path)) => {
            let old =
                std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
            let sep = if old.is_empty() || old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            let text = format!("{old}{sep}{block}");
            Config::from_toml(&text, path).map_err(|e| {
                JoinError::Config(format!(
                    "the config with the new [[federation]] block would not load: {e}"
                ))
            })?;
            Some((path, text))
        }
        _ => None,
    };
    write_atomic(&req.bootstrap_out, &json, 0o644, false)?;
    if let Some((path, text)) = &new_config {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
        if let Err(e) = write_atomic(path, text.as_bytes(), mode, true) {
            let _ = std::fs::remove_file(&req.bootstrap_out);
            return Err(e);
        }
    }
    Ok(Joined {
        invite,
        bundle,
        bootstrap_out: req.bootstrap_out.clone(),
        block,
        appended_to: new_config.map(|(p, _)| p.to_owned()),
    })
}
