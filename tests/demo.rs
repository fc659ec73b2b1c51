//! `meshtrust demo` end to end, as a newcomer runs it: the real binary, two daemons, sidecars,
//! the cross-mesh call and the refused caller.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A hang guard, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(120);

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(common::bin())
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `f`; panics with the output so far on EOF or timeout.
    fn until(&mut self, f: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(LIMIT) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if f(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("{e}; output so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn rest(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(LIMIT) {
            self.seen.push(line);
        }
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_demo_federates_two_meshes_calls_across_them_refuses_a_stranger_and_says_ok() {
    let mut demo = Demo::start(&[]);
    demo.until(|l| l.starts_with("demo: OK"));
    demo.rest();
    let status = demo.child.wait().unwrap();
    let out = demo.output();
    assert_eq!(status.code(), Some(0), "{out}");
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
    assert!(!out.contains("demo: FAILED"), "{out}");
}

#[test]
fn keep_running_leaves_live_daemons_to_poke_at_and_stops_on_sigterm() {
    let mut demo = Demo::start(&["--keep-running"]);
    demo.until(|l| l.starts_with("demo: OK"));
    let status_line = demo.until(|l| {
        l.trim_start()
            .starts_with("meshtrust status --admin-socket")
    });
    let admin_socket = status_line.split_whitespace().last().unwrap().to_owned();
    let work = std::path::Path::new(&admin_socket)
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned();
    demo.until(|l| l.contains("the frontend's proxy"));

    // The printed admin socket answers, and the federation is healthy.
    let out = Command::new(common::bin())
        .args(["status", "--json", "--admin-socket", &admin_socket])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = status.to_string();
    assert!(text.contains("mesh-b.test"), "{text}");

    Command::new("kill")
        .arg(demo.child.id().to_string())
        .status()
        .unwrap();
    demo.rest();
    let code = demo.child.wait().unwrap().code();
    assert_eq!(code, Some(0), "{}", demo.output());
    assert!(
        !work.exists(),
        "the work folder {} is removed",
        work.display()
    );
}
