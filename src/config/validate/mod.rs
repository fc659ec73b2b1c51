//! Raw serde structs → typed [`Config`]: every rule of the config spec, each error naming its key.
//!
//! This file holds the top level, the shared value checks and the singleton sections;
//! `federation.rs` and `entry.rs` the repeated ones.

mod entry;
mod federation;
mod node;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spiffe_id::{SpiffeId, TrustDomain};

use super::duration::{format_duration, parse_duration};
use super::raw::{RawBundleEndpoint, RawCa, RawConfig, RawProfile, RawSocket};
use super::{
    AdminApiConfig, BundleEndpointConfig, CaConfig, Config, ConfigError, DEFAULT_CA_TTL,
    DEFAULT_ENDPOINT_PATH, DEFAULT_JWT_SVID_TTL, DEFAULT_REFRESH_HINT, DEFAULT_X509_SVID_TTL,
    EndpointProfile, KeyType, MetricsConfig, WorkloadApiConfig,
};

/// The longest duration we accept anywhere (100 years): later arithmetic on it cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);
/// The longest Unix socket path Linux can bind (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH_LEN: usize = 107;

type Result<T> = std::result::Result<T, ConfigError>;

pub(super) fn validate(raw: RawConfig, source: &Path) -> Result<Config> {
    let cx = Cx {
        file: source,
        base: source.parent().unwrap_or(Path::new("")),
    };
    let trust_domain = cx.trust_domain(
        "trust_domain",
        cx.required("trust_domain", raw.trust_domain)?,
    )?;
    let data_dir = cx.path("data_dir", cx.required("data_dir", raw.data_dir)?)?;
    let ca = cx.ca(raw.ca.unwrap_or_default())?;
    let bundle_endpoint = raw
        .bundle_endpoint
        .map(|raw| cx.bundle_endpoint(raw, &trust_domain, ca.ca_ttl))
        .transpose()?;
    let workload_api = WorkloadApiConfig {
        socket: cx.socket("workload_api", raw.workload_api)?,
    };
    let admin_api = AdminApiConfig {
        socket: cx.socket("admin_api", raw.admin_api)?,
    };
    if admin_api.socket == workload_api.socket {
        return Err(cx.invalid("admin_api.socket", "must differ from workload_api.socket"));
    }
    let metrics = match raw.metrics {
        None => None,
        Some(raw) => {
            let listen =
                cx.socket_addr("metrics.listen", cx.required("metrics.listen", raw.listen)?)?;
            if let Some(endpoint) = &bundle_endpoint
                && same_port(listen, endpoint.listen)
            {
                return Err(cx.invalid("metrics.listen", "conflicts with bundle_endpoint.listen"));
            }
            let non_loopback_reason = match raw.non_loopback_reason {
                Some(reason) if reason.trim().is_empty() => {
                    return Err(cx.invalid(
                        "metrics.non_loopback_reason",
                        "must say why the metrics listen beyond the loopback (or be left out)",
                    ));
                }
                reason => reason,
            };
            Some(MetricsConfig {
                listen,
                non_loopback_reason,
            })
        }
    };
    let store = cx.store(raw.store.unwrap_or_default())?;
    let federation = cx.federation(raw.federation, &trust_domain)?;
    let federation_min_refresh_interval =
        cx.min_refresh_interval(raw.federation_min_refresh_interval)?;
    let reserved_id = match &bundle_endpoint {
        Some(BundleEndpointConfig {
            profile: EndpointProfile::HttpsSpiffe { endpoint_spiffe_id },
            ..
        }) => Some(endpoint_spiffe_id),
        _ => None,
    };
    let entries = cx.entries(raw.entry, &trust_domain, &federation, reserved_id)?;
    let taken: Vec<(&str, SocketAddr)> = bundle_endpoint
        .iter()
        .map(|b| ("bundle_endpoint.listen", b.listen))
        .chain(metrics.iter().map(|m| ("metrics.listen", m.listen)))
        .collect();
    let agent_api = raw
        .agent_api
        .map(|raw| cx.agent_api(raw, &taken))
        .transpose()?;
    let node_attestation = cx.node_attestation(raw.node_attestation.unwrap_or_default())?;
    Ok(Config {
        source: source.to_owned(),
        trust_domain,
        data_dir,
        ca,
        bundle_endpoint,
        workload_api,
        admin_api,
        metrics,
        store,
        federation,
        federation_min_refresh_interval,
        entries,
        agent_api,
        node_attestation,
    })
}

/// The longest `bundle_endpoint.refresh_hint` for `ca_ttl`: a third of the rotation lead.
///
/// The lead is the time between a CA's publication and its activation (`crate::ca` rotation:
/// prepared at `ca_ttl/2`, signing from `5*ca_ttl/6`), `ca_ttl/3`; a third of it, `ca_ttl/9`,
/// gives a peer that follows our hint three polls to fetch the new CA before it signs. In whole
/// seconds (the hint is published in seconds) and never below 1s, the shortest hint there is:
/// with a `ca_ttl` under 9s (tests) 1s is allowed though it gives fewer than three polls.
pub(crate) fn longest_refresh_hint(ca_ttl: Duration) -> Duration {
    Duration::from_secs((ca_ttl / 9).as_secs().max(1))
}

/// Two listen addresses that cannot both be bound.
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The validation context: which file, and the folder relative paths are resolved in.
struct Cx<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Cx<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| self.invalid(key, "missing required key"))
    }

    /// Rejects a key that the chosen profile does not use.
    fn forbidden<T>(&self, key: &str, value: &Option<T>, profile: &str) -> Result<()> {
        match value {
            Some(_) => Err(self.invalid(key, format!("not allowed with profile = \"{profile}\""))),
            None => Ok(()),
        }
    }

    fn trust_domain(&self, key: &str, value: String) -> Result<TrustDomain> {
        // `TrustDomain::new` also takes a SPIFFE ID; the config wants the bare name.
        if value.contains(":/") {
            return Err(self.invalid(
                key,
                format!("expected a bare trust domain name such as \"example.org\", not {value:?}"),
            ));
        }
        TrustDomain::new(&value)
            .map_err(|e| self.invalid(key, format!("invalid trust domain {value:?}: {e}")))
    }

    /// A workload ID (non-root path) in trust domain `td`.
    fn workload_id_in(&self, key: &str, value: &str, td: &TrustDomain) -> Result<SpiffeId> {
        let id = SpiffeId::new_workload(value)
            .map_err(|e| self.invalid(key, format!("invalid SPIFFE ID {value:?}: {e}")))?;
        if id.trust_domain() != td {
            return Err(self.invalid(
                key,
                format!("{id} is not in this server's trust domain \"{td}\""),
            ));
        }
        Ok(id)
    }

    fn path(&self, key: &str, value: String) -> Result<PathBuf> {
        if value.is_empty() {
            return Err(self.invalid(key, "path must not be empty"));
        }
        Ok(self.base.join(value))
    }

    /// A path to a file that must exist now.
    fn existing_file(&self, key: &str, value: String) -> Result<PathBuf> {
        let path = self.path(key, value)?;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(self.invalid(key, format!("{} is not a file", path.display()))),
            Err(e) => Err(self.invalid(key, format!("{}: {e}", path.display()))),
        }
    }

    fn socket(&self, section: &str, raw: Option<RawSocket>) -> Result<PathBuf> {
        let raw = raw.ok_or_else(|| {
            self.invalid(section, format!("missing required section [{section}]"))
        })?;
        let key = format!("{section}.socket");
        let path = self.path(&key, self.required(&key, raw.socket)?)?;
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            return Err(self.invalid(
                key,
                format!(
                    "{} is {len} bytes; Unix socket paths are limited to {MAX_SOCKET_PATH_LEN}",
                    path.display()
                ),
            ));
        }
        Ok(path)
    }

    fn socket_addr(&self, key: &str, value: String) -> Result<SocketAddr> {
        value.parse().map_err(|_| {
            self.invalid(
                key,
                format!(
                    "invalid listen address {value:?} (expected IP:PORT, e.g. \"0.0.0.0:8443\")"
                ),
            )
        })
    }

    /// A positive duration of at most [`MAX_DURATION`], or `default` when absent.
    fn duration(&self, key: &str, value: Option<String>, default: Duration) -> Result<Duration> {
        let Some(value) = value else {
            return Ok(default);
        };
        let duration = parse_duration(&value)
            .map_err(|e| self.invalid(key, format!("invalid duration {value:?}: {e}")))?;
        if duration.is_zero() {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        if duration > MAX_DURATION {
            return Err(self.invalid(
                key,
                format!("must be at most {}", format_duration(MAX_DURATION)),
            ));
        }
        Ok(duration)
    }

    fn ca(&self, raw: RawCa) -> Result<CaConfig> {
        let ca_ttl = self.duration("ca.ca_ttl", raw.ca_ttl, DEFAULT_CA_TTL)?;
        let half = ca_ttl / 2;
        let svid_ttl = |key: &str, value: Option<String>, default: Duration| -> Result<Duration> {
            let ttl = self.duration(key, value, default)?;
            if ttl > half {
                return Err(self.invalid(
                    key,
                    format!(
                        "{} is longer than half of ca.ca_ttl ({}): an SVID never outlives the CA that \
                         signs it, and the next CA is prepared at half the CA's life, so a longer SVID \
                         would be cut short and rotation would leave no overlap; raise ca.ca_ttl or \
                         shorten {key}",
                        format_duration(ttl),
                        format_duration(ca_ttl),
                    ),
                ));
            }
            Ok(ttl)
        };
        Ok(CaConfig {
            key_type: raw
                .key_type
                .map_or(Ok(KeyType::EcP256), |name| self.key_type(&name))?,
            ca_ttl,
            x509_svid_ttl: svid_ttl("ca.x509_svid_ttl", raw.x509_svid_ttl, DEFAULT_X509_SVID_TTL)?,
            jwt_svid_ttl: svid_ttl("ca.jwt_svid_ttl", raw.jwt_svid_ttl, DEFAULT_JWT_SVID_TTL)?,
        })
    }

    fn key_type(&self, name: &str) -> Result<KeyType> {
        [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048]
            .into_iter()
            .find(|key_type| key_type.as_str() == name)
            .ok_or_else(|| {
                self.invalid(
                    "ca.key_type",
                    format!("unknown key type {name:?} (expected \"ec-p256\", \"ec-p384\" or \"rsa-2048\")"),
                )
            })
    }

    fn bundle_endpoint(
        &self,
        raw: RawBundleEndpoint,
        td: &TrustDomain,
        ca_ttl: Duration,
    ) -> Result<BundleEndpointConfig> {
        let listen = self.socket_addr(
            "bundle_endpoint.listen",
            self.required("bundle_endpoint.listen", raw.listen)?,
        )?;
        let key = "bundle_endpoint.refresh_hint";
        let longest = longest_refresh_hint(ca_ttl);
        let refresh_hint =
            self.duration(key, raw.refresh_hint, DEFAULT_REFRESH_HINT.min(longest))?;
        if refresh_hint < Duration::from_secs(1) || refresh_hint.subsec_nanos() != 0 {
            return Err(self.invalid(
                key,
                "must be a whole number of seconds, at least 1s (spiffe_refresh_hint is published in seconds)",
            ));
        }
        if refresh_hint > longest {
            return Err(self.invalid(
                key,
                format!(
                    "{} is longer than a third of the CA rotation lead: with ca.ca_ttl = {} a new CA \
                     is published at ca_ttl/2 and signs from 5*ca_ttl/6, a lead of {} (ca_ttl/3), \
                     and the endpoint's own SVID moves to it then; a peer polling less often than \
                     three times in that lead may not fetch the new CA before it must authenticate \
                     us with it, and is stranded until an operator resets it. At most {} here \
                     (ca_ttl/9, in whole seconds, never below 1s); shorten {key} or raise ca.ca_ttl",
                    format_duration(refresh_hint),
                    format_duration(ca_ttl),
                    format_duration(ca_ttl / 3),
                    format_duration(longest),
                ),
            ));
        }
        let profile = match raw.profile.unwrap_or(RawProfile::HttpsSpiffe) {
            RawProfile::HttpsSpiffe => {
                self.forbidden("bundle_endpoint.cert_file", &raw.cert_file, "https_spiffe")?;
                self.forbidden("bundle_endpoint.key_file", &raw.key_file, "https_spiffe")?;
                let endpoint_spiffe_id = match raw.endpoint_spiffe_id {
                    Some(id) => {
                        self.workload_id_in("bundle_endpoint.endpoint_spiffe_id", &id, td)?
                    }
                    None => SpiffeId::from_path(td, DEFAULT_ENDPOINT_PATH).map_err(|e| {
                        self.invalid("bundle_endpoint.endpoint_spiffe_id", e.to_string())
                    })?,
                };
                EndpointProfile::HttpsSpiffe { endpoint_spiffe_id }
            }
            RawProfile::HttpsWeb => {
                self.forbidden(
                    "bundle_endpoint.endpoint_spiffe_id",
                    &raw.endpoint_spiffe_id,
                    "https_web",
                )?;
                let file = |key: &str, value: Option<String>| -> Result<PathBuf> {
                    let value = value.ok_or_else(|| {
                        self.invalid(key, "required with profile = \"https_web\"")
                    })?;
                    self.existing_file(key, value)
                };
                EndpointProfile::HttpsWeb {
                    cert_file: file("bundle_endpoint.cert_file", raw.cert_file)?,
                    key_file: file("bundle_endpoint.key_file", raw.key_file)?,
                }
            }
        };
        Ok(BundleEndpointConfig {
            listen,
            refresh_hint,
            profile,
        })
    }
}
