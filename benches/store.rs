//! Store figures (issue 11): the latency of the writes that need the database, on PostgreSQL
//! with SQLite's same writes measured in the same run as the baseline, and how fast a replica
//! hears another's change (a write by one until the other's notification arrives), against
//! the database's bare round trip.
//!
//! - CA write: a replica's authorities and the shared bundle in one transaction (PostgreSQL:
//!   `Storage::publish`, based on the sequence read); SQLite: `Storage::save_ca` of the same
//!   record. Rotation and new replicas pay it, not SVID issuance.
//! - Pin write: `Storage::save_pinned` (the rollback guard is in the statement).
//! - Convergence: replica A publishes, replica B's listener (`LISTEN` on its own connection)
//!   raises its change counter; one at a time.
//!
//! PostgreSQL is a private cluster started by `.ci/postgres.sh` (which installs Debian's
//! `postgresql` when missing), made durable (fsync, synchronous_commit and full_page_writes
//! on, unlike the test cluster), on loopback without TLS; under `cargo test` without PostgreSQL
//! installed the bench is skipped. Each figure is over `N` sequential calls (p50, p99).

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{Met, Mode, ms, note, percentile, row};
use meshtrust::spiffe_id::TrustDomain;
use meshtrust::store::postgres::{ConnectOptions, PostgresStorage};
use meshtrust::store::sqlite::SqliteStorage;
use meshtrust::store::{
    AuthorityState, CaRecord, PinnedBundle, ReplicaUpdate, Storage, StoredAuthority,
};
use meshtrust::svid::PrivateKey;

/// A private cluster (the tests' own), stopped when dropped.
#[path = "../tests/pg_support/cluster.rs"]
mod cluster;
use cluster::Cluster;

fn postgres_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().any(|v| v.path().join("bin/initdb").exists()))
        .unwrap_or(false)
}

fn authority(generation: u64, fill: u8) -> StoredAuthority {
    let now = SystemTime::now();
    StoredAuthority {
        generation,
        state: AuthorityState::Active,
        issued_at: now,
        not_after: now + Duration::from_secs(86_400),
        prune_after: None,
        ca_cert: vec![fill; 480],
        ca_key: PrivateKey::from_pkcs8_der(vec![fill ^ 0x0f; 138]),
        jwt_kid: format!("kid-{fill}"),
        jwt_key: PrivateKey::from_pkcs8_der(vec![fill ^ 0xf0; 138]),
    }
}

/// A record of two authorities and a bundle document of about the usual size.
fn record(sequence: u64) -> CaRecord {
    CaRecord {
        authorities: vec![authority(1, 0x11), authority(2, 0x22)],
        bundle_sequence: sequence,
        bundle_digest: vec![u8::try_from(sequence % 256).unwrap(); 32],
        bundle_json: vec![b'x'; 2400],
    }
}

fn update(sequence: u64) -> ReplicaUpdate {
    ReplicaUpdate {
        record: record(sequence + 1),
        jwks: vec![vec![b'j'; 900]; 2],
        base_sequence: sequence,
        prune: Vec::new(),
    }
}

fn pin(sequence: u64) -> PinnedBundle {
    PinnedBundle {
        trust_domain: TrustDomain::new("peer.test").unwrap(),
        bundle_json: vec![b'p'; 2400],
        sequence: Some(sequence),
        fetched_at: SystemTime::now(),
    }
}

/// `n` sequential timings of `f(i)`, sorted.
fn timings(n: u64, mut f: impl FnMut(u64)) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

fn report(figure: &str, pg: &[Duration], baseline: &[Duration], base_name: &str, target: &str) {
    for p in [50.0, 99.0] {
        let (v, b) = (percentile(pg, p), percentile(baseline, p));
        let met = match target {
            "-" => Met::NotApplicable,
            _ => Met::from(ms(v) < 1000.0),
        };
        row(
            &format!("{figure} p{p:.0}"),
            &format!("{:.2} ms", ms(v)),
            &format!("{:.2} ms {base_name}", ms(b)),
            Some(ms(v) / ms(b).max(1e-6)),
            target,
            met,
        );
    }
}

fn main() {
    if !postgres_installed() && common::mode() == Mode::CargoTest {
        eprintln!("skipped: PostgreSQL is not installed (.ci/postgres.sh installs it)");
        return;
    }
    let n: u64 = if common::smoke() { 20 } else { 1000 };
    let cluster = Cluster::start_durable();
    let url = cluster.url();
    let options = ConnectOptions::parse(&url, None).unwrap();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let sqlite = SqliteStorage::open(dirs[0].path()).unwrap();
    let a = PostgresStorage::open(&options, dirs[1].path()).unwrap();
    let b = PostgresStorage::open(&options, dirs[2].path()).unwrap();
    b.announce("");

    let sqlite_ca = timings(n, |i| sqlite.save_ca(&record(i + 1)).unwrap());
    let pg_ca = timings(n, |i| a.publish(&update(i)).unwrap());
    report(
        "store: CA write (authorities + shared bundle, one transaction)",
        &pg_ca,
        &sqlite_ca,
        "SQLite save_ca",
        "-",
    );
    let sqlite_pin = timings(n, |i| sqlite.save_pinned(&pin(i)).unwrap());
    let pg_pin = timings(n, |i| a.save_pinned(&pin(i)).unwrap());
    report(
        "store: pin write (rollback guard in the statement)",
        &pg_pin,
        &sqlite_pin,
        "SQLite",
        "-",
    );

    // Convergence: B's listener connects in the background; wait until it hears a write.
    let mut changes = b.changes().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sequence = n;
    let mut publish_and_hear = |timeout: Duration| -> Option<Duration> {
        // Changes counted before this write (the listener's first connect) are taken first.
        changes.borrow_and_update();
        let t = Instant::now();
        a.publish(&update(sequence)).unwrap();
        sequence += 1;
        let heard = rt.block_on(async { tokio::time::timeout(timeout, changes.changed()).await });
        heard.is_ok().then(|| t.elapsed())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while publish_and_hear(Duration::from_millis(200)).is_none() {
        assert!(
            Instant::now() < deadline,
            "the listener never heard a write"
        );
    }
    let mut heard: Vec<Duration> = (0..n)
        .map(|_| publish_and_hear(Duration::from_secs(5)).expect("a notification"))
        .collect();
    heard.sort();
    let round_trip = timings(n, |_| {
        a.load_pinned().unwrap();
    });
    report(
        "store: convergence, replica A's CA write until replica B is notified",
        &heard,
        &round_trip,
        "one PostgreSQL read (load_pinned)",
        "< 1000 ms",
    );
    note(&format!(
        "store: {n} sequential calls per figure; PostgreSQL {} on loopback (private cluster, \
         fsync and synchronous_commit on, no TLS), SQLite in a temp dir (WAL, synchronous=FULL); convergence includes the \
         writer's commit",
        server_version(&url)
    ));
}

fn server_version(url: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-Atc", "SHOW server_version"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "(version unknown)".to_owned(),
    }
}
