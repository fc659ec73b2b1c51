//! The agent registry and join tokens in both store backends (`Storage::save_agent`,
//! `load_agents`, `save_join_token`, `take_join_token`): SQLite in a temp dir, and a real
//! PostgreSQL (a database per test, `pg_support`; skipped with a note without one, required in
//! CI with `MESHTRUST_REQUIRE_POSTGRES=1`). Two handles on one store stand for two replicas:
//! a token minted through one is consumed through the other, exactly once even when both race.
#![allow(clippy::unwrap_used)]

mod pg_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshtrust::store::postgres::{ConnectOptions, PostgresStorage};
use meshtrust::store::sqlite::SqliteStorage;
use meshtrust::store::{AgentRecord, JoinTokenRecord, Storage};

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn agent(node: &str, evicted: bool) -> AgentRecord {
    AgentRecord {
        node: node.to_owned(),
        spiffe_id: format!("spiffe://td/meshtrust/agent/{node}"),
        method: "join_token".to_owned(),
        address: "10.0.0.7:41000".to_owned(),
        attested_at: at(1_000),
        last_sync: (!evicted).then(|| at(1_100)),
        svid_expires_at: at(4_600),
        evicted,
        svid_sha256: (!evicted).then_some([1u8; 32]),
        previous_svid_sha256: (!evicted).then_some([2u8; 32]),
    }
}

fn token(fill: u8, node: &str, expires: u64) -> JoinTokenRecord {
    JoinTokenRecord {
        hash: [fill; 32],
        node: node.to_owned(),
        expires_at: at(expires),
    }
}

fn agents_are_stored_whole_and_replaced(open: &dyn Fn() -> Arc<dyn Storage>) {
    let s = open();
    assert!(s.load_agents().unwrap().is_empty());
    s.save_agent(&agent("web-1", false)).unwrap();
    s.save_agent(&agent("db-1", false)).unwrap();
    s.save_agent(&agent("web-1", true)).unwrap();
    let other = open();
    assert_eq!(
        other.load_agents().unwrap(),
        [agent("db-1", false), agent("web-1", true)],
        "by node, the latest write, seen by another handle"
    );
}

fn tokens_are_taken_once_across_handles(open: &dyn Fn() -> Arc<dyn Storage>) {
    let (a, b) = (open(), open());
    a.save_join_token(&token(1, "web-1", 2_000), at(1_000))
        .unwrap();
    a.save_join_token(&token(2, "web-2", 1_500), at(1_000))
        .unwrap();
    assert_eq!(
        b.take_join_token(&[1; 32]).unwrap(),
        Some(token(1, "web-1", 2_000))
    );
    assert_eq!(a.take_join_token(&[1; 32]).unwrap(), None, "used");
    // Creating a token at 1_600 forgets the one that expired at 1_500.
    a.save_join_token(&token(3, "web-3", 3_000), at(1_600))
        .unwrap();
    assert_eq!(b.take_join_token(&[2; 32]).unwrap(), None, "pruned");

    // Eight racing takes of one token through eight handles: one winner.
    a.save_join_token(&token(9, "race", 9_000), at(1_600))
        .unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = open();
            std::thread::spawn(move || s.take_join_token(&[9; 32]).unwrap().is_some())
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
}

fn pg(url: &str, data_dir: &Path) -> PostgresStorage {
    let options = ConnectOptions::parse(url, None).unwrap();
    PostgresStorage::open(&options, data_dir).unwrap()
}

fn on_sqlite(test: fn(&dyn Fn() -> Arc<dyn Storage>)) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    test(&move || Arc::new(SqliteStorage::open(&d).unwrap()));
}

fn on_postgres(name: &str, test: fn(&dyn Fn() -> Arc<dyn Storage>)) {
    let Some(db) = pg_support::test_db(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (d, url) = (dir.path().to_owned(), db.url.clone());
    test(&move || Arc::new(pg(&url, &d)));
}

#[test]
fn sqlite_agents() {
    on_sqlite(agents_are_stored_whole_and_replaced);
}

#[test]
fn sqlite_tokens() {
    on_sqlite(tokens_are_taken_once_across_handles);
}

#[test]
fn postgres_agents() {
    on_postgres("agent_store_agents", agents_are_stored_whole_and_replaced);
}

#[test]
fn postgres_tokens() {
    on_postgres("agent_store_tokens", tokens_are_taken_once_across_handles);
}
