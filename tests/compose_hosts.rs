//! docker-compose.hosts.yml: a mesh across hosts in containers (README "A mesh across hosts").
//! Without a Docker engine: the topology (each agent on its own host network, reaching the
//! replicas over `control`; the database reachable by the replicas only; each workload on its
//! own agent's socket), the configs matching it, every container hardened. With one (required in
//! CI by `MESHTRUST_REQUIRE_DOCKER=1`): the mesh run for real on images made without a registry,
//! and four drills asserted (tests/compose/hosts.rs): a replica killed, an agent cut off and put
//! back, PostgreSQL restarted, a rolling restart of the replicas.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
#[path = "compose/docker.rs"]
mod docker;
#[path = "compose/hosts.rs"]
mod hosts;
#[path = "compose/yaml.rs"]
mod yaml;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_norway::Value;
use yaml::{keys, repo, strings};

const FILE: &str = "docker-compose.hosts.yml";

/// The compose file with its `<<` merges applied, as compose reads it.
fn compose() -> Value {
    yaml::load(FILE)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The named volumes `service` mounts (source names).
fn volumes(c: &Value, service: &str) -> BTreeSet<String> {
    strings(&c["services"][service]["volumes"])
        .iter()
        .map(|v| v.split(':').next().unwrap().to_owned())
        .filter(|v| !v.starts_with("./"))
        .collect()
}

/// Who may reach what: PostgreSQL only from the replicas (and the bundle job) on an internal
/// network; each agent on its own host network plus `control`; workloads only beside their
/// agent, sharing its socket volume and nobody else's; join tokens each in one node's volume.
#[test]
fn each_agent_has_its_own_network_and_the_database_is_behind_the_replicas() {
    let c = compose();
    let services = &c["services"];
    let nets = |s: &str| keys(&services[s]["networks"]);
    let declared_networks = keys(&c["networks"]);
    let declared_volumes = keys(&c["volumes"]);
    for name in keys(services) {
        assert!(nets(&name).is_subset(&declared_networks), "{name}");
        assert!(volumes(&c, &name).is_subset(&declared_volumes), "{name}");
        for v in strings(&services[name.as_str()]["volumes"]) {
            let source = v.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "{name}: {source}");
            }
        }
    }
    assert_eq!(c["networks"]["db"]["internal"].as_bool(), Some(true));
    let on_db: BTreeSet<String> = keys(services)
        .into_iter()
        .filter(|s| nets(s).contains("db"))
        .collect();
    assert_eq!(
        on_db,
        set(&["postgres", "replica-1", "replica-2", "mesh-a-bundle"])
    );
    assert_eq!(nets("postgres"), set(&["db"]));
    for replica in hosts::REPLICAS {
        assert_eq!(nets(replica), set(&["db", "control", "federation"]));
        assert!(
            strings(&services[replica]["networks"]["federation"]["aliases"])
                .contains(&"mesh-a".to_owned())
        );
    }
    assert_eq!(nets("mesh-b"), set(&["federation"]));
    for (i, (agent, workload, _)) in hosts::NODES.iter().enumerate() {
        let n = i + 1;
        let node_net = format!("node-{n}");
        assert_eq!(nets(agent), set(&["control", &node_net]), "{agent}");
        assert_eq!(nets(workload), set(&[&node_net]), "{workload}");
        let sock = format!("sock-node-{n}");
        assert!(volumes(&c, agent).contains(&sock), "{agent}");
        assert_eq!(volumes(&c, workload), set(&[&sock]), "{workload}");
        let token = format!("token-{n}");
        let holders: BTreeSet<String> = keys(services)
            .into_iter()
            .filter(|s| volumes(&c, s).contains(&token))
            .collect();
        assert_eq!(holders, set(&[agent, &format!("token-node-{n}")]));
    }
    let secret_holders: BTreeSet<String> = keys(services)
        .into_iter()
        .filter(|s| volumes(&c, s).contains("pg-secrets"))
        .collect();
    assert_eq!(
        secret_holders,
        set(&[
            "pg-secret",
            "postgres",
            "replica-1",
            "replica-2",
            "mesh-a-bundle"
        ])
    );
}

/// Non-root, read-only root filesystem, no capabilities, no privilege gain, an init: every
/// container, PostgreSQL included (its image's USER is `postgres`).
#[test]
fn every_container_of_the_hosts_file_is_hardened() {
    let c = compose();
    let services = &c["services"];
    for name in keys(services) {
        let svc = &services[name.as_str()];
        assert_eq!(svc["read_only"].as_bool(), Some(true), "{name}");
        assert_eq!(strings(&svc["cap_drop"]), ["ALL"], "{name}");
        assert!(
            strings(&svc["security_opt"]).contains(&"no-new-privileges:true".to_owned()),
            "{name}"
        );
        assert_eq!(svc["init"].as_bool(), Some(true), "{name}");
        if let Some(user) = svc["user"].as_str() {
            let uid = user.split(':').next().unwrap();
            assert!(!["0", "root"].contains(&uid), "{name}: runs as {user}");
        }
        assert!(svc["privileged"].is_null(), "{name}");
    }
    let dockerfile = std::fs::read_to_string(repo().join("deploy/postgres/Dockerfile")).unwrap();
    assert!(dockerfile.contains("\nFROM debian:bookworm-slim\n"));
    assert_eq!(
        dockerfile
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER ")),
        Some("postgres")
    );
    assert!(!dockerfile.to_lowercase().contains("password="));
}

fn toml_file(name: &str) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(repo().join("config/hosts").join(name)).unwrap())
        .unwrap()
}

/// The servers' configs pass `check-config`; the replicas read the database URL from the
/// secret volume, serve agents on the port the agents dial, and give node-1's and node-2's
/// entries to the uids of the workloads there; each agent lists its own replica first, trusts
/// the bundle the bundle job writes and reads its token from its own token volume.
#[test]
fn the_hosts_configs_pass_check_config_and_match_the_compose_file() {
    let c = compose();
    let services = &c["services"];
    for file in ["mesh-a.toml", "mesh-b.toml"] {
        let path = repo().join("config/hosts").join(file);
        common::cli(&["check-config", "--config", path.to_str().unwrap()]).ok();
    }
    let mesh_a = toml_file("mesh-a.toml");
    assert_eq!(mesh_a["store"]["kind"].as_str(), Some("postgres"));
    let url_file = mesh_a["store"]["url_file"].as_str().unwrap();
    assert!(url_file.starts_with("/run/secrets/"), "{url_file}");
    assert!(
        strings(&services["replica-1"]["volumes"]).contains(&"pg-secrets:/run/secrets:ro".into())
    );
    assert_eq!(mesh_a["agent_api"]["listen"].as_str(), Some("0.0.0.0:8081"));
    let entries = mesh_a["entry"].as_array().unwrap();
    for (i, (_, workload, id)) in hosts::NODES.iter().enumerate() {
        let node = format!("node-{}", i + 1);
        let entry = entries
            .iter()
            .find(|e| e["spiffe_id"].as_str() == Some(id))
            .unwrap();
        assert_eq!(entry["node"].as_str(), Some(node.as_str()));
        let uid = services[*workload]["user"].as_str().unwrap();
        assert_eq!(
            entry["selectors"].as_array().unwrap()[0].as_str(),
            Some(format!("unix:uid:{uid}").as_str())
        );
        let agent = toml_file(&format!("agent-{node}.toml"));
        let servers: Vec<&str> = agent["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        let (own, other) = (format!("replica-{}", i + 1), format!("replica-{}", 2 - i));
        assert_eq!(
            servers,
            [
                format!("https://{own}:8081"),
                format!("https://{other}:8081")
            ]
        );
        assert_eq!(
            agent["server_bundle"].as_str(),
            Some("/var/lib/meshtrust-peers/mesh-a.test.json")
        );
        assert_eq!(
            agent["attestation"]["join_token_file"].as_str(),
            Some("/run/meshtrust-token/token")
        );
        let agent_service = &services[format!("agent-{}", i + 1).as_str()];
        assert!(
            strings(&agent_service["volumes"])
                .contains(&format!("token-{}:/run/meshtrust-token:ro", i + 1))
        );
        assert!(
            strings(&agent_service["command"])
                .contains(&format!("/etc/meshtrust/agent-{node}.toml"))
        );
        let minted =
            strings(&services[format!("token-node-{}", i + 1).as_str()]["command"]).join(" ");
        assert!(
            minted.contains(&format!("token create --node {node}")),
            "{minted}"
        );
    }
}

/// The mesh across hosts, for real: healthy, each agent serving its workload its own identity
/// (with mesh-b's bundle), mesh-b pinning both replicas' CAs; then the four drills.
#[test]
fn a_mesh_across_hosts_survives_a_replica_kill_a_network_cut_a_database_restart_and_a_rolling_restart()
 {
    let Some(engine) = docker::Engine::or_skip("a mesh across hosts in containers") else {
        return;
    };
    let start = Instant::now();
    let p = docker::Project::with_file(&engine, FILE);
    p.build_postgres_image();
    p.build_image(&common::bin());
    for image in [p.image(), "meshtrust-postgres:local"] {
        let size = p.docker(&["image", "inspect", "-f", "{{.Size}}", image]);
        println!("image {image}: {} bytes", docker::text(&size).trim());
    }
    p.up();
    let guard = Duration::from_secs(120);
    for service in [
        "postgres",
        "replica-1",
        "replica-2",
        "mesh-b",
        "web-1",
        "api-2",
    ] {
        p.wait_healthy(service, guard);
    }
    hosts::wait_connected(&p);
    for (_, workload, id) in hosts::NODES {
        hosts::assert_served(&p, workload, id);
        let out = p.exec(workload, &["meshtrust", "fetch", "x509", "--timeout", "3s"]);
        assert!(
            docker::text(&out).contains("spiffe://mesh-b.test"),
            "{}",
            docker::text(&out)
        );
    }
    p.wait_for("mesh-b pins both replicas' CAs", guard, || {
        let s = hosts::server_status(&p, "mesh-b")?;
        let peer = &s["federation"][0];
        match peer["authorities"].as_array().map(Vec::len) {
            Some(2) if peer["state"] == "ok" => Ok(()),
            _ => Err(peer.to_string()),
        }
    });

    // Every container, jobs included, as the engine runs it: not root, read-only, no caps.
    let ids = p.compose(&["ps", "-q"], Duration::from_secs(60));
    for id in docker::text(&ids).split_whitespace() {
        let seen = p.docker(&[
            "inspect",
            "-f",
            "{{.Name}} user={{.Config.User}} ro={{.HostConfig.ReadonlyRootfs}} drop={{.HostConfig.CapDrop}}",
            id,
        ]);
        let seen = docker::text(&seen);
        let user = seen
            .split("user=")
            .nth(1)
            .unwrap()
            .split([' ', ':'])
            .next()
            .unwrap();
        assert!(!["", "0", "root"].contains(&user), "{seen}");
        assert!(
            seen.contains("ro=true") && seen.contains("drop=[ALL]"),
            "{seen}"
        );
    }

    hosts::kill_the_replica_an_agent_uses(&p);
    hosts::cut_an_agent_off_and_reconnect_it(&p);
    hosts::restart_postgres(&p);
    hosts::rolling_restart(&p);
    println!("compose hosts: wall time {:?}", start.elapsed());
}
