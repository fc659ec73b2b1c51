//! [`NodeView`] to its wire form ([`proto::NodeView`]): the node's entries with their
//! selectors as in the config, our bundle document as the bundle endpoint serves it, and every
//! peer bundle those entries need, all in one message.

use super::core::NodeView;
use super::proto;
use crate::bundle::jwks;
use crate::config::{EntryConfig, FederatesWith};

fn entry(e: &EntryConfig) -> proto::Entry {
    proto::Entry {
        spiffe_id: e.spiffe_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        federates_with: match &e.federates_with {
            FederatesWith::All => vec!["*".to_owned()],
            FederatesWith::Only(list) => list.iter().map(ToString::to_string).collect(),
        },
        hint: e.hint.clone().unwrap_or_default(),
    }
}

/// The wire view, without its revision (set by the stream). A peer bundle that cannot be
/// serialized is left out and logged (it was valid when pinned, so this does not happen).
pub fn to_proto(view: &NodeView, own_json: &[u8], server_id: &str) -> proto::NodeView {
    let peers = view
        .peers
        .iter()
        .filter_map(|b| match jwks::to_json(b) {
            Ok(json) => Some(proto::Bundle {
                trust_domain: b.trust_domain.to_string(),
                spiffe_bundle_json: json,
            }),
            Err(e) => {
                tracing::error!(trust_domain = %b.trust_domain, error = %e, "agent api: peer bundle not serializable");
                None
            }
        })
        .collect();
    proto::NodeView {
        revision: 0,
        entries: view.entries.iter().map(entry).collect(),
        own: Some(proto::Bundle {
            trust_domain: view.own.trust_domain.to_string(),
            spiffe_bundle_json: own_json.to_vec(),
        }),
        peers,
        server_id: server_id.to_owned(),
    }
}
