//! `meshtrust token create` and `meshtrust agent list|evict` over the admin socket.

use std::path::PathBuf;

use anyhow::bail;

use crate::cli::{AdminTarget, AgentCommand, AgentRunArgs, TokenCommand};
use crate::commands::EX_USAGE;

/// The admin socket of `target`: given, or read from the config file.
///
/// # Errors
/// `Err(64)` when the config file is bad (the reason printed).
pub fn admin_socket(target: &AdminTarget) -> Result<PathBuf, u8> {
    match (&target.admin_socket, &target.config) {
        (Some(socket), _) => Ok(socket.clone()),
        (None, Some(config)) => crate::config::Config::load(config)
            .map(|c| c.admin_api.socket)
            .map_err(|e| {
                eprintln!("meshtrust: bad config: {e}");
                EX_USAGE
            }),
        (None, None) => {
            eprintln!("meshtrust: --admin-socket or --config is required");
            Err(EX_USAGE)
        }
    }
}

/// Runs `run` on a current-thread runtime; a failure is printed and exits 1.
fn block_on(run: impl std::future::Future<Output = anyhow::Result<()>>) -> Result<(), u8> {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run));
    result.map_err(|e| {
        eprintln!("meshtrust: {}", crate::commands::describe(&e));
        1
    })
}

/// The `error` of an admin API answer, or the whole body.
fn why(body: &serde_json::Value) -> String {
    body["error"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned)
}

/// `meshtrust agent` without a subcommand: the node agent process.
///
/// # Errors
/// Always, until the agent process is built (branch agent12).
pub fn agent_process_not_built(run: &AgentRunArgs) -> Result<(), u8> {
    eprintln!(
        "meshtrust: agent: the node agent process is not built yet (config {:?})",
        run.config
    );
    Err(1)
}

/// `meshtrust agent list|evict`: exit 0, 1 (refused or unreachable, the reason printed) or 64.
///
/// # Errors
/// The exit code.
pub fn agents(command: AgentCommand) -> Result<(), u8> {
    match command {
        AgentCommand::List { json, target } => {
            let socket = admin_socket(&target)?;
            block_on(async move {
                let (code, body) =
                    crate::admin_client::request_with(&socket, "GET", "/v1/agents", None).await?;
                if code != 200 {
                    bail!("agent list refused: {}", why(&body));
                }
                if json {
                    println!("{body}");
                } else {
                    print!("{}", table(&body));
                }
                Ok(())
            })
        }
        AgentCommand::Evict { node, target } => {
            let socket = admin_socket(&target)?;
            block_on(async move {
                let node = node
                    .rsplit_once("/meshtrust/agent/")
                    .map_or(node.as_str(), |(_, n)| n)
                    .to_owned();
                let path = format!("/v1/agents/{node}/evict");
                let (code, body) =
                    crate::admin_client::request_with(&socket, "POST", &path, None).await?;
                if code != 200 {
                    bail!("evict refused: {}", why(&body));
                }
                println!(
                    "evicted {node}: its streams are closed and its svid refused until it attests again"
                );
                Ok(())
            })
        }
    }
}

/// The text form of `GET /v1/agents`.
fn table(body: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<16} {:<10} {:<22} {:<9} {:<20} {:<20} EVICTED",
        "SPIFFE ID", "NODE", "METHOD", "ADDRESS", "CONNECTED", "LAST SYNC", "SVID EXPIRES"
    );
    for a in body.as_array().into_iter().flatten() {
        let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
        let _ = writeln!(
            out,
            "{:<44} {:<16} {:<10} {:<22} {:<9} {:<20} {:<20} {}",
            s("spiffe_id"),
            s("node"),
            s("method"),
            s("address"),
            a["connected"].as_bool().unwrap_or(false),
            s("last_sync"),
            s("svid_expires_at"),
            a["evicted"].as_bool().unwrap_or(false),
        );
    }
    out
}

/// `meshtrust token ...`: exit 0, 1 (refused or unreachable, the reason printed) or 64.
///
/// # Errors
/// The exit code.
pub fn token(command: TokenCommand) -> Result<(), u8> {
    let TokenCommand::Create {
        node,
        ttl,
        json,
        target,
    } = command;
    let socket = admin_socket(&target)?;
    let run = async {
        let (code, body) = crate::admin_client::request_with(
            &socket,
            "POST",
            "/v1/tokens",
            Some(&serde_json::json!({ "node": node, "ttl": ttl })),
        )
        .await?;
        if code != 200 {
            bail!("token refused: {}", why(&body));
        }
        if json {
            println!("{body}");
        } else {
            println!("{}", body["token"].as_str().unwrap_or_default());
            eprintln!(
                "meshtrust: one-time join token for node {} (expires {})",
                body["node"].as_str().unwrap_or_default(),
                body["expires_at"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    };
    block_on(run)
}
