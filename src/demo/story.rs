//! `meshtrust demo`, step by step: two meshes federate, a frontend in mesh-a calls an echo
//! service in mesh-b through sidecars, and a caller that is not on the allow list is refused.
//!
//! Everything is real and in this one process: two daemons (CA, bundle endpoint, fetchers,
//! Workload API on Unix sockets), sidecars started from the very command lines the containers
//! of `docker-compose.yml` run, TLS on loopback with ephemeral ports.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::echo;
use super::meshes::{DemoMesh, Workload, describe_bundle};
use super::sidecars::{self, BATCH, ECHO, FRONTEND};
use crate::app::Daemon;
use crate::cli::{Cli, Command};
use crate::federation::client::FetchLimits;
use crate::federation::invite::Invite;
use crate::federation::invite_join::{self, JoinError, JoinRequest, Joined};
use crate::sidecar::{self, Reporter};
use crate::spiffe_id::TrustDomain;

/// How long any one step may take before the demo gives up (a hang guard).
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// The running demo, for `--keep-running` and for shutdown.
#[derive(Debug)]
pub struct Running {
    daemons: Vec<(DemoMesh, Daemon)>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    frontend_proxy: String,
    work: PathBuf,
    console: Console,
}

/// The sidecars' lines on stdout, held back once the demo said `demo: OK` (so that it stays the
/// last line) until `--keep-running` has printed what to try.
#[derive(Debug, Clone, Default)]
struct Console(Arc<Mutex<bool>>);

impl Console {
    /// Prints a sidecar's line unless muted. The lock is held while printing: a line is either
    /// out before `demo: OK` or not printed at all.
    fn sidecar_line(&self, line: &str) {
        let muted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !*muted {
            println!("{line}");
        }
    }

    /// Mutes the sidecars and prints `line` as the last one.
    fn last_line(&self, line: &str) {
        let mut muted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *muted = true;
        println!("{line}");
    }

    fn unmute(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// Runs every step; `Ok` means the last line printed was `demo: OK`.
///
/// # Errors
/// The first step that failed, in words.
pub async fn run(work: &Path) -> anyhow::Result<Running> {
    let mut a = DemoMesh::new(work, "mesh-a").await?;
    let mut b = DemoMesh::new(work, "mesh-b").await?;
    a.write_config(&[
        Workload {
            path: "/ns/default/sa/frontend",
            hint: "frontend",
        },
        Workload {
            path: "/ns/default/sa/batch",
            hint: "batch",
        },
    ])?;
    b.write_config(&[Workload {
        path: "/ns/default/sa/echo",
        hint: "echo",
    }])?;

    step("1. both daemons start; each creates its CA and has no peer yet");
    let mut da = a.start().await?;
    let mut db = b.start().await?;
    for (m, d) in [(&a, &da), (&b, &db)] {
        say(&format!(
            "{} serves its bundle at {} (https_spiffe, as {}) and workloads on {}",
            m.trust_domain(),
            m.url(),
            m.endpoint_id(),
            d.workload_socket.display()
        ));
    }

    step(
        "2. each operator makes an invite for the other (`meshtrust federation invite`): one line to hand over",
    );
    let token_a = invite(&a, &da).await?;
    let token_b = invite(&b, &db).await?;

    step("3. an invite altered on the way is refused, and nothing is written");
    let mut altered = Invite::decode(&token_b, SystemTime::now())?;
    altered.x509_authorities_sha256 = "0".repeat(64);
    match join(&a, &b, &altered.encode()).await {
        Ok(_) => bail!("an altered invite was accepted"),
        Err(e) if a.bootstrap_path(&b).exists() => {
            bail!("an altered invite was refused ({e}) but a file was written")
        }
        Err(e) => say(&format!(
            "mesh-b.test's invite with another CA digest: refused: {}",
            crate::commands::describe(&anyhow::Error::new(e))
        )),
    }

    step(
        "4. each joins with the other's invite (`meshtrust federation join TOKEN --bootstrap-out peers/<peer>.json --config meshtrust.toml --write`)",
    );
    for (m, peer, token) in [(&a, &b, &token_b), (&b, &a, &token_a)] {
        let joined = join(m, peer, token).await?;
        say(&format!(
            "{} fetched {}'s bundle from {}: its CA certificates match the invite (sha256 {}…) and the endpoint proved {}; saved as {}, [[federation]] block appended to {}",
            m.trust_domain(),
            peer.trust_domain(),
            joined.invite.url,
            &joined.invite.x509_authorities_sha256[..16],
            joined.invite.endpoint_spiffe_id,
            joined.bootstrap_out.display(),
            m.config_path().display()
        ));
    }

    step(
        "5. SIGHUP: each daemon applies its new peer and pins the other's bundle, fetched over TLS authenticated by the bootstrap bundle",
    );
    reload(&a, &mut da)?;
    reload(&b, &mut db)?;
    pin(&a, &da, &b).await?;
    pin(&b, &db, &a).await?;

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let console = Console::default();
    step(
        "6. mesh-b: an echo service behind an inbound sidecar that lets in only mesh-a's frontend",
    );
    let echo_listener = bind().await?;
    let echo_addr = echo_listener.local_addr()?;
    tracker.spawn(echo::serve_echo(echo_listener, cancel.child_token()));
    let inbound = bind().await?;
    let inbound_addr = inbound.local_addr()?;
    let echo = start_sidecar(
        &tracker,
        &cancel,
        &console,
        "echo-b sidecar",
        &b,
        &sidecars::echo_inbound(&inbound_addr.to_string(), &echo_addr.to_string()),
        inbound,
    )?;

    step("7. mesh-a: the frontend's outbound sidecar, which accepts only mesh-b's echo as server");
    let outbound = bind().await?;
    let frontend_proxy = outbound.local_addr()?.to_string();
    let frontend_ready = start_sidecar(
        &tracker,
        &cancel,
        &console,
        "frontend sidecar",
        &a,
        &sidecars::frontend_outbound(&frontend_proxy, &inbound_addr.to_string()),
        outbound,
    )?;
    wait_ready(echo.ready.clone(), "the echo sidecar's SVID").await?;
    wait_ready(frontend_ready.ready, "the frontend sidecar's SVID").await?;

    step("8. the frontend (mesh-a) calls echo (mesh-b): mTLS across the two trust domains");
    let message = "hello from mesh-a's frontend";
    say(&format!(
        "frontend sends {message:?} to its sidecar at {frontend_proxy}"
    ));
    let answer = echo::call(&frontend_proxy, message)
        .await
        .context("the allowed call failed")?;
    if answer != format!("echo: {message}") {
        bail!("the echo service answered {answer:?}");
    }
    say(&format!("frontend got {answer:?} back from {ECHO}"));

    step("9. batch, another mesh-a workload, is not on echo's allow list: it is refused");
    let refused = bind().await?;
    let refused_addr = refused.local_addr()?.to_string();
    let batch_ready = start_sidecar(
        &tracker,
        &cancel,
        &console,
        "batch sidecar",
        &a,
        &sidecars::batch_outbound(&refused_addr, &inbound_addr.to_string()),
        refused,
    )?;
    wait_ready(batch_ready.ready, "the batch sidecar's SVID").await?;
    match echo::call(&refused_addr, "hello from batch").await {
        Ok(answer) => bail!("{BATCH} was let in and got {answer:?}: the allow list failed"),
        Err(e) => say(&format!("batch's call ended without an answer ({e})")),
    }
    // The call failing is not enough: it must be echo's allow list that said no (its line can
    // come a moment after the client saw the connection close).
    let mut refusals = echo.refusals;
    match tokio::time::timeout(
        STEP_LIMIT,
        refusals.wait_for(|lines| lines.iter().any(|l| l.contains(BATCH))),
    )
    .await
    {
        Ok(Ok(_)) => say("echo's sidecar refused it by its allow list, as it should"),
        _ => bail!("{BATCH}'s call failed, but echo's sidecar never refused it by its allow list"),
    }

    console.last_line(&format!(
        "demo: OK (mesh-a.test and mesh-b.test federated; {FRONTEND} reached {ECHO} over mTLS; {BATCH} was refused)"
    ));
    Ok(Running {
        daemons: vec![(a, da), (b, db)],
        tracker,
        cancel,
        frontend_proxy,
        work: work.to_owned(),
        console,
    })
}

impl Running {
    /// What to poke at while `--keep-running` holds the demo up: commands with this binary's
    /// real path, writing only under the demo's work folder (removed at the end). The
    /// sidecars' lines follow from then on.
    pub fn print_endpoints(&self) {
        let exe = std::env::current_exe()
            .map_or_else(|_| "meshtrust".to_owned(), |p| p.display().to_string());
        println!();
        println!("The demo keeps running; Ctrl-C stops it. Things to try:");
        for (m, d) in &self.daemons {
            let sock = d.workload_socket.display();
            println!("  {}:", m.trust_domain());
            println!("    curl -sk {}", m.url());
            println!(
                "    curl -s --unix-socket {sock} -H 'workload.spiffe.io: true' http://localhost/v1/x509-bundles"
            );
            println!("    {exe} status --config {}", m.config_path().display());
            println!(
                "    {exe} status --admin-socket {}",
                d.admin_socket.display()
            );
            println!(
                "    meshtrust federation invite --admin-socket {}",
                d.admin_socket.display()
            );
            println!("    curl -s http://127.0.0.1:{}/metrics", m.metrics_port);
            println!(
                "    SPIFFE_ENDPOINT_SOCKET=unix://{sock} {exe} sidecar files --out {}",
                self.work.join(format!("svid-{}", m.name)).display()
            );
        }
        println!(
            "  the frontend's proxy: {exe} demo call --connect {} --message hi",
            self.frontend_proxy
        );
        self.console.unmute();
    }

    /// Stops the sidecars, the echo service and both daemons.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        for (_, d) in self.daemons {
            d.shutdown().await;
        }
    }
}

fn step(text: &str) {
    println!("\n{text}");
}

fn say(text: &str) {
    println!("   {text}");
}

async fn bind() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")
}

/// `meshtrust federation invite` against `d`'s admin socket; prints the token, shortened.
async fn invite(m: &DemoMesh, d: &Daemon) -> anyhow::Result<String> {
    let (code, body) =
        crate::admin_client::request(&d.admin_socket, "POST", "/v1/federation/invite").await?;
    let Some(token) = body["token"].as_str().filter(|_| code == 200) else {
        bail!("{}'s invite was refused ({code}): {body}", m.trust_domain());
    };
    say(&format!(
        "{}: {}… ({} characters: {}, {}, CA certificates sha256 {}…, valid until {})",
        m.trust_domain(),
        &token[..token.len().min(40)],
        token.len(),
        body["bundle_endpoint_url"].as_str().unwrap_or("?"),
        body["endpoint_spiffe_id"].as_str().unwrap_or("?"),
        body["x509_authorities_sha256"]
            .as_str()
            .map_or("?", |d| &d[..d.len().min(16)]),
        body["expires_at"].as_str().unwrap_or("?"),
    ));
    Ok(token.to_owned())
}

/// `meshtrust federation join TOKEN --bootstrap-out peers/<peer>.json --config meshtrust.toml
/// --write` in `m`'s folder.
async fn join(m: &DemoMesh, peer: &DemoMesh, token: &str) -> Result<Joined, JoinError> {
    let req = JoinRequest {
        token: token.to_owned(),
        bootstrap_out: m.bootstrap_path(peer),
        config: Some(m.config_path()),
        write: true,
    };
    invite_join::join(&req, FetchLimits::default(), SystemTime::now()).await
}

/// What SIGHUP does: re-reads `m`'s config and applies it; the new peer must be applied.
fn reload(m: &DemoMesh, d: &mut Daemon) -> anyhow::Result<()> {
    let outcome = d.reload(m.config()?).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !outcome.federation_changed {
        bail!(
            "{}: the reload did not apply the new peer",
            m.trust_domain()
        );
    }
    say(&format!(
        "{} reloaded {}: new federation relationship running",
        m.trust_domain(),
        m.config_path().display()
    ));
    Ok(())
}

/// Asks `d`'s fetcher for `peer` to fetch now and waits until the bundle is pinned.
async fn pin(m: &DemoMesh, d: &Daemon, peer: &DemoMesh) -> anyhow::Result<()> {
    let td = TrustDomain::new(peer.trust_domain())?;
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        // The same request as `meshtrust federation refresh`: the first fetch at start may have
        // run before the peer was listening.
        let report = d.refresh.refresh(&td).await;
        if let Some(pinned) = d.peers.get(&td) {
            say(&format!(
                "{} pinned {}'s bundle from {} (server proved {}): {}",
                m.trust_domain(),
                td,
                peer.url(),
                peer.endpoint_id(),
                describe_bundle(&pinned)
            ));
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let why = report.and_then(|r| r.error).unwrap_or_default();
            bail!("{} could not pin {td}: {why}", m.trust_domain());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `meshtrust <args>` (a sidecar command line, exactly as a container would run it)
/// against `mesh`'s Workload API; its report lines are printed indented under `label`. Returns
/// a flag that turns true once the sidecar holds an SVID.
/// What a started sidecar reports: its first SVID, and the peers it refused by name.
struct SidecarWatch {
    ready: watch::Receiver<bool>,
    refusals: watch::Receiver<Vec<String>>,
}

fn start_sidecar(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    console: &Console,
    label: &'static str,
    mesh: &DemoMesh,
    args: &str,
    listener: TcpListener,
) -> anyhow::Result<SidecarWatch> {
    say(&format!(
        "{label}: SPIFFE_ENDPOINT_SOCKET=unix://{} meshtrust {args}",
        mesh.workload_socket().display()
    ));
    let argv = std::iter::once("meshtrust").chain(args.split_whitespace());
    let Command::Sidecar(parsed) = Cli::try_parse_from(argv)?.command else {
        bail!("not a sidecar command: {args}");
    };
    let (ready_tx, ready) = watch::channel(false);
    let (refused_tx, refusals) = watch::channel(Vec::new());
    let out = console.clone();
    let report = Reporter::new(move |line: &str| {
        // Printed first, then told: whoever waits on it may end the demo at once.
        out.sidecar_line(&format!("      [{label}] {line}"));
        if line.starts_with("svid update:") {
            ready_tx.send_replace(true);
        }
        if line.contains(" is not allowed") {
            refused_tx.send_modify(|lines| lines.push(line.to_owned()));
        }
    });
    let out = console.clone();
    let env_socket = Some(format!("unix://{}", mesh.workload_socket().display()));
    let cancel = cancel.child_token();
    tracker.spawn(async move {
        if let Err(e) = sidecar::run_on(parsed, env_socket, Some(listener), report, cancel).await {
            out.sidecar_line(&format!("      [{label}] stopped: {e}"));
        }
    });
    Ok(SidecarWatch { ready, refusals })
}

async fn wait_ready(mut ready: watch::Receiver<bool>, what: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(STEP_LIMIT, ready.wait_for(|r| *r)).await {
        Ok(Ok(_)) => Ok(()),
        _ => bail!("{what} did not arrive"),
    }
}
