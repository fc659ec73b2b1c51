//! The CLI side of the admin API: `meshtrust status`, `meshtrust federation refresh` and
//! `meshtrust federation reset`, as HTTP/1.1 requests over the admin Unix socket, found from
//! `--admin-socket`, `--config` or the default path ([`AdminTarget`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::cli::{AdminTarget, DEFAULT_ADMIN_SOCKET, FederationCommand};
use crate::commands::UsageError;

/// Sends one request and returns the status code and the JSON body.
///
/// # Errors
/// When the socket cannot be reached or the answer is not JSON.
pub async fn request(socket: &Path, method: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    request_with(socket, method, path, None).await
}

/// [`request`] with an optional JSON request body.
///
/// # Errors
/// When the socket cannot be reached or the answer is not JSON.
pub async fn request_with(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the admin socket {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    let payload = match body {
        Some(body) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(body)?)
        }
        None => Bytes::new(),
    };
    let resp = sender.send_request(req.body(Full::new(payload))?).await?;
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

/// The admin socket an admin command talks to: `--admin-socket`, else the `[admin_api] socket`
/// of `--config`, else [`DEFAULT_ADMIN_SOCKET`].
///
/// # Errors
/// A [`UsageError`] (exit 64) when the config file cannot be read or names no admin socket.
pub fn admin_socket(target: &AdminTarget) -> anyhow::Result<PathBuf> {
    if let Some(socket) = &target.admin_socket {
        return Ok(socket.clone());
    }
    match &target.config {
        Some(config) => crate::config::admin_socket_of(config)
            .map_err(|e| UsageError(format!("bad config: {e}")).into()),
        None => Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
    }
}

/// Connects with a message that says which socket and how it was found.
async fn request_on(
    target: &AdminTarget,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, Value)> {
    let socket = admin_socket(target)?;
    request(&socket, method, path).await.map_err(|e| {
        if target.admin_socket.is_none() && target.config.is_none() {
            e.context(format!(
                "no --admin-socket or --config given, so the default {DEFAULT_ADMIN_SOCKET} was tried"
            ))
        } else {
            e
        }
    })
}

/// `meshtrust status`: a readable summary, or the raw JSON with `--json`.
///
/// # Errors
/// When the daemon cannot be reached.
pub fn status(target: &AdminTarget, json: bool) -> anyhow::Result<()> {
    let (code, body) = block_on(request_on(target, "GET", "/v1/status"))?;
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

/// `1 authority`, `2 authorities`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Rows as columns aligned on their widest cell, two spaces apart, each line indented by two.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// With a shared store: the replica answering and every replica (id, address, last
/// heartbeat, its CAs by SHA-256 prefix).
fn render_replicas(body: &Value, out: &mut String) {
    use std::fmt::Write as _;
    let Some(me) = body["replica"]["id"].as_str() else {
        return;
    };
    let _ = writeln!(out, "{:<14}{me}", "replica");
    let replicas = body["replicas"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\n{}", count(replicas.len(), "replica", "replicas"));
    if replicas.is_empty() {
        return;
    }
    let mut rows = vec![vec![
        "ID".to_owned(),
        "ADDRESS".to_owned(),
        "LAST SEEN".to_owned(),
        "CAS".to_owned(),
    ]];
    rows.extend(replicas.iter().map(|r| {
        let cas: Vec<String> = r["authorities"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| s(a).chars().take(12).collect())
            .collect();
        vec![
            s(&r["id"]),
            if r["address"].as_str().is_some_and(str::is_empty) {
                "-".to_owned()
            } else {
                s(&r["address"])
            },
            s(&r["last_seen"]),
            if cas.is_empty() {
                "-".to_owned()
            } else {
                cas.join(",")
            },
        ]
    }));
    out.push_str(&table(&rows));
}

/// The human form of `GET /v1/status`: the daemon, its last reload, the entries in force and
/// one line per federation relationship, in aligned columns.
pub fn render_status(body: &Value) -> String {
    use std::fmt::Write as _;
    if body["agent"].is_object() {
        return render_agent_status(body);
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<14}{}", "trust domain", s(&body["trust_domain"]));
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
                "{:<14}generation {}  not_after {}  sha256 {}",
                format!("ca {role}"),
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
        "{:<14}sequence {}  {}  refresh_hint {}s",
        "bundle",
        s(&b["sequence"]),
        count(n, "authority", "authorities"),
        s(&b["refresh_hint"])
    );
    let r = &body["last_reload"];
    let reload = if r.is_object() {
        let mut text = format!("{} at {}", s(&r["outcome"]), s(&r["at"]));
        if r["error"].is_string() {
            let _ = write!(text, ": {}", s(&r["error"]));
        }
        text
    } else {
        "none since the start".to_owned()
    };
    let _ = writeln!(out, "{:<14}{reload}", "last reload");
    render_replicas(body, &mut out);

    let entries = body["entries"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\n{}", count(entries.len(), "entry", "entries"));
    if !entries.is_empty() {
        let mut rows = vec![vec![
            "SPIFFE ID".to_owned(),
            "SELECTORS".to_owned(),
            "FEDERATES WITH".to_owned(),
            "HINT".to_owned(),
        ]];
        rows.extend(entries.iter().map(|e| {
            vec![
                s(&e["spiffe_id"]),
                list(&e["selectors"]),
                list(&e["federates_with"]),
                s(&e["hint"]),
            ]
        }));
        out.push_str(&table(&rows));
    }

    let peers = body["federation"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "\n{}",
        count(peers.len(), "federation peer", "federation peers")
    );
    if !peers.is_empty() {
        let mut rows = vec![vec![
            "TRUST DOMAIN".to_owned(),
            "STATE".to_owned(),
            "SEQUENCE".to_owned(),
            "AUTHORITIES".to_owned(),
            "LAST SUCCESS".to_owned(),
            "NEXT REFRESH".to_owned(),
            "URL".to_owned(),
        ]];
        let leased = peers.iter().any(|p| p.get("lease_holder").is_some());
        if leased {
            rows[0].push("LEASE HOLDER".to_owned());
        }
        rows.extend(peers.iter().map(|p| {
            vec![
                s(&p["trust_domain"]),
                s(&p["state"]),
                s(&p["sequence"]),
                p["authorities"]
                    .as_array()
                    .map_or_else(|| "-".to_owned(), |a| a.len().to_string()),
                s(&p["last_success"]),
                s(&p["next_refresh"]),
                s(&p["url"]),
            ]
            .into_iter()
            .chain(leased.then(|| s(&p["lease_holder"])))
            .collect()
        }));
        out.push_str(&table(&rows));
        for p in &peers {
            if p["last_error"].is_string() {
                let _ = writeln!(
                    out,
                    "  {} last error: {}",
                    s(&p["trust_domain"]),
                    s(&p["last_error"])
                );
            }
        }
    }
    out
}

/// The human form of a node agent's `GET /v1/status`: its identity, its server and the
/// identities it holds.
pub fn render_agent_status(body: &Value) -> String {
    use std::fmt::Write as _;
    let a = &body["agent"];
    let mut out = String::new();
    let _ = writeln!(out, "{:<14}{}", "trust domain", s(&body["trust_domain"]));
    let _ = writeln!(
        out,
        "{:<14}{}  ({})",
        "agent",
        s(&a["spiffe_id"]),
        s(&a["node"])
    );
    let _ = writeln!(out, "{:<14}{}", "agent svid", s(&a["svid_expires_at"]));
    let server = if a["server"].is_string() {
        s(&a["server"])
    } else {
        "none connected (serving from cache)".to_owned()
    };
    let _ = writeln!(out, "{:<14}{server}", "server");
    let _ = writeln!(
        out,
        "{:<14}{}  revision {}  from {}",
        "last sync",
        s(&a["last_sync"]),
        s(&a["revision"]),
        s(&a["server_id"])
    );
    let _ = writeln!(
        out,
        "{:<14}{}s",
        "first expiry",
        s(&a["first_expiry_seconds"])
    );
    let ids = a["identities"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\n{}", count(ids.len(), "identity", "identities"));
    if !ids.is_empty() {
        let mut rows = vec![vec![
            "SPIFFE ID".to_owned(),
            "EXPIRES".to_owned(),
            "RENEWS".to_owned(),
        ]];
        rows.extend(
            ids.iter()
                .map(|i| vec![s(&i["spiffe_id"]), s(&i["expires_at"]), s(&i["renew_at"])]),
        );
        out.push_str(&table(&rows));
    }
    out
}

/// `meshtrust federation refresh TD` (fetch now) and `meshtrust federation reset TD [--force]`:
/// print the outcome.
///
/// # Errors
/// A [`UsageError`] for an invalid trust domain; otherwise when the daemon cannot be reached,
/// the peer is unknown, the reset was refused or the fetch failed.
pub fn federation(command: FederationCommand) -> anyhow::Result<()> {
    let (trust_domain, admin, action, force) = match command {
        FederationCommand::Refresh {
            trust_domain,
            admin,
        } => (trust_domain, admin, "refresh", false),
        FederationCommand::Reset {
            trust_domain,
            admin,
            force,
        } => (trust_domain, admin, "reset", force),
        other => bail!("not an admin API command: {other:?}"),
    };
    let td = crate::spiffe_id::TrustDomain::new(&trust_domain)
        .map_err(|e| UsageError(format!("invalid trust domain {trust_domain:?}: {e}")))?;
    let path = format!(
        "/v1/federation/{td}/{action}{}",
        if force { "?force=true" } else { "" }
    );
    let (code, body) = block_on(request_on(&admin, "POST", &path))?;
    let reset = action == "reset";
    let bundle = |body: &Value| {
        format!(
            "sequence {}, {}",
            s(&body["sequence"]),
            count(
                usize::try_from(body["authorities"].as_u64().unwrap_or(0)).unwrap_or(0),
                "authority",
                "authorities"
            )
        )
    };
    match code {
        200 => {
            let changed = if body["changed"] == Value::Bool(true) {
                "bundle updated"
            } else {
                "bundle unchanged"
            };
            let what = match (reset, force) {
                (false, _) => "ok, ".to_owned(),
                (true, true) => "reset, pinned bundle forgotten; fetch ok, ".to_owned(),
                (true, false) => {
                    "reset: fetched over the bootstrap bundle, which replaced the pinned bundle; "
                        .to_owned()
                }
            };
            println!("{td}: {what}{changed} ({})", bundle(&body));
            Ok(())
        }
        502 => {
            let error = if body["error"].is_string() {
                s(&body["error"])
            } else {
                body.to_string()
            };
            match (reset, force) {
                (true, true) => bail!(
                    "{td}: reset, pinned bundle forgotten; but the fetch failed: {error} (nothing \
                     is pinned until a fetch succeeds; the daemon keeps retrying)"
                ),
                (true, false) => bail!(
                    "{td}: reset not done, nothing changed: the fetch authenticated by the \
                     bootstrap bundle failed: {error} (the pinned bundle stays in force, {}; \
                     `--force` forgets it anyway)",
                    bundle(&body)
                ),
                _ => bail!("{td}: fetch failed: {error} (the pinned bundle stays in force)"),
            }
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
