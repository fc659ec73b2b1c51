//! Peering tokens: `meshtrust federation invite` prints one, `meshtrust federation join` reads it
//! (see [`join`](super::invite_join)).
//!
//! A token is `meshtrust-invite-v1.` followed by the base64url (no padding) of a JSON object:
//! the inviting trust domain, its bundle endpoint URL, the endpoint's SPIFFE ID, the SHA-256 of
//! its X.509 authorities ([`authorities_digest`]) and an expiry (Unix seconds).
//!
//! # What authenticates what
//!
//! The token is not secret (it names a public bundle), but it is the first contact's trust
//! anchor: it travels over a channel the two operators trust for integrity (a ticket, a signed
//! mail, a call where the digest is read out), like an SSH host key fingerprint.
//!
//! - The **digest** commits to the peer's CA certificates. `join` accepts a bundle only when the
//!   SHA-256 of its X.509 authorities equals the token's, and then fetches it again over
//!   `https_spiffe` with those authorities as the only roots: the endpoint must present an
//!   X509-SVID for the token's endpoint SPIFFE ID that chains to them (and prove its key in the
//!   handshake). So an edited digest, or a URL edited to point at another server (which serves
//!   another bundle, or cannot hold an SVID from these CAs), is refused.
//! - The **trust domain** must be the endpoint SPIFFE ID's (a self-serving endpoint), and the
//!   bundle is parsed under it: a trust domain edited alone is refused before any network
//!   access; edited together with the endpoint ID, the genuine endpoint presents its real ID and
//!   the handshake is refused.
//! - The digest covers the **CA certificates only** (sorted, so their order does not matter),
//!   not `spiffe_sequence`, `spiffe_refresh_hint` or the JWT keys: a token stays valid while
//!   the peer's bundle keeps the same CAs, and fails once a CA rotation adds or drops one (ask
//!   for a new invite then). The JWT keys arrive over the channel those CAs authenticate.
//! - The **expiry** is checked against this host's clock before anything else. It is not
//!   signed: whoever can edit a token can extend it, exactly as they could swap the whole token
//!   for one of their own. It limits how long a token lying in a ticket or a mailbox is usable,
//!   not what a forger can do.
//!
//! Known limits: whoever can alter the token in transit can swap it for a token of their own
//! (a CA of their own under the same trust domain name, their own server): the token's channel
//! carries the trust, as with an SSH host key fingerprint. Checking only the digest out of band
//! does not suffice either: the URL and endpoint ID are not bound to the digest, so a holder of
//! any X509-SVID of the inviting trust domain (a workload of the peer mesh) could point an
//! altered token at their own server serving the genuine bundle under their own SVID's ID.
//! Closing that needs a signature over the token by a key the digest commits to.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The token's prefix: name and format version.
pub const PREFIX: &str = "meshtrust-invite-v1.";
/// How long an invite is valid when `--ttl` is not given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest `--ttl`.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// The longest `--ttl`: a token is a first-contact credential, not a standing one.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest token read (a real one is a few hundred bytes).
const MAX_TOKEN_LEN: usize = 4096;

/// Why a token is refused, or an invite cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Not a meshtrust invite at all, or damaged in copying.
    #[error(
        "not a meshtrust invite token ({0}); copy the whole line `meshtrust federation invite` printed"
    )]
    Malformed(String),
    /// Another format version.
    #[error("invite token version {0:?} is not supported by this meshtrust (it reads v1)")]
    Version(String),
    /// A field is missing or invalid.
    #[error("invite token field {field}: {reason}")]
    Field {
        /// The JSON field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint SPIFFE ID is not in the token's trust domain.
    #[error(
        "invite token names trust domain {trust_domain} but endpoint SPIFFE ID {endpoint} (another trust domain): the token was edited or is broken"
    )]
    EndpointOutsideTrustDomain {
        /// The token's trust domain.
        trust_domain: TrustDomain,
        /// The token's endpoint ID.
        endpoint: SpiffeId,
    },
    /// Past its expiry.
    #[error("invite token expired at {at}; ask {trust_domain} for a new one")]
    Expired {
        /// The inviting trust domain.
        trust_domain: TrustDomain,
        /// RFC 3339.
        at: String,
    },
    /// `--ttl` out of bounds.
    #[error("ttl {0} is out of bounds (1m to 7d)")]
    Ttl(String),
    /// No usable bundle endpoint to invite to.
    #[error("{0}")]
    NoEndpoint(String),
}

/// A decoded, checked invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The inviting trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint.
    pub url: Url,
    /// The SPIFFE ID its endpoint presents (in `trust_domain`).
    pub endpoint_spiffe_id: SpiffeId,
    /// [`authorities_digest`] of its bundle when the invite was made.
    pub x509_authorities_sha256: String,
    /// When the token stops being accepted (whole seconds).
    pub expires_at: SystemTime,
}

/// The JSON inside the token.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    trust_domain: String,
    bundle_endpoint_url: String,
    endpoint_spiffe_id: String,
    x509_authorities_sha256: String,
    expires_at: u64,
}

/// The digest a token carries: lowercase hex SHA-256 of the DER X.509 authorities, sorted
/// bytewise and deduplicated, concatenated (DER is self-delimiting, so this is unambiguous).
/// Independent of the bundle's sequence, refresh hint, JWT keys and key order.
pub fn authorities_digest(certs: &[CertificateDer<'_>]) -> String {
    let mut sorted: Vec<&[u8]> = certs.iter().map(|c| c.as_ref()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for der in sorted {
        ctx.update(der);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a bundle endpoint URL as `[[federation]] bundle_endpoint_url` would be checked.
///
/// # Errors
/// The reason, in words.
pub fn check_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("{text:?}: scheme must be https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not contain userinfo"));
    }
    if url.fragment().is_some() {
        return Err(format!("{text:?} must not contain a fragment"));
    }
    if url.host().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    Ok(url)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Invite {
    /// The token: one line.
    pub fn encode(&self) -> String {
        let wire = Wire {
            trust_domain: self.trust_domain.to_string(),
            bundle_endpoint_url: self.url.to_string(),
            endpoint_spiffe_id: self.endpoint_spiffe_id.to_string(),
            x509_authorities_sha256: self.x509_authorities_sha256.clone(),
            expires_at: unix_secs(self.expires_at),
        };
        // A struct of strings and an integer always serializes.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Reads a token (surrounding whitespace ignored) and checks it at `now`: format, fields,
    /// the endpoint ID in the trust domain, the expiry. Nothing is fetched.
    ///
    /// # Errors
    /// [`InviteError`]: why the token is refused.
    pub fn decode(token: &str, now: SystemTime) -> Result<Self, InviteError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(InviteError::Malformed(format!(
                "{} bytes, more than {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        let Some(body) = token.strip_prefix(PREFIX) else {
            if let Some(rest) = token.strip_prefix("meshtrust-invite-") {
                let version = rest.split('.').next().unwrap_or_default();
                return Err(InviteError::Version(version.to_owned()));
            }
            return Err(InviteError::Malformed(format!(
                "it does not start with {PREFIX:?}"
            )));
        };
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| InviteError::Malformed(format!("base64url: {e}")))?;
        let wire: Wire = serde_json::from_slice(&json)
            .map_err(|e| InviteError::Malformed(format!("json: {e}")))?;
        let field = |field, reason: String| InviteError::Field { field, reason };
        let trust_domain = TrustDomain::new(&wire.trust_domain)
            .map_err(|e| field("trust_domain", format!("{:?}: {e}", wire.trust_domain)))?;
        let url =
            check_url(&wire.bundle_endpoint_url).map_err(|e| field("bundle_endpoint_url", e))?;
        let endpoint_spiffe_id = SpiffeId::new_workload(&wire.endpoint_spiffe_id).map_err(|e| {
            field(
                "endpoint_spiffe_id",
                format!("{:?}: {e}", wire.endpoint_spiffe_id),
            )
        })?;
        let digest = &wire.x509_authorities_sha256;
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(field(
                "x509_authorities_sha256",
                "not 64 lowercase hex digits".to_owned(),
            ));
        }
        if endpoint_spiffe_id.trust_domain() != &trust_domain {
            return Err(InviteError::EndpointOutsideTrustDomain {
                trust_domain,
                endpoint: endpoint_spiffe_id,
            });
        }
        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(wire.expires_at);
        if now >= expires_at {
            return Err(InviteError::Expired {
                trust_domain,
                at: crate::clock::rfc3339(expires_at),
            });
        }
        Ok(Self {
            trust_domain,
            url,
            endpoint_spiffe_id,
            x509_authorities_sha256: digest.clone(),
            expires_at,
        })
    }
}

/// What the daemon knows of its own bundle endpoint, for making invites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEndpoint {
    /// The bound address.
    pub addr: SocketAddr,
    /// The SVID's ID with `https_spiffe`; `None` with `https_web` (no invite then).
    pub endpoint_spiffe_id: Option<SpiffeId>,
}

/// Makes an invite for our bundle: `url` overrides the URL made from the bound address (needed
/// when it listens on `0.0.0.0` or behind a NAT).
///
/// # Errors
/// [`InviteError::NoEndpoint`] without an `https_spiffe` endpoint or a usable URL,
/// [`InviteError::Ttl`] for a ttl out of bounds.
pub fn make(
    trust_domain: &TrustDomain,
    endpoint: Option<&PublishedEndpoint>,
    authorities: &[CertificateDer<'_>],
    url: Option<&str>,
    ttl: Duration,
    now: SystemTime,
) -> Result<Invite, InviteError> {
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(InviteError::Ttl(crate::config::format_duration(ttl)));
    }
    let Some(endpoint) = endpoint else {
        return Err(InviteError::NoEndpoint(
            "no [bundle_endpoint] is configured: there is nothing for a peer to fetch".to_owned(),
        ));
    };
    let Some(id) = &endpoint.endpoint_spiffe_id else {
        return Err(InviteError::NoEndpoint(
            "the bundle endpoint uses profile https_web; invites are for https_spiffe (give peers the URL; they authenticate it with Web PKI)".to_owned(),
        ));
    };
    let url = match url {
        Some(text) => check_url(text).map_err(InviteError::NoEndpoint)?,
        None if endpoint.addr.ip().is_unspecified() => {
            return Err(InviteError::NoEndpoint(format!(
                "the bundle endpoint listens on {}, which is no address a peer can reach: pass --url https://HOST:{}/",
                endpoint.addr,
                endpoint.addr.port()
            )));
        }
        None => {
            check_url(&format!("https://{}/", endpoint.addr)).map_err(InviteError::NoEndpoint)?
        }
    };
    if authorities.is_empty() {
        return Err(InviteError::NoEndpoint(
            "our bundle holds no X.509 authority".to_owned(),
        ));
    }
    Ok(Invite {
        trust_domain: trust_domain.clone(),
        url,
        endpoint_spiffe_id: id.clone(),
        x509_authorities_sha256: authorities_digest(authorities),
        expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs(now + ttl)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(now: SystemTime) -> Invite {
        Invite {
            trust_domain: TrustDomain::new("mesh-b.test").unwrap(),
            url: Url::parse("https://127.0.0.1:8443/").unwrap(),
            endpoint_spiffe_id: SpiffeId::new("spiffe://mesh-b.test/meshtrust/server").unwrap(),
            x509_authorities_sha256: "ab".repeat(32),
            expires_at: SystemTime::UNIX_EPOCH
                + Duration::from_secs(unix_secs(now + Duration::from_secs(60))),
        }
    }

    fn reencode(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let body = token.strip_prefix(PREFIX).unwrap();
        let mut v: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        edit(&mut v);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(v.to_string()))
    }

    #[test]
    fn a_token_round_trips_and_is_one_line() {
        let now = SystemTime::now();
        let i = invite(now);
        let token = i.encode();
        assert!(!token.contains(char::is_whitespace), "{token}");
        assert_eq!(Invite::decode(&format!("  {token}\n"), now).unwrap(), i);
    }

    #[test]
    fn expired_edited_and_damaged_tokens_are_refused_with_the_reason() {
        let now = SystemTime::now();
        let token = invite(now).encode();
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            Invite::decode(&token, later),
            Err(InviteError::Expired { .. })
        ));
        let td_only = reencode(&token, |v| v["trust_domain"] = "mesh-x.test".into());
        assert!(matches!(
            Invite::decode(&td_only, now),
            Err(InviteError::EndpointOutsideTrustDomain { .. })
        ));
        let http = reencode(&token, |v| v["bundle_endpoint_url"] = "http://h/".into());
        assert!(matches!(
            Invite::decode(&http, now),
            Err(InviteError::Field {
                field: "bundle_endpoint_url",
                ..
            })
        ));
        let short = reencode(&token, |v| v["x509_authorities_sha256"] = "abc".into());
        assert!(matches!(
            Invite::decode(&short, now),
            Err(InviteError::Field {
                field: "x509_authorities_sha256",
                ..
            })
        ));
        let extra = reencode(&token, |v| v["admin"] = true.into());
        assert!(matches!(
            Invite::decode(&extra, now),
            Err(InviteError::Malformed(_))
        ));
        let cut = &token[..token.len() - 5];
        assert!(matches!(
            Invite::decode(cut, now),
            Err(InviteError::Malformed(_))
        ));
        assert!(matches!(
            Invite::decode("meshtrust-invite-v2.e30", now),
            Err(InviteError::Version(v)) if v == "v2"
        ));
    }

    #[test]
    fn the_digest_ignores_order_and_duplicates_but_not_content() {
        let a = CertificateDer::from(vec![0x30, 0x01, 0x01]);
        let b = CertificateDer::from(vec![0x30, 0x01, 0x02]);
        let d = authorities_digest(&[a.clone(), b.clone()]);
        assert_eq!(d, authorities_digest(&[b.clone(), a.clone(), a.clone()]));
        assert_ne!(d, authorities_digest(std::slice::from_ref(&a)));
        assert_eq!(d.len(), 64);
    }

    #[test]
    fn an_unspecified_listen_address_needs_a_url() {
        let td = TrustDomain::new("mesh-b.test").unwrap();
        let ep = PublishedEndpoint {
            addr: "0.0.0.0:8443".parse().unwrap(),
            endpoint_spiffe_id: Some(SpiffeId::new("spiffe://mesh-b.test/s").unwrap()),
        };
        let ca = [CertificateDer::from(vec![0x30, 0x00])];
        let now = SystemTime::now();
        let e = make(&td, Some(&ep), &ca, None, DEFAULT_TTL, now).unwrap_err();
        assert!(e.to_string().contains("--url https://HOST:8443/"), "{e}");
        let ok = make(
            &td,
            Some(&ep),
            &ca,
            Some("https://b.example:8443/"),
            DEFAULT_TTL,
            now,
        );
        assert_eq!(ok.unwrap().url.as_str(), "https://b.example:8443/");
        let e = make(
            &td,
            Some(&ep),
            &ca,
            None,
            Duration::from_secs(8 * 86400),
            now,
        );
        assert!(matches!(e, Err(InviteError::Ttl(_))));
    }
}
