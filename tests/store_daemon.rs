//! The real binary on `[store] kind = "postgres"` (a real PostgreSQL, a database per test; the
//! tests skip with a note without one, and fail in CI with `MESHTRUST_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used)]

mod common;
mod pg_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::config::DaemonConfig;
use common::daemon::Proc;

/// A daemon folder whose config points at `url` through a 0600 `url_file`.
fn postgres_daemon(dir: &Path, url: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let url_file = dir.join("secrets/pg-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    DaemonConfig::new("pg.test")
        .section("[store]\nkind = \"postgres\"\nurl_file = \"secrets/pg-url\"\n")
        .write(dir)
}

fn bundle_show(config: &Path) -> String {
    let out = common::cli(&["bundle", "show", "--config", config.to_str().unwrap()]);
    out.ok().stdout.clone()
}

/// The state lives in the database (the bundle and its sequence) and the CA key in data_dir:
/// a restart serves the same bundle, which is the one the database holds.
#[test]
fn a_daemon_on_postgres_keeps_its_ca_and_bundle_across_a_restart() {
    let Some(db) = pg_support::test_db("daemon_on_postgres_restart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_daemon(dir.path(), &db.url);
    let first = Proc::serve_blocking(&config);
    assert_eq!(first.count("created the CA"), 1, "{}", first.log());
    let before = bundle_show(&config);
    let stored =
        pg_support::query_text(&db.url, "SELECT convert_from(json, 'UTF8') FROM own_bundle")
            .unwrap();
    assert_eq!(stored.len(), 1);
    let served: serde_json::Value = serde_json::from_str(&before).unwrap();
    let in_db: serde_json::Value = serde_json::from_str(&stored[0]).unwrap();
    assert_eq!(
        served["keys"], in_db["keys"],
        "bundle show prints the database's bundle"
    );
    let keys = std::fs::read_dir(dir.path().join("data/ca-keys"))
        .unwrap()
        .count();
    assert_eq!(keys, 2, "the CA and JWT keys are files in data_dir");
    first.stop();

    let second = Proc::serve_blocking(&config);
    assert_eq!(second.count("created the CA"), 0, "{}", second.log());
    assert_eq!(
        bundle_show(&config),
        before,
        "same CA, same sequence after a restart"
    );
}

/// A second data_dir on the same database is a second replica of the mesh: it does not take
/// the first one's CA (whose key it does not hold) but makes its own, and the one bundle both
/// publish holds the two CAs (tests/replicas.rs goes further).
#[test]
fn a_second_data_dir_on_the_same_database_joins_as_a_replica_with_its_own_ca() {
    let Some(db) = pg_support::test_db("second_data_dir_joins") else {
        return;
    };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first_config = postgres_daemon(a.path(), &db.url);
    let _first = Proc::serve_blocking(&first_config);
    let config = postgres_daemon(b.path(), &db.url);
    let _second = Proc::serve_blocking(&config);
    let shown: serde_json::Value = serde_json::from_str(&bundle_show(&config)).unwrap();
    let cas = shown["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .count();
    assert_eq!(cas, 2, "{shown}");
    assert_eq!(bundle_show(&first_config), bundle_show(&config));
    let keys = |d: &Path| std::fs::read_dir(d.join("data/ca-keys")).unwrap().count();
    assert_eq!(
        (keys(a.path()), keys(b.path())),
        (2, 2),
        "each its own CA and JWT key"
    );
}

/// Nothing listening at the URL: the daemon does not start, says the store is unavailable, and
/// never prints the password. Needs no PostgreSQL.
#[test]
fn a_daemon_whose_database_is_unreachable_at_start_says_store_unavailable() {
    // Port 1 on the loopback: refused for sure (a port bound and dropped could be taken by
    // another test meanwhile).
    let addr = common::refused_addr();
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_daemon(dir.path(), &format!("postgres://u:hunter2@{addr}/m"));
    let out = common::cli(&["serve", "--config", config.to_str().unwrap()]);
    out.fails_with(1, "store unavailable");
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
}

/// A bad `[store]` is a config error: exit 64, the key named.
#[test]
fn a_bad_store_section_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("pg.test")
        .section(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://u@db.example/m?sslmode=require\"\n",
        )
        .write(dir.path());
    common::cli(&["serve", "--config", config.to_str().unwrap()]).fails_with(64, "store.url");
}
