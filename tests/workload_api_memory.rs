//! Server memory per open FetchX509SVID stream (a measurement, not a pass/fail test; run with
//! `cargo test --release --test workload_api_memory -- --ignored --nocapture`). The clients
//! live in a child process (this binary again), so the RSS measured is the server's alone.
//! `MESHTRUST_STREAMS` (default 10000) streams over `MESHTRUST_CONNECTIONS` (default 100).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Stdio;

use common::workload::*;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const CHILD_ENV: &str = "MESHTRUST_TEST_WORKLOAD_ENDPOINT";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run on demand"]
async fn server_memory_per_stream() {
    let streams = env_usize("MESHTRUST_STREAMS", 10_000);
    let connections = env_usize("MESHTRUST_CONNECTIONS", 100);
    let mesh = Mesh::start(default_entries()).await;
    // Warm up: SVIDs minted, allocator pools touched.
    let mut client = mesh.raw_client().await;
    let mut s = open_x509svid(&mut client).await;
    next_msg(&mut s).await;
    drop((s, client));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = rss_kib();

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_holds_streams", "--nocapture"])
        .env(CHILD_ENV, mesh.socket.display().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The child says how many streams it holds, each with its first message received.
    // A long hang guard: a debug build opens 10 000 streams slowly.
    let held = tokio::time::timeout(std::time::Duration::from_secs(600), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(n) = line.strip_prefix("READY ") {
                return n.trim().parse::<usize>().unwrap();
            }
        }
        panic!("the child exited before holding its streams");
    })
    .await
    .expect("hang guard");
    assert_eq!(held, streams, "every stream is open");
    // Let the server's RSS settle after the last stream (a measurement, not an assertion).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = rss_kib();
    let per_stream = (after.saturating_sub(before)) as f64 * 1024.0 / streams as f64;
    println!(
        "server RSS {before} KiB -> {after} KiB for {streams} streams over {connections} connections: {per_stream:.0} bytes/stream"
    );
    drop(child.stdin.take());
    let status = guard(child.wait()).await.unwrap();
    assert!(status.success(), "the client process failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of server_memory_per_stream"]
async fn child_holds_streams() {
    let socket = std::path::PathBuf::from(std::env::var(CHILD_ENV).expect("run by the parent"));
    let streams = env_usize("MESHTRUST_STREAMS", 10_000);
    let connections = env_usize("MESHTRUST_CONNECTIONS", 100).max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(common::grpc::workload_client(&socket).await);
    }
    let mut held = Vec::with_capacity(streams);
    for i in 0..streams {
        let client = &mut clients[i % connections];
        let mut s = open_x509svid(client).await;
        next_msg(&mut s).await;
        held.push(s);
    }
    println!("READY {}", held.len());
    // Hold until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf);
    })
    .await
    .unwrap();
}
