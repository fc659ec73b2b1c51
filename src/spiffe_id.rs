//! SPIFFE identities: [`TrustDomain`] and [`SpiffeId`], validated at construction (SPIFFE-ID §2).
//!
//! Instances are always valid: once built they can be compared, formatted and passed around
//! without re-checking. Parsing follows the spec strictly (go-spiffe's charset, plus the spec's
//! length limits): lowercase trust domain in `[a-z0-9._-]`, no port, userinfo, query, fragment or
//! percent-encoding; path segments in `[a-zA-Z0-9._-]`, no empty, `.` or `..` segments, no
//! trailing slash.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID we accept, in bytes, the whole URI counted (SPIFFE-ID §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name we accept, in bytes (SPIFFE-ID §2.3, RFC 3986 host limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("empty")]
    Empty,
    /// The scheme is not exactly `spiffe://`.
    #[error("scheme must be \"spiffe://\"")]
    WrongScheme,
    /// No trust domain after the scheme.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9._-]` in the trust domain (uppercase, port, userinfo, `%`...).
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (found {0:?})"
    )]
    BadTrustDomainChar(char),
    /// A character outside `[a-zA-Z0-9._-]` in a path segment (query, fragment, `%`...).
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores (found {0:?})"
    )]
    BadPathChar(char),
    /// `//` in the path.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is longer than {max} bytes")]
    TrustDomainTooLong {
        /// The limit.
        max: usize,
    },
    /// The SPIFFE ID is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A workload ID was required but the ID has no path.
    #[error("SPIFFE ID has no path (a workload ID needs one)")]
    RootPath,
}

/// A trust domain name such as `mesh-a.test` (SPIFFE-ID §2.1).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name, or a SPIFFE ID from which the trust domain is taken
    /// (like go-spiffe's `TrustDomainFromString`).
    ///
    /// # Errors
    /// [`SpiffeIdError`] when the name breaks SPIFFE-ID §2.1 or §2.3.
    pub fn new(name: impl AsRef<str>) -> Result<Self, SpiffeIdError> {
        let name = name.as_ref();
        if name.contains(":/") {
            return Ok(SpiffeId::new(name)?.trust_domain().clone());
        }
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The bare name, e.g. `mesh-a.test`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID string, `spiffe://<td>`: the key of Workload API maps.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// The trust domain's own SPIFFE ID (no path): the identity of its signing authority.
    pub fn to_spiffe_id(&self) -> SpiffeId {
        SpiffeId {
            uri: self.id_string(),
            td_len: self.0.len(),
            trust_domain: self.clone(),
        }
    }
}

fn validate_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(SpiffeIdError::BadTrustDomainChar(c));
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong {
            max: MAX_TRUST_DOMAIN_LEN,
        });
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // The caller guarantees a leading '/'.
    let rest = &path[1..];
    if rest.is_empty() || path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for TrustDomain {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// A SPIFFE ID such as `spiffe://mesh-a.test/ns/default/sa/frontend` (SPIFFE-ID §2).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    uri: String,
    td_len: usize,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    ///
    /// # Errors
    /// [`SpiffeIdError`] naming the first rule the input breaks.
    pub fn new(id: impl AsRef<str>) -> Result<Self, SpiffeIdError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest = id
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong {
                max: MAX_SPIFFE_ID_LEN,
            });
        }
        Ok(Self {
            uri: id.to_owned(),
            td_len: td.len(),
            trust_domain: TrustDomain(td.to_owned()),
        })
    }

    /// Builds `spiffe://<td><path>` from a trust domain and a path starting with `/`.
    ///
    /// # Errors
    /// [`SpiffeIdError`] when the path is invalid.
    pub fn from_path(td: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        Self::new(format!("{SCHEME_PREFIX}{td}{path}"))
    }

    /// Parses an ID that must name a workload: a non-root path (X509-SVID §3.1).
    ///
    /// # Errors
    /// [`SpiffeIdError::RootPath`] for `spiffe://td`, or any parse error.
    pub fn new_workload(id: impl AsRef<str>) -> Result<Self, SpiffeIdError> {
        let parsed = Self::new(id)?;
        if parsed.path().is_empty() {
            return Err(SpiffeIdError::RootPath);
        }
        Ok(parsed)
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len() + self.td_len..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;

    /// SPIFFE-ID 1.1.1, 1.1.2, 1.1.4, 1.1.5 (SPIFFE.md §1.1): accepted IDs round-trip exactly.
    #[test]
    fn valid_spiffe_ids_parse_and_round_trip() {
        let long_path = format!("/{}", "a".repeat(MAX_SPIFFE_ID_LEN - "spiffe://td/".len()));
        let cases: &[(&str, &str, &str)] = &[
            ("spiffe://mesh-a.test", "mesh-a.test", ""),
            (
                "spiffe://mesh-a.test/ns/default/sa/web",
                "mesh-a.test",
                "/ns/default/sa/web",
            ),
            ("spiffe://192.168.1.1/x", "192.168.1.1", "/x"), // 1.1.3: IPv4 is just a name
            (
                "spiffe://td/.a/..a/.../A_b-C.9",
                "td",
                "/.a/..a/.../A_b-C.9",
            ), // 1.1.4: legal dot-prefixed
            ("spiffe://under_score.td/x", "under_score.td", "/x"),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::new(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.as_str(), *input);
            assert_eq!(id.trust_domain().as_str(), *td);
            assert_eq!(id.path(), *path);
            assert_eq!(SpiffeId::new(id.to_string()).unwrap(), id);
        }
        let at_limit = format!("spiffe://td{long_path}");
        assert_eq!(at_limit.len(), MAX_SPIFFE_ID_LEN);
        assert!(
            SpiffeId::new(&at_limit).is_ok(),
            "SPIFFE-ID 1.1.5: 2048 bytes must be accepted"
        );
    }

    /// SPIFFE-ID 1.1.1, 1.1.2, 1.1.4, 1.1.5, 1.1.6: each broken rule is named.
    #[test]
    fn invalid_spiffe_ids_are_rejected_with_the_rule_they_break() {
        let too_long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let long_td = format!("spiffe://{}/x", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", E::Empty),
            ("http://td/x", E::WrongScheme),
            ("SPIFFE://td/x", E::WrongScheme), // 1.1.6: go-spiffe rejects uppercase scheme
            ("spiffe:/td/x", E::WrongScheme),
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe:///x", E::MissingTrustDomain),
            ("spiffe://Mesh-A.test/x", E::BadTrustDomainChar('M')), // 1.1.2 lowercase
            ("spiffe://td:8443/x", E::BadTrustDomainChar(':')),     // no port
            ("spiffe://user@td/x", E::BadTrustDomainChar('@')),     // no userinfo
            ("spiffe://t%64/x", E::BadTrustDomainChar('%')),        // no percent-encoding
            ("spiffe://[::1]/x", E::BadTrustDomainChar('[')),       // 1.1.3 no IPv6
            ("spiffe://td?q=1", E::BadTrustDomainChar('?')),        // 1.1.1 no query
            ("spiffe://td/x?q=1", E::BadPathChar('?')),
            ("spiffe://td/x#frag", E::BadPathChar('#')), // 1.1.1 no fragment
            ("spiffe://td/a%20b", E::BadPathChar('%')),  // 1.1.4 no percent-encoding
            ("spiffe://td/a//b", E::EmptySegment),
            ("spiffe://td/./b", E::DotSegment),
            ("spiffe://td/a/..", E::DotSegment),
            ("spiffe://td/", E::TrailingSlash), // 7.6: the Appendix A CA ID is invalid
            ("spiffe://td/a/", E::TrailingSlash),
        ];
        for (input, expected) in cases {
            assert_eq!(SpiffeId::new(input), Err(expected), "{input:?}");
        }
        assert_eq!(
            SpiffeId::new(&too_long),
            Err(E::TooLong {
                max: MAX_SPIFFE_ID_LEN
            })
        );
        assert_eq!(
            SpiffeId::new(&long_td),
            Err(E::TrustDomainTooLong {
                max: MAX_TRUST_DOMAIN_LEN
            })
        );
    }

    /// X509-SVID 1.2.2: a workload ID needs a non-root path.
    #[test]
    fn workload_ids_need_a_path() {
        assert_eq!(SpiffeId::new_workload("spiffe://td"), Err(E::RootPath));
        assert!(SpiffeId::new_workload("spiffe://td/w").is_ok());
    }

    #[test]
    fn trust_domains_accept_bare_names_or_ids() {
        assert_eq!(
            TrustDomain::new("mesh-b.test").unwrap().as_str(),
            "mesh-b.test"
        );
        assert_eq!(
            TrustDomain::new("spiffe://mesh-b.test/x").unwrap().as_str(),
            "mesh-b.test"
        );
        assert_eq!(
            TrustDomain::new("mesh-b.test").unwrap().id_string(),
            "spiffe://mesh-b.test"
        );
        assert_eq!(TrustDomain::new(""), Err(E::MissingTrustDomain));
        assert_eq!(TrustDomain::new("MESH"), Err(E::BadTrustDomainChar('M')));
        assert_eq!(TrustDomain::new("a b"), Err(E::BadTrustDomainChar(' ')));
        let td = TrustDomain::new("td").unwrap();
        assert_eq!(td.to_spiffe_id().as_str(), "spiffe://td");
        assert_eq!(td.to_spiffe_id().path(), "");
    }
}
