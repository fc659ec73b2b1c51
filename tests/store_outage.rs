//! PostgreSQL stopped under a running daemon, then started again: the daemon keeps serving
//! what it holds, `status` and `/readyz` say "store unavailable", and when the database is
//! back they say so without a restart, and the state is all there.
//!
//! The test stops a database, so it runs its own private cluster (`.ci/postgres.sh start DIR`
//! in a temp folder), never the shared one. It runs where the shared test cluster is
//! configured (PostgreSQL is installed), skips with a note elsewhere, and never skips in CI
//! (`MESHTRUST_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used)]

mod common;
mod pg_support;

use common::config::DaemonConfig;
use common::daemon::Proc;
use pg_support::cluster::Cluster;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = common::guard(tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    common::guard(s.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_then_started_again_the_daemon_serves_throughout_and_recovers() {
    // The shared cluster's presence says PostgreSQL is installed here.
    let Some(_shared) = pg_support::test_db("store_outage") else {
        return;
    };
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("outage.test")
        .metrics()
        .section(&format!(
            "[store]\nkind = \"postgres\"\nurl = \"{}\"\n",
            cluster.url()
        ))
        .write(dir.path());
    let daemon = Proc::serve(&config).await;
    let line = daemon.wait_for_log("metrics listening").await;
    let metrics = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let admin = dir.path().join("admin.sock");
    let before = common::status_json(&admin).await;
    assert_eq!(before["store"]["kind"], "postgres");
    assert_eq!(before["store"]["available"], true, "{before}");
    assert_eq!(get(&metrics, "/readyz").await.0, 200);
    let scrape = get(&metrics, "/metrics").await.1;
    assert!(
        scrape.contains("meshtrust_store_up{kind=\"postgres\"} 1"),
        "{scrape}"
    );
    assert!(
        scrape.contains("meshtrust_store_calls_total{outcome=\"ok\"}"),
        "{scrape}"
    );

    cluster.stop().await;
    let down = common::eventually_some("status says store unavailable", || async {
        let s = common::status_json(&admin).await;
        (s["store"]["available"] == false).then_some(s)
    })
    .await;
    let error = down["store"]["error"].as_str().unwrap();
    assert!(error.starts_with("store unavailable"), "{error}");
    assert_eq!(
        down["bundle"], before["bundle"],
        "the bundle is served from memory during the outage"
    );
    let (code, body) = get(&metrics, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("store unavailable"), "{body}");
    let scrape = get(&metrics, "/metrics").await.1;
    assert!(
        scrape.contains("meshtrust_store_up{kind=\"postgres\"} 0"),
        "{scrape}"
    );
    let text = common::cli_async(&["status", "--admin-socket", admin.to_str().unwrap()]).await;
    assert!(text.stdout.contains("store unavailable"), "{}", text.stdout);

    cluster.restart().await;
    common::eventually_some("status says store available again", || async {
        let s = common::status_json(&admin).await;
        (s["store"]["available"] == true).then_some(())
    })
    .await;
    assert_eq!(
        get(&metrics, "/readyz").await.0,
        200,
        "ready again, no restart"
    );
    assert!(daemon.log().contains("store available again"));
    let scrape = get(&metrics, "/metrics").await.1;
    assert!(
        scrape.contains("meshtrust_store_up{kind=\"postgres\"} 1"),
        "{scrape}"
    );
    assert!(
        scrape.contains("meshtrust_store_availability_changes_total 2"),
        "down once, up once: {scrape}"
    );
    let seq = pg_support::query_text(&cluster.url(), "SELECT sequence FROM own_bundle").unwrap();
    assert_eq!(
        seq,
        vec![before["bundle"]["sequence"].to_string()],
        "the state is all there"
    );
    drop(daemon);
}
