//! Figure 5: footprint of an idle daemon and its start-to-ready time on existing state.
//!
//! The daemon runs a typical config: bundle endpoint (`https_spiffe`), Workload API, admin API,
//! metrics, one entry, no peers. The state is created once before timing, so every timed start
//! opens an existing CA. Start-to-ready is the time from `spawn` to the `meshtrust ready` log
//! line, median of several starts; idle RSS is read 2 s after ready, median of the starts.
//! Baseline in the same run: Debian nginx with 2 workers serving one static file over TLS 1.3,
//! spawn to its port accepting; its memory as the sum of PSS over master and workers (RSS would
//! count the shared pages three times). Targets: RSS < 20 MiB, start-to-ready < 100 ms.

#![allow(clippy::unwrap_used)] // bench code: a panic is the failure report

mod common;

use std::time::Duration;

use common::daemon::{Spawned, meshtrust_bin};
use common::fixtures::{DaemonConfig, Endpoint, web_cert};
use common::nginx::Nginx;

fn main() {
    let smoke = common::smoke();
    let (starts, settle) = if smoke {
        (1, Duration::from_millis(200))
    } else {
        (9, Duration::from_secs(2))
    };
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let metrics = common::free_port();
    let config = DaemonConfig {
        endpoint: Some(Endpoint::Spiffe { port }),
        metrics_port: Some(metrics),
        ..DaemonConfig::minimal()
    }
    .write(dir.path());
    // Create the state (CA key, bundle) before anything is timed.
    let init = std::process::Command::new(meshtrust_bin())
        .args(["bundle", "show", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(init.status.success(), "bundle show: {init:?}");

    let (mut ready, mut rss, mut pss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..starts {
        let mut daemon = Spawned::serve(&config);
        ready.push(common::ms(daemon.wait_ready(Duration::from_secs(30))));
        std::thread::sleep(settle);
        rss.push(common::rss_kib(daemon.pid()) as f64);
        pss.push(common::pss_kib(daemon.pid()) as f64);
        daemon.stop();
    }

    let cert = web_cert(dir.path());
    let (mut n_ready, mut n_pss, mut n_rss) = (Vec::new(), Vec::new(), Vec::new());
    let nginx_starts = if common::have_tools(&["nginx"]) {
        starts
    } else {
        0
    };
    for i in 0..nginx_starts {
        let ndir = dir.path().join(format!("nginx{i}"));
        std::fs::create_dir_all(&ndir).unwrap();
        let nginx = Nginx::start(&ndir, common::free_port(), &cert, b"{\"keys\":[]}");
        n_ready.push(common::ms(nginx.ready_after));
        std::thread::sleep(settle);
        n_pss.push(nginx.pids().into_iter().map(common::pss_kib).sum::<u64>() as f64);
        n_rss.push(nginx.pids().into_iter().map(common::rss_kib).sum::<u64>() as f64);
    }

    let rss_mib = common::median(&rss) / 1024.0;
    let pss_mib = common::median(&pss) / 1024.0;
    let nginx_mib = common::median(&n_pss) / 1024.0;
    common::row(
        "5. idle RSS (endpoint, Workload API, admin, metrics)",
        &format!("{rss_mib:.1} MiB (PSS {pss_mib:.1})"),
        &format!("{nginx_mib:.1} MiB nginx PSS, 3 procs"),
        Some(pss_mib / nginx_mib),
        "< 20 MiB",
        common::Met::from(rss_mib < 20.0),
    );
    let r = common::median(&ready);
    let n = common::median(&n_ready);
    common::row(
        "5. start-to-ready, existing state (spawn to `meshtrust ready`)",
        &format!("{r:.1} ms"),
        &format!("{n:.1} ms nginx spawn to accepting"),
        Some(r / n),
        "< 100 ms",
        common::Met::from(r < 100.0),
    );
    common::note(&format!(
        "footprint: {starts} starts each; meshtrust ready ms {ready:.1?}, RSS KiB {rss:?}; \
         nginx ready ms {n_ready:.1?}, PSS KiB {n_pss:?}, RSS sum KiB {n_rss:?}"
    ));
}
