//! `meshtrust demo` end to end, as a newcomer runs it: the real binary, two daemons, sidecars,
//! the cross-mesh call and the refused caller.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::daemon::Proc;

/// `meshtrust demo ARGS`, its report (stdout) and log (stderr) drained into one log.
fn demo(args: &[&str]) -> Proc {
    let mut argv = vec!["demo"];
    argv.extend_from_slice(args);
    Proc::spawn_with(&argv, |c| {
        c.stdout(Stdio::piped());
    })
}

/// A hang guard for a whole demo run (two daemons, sidecars, a call), not a timing check.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn the_demo_federates_two_meshes_calls_across_them_refuses_a_stranger_and_says_ok() {
    let mut demo = demo(&[]).with_guard(LIMIT);
    demo.wait_for_log_blocking("demo: OK");
    let status = demo.wait_exit();
    let out = demo.log();
    assert_eq!(status.code(), Some(0), "{out}");
    // Peering by invite and join (no hand-copied bundle file): an altered invite is refused
    // before anything is written, the genuine ones are accepted on their CA digest, and the
    // endpoint proved its SPIFFE ID (SPIFFE Federation §5.2.2).
    assert!(
        out.contains("mesh-b.test's invite with another CA digest: refused: the bundle served at"),
        "{out}"
    );
    assert!(out.contains("does not match the invite"), "{out}");
    for (td, peer) in [
        ("mesh-a.test", "mesh-b.test"),
        ("mesh-b.test", "mesh-a.test"),
    ] {
        assert!(
            out.contains(&format!(
                "{td} fetched {peer}'s bundle from https://127.0.0.1:"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "the endpoint proved spiffe://{peer}/meshtrust/server; saved as"
            )),
            "{out}"
        );
    }
    // Each mesh pinned the other's bundle (Federation 1.5.4) after an https_spiffe fetch.
    assert!(
        out.contains("mesh-a.test pinned mesh-b.test's bundle"),
        "{out}"
    );
    assert!(
        out.contains("mesh-b.test pinned mesh-a.test's bundle"),
        "{out}"
    );
    // The echo sidecar saw the frontend's SPIFFE ID, and the answer came back.
    assert!(
        out.contains("accepted spiffe://mesh-a.test/ns/default/sa/frontend"),
        "{out}"
    );
    assert!(
        out.contains("got \"echo: hello from mesh-a's frontend\""),
        "{out}"
    );
    // The batch identity was refused by the allow list, not for lack of an SVID.
    assert!(
        out.contains("svid update: spiffe://mesh-a.test/ns/default/sa/batch"),
        "{out}"
    );
    assert!(
        out.contains("spiffe://mesh-a.test/ns/default/sa/batch is not allowed"),
        "{out}"
    );
    assert!(
        out.contains("echo's sidecar refused it by its allow list"),
        "{out}"
    );
    assert!(!out.contains("demo: FAILED"), "{out}");
}

#[test]
fn keep_running_leaves_live_daemons_to_poke_at_and_stops_on_sigterm() {
    let demo = demo(&["--keep-running"]).with_guard(LIMIT);
    demo.wait_for_log_blocking("demo: OK");
    let status_line = demo.wait_for_log_blocking("meshtrust status --admin-socket");
    let admin_socket = status_line.split_whitespace().last().unwrap().to_owned();
    let work = std::path::Path::new(&admin_socket)
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned();
    demo.wait_for_log_blocking("the frontend's proxy");

    // The printed admin socket answers, and the federation is healthy: each mesh's peer is
    // pinned and its last fetch succeeded.
    let sockets: Vec<String> = demo
        .log()
        .lines()
        .filter(|l| l.contains("meshtrust status --admin-socket"))
        .map(|l| l.split_whitespace().last().unwrap().to_owned())
        .collect();
    assert_eq!(sockets.len(), 2, "{}", demo.log());
    for (socket, (own, peer)) in sockets.iter().zip([
        ("mesh-a.test", "mesh-b.test"),
        ("mesh-b.test", "mesh-a.test"),
    ]) {
        let out = common::cli(&["status", "--json", "--admin-socket", socket]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(status["trust_domain"], own, "{status}");
        let p = common::peer_status(&status, peer);
        assert_eq!(p["state"], "ok", "{p}");
        assert!(p["last_error"].is_null(), "{p}");
        assert!(
            p["authorities"].as_array().is_some_and(|a| !a.is_empty()),
            "{p}"
        );
    }

    let status = demo.stop();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        !work.exists(),
        "the work folder {} is removed",
        work.display()
    );
}
