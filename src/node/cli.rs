//! `meshtrust token create` over the admin socket.

use std::path::PathBuf;

use anyhow::bail;

use crate::cli::{AdminTarget, TokenCommand};
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
            let why = body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned);
            bail!("token refused: {why}");
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
