//! The command line as an operator meets it (issue 10): `check-config` warnings and `--strict`,
//! admin commands finding their socket and exiting 64 on usage errors, the help texts, and the
//! demo's last line and "things to try".

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use common::cli;
use common::config::{DaemonConfig, entry};
use common::daemon::Proc;

fn check(config: &std::path::Path, strict: bool) -> common::CliOutput {
    let mut args = vec!["check-config", "--config", config.to_str().unwrap()];
    if strict {
        args.push("--strict");
    }
    cli(&args)
}

/// Issue 10 item 4: metrics on a non-loopback address without a reason, and an entry whose uid
/// cannot reach the workload socket's folder (or whose socket sits in the 0700 data_dir), are
/// warned about, naming the key; `--strict` makes a warning exit 64; a reason silences the
/// metrics warning.
#[test]
fn check_config_warns_about_exposed_metrics_and_unreachable_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let other = common::own_uid().wrapping_add(4242);
    let config = DaemonConfig::new("mesh-a.test")
        .section("[metrics]\nlisten = \"0.0.0.0:9090\"\n")
        .write(dir.path());
    let out = check(&config, false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("metrics.listen"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("ok (trust domain mesh-a.test, 1 warning)"),
        "{}",
        out.stdout
    );
    check(&config, true).fails_with(64, "metrics.listen");

    let config = DaemonConfig::new("mesh-a.test")
        .section("[metrics]\nlisten = \"0.0.0.0:9090\"\nnon_loopback_reason = \"scraped over the compose network\"\n")
        .write(dir.path());
    let out = check(&config, true);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let config = DaemonConfig::new("mesh-a.test")
        .section("[metrics]\nlisten = \"0.0.0.0:9090\"\nnon_loopback_reason = \" \"\n")
        .write(dir.path());
    // An empty reason is no reason.
    check(&config, false).fails_with(64, "metrics.non_loopback_reason");

    // The workload socket in a folder only its owner can search.
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o700)).unwrap();
    let text = DaemonConfig::new("mesh-a.test")
        .section(&entry("spiffe://mesh-a.test/w", other, &[]))
        .text()
        .replace("socket = \"workload.sock\"", "socket = \"m/w.sock\"");
    std::fs::write(&config, &text).unwrap();
    let out = check(&config, false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("entry[0].selectors")
            && out.stderr.contains(&format!("uid {other} cannot reach"))
            && out.stderr.contains(&m.display().to_string()),
        "{}",
        out.stderr
    );
    std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = check(&config, true);
    assert_eq!(out.code, 0, "searchable now: {}", out.stderr);

    // The socket inside data_dir (0700).
    std::fs::write(
        &config,
        text.replace("socket = \"m/w.sock\"", "socket = \"data/w.sock\""),
    )
    .unwrap();
    let out = check(&config, false);
    assert!(
        out.stderr.contains("entry[0].selectors") && out.stderr.contains("inside data_dir"),
        "{}",
        out.stderr
    );
}

/// Issue 10 item 3: `check-config --strict` reads the bootstrap bundles as the daemon does at
/// start: a missing one and one handed over by another mesh are named; plain `check-config`
/// does not read them (they may exist only where the daemon runs).
#[test]
fn check_config_strict_names_a_missing_or_wrong_bootstrap_bundle() {
    let root = tempfile::tempdir().unwrap();
    let bs = DaemonConfig::new("bs.test").write(&root.path().join("bs"));
    let shown = cli(&["bundle", "show", "--config", bs.to_str().unwrap()]);
    shown.ok();
    let a = root.path().join("a");
    let config = DaemonConfig::new("mesh-a.test")
        .peer("mesh-b.test", "https://127.0.0.1:1/", None, true)
        .write(&a);
    assert_eq!(check(&config, false).code, 0);
    let missing = check(&config, true);
    assert_eq!(missing.code, 64);
    assert!(
        missing.stderr.contains("federation[0].bootstrap_bundle")
            && missing.stderr.contains("mesh-b.test.json"),
        "{}",
        missing.stderr
    );
    std::fs::write(a.join("peers/mesh-b.test.json"), &shown.stdout).unwrap();
    check(&config, true).fails_with(64, "is this bs.test's bundle? its CA is spiffe://bs.test");
}

/// Issue 10 item 10: admin commands take `--config FILE` or `--admin-socket`, default to
/// /run/meshtrust/admin.sock, and exit 64 on usage errors (both given, an invalid trust domain,
/// a config without an admin socket or that cannot be read); an unreachable daemon is 1.
#[test]
fn admin_commands_find_their_socket_and_usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new("mesh-a.test").write(dir.path());
    let cfg = config.to_str().unwrap();
    let out = cli(&["status", "--admin-socket", "/x.sock", "--config", cfg]);
    assert_eq!(out.code, 64, "{}", out.stderr);
    cli(&["federation", "refresh", "NOT A TD!", "--config", cfg])
        .fails_with(64, "invalid trust domain");
    let out = cli(&["status", "--config", "/nonexistent/meshtrust.toml"]);
    assert_eq!(out.code, 64, "{}", out.stderr);
    std::fs::write(dir.path().join("bare.toml"), "trust_domain = \"a.test\"\n").unwrap();
    let bare = dir.path().join("bare.toml");
    let out = cli(&[
        "federation",
        "reset",
        "mesh-b.test",
        "--config",
        bare.to_str().unwrap(),
    ]);
    out.fails_with(64, "admin_api.socket");
    assert_eq!(cli(&["federation", "reset"]).code, 64, "no trust domain");

    // Not running: 1, naming the socket read from the config.
    let socket = dir.path().join("admin.sock");
    cli(&["status", "--config", cfg]).fails_with(1, &socket.display().to_string());

    // Running: `--config` and `--admin-socket` reach the same daemon.
    let daemon = Proc::serve_blocking(&config);
    for args in [
        vec!["status", "--json", "--config", cfg],
        vec![
            "status",
            "--json",
            "--admin-socket",
            socket.to_str().unwrap(),
        ],
    ] {
        let out = cli(&args);
        let status: serde_json::Value = serde_json::from_str(&out.ok().stdout).unwrap();
        assert_eq!(status["trust_domain"], "mesh-a.test");
    }
    cli(&["federation", "refresh", "mesh-b.test", "--config", cfg])
        .fails_with(1, "not a federation peer");
    assert_eq!(daemon.stop().code(), Some(0));

    // Neither: the default path, named when it cannot be reached.
    if !std::path::Path::new(meshtrust::cli::DEFAULT_ADMIN_SOCKET).exists() {
        cli(&["status"]).fails_with(1, "/run/meshtrust/admin.sock");
    }
}

/// Issue 10 item 12: the `--log-format` help is one line, `serve --help` tells about SIGHUP.
#[test]
fn help_is_short_for_log_format_and_serve_mentions_sighup() {
    let serve = cli(&["serve", "--help"]);
    assert_eq!(serve.code, 0);
    assert!(serve.stdout.contains("SIGHUP"), "{}", serve.stdout);
    for sub in ["status", "check-config", "federation", "bundle"] {
        let out = cli(&[sub, "--help"]);
        assert_eq!(out.code, 0, "{sub}");
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("--log-format"))
            .unwrap();
        assert!(line.len() < 120, "{sub}: {line}");
        assert!(
            !out.stdout.contains("warn for `demo`"),
            "{sub}: {}",
            out.stdout
        );
    }
}

/// Issue 10 item 12: the demo's last line on stdout is `demo: OK`, and `--keep-running`'s
/// "things to try" use this binary's real path and write under the demo's work folder.
#[test]
fn the_demo_ends_with_ok_and_its_things_to_try_stay_in_its_folder() {
    let out = std::process::Command::new(common::bin())
        .arg("demo")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(last.starts_with("demo: OK"), "last line: {last}\n{stdout}");

    let demo = Proc::spawn_with(&["demo", "--keep-running"], |c| {
        c.stdout(Stdio::piped());
    })
    .with_guard(std::time::Duration::from_secs(120));
    demo.wait_for_log_blocking("the frontend's proxy");
    let log = demo.log();
    let work = log
        .lines()
        .find_map(|l| l.split("work folder ").nth(1))
        .unwrap()
        .trim_end_matches(')')
        .to_owned();
    let exe = std::fs::canonicalize(common::bin()).unwrap();
    let tries: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("Things to try"))
        .collect();
    let files = tries.iter().find(|l| l.contains("sidecar files")).unwrap();
    assert!(
        files.contains(&format!("--out {work}/svid-mesh-a")),
        "{files}"
    );
    assert!(!log.contains("/tmp/svid-"), "{log}");
    for l in tries.iter().filter(|l| l.contains(" status ")) {
        assert!(
            l.trim_start().starts_with(&exe.display().to_string()),
            "{l}"
        );
    }
    assert_eq!(demo.stop().code(), Some(0));
}
