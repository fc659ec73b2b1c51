//! `[[entry]]`: registration entries (who gets which SPIFFE ID, and which peer bundles).

use std::collections::HashMap;

use crate::spiffe_id::{SpiffeId, TrustDomain};

use super::{Cx, Result};
use crate::config::raw::RawEntry;
use crate::config::{
    EntryConfig, FederatesWith, FederationConfig, MAX_HINT_LEN, NodeScope, Selector,
};

impl Cx<'_> {
    pub(super) fn entries(
        &self,
        raw: Vec<RawEntry>,
        own: &TrustDomain,
        peers: &[FederationConfig],
        reserved_id: Option<&SpiffeId>,
    ) -> Result<Vec<EntryConfig>> {
        let mut hints: HashMap<String, usize> = HashMap::new();
        let mut entries = Vec::with_capacity(raw.len());
        for (i, entry) in raw.into_iter().enumerate() {
            let key = |name: &str| format!("entry[{i}].{name}");
            let id_key = key("spiffe_id");
            let spiffe_id =
                self.workload_id_in(&id_key, &self.required(&id_key, entry.spiffe_id)?, own)?;
            if reserved_id == Some(&spiffe_id) {
                return Err(self.invalid(
                    id_key,
                    format!("{spiffe_id} is the bundle endpoint's own ID (bundle_endpoint.endpoint_spiffe_id); a workload must not get it"),
                ));
            }
            let selectors_key = key("selectors");
            let texts = self.required(&selectors_key, entry.selectors)?;
            if texts.is_empty() {
                return Err(self.invalid(selectors_key, "must list at least one selector (an entry without selectors would match every caller)"));
            }
            let selectors = texts
                .iter()
                .enumerate()
                .map(|(j, text)| {
                    text.parse::<Selector>().map_err(|e| {
                        self.invalid(
                            format!("{selectors_key}[{j}]"),
                            format!("invalid selector {text:?}: {e}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if selectors.iter().all(|s| matches!(s, Selector::Path(_))) {
                return Err(self.invalid(
                    selectors_key,
                    "unix:path alone is no identity: any local user can run that executable (with \
                     LD_PRELOAD, or under ptrace) and be given this SVID and its key; add a \
                     unix:uid or unix:gid selector naming the account that runs it",
                ));
            }
            let federates_with =
                self.federates_with(&key("federates_with"), entry.federates_with, own, peers)?;
            let hint = entry.hint.filter(|hint| !hint.is_empty());
            if let Some(hint) = &hint {
                if hint.len() > MAX_HINT_LEN {
                    return Err(self.invalid(
                        key("hint"),
                        format!("is {} bytes; at most {MAX_HINT_LEN} allowed", hint.len()),
                    ));
                }
                if let Some(first) = hints.insert(hint.clone(), i) {
                    return Err(self.invalid(
                        key("hint"),
                        format!("{hint:?} is already the hint of entry[{first}]; non-empty hints must be unique (SPIFFE Workload API §5.2.1)"),
                    ));
                }
            }
            let node = match entry.node {
                None => None,
                Some(star) if star == "*" => Some(NodeScope::All),
                Some(name) => {
                    if let Err(why) = crate::node::validate_node_name(&name) {
                        return Err(self.invalid(key("node"), why.to_string()));
                    }
                    Some(NodeScope::Node(name))
                }
            };
            entries.push(EntryConfig {
                spiffe_id,
                selectors,
                federates_with,
                hint,
                node,
            });
        }
        Ok(entries)
    }

    fn federates_with(
        &self,
        key: &str,
        items: Vec<String>,
        own: &TrustDomain,
        peers: &[FederationConfig],
    ) -> Result<FederatesWith> {
        let count = items.len();
        let mut list: Vec<TrustDomain> = Vec::with_capacity(count);
        for (j, item) in items.into_iter().enumerate() {
            let item_key = format!("{key}[{j}]");
            if item == "*" {
                if count > 1 {
                    return Err(self.invalid(item_key, "\"*\" (every peer) must be the only item"));
                }
                return Ok(FederatesWith::All);
            }
            let td = self.trust_domain(&item_key, item)?;
            if &td == own {
                return Err(self.invalid(
                    item_key,
                    format!(
                        "\"{td}\" is this server's own trust domain; its bundle is always sent"
                    ),
                ));
            }
            if !peers.iter().any(|peer| peer.trust_domain == td) {
                return Err(self.invalid(
                    item_key,
                    format!("\"{td}\" is not a configured [[federation]] trust domain"),
                ));
            }
            if list.contains(&td) {
                return Err(self.invalid(item_key, format!("\"{td}\" is listed twice")));
            }
            list.push(td);
        }
        Ok(FederatesWith::Only(list))
    }
}
