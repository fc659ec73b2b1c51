//! docker-compose.yml and the Dockerfile, checked without a Docker engine: the topology
//! (services, networks, volumes), every referenced file, every config passing `check-config`,
//! and every `meshtrust` command in the containers being a valid command line of this binary.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Parser as _;
use serde_norway::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    serde_norway::from_str(&std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap())
        .unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn keys(v: &Value) -> BTreeSet<String> {
    match v {
        Value::Mapping(m) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        Value::Sequence(_) => strings(v).into_iter().collect(),
        _ => BTreeSet::new(),
    }
}

/// The shell command of a service, as one string.
fn command(service: &Value) -> String {
    strings(&service["command"]).join(" ")
}

/// Every `meshtrust ...` invocation inside a (possibly `sh -c`) command, split into words.
fn meshtrust_invocations(cmd: &str) -> Vec<Vec<String>> {
    cmd.split(['&', ';', '|', '>'])
        .filter_map(|part| {
            let words: Vec<String> = part.split_whitespace().map(str::to_owned).collect();
            let at = words.iter().position(|w| w == "meshtrust")?;
            Some(words[at..].to_vec())
        })
        .collect()
}

#[test]
fn the_compose_file_runs_two_meshes_on_separate_networks_with_workloads_and_their_sidecars() {
    let c = compose();
    let services = &c["services"];
    let names = keys(services);
    for s in [
        "mesh-a-init",
        "mesh-b-init",
        "mesh-a",
        "mesh-b",
        "echo-b",
        "client-a",
    ] {
        assert!(names.contains(s), "service {s}");
    }
    let declared_networks = keys(&c["networks"]);
    let declared_volumes = keys(&c["volumes"]);
    for name in &names {
        let svc = &services[name.as_str()];
        for n in keys(&svc["networks"]) {
            assert!(
                declared_networks.contains(&n),
                "{name}: network {n} declared"
            );
        }
        for v in strings(&svc["volumes"]) {
            let source = v.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "{name}: {source} exists");
            } else {
                assert!(
                    declared_volumes.contains(source),
                    "{name}: volume {source} declared"
                );
            }
        }
    }
    // The daemons sit on separate networks and meet only on `federation`.
    let a_nets = keys(&services["mesh-a"]["networks"]);
    let b_nets = keys(&services["mesh-b"]["networks"]);
    let shared: Vec<_> = a_nets.intersection(&b_nets).collect();
    assert_eq!(shared, vec!["federation"]);
    // Each workload shares its own daemon's socket volume, not the other's.
    let vol = |s: &str| strings(&services[s]["volumes"]);
    assert!(vol("client-a").iter().any(|v| v.starts_with("sock-a:")));
    assert!(vol("mesh-a").iter().any(|v| v.starts_with("sock-a:")));
    assert!(vol("echo-b").iter().any(|v| v.starts_with("sock-b:")));
    assert!(vol("mesh-b").iter().any(|v| v.starts_with("sock-b:")));
}

#[test]
fn every_config_the_containers_use_passes_check_config_and_matches_the_topology() {
    let c = compose();
    let services = &c["services"];
    let mut configs = BTreeSet::new();
    for name in keys(services) {
        for inv in meshtrust_invocations(&command(&services[name.as_str()])) {
            if let Some(i) = inv.iter().position(|w| w == "--config") {
                let in_container = &inv[i + 1];
                let file = in_container
                    .strip_prefix("/etc/meshtrust/")
                    .expect("configs mounted at /etc/meshtrust");
                configs.insert(file.to_owned());
            }
        }
    }
    assert_eq!(
        configs,
        BTreeSet::from(["mesh-a.toml".to_owned(), "mesh-b.toml".to_owned()])
    );
    for file in &configs {
        let path = repo().join("config").join(file);
        let out = std::process::Command::new(common::bin())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = meshtrust::config::Config::load(&path).unwrap();
        for peer in &config.federation {
            // The peer URL's host is a network alias of the peer daemon.
            let host = peer.url.host_str().unwrap().to_owned();
            let aliases = strings(&services[host.as_str()]["networks"]["federation"]["aliases"]);
            assert!(
                aliases.contains(&host),
                "{file}: {host} reachable on the federation network"
            );
            // The bootstrap bundle is the file the peer's init job writes.
            if let meshtrust::config::PeerProfile::HttpsSpiffe {
                bootstrap_bundle: Some(b),
                ..
            } = &peer.profile
            {
                let init = command(&services[format!("{host}-init").as_str()]);
                assert!(
                    init.contains(&format!("> {}", b.display())),
                    "{file}: {} written by {host}-init",
                    b.display()
                );
            }
        }
        // Workload uids in compose match the entries' uid selectors.
        for (svc, td) in [
            ("client-a", "mesh-a.test"),
            ("batch-a", "mesh-a.test"),
            ("echo-b", "mesh-b.test"),
        ] {
            if config.trust_domain.as_str() == td {
                let uid: u32 = services[svc]["user"].as_str().unwrap().parse().unwrap();
                assert!(
                    config
                        .entries
                        .iter()
                        .any(|e| e.selectors.contains(&meshtrust::config::Selector::Uid(uid))),
                    "{svc} (uid {uid}) has an entry in {td}"
                );
            }
        }
    }
}

#[test]
fn every_meshtrust_command_in_the_containers_is_a_valid_command_line() {
    let c = compose();
    let mut seen = 0;
    for name in keys(&c["services"]) {
        for inv in meshtrust_invocations(&command(&c["services"][name.as_str()])) {
            meshtrust::cli::Cli::try_parse_from(&inv)
                .unwrap_or_else(|e| panic!("{name}: {inv:?}: {e}"));
            seen += 1;
        }
    }
    assert!(seen >= 9);
}

/// The containers run the sidecar command lines of `meshtrust demo`, with container addresses.
#[test]
fn the_containers_run_the_same_sidecar_commands_as_the_local_demo() {
    use meshtrust::demo::sidecars;
    let c = compose();
    let sidecar_of = |svc: &str| -> String {
        meshtrust_invocations(&command(&c["services"][svc]))
            .into_iter()
            .find(|inv| inv.get(1).map(String::as_str) == Some("sidecar"))
            .unwrap_or_else(|| panic!("{svc} runs a sidecar"))[1..]
            .join(" ")
    };
    assert_eq!(
        sidecar_of("echo-b"),
        sidecars::echo_inbound("0.0.0.0:8000", "127.0.0.1:7000")
    );
    assert_eq!(
        sidecar_of("client-a"),
        sidecars::frontend_outbound("127.0.0.1:7001", "echo-b:8000")
    );
    assert_eq!(
        sidecar_of("batch-a"),
        sidecars::batch_outbound("127.0.0.1:7001", "echo-b:8000")
    );
    // mesh-a registers the batch identity (so its refusal is echo's allow list, not a missing
    // SVID), and echo's allow list does not name it.
    let a = meshtrust::config::Config::load(&repo().join("config/mesh-a.toml")).unwrap();
    assert!(
        a.entries
            .iter()
            .any(|e| e.spiffe_id.as_str() == sidecars::BATCH)
    );
    assert!(!sidecar_of("echo-b").contains(sidecars::BATCH));
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(text.lines().filter(|l| l.starts_with("FROM ")).count() >= 2);
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert_ne!(user.trim(), "root");
    assert_ne!(user.trim(), "0");
    // Everything the build copies exists.
    for l in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for src in l
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(repo().join(src).exists(), "{src}");
        }
    }
}
