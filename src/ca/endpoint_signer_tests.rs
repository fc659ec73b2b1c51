//! Which authority the bundle endpoint's SVID chains to across a rotation (issue 9 item 5).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::ca::key::KeyType;
use crate::clock::ManualClock;
use crate::store::sqlite::SqliteStorage;

const HOUR: Duration = Duration::from_secs(3600);

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn open(dir: &std::path::Path, clock: Arc<ManualClock>) -> Ca {
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir).expect("state"));
    let policy = CaPolicy {
        key_type: KeyType::EcP256,
        ca_ttl: 24 * HOUR,
        x509_svid_ttl: HOUR,
        jwt_svid_ttl: Duration::from_secs(300),
        refresh_hint: Duration::from_secs(300),
    };
    let td = TrustDomain::new("mesh-a.test").expect("td");
    Ca::open(td, policy, clock, storage).expect("ca")
}

fn endpoint_id() -> SpiffeId {
    SpiffeId::new("spiffe://mesh-a.test/meshtrust/server").expect("id")
}

fn generation_of(ca: &Ca, clock: &ManualClock) -> (u64, AuthorityState) {
    let signer = ca
        .snapshot()
        .endpoint_signer(clock.now())
        .expect("a signer");
    (signer.authority.generation, signer.state)
}

#[test]
fn the_endpoint_signs_with_the_old_ca_until_the_new_one_is_half_a_lifetime_old() {
    // A peer whose last fetch was up to ca_ttl/2 ago holds the CA the endpoint chains to.
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(start()));
    let ca = open(dir.path(), clock.clone());
    assert_eq!(generation_of(&ca, &clock), (1, AuthorityState::Active));

    clock.set(start() + 12 * HOUR);
    ca.tick().expect("prepare");
    assert_eq!(generation_of(&ca, &clock), (1, AuthorityState::Active));
    let signer = ca.snapshot().endpoint_signer(clock.now()).expect("signer");
    assert_eq!(
        signer.switch_at, signer.authority.not_after,
        "the old CA's end"
    );

    // 20h: the new CA signs workloads; the endpoint stays on the old, retired one.
    clock.set(start() + 20 * HOUR);
    ca.tick().expect("activate");
    assert_eq!(ca.snapshot().active().expect("active").generation, 2);
    assert_eq!(generation_of(&ca, &clock), (1, AuthorityState::Retired));
    let (svid, _) = ca
        .snapshot()
        .issue_endpoint_svid(&endpoint_id(), clock.now())
        .expect("endpoint svid");
    assert_eq!(svid.not_after, clock.now() + HOUR);

    // Without the endpoint's hold, the retired CA would leave at 21h + grace; it stays while
    // the endpoint's SVID it signed is valid, and the endpoint keeps renewing from it.
    for hour in [21, 22, 23] {
        clock.set(start() + hour * HOUR - 30 * Duration::from_secs(60));
        ca.tick().expect("tick");
        ca.snapshot()
            .issue_endpoint_svid(&endpoint_id(), clock.now())
            .expect("renewal");
        clock.set(start() + hour * HOUR + RETIRE_GRACE + Duration::from_secs(1));
        ca.tick().expect("tick");
        assert_eq!(
            ca.snapshot().bundle.x509_authorities.len(),
            2,
            "at {hour}h the retired CA is still published"
        );
        assert_eq!(generation_of(&ca, &clock), (1, AuthorityState::Retired));
    }
    // The hold survives a restart (it is in the stored prune time).
    let reopened = open(dir.path(), clock.clone());
    assert_eq!(reopened.snapshot().bundle.x509_authorities.len(), 2);

    // 24h: the old CA expires and leaves; the new one, published 12h ago, takes over.
    let old_end = ca.snapshot().slots[0].authority.not_after;
    clock.set(old_end);
    ca.tick().expect("prune");
    let generations: Vec<u64> = ca
        .snapshot()
        .slots
        .iter()
        .map(|s| s.authority.generation)
        .collect();
    assert!(!generations.contains(&1), "{generations:?}");
    assert_eq!(generation_of(&ca, &clock), (2, AuthorityState::Active));
}

#[test]
fn without_the_endpoint_the_retired_ca_leaves_after_its_last_svid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(start()));
    let ca = open(dir.path(), clock.clone());
    clock.set(start() + 12 * HOUR);
    ca.tick().expect("prepare");
    clock.set(start() + 20 * HOUR);
    ca.tick().expect("activate");
    clock.set(start() + 21 * HOUR + RETIRE_GRACE + Duration::from_secs(1));
    ca.tick().expect("prune");
    assert_eq!(ca.snapshot().bundle.x509_authorities.len(), 1);
}
