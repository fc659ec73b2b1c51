//! Issue 9, the state and process half, attacked through the real binary:
//! - lost state (database truncated to 0 bytes, or deleted) is refused, not taken for a first
//!   start; `--init-new-ca` starts over on purpose; `bundle show` says when it creates a CA;
//! - a second daemon on one data_dir is refused with "data_dir in use by pid N" before it
//!   touches a socket, and the first one keeps serving on its sockets; a daemon removes only the
//!   socket files it created;
//! - `check-config` refuses an entry whose selectors are only `unix:path` and a refresh hint
//!   longer than a third of the CA rotation lead (exit 64, naming the key);
//! - a pruned CA's keys are gone from the database and its WAL (`secure_delete`);
//! - the admin socket never appears at its path with the umask's mode, even when the path is
//!   too long for the staging folder;
//! - `sidecar outbound` refuses a non-loopback listen address without `--allow-non-loopback`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::config::DaemonConfig;
use common::daemon::{GUARD, Proc, READY};
use common::http::Curl;

const ID: &str = "spiffe://mesh-a.test/w";

fn meshtrust(args: &[&str]) -> (i32, String, String) {
    let out = common::cli(args);
    (out.code, out.stdout, out.stderr)
}

/// A config in `dir`: data in `dir/data`, sockets in `dir`, one entry for this test's uid;
/// `ca` is the `[ca]` body, `extra` more TOML.
fn write_config(dir: &Path, ca: &str, extra: &str) -> PathBuf {
    DaemonConfig::plain("mesh-a.test")
        .ca(ca)
        .entry(ID, &[])
        .section(extra)
        .write(dir)
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The daemon answers both APIs on these sockets: the Workload API gives this test its SVID,
/// the admin API its status.
fn assert_serving(workload: &Path, admin: &Path) {
    let svid = Curl::get(workload, "/v1/x509-svid").send_blocking();
    assert_eq!(svid.status, 200, "workload api: {}", svid.body);
    assert!(svid.body.contains(ID), "the SVID for {ID}: {}", svid.body);
    let status = Curl::get(admin, "/v1/status")
        .without_header()
        .send_blocking();
    assert_eq!(status.status, 200, "admin api: {}", status.body);
    assert!(status.body.contains("mesh-a.test"), "{}", status.body);
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// A data_dir that held a CA and lost it (database truncated to 0 bytes, then deleted) is
/// refused by `serve` and `bundle show` with exit 1 (the config is fine; the state is not, a
/// runtime failure in CONTRACT.md's terms), and nothing is created: no CA, no database content,
/// no socket. `--init-new-ca` creates a new CA on purpose, and later starts use it.
#[test]
fn a_data_dir_that_lost_its_ca_is_refused_until_init_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let db = dir.path().join("data/meshtrust.db");

    let (code, first, err) = meshtrust(&["bundle", "show", "--config", arg(&config)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("created a new CA"),
        "bundle show says so: {err}"
    );
    let (code, again, err) = meshtrust(&["bundle", "show", "--config", arg(&config)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, first, "the same CA");
    assert!(
        !err.contains("created"),
        "nothing created the second time: {err}"
    );

    // The attack: the database is truncated to 0 bytes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(0)
        .unwrap();
    for args in [
        vec!["serve", "--config", arg(&config)],
        vec!["bundle", "show", "--config", arg(&config)],
    ] {
        let (code, out, err) = meshtrust(&args);
        assert_eq!(code, 1, "{args:?} refused: {out}{err}");
        assert!(out.is_empty(), "{args:?} prints no bundle: {out}");
        assert!(
            err.contains("the database is empty (0 bytes)")
                && err.contains("the CA state was lost"),
            "{args:?} says why: {err}"
        );
        assert!(err.contains("--init-new-ca"), "{args:?} says how: {err}");
        assert_eq!(
            std::fs::metadata(&db).unwrap().len(),
            0,
            "{args:?} wrote nothing"
        );
        assert!(
            !dir.path().join("workload.sock").exists(),
            "{args:?}: no socket"
        );
        assert!(
            !dir.path().join("admin.sock").exists(),
            "{args:?}: no socket"
        );
    }

    // Deleted instead of truncated: refused too, and no database is created.
    std::fs::remove_file(&db).unwrap();
    let (code, _, err) = meshtrust(&["serve", "--config", arg(&config)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the database file is missing"), "{err}");
    assert!(!db.exists(), "no database was created");

    // Starting over on purpose.
    let daemon = Proc::spawn(&["serve", "--config", arg(&config), "--init-new-ca"]);
    daemon.wait_for_log_blocking(READY);
    assert_eq!(daemon.count("created a NEW CA"), 1, "{}", daemon.log());
    assert_serving(
        &dir.path().join("workload.sock"),
        &dir.path().join("admin.sock"),
    );
    let (code, new, err) = meshtrust(&["bundle", "show", "--config", arg(&config)]);
    assert_eq!(code, 0, "bundle show beside the daemon: {err}");
    assert_ne!(new, first, "a new CA");
    assert!(daemon.stop().success());

    // From now on the new CA is the state: a plain start uses it, and the flag is ignored.
    let daemon = Proc::serve_blocking(&config);
    assert_eq!(daemon.count("created"), 0, "{}", daemon.log());
    assert!(daemon.stop().success());
    let (code, out, err) =
        meshtrust(&["bundle", "show", "--config", arg(&config), "--init-new-ca"]);
    assert_eq!((code, &out), (0, &new), "{err}");
    assert!(!err.contains("created a new CA"), "{err}");

    // A database that is valid SQLite but holds no CA any more (rows deleted, or an empty
    // database put in its place) is a lost CA too.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("DELETE FROM authority; DELETE FROM own_bundle;")
            .unwrap();
    }
    let (code, _, err) = meshtrust(&["serve", "--config", arg(&config)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the database holds no CA"), "{err}");
    let (code, out, err) = meshtrust(&["bundle", "show", "--config", arg(&config)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("the database holds no CA"), "{err}");
}

/// A first start is still a first start: no marker, no refusal.
#[test]
fn a_new_data_dir_starts_without_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let daemon = Proc::serve_blocking(&config);
    assert_eq!(daemon.count("created the CA"), 1, "{}", daemon.log());
    assert!(daemon.stop().success());
}

/// Two daemons on one data_dir: the second is refused with the first one's pid before it
/// touches anything, and the first keeps serving on the very same socket files, which exist
/// after the second exits; `bundle show` still works beside it. On a clean stop the first
/// removes both its sockets.
#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused_and_the_first_keeps_its_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let (workload, admin) = (
        dir.path().join("workload.sock"),
        dir.path().join("admin.sock"),
    );
    let first = Proc::serve_blocking(&config);
    let ids = (file_id(&workload).unwrap(), file_id(&admin).unwrap());
    assert_serving(&workload, &admin);

    let (code, _, err) = meshtrust(&["serve", "--config", arg(&config)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("data_dir in use by pid {}", first.pid())),
        "names the owner: {err}"
    );
    // Even with another config naming other sockets: refused before binding them.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("\"workload.sock\"", "\"w2.sock\"")
            .replace("\"admin.sock\"", "\"a2.sock\""),
    )
    .unwrap();
    let (code, _, err) = meshtrust(&["serve", "--config", arg(&other), "--init-new-ca"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("data_dir in use by pid {}", first.pid())),
        "{err}"
    );
    assert!(!dir.path().join("w2.sock").exists() && !dir.path().join("a2.sock").exists());

    assert_eq!(
        (file_id(&workload).unwrap(), file_id(&admin).unwrap()),
        ids,
        "the first daemon's socket files are untouched"
    );
    assert_serving(&workload, &admin);
    let (code, bundle, err) = meshtrust(&["bundle", "show", "--config", arg(&config)]);
    assert_eq!(code, 0, "bundle show works while the daemon runs: {err}");
    assert!(bundle.contains("spiffe_sequence"), "{bundle}");
    assert!(!err.contains("created"), "{err}");

    assert!(first.stop().success());
    assert!(
        !workload.exists(),
        "the workload socket is removed at shutdown"
    );
    assert!(!admin.exists(), "the admin socket is removed at shutdown");
}

/// A socket file replaced while the daemon ran (another process's) is not removed at
/// shutdown: only the files the daemon bound, compared by device and inode.
#[test]
fn shutdown_leaves_a_socket_file_that_is_no_longer_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let (workload, admin) = (
        dir.path().join("workload.sock"),
        dir.path().join("admin.sock"),
    );
    let daemon = Proc::serve_blocking(&config);
    std::fs::remove_file(&workload).unwrap();
    let _theirs = UnixListener::bind(&workload).unwrap();
    let theirs = file_id(&workload).unwrap();
    assert!(daemon.stop().success());
    assert_eq!(file_id(&workload), Some(theirs), "the other socket stays");
    assert!(!admin.exists(), "its own admin socket is removed");
}

/// A start that fails after binding its sockets (here: an unreadable bootstrap bundle, read
/// once the listeners are bound) removes them again and exits 1; the next start works.
#[test]
fn a_start_that_fails_after_binding_leaves_no_socket_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "",
        &DaemonConfig::plain("mesh-a.test")
            .peer_bootstrapped_from("mesh-b.test", "https://127.0.0.1:9/", "garbage.json")
            .sections(),
    );
    std::fs::write(dir.path().join("garbage.json"), "not a bundle").unwrap();
    let (code, _, err) = meshtrust(&["serve", "--config", arg(&config)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("garbage.json"), "{err}");
    assert!(!dir.path().join("workload.sock").exists(), "{err}");
    assert!(!dir.path().join("admin.sock").exists(), "{err}");
}

/// `check-config` and `serve` refuse, with exit 64 naming the key and saying why, an entry
/// whose selectors are only `unix:path` and a refresh hint above ca_ttl/9.
#[test]
fn check_config_refuses_path_only_entries_and_a_refresh_hint_that_strands_peers() {
    let dir = tempfile::tempdir().unwrap();
    let path_only = write_config(
        dir.path(),
        "",
        "[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/sleep\"\nselectors = [\"unix:path:/usr/bin/sleep\"]\n",
    );
    for command in ["check-config", "serve"] {
        let (code, _, err) = meshtrust(&[command, "--config", arg(&path_only)]);
        assert_eq!(code, 64, "{command}: {err}");
        assert!(
            err.contains("entry[1].selectors"),
            "{command} names the key: {err}"
        );
        assert!(
            err.contains("unix:path alone is no identity"),
            "{command}: {err}"
        );
        assert!(err.contains("LD_PRELOAD"), "{command} says why: {err}");
    }
    assert!(!dir.path().join("data").exists(), "serve touched nothing");

    // The case: ca_ttl 2h publishes the next CA 40 min before it signs; 6h polls miss it.
    let long_hint = write_config(
        dir.path(),
        "ca_ttl = \"2h\"",
        "[bundle_endpoint]\nlisten = \"127.0.0.1:0\"\nrefresh_hint = \"6h\"\n",
    );
    let (code, _, err) = meshtrust(&["check-config", "--config", arg(&long_hint)]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("bundle_endpoint.refresh_hint"),
        "names the key: {err}"
    );
    assert!(
        err.contains("a third of the CA rotation lead"),
        "the rule: {err}"
    );
    assert!(err.contains("At most 13m20s"), "the limit: {err}");
    // At the limit it passes.
    let at_limit = write_config(
        dir.path(),
        "ca_ttl = \"2h\"",
        "[bundle_endpoint]\nlisten = \"127.0.0.1:0\"\nrefresh_hint = \"13m20s\"\n",
    );
    let (code, _, err) = meshtrust(&["check-config", "--config", arg(&at_limit)]);
    assert_eq!(code, 0, "{err}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The database file and its WAL, as bytes.
fn state_bytes(data: &Path) -> Vec<(String, Vec<u8>)> {
    ["meshtrust.db", "meshtrust.db-wal"]
        .iter()
        .filter_map(|name| Some((name.to_string(), std::fs::read(data.join(name)).ok()?)))
        .collect()
}

/// A CA rotating every 3 s: once generation 1 is pruned (and the CA state written again), its
/// CA and JWT private keys are nowhere in `meshtrust.db` or `meshtrust.db-wal`, neither while
/// the daemon runs nor after it stopped. Without `secure_delete` the deleted rows' bytes stay
/// in the page's free space; without the WAL truncation the WAL keeps the old page images.
#[test]
fn a_pruned_ca_key_is_gone_from_the_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "ca_ttl = \"3s\"\nx509_svid_ttl = \"1s\"\njwt_svid_ttl = \"1s\"",
        "",
    );
    let data = dir.path().join("data");
    let daemon = Proc::serve_blocking(&config);
    // Read generation 1's keys once, and close the connection at once (an open reader would
    // hold the WAL back).
    let (ca_key, jwt_key): (Vec<u8>, Vec<u8>) = {
        let conn = rusqlite::Connection::open(data.join("meshtrust.db")).unwrap();
        conn.query_row(
            "SELECT ca_key, jwt_key FROM authority WHERE generation = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert!(ca_key.len() > 100 && jwt_key.len() > 100);
    // Sanity: while generation 1 lives, its key is in the files (the scan can see it).
    assert!(
        state_bytes(&data)
            .iter()
            .any(|(_, bytes)| contains(bytes, &ca_key)),
        "the live key is found by the scan"
    );
    // Wait (log events, under a hang guard) for the prune, then for a later rotation step: the
    // prune's write is committed by then.
    let prune = daemon.wait_for_log_blocking("Prune(1)");
    let steps_before = daemon
        .log()
        .lines()
        .take_while(|l| *l != prune)
        .filter(|l| l.contains("ca rotation step"))
        .count();
    let deadline = std::time::Instant::now() + GUARD;
    while daemon.count("ca rotation step") < steps_before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "hang guard: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, bytes) in state_bytes(&data) {
        assert!(
            !contains(&bytes, &ca_key),
            "running: the pruned CA key is in {name}"
        );
        assert!(
            !contains(&bytes, &jwt_key),
            "running: the pruned JWT key is in {name}"
        );
    }
    assert!(daemon.stop().success());
    for (name, bytes) in state_bytes(&data) {
        assert!(
            !contains(&bytes, &ca_key),
            "stopped: the pruned CA key is in {name}"
        );
        assert!(
            !contains(&bytes, &jwt_key),
            "stopped: the pruned JWT key is in {name}"
        );
    }
}

/// An admin socket path that fits `sun_path` (107 bytes) while the staging folder's path does
/// not: the socket still only ever appears at its path by a rename, already 0600 (inotify sees
/// no IN_CREATE of it in its folder, only IN_MOVED_TO), and `meshtrust status` works on it.
#[test]
fn a_long_admin_socket_path_is_never_created_in_place() {
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    let root = tempfile::tempdir().unwrap();
    let base = root.path().to_str().unwrap().len();
    // Parent of 95 bytes: "<parent>/a.sock" is 102 bytes, "<parent>/.meshtrust-XXXXXX/s" 115.
    let parent = root
        .path()
        .join("p".repeat(95usize.checked_sub(base + 1).expect("short temp dir")));
    std::fs::create_dir(&parent).unwrap();
    let admin = parent.join("a.sock");
    assert!(admin.to_str().unwrap().len() <= 107);
    let config = write_config(root.path(), "", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"admin.sock\"", &format!("{:?}", admin.to_str().unwrap()));
    std::fs::write(&config, text).unwrap();

    let watch = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
    inotify::add_watch(&watch, &parent, WatchFlags::CREATE | WatchFlags::MOVED_TO).unwrap();
    let daemon = Proc::serve_blocking(&config);

    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
    let mut reader = inotify::Reader::new(&watch, &mut buf);
    let mut events = Vec::new();
    while let Ok(event) = reader.next() {
        let name = event
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        events.push((name, event.events()));
    }
    let on_socket: Vec<_> = events.iter().filter(|(n, _)| n == "a.sock").collect();
    assert!(
        !on_socket.is_empty()
            && on_socket
                .iter()
                .all(|(_, e)| e.contains(ReadFlags::MOVED_TO)),
        "a.sock only ever moved into place: {events:?}"
    );
    assert_eq!(
        std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, out, err) = meshtrust(&["status", "--admin-socket", arg(&admin)]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_dir(&parent).unwrap().count(),
        1,
        "no staging folder left"
    );
    assert!(daemon.stop().success());
    assert!(!admin.exists());
}

/// `sidecar outbound --listen` on a non-loopback address is refused (exit 64, saying why)
/// before anything is bound or contacted; with `--allow-non-loopback` it listens and warns.
#[test]
fn sidecar_outbound_refuses_a_non_loopback_listen_without_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}", dir.path().join("none.sock").display());
    let base = |listen: &str| {
        vec![
            "sidecar".to_owned(),
            "--workload-socket".to_owned(),
            socket.clone(),
            "outbound".to_owned(),
            "--listen".to_owned(),
            listen.to_owned(),
            "--connect".to_owned(),
            "127.0.0.1:9".to_owned(),
            "--expect".to_owned(),
            "spiffe://mesh-b.test/echo".to_owned(),
        ]
    };
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let args = base(listen);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = meshtrust(&args);
        assert_eq!(code, 64, "{listen}: {out}{err}");
        assert!(err.contains("is not a loopback address"), "{listen}: {err}");
        assert!(err.contains("--allow-non-loopback"), "{listen}: {err}");
    }
    // Loopback says so; the option lets a non-loopback address through, with a warning.
    for (listen, option, expected) in [
        ("127.0.0.1:0", false, "is loopback only"),
        ("0.0.0.0:0", true, "WARNING 0.0.0.0:"),
    ] {
        let mut args = base(listen);
        if option {
            args.push("--allow-non-loopback".to_owned());
        }
        let (mut child, line) = common::spawn_until_line(
            Command::new(common::bin())
                .args(&args)
                .stdin(Stdio::null())
                .stderr(Stdio::null()),
            "",
            "the first report line",
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.contains(expected), "{listen}: {line}");
    }
}
