//! Reading a compose file as compose reads it: shared by tests/compose.rs and
//! tests/compose_hosts.rs.

#![allow(dead_code)] // each test file uses part

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_norway::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The compose file `name` of the repository, with its `<<` merges applied.
pub fn load(name: &str) -> Value {
    let mut c: Value =
        serde_norway::from_str(&std::fs::read_to_string(repo().join(name)).unwrap()).unwrap();
    // Twice: a service merging another service (`<<: *replica`) that itself merges
    // `x-meshtrust` needs a second pass (compose's YAML loader flattens both).
    c.apply_merge().unwrap();
    c.apply_merge().unwrap();
    c
}

/// A sequence of strings (other items and non-sequences: none).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A mapping's keys, or a sequence's strings (compose accepts both for networks, depends_on).
pub fn keys(v: &Value) -> BTreeSet<String> {
    match v {
        Value::Mapping(m) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        Value::Sequence(_) => strings(v).into_iter().collect(),
        _ => BTreeSet::new(),
    }
}
