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
                // What stays pinned for the endpoint ID's trust domain once this is in force.
                let pinned =
                    store.get(id_td).is_some() && !(purpose == Purpose::Reset && id_td == &td);
                let bootstrap = match bootstrap_bundle {
                    Some(file) => read_bootstrap(&td, id_td, file, pinned)?,
                    None => None,
                };
                if bootstrap.is_none() && !pinned && id_td == &td {
                    tracing::warn!(peer = %td, "no bootstrap bundle and nothing pinned: fetches fail until a bundle is pinned");
                }
                EndpointRoots::Peer {
                    trust_domain: id_td.clone(),
                    pinned: store.subscribe(),
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
    let read = std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| pem::parse_bootstrap(id_td, &bytes).map_err(|e| e.to_string()));
    match read {
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
