//! docker-compose.yml and the Dockerfile. Without a Docker engine: the topology (services,
//! networks, volumes), every referenced file, every config passing `check-config`, and every
//! `meshtrust` command in the containers being a valid command line of this binary. With one
//! (every machine here; required in CI by `MESHTRUST_REQUIRE_DOCKER=1`): the two-mesh demo run
//! for real in containers, on an image made from this binary without a registry.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
#[path = "compose/docker.rs"]
mod docker;
#[path = "compose/yaml.rs"]
mod yaml;

use std::collections::BTreeSet;

use clap::Parser as _;
use serde_norway::Value;
use yaml::{keys, repo, strings};

fn compose() -> Value {
    yaml::load("docker-compose.yml")
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
        eprintln!("check-config {file}");
        common::cli(&["check-config", "--config", path.to_str().unwrap()]).ok();
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

/// Every service, with the shared `x-meshtrust` block merged in as compose does: read-only root,
/// no capabilities, no privilege gain, an init, never root; the daemons have a /readyz health
/// check and the workloads start only once their daemon is healthy.
#[test]
fn every_container_is_hardened_and_workloads_wait_for_a_healthy_daemon() {
    let mut c = compose();
    c.apply_merge().unwrap();
    let services = &c["services"];
    for name in keys(services) {
        let svc = &services[name.as_str()];
        assert_eq!(
            svc["read_only"].as_bool(),
            Some(true),
            "{name}: read-only root"
        );
        assert_eq!(
            strings(&svc["cap_drop"]),
            ["ALL"],
            "{name}: no capabilities"
        );
        assert!(
            strings(&svc["security_opt"]).contains(&"no-new-privileges:true".to_owned()),
            "{name}: no-new-privileges"
        );
        assert_eq!(
            svc["init"].as_bool(),
            Some(true),
            "{name}: an init as PID 1"
        );
        // No `user:` means the image's USER (meshtrust); an explicit one is a workload's uid.
        if let Some(user) = svc["user"].as_str() {
            assert!(!["0", "root"].contains(&user), "{name}: runs as {user}");
        }
        assert!(svc["privileged"].is_null(), "{name}: privileged");
    }
    for daemon in ["mesh-a", "mesh-b"] {
        let test = strings(&services[daemon]["healthcheck"]["test"]).join(" ");
        assert!(
            test.contains("GET /readyz") && test.contains("= 200"),
            "{daemon}: {test}"
        );
    }
    // A workload's health check is `meshtrust fetch x509`: healthy once it holds an identity.
    for workload in ["client-a", "batch-a", "echo-b"] {
        let test = strings(&services[workload]["healthcheck"]["test"]).join(" ");
        assert!(test.contains("meshtrust fetch x509"), "{workload}: {test}");
    }
    for (workload, daemon) in [
        ("client-a", "mesh-a"),
        ("batch-a", "mesh-a"),
        ("echo-b", "mesh-b"),
    ] {
        assert_eq!(
            services[workload]["depends_on"][daemon]["condition"].as_str(),
            Some("service_healthy"),
            "{workload} waits for {daemon}"
        );
    }
}

/// Users keep the public images and the build from source; the registry-less path (CI) shares
/// the same runtime stage: it comes first, so `--target runtime` (which the classic builder
/// builds with every stage before it) needs neither the `rust` image nor the sources, and the
/// users' image is that stage plus the binary built in `rust`.
#[test]
fn the_users_image_and_the_registry_less_one_share_the_runtime_stage_on_the_public_images() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(froms[0], "debian:bookworm-slim AS runtime");
    assert!(froms[1].starts_with("rust:") && froms[1].ends_with(" AS build"));
    assert_eq!(froms.last(), Some(&"runtime"), "the default target");
    assert!(
        text.contains("COPY --from=build /src/target/release/meshtrust /usr/local/bin/meshtrust")
    );
    // The runtime stage installs ca-certificates only where the base lacks them (the local base
    // has them, so nothing is downloaded there).
    let runtime = text.split("\nFROM rust:").next().unwrap();
    assert!(runtime.contains("if [ ! -s /etc/ssl/certs/ca-certificates.crt ]"));
    assert!(runtime.contains("USER meshtrust"));
    // The registry-less image: that stage, then the host's binary at the same path.
    let prebuilt = std::fs::read_to_string(repo().join(".ci/prebuilt.Dockerfile")).unwrap();
    assert!(prebuilt.contains("ARG RUNTIME=meshtrust-runtime:local\nFROM ${RUNTIME}\n"));
    assert!(prebuilt.contains("COPY meshtrust /usr/local/bin/meshtrust"));
    let script = std::fs::read_to_string(repo().join(".ci/docker-image.sh")).unwrap();
    assert!(script.contains("--target runtime"));
    // Compose runs that image under the name it builds for users, or MESHTRUST_IMAGE.
    assert_eq!(
        compose()["x-meshtrust"]["image"].as_str(),
        Some("${MESHTRUST_IMAGE:-meshtrust:dev}")
    );
}

/// The two-mesh demo in containers, asserted from outside: both daemons healthy (/readyz), each
/// pinning the other's current bundle, the frontend's call answered across meshes, batch refused
/// by echo's allow list (and by nothing else), and every container non-root on a read-only root.
#[test]
fn the_two_mesh_demo_runs_in_containers_and_echo_b_lets_in_only_the_frontend() {
    use std::time::Duration;

    let Some(engine) = docker::Engine::or_skip("the two-mesh demo in containers") else {
        return;
    };
    let project = docker::Project::new(&engine);
    project.build_image(&common::bin());

    // The image holds no state and no key: the data dirs are empty, made at run time in volumes.
    let image_state = docker::run(
        std::process::Command::new("docker").args([
            "run",
            "--rm",
            "--network",
            "none",
            project.image(),
            "find",
            "/var/lib/meshtrust",
            "/var/lib/meshtrust-peers",
            "/run/meshtrust",
            "-mindepth",
            "1",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        image_state.status.success(),
        "{}",
        docker::text(&image_state)
    );
    assert_eq!(docker::text(&image_state), "", "files baked into the image");

    project.up();

    // 1. Both daemons ready: compose's health check (/readyz) says healthy; and the workloads
    // that hold an identity say so through theirs (`meshtrust fetch x509`).
    for daemon in ["mesh-a", "mesh-b", "echo-b", "client-a"] {
        project.wait_for(
            &format!("{daemon} healthy"),
            Duration::from_secs(120),
            || {
                let health = project.inspect(daemon, "{{.State.Health.Status}}");
                if health == "healthy" {
                    Ok(())
                } else {
                    Err(health)
                }
            },
        );
    }

    // 2. Each pins the other's current bundle: state ok, and the pinned authorities are exactly
    // the ones the peer publishes as its own.
    let status = |daemon: &str| -> Result<serde_json::Value, String> {
        let out = project.exec(
            daemon,
            &[
                "meshtrust",
                "status",
                "--admin-socket",
                "/run/meshtrust/admin.sock",
                "--json",
            ],
        );
        if !out.status.success() {
            return Err(docker::text(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", docker::text(&out)))
    };
    let digests = |authorities: &serde_json::Value| -> Vec<String> {
        let mut d: Vec<String> = authorities
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["sha256"].as_str().map(str::to_owned))
            .collect();
        d.sort();
        d
    };
    for (daemon, peer_daemon, peer) in [
        ("mesh-a", "mesh-b", "mesh-b.test"),
        ("mesh-b", "mesh-a", "mesh-a.test"),
    ] {
        project.wait_for(
            &format!("{daemon} pinning {peer}'s bundle"),
            Duration::from_secs(120),
            || {
                let mine = status(daemon)?;
                let theirs = status(peer_daemon)?;
                let rel = mine["federation"]
                    .as_array()
                    .and_then(|f| f.iter().find(|r| r["trust_domain"] == peer))
                    .ok_or_else(|| format!("no relationship with {peer}: {mine}"))?;
                let own = digests(&theirs["bundle"]["authorities"]);
                if rel["state"] == "ok" && !own.is_empty() && digests(&rel["authorities"]) == own {
                    Ok(())
                } else {
                    Err(format!("{rel} vs {peer}'s own {own:?}"))
                }
            },
        );
    }

    // 3. The frontend's call crosses the meshes over mTLS and is answered.
    project.wait_for(
        "client-a printing `echo: hello-from-mesh-a`",
        Duration::from_secs(90),
        || {
            let log = project.logs("client-a");
            if log.lines().any(|l| l == "echo: hello-from-mesh-a") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let echo_log = project.logs("echo-b");
    assert!(
        echo_log.contains(&format!(
            "inbound: accepted {}",
            meshtrust::demo::sidecars::FRONTEND
        )),
        "{echo_log}"
    );

    // 4. batch holds a valid mesh-a SVID and reaches echo-b, whose allow list refuses it.
    let refusal = format!(
        "{} is not allowed (allowed: {})",
        meshtrust::demo::sidecars::BATCH,
        meshtrust::demo::sidecars::FRONTEND
    );
    project.wait_for(
        "echo-b refusing batch-a by its allow list",
        Duration::from_secs(90),
        || {
            let log = project.logs("echo-b");
            let refused = log
                .lines()
                .any(|l| l.starts_with("inbound: refused ") && l.ends_with(&refusal));
            let batch = project.logs("batch-a");
            let gave_up = batch.contains("batch: refused by echo-b");
            if refused && gave_up {
                Ok(())
            } else {
                Err(format!("{log}\n{batch}"))
            }
        },
    );
    let batch_log = project.logs("batch-a");
    assert!(
        batch_log.contains(&format!(
            "svid update: {}",
            meshtrust::demo::sidecars::BATCH
        )),
        "batch had its own SVID: {batch_log}"
    );
    assert!(
        !batch_log.contains("echo: "),
        "batch got an answer: {batch_log}"
    );

    // 5. Every running container: a non-root user, no capabilities, a read-only root.
    for service in ["mesh-a", "mesh-b", "echo-b", "client-a", "batch-a"] {
        let out = project.exec(
            service,
            &[
                "sh",
                "-c",
                "id -u; grep CapEff /proc/self/status; touch /written 2>&1; true",
            ],
        );
        let out = docker::text(&out);
        let mut lines = out.lines();
        let uid: u32 = lines.next().unwrap().parse().unwrap();
        assert_ne!(uid, 0, "{service} runs as root");
        assert_eq!(
            lines.next().unwrap().split_whitespace().nth(1),
            Some("0000000000000000"),
            "{service} has capabilities"
        );
        assert!(out.contains("Read-only file system"), "{service}: {out}");
    }

    // 6. The meshes meet only on `federation`: a workload cannot even reach the other mesh's
    // daemon (its name does not resolve on the workload's networks).
    for (service, other) in [("client-a", "mesh-b"), ("echo-b", "mesh-a")] {
        let out = project.exec(
            service,
            &[
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{other}/8443 && echo reached"),
            ],
        );
        assert!(
            !out.status.success() && !docker::text(&out).contains("reached"),
            "{service} reached {other}: {}",
            docker::text(&out)
        );
    }
}
