//! The operations kit, checked by the real tools: shell completions and the man page generated
//! by the binary, the systemd unit verified by `systemd-analyze` (with the generated man page
//! installed, so its `Documentation=man:meshtrust(1)` resolves), and its sandboxing scored; the
//! alert rules by `promtool`, and the rules and dashboard against the metric families that a real
//! server and a real node agent attested to it export.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::node_agent;

fn meshtrust(args: &[&str]) -> Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool` is on PATH; when it is not, prints a skip note, or panics when CI requires
/// the operations tools (`MESHTRUST_REQUIRE_OPS_TOOLS=1`, set by `.ci/run`, which installs them).
fn tool_or_skip(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("MESHTRUST_REQUIRE_OPS_TOOLS").is_none(),
            "{test}: {tool} is required (MESHTRUST_REQUIRE_OPS_TOOLS is set)"
        );
        eprintln!("SKIPPED {test}: {tool} is not installed");
    }
    found
}

const SUBCOMMANDS: &[&str] = &[
    "serve",
    "check-config",
    "bundle",
    "status",
    "demo",
    "federation",
    "sidecar",
    "completions",
    "man",
];

#[test]
fn completions_are_generated_for_bash_zsh_and_fish_and_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = meshtrust(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshtrust.bash");
    std::fs::write(&file, meshtrust(&["completions", "bash"]).stdout).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {syntax:?}");
    // An unknown shell is a usage error.
    assert_eq!(meshtrust(&["completions", "tcsh"]).status.code(), Some(64));
}

#[test]
fn the_man_page_documents_every_subcommand_signals_exit_codes_and_files() {
    let out = meshtrust(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH meshtrust 1"),
        "{roff:.200}"
    );
    for sub in SUBCOMMANDS {
        let heading = format!(".SH \"MESHTRUST {}\"", sub.to_uppercase());
        assert!(roff.contains(&heading), "no section {heading}");
    }
    for nested in ["MESHTRUST BUNDLE SHOW", "MESHTRUST FEDERATION RESET"] {
        assert!(
            roff.contains(&format!(".SH \"{nested}\"")),
            "no section {nested}"
        );
    }
    for section in [
        ".SH SIGNALS",
        ".SH EXIT STATUS",
        ".SH ENVIRONMENT",
        ".SH FILES",
    ] {
        assert!(roff.contains(section), "no {section}");
    }
    if tool_or_skip("man", "man page renders") {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("meshtrust.1");
        std::fs::write(&page, &roff).unwrap();
        let rendered = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(rendered.status.success(), "{rendered:?}");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("SIGHUP"), "{text}");
        assert!(text.contains("meshtrust federation reset"), "{text}");
    }
}

/// Copies a shipped unit into `dir`, with `/usr/bin/meshtrust` replaced by the binary under
/// test (systemd-analyze checks that ExecStart is executable).
fn unit_under_test(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/systemd").join(name)).unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        text.replace("/usr/bin/meshtrust", common::bin().to_str().unwrap()),
    )
    .unwrap();
    path
}

/// `systemd-analyze verify` and `security` on a shipped unit, with the settings every unit
/// must have.
fn verify_unit(name: &str, user: &str, state: &str) {
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    std::fs::write(man1.join("meshtrust.1"), meshtrust(&["man"]).stdout).unwrap();
    let unit = unit_under_test(name, dir.path());
    let text = std::fs::read_to_string(&unit).unwrap();
    for needed in [
        format!("User={user}\n"),
        format!("StateDirectory={state}\n"),
        format!("RuntimeDirectory={state}\n"),
        "LimitNOFILE=".to_owned(),
        "ProtectSystem=strict".to_owned(),
        "NoNewPrivileges=yes".to_owned(),
        "PrivateTmp=yes".to_owned(),
        "CapabilityBoundingSet=\n".to_owned(),
        "RestartPreventExitStatus=64".to_owned(),
    ] {
        assert!(text.contains(&needed), "{name} lacks {needed:?}");
    }

    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "{name}: {verify:?}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let marker = format!("exposure level for {name}: ");
    let level: f64 = report
        .lines()
        .find_map(|l| l.split(marker.as_str()).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no exposure level in {report}"))
        .parse()
        .unwrap();
    // The README records the full report; 2.0 keeps it in systemd's "OK" band with room for
    // what the daemon needs (network, /proc of callers, setrlimit).
    assert!(level <= 2.0, "{name}: exposure {level}: {report}");
}

#[test]
fn the_server_unit_verifies_and_its_sandbox_scores_ok() {
    if !tool_or_skip("systemd-analyze", "systemd unit verification") {
        return;
    }
    verify_unit("meshtrust.service", "meshtrust", "meshtrust");
    let text = std::fs::read_to_string(repo().join("deploy/systemd/meshtrust.service")).unwrap();
    assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
fn the_agent_unit_verifies_and_its_sandbox_scores_ok() {
    if !tool_or_skip("systemd-analyze", "systemd unit verification") {
        return;
    }
    verify_unit(
        "meshtrust-agent.service",
        "meshtrust-agent",
        "meshtrust-agent",
    );
    let text =
        std::fs::read_to_string(repo().join("deploy/systemd/meshtrust-agent.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/meshtrust agent --config "));
}

/// The metric families (`# TYPE` lines; every family has one even before it has samples) that
/// the real binaries export: a server with a peer and `[agent_api]`, and a node agent attested
/// to it and holding a workload SVID (its agent SVID and cache families exist only then).
#[derive(Debug)]
struct Exported {
    server: BTreeSet<String>,
    agent: BTreeSet<String>,
}

async fn exported_families() -> Exported {
    const TD: &str = "mesh-a.test";
    const NODE: &str = "node-1";
    common::init();
    let root = tempfile::tempdir().unwrap();
    let sdir = root.path().join("server");
    let entry = node_agent::node_entry("spiffe://mesh-a.test/web", NODE);
    let config = node_agent::server_config(TD, &entry)
        .metrics()
        .section(&format!(
            "[[federation]]\ntrust_domain = \"mesh-b.test\"\nbundle_endpoint_url = \"{}\"\nprofile = \"https_web\"\n",
            common::refused_url()
        ));
    node_agent::ServerProc::prepare(&sdir, &config);
    let server = node_agent::ServerProc::start(&sdir).await;
    let agent_config = server.joining_agent(NODE, &root.path().join("agent")).await;
    let agent = node_agent::spawn(&agent_config).await;

    let agent_addr = common::metrics::listen_addr(&agent).await;
    let agent_scrape = common::metrics::scrape_until(
        &agent_addr,
        "the agent connected, with its SVID and a cached workload SVID",
        |s| {
            s.value_or_0("meshtrust_agent_connected", "meshtrust_agent_connected") == 1.0
                && s.families
                    .contains_key("meshtrust_agent_svid_expires_at_seconds")
                && s.families
                    .contains_key("meshtrust_agent_cache_first_expiry_seconds")
        },
    )
    .await;
    let server_addr = common::metrics::listen_addr(server.proc()).await;
    let open = "meshtrust_agent_sync_streams";
    let server_scrape =
        common::metrics::scrape_until(&server_addr, "the agent's sync stream open", |s| {
            s.value_or_0(open, open) == 1.0
        })
        .await;
    Exported {
        server: server_scrape.families.into_keys().collect(),
        agent: agent_scrape.families.into_keys().collect(),
    }
}

/// Every metric name in `text` (a PromQL-bearing file): `meshtrust_*` and `process_*`
/// identifiers, histogram suffixes folded to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (i, _) in text.match_indices(['m', 'p']) {
        if i > 0 && text[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let word: String = text[i..].chars().take_while(|&c| is_ident(c)).collect();
        if word.starts_with("meshtrust_") || word.starts_with("process_") {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(&word);
            names.insert(family.to_owned());
        }
    }
    names
}

/// Checks that `what` uses at least `min` metric names, all in `exported` (`by`'s families).
fn uses_only(what: &str, text: &str, min: usize, exported: &BTreeSet<String>, by: &str) {
    let used = metric_names(text);
    assert!(used.len() >= min, "{what} uses too few metrics: {used:?}");
    let unknown: Vec<_> = used.difference(exported).collect();
    assert!(
        unknown.is_empty(),
        "{what} uses metrics the {by} does not export: {unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_the_dashboard_use_only_metrics_the_server_and_the_agent_export() {
    let exported = exported_families().await;
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/meshtrust-rules.yml")).unwrap();
    // The server's group, then the agents' (scraped from the agents' own listeners).
    let (server_rules, agent_rules) = rules
        .split_once("\n  - name: meshtrust-agent\n")
        .expect("a meshtrust-agent rule group");
    uses_only(
        "server alert rules",
        server_rules,
        12,
        &exported.server,
        "server",
    );
    uses_only(
        "agent alert rules",
        agent_rules,
        6,
        &exported.agent,
        "agent",
    );

    // Dashboard: the panels and the variable on `$agent` read agents, the others servers.
    let dashboard =
        std::fs::read_to_string(repo().join("deploy/grafana/meshtrust-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let (mut server_exprs, mut agent_exprs) = (String::new(), String::new());
    let panels = parsed["panels"].as_array().unwrap();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let into = if expr.contains("$agent") {
                &mut agent_exprs
            } else {
                &mut server_exprs
            };
            into.push_str(expr);
            into.push('\n');
        }
    }
    for var in parsed["templating"]["list"].as_array().unwrap() {
        let into = if var["name"] == "agent" {
            &mut agent_exprs
        } else {
            &mut server_exprs
        };
        into.push_str(&var.to_string());
        into.push('\n');
    }
    uses_only(
        "dashboard (servers)",
        &server_exprs,
        20,
        &exported.server,
        "server",
    );
    uses_only(
        "dashboard (agents)",
        &agent_exprs,
        7,
        &exported.agent,
        "agent",
    );
    // The dashboard covers each area the issue names.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for area in [
        "Federation",
        "CA and rotation",
        "Workload API",
        "Bundle endpoint",
        "Process",
        "Store",
        "Agent API",
        "Node agents",
    ] {
        assert!(titles.contains(&area), "no {area} row in {titles:?}");
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !tool_or_skip("promtool", "alert rules") {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "meshtrust-rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let test = Command::new("promtool")
        .args(["test", "rules", "meshtrust-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success() && said.contains("SUCCESS"),
        "{test:?}"
    );
    // Every alert has at least one unit test.
    let rules = std::fs::read_to_string(dir.join("meshtrust-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("meshtrust-rules.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alert {alert} has no promtool test"
        );
    }
}
