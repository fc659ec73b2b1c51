//! The agent API's decisions (`meshtrust::agent_api::AgentApiCore`) on a real CA and SQLite
//! store: join tokens are one-time, expire and must be known; the agent SVID certifies the
//! agent's own key under `spiffe://<td>/meshtrust/agent/<node>`; a CSR for another node's ID is
//! refused; a node is sent only its entries and the bundles they need. Every refusal is counted
//! by reason.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::workload::{entry, open_ca, own_uid_selector, storage};
use meshtrust::agent_api::{AgentApiCore, AgentApiError};
use meshtrust::clock::ManualClock;
use meshtrust::config::{EntryConfig, NodeAttestationConfig, NodeScope};
use meshtrust::federation::pinned::PeerStore;
use meshtrust::metrics::agents::{AgentMetrics, AgentRefusal};
use meshtrust::node::NodeError;
use meshtrust::node::admin::Nodes;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tokio::sync::watch;

const HOUR: Duration = Duration::from_secs(3600);

fn on(node: Option<NodeScope>, mut e: EntryConfig) -> EntryConfig {
    e.node = node;
    e
}

fn csr(uri: Option<&str>, key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::default();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    }
    params.serialize_request(key).unwrap().der().to_vec()
}

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    core: AgentApiCore,
    metrics: Arc<AgentMetrics>,
    _ca: meshtrust::ca::Ca,
    _peer: meshtrust::ca::Ca,
}

fn fixture(join_token: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let own = storage(&dir.path().join("a"));
    let ca = open_ca(own.clone(), "mesh-a.test", clock.clone(), HOUR * 24);
    let peer = open_ca(
        storage(&dir.path().join("b")),
        "mesh-b.test",
        clock.clone(),
        HOUR * 24,
    );
    let other = open_ca(
        storage(&dir.path().join("c")),
        "mesh-c.test",
        clock.clone(),
        HOUR * 24,
    );
    let peers = PeerStore::open(
        own,
        vec![common::td("mesh-b.test"), common::td("mesh-c.test")],
    )
    .unwrap();
    for p in [&peer, &other] {
        peers
            .pin((*p.snapshot().bundle).clone(), SystemTime::now())
            .unwrap();
    }
    let uid = own_uid_selector;
    let entries = vec![
        on(
            Some(NodeScope::Node("web-1".into())),
            entry(
                "spiffe://mesh-a.test/web",
                vec![uid()],
                &["mesh-b.test"],
                "",
            ),
        ),
        on(
            Some(NodeScope::Node("db-1".into())),
            entry("spiffe://mesh-a.test/db", vec![uid()], &["mesh-c.test"], ""),
        ),
        on(
            Some(NodeScope::All),
            entry("spiffe://mesh-a.test/log", vec![uid()], &[], ""),
        ),
        entry("spiffe://mesh-a.test/server-local", vec![uid()], &["*"], ""),
    ];
    let (_, entries) = watch::channel(Arc::new(entries));
    let metrics = Arc::new(AgentMetrics::default());
    let core = AgentApiCore {
        trust_domain: common::td("mesh-a.test"),
        ca: ca.subscribe(),
        peers: peers.subscribe(),
        entries,
        nodes: Arc::new(Nodes::new(clock.clone())),
        attestation: NodeAttestationConfig {
            join_token,
            x509pop_ca_file: None,
        },
        metrics: metrics.clone(),
    };
    Fixture {
        _dir: dir,
        clock,
        core,
        metrics,
        _ca: ca,
        _peer: peer,
    }
}

fn now(f: &Fixture) -> SystemTime {
    use meshtrust::clock::Clock as _;
    f.clock.now()
}

#[test]
fn a_join_token_attests_its_node_once_with_the_agents_own_key() {
    let f = fixture(true);
    let token = f.core.nodes.tokens.create("web-1", HOUR, now(&f)).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    // The CSR's own name is ignored: the ID comes from the token's node.
    let request = csr(Some("spiffe://mesh-a.test/meshtrust/agent/db-1"), &key);
    let svid = f.core.attest_join_token(&token.token, &request).unwrap();
    assert_eq!(svid.node, "web-1");
    assert_eq!(
        svid.spiffe_id.as_str(),
        "spiffe://mesh-a.test/meshtrust/agent/web-1"
    );
    assert_eq!(
        common::uri_sans(&svid.leaf.cert),
        ["spiffe://mesh-a.test/meshtrust/agent/web-1"]
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.leaf.cert).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key)
    );

    // Reuse: refused, counted.
    let again = f
        .core
        .attest_join_token(&token.token, &request)
        .unwrap_err();
    assert!(
        matches!(again, AgentApiError::Refused(NodeError::UnknownToken)),
        "{again}"
    );
    assert_eq!(f.metrics.refusals(AgentRefusal::UnknownToken), 1);
}

#[test]
fn unknown_and_expired_tokens_and_bad_csrs_are_refused_by_reason() {
    let f = fixture(true);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let request = csr(None, &key);
    let unknown = f.core.attest_join_token("made-up", &request).unwrap_err();
    assert!(matches!(
        unknown,
        AgentApiError::Refused(NodeError::UnknownToken)
    ));

    let token = f
        .core
        .nodes
        .tokens
        .create("web-1", Duration::from_secs(60), now(&f))
        .unwrap();
    // A bad CSR does not burn the token.
    let mut bad = request.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let refused = f.core.attest_join_token(&token.token, &bad).unwrap_err();
    assert!(
        matches!(refused, AgentApiError::Refused(NodeError::BadCsr(_))),
        "{refused}"
    );
    assert_eq!(f.metrics.refusals(AgentRefusal::BadCsr), 1);

    f.clock.advance(Duration::from_secs(61));
    let expired = f
        .core
        .attest_join_token(&token.token, &request)
        .unwrap_err();
    assert!(
        matches!(expired, AgentApiError::Refused(NodeError::ExpiredToken)),
        "{expired}"
    );
    assert_eq!(f.metrics.refusals(AgentRefusal::ExpiredToken), 1);
    assert_eq!(f.metrics.refusals(AgentRefusal::UnknownToken), 1);
}

#[test]
fn join_tokens_can_be_turned_off() {
    let f = fixture(false);
    let token = f.core.nodes.tokens.create("web-1", HOUR, now(&f)).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let err = f
        .core
        .attest_join_token(&token.token, &csr(None, &key))
        .unwrap_err();
    assert!(matches!(err, AgentApiError::MethodDisabled), "{err}");
    assert_eq!(f.metrics.refusals(AgentRefusal::MethodDisabled), 1);
}

#[test]
fn a_csr_for_another_nodes_id_is_refused() {
    let f = fixture(true);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = f
        .core
        .sign_workload("web-1", &csr(Some("spiffe://mesh-a.test/web"), &key))
        .unwrap();
    assert_eq!(common::uri_sans(&leaf.cert), ["spiffe://mesh-a.test/web"]);
    f.core
        .sign_workload("db-1", &csr(Some("spiffe://mesh-a.test/log"), &key))
        .unwrap();
    for stolen in [
        "spiffe://mesh-a.test/db",
        "spiffe://mesh-a.test/server-local",
        "spiffe://mesh-a.test/meshtrust/agent/db-1",
        "spiffe://mesh-b.test/web",
    ] {
        let err = f
            .core
            .sign_workload("web-1", &csr(Some(stolen), &key))
            .unwrap_err();
        assert!(
            matches!(&err, AgentApiError::Refused(NodeError::NotEntitled { id, node }) if id == stolen && node == "web-1"),
            "{stolen}: {err}"
        );
    }
    assert_eq!(f.metrics.refusals(AgentRefusal::NotEntitled), 4);
}

#[test]
fn a_node_is_sent_only_its_entries_and_the_bundles_they_need() {
    let f = fixture(true);
    let view = f.core.node_view("web-1");
    let ids: Vec<&str> = view.entries.iter().map(|e| e.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://mesh-a.test/web", "spiffe://mesh-a.test/log"]
    );
    assert_eq!(view.own.trust_domain.as_str(), "mesh-a.test");
    let peers: Vec<&str> = view.peers.iter().map(|b| b.trust_domain.as_str()).collect();
    assert_eq!(
        peers,
        ["mesh-b.test"],
        "not mesh-c.test: only db-1's entry federates with it"
    );
    let other = f.core.node_view("cache-9");
    let ids: Vec<&str> = other.entries.iter().map(|e| e.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://mesh-a.test/log"]);
    assert!(other.peers.is_empty());
}
