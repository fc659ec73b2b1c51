//! Replicas of one mesh on one PostgreSQL database (issue 11), real `meshtrust serve`
//! processes: each has its own CA (key in its own data_dir) and every one serves the same
//! bundle, the union of their CAs, byte for byte for a given `spiffe_sequence`.
//!
//! Figures (convergence, takeover) are printed, never asserted; waits have hang guards only.
//! Skips with a note without PostgreSQL; never in CI (`MESHTRUST_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used)]

mod common;
mod pg_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::config::DaemonConfig;
use common::daemon::{Proc, READY};
use common::http::curl_body_insecure;

const TD: &str = "ha.test";

/// One replica: its folder, config and process.
struct Replica {
    dir: tempfile::TempDir,
    config: PathBuf,
    proc: Option<Proc>,
    endpoint: String,
}

impl Replica {
    fn new(url: &str, extra: &DaemonConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = DaemonConfig::new(TD)
            .bundle_endpoint_any_port("refresh_hint = \"5s\"\n")
            .section(&format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n"))
            .section(&extra.sections());
        let config = text.write(dir.path());
        Self {
            dir,
            config,
            proc: None,
            endpoint: String::new(),
        }
    }

    /// Spawns `serve` without waiting.
    fn spawn(&mut self) {
        self.proc = Some(Proc::spawn(&[
            "serve",
            "--config",
            self.config.to_str().unwrap(),
        ]));
    }

    async fn ready(&mut self) {
        let p = self.proc.as_ref().unwrap();
        p.wait_for_log(READY).await;
        self.endpoint = p.logged_addr("bundle endpoint listening").await;
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// The bundle document a replica's endpoint serves now.
async fn served(endpoint: &str) -> Option<Vec<u8>> {
    let url = format!("https://{endpoint}/");
    tokio::task::spawn_blocking(move || curl_body_insecure(&url))
        .await
        .unwrap()
}

fn doc(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn x509_keys(v: &serde_json::Value) -> usize {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .count()
}

/// Waits until every endpoint serves the same document with `cas` CA certificates; returns
/// it and how long that took.
async fn converged(endpoints: &[&str], cas: usize) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let body = common::eventually_some("every replica serves the same bundle", || async {
        let mut bodies = Vec::new();
        for e in endpoints {
            bodies.push(served(e).await?);
        }
        let first = bodies[0].clone();
        (bodies.iter().all(|b| *b == first) && x509_keys(&doc(&first)) == cas).then_some(first)
    })
    .await;
    (body, started.elapsed())
}

fn db_text(url: &str, sql: &str) -> Vec<String> {
    pg_support::query_text(url, sql).unwrap()
}

fn read_id(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("replica-id"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Two replicas started at the same instant on an empty database: one schema, one bundle
/// record holding both CAs, and both serve it byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_at_once_on_an_empty_database_create_one_schema_and_one_bundle() {
    let Some(db) = pg_support::test_db("replicas_start_at_once") else {
        return;
    };
    let none = DaemonConfig::new(TD);
    let mut a = Replica::new(&db.url, &none);
    let mut b = Replica::new(&db.url, &none);
    a.spawn();
    b.spawn();
    a.ready().await;
    b.ready().await;

    assert_eq!(
        db_text(&db.url, "SELECT count(*) FROM meshtrust_schema"),
        vec!["1"]
    );
    assert_eq!(
        db_text(&db.url, "SELECT count(*) FROM own_bundle"),
        vec!["1"]
    );
    let mut owners = db_text(&db.url, "SELECT DISTINCT replica FROM authority");
    owners.sort();
    let mut ids = vec![read_id(&a.data_dir()), read_id(&b.data_dir())];
    ids.sort();
    assert_eq!(owners, ids, "one CA per replica, each owned by its replica");

    let (body, took) = converged(&[&a.endpoint, &b.endpoint], 2).await;
    println!("figure: two replicas serve one bundle {took:?} after both were ready");
    let stored = db_text(&db.url, "SELECT convert_from(json, 'UTF8') FROM own_bundle");
    assert_eq!(stored, vec![String::from_utf8(body.clone()).unwrap()]);
    let sequence = doc(&body)["spiffe_sequence"].as_u64().unwrap();
    assert!(
        sequence <= 2,
        "one bump per change: the first CA, then the second ({sequence})"
    );
}

/// `config/ha/`: three replicas of one mesh on one database; they parse, name the same trust
/// domain and store, and differ in nothing a replica must share.
#[test]
fn the_ha_example_is_three_replicas_of_one_mesh_on_one_database() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ha");
    let configs: Vec<meshtrust::config::Config> = (1..=3)
        .map(|i| meshtrust::config::Config::load(&dir.join(format!("replica-{i}.toml"))).unwrap())
        .collect();
    for c in &configs {
        assert!(
            matches!(c.store, meshtrust::config::StoreConfig::Postgres(_)),
            "{:?}",
            c.store
        );
        assert_eq!(c.trust_domain, configs[0].trust_domain);
        assert_eq!(format!("{:?}", c.store), format!("{:?}", configs[0].store));
        assert_eq!(format!("{:?}", c.ca), format!("{:?}", configs[0].ca));
        assert_eq!(
            format!("{:?}", c.federation),
            format!("{:?}", configs[0].federation)
        );
    }
}
