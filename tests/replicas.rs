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
        Self::new_with_endpoint(
            url,
            extra,
            "[bundle_endpoint]\nlisten = \"127.0.0.1:0\"\nrefresh_hint = \"2s\"\n",
        )
    }

    /// [`Replica::new`] with this `[bundle_endpoint]` section.
    fn new_with_endpoint(url: &str, extra: &DaemonConfig, endpoint: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = DaemonConfig::new(TD)
            .section(endpoint)
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

/// Waits until every endpoint serves the same document with `cas` CA certificates or more; returns
/// it and how long that took.
async fn converged(endpoints: &[&str], cas: usize) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let body = common::eventually_some("every replica serves the same bundle", || async {
        let mut bodies = Vec::new();
        for e in endpoints {
            bodies.push(served(e).await?);
        }
        let first = bodies[0].clone();
        (bodies.iter().all(|b| *b == first) && x509_keys(&doc(&first)) >= cas).then_some(first)
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

/// A port free now (bound and released): for a daemon another must name before it starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const PEER: &str = "peer.test";
const ME: &str = "spiffe://ha.test/workload";

/// The leaf of the X509-SVID a daemon's Workload API gives this test now.
async fn svid_leaf(workload: PathBuf) -> Option<rustls_pki_types::CertificateDer<'static>> {
    let reply = common::http::workload_get_async(&workload, "/v1/x509-svid").await;
    if reply.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    let pem = v["svids"][0]["x509_svid_pem"].as_str()?;
    meshtrust::bundle::pem::parse_certs_pem(pem.as_bytes())
        .ok()?
        .into_iter()
        .next()
}

/// Whether the peer's Workload API bundle for ha.test validates `leaf` (openssl).
async fn peer_validates(peer_dir: &Path, leaf: &rustls_pki_types::CertificateDer<'static>) -> bool {
    let bundles = common::http::x509_bundles(&peer_dir.join("workload.sock")).await;
    let Some(roots) = bundles.get("spiffe://ha.test") else {
        return false;
    };
    let scratch = tempfile::tempdir().unwrap();
    common::openssl_verify(scratch.path(), roots, leaf, "any").0
}

fn lease_holder(status: &serde_json::Value) -> Option<String> {
    common::peer_status(status, PEER)["lease_holder"]
        .as_str()
        .map(str::to_owned)
}

/// Three replicas and a peer mesh federating with them: the peer is fetched by one replica
/// at a time (the lease holder); killing it (kill -9) while CAs rotate (ca_ttl 30 s) lets
/// another take the lease within its TTL; the sequence never goes back; the survivors serve
/// one bundle and their workloads keep getting SVIDs; the peer validates SVIDs of every
/// replica (its pinned bundle holds all their CAs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_the_lease_holder_during_rotation_and_the_mesh_goes_on() {
    let Some(db) = pg_support::test_db("replicas_lease_takeover") else {
        return;
    };
    let (peer_port, c_port) = (free_port(), free_port());
    // The peer mesh (SQLite), fetching ha.test from replica C; its CA exists before anyone runs.
    let peer_dir = tempfile::tempdir().unwrap();
    let peer_config = DaemonConfig::new(PEER)
        .bundle_endpoint(peer_port, "1s")
        .peer(TD, &format!("https://127.0.0.1:{c_port}/"), None, true)
        .entry(&format!("spiffe://{PEER}/workload"), &[TD])
        .write(peer_dir.path());
    let shown =
        common::cli_async(&["bundle", "show", "--config", peer_config.to_str().unwrap()]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);

    let extra = DaemonConfig::new(TD)
        .ca("ca_ttl = \"30s\"\nx509_svid_ttl = \"5s\"\njwt_svid_ttl = \"5s\"")
        .peer(PEER, &format!("https://127.0.0.1:{peer_port}/"), None, true)
        .entry(ME, &[PEER]);
    let mut a = Replica::new(&db.url, &extra);
    let mut b = Replica::new(&db.url, &extra);
    let mut c = Replica::new_with_endpoint(
        &db.url,
        &extra,
        &format!("[bundle_endpoint]\nlisten = \"127.0.0.1:{c_port}\"\nrefresh_hint = \"2s\"\n"),
    );
    for r in [&a, &b, &c] {
        std::fs::write(
            r.dir.path().join(format!("peers/{PEER}.json")),
            &shown.stdout,
        )
        .unwrap();
    }
    // A first: alone, it takes the peer's lease.
    a.spawn();
    a.ready().await;
    a.proc
        .as_ref()
        .unwrap()
        .wait_for_log("fetch lease taken")
        .await;
    b.spawn();
    c.spawn();
    b.ready().await;
    c.ready().await;
    let ids: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|r| read_id(&r.data_dir()))
        .collect();

    // The peer starts on the union of the three CAs.
    let (union, _) = converged(&[&a.endpoint, &b.endpoint, &c.endpoint], 3).await;
    std::fs::write(peer_dir.path().join(format!("peers/{TD}.json")), &union).unwrap();
    let _peer = Proc::serve(&peer_config).await;

    // Every replica has the peer's bundle (A fetched it; B and C read it from the store) and
    // names A as the lease holder.
    for r in [&a, &b, &c] {
        let admin = r.dir.path().join("admin.sock");
        common::eventually_some("the peer's bundle pinned on every replica", || async {
            let st = common::status_json(&admin).await;
            let pinned = common::peer_status(&st, PEER)["sequence"].is_u64();
            (pinned && lease_holder(&st).as_deref() == Some(ids[0].as_str())).then_some(())
        })
        .await;
    }
    let st = common::status_json(&c.dir.path().join("admin.sock")).await;
    assert_eq!(st["replica"]["id"], ids[2].as_str());
    assert_eq!(st["replicas"].as_array().map(Vec::len), Some(3), "{st}");
    // Federation once per peer: only the holder fetched it.
    let fetches = |r: &Replica| r.proc.as_ref().unwrap().count("peer bundle fetch");
    assert!(fetches(&a) > 0, "{}", a.proc.as_ref().unwrap().log());
    assert_eq!(
        (fetches(&b), fetches(&c)),
        (0, 0),
        "only the lease holder fetches"
    );

    // The peer validates an SVID of every replica.
    for r in [&a, &b, &c] {
        let leaf =
            common::eventually_some("an svid", || svid_leaf(r.dir.path().join("workload.sock")))
                .await;
        common::eventually_some("the peer validates the replica's svid", || async {
            peer_validates(peer_dir.path(), &leaf).await.then_some(())
        })
        .await;
    }

    // Kill the lease holder once a rotation is under way (a prepared CA in the bundle).
    common::eventually_some("a rotation under way", || async {
        let st = common::status_json(&a.dir.path().join("admin.sock")).await;
        st["ca"]["prepared"].is_object().then_some(())
    })
    .await;
    let before = served(&b.endpoint).await.unwrap();
    let mut sequences = vec![doc(&before)["spiffe_sequence"].as_u64().unwrap()];
    let killed = Instant::now();
    a.proc.take().unwrap().kill_9();
    let holder = common::eventually_some("another replica takes the lease", || async {
        for r in [&b, &c] {
            if r.proc.as_ref().unwrap().count("fetch lease taken") > 0 {
                return Some(read_id(&r.data_dir()));
            }
        }
        None
    })
    .await;
    let takeover = killed.elapsed();
    println!("figure: lease takeover {takeover:?} after kill -9 of the holder (ttl 3s)");

    // Survivors: one bundle, sequence never back, SVIDs for their workloads, all validated by
    // the peer, who has fetched their newest CAs too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for r in [&b, &c] {
            if let Some(body) = served(&r.endpoint).await {
                let s = doc(&body)["spiffe_sequence"].as_u64().unwrap();
                assert!(
                    s >= *sequences.last().unwrap(),
                    "sequence went back: {sequences:?} then {s}"
                );
                sequences.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sequences.dedup();
    println!("sequences served by the survivors, in order: {sequences:?}");
    let started = Instant::now();
    let (body, _) = common::eventually_some("b and c serve the same bundle", || async {
        let (x, y) = (served(&b.endpoint).await?, served(&c.endpoint).await?);
        (x == y).then_some((x, ()))
    })
    .await;
    println!(
        "figure: survivors serve one bundle (sequence {}) within {:?}",
        doc(&body)["spiffe_sequence"],
        started.elapsed()
    );
    for r in [&b, &c] {
        let leaf = common::eventually_some("a survivor's svid", || {
            svid_leaf(r.dir.path().join("workload.sock"))
        })
        .await;
        common::eventually_some("the peer validates the survivor's new svid", || async {
            peer_validates(peer_dir.path(), &leaf).await.then_some(())
        })
        .await;
    }
    let st = common::status_json(&b.dir.path().join("admin.sock")).await;
    assert_eq!(lease_holder(&st).as_deref(), Some(holder.as_str()), "{st}");
}
