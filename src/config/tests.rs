//! Config tests: the shipped files parse, every invalid fixture names its key, defaults, paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
trust_domain = "mesh-a.test"
data_dir = "/var/lib/meshtrust"

[workload_api]
socket = "/run/meshtrust/workload.sock"

[admin_api]
socket = "/run/meshtrust/admin.sock"
"#;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/meshtrust/test.toml"))
}

fn parse_ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> ConfigError {
    parse(text).expect_err("config should be rejected")
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("valid SPIFFE ID")
}

fn td(text: &str) -> TrustDomain {
    TrustDomain::new(text).expect("valid trust domain")
}

#[test]
fn every_shipped_config_parses() {
    let files = toml_files(&repo_path("config"));
    assert!(
        files.len() >= 3,
        "config/ should hold mesh-a, mesh-b and reference"
    );
    for file in files {
        if let Err(e) = Config::load(&file) {
            panic!("{e}");
        }
    }
}

#[test]
fn demo_meshes_federate_with_each_other() {
    let a = Config::load(&repo_path("config/mesh-a.toml")).expect("mesh-a");
    let b = Config::load(&repo_path("config/mesh-b.toml")).expect("mesh-b");
    for (me, peer) in [(&a, &b), (&b, &a)] {
        let relationship = me
            .peer(&peer.trust_domain)
            .expect("federates with the other mesh");
        let Some(BundleEndpointConfig {
            profile: EndpointProfile::HttpsSpiffe { endpoint_spiffe_id },
            ..
        }) = &peer.bundle_endpoint
        else {
            panic!(
                "{}: expected an https_spiffe bundle endpoint",
                peer.source.display()
            );
        };
        let PeerProfile::HttpsSpiffe {
            endpoint_spiffe_id: pinned,
            bootstrap_bundle,
        } = &relationship.profile
        else {
            panic!("{}: expected an https_spiffe peer", me.source.display());
        };
        assert_eq!(pinned, endpoint_spiffe_id, "pins the ID the peer serves");
        let bootstrap = bootstrap_bundle.as_ref().expect("bootstrap bundle");
        assert!(bootstrap.starts_with("/var/lib/meshtrust-peers"));
        assert_eq!(relationship.url.port(), Some(8443));
        assert!(me.entries.len() >= 2);
        for entry in &me.entries {
            assert_eq!(entry.spiffe_id.trust_domain(), &me.trust_domain);
            assert!(entry.federates_with.includes(&peer.trust_domain));
        }
        // The compose workloads' uids: frontend 1000, echo 1001 (batch, mesh-a only, 1002).
        let uid_of = |path: &str| {
            me.entries
                .iter()
                .find(|e| e.spiffe_id.path() == path)
                .map(|e| e.selectors.clone())
        };
        assert_eq!(
            uid_of("/ns/default/sa/frontend"),
            Some(vec![Selector::Uid(1000)])
        );
        assert_eq!(
            uid_of("/ns/default/sa/echo"),
            Some(vec![Selector::Uid(1001)])
        );
    }
}

#[test]
fn every_invalid_fixture_fails_naming_its_key_and_file() {
    let files = toml_files(&repo_path("tests/fixtures/config/invalid"));
    assert!(
        files.len() >= 20,
        "expected ~20 invalid fixtures, found {}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read fixture");
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect-key: "))
            .unwrap_or_else(|| {
                panic!(
                    "{}: first line must be `# expect-key: <key>`",
                    file.display()
                )
            })
            .trim();
        let err = match Config::load(&file) {
            Ok(_) => panic!("{}: parsed, but should fail at {expected}", file.display()),
            Err(e) => e,
        };
        assert_eq!(err.key(), Some(expected), "{}: {err}", file.display());
        let message = err.to_string();
        assert!(
            message.starts_with(&file.display().to_string()),
            "{message}"
        );
        assert!(message.contains(&format!(": {expected}: ")), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = parse_ok(MINIMAL);
    assert_eq!(config.source, Path::new("/etc/meshtrust/test.toml"));
    assert_eq!(config.trust_domain, td("mesh-a.test"));
    assert_eq!(
        config.ca,
        CaConfig {
            key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
        }
    );
    assert_eq!(config.bundle_endpoint, None);
    assert_eq!(config.metrics, None);
    assert!(config.federation.is_empty());
    assert_eq!(
        config.federation_min_refresh_interval,
        Duration::from_secs(30)
    );
    assert!(config.entries.is_empty());
}

#[test]
fn the_federation_poll_floor_can_be_lowered_to_one_second_and_no_further() {
    // Issue 9 item 4: a peer's spiffe_refresh_hint cannot push us below 30s unless the
    // operator says so explicitly.
    let with = |value: &str| format!("federation_min_refresh_interval = \"{value}\"\n{MINIMAL}");
    assert_eq!(
        parse_ok(&with("1s")).federation_min_refresh_interval,
        Duration::from_secs(1)
    );
    assert_eq!(
        parse_ok(&with("2m")).federation_min_refresh_interval,
        Duration::from_secs(120)
    );
    for bad in ["500ms", "2d"] {
        let message = parse_err(&with(bad)).to_string();
        assert!(
            message.contains(": federation_min_refresh_interval: must be between 1s and 1d"),
            "{bad}: {message}"
        );
    }
    let message = parse_err(&with("0s")).to_string();
    assert!(
        message.contains(": federation_min_refresh_interval: "),
        "{message}"
    );
}

#[test]
fn bundle_endpoint_defaults_to_https_spiffe_with_the_server_id() {
    let config = parse_ok(&format!(
        "{MINIMAL}\n[bundle_endpoint]\nlisten = \"0.0.0.0:8443\"\n"
    ));
    assert_eq!(
        config.bundle_endpoint,
        Some(BundleEndpointConfig {
            listen: "0.0.0.0:8443".parse().expect("addr"),
            refresh_hint: Duration::from_secs(300),
            profile: EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: id("spiffe://mesh-a.test/meshtrust/server"),
            },
        })
    );
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let text = r#"
trust_domain = "mesh-a.test"
data_dir = "state"

[workload_api]
socket = "run/workload.sock"

[admin_api]
socket = "/run/meshtrust/admin.sock"

[[federation]]
trust_domain = "mesh-b.test"
bundle_endpoint_url = "https://mesh-b:8443/"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://mesh-b.test/meshtrust/server"
bootstrap_bundle = "peers/mesh-b.json"
"#;
    let config = parse_ok(text);
    assert_eq!(config.data_dir, Path::new("/etc/meshtrust/state"));
    assert_eq!(
        config.workload_api.socket,
        Path::new("/etc/meshtrust/run/workload.sock")
    );
    assert_eq!(
        config.admin_api.socket,
        Path::new("/run/meshtrust/admin.sock")
    );
    assert_eq!(
        config.federation[0].profile,
        PeerProfile::HttpsSpiffe {
            endpoint_spiffe_id: id("spiffe://mesh-b.test/meshtrust/server"),
            bootstrap_bundle: Some(PathBuf::from("/etc/meshtrust/peers/mesh-b.json")),
        },
        "a bootstrap bundle is not checked for existence at parse time"
    );
}

#[test]
fn https_web_files_must_exist_relative_to_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["endpoint.pem", "endpoint.key", "roots.pem"] {
        std::fs::write(dir.path().join(name), "PEM").expect("write");
    }
    let source = dir.path().join("mesh.toml");
    let web = |cert: &str, ca_file: &str| {
        format!(
            "{MINIMAL}\n[bundle_endpoint]\nlisten = \"[::]:8443\"\nprofile = \"https_web\"\n\
             cert_file = \"{cert}\"\nkey_file = \"endpoint.key\"\n\n[[federation]]\n\
             trust_domain = \"mesh-b.test\"\nbundle_endpoint_url = \"https://mesh-b.example/\"\n\
             profile = \"https_web\"\nca_file = \"{ca_file}\"\n"
        )
    };
    let config = Config::from_toml(&web("endpoint.pem", "roots.pem"), &source).expect("valid");
    let endpoint = config.bundle_endpoint.expect("endpoint");
    assert_eq!(
        endpoint.profile,
        EndpointProfile::HttpsWeb {
            cert_file: dir.path().join("endpoint.pem"),
            key_file: dir.path().join("endpoint.key"),
        }
    );
    assert_eq!(
        config.federation[0].profile,
        PeerProfile::HttpsWeb {
            ca_file: Some(dir.path().join("roots.pem"))
        }
    );

    let err =
        Config::from_toml(&web("missing.pem", "roots.pem"), &source).expect_err("missing cert");
    assert_eq!(err.key(), Some("bundle_endpoint.cert_file"));
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = Config::from_toml(&web("endpoint.pem", "."), &source).expect_err("a folder");
    assert_eq!(err.key(), Some("federation[0].ca_file"));
    assert!(err.to_string().contains("is not a file"), "{err}");
}

#[test]
fn errors_read_as_file_key_message() {
    let err = Config::from_toml(
        &format!("{MINIMAL}\n[ca]\nca_ttl = \"1x\"\n"),
        Path::new("config/mesh-a.toml"),
    )
    .expect_err("bad duration");
    assert_eq!(
        err.to_string(),
        r#"config/mesh-a.toml: ca.ca_ttl: invalid duration "1x": unknown unit "x" (use d, h, m, s or ms)"#
    );
    assert_eq!(err.file(), Path::new("config/mesh-a.toml"));
}

#[test]
fn toml_errors_keep_line_and_column() {
    let err = parse_err(&format!("{MINIMAL}\n[ca]\nca_ttl = \"24h\"\nfoo = 1\n"));
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert_eq!(err.key(), Some("ca.foo"));
    let line = MINIMAL.lines().count() + 4;
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "/etc/meshtrust/test.toml:{line}:1: ca.foo: unknown field `foo`"
        )),
        "{message}"
    );

    let err = parse_err(&format!("ca = {{ foo = 1 }}\n{MINIMAL}"));
    assert_eq!(err.key(), Some("ca.foo"), "inline tables too: {err}");

    let err = parse_err("trust_domain = \"mesh-a.test\"\ndata_dir = \n");
    assert_eq!(err.key(), None, "broken TOML has no key: {err}");
    assert!(
        err.to_string().starts_with("/etc/meshtrust/test.toml:2:"),
        "{err}"
    );
}

#[test]
fn missing_file_is_a_read_error() {
    let err = Config::load(Path::new("/nonexistent/meshtrust.toml")).expect_err("no file");
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert_eq!(err.key(), None);
    assert!(
        err.to_string().starts_with("/nonexistent/meshtrust.toml: "),
        "{err}"
    );
}

#[test]
fn federates_with_star_means_all_and_absent_means_none() {
    let text = format!(
        "{MINIMAL}
[[federation]]
trust_domain = \"mesh-b.test\"
bundle_endpoint_url = \"https://mesh-b:8443/\"
profile = \"https_web\"

[[federation]]
trust_domain = \"mesh-c.test\"
bundle_endpoint_url = \"https://mesh-c:8443/\"
profile = \"https_spiffe\"
endpoint_spiffe_id = \"spiffe://mesh-b.test/meshtrust/server-for-c\"

[[entry]]
spiffe_id = \"spiffe://mesh-a.test/all\"
selectors = [\"unix:uid:1\"]
federates_with = [\"*\"]
hint = \"\"

[[entry]]
spiffe_id = \"spiffe://mesh-a.test/none\"
selectors = [\"unix:gid:2\", \"unix:path:/usr/bin/none\"]

[[entry]]
spiffe_id = \"spiffe://mesh-a.test/some\"
selectors = [\"unix:uid:3\"]
federates_with = [\"mesh-c.test\", \"mesh-b.test\"]
"
    );
    let config = parse_ok(&text);
    let [all, none, some] = &config.entries[..] else {
        panic!("three entries");
    };
    assert_eq!(all.federates_with, FederatesWith::All);
    assert_eq!(all.hint, None, "an empty hint is no hint");
    assert_eq!(none.federates_with, FederatesWith::Only(vec![]));
    assert_eq!(
        none.selectors,
        [
            Selector::Gid(2),
            Selector::Path(PathBuf::from("/usr/bin/none"))
        ]
    );
    assert_eq!(
        some.federates_with,
        FederatesWith::Only(vec![td("mesh-c.test"), td("mesh-b.test")])
    );
    assert!(!some.federates_with.includes(&td("mesh-d.test")));
}

#[test]
fn hints_are_limited_to_1024_bytes() {
    let entry = |hint: &str| {
        format!(
            "{MINIMAL}\n[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/w\"\nselectors = [\"unix:uid:1\"]\nhint = \"{hint}\"\n"
        )
    };
    assert_eq!(
        parse_ok(&entry(&"h".repeat(1024))).entries[0]
            .hint
            .as_deref()
            .map(str::len),
        Some(1024)
    );
    assert_eq!(
        parse_err(&entry(&"h".repeat(1025))).key(),
        Some("entry[0].hint")
    );
}

#[test]
fn long_socket_paths_are_rejected() {
    let text = MINIMAL.replace(
        "/run/meshtrust/admin.sock",
        &format!("/run/{}.sock", "a".repeat(100)),
    );
    assert_eq!(parse_err(&text).key(), Some("admin_api.socket"));
}

#[test]
fn an_entry_whose_selectors_are_only_unix_path_is_refused() {
    let entry = |selectors: &str| {
        format!(
            "{MINIMAL}\n[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/ok\"\nselectors = [\"unix:uid:1\"]\n\
             [[entry]]\nspiffe_id = \"spiffe://mesh-a.test/w\"\nselectors = [{selectors}]\n"
        )
    };
    for only_paths in [
        "\"unix:path:/usr/bin/sleep\"",
        "\"unix:path:/usr/bin/sleep\", \"unix:path:/usr/bin/env\"",
    ] {
        let err = parse_err(&entry(only_paths));
        assert_eq!(err.key(), Some("entry[1].selectors"), "{err}");
        assert!(err.to_string().contains("LD_PRELOAD"), "{err}");
    }
    // A path narrowing a uid or gid is fine.
    parse_ok(&entry("\"unix:uid:1000\", \"unix:path:/usr/bin/sleep\""));
    parse_ok(&entry("\"unix:path:/usr/bin/sleep\", \"unix:gid:1000\""));
}

#[test]
fn a_refresh_hint_longer_than_a_third_of_the_rotation_lead_is_refused() {
    let config = |ca_ttl: &str, hint: Option<&str>| {
        let hint = hint
            .map(|h| format!("refresh_hint = \"{h}\"\n"))
            .unwrap_or_default();
        format!(
            "{MINIMAL}\n[ca]\nca_ttl = \"{ca_ttl}\"\nx509_svid_ttl = \"1s\"\njwt_svid_ttl = \"1s\"\n\
             [bundle_endpoint]\nlisten = \"127.0.0.1:0\"\n{hint}"
        )
    };
    let hint = |c: &Config| c.bundle_endpoint.as_ref().map(|b| b.refresh_hint);
    // The issue's case: ca_ttl 2h publishes the next CA 40 min before it signs.
    let err = parse_err(&config("2h", Some("6h")));
    assert_eq!(err.key(), Some("bundle_endpoint.refresh_hint"), "{err}");
    let text = err.to_string();
    assert!(text.contains("a lead of 40m"), "{text}");
    assert!(text.contains("At most 13m20s"), "{text}");
    // ca_ttl/9 is the limit, in whole seconds.
    assert_eq!(
        hint(&parse_ok(&config("2h", Some("13m20s")))),
        Some(Duration::from_secs(800))
    );
    assert!(parse(&config("2h", Some("801s"))).is_err());
    assert!(parse(&config("30s", Some("4s"))).is_err());
    assert_eq!(
        hint(&parse_ok(&config("30s", Some("3s")))),
        Some(Duration::from_secs(3))
    );
    // The default follows: 5m, or ca_ttl/9 when that is shorter.
    assert_eq!(
        hint(&parse_ok(&config("24h", None))),
        Some(DEFAULT_REFRESH_HINT)
    );
    assert_eq!(
        hint(&parse_ok(&config("30m", None))),
        Some(Duration::from_secs(200))
    );
    // 1s, the shortest hint there is, is always allowed (test CAs of a few seconds).
    assert_eq!(
        hint(&parse_ok(&config("8s", None))),
        Some(Duration::from_secs(1))
    );
    // Without a bundle endpoint nothing is published and nothing is checked.
    parse_ok(&format!(
        "{MINIMAL}\n[ca]\nca_ttl = \"3s\"\nx509_svid_ttl = \"1s\"\njwt_svid_ttl = \"1s\"\n"
    ));
}

#[test]
fn entry_node_is_a_node_name_or_star_and_absent_stays_on_the_server() {
    let entry = |node: &str| {
        format!(
            "{MINIMAL}\n[[entry]]\nspiffe_id = \"spiffe://mesh-a.test/w\"\nselectors = [\"unix:uid:1\"]\n{node}"
        )
    };
    let node = |text: &str| parse_ok(&entry(text)).entries[0].node.clone();
    assert_eq!(node(""), None);
    assert_eq!(node("node = \"*\""), Some(super::NodeScope::All));
    assert_eq!(
        node("node = \"web-1\""),
        Some(super::NodeScope::Node("web-1".to_owned()))
    );
    for bad in ["", "a/b", "..", "web 1"] {
        let err = parse_err(&entry(&format!("node = \"{bad}\"")));
        assert_eq!(err.key(), Some("entry[0].node"), "{bad:?}: {err}");
    }
}

#[test]
fn agent_api_and_node_attestation_are_checked_naming_their_keys() {
    let minimal = parse_ok(MINIMAL);
    assert_eq!(minimal.agent_api, None);
    assert_eq!(
        minimal.node_attestation,
        super::NodeAttestationConfig::default()
    );
    assert!(
        minimal.node_attestation.join_token,
        "join tokens on by default"
    );
    let with = parse_ok(&format!(
        "{MINIMAL}\n[agent_api]\nlisten = \"127.0.0.1:8081\"\n[node_attestation]\njoin_token = false\n"
    ));
    assert_eq!(
        with.agent_api.unwrap().listen,
        "127.0.0.1:8081".parse().unwrap()
    );
    assert!(!with.node_attestation.join_token);
    for (text, key) in [
        ("[agent_api]\n", "agent_api.listen"),
        ("[agent_api]\nlisten = \"nowhere\"\n", "agent_api.listen"),
        (
            "[metrics]\nlisten = \"127.0.0.1:9090\"\n[agent_api]\nlisten = \"0.0.0.0:9090\"\n",
            "agent_api.listen",
        ),
        (
            "[node_attestation]\nx509pop_ca_file = \"no-such-roots.pem\"\n",
            "node_attestation.x509pop_ca_file",
        ),
        (
            "[agent_api]\nlisten = \"127.0.0.1:8081\"\nmax_connections = 0\n",
            "agent_api.max_connections",
        ),
        (
            "[agent_api]\nlisten = \"127.0.0.1:8081\"\nidle_timeout = \"0s\"\n",
            "agent_api.idle_timeout",
        ),
        (
            "[agent_api]\nlisten = \"127.0.0.1:8081\"\nhandshake_timeout = \"soon\"\n",
            "agent_api.handshake_timeout",
        ),
    ] {
        let err = parse_err(&format!("{MINIMAL}\n{text}"));
        assert_eq!(err.key(), Some(key), "{text}: {err}");
    }
}
