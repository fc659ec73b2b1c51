//! docker-compose.hosts.yml run for real: what the drills of tests/compose_hosts.rs read from
//! the containers (an agent's `meshtrust status` through its admin socket, a replica's status,
//! a workload's fetch loop counts) and the four drills themselves, each asserted: a replica
//! killed, an agent cut off its control network and put back, PostgreSQL restarted, both
//! replicas restarted one after the other.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::docker::Project;

/// The two replicas of mesh-a.test.
pub const REPLICAS: [&str; 2] = ["replica-1", "replica-2"];
/// Each node: its agent service, the workload beside it, the workload's SPIFFE ID.
pub const NODES: [(&str, &str, &str); 2] = [
    ("agent-1", "web-1", "spiffe://mesh-a.test/ns/default/sa/web"),
    ("agent-2", "api-2", "spiffe://mesh-a.test/ns/default/sa/api"),
];
const AGENT_ADMIN: &str = "/run/meshtrust/agent-admin.sock";
const ADMIN: &str = "/run/meshtrust/admin.sock";
/// How long a drill waits for what it expects.
const GUARD: Duration = Duration::from_secs(90);

/// A server's (replica's or mesh-b's) `meshtrust status --json`.
pub fn server_status(p: &Project, service: &str) -> Result<Value, String> {
    p.exec_json(
        service,
        &["meshtrust", "status", "--admin-socket", ADMIN, "--json"],
    )
}

/// An agent's `"agent"` status section (`meshtrust status` on its own admin socket).
pub fn agent_status(p: &Project, agent: &str) -> Result<Value, String> {
    p.exec_json(
        agent,
        &[
            "meshtrust",
            "status",
            "--admin-socket",
            AGENT_ADMIN,
            "--json",
        ],
    )
    .map(|v| v["agent"].clone())
}

/// The replica service `agent` is connected to now, `None` when it is connected to none.
pub fn server_of(p: &Project, agent: &str) -> Result<Option<String>, String> {
    let status = agent_status(p, agent)?;
    Ok(status["server"].as_str().map(|url| {
        url.trim_start_matches("https://")
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned()
    }))
}

/// How many times `agent` has connected to a server so far (its log).
pub fn connections(p: &Project, agent: &str) -> usize {
    p.logs(agent).matches("agent connected").count()
}

/// The fetch loop's counts of `workload`: (calls that got an SVID, calls that failed).
pub fn counts(p: &Project, workload: &str) -> (u64, u64) {
    let logs = p.logs(workload);
    let Some(line) = logs
        .lines()
        .rev()
        .find(|l| l.starts_with("fetch x509: ok="))
    else {
        return (0, 0);
    };
    let num = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{workload}: unreadable count line {line:?}"))
    };
    (num("ok="), num("failed="))
}

/// `meshtrust fetch x509` inside `workload` now: it must hold `id`.
#[track_caller]
pub fn assert_served(p: &Project, workload: &str, id: &str) {
    let out = p.exec(workload, &["meshtrust", "fetch", "x509", "--timeout", "3s"]);
    let text = super::docker::text(&out);
    assert!(
        out.status.success() && text.contains(id),
        "{workload}: {text}"
    );
}

fn other(replica: &str) -> &'static str {
    if replica == REPLICAS[0] {
        REPLICAS[1]
    } else {
        REPLICAS[0]
    }
}

/// Waits until every agent is connected to some replica.
pub fn wait_connected(p: &Project) {
    for (agent, _, _) in NODES {
        p.wait_for(&format!("{agent} connected to a replica"), GUARD, || {
            server_of(p, agent)?.ok_or_else(|| "no server".to_owned())
        });
    }
}

/// Drill 1: `docker kill` the replica node-1's agent uses. Its workload keeps its SVID at once,
/// the agent moves to the other replica; the killed one is started again.
pub fn kill_the_replica_an_agent_uses(p: &Project) {
    let (agent, workload, id) = NODES[0];
    let used = server_of(p, agent).unwrap().expect("agent-1 connected");
    let (_, failed) = counts(p, workload);
    p.docker(&["kill", &p.container(&used)]);
    let killed = Instant::now();
    assert_served(p, workload, id);
    let moved_to = other(&used);
    p.wait_for(
        &format!("{agent} moved from {used} to {moved_to}"),
        GUARD,
        || match server_of(p, agent)? {
            Some(s) if s == moved_to => Ok(()),
            s => Err(format!("connected to {s:?}")),
        },
    );
    println!(
        "drill kill: {used} killed -> {agent} synced with {moved_to} in {:?}",
        killed.elapsed()
    );
    assert_served(p, workload, id);
    assert_eq!(counts(p, workload).1, failed, "{workload}: a fetch failed");
    p.docker(&["start", &p.container(&used)]);
    p.wait_healthy(&used, GUARD);
}

/// Drill 2: `docker network disconnect` node-1's agent from `control`: it has no server, its
/// workload is served from its cache (the loop's calls go on, none fails); reconnected, it
/// connects and syncs again.
pub fn cut_an_agent_off_and_reconnect_it(p: &Project) {
    let (agent, workload, id) = NODES[0];
    let network = p.network("control");
    let container = p.container(agent);
    let connected_before = connections(p, agent);
    p.docker(&["network", "disconnect", &network, &container]);
    p.wait_for(
        &format!("{agent} cut off: no server"),
        GUARD,
        || match server_of(p, agent)? {
            None => Ok(()),
            Some(s) => Err(format!("still on {s}")),
        },
    );
    let (ok, failed) = counts(p, workload);
    assert_served(p, workload, id);
    p.wait_for(
        &format!("3 more calls of {workload} while {agent} is cut off"),
        GUARD,
        || match counts(p, workload) {
            (n, f) if f != failed => Err(format!("a call failed: ok={n} failed={f}")),
            (n, _) if n >= ok + 3 => Ok(()),
            (n, _) => Err(format!("ok={n}")),
        },
    );
    assert_eq!(counts(p, workload).1, failed, "{workload}: a fetch failed");
    p.docker(&["network", "connect", &network, &container]);
    let back = Instant::now();
    p.wait_for(&format!("{agent} resynced"), GUARD, || {
        if connections(p, agent) > connected_before && server_of(p, agent)?.is_some() {
            Ok(())
        } else {
            Err("not connected again".to_owned())
        }
    });
    println!(
        "drill network: {agent} reconnected -> synced again in {:?}",
        back.elapsed()
    );
}

/// The state a database restart must not lose, as replica-1 reports it: the bundle's sequence,
/// the authorities (SHA-256, sorted) and mesh-b's pin (sequence, authorities).
fn durable(status: &Value) -> (u64, Vec<String>, u64, Vec<String>) {
    let shas = |list: &Value| -> Vec<String> {
        let mut v: Vec<String> = list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["sha256"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let peer = status["federation"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["trust_domain"] == "mesh-b.test"))
        .cloned()
        .unwrap_or(Value::Null);
    (
        status["bundle"]["sequence"].as_u64().unwrap_or(0),
        shas(&status["bundle"]["authorities"]),
        peer["sequence"].as_u64().unwrap_or(0),
        shas(&peer["authorities"]),
    )
}

/// Drill 3: `docker restart` PostgreSQL. Nothing is lost: once a write goes through again (a
/// join token minted), each replica's bundle sequence is the same or higher with the same
/// authorities, mesh-b's pin is kept, both agents are still registered; no workload call fails.
pub fn restart_postgres(p: &Project) {
    let before: Vec<_> = REPLICAS
        .iter()
        .map(|r| durable(&server_status(p, r).unwrap()))
        .collect();
    assert_eq!(before[0].1.len(), 2, "two replicas' CAs: {before:?}");
    assert!(!before[0].3.is_empty(), "mesh-b pinned: {before:?}");
    let failed: Vec<u64> = NODES.iter().map(|(_, w, _)| counts(p, w).1).collect();
    p.docker(&["restart", "-t", "10", &p.container("postgres")]);
    let restarted = Instant::now();
    p.wait_healthy("postgres", GUARD);
    for replica in REPLICAS {
        p.wait_for(&format!("{replica} writes again"), GUARD, || {
            let out = p.exec(
                replica,
                &[
                    "meshtrust",
                    "token",
                    "create",
                    "--node",
                    "drill",
                    "--admin-socket",
                    ADMIN,
                ],
            );
            if out.status.success() {
                Ok(())
            } else {
                Err(super::docker::text(&out))
            }
        });
    }
    println!(
        "drill postgres: restarted -> both replicas write again in {:?}",
        restarted.elapsed()
    );
    for (replica, was) in REPLICAS.iter().zip(&before) {
        let now = durable(&server_status(p, replica).unwrap());
        assert!(
            now.0 >= was.0,
            "{replica}: bundle sequence {was:?} -> {now:?}"
        );
        assert_eq!(now.1, was.1, "{replica}: authorities");
        assert!(now.2 >= was.2, "{replica}: mesh-b pin {was:?} -> {now:?}");
        assert!(!now.3.is_empty(), "{replica}: mesh-b pin kept");
    }
    let agents = p
        .exec_json(
            REPLICAS[0],
            &[
                "meshtrust",
                "agent",
                "list",
                "--admin-socket",
                ADMIN,
                "--json",
            ],
        )
        .unwrap();
    for node in ["node-1", "node-2"] {
        assert!(
            agents
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["node"] == node && a["evicted"] == false),
            "{node} registered: {agents}"
        );
    }
    for ((_, workload, _), was) in NODES.iter().zip(failed) {
        assert_eq!(counts(p, workload).1, was, "{workload}: a fetch failed");
    }
}

/// Drill 4: a rolling restart, replica-1 then replica-2, each healthy again before the next:
/// every agent connects again, and no workload call fails meanwhile.
pub fn rolling_restart(p: &Project) {
    let before: Vec<(u64, u64)> = NODES.iter().map(|(_, w, _)| counts(p, w)).collect();
    let connected: Vec<usize> = NODES.iter().map(|(a, _, _)| connections(p, a)).collect();
    let start = Instant::now();
    for replica in REPLICAS {
        p.docker(&["restart", "-t", "10", &p.container(replica)]);
        p.wait_healthy(replica, GUARD);
    }
    for ((agent, _, _), was) in NODES.iter().zip(connected) {
        p.wait_for(&format!("{agent} connected again"), GUARD, || {
            if connections(p, agent) > was && server_of(p, agent)?.is_some() {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        });
    }
    let took = start.elapsed();
    for ((_, workload, id), (ok, failed)) in NODES.iter().zip(before) {
        p.wait_for(
            &format!("{workload} called again"),
            GUARD,
            || match counts(p, workload) {
                (n, _) if n > ok => Ok(()),
                (n, _) => Err(format!("ok={n}")),
            },
        );
        let (ok_now, failed_now) = counts(p, workload);
        assert_eq!(failed_now, failed, "{workload}: a fetch failed");
        assert_served(p, workload, id);
        println!(
            "drill rolling restart: {workload} made {} calls, none failed ({took:?})",
            ok_now - ok
        );
    }
}
