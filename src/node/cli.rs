//! `meshtrust token create` over the admin socket.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

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

async fn post_json(socket: &PathBuf, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the admin socket {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&body)
        .with_context(|| format!("admin API answered {status} with a non-JSON body"))?;
    Ok((status, json))
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
        let (code, body) = post_json(
            &socket,
            "/v1/tokens",
            &serde_json::json!({ "node": node, "ttl": ttl }),
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
