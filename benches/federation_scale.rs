//! Figure 4: federation at scale. One daemon federates with 1,000 `https_web` peers, all served
//! by one local HTTPS server (this process, `GET /peer/N`, a distinct one-CA bundle per peer,
//! `spiffe_refresh_hint` 60 s). Measured on the daemon process (a separate release binary):
//! CPU in steady state from `/proc/<pid>/stat` over a 90 s window (more than one refresh
//! cycle), RSS, and a cold start on the pinned state: time from spawn until the Workload API
//! (JSON view, `GET /v1/x509-bundles`) serves all 1,000 peer bundles. Targets: CPU < 5 % of one
//! core, RSS < 100 MiB, cold start < 1 s.
//!
//! Baselines in the same run: for CPU, the test server's own CPU over the same window (the
//! other end of the same fetches, same Rust TLS stack); for RSS and cold start, the same
//! daemon with no peer.
//!
//! Then the same 1,000 peers with `[store] kind = "postgres"` (a fresh database on the cluster
//! named by `MESHTRUST_TEST_PG_URL_FILE`, which benches/run.sh starts): CPU and RSS against the
//! SQLite figures of the same run (issue 14: < 5 % of a core, < 100 MiB).

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::daemon::Spawned;
use common::fixtures::{DaemonConfig, WebCert, peer_bundle_json, web_cert};

const HINT: Duration = Duration::from_secs(60);

fn federation_blocks(peers: usize, port: u16, cert: &WebCert) -> String {
    let mut text = String::new();
    for n in 0..peers {
        let _ = write!(
            text,
            "[[federation]]\ntrust_domain = \"peer{n}.test\"\n\
             bundle_endpoint_url = \"https://127.0.0.1:{port}/peer/{n}\"\n\
             profile = \"https_web\"\nca_file = \"{}\"\n",
            cert.ca_pem.display()
        );
    }
    text
}

/// Peers whose bundle the admin API shows pinned, and those whose last fetch was ok.
async fn admin_counts(dir: &Path) -> Option<(usize, usize)> {
    let (code, body) = common::uds_http::get(&dir.join("admin.sock"), "/v1/status", &[])
        .await
        .ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let peers = v["federation"].as_array()?;
    let pinned = peers.iter().filter(|p| !p["sequence"].is_null()).count();
    let ok = peers.iter().filter(|p| p["state"] == "ok").count();
    Some((pinned, ok))
}

/// Bundles the Workload API's JSON view hands a workload (own trust domain included).
async fn served_bundles(dir: &Path) -> Option<usize> {
    let (code, body) = common::uds_http::get(
        &dir.join("workload.sock"),
        "/v1/x509-bundles",
        &[("workload.spiffe.io", "true")],
    )
    .await
    .ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(v["bundles"].as_object()?.len())
}

/// Spawns the daemon and polls (every 10 ms) until the Workload API serves `want` bundles;
/// the time from spawn. Also the time until the admin API shows `peers` pinned.
async fn cold_start(config: &Path, dir: &Path, peers: usize) -> (Spawned, Duration, Duration) {
    let daemon = Spawned::serve(config);
    let deadline = daemon.started + Duration::from_secs(60);
    let (mut served_at, mut pinned_at) = (None, None);
    while served_at.is_none() || pinned_at.is_none() {
        assert!(
            Instant::now() < deadline,
            "cold start: not all {peers} peer bundles served within 60 s; log:\n{}",
            daemon.log_tail()
        );
        if served_at.is_none() && served_bundles(dir).await == Some(peers + 1) {
            served_at = Some(daemon.started.elapsed());
        }
        if pinned_at.is_none() && admin_counts(dir).await.is_some_and(|(p, _)| p == peers) {
            pinned_at = Some(daemon.started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (daemon, served_at.unwrap(), pinned_at.unwrap())
}

/// The steady state of a daemon federating with `peers`: first fetch of all, then CPU over
/// `window`, RSS.
struct Steady {
    cpu: f64,
    server_cpu: f64,
    rss: u64,
    peak: u64,
    fetches: u64,
    conns: u64,
    first_fetch: Duration,
    all_ok: Option<(usize, usize)>,
    secs: f64,
}

async fn steady(
    config: &Path,
    dir: &Path,
    peers: usize,
    window: Duration,
    counters: &common::peer_server::Counters,
    hz: f64,
) -> Steady {
    // First start on empty state: every peer is fetched and pinned.
    let mut daemon = Spawned::serve(config);
    daemon.wait_ready(Duration::from_secs(60));
    let t0 = Instant::now();
    loop {
        if admin_counts(dir)
            .await
            .is_some_and(|(p, ok)| p == peers && ok == peers)
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "not all {peers} peers fetched within 120 s: {:?}; log:\n{}",
            admin_counts(dir).await,
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_fetch = t0.elapsed();

    // Steady state: the window starts once every peer is pinned and ok.
    let pid = daemon.pid();
    let me = std::process::id();
    let (d0, s0, r0) = (
        common::cpu_ticks(pid),
        common::cpu_ticks(me),
        counters.requests.load(Ordering::Relaxed),
    );
    let c0 = counters.connections.load(Ordering::Relaxed);
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = w0.elapsed().as_secs_f64();
    let cpu = (common::cpu_ticks(pid) - d0) as f64 / hz / secs * 100.0;
    let server_cpu = (common::cpu_ticks(me) - s0) as f64 / hz / secs * 100.0;
    let fetches = counters.requests.load(Ordering::Relaxed) - r0;
    let conns = counters.connections.load(Ordering::Relaxed) - c0;
    let rss = common::rss_kib(pid);
    let peak = common::peak_rss_kib(pid);
    let all_ok = admin_counts(dir).await;
    daemon.stop();
    Steady {
        cpu,
        server_cpu,
        rss,
        peak,
        fetches,
        conns,
        first_fetch,
        all_ok,
        secs,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = common::smoke();
    let (peers, window, cold_starts) = if smoke {
        (5, Duration::from_secs(2), 1)
    } else {
        (1000, Duration::from_secs(90), 5)
    };
    let hz = common::clock_ticks_per_sec() as f64;
    let root = tempfile::tempdir().unwrap();
    let cert = web_cert(root.path());
    let bundles: Vec<Bytes> = (0..peers)
        .map(|n| Bytes::from(peer_bundle_json(&format!("peer{n}.test"), 1, HINT)))
        .collect();
    let (addr, counters) = common::peer_server::spawn(&cert, bundles).await;

    // Baseline: the same daemon with no peer.
    let base_dir = root.path().join("no-peers");
    std::fs::create_dir_all(&base_dir).unwrap();
    let base_config = DaemonConfig::minimal().write(&base_dir);
    let mut base = Spawned::serve(&base_config);
    base.wait_ready(Duration::from_secs(30));
    base.stop();
    let (base_cold, base_rss) = {
        let mut times = Vec::new();
        let mut rss = 0;
        for _ in 0..cold_starts {
            let (d, served, _) = cold_start(&base_config, &base_dir, 0).await;
            times.push(common::ms(served));
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss = common::rss_kib(d.pid());
            d.stop();
        }
        (common::median(&times), rss)
    };

    let dir = root.path().join("peers");
    std::fs::create_dir_all(&dir).unwrap();
    let config = DaemonConfig {
        federation: federation_blocks(peers, addr.port(), &cert),
        ..DaemonConfig::minimal()
    }
    .write(&dir);

    let sqlite = steady(&config, &dir, peers, window, &counters, hz).await;
    let Steady {
        cpu,
        server_cpu,
        rss,
        peak,
        fetches,
        conns,
        first_fetch,
        all_ok,
        secs,
    } = sqlite;

    // Cold starts on the pinned state, peers up (the fetchers start their fetches meanwhile).
    let mut colds = Vec::new();
    let mut pinned_ms = Vec::new();
    for _ in 0..cold_starts {
        let (d, served, pinned) = cold_start(&config, &dir, peers).await;
        colds.push(common::ms(served));
        pinned_ms.push(common::ms(pinned));
        d.stop();
    }
    let cold = common::median(&colds);

    common::row(
        &format!("4. {peers} peers, refresh hint 60 s: daemon CPU, steady state"),
        &format!("{cpu:.2} % of a core"),
        &format!("{server_cpu:.2} % test HTTPS server (other end)"),
        Some(cpu / server_cpu),
        "< 5 %",
        common::Met::from(cpu < 5.0),
    );
    common::row(
        &format!("4. {peers} peers: daemon RSS"),
        &format!(
            "{:.1} MiB (peak {:.1})",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        ),
        &format!("{:.1} MiB, no peers", base_rss as f64 / 1024.0),
        Some(rss as f64 / base_rss as f64),
        "< 100 MiB",
        common::Met::from((rss as f64) < 100.0 * 1024.0),
    );
    common::row(
        &format!("4. cold start, {peers} pinned: spawn to Workload API serving all"),
        &format!("{cold:.0} ms"),
        &format!("{base_cold:.0} ms, no peers"),
        Some(cold / base_cold),
        "< 1000 ms",
        common::Met::from(cold < 1000.0),
    );
    common::note(&format!(
        "federation: first start fetched and pinned all {peers} in {:.1} s; steady window {secs:.0} s: \
         {fetches} fetches over {conns} new connections; (pinned, ok) at the end {all_ok:?}; \
         cold starts (ms, Workload API) {colds:.0?}, admin API showing all pinned {pinned_ms:.0?}",
        first_fetch.as_secs_f64()
    ));

    // The same peers on PostgreSQL.
    let Some(db) = pg_support::test_db("bench_federation_scale") else {
        common::note("federation on PostgreSQL: skipped, no MESHTRUST_TEST_PG_URL_FILE");
        return;
    };
    let pg_dir = root.path().join("peers-pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    std::fs::write(pg_dir.join("pg-url"), &db.url).unwrap();
    let config = DaemonConfig {
        federation: format!(
            "[store]\nkind = \"postgres\"\nurl_file = \"{}\"\n{}",
            pg_dir.join("pg-url").display(),
            federation_blocks(peers, addr.port(), &cert)
        ),
        ..DaemonConfig::minimal()
    }
    .write(&pg_dir);
    let pg = steady(&config, &pg_dir, peers, window, &counters, hz).await;
    common::row(
        &format!("4b. {peers} peers, hint 60 s, on PostgreSQL: daemon CPU"),
        &format!("{:.2} % of a core", pg.cpu),
        &format!("{cpu:.2} % on SQLite"),
        Some(pg.cpu / cpu),
        "< 5 %",
        common::Met::from(pg.cpu < 5.0),
    );
    common::row(
        &format!("4b. {peers} peers on PostgreSQL: daemon RSS"),
        &format!(
            "{:.1} MiB (peak {:.1})",
            pg.rss as f64 / 1024.0,
            pg.peak as f64 / 1024.0
        ),
        &format!("{:.1} MiB on SQLite", rss as f64 / 1024.0),
        Some(pg.rss as f64 / rss as f64),
        "< 100 MiB",
        common::Met::from((pg.rss as f64) < 100.0 * 1024.0),
    );
    common::note(&format!(
        "federation on PostgreSQL: first start pinned all {peers} in {:.1} s; window {:.0} s: {} \
         fetches; (pinned, ok) at the end {:?}",
        pg.first_fetch.as_secs_f64(),
        pg.secs,
        pg.fetches,
        pg.all_ok
    ));
}
