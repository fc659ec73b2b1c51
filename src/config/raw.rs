//! The config file as TOML says it: serde structs, strings and options only.
//!
//! Every table denies unknown keys. Everything else, even "required", is checked in
//! `validate.rs`, so that each error names its key the same way; serde only reports unknown keys,
//! wrong TOML types and unknown profile names (the caller finds their key from the error's span).

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document")]
pub(super) struct RawConfig {
    pub trust_domain: Option<String>,
    pub data_dir: Option<String>,
    pub federation_min_refresh_interval: Option<String>,
    pub ca: Option<RawCa>,
    pub bundle_endpoint: Option<RawBundleEndpoint>,
    pub workload_api: Option<RawSocket>,
    pub admin_api: Option<RawSocket>,
    pub metrics: Option<RawMetrics>,
    pub store: Option<RawStore>,
    pub agent_api: Option<RawAgentApi>,
    pub node_attestation: Option<RawNodeAttestation>,
    #[serde(default)]
    pub federation: Vec<RawFederation>,
    #[serde(default)]
    pub entry: Vec<RawEntry>,
}

/// `[ca]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawCa {
    pub key_type: Option<String>,
    pub ca_ttl: Option<String>,
    pub x509_svid_ttl: Option<String>,
    pub jwt_svid_ttl: Option<String>,
}

/// The two bundle endpoint profiles of SPIFFE Federation §5, as spelled in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawProfile {
    HttpsSpiffe,
    HttpsWeb,
}

/// `[bundle_endpoint]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBundleEndpoint {
    pub listen: Option<String>,
    pub profile: Option<RawProfile>,
    pub endpoint_spiffe_id: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub refresh_hint: Option<String>,
}

/// `[workload_api]` and `[admin_api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSocket {
    pub socket: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawMetrics {
    pub listen: Option<String>,
    pub non_loopback_reason: Option<String>,
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawStore {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub ca_file: Option<String>,
}

/// One `[[federation]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFederation {
    pub trust_domain: Option<String>,
    pub bundle_endpoint_url: Option<String>,
    pub profile: Option<RawProfile>,
    pub endpoint_spiffe_id: Option<String>,
    pub bootstrap_bundle: Option<String>,
    pub ca_file: Option<String>,
}

/// One `[[entry]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawEntry {
    pub spiffe_id: Option<String>,
    pub selectors: Option<Vec<String>>,
    #[serde(default)]
    pub federates_with: Vec<String>,
    pub hint: Option<String>,
    pub node: Option<String>,
}

/// `[agent_api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawAgentApi {
    pub listen: Option<String>,
    pub max_connections: Option<u64>,
    pub handshake_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

/// `[node_attestation]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawNodeAttestation {
    pub join_token: Option<bool>,
    pub x509pop_ca_file: Option<String>,
}
