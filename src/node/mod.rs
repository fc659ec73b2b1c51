//! What identifies a node agent: its name (a SPIFFE ID path segment), its agent SPIFFE ID
//! (`spiffe://<td>/meshtrust/agent/<node>`), one-time join tokens ([`token`], stored hashed),
//! and the checks on the CSRs an agent sends ([`csr`]: signature verified, only the public key
//! taken, the SPIFFE ID allowed only when one of that node's entries names it).

pub mod admin;
pub mod cli;
pub mod csr;
pub mod token;

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The longest node name accepted.
pub const MAX_NODE_NAME_LEN: usize = 128;

/// Why a node name, token or CSR is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    /// The name is not one SPIFFE ID path segment.
    #[error(
        "node name {0:?} must be 1-128 characters of [a-zA-Z0-9._-], not \".\" or \"..\" (one SPIFFE ID path segment)"
    )]
    BadName(String),
    /// No such join token (never issued, or already used: a used token is forgotten).
    #[error("unknown or already used join token")]
    UnknownToken,
    /// The join token expired (it is burned all the same).
    #[error("join token expired")]
    ExpiredToken,
    /// A token's time to live is zero or too long.
    #[error("join token ttl must be between 1s and 7 days")]
    BadTtl,
    /// The CSR is not a CSR, or its signature does not verify with its own key.
    #[error("bad csr: {0}")]
    BadCsr(String),
    /// The CSR asks for an ID none of the node's entries names.
    #[error("csr asks for {id}, which no entry of node {node:?} names")]
    NotEntitled {
        /// The requested ID.
        id: String,
        /// The requesting node.
        node: String,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Signing(String),
    /// The store holding join tokens failed.
    #[error("join token store: {0}")]
    Store(String),
}

/// Checks that `name` is one SPIFFE ID path segment, so `/meshtrust/agent/<name>` cannot name
/// another path.
///
/// # Errors
/// [`NodeError::BadName`].
pub fn validate_node_name(name: &str) -> Result<(), NodeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NodeError::BadName(name.to_owned()))
    }
}

/// The agent SPIFFE ID of `node`: `spiffe://<td>/meshtrust/agent/<node>`.
///
/// # Errors
/// [`NodeError::BadName`].
pub fn agent_id(td: &TrustDomain, node: &str) -> Result<SpiffeId, NodeError> {
    validate_node_name(node)?;
    SpiffeId::new(format!("spiffe://{td}/meshtrust/agent/{node}"))
        .map_err(|_| NodeError::BadName(node.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_one_path_segment() {
        for good in ["web-1", "a", "node.example_2", &"x".repeat(128)] {
            assert_eq!(validate_node_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            "a%2F",
            "a?b",
            "a#b",
            &"x".repeat(129),
        ] {
            assert_eq!(
                validate_node_name(bad),
                Err(NodeError::BadName(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_agent_id_sits_under_meshtrust_agent() {
        let td = TrustDomain::new("mesh-a.test").unwrap();
        assert_eq!(
            agent_id(&td, "web-1").unwrap().as_str(),
            "spiffe://mesh-a.test/meshtrust/agent/web-1"
        );
        assert!(matches!(
            agent_id(&td, "a/../b"),
            Err(NodeError::BadName(_))
        ));
    }
}
