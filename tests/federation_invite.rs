//! Peering in one step, through the real binary: `meshtrust federation invite` on one daemon,
//! `meshtrust federation join` on the other, SIGHUP, and both pin each other. The first contact
//! is authenticated by the token (SPIFFE Federation §5.2.2 with the bootstrap bundle the token
//! commits to; SPIFFE.md §2 "Self-serving"): every edited, expired or stale token is refused
//! with its reason and nothing is written.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
#[path = "federation_fetch/harness.rs"]
#[allow(dead_code, unreachable_pub)]
mod harness;
#[path = "federation_fetch/hostile.rs"]
#[allow(dead_code, unreachable_pub)]
mod hostile;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::config::DaemonConfig;
use common::daemon::Proc;
use common::{cli_async, status_json, wait_for_peer};

const PREFIX: &str = "meshtrust-invite-v1.";

/// A daemon of `td` in `root/<name>` serving its bundle on an ephemeral port (the invite names
/// the bound address), with one entry federating with `peers`.
async fn daemon(root: &Path, name: &str, td: &str, ca: &str, peers: &[&str]) -> (Proc, PathBuf) {
    let dir = root.join(name);
    let config = DaemonConfig::new(td)
        .ca(ca)
        .bundle_endpoint(0, "1s")
        .entry(&format!("spiffe://{td}/w"), peers)
        .write(&dir);
    (Proc::serve(&config).await, config)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `meshtrust federation invite --config FILE`: the token (one line on stdout).
async fn invite(config: &Path) -> String {
    let out = cli_async(&["federation", "invite", "--config", s(config)]).await;
    let token = out.ok().stdout.trim().to_owned();
    assert!(
        token.starts_with(PREFIX) && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    token
}

/// `meshtrust federation join TOKEN --bootstrap-out OUT --config CONFIG [--write]`.
async fn join(token: &str, out: &Path, config: &Path, write: bool) -> common::CliOutput {
    let mut args = vec![
        "federation",
        "join",
        token,
        "--bootstrap-out",
        s(out),
        "--config",
        s(config),
    ];
    if write {
        args.push("--write");
    }
    cli_async(&args).await
}

/// The token with its JSON edited and re-encoded, as someone who can alter it in transit would.
fn tamper(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let body = token.strip_prefix(PREFIX).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    edit(&mut json);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json.to_string()))
}

fn fields(token: &str) -> serde_json::Value {
    let body = token.strip_prefix(PREFIX).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_and_join_both_ways_then_sighup_and_each_pins_the_other() {
    let root = tempfile::tempdir().unwrap();
    let (a, a_config) = daemon(root.path(), "a", "mesh-a.test", "", &[]).await;
    let (b, b_config) = daemon(root.path(), "b", "mesh-b.test", "", &[]).await;
    let token_a = invite(&a_config).await;
    let token_b = invite(&b_config).await;
    let f = fields(&token_a);
    assert_eq!(f["trust_domain"], "mesh-a.test");
    assert_eq!(
        f["endpoint_spiffe_id"],
        "spiffe://mesh-a.test/meshtrust/server"
    );
    let url = f["bundle_endpoint_url"].as_str().unwrap();
    assert!(
        url.starts_with("https://127.0.0.1:") && !url.ends_with(":0/"),
        "the invite names the bound port: {url}"
    );

    // mesh-b joins mesh-a, writing its config; mesh-a joins mesh-b, printing the block.
    let b_out = root.path().join("b/peers/mesh-a.test.json");
    join(&token_a, &b_out, &b_config, true)
        .await
        .ok()
        .prints("appended the [[federation]] block for mesh-a.test");
    assert_eq!(
        std::fs::metadata(&b_out).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let b_text = std::fs::read_to_string(&b_config).unwrap();
    assert!(
        b_text.contains("bootstrap_bundle = \"peers/mesh-a.test.json\""),
        "{b_text}"
    );

    let a_out = root.path().join("a/peers/mesh-b.test.json");
    let out = join(&token_b, &a_out, &a_config, false).await;
    out.ok()
        .prints("[[federation]]\ntrust_domain = \"mesh-b.test\"");
    // The operator pastes the printed block.
    let mut a_text = std::fs::read_to_string(&a_config).unwrap();
    a_text.push('\n');
    a_text.push_str(&out.stdout);
    std::fs::write(&a_config, a_text).unwrap();

    for config in [&a_config, &b_config] {
        cli_async(&["check-config", "--config", s(config)])
            .await
            .ok();
    }
    // Joining the same peer again with --write is refused: the config already has it.
    let again = root.path().join("b/peers/again.json");
    join(&token_a, &again, &b_config, true)
        .await
        .fails_with(1, "already federates with mesh-a.test");
    assert!(!again.exists());

    a.signal("HUP");
    b.signal("HUP");
    for (dir, peer) in [("a", "mesh-b.test"), ("b", "mesh-a.test")] {
        let admin = root.path().join(dir).join("admin.sock");
        let p = wait_for_peer(&admin, peer, "the peer pinned after SIGHUP", |p| {
            p["state"] == "ok" && p["authorities"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
        assert!(p["sequence"].is_u64(), "{p}");
    }
}

/// What a refused join must leave: exit 1, the reason on stderr, no bundle file, the config
/// untouched, no temp file beside either.
async fn refused(token: &str, out: &Path, config: &Path, reason: &str) {
    let before = std::fs::read_to_string(config).unwrap();
    let listing = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let (peers_before, dir_before) = (
        listing(out.parent().unwrap()),
        listing(config.parent().unwrap()),
    );
    let result = join(token, out, config, true).await;
    assert_eq!(
        result.code, 1,
        "{reason}: {}\n{}",
        result.stdout, result.stderr
    );
    assert!(
        result.stderr.contains("join refused, nothing written") && result.stderr.contains(reason),
        "expected {reason:?} in: {}",
        result.stderr
    );
    assert!(!out.exists(), "{reason}: {} was written", out.display());
    assert_eq!(std::fs::read_to_string(config).unwrap(), before, "{reason}");
    assert_eq!(listing(out.parent().unwrap()), peers_before, "{reason}");
    assert_eq!(listing(config.parent().unwrap()), dir_before, "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_and_expired_tokens_are_refused_with_the_reason_and_nothing_is_written() {
    let root = tempfile::tempdir().unwrap();
    let (_b, b_config) = daemon(root.path(), "b", "mesh-b.test", "", &[]).await;
    // An impostor: another daemon calling itself mesh-b.test, with its own CA.
    let (_c, c_config) = daemon(root.path(), "c", "mesh-b.test", "", &[]).await;
    let joiner = DaemonConfig::new("mesh-j.test").write(&root.path().join("j"));
    let out = root.path().join("j/peers/mesh-b.test.json");
    let token = invite(&b_config).await;
    let impostor = fields(&invite(&c_config).await);

    let digest = |t: &mut serde_json::Value| {
        let d = t["x509_authorities_sha256"].as_str().unwrap();
        let flipped = if d.starts_with('0') { "1" } else { "0" };
        t["x509_authorities_sha256"] = format!("{flipped}{}", &d[1..]).into();
    };
    refused(
        &tamper(&token, digest),
        &out,
        &joiner,
        "does not match the invite",
    )
    .await;
    // The URL pointed at the impostor: it presents an SVID for the right ID, from its own CA,
    // and serves its own bundle, which is not the one the token commits to.
    let url = impostor["bundle_endpoint_url"].clone();
    let to_impostor = tamper(&token, |t| t["bundle_endpoint_url"] = url);
    refused(&to_impostor, &out, &joiner, "does not match the invite").await;
    // The trust domain edited alone: the endpoint ID no longer belongs to it.
    let td_only = tamper(&token, |t| t["trust_domain"] = "mesh-x.test".into());
    refused(&td_only, &out, &joiner, "another trust domain").await;
    // Trust domain and endpoint ID edited together: the real endpoint proves its real ID.
    let both = tamper(&token, |t| {
        t["trust_domain"] = "mesh-x.test".into();
        t["endpoint_spiffe_id"] = "spiffe://mesh-x.test/meshtrust/server".into();
    });
    refused(&both, &out, &joiner, "endpoint presented spiffe://mesh-b.test/meshtrust/server, expected spiffe://mesh-x.test/meshtrust/server").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = tamper(&token, |t| t["expires_at"] = (now - 1).into());
    refused(&expired, &out, &joiner, "expired at").await;
    // Damaged in copying: cut short.
    refused(
        &token[..token.len() - 7],
        &out,
        &joiner,
        "not a meshtrust invite token",
    )
    .await;
    // Our own trust domain.
    let own = DaemonConfig::new("mesh-b.test").write(&root.path().join("own"));
    refused(
        &token,
        &root.path().join("own/peers/x.json"),
        &own,
        "this config's own trust domain",
    )
    .await;

    // The genuine token still works after all that.
    join(&token, &out, &joiner, true).await.ok();
    // And never over an existing file.
    let written = std::fs::read(&out).unwrap();
    let again = DaemonConfig::new("mesh-k.test").write(&root.path().join("k"));
    let before = std::fs::read_to_string(&again).unwrap();
    join(&token, &out, &again, true)
        .await
        .fails_with(1, "exists; nothing written");
    assert_eq!(std::fs::read(&out).unwrap(), written);
    assert_eq!(std::fs::read_to_string(&again).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_made_before_the_peer_changed_its_cas_is_refused() {
    let root = tempfile::tempdir().unwrap();
    // ca_ttl 6s: a new CA is published every 3s (prepared at 1/2, the old one dropped later).
    let ca = "ca_ttl = \"6s\"\nx509_svid_ttl = \"3s\"\njwt_svid_ttl = \"3s\"";
    let (b, b_config) = daemon(root.path(), "b", "mesh-b.test", ca, &[]).await;
    let admin = root.path().join("b/admin.sock");
    let before = status_json(&admin).await["bundle"]["sequence"]
        .as_u64()
        .unwrap();
    let token = invite(&b_config).await;
    // Two changes after the status read: at least one after the invite.
    common::eventually_some("the bundle changed twice", || async {
        let seq = status_json(&admin).await["bundle"]["sequence"]
            .as_u64()
            .unwrap();
        (seq >= before + 2).then_some(())
    })
    .await;
    let joiner = DaemonConfig::new("mesh-j.test").write(&root.path().join("j"));
    let out = root.path().join("j/peers/mesh-b.test.json");
    refused(&token, &out, &joiner, "changed CAs since it was made").await;
    // A fresh invite works, unless the CAs change again between invite and join (every ~3s
    // here, so a loaded machine can straddle one): then the refusal is that same reason.
    common::eventually_some("a fresh invite accepted", || async {
        let fresh = invite(&b_config).await;
        let result = join(&fresh, &out, &joiner, false).await;
        if result.code != 0 {
            assert!(
                result.stderr.contains("changed CAs since it was made") && !out.exists(),
                "{}",
                result.stderr
            );
        }
        (result.code == 0).then_some(())
    })
    .await;
    assert!(out.exists());
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_checks_its_ttl_and_url_and_usage_errors_exit_64() {
    let root = tempfile::tempdir().unwrap();
    let (_b, b_config) = daemon(root.path(), "b", "mesh-b.test", "", &[]).await;
    let cfg = s(&b_config);
    cli_async(&["federation", "invite", "--config", cfg, "--ttl", "8d"])
        .await
        .fails_with(1, "out of bounds");
    let bad_url = [
        "federation",
        "invite",
        "--config",
        cfg,
        "--url",
        "http://b/",
    ];
    cli_async(&bad_url)
        .await
        .fails_with(1, "scheme must be https");
    let url = "https://bundle.mesh-b.example:8443/";
    let out = cli_async(&[
        "federation",
        "invite",
        "--config",
        cfg,
        "--url",
        url,
        "--json",
    ])
    .await;
    let json: serde_json::Value = serde_json::from_str(&out.ok().stdout).unwrap();
    assert_eq!(json["bundle_endpoint_url"], url);
    assert_eq!(
        fields(json["token"].as_str().unwrap())["bundle_endpoint_url"],
        url
    );
    // Usage: neither --admin-socket nor --config.
    cli_async(&["federation", "invite"])
        .await
        .fails_with(64, "--admin-socket <ADMIN_SOCKET>");
    // Usage: join --write without the --config to write.
    cli_async(&[
        "federation",
        "join",
        "x",
        "--bootstrap-out",
        "/tmp/x",
        "--write",
    ])
    .await
    .fails_with(64, "--config <CONFIG>");
}

/// The attack the second, verified fetch stops: a server that copies the genuine (public)
/// bundle, so the digest matches, and presents an SVID for the right endpoint ID, but from a
/// CA of its own. The first contact is not trusted blindly: the endpoint must prove an SVID
/// chaining to the CAs the token commits to (SPIFFE Federation §5.2.2).
#[tokio::test(flavor = "multi_thread")]
async fn a_server_serving_the_genuine_bundle_without_an_svid_from_it_is_refused() {
    use meshtrust::federation::invite::{Invite, authorities_digest};
    let genuine = harness::PeerCa::now(harness::PEER);
    let impostor = harness::PeerCa::now(harness::PEER);
    let server = hostile::Hostile::start(impostor.endpoint_tls(harness::ENDPOINT)).await;
    server.route("/", hostile::Behaviour::ok(genuine.bundle_json()));
    let token = Invite {
        trust_domain: harness::td(harness::PEER),
        url: server.url("/"),
        endpoint_spiffe_id: harness::id(harness::ENDPOINT),
        x509_authorities_sha256: authorities_digest(&genuine.bundle().x509_authorities),
        expires_at: std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    }
    .encode();
    let root = tempfile::tempdir().unwrap();
    let joiner = DaemonConfig::new("mesh-j.test").write(&root.path().join("j"));
    let out = root.path().join("j/peers/mesh-b.test.json");
    refused(
        &token,
        &out,
        &joiner,
        "serves the bundle the invite names, but could not prove it is spiffe://mesh-b.test/meshtrust/server",
    )
    .await;
    // The same server with an SVID from the genuine CA is accepted: the refusal was the chain.
    server.set_tls(genuine.endpoint_tls(harness::ENDPOINT));
    join(&token, &out, &joiner, true).await.ok();
    let written = std::fs::read(&out).unwrap();
    let parsed = meshtrust::bundle::jwks::parse(&harness::td(harness::PEER), &written).unwrap();
    assert_eq!(
        parsed.bundle.x509_authorities,
        genuine.bundle().x509_authorities
    );
}
