//! Building a relationship's HTTPS client from its config: the endpoint's roots (bootstrap
//! bundle, pinned bundle or our own CA) for `https_spiffe`, the CA file for `https_web`. Done at
//! start and again when an operator resets the relationship (the bootstrap bundle is re-read
//! from disk then, so a peer that lost its state can be re-bootstrapped with its new bundle).

use std::path::Path;
use std::sync::Arc;

use super::FetcherError;
use crate::bundle::{TrustBundle, pem};
use crate::config::{FederationConfig, PeerProfile};
use crate::federation::client::{FetchLimits, PeerClient};
use crate::federation::pinned::PeerStore;
use crate::federation::verifier::{EndpointRoots, OwnRoots, SpiffeEndpointVerifier};
use crate::spiffe_id::TrustDomain;

/// Why the client is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// At start: a bad bootstrap bundle is tolerated when a bundle is pinned.
    Start,
    /// Before an operator reset: the peer's own pinned bundle is about to be forgotten, so it
    /// cannot stand in for a bad bootstrap bundle.
    Reset,
    /// The fetch of a reset (not forced): the peer's own pinned bundle is ignored, the
    /// bootstrap bundle alone authenticates the endpoint.
    ResetProbe,
}

/// The client for `peer`.
///
/// # Errors
/// [`FetcherError`] for a bootstrap bundle or CA file that cannot be used, or a client that
/// cannot be built.
pub(super) fn build_client(
    peer: &FederationConfig,
    store: &PeerStore,
    own_roots: &OwnRoots,
    limits: FetchLimits,
    purpose: Purpose,
) -> Result<PeerClient, FetcherError> {
    let td = peer.trust_domain.clone();
    let client_err = |source| FetcherError::Client {
        trust_domain: td.clone(),
        source,
    };
    match &peer.profile {
        PeerProfile::HttpsSpiffe {
            endpoint_spiffe_id,
            bootstrap_bundle,
        } => {
            let id_td = endpoint_spiffe_id.trust_domain();
            let roots = if id_td == own_roots.trust_domain() {
                if bootstrap_bundle.is_some() && purpose == Purpose::Start {
                    tracing::warn!(peer = %td, "bootstrap_bundle ignored: the endpoint ID is in our own trust domain");
                }
                EndpointRoots::Own(own_roots.clone())
            } else {
                let resetting = purpose != Purpose::Start && id_td == &td;
                // What stays pinned for the endpoint ID's trust domain once this is in force.
                let pinned = store.get(id_td).is_some() && !resetting;
                let bootstrap = match bootstrap_bundle {
                    Some(file) => read_bootstrap(&td, id_td, file, pinned)?,
                    None => None,
                };
                if bootstrap.is_none() && !pinned && id_td == &td && purpose == Purpose::Start {
                    tracing::warn!(peer = %td, "no bootstrap bundle and nothing pinned: fetches fail until a bundle is pinned");
                }
                // The probe of a reset sees no pinned bundle of the peer: the bootstrap bundle
                // alone authenticates the endpoint (a sender dropped at once keeps its value).
                let pinned = if purpose == Purpose::ResetProbe && resetting {
                    tokio::sync::watch::channel(Arc::default()).1
                } else {
                    store.subscribe()
                };
                EndpointRoots::Peer {
                    trust_domain: id_td.clone(),
                    pinned,
                    bootstrap,
                }
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = SpiffeEndpointVerifier::new(endpoint_spiffe_id.clone(), roots, provider);
            PeerClient::https_spiffe(td.clone(), peer.url.clone(), verifier, limits)
                .map_err(client_err)
        }
        PeerProfile::HttpsWeb { ca_file } => {
            let roots = ca_file
                .as_ref()
                .map(|file| {
                    std::fs::read(file)
                        .map_err(|e| e.to_string())
                        .and_then(|pem| pem::parse_certs_pem(&pem).map_err(|e| e.to_string()))
                        .map_err(|reason| FetcherError::CaFile {
                            trust_domain: td.clone(),
                            file: file.clone(),
                            reason,
                        })
                })
                .transpose()?;
            PeerClient::https_web(td.clone(), peer.url.clone(), roots, limits).map_err(client_err)
        }
    }
}

/// Reads a bootstrap bundle for the endpoint ID's trust domain `id_td`. A missing or bad file is
/// an error, unless a bundle of `id_td` stays `pinned` (the bootstrap is only needed until then):
/// that case is logged and the relationship runs on the pinned bundle.
fn read_bootstrap(
    peer: &TrustDomain,
    id_td: &TrustDomain,
    file: &Path,
    pinned: bool,
) -> Result<Option<Arc<TrustBundle>>, FetcherError> {
    match read_bootstrap_bundle(id_td, file) {
        Ok(bundle) => Ok(Some(Arc::new(bundle))),
        Err(reason) if pinned => {
            tracing::warn!(peer = %peer, file = %file.display(), %reason, "bootstrap bundle unreadable; using the pinned bundle");
            Ok(None)
        }
        Err(reason) => Err(FetcherError::Bootstrap {
            trust_domain: peer.clone(),
            file: file.to_owned(),
            reason,
        }),
    }
}

/// Reads and checks a bootstrap bundle for the endpoint ID's trust domain `id_td`: the file
/// exists, parses (SPIFFE bundle JSON or PEM), and none of its CAs names another trust domain in
/// its URI SAN (a bundle handed over by the wrong mesh is caught here, not as an `UnknownIssuer`
/// at every fetch). `meshtrust check-config --strict` runs the same check.
///
/// # Errors
/// What is wrong, in words.
pub fn read_bootstrap_bundle(id_td: &TrustDomain, file: &Path) -> Result<TrustBundle, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let bundle = pem::parse_bootstrap(id_td, &bytes).map_err(|e| e.to_string())?;
    for cert in &bundle.x509_authorities {
        for other in ca_trust_domains(cert) {
            if &other != id_td {
                return Err(format!(
                    "it holds a CA of another trust domain: is this {other}'s bundle? its CA is \
                     spiffe://{other}, and {id_td}'s endpoint must be authenticated by \
                     {id_td}'s CA (hand over `meshtrust bundle show` of {id_td}'s daemon)"
                ));
            }
        }
    }
    Ok(bundle)
}

/// The trust domains a CA certificate names in its `spiffe://` URI SANs.
fn ca_trust_domains(der: &[u8]) -> Vec<TrustDomain> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                crate::spiffe_id::SpiffeId::new(uri)
                    .ok()
                    .map(|id| id.trust_domain().clone())
            }
            _ => None,
        })
        .collect()
}
