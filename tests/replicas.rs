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
        .entry(ME, &[PEER])
        .metrics();
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

    // Every replica has the peer's bundle (A fetched it; B and C read it from the store),
    // reports the peer up, and names A as the lease holder.
    for r in [&a, &b, &c] {
        let admin = r.dir.path().join("admin.sock");
        common::eventually_some("the peer's bundle pinned on every replica", || async {
            let st = common::status_json(&admin).await;
            let peer = common::peer_status(&st, PEER);
            // A follower reports the holder's pin: up, as the holder is.
            let pinned = peer["sequence"].is_u64() && peer["state"] == "ok";
            (pinned && lease_holder(&st).as_deref() == Some(ids[0].as_str())).then_some(())
        })
        .await;
    }
    let admin_c = c.dir.path().join("admin.sock");
    // The replicas' list is read at each lease round: C's heartbeat shows up there shortly.
    let st = common::eventually_some("three replicas listed", || async {
        let st = common::status_json(&admin_c).await;
        (st["replicas"].as_array().map(Vec::len) == Some(3)).then_some(st)
    })
    .await;
    assert_eq!(st["replica"]["id"], ids[2].as_str());
    let human = common::cli_async(&["status", "--admin-socket", admin_c.to_str().unwrap()]).await;
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human.stdout.contains("3 replicas")
            && human.stdout.contains("LEASE HOLDER")
            && ids.iter().all(|id| human.stdout.contains(id.as_str())),
        "{}",
        human.stdout
    );
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
    let start = doc(&before)["spiffe_sequence"].as_u64().unwrap();
    let killed = Instant::now();
    a.proc.take().unwrap().kill_9();
    let a_cas = db_text(
        &db.url,
        &format!(
            "SELECT encode(sha256(ca_cert), 'hex') FROM authority WHERE replica = '{}'",
            ids[0]
        ),
    );
    assert!(!a_cas.is_empty());
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

    let metrics = new_holder_metrics(&b, &c, &holder).await;
    assert_eq!(
        common::metrics::counter(
            &metrics,
            "meshtrust_store_lease_changes_total",
            "meshtrust_store_lease_changes_total"
        ),
        1,
        "the new holder took the lease once"
    );

    // Survivors: one bundle, sequence never back (on each replica), SVIDs for their
    // workloads, all validated by the peer, who has fetched their newest CAs too. For each
    // new sequence: the time between one survivor serving it and both serving it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sequences = [vec![start], vec![start]];
    let mut first_seen: std::collections::BTreeMap<u64, (Instant, [bool; 2])> =
        std::collections::BTreeMap::new();
    let mut lags = Vec::new();
    while Instant::now() < deadline {
        for (i, r) in [&b, &c].into_iter().enumerate() {
            if let Some(body) = served(&r.endpoint).await {
                let s = doc(&body)["spiffe_sequence"].as_u64().unwrap();
                let last = *sequences[i].last().unwrap();
                assert!(
                    s >= last,
                    "sequence went back on a replica: {last} then {s}"
                );
                if s != last {
                    sequences[i].push(s);
                }
                let seen = first_seen.entry(s).or_insert((Instant::now(), [false; 2]));
                seen.1[i] = true;
                if seen.1 == [true, true] {
                    lags.push((s, seen.0.elapsed()));
                    seen.1 = [false, false];
                    seen.0 = Instant::now() + Duration::from_secs(3600);
                }
            }
        }
    }
    lags.dedup_by_key(|(s, _)| *s);
    println!("sequences served by each survivor, in order: {sequences:?}");
    println!(
        "figure: convergence (first survivor serving a sequence -> both), polled by curl: {lags:?}"
    );
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

    // A is dead for good: once its heartbeat is stale and every SVID it may have signed has
    // expired (x509_svid_ttl 5s + 30s grace), a survivor removes its CAs and its row.
    let gone = format!(
        "SELECT count(*) FROM authority WHERE replica = '{}'",
        ids[0]
    );
    common::eventually_within(
        "the dead replica's CAs leave the bundle",
        Duration::from_secs(90),
        || db_text(&db.url, &gone) == ["0"],
    )
    .await;
    println!(
        "figure: the dead replica's CAs pruned {:?} after its kill",
        killed.elapsed()
    );
    let rows = format!("SELECT count(*) FROM replica WHERE id = '{}'", ids[0]);
    assert_eq!(db_text(&db.url, &rows), ["0"]);
    let body = common::eventually_some("the survivors serve a bundle without A's CAs", || async {
        let (x, y) = (served(&b.endpoint).await?, served(&c.endpoint).await?);
        (x == y && ca_fingerprints(&doc(&x)).iter().all(|f| !a_cas.contains(f))).then_some(x)
    })
    .await;
    assert!(x509_keys(&doc(&body)) >= 2, "the survivors' CAs stay");
}

/// SHA-256 (hex) of each X.509 authority of a bundle document.
fn ca_fingerprints(v: &serde_json::Value) -> Vec<String> {
    use base64::Engine as _;
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| {
            let der = base64::engine::general_purpose::STANDARD
                .decode(k["x5c"][0].as_str().unwrap())
                .unwrap();
            meshtrust::bundle::summary::sha256_hex(&rustls_pki_types::CertificateDer::from(der))
        })
        .collect()
}

/// The metrics address of whichever of `b`, `c` has id `holder`.
async fn new_holder_metrics(b: &Replica, c: &Replica, holder: &str) -> String {
    let r = if read_id(&b.data_dir()) == holder {
        b
    } else {
        c
    };
    common::metrics::listen_addr(r.proc.as_ref().unwrap()).await
}

/// Whether every endpoint serves one document with `cas` CA certificates or more, now.
async fn same_everywhere(endpoints: &[&str], cas: usize) -> bool {
    let mut first: Option<Vec<u8>> = None;
    for e in endpoints {
        let Some(body) = served(e).await else {
            return false;
        };
        if first.as_ref().is_some_and(|f| *f != body) || x509_keys(&doc(&body)) < cas {
            return false;
        }
        first = Some(body);
    }
    true
}

/// PostgreSQL stopped for 30 s under two replicas federating with a peer: both keep serving
/// the bundle, SVIDs and the peer's pin (no call fails) and say the store is unavailable;
/// started again, they resume without a restart: the CA rotation that fell due meanwhile
/// (prepared at half of `ca_ttl` = 60 s) is published, the peer's pin is written again, and a
/// third replica joining then reaches both through their notification connections, reconnected
/// (the hang guard, 10 s, is below the CA's 30 s fallback tick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_through_a_database_outage_and_hear_each_other_after_it() {
    // The shared cluster's presence says PostgreSQL is installed here.
    let Some(_shared) = pg_support::test_db("replicas_outage") else {
        return;
    };
    let cluster = tokio::task::spawn_blocking(pg_support::cluster::Cluster::start)
        .await
        .unwrap();
    // The peer mesh (SQLite), on its own port; its CA rotates (ca_ttl 90 s: the next CA is
    // published at 45 s, after the outage). A peer whose whole overlap (prepared to retired)
    // falls inside our outage is not followed: its new bundle cannot be pinned meanwhile.
    let peer_dir = tempfile::tempdir().unwrap();
    let peer_config = DaemonConfig::new(PEER)
        .ca("ca_ttl = \"90s\"\nx509_svid_ttl = \"5s\"\njwt_svid_ttl = \"5s\"")
        .section("[bundle_endpoint]\nlisten = \"127.0.0.1:0\"\nrefresh_hint = \"1s\"\n")
        .write(peer_dir.path());
    let peer = Proc::serve(&peer_config).await;
    let peer_endpoint = peer.logged_addr("bundle endpoint listening").await;
    let peer_bundle = served(&peer_endpoint).await.unwrap();

    let extra = DaemonConfig::new(TD)
        .ca("ca_ttl = \"60s\"\nx509_svid_ttl = \"5s\"\njwt_svid_ttl = \"5s\"")
        .peer(PEER, &format!("https://{peer_endpoint}/"), None, true)
        .entry(ME, &[PEER]);
    let mut a = Replica::new(&cluster.url(), &extra);
    let mut b = Replica::new(&cluster.url(), &extra);
    for r in [&a, &b] {
        std::fs::write(
            r.dir.path().join(format!("peers/{PEER}.json")),
            &peer_bundle,
        )
        .unwrap();
    }
    a.spawn();
    a.ready().await;
    b.spawn();
    b.ready().await;
    let (before, _) = converged(&[&a.endpoint, &b.endpoint], 2).await;
    // The peer's pin in the database: (sequence, fetched_at in ms since the epoch).
    let pinned = || {
        let rows = db_text(
            &cluster.url(),
            &format!(
                "SELECT sequence || ' ' || fetched_at FROM pinned_bundle WHERE trust_domain = '{PEER}'"
            ),
        );
        let row = rows.first()?;
        let (sequence, at) = row.split_once(' ')?;
        Some((sequence.parse::<u64>().ok()?, at.parse::<u128>().ok()?))
    };
    let (sequence_before, _) =
        common::eventually_some("the peer pinned in the database", || async { pinned() }).await;

    cluster.stop().await;
    let stopped = Instant::now();
    for r in [&a, &b] {
        let admin = r.dir.path().join("admin.sock");
        common::eventually_some("status says store unavailable", || async {
            let st = common::status_json(&admin).await;
            (st["store"]["available"] == false).then_some(())
        })
        .await;
    }
    // 30 s without the database: every call that does not need it keeps being answered.
    let (mut calls, mut failed) = (0_u32, Vec::new());
    while stopped.elapsed() < Duration::from_secs(30) {
        for r in [&a, &b] {
            calls += 1;
            if served(&r.endpoint).await.as_ref() != Some(&before) {
                failed.push(format!("{}: bundle", r.endpoint));
            }
            if svid_leaf(r.dir.path().join("workload.sock"))
                .await
                .is_none()
            {
                failed.push(format!("{}: SVID", r.endpoint));
            }
            // The pin is kept (a newer peer bundle cannot be pinned without the database).
            let st = common::status_json(&r.dir.path().join("admin.sock")).await;
            if !common::peer_status(&st, PEER)["sequence"].is_u64() {
                failed.push(format!(
                    "{}: peer {}",
                    r.endpoint,
                    common::peer_status(&st, PEER)
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {calls} rounds failed: {failed:?}",
        failed.len()
    );
    assert!(calls > 40, "only {calls} rounds in 30 s");
    let outage_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();

    cluster.restart().await;
    for r in [&a, &b] {
        let admin = r.dir.path().join("admin.sock");
        common::eventually_some("status says store available again", || async {
            let st = common::status_json(&admin).await;
            (st["store"]["available"] == true).then_some(())
        })
        .await;
    }
    // Nothing lost, and what waited goes on: the rotation that fell due (a third CA, a higher
    // sequence) is served by both, and the peer's pin is written again.
    let (rotated, _) = converged(&[&a.endpoint, &b.endpoint], 3).await;
    assert!(
        doc(&rotated)["spiffe_sequence"].as_u64() > doc(&before)["spiffe_sequence"].as_u64(),
        "{}",
        String::from_utf8_lossy(&rotated)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pinned().is_some_and(|(sequence, at)| sequence > sequence_before && at >= outage_end) {
        assert!(
            Instant::now() < deadline,
            "no newer peer bundle pinned within 30 s of the outage (before: {sequence_before}, now: {:?})\nA:\n{}\nB:\n{}",
            pinned(),
            a.proc.as_ref().unwrap().log(),
            b.proc.as_ref().unwrap().log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(peer);

    let mut c = Replica::new(&cluster.url(), &extra);
    c.spawn();
    c.ready().await;
    let joined = Instant::now();
    let deadline = joined + Duration::from_secs(10);
    while !same_everywhere(&[&a.endpoint, &b.endpoint, &c.endpoint], 3).await {
        assert!(
            Instant::now() < deadline,
            "the replicas did not hear the new one within 10 s: their notification connections did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "figure: after the outage, a joining replica's CA served by all three within {:?}",
        joined.elapsed()
    );
}
