//! `[[federation]]`: one relationship per peer trust domain, everything explicit
//! (SPIFFE.md §1.5 item 7, §2 relationship table).

use std::time::Duration;

use crate::config::duration::format_duration;
use crate::config::{DEFAULT_FEDERATION_MIN_REFRESH_INTERVAL, MAX_FEDERATION_MIN_REFRESH_INTERVAL};
use crate::spiffe_id::{SpiffeId, TrustDomain};

use super::{Cx, Result};
use crate::config::raw::{RawFederation, RawProfile};
use crate::config::{FederationConfig, PeerProfile};

impl Cx<'_> {
    /// `federation_min_refresh_interval`: whole milliseconds from 1s to a day.
    pub(super) fn min_refresh_interval(&self, raw: Option<String>) -> Result<Duration> {
        let key = "federation_min_refresh_interval";
        let value = self.duration(key, raw, DEFAULT_FEDERATION_MIN_REFRESH_INTERVAL)?;
        if value < Duration::from_secs(1) || value > MAX_FEDERATION_MIN_REFRESH_INTERVAL {
            return Err(self.invalid(
                key,
                format!(
                    "must be between 1s and {} (default {}: a peer's spiffe_refresh_hint cannot make us poll more often)",
                    format_duration(MAX_FEDERATION_MIN_REFRESH_INTERVAL),
                    format_duration(DEFAULT_FEDERATION_MIN_REFRESH_INTERVAL),
                ),
            ));
        }
        Ok(value)
    }

    pub(super) fn federation(
        &self,
        raw: Vec<RawFederation>,
        own: &TrustDomain,
    ) -> Result<Vec<FederationConfig>> {
        // First every peer's trust domain: an endpoint ID may name another peer's.
        let mut peers: Vec<TrustDomain> = Vec::with_capacity(raw.len());
        for (i, peer) in raw.iter().enumerate() {
            let key = format!("federation[{i}].trust_domain");
            let td = self.trust_domain(&key, self.required(&key, peer.trust_domain.clone())?)?;
            if &td == own {
                return Err(
                    self.invalid(key, format!("\"{td}\" is this server's own trust domain"))
                );
            }
            if let Some(first) = peers.iter().position(|p| p == &td) {
                return Err(self.invalid(
                    key,
                    format!("\"{td}\" is already configured in federation[{first}]"),
                ));
            }
            peers.push(td);
        }
        raw.into_iter()
            .zip(&peers)
            .enumerate()
            .map(|(i, (peer, td))| self.peer(i, peer, td, own, &peers))
            .collect()
    }

    fn peer(
        &self,
        i: usize,
        raw: RawFederation,
        td: &TrustDomain,
        own: &TrustDomain,
        peers: &[TrustDomain],
    ) -> Result<FederationConfig> {
        let key = |name: &str| format!("federation[{i}].{name}");
        let url_key = key("bundle_endpoint_url");
        let text = self.required(&url_key, raw.bundle_endpoint_url)?;
        let url = url::Url::parse(&text)
            .map_err(|e| self.invalid(&url_key, format!("invalid URL {text:?}: {e}")))?;
        if url.scheme() != "https" {
            return Err(self.invalid(
                url_key,
                format!("scheme must be https, not {:?}", url.scheme()),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(url_key, "must not contain userinfo (user:password@)"));
        }
        if url.fragment().is_some() {
            return Err(self.invalid(url_key, "must not contain a fragment (#...)"));
        }
        // Never guessed from the URL (SPIFFE Federation §5.1): the profile is required.
        let profile = match self.required(&key("profile"), raw.profile)? {
            RawProfile::HttpsSpiffe => {
                self.forbidden(&key("ca_file"), &raw.ca_file, "https_spiffe")?;
                let id_key = key("endpoint_spiffe_id");
                let value = raw.endpoint_spiffe_id.ok_or_else(|| {
                    self.invalid(&id_key, "required with profile = \"https_spiffe\"")
                })?;
                let endpoint_spiffe_id = SpiffeId::new_workload(&value).map_err(|e| {
                    self.invalid(&id_key, format!("invalid SPIFFE ID {value:?}: {e}"))
                })?;
                let id_td = endpoint_spiffe_id.trust_domain();
                if id_td != own && !peers.contains(id_td) {
                    return Err(self.invalid(
                        id_key,
                        format!(
                            "trust domain \"{id_td}\" is neither this peer's (\"{td}\"), ours, nor another \
                             configured peer's, so no bundle could authenticate the endpoint"
                        ),
                    ));
                }
                let bootstrap_bundle = raw
                    .bootstrap_bundle
                    .map(|path| self.path(&key("bootstrap_bundle"), path))
                    .transpose()?;
                PeerProfile::HttpsSpiffe {
                    endpoint_spiffe_id,
                    bootstrap_bundle,
                }
            }
            RawProfile::HttpsWeb => {
                self.forbidden(
                    &key("endpoint_spiffe_id"),
                    &raw.endpoint_spiffe_id,
                    "https_web",
                )?;
                self.forbidden(&key("bootstrap_bundle"), &raw.bootstrap_bundle, "https_web")?;
                let ca_file = raw
                    .ca_file
                    .map(|path| self.existing_file(&key("ca_file"), path))
                    .transpose()?;
                PeerProfile::HttpsWeb { ca_file }
            }
        };
        Ok(FederationConfig {
            trust_domain: td.clone(),
            url,
            profile,
        })
    }
}
