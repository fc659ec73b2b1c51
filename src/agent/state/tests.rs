//! The publishing invariant (an entry reaches the Workload API only with its SVID, an expired
//! one never) and the cache across a restart, on a real state in a temp dir.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

use super::AgentState;
use crate::agent::svids::svid_from_chain;
use crate::agent_api::proto;
use crate::bundle::{TrustBundle, jwks};
use crate::clock::SystemClock;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{PrivateKey, X509Svid};
use crate::workload_api::identity::SvidCache;

const WEB: &str = "spiffe://td/web";

struct Pki {
    params: CertificateParams,
    key: KeyPair,
    bundle: TrustBundle,
}

fn pki() -> Pki {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let mut bundle = TrustBundle::empty(TrustDomain::new("td").unwrap());
    bundle.x509_authorities = vec![cert.der().clone()];
    bundle.sequence = Some(1);
    Pki {
        params,
        key,
        bundle,
    }
}

fn svid(pki: &Pki, id: &str, not_after: SystemTime) -> X509Svid {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    params.not_before = (SystemTime::now() - Duration::from_secs(10)).into();
    params.not_after = not_after.into();
    let issuer = Issuer::from_params(&pki.params, &pki.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    svid_from_chain(
        &SpiffeId::new(id).unwrap(),
        vec![cert.der().to_vec()],
        PrivateKey::from_pkcs8_der(key.serialize_der()),
    )
    .unwrap()
}

fn view(pki: &Pki, ids: &[&str]) -> proto::NodeView {
    proto::NodeView {
        revision: 1,
        entries: ids
            .iter()
            .map(|id| proto::Entry {
                spiffe_id: (*id).to_owned(),
                selectors: vec!["unix:uid:1".to_owned()],
                federates_with: vec![],
                hint: String::new(),
            })
            .collect(),
        own: Some(proto::Bundle {
            trust_domain: "td".to_owned(),
            spiffe_bundle_json: jwks::to_json(&pki.bundle).unwrap(),
        }),
        peers: vec![],
        server_id: "replica-1".to_owned(),
    }
}

fn open(dir: &std::path::Path, pki: &Pki) -> Arc<AgentState> {
    let td = TrustDomain::new("td").unwrap();
    AgentState::open(td, dir, pki.bundle.clone(), Arc::new(SystemClock)).unwrap()
}

fn published(state: &AgentState) -> Vec<String> {
    let deps = state.deps();
    let entries = deps.entries.borrow().clone();
    entries.iter().map(|e| e.spiffe_id.to_string()).collect()
}

fn issues(state: &AgentState, id: &str) -> bool {
    let mut own = state.deps().own;
    own.current()
        .issuer
        .x509_svid(
            &SpiffeId::new(id).unwrap(),
            &SvidCache::new(),
            SystemTime::now(),
        )
        .is_ok()
}

#[test]
fn an_entry_is_published_only_with_its_svid_and_both_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let hour = Duration::from_secs(3600);
    let state = open(dir.path(), &pki);
    state
        .set_agent(
            "n1",
            svid(
                &pki,
                "spiffe://td/meshtrust/agent/n1",
                SystemTime::now() + hour,
            ),
        )
        .unwrap();

    state.apply_view(view(&pki, &[WEB]), "https://s1").unwrap();
    assert!(published(&state).is_empty(), "no SVID yet: no entry");
    assert_eq!(state.due(), vec![SpiffeId::new(WEB).unwrap()]);
    assert!(state.missing_any());

    state
        .add_svids(vec![svid(&pki, WEB, SystemTime::now() + hour)])
        .unwrap();
    assert_eq!(published(&state), [WEB]);
    assert!(issues(&state, WEB));
    assert!(state.due().is_empty(), "fresh until its renewal time");
    assert_eq!(state.status().agent.server_id.as_deref(), Some("replica-1"));

    // Publishing again with nothing new wakes no stream.
    let mut own = state.deps().own;
    own.current();
    let mut entries = state.deps().entries;
    entries.borrow_and_update();
    state.publish();
    state.apply_view(view(&pki, &[WEB]), "https://s1").unwrap();
    let woke = futures_util::FutureExt::now_or_never(own.changed());
    assert!(woke.is_none(), "the same SVIDs and bundle: no new snapshot");
    assert!(!entries.has_changed().unwrap());

    // Restarted with no server: the same entry and SVID, from the cache.
    drop(state);
    let state = open(dir.path(), &pki);
    assert_eq!(published(&state), [WEB]);
    assert!(issues(&state, WEB));
    assert_eq!(state.agent().unwrap().0, "n1");
    assert!(state.first_expiry_seconds().unwrap() > 3000);

    // The entry goes: so does its SVID.
    state.apply_view(view(&pki, &[]), "https://s1").unwrap();
    assert!(published(&state).is_empty());
    assert!(!issues(&state, WEB));
    assert!(state.status().agent.identities.is_empty());
}

#[test]
fn an_expired_svid_is_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let state = open(dir.path(), &pki);
    state
        .set_agent(
            "n1",
            svid(
                &pki,
                "spiffe://td/meshtrust/agent/n1",
                SystemTime::now() + Duration::from_secs(60),
            ),
        )
        .unwrap();
    state.apply_view(view(&pki, &[WEB]), "https://s1").unwrap();
    let before = SystemTime::now();
    state
        .add_svids(vec![svid(
            &pki,
            WEB,
            SystemTime::now() - Duration::from_secs(1),
        )])
        .unwrap();
    assert!(published(&state).is_empty());
    assert!(!issues(&state, WEB));
    assert!(
        state.first_expiry_seconds().unwrap() < 0,
        "metrics say it is past"
    );
    // Renewed soon, but not at once: a server handing out dead certificates is not hammered,
    // and the past expiry is no deadline (the sync task would wake for it in a loop).
    let next = state.next_deadline().unwrap();
    assert!(next > before, "{next:?}");
    assert!(
        next <= SystemTime::now() + Duration::from_secs(1),
        "{next:?}"
    );
}
