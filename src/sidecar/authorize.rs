//! Who may be on the other end of a proxied connection, once the peer's SVID has been verified:
//! inbound `--allow ID` / `--allow-trust-domain TD`, outbound `--expect ID`.

use std::collections::BTreeSet;
use std::fmt;

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Why an authorizer cannot be built or refuses a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizeError {
    /// Inbound with neither `--allow` nor `--allow-trust-domain`: the proxy fails closed rather
    /// than accept every authenticated caller.
    #[error("nothing is allowed: give at least one --allow or --allow-trust-domain")]
    NothingAllowed,
    /// The verified peer is not allowed.
    #[error("{id} is not allowed ({policy})")]
    NotAllowed {
        /// The peer's verified SPIFFE ID.
        id: SpiffeId,
        /// The policy, in words.
        policy: String,
    },
}

/// An authorization policy over verified SPIFFE IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorizer {
    /// Inbound: any listed ID, or any ID of a listed trust domain.
    OneOf {
        /// `--allow`.
        ids: BTreeSet<SpiffeId>,
        /// `--allow-trust-domain`.
        trust_domains: BTreeSet<TrustDomain>,
    },
    /// Outbound: exactly this ID.
    Exact(SpiffeId),
}

impl Authorizer {
    /// The inbound policy.
    ///
    /// # Errors
    /// [`AuthorizeError::NothingAllowed`] when both lists are empty.
    pub fn one_of(
        ids: impl IntoIterator<Item = SpiffeId>,
        trust_domains: impl IntoIterator<Item = TrustDomain>,
    ) -> Result<Self, AuthorizeError> {
        let ids: BTreeSet<_> = ids.into_iter().collect();
        let trust_domains: BTreeSet<_> = trust_domains.into_iter().collect();
        if ids.is_empty() && trust_domains.is_empty() {
            return Err(AuthorizeError::NothingAllowed);
        }
        Ok(Self::OneOf { ids, trust_domains })
    }

    /// The outbound policy.
    pub fn exact(id: SpiffeId) -> Self {
        Self::Exact(id)
    }

    /// Accepts or refuses a verified peer ID.
    ///
    /// # Errors
    /// [`AuthorizeError::NotAllowed`] naming the peer and the policy.
    pub fn authorize(&self, id: &SpiffeId) -> Result<(), AuthorizeError> {
        let allowed = match self {
            Self::OneOf { ids, trust_domains } => {
                ids.contains(id) || trust_domains.contains(id.trust_domain())
            }
            Self::Exact(expected) => expected == id,
        };
        if allowed {
            Ok(())
        } else {
            Err(AuthorizeError::NotAllowed {
                id: id.clone(),
                policy: self.to_string(),
            })
        }
    }
}

impl fmt::Display for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OneOf { ids, trust_domains } => {
                let mut parts: Vec<String> = ids.iter().map(ToString::to_string).collect();
                parts.extend(trust_domains.iter().map(|td| format!("any ID of {td}")));
                write!(f, "allowed: {}", parts.join(", "))
            }
            Self::Exact(id) => write!(f, "expected: {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn td(s: &str) -> TrustDomain {
        TrustDomain::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn inbound_allows_listed_ids_and_trust_domains_only() {
        let a = Authorizer::one_of([id("spiffe://mesh-a.test/frontend")], [td("mesh-c.test")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(a.authorize(&id("spiffe://mesh-a.test/frontend")).is_ok());
        assert!(a.authorize(&id("spiffe://mesh-c.test/anything")).is_ok());
        let err = a.authorize(&id("spiffe://mesh-a.test/other"));
        assert!(matches!(err, Err(AuthorizeError::NotAllowed { .. })));
        // The refusal names the refused ID, for the log line.
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("spiffe://mesh-a.test/other")
        );
        // A path prefix is not a trust domain match.
        assert!(a.authorize(&id("spiffe://mesh-a.test/frontend/x")).is_err());
    }

    #[test]
    fn inbound_with_an_empty_policy_fails_closed() {
        assert_eq!(
            Authorizer::one_of([], []),
            Err(AuthorizeError::NothingAllowed)
        );
    }

    #[test]
    fn outbound_expects_exactly_one_id() {
        let a = Authorizer::exact(id("spiffe://mesh-b.test/echo"));
        assert!(a.authorize(&id("spiffe://mesh-b.test/echo")).is_ok());
        assert!(a.authorize(&id("spiffe://mesh-b.test/echo2")).is_err());
        assert!(a.authorize(&id("spiffe://mesh-c.test/echo")).is_err());
    }
}
