//! The `meshtrust` binary as users run it: `check-config` over every shipped and every broken
//! config, `bundle show`, and `serve` surviving `kill -9` with its CA, bundle and sequence, plus
//! a real CA rotation with `ca_ttl = "20s"`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::config::DaemonConfig;
use common::daemon::Proc;

fn meshtrust(args: &[&str]) -> (i32, String, String) {
    let out = common::cli(args);
    (out.code, out.stdout, out.stderr)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_shipped_config_passes_check_config() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        // config/agent*.toml are node agent configs (tests/agent.rs and src/agent/config.rs).
        let agent = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("agent"));
        if path.extension().is_some_and(|e| e == "toml") && !agent {
            let (code, out, err) = meshtrust(&["check-config", "--config", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 3, "config/ holds mesh-a, mesh-b and reference");
}

#[test]
fn every_broken_config_exits_64_naming_the_file_and_the_key() {
    let dir = repo().join("tests/fixtures/config/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let key = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect-key: "))
            .unwrap_or_else(|| panic!("{} lacks '# expect-key:'", path.display()))
            .trim()
            .to_owned();
        let (code, _, err) = meshtrust(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{}: {err}", path.display());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "{name}: the file is named: {err}");
        assert!(err.contains(&key), "{name}: the key {key} is named: {err}");
        seen += 1;
    }
    assert!(seen >= 20);
}

#[test]
fn a_missing_config_file_or_bad_arguments_exit_64() {
    let (code, _, err) = meshtrust(&["check-config", "--config", "/nonexistent/meshtrust.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/meshtrust.toml"), "{err}");
    assert_eq!(meshtrust(&["serve"]).0, 64, "no --config");
    assert_eq!(meshtrust(&["no-such-command"]).0, 64);
    assert_eq!(meshtrust(&["--help"]).0, 0);
}

/// A minimal config in `dir` with the given `[ca]` TTLs.
fn write_config(dir: &Path, ca_ttl: &str, svid_ttl: &str) -> PathBuf {
    DaemonConfig::new("mesh-a.test")
        .ca(&format!(
            "ca_ttl = \"{ca_ttl}\"\nx509_svid_ttl = \"{svid_ttl}\"\njwt_svid_ttl = \"{svid_ttl}\""
        ))
        .write(dir)
}

fn bundle_json(config: &Path) -> serde_json::Value {
    let (code, out, err) = meshtrust(&["bundle", "show", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn x5c(bundle: &serde_json::Value) -> Vec<String> {
    bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| k["x5c"][0].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bundle_show_prints_spiffe_json_and_pem_of_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "24h", "1h");
    let json = bundle_json(&config);
    // TD&B 1.4.4, 1.4.5: sequence and refresh hint set; X509-SVID 1.2.15: one cert per x5c, no kid.
    assert_eq!(json["spiffe_sequence"], 1);
    assert_eq!(json["spiffe_refresh_hint"], 300);
    let keys = json["keys"].as_array().unwrap();
    let x509: Vec<_> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1);
    assert_eq!(x509[0]["x5c"].as_array().unwrap().len(), 1);
    assert!(x509[0].get("kid").is_none());
    // JWT-SVID 1.3.11: the JWT key has a kid.
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string())
    );
    // Again: the same state, not a new CA.
    assert_eq!(bundle_json(&config), json);

    let (code, pem, _) = meshtrust(&[
        "bundle",
        "show",
        "--format",
        "pem",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(&x5c(&json)[0])
        .unwrap();
    assert_eq!(pem, common::pem(&[der.into()]));
}

#[test]
fn serve_stops_cleanly_on_sigterm_and_a_restart_after_kill_9_keeps_ca_bundle_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "24h", "1h");
    let daemon = Proc::serve_blocking(&config);
    let before = bundle_json(&config);
    // SIGTERM: graceful, exit 0.
    assert_eq!(daemon.stop().code(), Some(0));

    let daemon = Proc::serve_blocking(&config);
    assert_eq!(bundle_json(&config), before);
    // kill -9 at an arbitrary moment, then start again on the same data dir.
    daemon.kill_9();
    let _daemon = Proc::serve_blocking(&config);
    let after = bundle_json(&config);
    assert_eq!(after, before, "same CA, same bundle, same sequence");
}

/// The real clock, with `ca_ttl = "20s"`: the prepared CA appears at ~10s (sequence 2), signs
/// from ~16.7s, and the old CA leaves the bundle when it expires at 20s, all without an operator.
/// (At 20s the new CA is itself at half-life, so its own successor may join in the same instant:
/// the test follows the old CA out rather than waiting for a one-CA bundle.)
#[test]
fn a_daemon_rotates_its_ca_for_real_with_a_20s_ca_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "20s", "2s");
    let _daemon = Proc::serve_blocking(&config);
    let first = bundle_json(&config);
    assert_eq!(first["spiffe_sequence"], 1);
    let old_ca = x5c(&first);
    assert_eq!(old_ca.len(), 1);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_two = None;
    let mut last_sequence = 1;
    let settled = loop {
        assert!(Instant::now() < deadline, "rotation did not complete");
        std::thread::sleep(Duration::from_millis(250));
        let b = bundle_json(&config);
        let sequence = b["spiffe_sequence"].as_u64().unwrap();
        assert!(sequence >= last_sequence, "the sequence never goes down");
        last_sequence = sequence;
        let cas = x5c(&b);
        if cas.len() == 2 && cas[0] == old_ca[0] && saw_two.is_none() {
            // The new CA joins next to the old one, with a higher sequence.
            assert_eq!(b["spiffe_sequence"], 2);
            saw_two = Some(cas[1].clone());
        }
        if !cas.contains(&old_ca[0]) {
            break b;
        }
    };
    let new_ca =
        saw_two.expect("the new CA was published next to the old one before it replaced it");
    let cas = x5c(&settled);
    assert_eq!(
        cas[0], new_ca,
        "the CA prepared at half-life replaced the old one"
    );
    assert!(
        cas.len() <= 2,
        "at most the active CA and its own successor"
    );
    assert!(
        settled["spiffe_sequence"].as_u64().unwrap() >= 3,
        "one bump per content change"
    );
}

/// `kill -9` at arbitrary moments of a daemon that is busy rotating (ca_ttl 3s: an authority
/// is generated, activated or pruned every second or so, each a transaction), then a restart on
/// the same data dir: every restart comes up, the sequence never goes back, and SIGINT ends the
/// last one cleanly (exit 0).
#[test]
fn kill_9_during_rotations_always_leaves_a_state_that_starts_and_never_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "3s", "1s");
    let mut last_sequence = 0;
    for round in 0..6u64 {
        let daemon = Proc::serve_blocking(&config);
        // Spread the kills over a rotation period, differently each round.
        let nanos = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        );
        std::thread::sleep(Duration::from_millis((nanos + round * 337) % 1500));
        daemon.kill_9();
        let bundle = bundle_json(&config);
        let sequence = bundle["spiffe_sequence"].as_u64().unwrap();
        assert!(
            sequence >= last_sequence,
            "round {round}: {sequence} < {last_sequence}"
        );
        assert!(
            !x5c(&bundle).is_empty(),
            "round {round}: a bundle with a CA"
        );
        last_sequence = sequence;
    }
    let mut daemon = Proc::serve_blocking(&config);
    daemon.signal("INT");
    assert_eq!(daemon.wait_exit().code(), Some(0), "SIGINT is a clean stop");
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());
}
