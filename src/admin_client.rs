//! The CLI side of the admin API: `meshtrust status`, `meshtrust federation refresh` and
//! `meshtrust federation reset`, as HTTP/1.1 requests over the admin Unix socket.

use std::path::Path;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::cli::FederationCommand;

/// Sends one request and returns the status code and the JSON body.
///
/// # Errors
/// When the socket cannot be reached or the answer is not JSON.
pub async fn request(socket: &Path, method: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the admin socket {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&body)
        .with_context(|| format!("admin API answered {status} with a non-JSON body"))?;
    Ok((status, json))
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// `meshtrust status`: a readable summary, or the raw JSON with `--json`.
///
/// # Errors
/// When the daemon cannot be reached.
pub fn status(admin_socket: &Path, json: bool) -> anyhow::Result<()> {
    let (code, body) = block_on(request(admin_socket, "GET", "/v1/status"))?;
    if code != 200 {
        bail!("admin API answered {code}: {body}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", render_status(&body));
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human form of `GET /v1/status`.
pub fn render_status(body: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "trust domain  {}", s(&body["trust_domain"]));
    let st = &body["store"];
    if st.is_object() {
        match st["error"].as_str() {
            Some(e) => {
                let _ = writeln!(out, "store         {} {e}", s(&st["kind"]));
            }
            None => {
                let _ = writeln!(out, "store         {} available", s(&st["kind"]));
            }
        }
    }
    for role in ["active", "prepared"] {
        let a = &body["ca"][role];
        if a.is_object() {
            let _ = writeln!(
                out,
                "ca {role:<9} generation {} not_after {} sha256 {}",
                s(&a["generation"]),
                s(&a["not_after"]),
                s(&a["sha256"])
            );
        }
    }
    let b = &body["bundle"];
    let n = b["authorities"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        out,
        "bundle        sequence {} authorities {n} refresh_hint {}s",
        s(&b["sequence"]),
        s(&b["refresh_hint"])
    );
    for p in body["federation"].as_array().into_iter().flatten() {
        let n = p["authorities"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "peer {} [{}] {} sequence {} authorities {n} last_success {} next_refresh {}{}",
            s(&p["trust_domain"]),
            s(&p["state"]),
            s(&p["url"]),
            s(&p["sequence"]),
            s(&p["last_success"]),
            s(&p["next_refresh"]),
            if p["last_error"].is_string() {
                format!("\n     last_error: {}", s(&p["last_error"]))
            } else {
                String::new()
            }
        );
    }
    out
}

/// `meshtrust federation refresh TD` (fetch now) and `meshtrust federation reset TD` (forget the
/// pinned bundle, then fetch now): print the outcome.
///
/// # Errors
/// When the daemon cannot be reached, the peer is unknown, the reset was refused or the fetch
/// failed.
pub fn federation(command: FederationCommand) -> anyhow::Result<()> {
    let (trust_domain, admin_socket, action) = match command {
        FederationCommand::Refresh {
            trust_domain,
            admin_socket,
        } => (trust_domain, admin_socket, "refresh"),
        FederationCommand::Reset {
            trust_domain,
            admin_socket,
        } => (trust_domain, admin_socket, "reset"),
        other => bail!("not an admin API command: {other:?}"),
    };
    let td = crate::spiffe_id::TrustDomain::new(&trust_domain)
        .with_context(|| format!("invalid trust domain {trust_domain:?}"))?;
    let path = format!("/v1/federation/{td}/{action}");
    let (code, body) = block_on(request(&admin_socket, "POST", &path))?;
    let reset = action == "reset";
    match code {
        200 => {
            println!(
                "{td}: {}ok, {} (sequence {}, {} authorities)",
                if reset {
                    "reset, pinned bundle forgotten; fetch "
                } else {
                    ""
                },
                if body["changed"] == Value::Bool(true) {
                    "bundle updated"
                } else {
                    "bundle unchanged"
                },
                s(&body["sequence"]),
                s(&body["authorities"])
            );
            Ok(())
        }
        502 => {
            let error = if body["error"].is_string() {
                s(&body["error"])
            } else {
                body.to_string()
            };
            if reset {
                bail!(
                    "{td}: reset, pinned bundle forgotten; but the fetch failed: {error} (nothing \
                     is pinned until a fetch succeeds; the daemon keeps retrying)"
                )
            }
            bail!("{td}: fetch failed: {error} (the pinned bundle stays in force)")
        }
        _ => bail!(
            "{}",
            if body["error"].is_string() {
                s(&body["error"])
            } else {
                format!("admin API answered {code}: {body}")
            }
        ),
    }
}

/// `meshtrust federation invite`: asks the daemon for a peering token and prints it (one line),
/// or its fields with `--json`.
///
/// # Errors
/// When the daemon cannot be reached or refuses (no https_spiffe endpoint, bad ttl or url).
pub fn invite(admin_socket: &Path, ttl: &str, url: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("ttl", ttl);
    if let Some(url) = url {
        query.append_pair("url", url);
    }
    let path = format!("/v1/federation/invite?{}", query.finish());
    let (code, body) = block_on(request(admin_socket, "POST", &path))?;
    if code != 200 {
        bail!(
            "invite refused: {}",
            if body["error"].is_string() {
                s(&body["error"])
            } else {
                format!("admin API answered {code}: {body}")
            }
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        println!("{}", s(&body["token"]));
        eprintln!(
            "meshtrust: invite for {} ({} as {}, CA certificates sha256 {}), valid until {}; \
             the peer runs: meshtrust federation join TOKEN --bootstrap-out FILE",
            s(&body["trust_domain"]),
            s(&body["bundle_endpoint_url"]),
            s(&body["endpoint_spiffe_id"]),
            s(&body["x509_authorities_sha256"]),
            s(&body["expires_at"]),
        );
    }
    Ok(())
}
