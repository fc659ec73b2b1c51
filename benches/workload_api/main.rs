//! Figure 3: the Workload API under many workloads.
//!
//! - First-message latency of FetchX509SVID with 1,000 clients connected at once, each on its
//!   own Unix socket connection and holding an open FetchX509SVID stream: per call, the time
//!   from the call to the first message, p50 and p99. Two load shapes: (a) the clients call in
//!   turn, one call in flight: what a workload sees while 1,000 others are connected (target:
//!   p99 < 5 ms); (b) all 1,000 call at the same instant (a barrier): a thundering herd, whose
//!   p99 is the time to drain the herd on 2 cores, reported with no target.
//! - Fan-out: 10,000 open FetchX509Bundles streams; one peer bundle change (`PeerStore::pin` in
//!   the daemon); time until the last stream has it (target < 1 s), and the daemon's RSS growth
//!   per open stream (target < 20 KiB). Headline layout: 10,000 connections with one stream each,
//!   because that is what 10,000 workloads look like (one connection per workload process); the
//!   second layout, 100 connections x 100 streams, shows what HTTP/2 multiplexing saves.
//!
//! Each server is a child process of this bench (so its RSS is its own): the real daemon
//! (`--role daemon`) and, as the baseline in the same run, a no-op server built on the same
//! generated tonic service (`--role noop`): prebuilt messages, no attestation, no issuance. The
//! client runs in this process on the same 2 cores, competing with the server, alike for both.

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

#[path = "../common/mod.rs"]
mod common;

mod client;
mod servers;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::fixtures::{DaemonConfig, WebCert, peer_bundle_json, web_cert};

fn daemon_config(dir: &Path, peer_port: u16, cert: &WebCert) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let config = DaemonConfig {
        federation: format!(
            "[[federation]]\ntrust_domain = \"{}\"\nbundle_endpoint_url = \
             \"https://127.0.0.1:{peer_port}/peer/0\"\nprofile = \"https_web\"\nca_file = \"{}\"\n",
            servers::PEER,
            cert.ca_pem.display()
        ),
        ..DaemonConfig::minimal()
    }
    .write(dir);
    config.display().to_string()
}

/// The child's command line for a server folder.
type ArgsFor = Box<dyn Fn(&Path) -> Vec<String>>;

struct Kind {
    name: &'static str,
    args: ArgsFor,
}

struct Latency {
    turn: [Duration; 2],
    burst: [Duration; 2],
    per_burst: Vec<String>,
    rss: u64,
}

async fn start(kind: &Kind, dir: &Path) -> client::Server {
    let args = (kind.args)(dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    client::Server::spawn(&refs).await
}

async fn orchestrate() {
    let smoke = common::smoke();
    let (lat_clients, rounds, layouts, changes) = if smoke {
        (10, 1, vec![(20, 1), (2, 10)], 1)
    } else {
        // 10,000 streams: 1,000 connections x 10, and 100 x 100. One connection per stream
        // (10,000 x 1) is refused past the daemon's 1,024 connections per uid (hardening): the
        // bench's clients are one uid.
        (1000, 5, vec![(1000, 10), (100, 100)], 3)
    };
    // Profiling: `MESHTRUST_BENCH_FANOUT=2000x1` runs only the fan-out of that layout (with
    // `MESHTRUST_BENCH_WRAP="heaptrack -o FILE"` around the servers, see client.rs).
    let only_fanout: Option<(usize, usize)> =
        std::env::var("MESHTRUST_BENCH_FANOUT").ok().and_then(|v| {
            let (c, s) = v.split_once('x')?;
            Some((c.parse().ok()?, s.parse().ok()?))
        });
    let layouts = only_fanout.map_or(layouts, |l| vec![l]);
    let root = tempfile::tempdir().unwrap();
    let cert = web_cert(root.path());
    let peer = Bytes::from(peer_bundle_json(
        servers::PEER,
        1,
        Duration::from_secs(3600),
    ));
    let (addr, _) = common::peer_server::spawn(&cert, vec![peer]).await;
    let port = addr.port();
    let cert2 = cert.clone();
    let kinds = [
        Kind {
            name: "meshtrust",
            args: Box::new(move |dir| {
                let config = daemon_config(dir, port, &cert2);
                vec!["--role".into(), "daemon".into(), "--config".into(), config]
            }),
        },
        Kind {
            name: "no-op tonic",
            args: Box::new(|dir| {
                std::fs::create_dir_all(dir).unwrap();
                let socket = dir.join("noop.sock").display().to_string();
                vec!["--role".into(), "noop".into(), "--socket".into(), socket]
            }),
        },
    ];

    // Latency: fresh server, all clients connected, each holding an open FetchX509SVID stream;
    // then (a) each client in turn opens a new one, (b) all at the same instant.
    let mut lat = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        if only_fanout.is_some() {
            break;
        }
        let server = start(kind, &root.path().join(format!("lat{i}"))).await;
        let clients = client::connect_many(&server.socket, lat_clients).await;
        let held = client::hold_streams(&clients).await;
        let (mut turn, mut burst) = (Vec::new(), Vec::new());
        let mut per_burst = Vec::new();
        // One burst first as warm-up, not recorded.
        client::first_message_latencies(&clients).await;
        for _ in 0..rounds {
            turn.extend(client::first_message_in_turn(&clients).await);
            let got = client::first_message_latencies(&clients).await;
            per_burst.push(format!(
                "{:.1}/{:.1}",
                common::ms(common::percentile(&got, 50.0)),
                common::ms(common::percentile(&got, 99.0))
            ));
            burst.extend(got);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        turn.sort();
        burst.sort();
        let rss = common::rss_kib(server.pid());
        drop(held);
        drop(clients);
        server.quit().await;
        lat.push(Latency {
            turn: [50.0, 99.0].map(|p| common::percentile(&turn, p)),
            burst: [50.0, 99.0].map(|p| common::percentile(&burst, p)),
            per_burst,
            rss,
        });
    }
    if let [ours, base] = &lat[..] {
        for (label, o, b, target) in [
            ("p50, one at a time", ours.turn[0], base.turn[0], None),
            ("p99, one at a time", ours.turn[1], base.turn[1], Some(5)),
            (
                "p50, all at the same instant",
                ours.burst[0],
                base.burst[0],
                None,
            ),
            (
                "p99, all at the same instant",
                ours.burst[1],
                base.burst[1],
                None,
            ),
        ] {
            common::row(
                &format!("3. FetchX509SVID first message {label}, {lat_clients} clients connected"),
                &format!("{:.2} ms", common::ms(o)),
                &format!("{:.2} ms no-op tonic server", common::ms(b)),
                Some(o.as_secs_f64() / b.as_secs_f64()),
                &target.map_or_else(|| "-".to_owned(), |t| format!("< {t} ms")),
                target.map_or(common::Met::NotApplicable, |t| {
                    common::Met::from(o < Duration::from_millis(t))
                }),
            );
        }
        common::note(&format!(
            "workload API latency: {lat_clients} connections each holding an open FetchX509SVID stream; \
         {rounds} rounds of (each client in turn, then all at once); per burst p50/p99 ms: \
         meshtrust {:?}, no-op {:?}; server RSS with them: meshtrust {} KiB, no-op {} KiB",
            ours.per_burst, base.per_burst, ours.rss, base.rss
        ));
    }

    // Fan-out and memory, per layout.
    for (li, (conns, per_conn)) in layouts.iter().copied().enumerate() {
        let mut res = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let mut server = start(kind, &root.path().join(format!("fan{li}-{i}"))).await;
            let r = client::fan_out(&mut server, conns, per_conn, changes).await;
            server.quit().await;
            res.push(r);
        }
        let per_stream = |r: &client::FanOut| {
            r.rss_open_kib
                .max(r.rss_after_kib)
                .saturating_sub(r.rss_before_kib) as f64
                / r.streams as f64
        };
        let last = |r: &client::FanOut| {
            let v: Vec<f64> = r.last.iter().map(|d| common::ms(*d)).collect();
            common::median(&v)
        };
        let (o, b) = (&res[0], &res[1]);
        let layout = format!("{} streams ({conns} conns x {per_conn})", o.streams);
        common::row(
            &format!("3. bundle change fan-out, {layout}: last stream updated"),
            &format!("{:.0} ms", last(o)),
            &format!("{:.0} ms no-op tonic server", last(b)),
            Some(last(o) / last(b)),
            "< 1000 ms",
            common::Met::from(last(o) < 1000.0),
        );
        common::row(
            &format!("3. daemon RSS per open stream, {layout}"),
            &format!("{:.1} KiB", per_stream(o)),
            &format!("{:.1} KiB no-op tonic server", per_stream(b)),
            Some(per_stream(o) / per_stream(b)),
            "< 20 KiB",
            common::Met::from(per_stream(o) < 20.0),
        );
        for (kind, r) in kinds.iter().zip(&res) {
            common::note(&format!(
                "fan-out {layout}, {}: RSS KiB before {} / streams open {} / after {} changes {}; \
                 last stream ms {:.0?}, median stream ms {:.0?}; client process RSS {} MiB",
                kind.name,
                r.rss_before_kib,
                r.rss_open_kib,
                changes,
                r.rss_after_kib,
                r.last.iter().map(|d| common::ms(*d)).collect::<Vec<_>>(),
                r.median.iter().map(|d| common::ms(*d)).collect::<Vec<_>>(),
                r.client_rss_kib / 1024,
            ));
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match common::arg("role").as_deref() {
        Some("daemon") => rt.block_on(servers::daemon(common::arg("config").unwrap().into())),
        Some("noop") => rt.block_on(servers::noop(common::arg("socket").unwrap().into())),
        _ => rt.block_on(orchestrate()),
    }
}
