//! The admin API, the `meshtrust status` / `federation refresh` / `federation reset` commands and
//! the metrics listener, against real daemons on 127.0.0.1:0 with state in temp dirs
//! (CONTRACT.md "Admin API", "Commands"; SPIFFE.md "Decisions" for the reset).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
#[path = "federation_fetch/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "federation_fetch/hostile.rs"]
#[allow(dead_code)]
mod hostile;
#[path = "admin_api/reset.rs"]
mod reset;
#[path = "admin_api/support.rs"]
mod support;

use std::os::unix::fs::PermissionsExt as _;

use common::guard;
use common::peer_status as peer;
use serde_json::Value;
use support::*;

/// The keys CONTRACT.md names for every federation relationship.
const PEER_KEYS: [&str; 11] = [
    "trust_domain",
    "url",
    "profile",
    "state",
    "sequence",
    "authorities",
    "last_success",
    "last_attempt",
    "last_error",
    "next_refresh",
    "earliest_expiry",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_every_contract_key_with_rfc3339_times_and_the_three_states() {
    let mut pair = Pair::start(true).await;
    // mesh-d.test's endpoint accepts the first fetch's connection and never answers. The
    // status read while that connection is still held open (checked after the read) is taken
    // while the fetch is in flight: no fetch has finished.
    let held = guard(pair.silent.accepted.recv()).await.unwrap();
    let (code, status) = admin(pair.admin_a(), "GET", "/v1/status").await;
    assert!(
        still_open(&held),
        "the first fetch of mesh-d.test gave up before the status was read (its 15 s deadline)"
    );
    assert_eq!(code, 200, "{status}");
    let d = peer(&status, "mesh-d.test");
    assert_eq!(d["state"], "never_fetched", "{d}");
    for key in ["last_success", "last_attempt", "last_error", "sequence"] {
        assert!(d[key].is_null(), "{key}: {d}");
    }

    pair.pinned().await;
    pair.failing("mesh-c.test").await;
    let (code, status) = admin(pair.admin_a(), "GET", "/v1/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["trust_domain"], "mesh-a.test");
    let active = &status["ca"]["active"];
    for key in ["issued_at", "not_after"] {
        time(&active[key]);
    }
    assert_eq!(active["sha256"].as_str().unwrap().len(), 64, "{active}");
    assert!(
        status["ca"].get("prepared").is_some(),
        "prepared is named even when null"
    );
    let bundle = &status["bundle"];
    assert_eq!(
        bundle["sequence"].as_u64(),
        pair.da.ca.snapshot().bundle.sequence
    );
    let authorities = bundle["authorities"].as_array().unwrap();
    assert_eq!(authorities.len(), 1);
    time(&authorities[0]["not_after"]);
    assert_eq!(authorities[0]["sha256"], active["sha256"]);
    assert_eq!(status["federation"].as_array().unwrap().len(), 3);
    for p in status["federation"].as_array().unwrap() {
        for key in PEER_KEYS {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
    }

    let b = peer(&status, "mesh-b.test");
    assert_eq!(b["state"], "ok", "{b}");
    assert_eq!(b["profile"], "https_spiffe");
    assert_eq!(b["url"], format!("https://127.0.0.1:{}/", pair.b.port));
    assert_eq!(
        b["sequence"].as_u64(),
        pair.db.ca.snapshot().bundle.sequence
    );
    assert_eq!(b["authorities"].as_array().unwrap().len(), 1);
    assert!(b["last_error"].is_null());
    let (success, attempt) = (time(&b["last_success"]), time(&b["last_attempt"]));
    assert!(
        success <= attempt && attempt < time(&b["next_refresh"]),
        "{b}"
    );
    let (_, status_b) = admin(&pair.db.admin_socket, "GET", "/v1/status").await;
    assert_eq!(b["earliest_expiry"], status_b["ca"]["active"]["not_after"]);

    let c = peer(&status, "mesh-c.test");
    assert_eq!(c["state"], "failing", "{c}");
    assert!(
        c["last_success"].is_null() && c["sequence"].is_null(),
        "{c}"
    );
    time(&c["last_attempt"]);
    time(&c["next_refresh"]);
    assert!(c["last_error"].as_str().unwrap().contains("connect"), "{c}");

    // The CLI: the same document, readable or raw; an unreachable socket exits 1.
    let socket = pair.admin_a().to_str().unwrap().to_owned();
    let (code, out, err) = cli(&["status", "--admin-socket", &socket]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("trust domain  mesh-a.test"), "{out}");
    // One aligned row per peer: TRUST DOMAIN, STATE, ...
    let state = |td: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{td} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("a row for {td}: {out}"))
            .to_owned()
    };
    assert_eq!(state("mesh-b.test"), "ok", "{out}");
    assert_eq!(state("mesh-c.test"), "failing", "{out}");
    assert!(out.contains("mesh-c.test last error: connect"), "{out}");
    let (code, out, err) = cli(&["status", "--admin-socket", &socket, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["trust_domain"], "mesh-a.test");
    assert_eq!(peer(&json, "mesh-b.test")["state"], "ok");
    let missing = pair.root.path().join("no-such.sock");
    let (code, _, err) = cli(&["status", "--admin-socket", missing.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("admin socket"), "{err}");

    // CONTRACT.md "Configuration": the admin socket is mode 0600.
    let mode = std::fs::metadata(pair.admin_a())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_answers_the_fetch_outcome_and_the_cli_exits_accordingly() {
    let pair = Pair::start(true).await;
    pair.pinned().await;
    let seq_b = pair.db.ca.snapshot().bundle.sequence;

    let (code, body) = admin(pair.admin_a(), "POST", "/v1/federation/mesh-b.test/refresh").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["trust_domain"], "mesh-b.test");
    assert_eq!(body["changed"], false, "same bundle as pinned");
    assert_eq!(body["sequence"].as_u64(), seq_b);
    assert_eq!(body["authorities"], 1);
    assert!(body["error"].is_null());

    let (code, body) = admin(pair.admin_a(), "POST", "/v1/federation/mesh-c.test/refresh").await;
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["ok"], false);
    assert!(
        body["error"].as_str().unwrap().contains("connect"),
        "{body}"
    );

    let (code, body) = admin(pair.admin_a(), "POST", "/v1/federation/mesh-z.test/refresh").await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("mesh-z.test"));
    // SPIFFE-ID 1.1.2: a trust domain name is lowercase [a-z0-9._-].
    let (code, body) = admin(pair.admin_a(), "POST", "/v1/federation/Mesh_B/refresh").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid trust domain")
    );
    let (code, _) = admin(pair.admin_a(), "POST", "/v1/federation/Mesh_B/reset").await;
    assert_eq!(code, 400);
    let (code, _) = admin(pair.admin_a(), "POST", "/v1/federation/mesh-z.test/reset").await;
    assert_eq!(code, 404);

    let socket = pair.admin_a().to_str().unwrap().to_owned();
    let refresh = |peer: &'static str| {
        let socket = socket.clone();
        async move { cli(&["federation", "refresh", peer, "--admin-socket", &socket]).await }
    };
    let (code, out, err) = refresh("mesh-b.test").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "mesh-b.test: ok, bundle unchanged (sequence {}, 1 authority)",
            seq_b.unwrap()
        )
    );
    let (code, _, err) = refresh("mesh-c.test").await;
    assert_eq!(code, 1);
    assert!(err.contains("mesh-c.test: fetch failed: connect"), "{err}");
    let (code, _, err) = refresh("mesh-z.test").await;
    assert_eq!(code, 1);
    assert!(
        err.contains("mesh-z.test is not a federation peer"),
        "{err}"
    );
    // A usage error (issue 10: usage errors exit 64 everywhere).
    let (code, _, err) = refresh("Mesh_B").await;
    assert_eq!(code, 64);
    assert!(err.contains("invalid trust domain"), "{err}");
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_healthz_and_readyz_report_the_daemon_and_its_peers() {
    let pair = Pair::start(true).await;
    pair.pinned().await;
    pair.failing("mesh-c.test").await;
    let (code, _) = admin(pair.admin_a(), "POST", "/v1/federation/mesh-b.test/refresh").await;
    assert_eq!(code, 200);
    let addr = pair.da.metrics_addr.unwrap();
    let before = std::time::SystemTime::now();
    let (code, text) = http_get(addr, "/metrics").await;
    let after = std::time::SystemTime::now();
    assert_eq!(code, 200);
    // Prometheus text format: a family's samples directly follow its own HELP/TYPE lines.
    let mut current = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split_whitespace().next().unwrap();
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                name == current
                    || ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(current)),
                "sample {name} outside its family (after TYPE {current}):\n{text}"
            );
        }
    }
    let (_, status) = admin(pair.admin_a(), "GET", "/v1/status").await;
    let (_, status_b) = admin(&pair.db.admin_socket, "GET", "/v1/status").await;

    let a = r#"{trust_domain="mesh-a.test"}"#;
    let b = r#"{trust_domain="mesh-b.test"}"#;
    let m = |series: String| metric(&text, &series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert_eq!(
        m(format!("meshtrust_ca_expiry_timestamp_seconds{a}")).floor(),
        secs(time(&status["ca"]["active"]["not_after"]))
    );
    assert_eq!(
        m(format!("meshtrust_bundle_sequence{a}")),
        status["bundle"]["sequence"].as_f64().unwrap()
    );
    assert_eq!(m(format!("meshtrust_bundle_authorities{a}")), 1.0);
    // The first fetch at start and the refresh above, at least.
    assert!(
        m(r#"meshtrust_federation_fetches_total{trust_domain="mesh-b.test",result="ok"}"#.into())
            >= 2.0
    );
    assert!(
        m(
            r#"meshtrust_federation_fetches_total{trust_domain="mesh-c.test",result="connect"}"#
                .into()
        ) >= 1.0
    );
    assert_eq!(m(format!("meshtrust_federation_up{b}")), 1.0);
    assert_eq!(
        m(r#"meshtrust_federation_up{trust_domain="mesh-c.test"}"#.into()),
        0.0
    );
    // The age is the time since the last successful fetch the status names (truncated there
    // to the second), measured while the metrics were rendered.
    let age = m(format!("meshtrust_federation_bundle_age_seconds{b}"));
    let last_success = secs(time(&peer(&status, "mesh-b.test")["last_success"]));
    assert!(
        age > secs(before) - last_success - 1.0 && age <= secs(after) - last_success + 1.0,
        "age {age} for last_success {last_success} read between {} and {}",
        secs(before),
        secs(after)
    );
    assert!(
        metric(
            &text,
            r#"meshtrust_federation_bundle_age_seconds{trust_domain="mesh-c.test"}"#
        )
        .is_none(),
        "no age without a bundle"
    );
    assert_eq!(
        m(format!("meshtrust_federation_bundle_sequence{b}")),
        status_b["bundle"]["sequence"].as_f64().unwrap()
    );
    assert_eq!(
        m(format!("meshtrust_federation_bundle_authorities{b}")),
        1.0
    );
    assert_eq!(
        m(format!(
            "meshtrust_federation_authorities_earliest_expiry_timestamp_seconds{b}"
        ))
        .floor(),
        secs(time(&status_b["ca"]["active"]["not_after"]))
    );
    for family in [
        "meshtrust_ca_expiry_timestamp_seconds gauge",
        "meshtrust_federation_fetches_total counter",
        "meshtrust_federation_bundle_age_seconds gauge",
    ] {
        assert!(text.contains(&format!("# TYPE {family}")), "{family}");
    }

    assert_eq!(http_get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(http_get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    pair.shutdown().await;
}
