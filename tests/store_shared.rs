//! The shared store as replicas of one mesh use it (PostgreSQL only, a real server): each
//! replica has a stable id and reads back only its own authorities (their keys are in its own
//! data_dir), the shared view holds every replica's; a write computed from a sequence another
//! replica has moved on from is refused whole ([`StoreError::Conflict`]); a write notifies the
//! other replicas; a single daemon's rows are adopted by the replica that holds their keys.
#![allow(clippy::unwrap_used)]

mod common;
mod pg_support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use meshtrust::store::postgres::{ConnectOptions, PostgresStorage, replicas};
use meshtrust::store::{
    AuthorityState, CaRecord, ReplicaUpdate, Storage, StoreError, StoredAuthority,
};
use meshtrust::svid::PrivateKey;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn authority(generation: u64, fill: u8) -> StoredAuthority {
    StoredAuthority {
        generation,
        state: AuthorityState::Active,
        issued_at: at(1_000_000 + u64::from(fill)),
        not_after: at(2_000_000),
        prune_after: None,
        ca_cert: vec![fill; 300],
        ca_key: PrivateKey::from_pkcs8_der(vec![fill ^ 0x0f; 138]),
        jwt_kid: format!("kid-{fill}"),
        jwt_key: PrivateKey::from_pkcs8_der(vec![fill ^ 0xf0; 138]),
    }
}

fn update(authorities: Vec<StoredAuthority>, base: u64, sequence: u64) -> ReplicaUpdate {
    let jwks = authorities
        .iter()
        .map(|a| format!("{{\"keys\":[],\"kid\":\"{}\"}}", a.jwt_kid).into_bytes())
        .collect();
    ReplicaUpdate {
        record: CaRecord {
            authorities,
            bundle_sequence: sequence,
            bundle_digest: vec![u8::try_from(sequence).unwrap(); 32],
            bundle_json: format!("{{\"spiffe_sequence\":{sequence}}}").into_bytes(),
        },
        jwks,
        base_sequence: base,
        prune: Vec::new(),
    }
}

fn pg(url: &str, data_dir: &Path) -> PostgresStorage {
    let options = ConnectOptions::parse(url, None).unwrap();
    PostgresStorage::open(&options, data_dir).unwrap()
}

/// Two replicas of one database, each with its own data directory (removed when dropped).
struct Replicas {
    a: PostgresStorage,
    b: PostgresStorage,
    _dirs: [tempfile::TempDir; 2],
}

fn two_replicas(url: &str) -> Replicas {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    Replicas {
        a: pg(url, dirs[0].path()),
        b: pg(url, dirs[1].path()),
        _dirs: dirs,
    }
}

#[test]
fn replicas_read_their_own_authorities_and_share_one_bundle() {
    let Some(db) = pg_support::test_db("replicas_share_one_bundle") else {
        return;
    };
    let Replicas { a, b, _dirs: dirs } = two_replicas(&db.url);
    let (ida, idb) = (
        a.replica_id().unwrap().to_owned(),
        b.replica_id().unwrap().to_owned(),
    );
    assert_ne!(ida, idb);
    assert_eq!(
        replicas::replica_id(dirs[0].path()).unwrap(),
        ida,
        "kept in data_dir"
    );

    a.publish(&update(vec![authority(1, 0xa1)], 0, 1)).unwrap();
    b.publish(&update(vec![authority(1, 0xb1)], 1, 2)).unwrap();

    let own_a = a.load_ca().unwrap().unwrap();
    assert_eq!(own_a.authorities.len(), 1, "only a's own, with its key");
    assert_eq!(own_a.authorities[0].ca_cert, vec![0xa1; 300]);
    assert_eq!(own_a.bundle_sequence, 2, "the one shared sequence");
    let shared = b.load_shared().unwrap();
    assert_eq!(shared.sequence, 2);
    assert_eq!(shared.json, b"{\"spiffe_sequence\":2}");
    let mut owners: Vec<(String, u8)> = shared
        .authorities
        .iter()
        .map(|r| (r.replica.clone(), r.ca_cert[0]))
        .collect();
    owners.sort();
    let mut expected = vec![(ida, 0xa1), (idb, 0xb1)];
    expected.sort();
    assert_eq!(owners, expected);
    assert!(
        shared.authorities.iter().all(|r| !r.jwks.is_empty()),
        "each row carries its bundle contribution"
    );
}

#[test]
fn a_write_based_on_a_stale_sequence_is_refused_whole() {
    let Some(db) = pg_support::test_db("stale_write_refused") else {
        return;
    };
    let Replicas { a, b, _dirs } = two_replicas(&db.url);
    a.publish(&update(vec![authority(1, 0xa1)], 0, 1)).unwrap();
    // b computed its write before a's commit: based on "no bundle yet".
    match b.publish(&update(vec![authority(1, 0xb1)], 0, 1)) {
        Err(StoreError::Conflict { stored, expected }) => {
            assert_eq!((stored, expected), (1, 0));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let shared = a.load_shared().unwrap();
    assert_eq!(shared.sequence, 1);
    assert_eq!(
        shared.authorities.len(),
        1,
        "nothing of b's write: {shared:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_notifies_the_other_replicas() {
    let Some(db) = pg_support::test_db("write_notifies") else {
        return;
    };
    let url = db.url.clone();
    let Replicas { a, b, _dirs } = tokio::task::spawn_blocking(move || two_replicas(&url))
        .await
        .unwrap();
    // Only the serving daemon listens: it says so by announcing itself.
    b.announce("");
    let mut changes = b.changes().unwrap();
    // The listener is up once a's notification reaches b: write until one does.
    let started = std::time::Instant::now();
    let a = std::sync::Arc::new(a);
    let mut sequence = 0;
    let noticed = common::guard(async {
        loop {
            let w = a.clone();
            let base = sequence;
            tokio::task::spawn_blocking(move || {
                w.publish(&update(vec![authority(1, 0xa1)], base, base + 1))
            })
            .await
            .unwrap()
            .unwrap();
            sequence += 1;
            if tokio::time::timeout(Duration::from_millis(500), changes.changed())
                .await
                .is_ok()
            {
                return started.elapsed();
            }
        }
    })
    .await;
    println!("figure: first notification seen by the other replica after {noticed:?}");
    tokio::task::spawn_blocking(move || drop((a, b)))
        .await
        .unwrap();
}

#[test]
fn a_single_daemons_authorities_are_adopted_by_the_replica_holding_their_keys() {
    let Some(db) = pg_support::test_db("legacy_rows_adopted") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = pg(&db.url, dir.path());
    s.init_ca(&CaRecord {
        authorities: vec![authority(1, 0x33)],
        bundle_sequence: 1,
        bundle_digest: vec![1; 32],
        bundle_json: b"{}".to_vec(),
    })
    .unwrap();
    drop(s);
    // As a daemon before replicas wrote it: no replica.
    pg_support::run_sql(&db.url, "UPDATE authority SET replica = ''").unwrap();
    let other = tempfile::tempdir().unwrap();
    assert!(
        pg(&db.url, other.path())
            .load_ca()
            .unwrap()
            .unwrap()
            .authorities
            .is_empty(),
        "a replica without the keys does not take them"
    );
    let s = pg(&db.url, dir.path());
    let own = s.load_ca().unwrap().unwrap();
    assert_eq!(own.authorities.len(), 1, "adopted by the key holder");
    let owner = pg_support::query_text(&db.url, "SELECT replica FROM authority").unwrap();
    assert_eq!(owner, vec![s.replica_id().unwrap().to_owned()]);
}

/// Two replicas' pinned bundles: what one pins, the other reads on reload (as when notified);
/// what one forgets (an operator reset there), the other forgets too.
#[test]
fn a_pin_or_a_reset_on_one_replica_reaches_the_other_on_reload() {
    let Some(db) = pg_support::test_db("pins_reach_the_other_replica") else {
        return;
    };
    use meshtrust::bundle::TrustBundle;
    use meshtrust::federation::pinned::PeerStore;
    use meshtrust::spiffe_id::TrustDomain;
    let td = TrustDomain::new("peer.test").unwrap();
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = PeerStore::open(
        std::sync::Arc::new(pg(&db.url, da.path())),
        vec![td.clone()],
    )
    .unwrap();
    let b = PeerStore::open(
        std::sync::Arc::new(pg(&db.url, db_dir.path())),
        vec![td.clone()],
    )
    .unwrap();
    let bundle = TrustBundle {
        trust_domain: td.clone(),
        x509_authorities: Vec::new(),
        jwt_authorities: Vec::new(),
        sequence: Some(7),
        refresh_hint: None,
    };
    a.pin(bundle, SystemTime::now()).unwrap();
    assert!(b.get(&td).is_none());
    assert!(b.reload().unwrap(), "the new pin is published");
    assert_eq!(b.get(&td).unwrap().sequence, Some(7));
    assert!(!b.reload().unwrap(), "nothing new");
    a.reset(&td).unwrap();
    assert!(b.reload().unwrap());
    assert!(b.get(&td).is_none(), "forgotten on both");
}

/// A renewal is never reported as a taking, however soon it follows it: taking and renewing
/// 200 fresh peers back to back puts many of the pairs in one millisecond of the database's
/// clock (where the old "acquired_at is now" rule counted a second taking).
#[test]
fn a_lease_renewed_at_once_is_a_renewal_not_a_taking() {
    let Some(db) = pg_support::test_db("fetch_lease_renewed_at_once") else {
        return;
    };
    use meshtrust::spiffe_id::TrustDomain;
    let dir = tempfile::tempdir().unwrap();
    let a = pg(&db.url, dir.path());
    let long = Duration::from_secs(60);
    for i in 0..200 {
        let peer = [TrustDomain::new(format!("p{i}.test")).unwrap()];
        let taken = a.fetch_leases_take(&peer, long).unwrap().unwrap();
        assert!(taken[0].1.acquired, "round {i}: {taken:?}");
        let renewed = a.fetch_leases_take(&peer, long).unwrap().unwrap();
        assert!(!renewed[0].1.acquired, "round {i}: a renewal: {renewed:?}");
    }
}

/// Fetch leases: one holder per peer; the others see it and cannot take it while it is
/// renewed; once it lapses (its holder gone) the next one to ask takes it, and the old holder,
/// back, finds it taken. The rollback guard of pins is the store's, whoever holds the lease.
#[test]
fn a_fetch_lease_has_one_holder_and_passes_on_when_it_lapses() {
    let Some(db) = pg_support::test_db("fetch_lease_one_holder") else {
        return;
    };
    use meshtrust::spiffe_id::TrustDomain;
    let peers = [
        TrustDomain::new("p1.test").unwrap(),
        TrustDomain::new("p2.test").unwrap(),
    ];
    let Replicas { a, b, _dirs } = two_replicas(&db.url);
    let (ida, idb) = (
        a.replica_id().unwrap().to_owned(),
        b.replica_id().unwrap().to_owned(),
    );
    let long = Duration::from_secs(60);
    let got = a.fetch_leases_take(&peers, long).unwrap().unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(_, l)| l.holder == ida && l.acquired));
    let renewed = a.fetch_leases_take(&peers, long).unwrap().unwrap();
    assert!(
        renewed.iter().all(|(_, l)| l.holder == ida && !l.acquired),
        "a renewal"
    );
    let seen = b.fetch_leases_take(&peers, long).unwrap().unwrap();
    assert!(
        seen.iter().all(|(_, l)| l.holder == ida && !l.acquired),
        "{seen:?}"
    );

    // A stops renewing (gone) with a short lease: B takes both once they lapse.
    let short = Duration::from_millis(300);
    a.fetch_leases_take(&peers, short).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = b.fetch_leases_take(&peers, long).unwrap().unwrap();
        if got.iter().all(|(_, l)| l.holder == idb) {
            assert!(got.iter().all(|(_, l)| l.acquired));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lapsed lease was never taken"
        );
    }
    let back = a.fetch_leases_take(&peers, long).unwrap().unwrap();
    assert!(
        back.iter().all(|(_, l)| l.holder == idb && !l.acquired),
        "{back:?}"
    );
    let listed = a.fetch_leases().unwrap();
    assert_eq!(listed.len(), 2);
}
