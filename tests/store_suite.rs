//! One storage suite, run against both backends of `store::Storage`: the embedded SQLite file
//! and PostgreSQL (a real server, a database per test: see `pg_support`). The PostgreSQL tests
//! skip with a note when none is configured, and fail in CI (`MESHTRUST_REQUIRE_POSTGRES=1`).
//! After the shared suite, what only the shared backend does: schema creation racing across
//! replicas, CA keys kept out of the database, and an unreachable database reported as such.
#![allow(clippy::unwrap_used)]

mod pg_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshtrust::spiffe_id::TrustDomain;
use meshtrust::store::postgres::{ConnectOptions, PostgresStorage, keys, schema};
use meshtrust::store::sqlite::SqliteStorage;
use meshtrust::store::{
    AuthorityState, CaRecord, PinnedBundle, Storage, StoreError, StoredAuthority,
};
use meshtrust::svid::PrivateKey;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn authority(generation: u64, fill: u8, state: AuthorityState) -> StoredAuthority {
    StoredAuthority {
        generation,
        state,
        issued_at: at(1_000_000 + generation),
        not_after: at(2_000_000 + generation),
        prune_after: (state == AuthorityState::Retired).then(|| at(1_500_000)),
        ca_cert: vec![0xc0 ^ fill; 400],
        ca_key: PrivateKey::from_pkcs8_der(vec![fill; 138]),
        jwt_kid: format!("kid-{generation}"),
        jwt_key: PrivateKey::from_pkcs8_der(vec![fill ^ 0xff; 138]),
    }
}

fn record(authorities: Vec<StoredAuthority>, sequence: u64) -> CaRecord {
    CaRecord {
        authorities,
        bundle_sequence: sequence,
        bundle_digest: vec![sequence as u8; 32],
        bundle_json: format!("{{\"spiffe_sequence\":{sequence}}}").into_bytes(),
    }
}

fn pin(td: &str, sequence: Option<u64>, body: &str) -> PinnedBundle {
    PinnedBundle {
        trust_domain: TrustDomain::new(td).unwrap(),
        bundle_json: body.as_bytes().to_vec(),
        sequence,
        fetched_at: at(1_234_567),
    }
}

/// What a comparison can see of an authority (keys included, as bytes).
fn view(a: &StoredAuthority) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?} {:?} {} {:?} {:?}",
        a.generation,
        a.state,
        a.issued_at,
        a.not_after,
        a.prune_after,
        a.ca_cert,
        a.jwt_kid,
        a.ca_key.pkcs8_der(),
        a.jwt_key.pkcs8_der()
    )
}

fn same(a: &CaRecord, b: &CaRecord) {
    let va: Vec<String> = a.authorities.iter().map(view).collect();
    let vb: Vec<String> = b.authorities.iter().map(view).collect();
    assert_eq!(va, vb);
    assert_eq!(a.bundle_sequence, b.bundle_sequence);
    assert_eq!(a.bundle_digest, b.bundle_digest);
    assert_eq!(a.bundle_json, b.bundle_json);
}

// ---- the shared suite: `open` opens the same store again (a restart) -----------------------

fn empty_store_holds_nothing(s: &dyn Storage, _open: &dyn Fn() -> Arc<dyn Storage>) {
    assert!(s.load_ca().unwrap().is_none());
    assert!(s.load_pinned().unwrap().is_empty());
}

fn init_ca_stores_once_and_returns_the_first(
    s: &dyn Storage,
    _open: &dyn Fn() -> Arc<dyn Storage>,
) {
    let first = record(vec![authority(1, 0x11, AuthorityState::Active)], 1);
    let second = record(vec![authority(1, 0x22, AuthorityState::Active)], 7);
    same(&s.init_ca(&first).unwrap(), &first);
    same(&s.init_ca(&second).unwrap(), &first);
    same(&s.load_ca().unwrap().unwrap(), &first);
}

fn save_ca_replaces_everything_and_survives_a_restart(
    s: &dyn Storage,
    open: &dyn Fn() -> Arc<dyn Storage>,
) {
    s.init_ca(&record(vec![authority(1, 0x11, AuthorityState::Active)], 1))
        .unwrap();
    let rotated = record(
        vec![
            authority(1, 0x11, AuthorityState::Retired),
            authority(2, 0x22, AuthorityState::Active),
            authority(3, 0x33, AuthorityState::Prepared),
        ],
        3,
    );
    s.save_ca(&rotated).unwrap();
    same(&s.load_ca().unwrap().unwrap(), &rotated);
    let pruned = record(vec![authority(3, 0x33, AuthorityState::Active)], 4);
    s.save_ca(&pruned).unwrap();
    same(&s.load_ca().unwrap().unwrap(), &pruned);
    same(&open().load_ca().unwrap().unwrap(), &pruned);
}

fn pins_insert_replace_and_delete(s: &dyn Storage, open: &dyn Fn() -> Arc<dyn Storage>) {
    s.save_pinned(&pin("b.test", Some(3), "{\"b\":3}")).unwrap();
    s.save_pinned(&pin("a.test", None, "{\"a\":0}")).unwrap();
    s.save_pinned(&pin("b.test", Some(4), "{\"b\":4}")).unwrap();
    assert_eq!(
        s.load_pinned().unwrap(),
        vec![
            pin("a.test", None, "{\"a\":0}"),
            pin("b.test", Some(4), "{\"b\":4}")
        ],
        "ordered by trust domain, the newest pin replacing the old"
    );
    s.delete_pinned(&TrustDomain::new("a.test").unwrap())
        .unwrap();
    s.delete_pinned(&TrustDomain::new("never.test").unwrap())
        .unwrap();
    assert_eq!(
        open().load_pinned().unwrap(),
        vec![pin("b.test", Some(4), "{\"b\":4}")]
    );
}

/// The rollback guard is the store's: a lower sequence than the stored one is refused by the
/// write itself (so two replicas can never pin out of order); equal or higher, or either
/// without a sequence, is written; after a delete (a reset) a lower one is accepted.
fn pins_never_go_back_in_the_store(s: &dyn Storage, open: &dyn Fn() -> Arc<dyn Storage>) {
    s.save_pinned(&pin("p.test", Some(5), "{\"v\":5}")).unwrap();
    match open().save_pinned(&pin("p.test", Some(4), "{\"v\":4}")) {
        Err(StoreError::SequenceRollback {
            pinned: 5,
            received: 4,
        }) => {}
        other => panic!("expected the rollback refused by the store, got {other:?}"),
    }
    assert_eq!(
        s.load_pinned().unwrap(),
        vec![pin("p.test", Some(5), "{\"v\":5}")]
    );
    s.save_pinned(&pin("p.test", Some(5), "{\"v\":55}"))
        .unwrap();
    s.save_pinned(&pin("p.test", None, "{\"v\":0}")).unwrap();
    s.save_pinned(&pin("p.test", Some(1), "{\"v\":1}")).unwrap();
    s.delete_pinned(&TrustDomain::new("p.test").unwrap())
        .unwrap();
    s.save_pinned(&pin("p.test", Some(7), "{\"v\":7}")).unwrap();
    s.delete_pinned(&TrustDomain::new("p.test").unwrap())
        .unwrap();
    s.save_pinned(&pin("p.test", Some(2), "{\"v\":2}")).unwrap();
    assert_eq!(
        s.load_pinned().unwrap(),
        vec![pin("p.test", Some(2), "{\"v\":2}")]
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let d = dir.path().to_owned();
                    let open = move || -> Arc<dyn Storage> {
                        Arc::new(SqliteStorage::open(&d).unwrap())
                    };
                    let s = open();
                    super::$name(&*s, &open);
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let Some(db) = pg_support::test_db(concat!("postgres::", stringify!($name)))
                    else {
                        return;
                    };
                    let dir = tempfile::tempdir().unwrap();
                    let d = dir.path().to_owned();
                    let url = db.url.clone();
                    let open = move || -> Arc<dyn Storage> { Arc::new(pg(&url, &d)) };
                    let s = open();
                    super::$name(&*s, &open);
                }
            )*
        }
    };
}

suite!(
    empty_store_holds_nothing,
    init_ca_stores_once_and_returns_the_first,
    save_ca_replaces_everything_and_survives_a_restart,
    pins_insert_replace_and_delete,
    pins_never_go_back_in_the_store,
);

fn pg(url: &str, data_dir: &Path) -> PostgresStorage {
    let options = ConnectOptions::parse(url, None).unwrap();
    PostgresStorage::open(&options, data_dir).unwrap()
}

// ---- PostgreSQL only -----------------------------------------------------------------------

/// Replicas started at the same instant on an empty database: each applies the migrations
/// under the advisory lock or finds them applied; none fails, one schema version row.
#[test]
fn eight_replicas_opening_an_empty_database_at_once_create_one_schema() {
    let Some(db) = pg_support::test_db("eight_replicas_create_one_schema") else {
        return;
    };
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = db.url.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                let options = ConnectOptions::parse(&url, None).unwrap();
                barrier.wait();
                PostgresStorage::open(&options, dir.path()).map(|_| ())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let versions = pg_support::query_text(&db.url, "SELECT version FROM meshtrust_schema").unwrap();
    assert_eq!(versions, vec![schema::current().to_string()]);
}

/// No CA private key is in the database: the rows hold certificates, the keys are 0600 files
/// in the replica's own data_dir (0700), and a pruned authority's key files are deleted.
#[test]
fn ca_keys_stay_in_data_dir_and_never_enter_the_database() {
    let Some(db) = pg_support::test_db("ca_keys_stay_in_data_dir") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = pg(&db.url, dir.path());
    s.init_ca(&record(
        vec![
            authority(1, 0x5a, AuthorityState::Retired),
            authority(2, 0x6b, AuthorityState::Active),
        ],
        2,
    ))
    .unwrap();
    let everything = pg_support::query_text(
        &db.url,
        "SELECT string_agg(t::text, ' ') FROM (
            SELECT a::text AS t FROM authority a
            UNION ALL SELECT o::text FROM own_bundle o) x",
    )
    .unwrap()
    .join(" ");
    let cert_hex: String = std::iter::repeat_n("9a", 400).collect();
    assert!(
        everything.contains(&cert_hex),
        "the dump holds the certificates' bytes in hex"
    );
    for fill in [0x5au8, 0x6b, 0x5a ^ 0xff, 0x6b ^ 0xff] {
        let hex: String = std::iter::repeat_n(format!("{fill:02x}"), 138).collect();
        assert!(
            !everything.contains(&hex),
            "key bytes {fill:#x} found in the database"
        );
    }
    let key_dir = dir.path().join(keys::KEY_DIR);
    assert_eq!(
        std::fs::metadata(&key_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files = |d: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let before = files(&key_dir);
    assert_eq!(before.len(), 4, "two keys per authority: {before:?}");
    for f in &before {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    s.save_ca(&record(vec![authority(2, 0x6b, AuthorityState::Active)], 3))
        .unwrap();
    let after = files(&key_dir);
    let stem = keys::stem(&[0xc0 ^ 0x5a; 400]);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after
            .iter()
            .all(|f| !f.file_name().unwrap().to_string_lossy().starts_with(&stem)),
        "the pruned authority's key files are gone"
    );
}

/// A database migrated by a newer meshtrust is not written by an older one.
#[test]
fn a_schema_newer_than_this_binary_is_refused() {
    let Some(db) = pg_support::test_db("schema_newer_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    drop(pg(&db.url, dir.path()));
    pg_support::run_sql(&db.url, "UPDATE meshtrust_schema SET version = 99").unwrap();
    let options = ConnectOptions::parse(&db.url, None).unwrap();
    match PostgresStorage::open(&options, dir.path()) {
        Err(StoreError::Config(m)) => assert!(m.contains("version 99, newer"), "{m}"),
        other => panic!("expected the newer schema refused, got {other:?}"),
    }
}

/// Nothing listening: the failure is "unavailable" (what the daemon retries), promptly, and the
/// password is not in the message. Needs no PostgreSQL.
#[test]
fn an_unreachable_database_is_unavailable_and_the_password_is_not_shown() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://u:hunter2@127.0.0.1:{port}/m");
    let dir = tempfile::tempdir().unwrap();
    let options = ConnectOptions::parse(&url, None).unwrap();
    match PostgresStorage::open(&options, dir.path()) {
        Err(e @ StoreError::Unavailable(_)) => {
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// `sslmode=verify-full` through rustls: the server is authenticated by the CA file and its
/// name, the connection is encrypted (the role used is refused without TLS), and a server the
/// CA did not certify is refused with the certificate named as the reason.
#[test]
fn verify_full_connects_over_tls_and_refuses_a_server_the_ca_does_not_vouch_for() {
    let Some(db) = pg_support::test_db("verify_full_tls") else {
        return;
    };
    let Some((ca, url)) = pg_support::tls(&db) else {
        assert!(
            std::env::var("MESHTRUST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "the CI cluster has TLS (.ci/postgres.sh)"
        );
        eprintln!("SKIPPED verify_full_tls: the cluster was not made by .ci/postgres.sh");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = ConnectOptions::parse(&format!("{url}?sslmode=disable"), None).unwrap();
    match PostgresStorage::open(&plain, dir.path()) {
        Err(e) => assert!(e.to_string().contains("no encryption"), "{e}"),
        Ok(_) => panic!("the TLS-only role connected without TLS"),
    }
    let tls = ConnectOptions::parse(&format!("{url}?sslmode=verify-full"), Some(&ca)).unwrap();
    let s = PostgresStorage::open(&tls, dir.path()).unwrap();
    s.save_pinned(&pin("a.test", Some(1), "{}")).unwrap();
    assert_eq!(s.load_pinned().unwrap().len(), 1);

    // Another CA: the test cluster's certificate does not chain to it.
    let other = dir.path().join("other-ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&other, cert.cert.pem()).unwrap();
    let wrong = ConnectOptions::parse(&format!("{url}?sslmode=verify-full"), Some(&other)).unwrap();
    match PostgresStorage::open(&wrong, tempfile::tempdir().unwrap().path()) {
        Err(e) => assert!(e.to_string().contains("certificate"), "{e}"),
        Ok(_) => panic!("connected to a server the CA does not vouch for"),
    }
}
