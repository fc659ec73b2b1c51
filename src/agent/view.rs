//! A `NodeView` as the agent uses it: the server's protobuf turned into the Workload API's own
//! types (entries, our bundle, peer bundles). Anything malformed is refused as a whole: a view
//! is applied entirely or not at all.

use std::sync::Arc;

use super::AgentError;
use crate::agent_api::proto;
use crate::bundle::{TrustBundle, jwks};
use crate::config::{EntryConfig, FederatesWith, NodeScope, Selector};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::workload_api::PeerBundles;

/// A parsed node view.
#[derive(Debug, Clone)]
pub struct View {
    /// The protobuf as received (what the cache keeps).
    pub raw: proto::NodeView,
    /// The node's entries, in the server's order.
    pub entries: Vec<EntryConfig>,
    /// Our trust domain's bundle.
    pub own: Arc<TrustBundle>,
    /// The peer bundles the entries federate with.
    pub peers: PeerBundles,
}

/// Parses `raw` for trust domain `td` and node `node`.
///
/// # Errors
/// [`AgentError::BadView`] naming the first malformed part.
pub fn parse(raw: proto::NodeView, td: &TrustDomain, node: &str) -> Result<View, AgentError> {
    let bad = |what: String| AgentError::BadView(what);
    let own_raw = raw
        .own
        .as_ref()
        .ok_or_else(|| bad("no own bundle".to_owned()))?;
    if own_raw.trust_domain != td.as_str() {
        return Err(bad(format!(
            "own bundle is for {:?}, not {td}",
            own_raw.trust_domain
        )));
    }
    let own = bundle(td, &own_raw.spiffe_bundle_json)?;
    if own.x509_authorities.is_empty() {
        return Err(bad("own bundle has no x509 authority".to_owned()));
    }
    let mut peers = PeerBundles::new();
    for p in &raw.peers {
        let peer_td = TrustDomain::new(&p.trust_domain)
            .map_err(|e| bad(format!("peer {:?}: {e}", p.trust_domain)))?;
        if &peer_td == td {
            return Err(bad("a peer bundle for our own trust domain".to_owned()));
        }
        let b = bundle(&peer_td, &p.spiffe_bundle_json)?;
        peers.insert(peer_td, Arc::new(b));
    }
    let entries = raw
        .entries
        .iter()
        .map(|e| entry(e, td, node))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(View {
        raw,
        entries,
        own: Arc::new(own),
        peers,
    })
}

fn bundle(td: &TrustDomain, json: &[u8]) -> Result<TrustBundle, AgentError> {
    jwks::parse(td, json)
        .map(|p| p.bundle)
        .map_err(|e| AgentError::BadView(format!("bundle of {td}: {e}")))
}

fn entry(e: &proto::Entry, td: &TrustDomain, node: &str) -> Result<EntryConfig, AgentError> {
    let bad = |what: String| AgentError::BadView(format!("entry {:?}: {what}", e.spiffe_id));
    let spiffe_id = SpiffeId::new_workload(&e.spiffe_id).map_err(|x| bad(x.to_string()))?;
    if spiffe_id.trust_domain() != td {
        return Err(bad("not in our trust domain".to_owned()));
    }
    let selectors = e
        .selectors
        .iter()
        .map(|s| {
            // The config's spelling (`unix:uid:1000`), or without the type (`uid:1000`).
            s.parse::<Selector>()
                .or_else(|_| format!("unix:{s}").parse::<Selector>())
                .map_err(|x| bad(format!("selector {s:?}: {x}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if selectors.is_empty() {
        return Err(bad("no selector".to_owned()));
    }
    let federates_with = if e.federates_with.iter().any(|f| f == "*") {
        FederatesWith::All
    } else {
        FederatesWith::Only(
            e.federates_with
                .iter()
                .map(|f| TrustDomain::new(f).map_err(|x| bad(format!("federates_with {f:?}: {x}"))))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    Ok(EntryConfig {
        spiffe_id,
        selectors,
        federates_with,
        hint: Some(e.hint.clone()).filter(|h| !h.is_empty()),
        node: Some(NodeScope::Node(node.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_entry(id: &str, selectors: &[&str], fed: &[&str]) -> proto::Entry {
        proto::Entry {
            spiffe_id: id.into(),
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            federates_with: fed.iter().map(|s| (*s).to_owned()).collect(),
            hint: String::new(),
        }
    }

    #[test]
    fn entries_take_both_selector_spellings_and_refuse_other_domains() {
        let td = TrustDomain::new("td").unwrap();
        let e = entry(
            &raw_entry("spiffe://td/w", &["uid:7", "unix:gid:8"], &["*"]),
            &td,
            "n",
        )
        .unwrap();
        assert_eq!(e.selectors, vec![Selector::Uid(7), Selector::Gid(8)]);
        assert_eq!(e.federates_with, FederatesWith::All);
        assert!(e.on_node("n"));
        for bad in [
            raw_entry("spiffe://other/w", &["uid:7"], &[]),
            raw_entry("spiffe://td/w", &[], &[]),
            raw_entry("spiffe://td/w", &["pid:1"], &[]),
            raw_entry("spiffe://td", &["uid:1"], &[]),
            raw_entry("spiffe://td/w", &["uid:1"], &["not a td"]),
        ] {
            assert!(
                matches!(entry(&bad, &td, "n"), Err(AgentError::BadView(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_view_without_our_bundle_is_refused() {
        let td = TrustDomain::new("td").unwrap();
        let raw = proto::NodeView::default();
        assert!(matches!(parse(raw, &td, "n"), Err(AgentError::BadView(_))));
        let wrong = proto::NodeView {
            own: Some(proto::Bundle {
                trust_domain: "other".into(),
                spiffe_bundle_json: b"{\"keys\":[]}".to_vec(),
            }),
            ..proto::NodeView::default()
        };
        assert!(matches!(
            parse(wrong, &td, "n"),
            Err(AgentError::BadView(_))
        ));
    }
}
