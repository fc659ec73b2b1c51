//! The admin API: HTTP/1.1 JSON on a Unix socket (mode 0600), for `meshtrust status`,
//! `meshtrust federation refresh` and `meshtrust federation reset` (CONTRACT.md "Admin API"). It
//! only reads the state, except that a refresh asks the peer's fetcher to fetch now, and a reset
//! asks it to forget the pinned bundle first (SPIFFE.md "Decisions": the operator can reset a
//! relationship stuck on a revoked bundle or on a sequence rollback).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::bundle::summary::{self, AuthoritySummary};
use crate::ca::{Authority, Ca};
use crate::clock::rfc3339;
use crate::config::{EntryConfig, FederatesWith};
use crate::federation::invite::{self, PublishedEndpoint};
use crate::federation::pinned::PeerStore;
use crate::federation::status::StatusBoard;
use crate::federation::{FetchReport, RefreshHandles, ResetError};
use crate::reload::{LastReload, ReloadRecord};
use crate::spiffe_id::TrustDomain;

/// What the admin API reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The CA.
    pub ca: Arc<Ca>,
    /// Pinned peer bundles.
    pub peers: Arc<PeerStore>,
    /// Fetch status.
    pub status: Arc<StatusBoard>,
    /// The fetchers' refresh queues.
    pub refresh: RefreshHandles,
    /// Our bundle endpoint, for `federation invite` (`None` without one).
    pub endpoint: Option<PublishedEndpoint>,
    /// Join tokens and (later) attested agents.
    pub nodes: Arc<crate::node::admin::Nodes>,
    /// The registration entries in force.
    pub entries: tokio::sync::watch::Receiver<Arc<Vec<EntryConfig>>>,
    /// The outcome of the last config reload.
    pub last_reload: LastReload,
}

/// Binds the admin socket: a stale file from a crash is replaced; the socket is 0600.
///
/// # Errors
/// When the socket cannot be bound or secured.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    bind_unix(path, 0o600)
}

/// The longest path `bind(2)` takes (`sun_path` is 108 bytes with the NUL).
const MAX_SUN_PATH: usize = 107;

/// Binds a Unix socket at `path` with `mode`, creating the parent folder and replacing a stale
/// socket file (never a regular file, never a socket a live process still listens on).
///
/// The socket is bound in a private (0700) staging folder beside `path`, given `mode`, then
/// renamed into place: it never exists at `path` with the umask's looser mode, not even for an
/// instant. When the staging path is too long for `sun_path` although `path` fits, the staging
/// folder is reached through its descriptor (`/proc/self/fd/N/s`, always short); if even that
/// fails the bind is refused rather than done in place.
///
/// # Errors
/// When the path holds something else than a socket, a live socket, or binding fails.
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} is a socket another process listens on; not replaced",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".meshtrust-")
        .tempdir_in(parent)?;
    let staged = staging.path().join("s");
    // Held open until the rename: the short `/proc/self/fd/N` name refers to it.
    let staging_dir = std::fs::File::open(staging.path())?;
    let listener = if staged.as_os_str().len() <= MAX_SUN_PATH {
        UnixListener::bind(&staged)?
    } else {
        use std::os::fd::AsRawFd as _;
        let short = format!("/proc/self/fd/{}/s", staging_dir.as_raw_fd());
        UnixListener::bind(&short).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{}: the staging path is too long to bind, and binding through {short} failed \
                     ({e}); shorten the socket path",
                    path.display()
                ),
            )
        })?
    };
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&staged, path)?;
    drop(staging_dir);
    Ok(listener)
}

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/federation/invite", post(invite))
        .route("/v1/federation/{trust_domain}/refresh", post(refresh))
        .route("/v1/federation/{trust_domain}/reset", post(reset))
        .route("/v1/tokens", post(crate::node::admin::create_token))
        .route("/v1/agents", get(crate::node::admin::list_agents))
        .route(
            "/v1/agents/{node}/evict",
            post(crate::node::admin::evict_agent),
        )
        .with_state(state)
}

/// Serves until `cancel`.
pub async fn serve(listener: UnixListener, state: AdminState, cancel: CancellationToken) {
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API stopped");
    }
}

#[derive(Debug, Serialize)]
struct AuthorityView {
    generation: u64,
    issued_at: String,
    not_after: String,
    sha256: String,
}

fn authority_view(a: &Authority) -> AuthorityView {
    AuthorityView {
        generation: a.generation,
        issued_at: rfc3339(a.issued_at),
        not_after: rfc3339(a.not_after),
        sha256: summary::sha256_hex(&a.cert),
    }
}

#[derive(Debug, Serialize)]
struct CaView {
    active: Option<AuthorityView>,
    prepared: Option<AuthorityView>,
}

#[derive(Debug, Serialize)]
struct BundleView {
    sequence: Option<u64>,
    refresh_hint: Option<u64>,
    authorities: Vec<AuthoritySummary>,
    jwt_authorities: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PeerView {
    trust_domain: String,
    url: String,
    profile: &'static str,
    state: &'static str,
    sequence: Option<u64>,
    authorities: Option<Vec<AuthoritySummary>>,
    last_success: Option<String>,
    last_attempt: Option<String>,
    last_error: Option<String>,
    next_refresh: Option<String>,
    earliest_expiry: Option<String>,
    /// Replicas of a shared store: the replica fetching this peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_holder: Option<String>,
}

/// One registration entry in force.
#[derive(Debug, Serialize)]
struct EntryView {
    spiffe_id: String,
    selectors: Vec<String>,
    /// Peer trust domains, or `["*"]`.
    federates_with: Vec<String>,
    /// The node agent serving it; always `null` until agents exist (the server's own socket).
    node: Option<String>,
    hint: Option<String>,
}

fn entry_view(e: &EntryConfig) -> EntryView {
    EntryView {
        spiffe_id: e.spiffe_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        federates_with: match &e.federates_with {
            FederatesWith::All => vec!["*".to_owned()],
            FederatesWith::Only(list) => list.iter().map(ToString::to_string).collect(),
        },
        node: None,
        hint: e.hint.clone(),
    }
}

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    trust_domain: String,
    ca: CaView,
    bundle: BundleView,
    federation: Vec<PeerView>,
    store: StoreView,
    entries: Vec<EntryView>,
    last_reload: Option<ReloadRecord>,
    /// Replicas of a shared store: the one answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<ReplicaIdView>,
    /// Replicas of a shared store: every registered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<Vec<ReplicaView>>,
}

#[derive(Debug, Serialize)]
struct ReplicaIdView {
    id: String,
}

/// A replica: its heartbeat and its CAs (SHA-256 of each certificate).
#[derive(Debug, Serialize)]
struct ReplicaView {
    id: String,
    address: String,
    last_seen: String,
    authorities: Vec<String>,
}

fn replicas_view(mesh: &crate::store::SharedBundle) -> Vec<ReplicaView> {
    mesh.replicas
        .iter()
        .map(|r| ReplicaView {
            id: r.id.clone(),
            address: r.address.clone(),
            last_seen: rfc3339(r.last_seen),
            authorities: mesh
                .authorities
                .iter()
                .filter(|a| a.replica == r.id)
                .map(|a| {
                    summary::sha256_hex(&rustls_pki_types::CertificateDer::from(
                        a.ca_cert.as_slice(),
                    ))
                })
                .collect(),
        })
        .collect()
}

/// `"store"`: the backend and whether it can be reached (`"error"`: "store unavailable: ...").
#[derive(Debug, Serialize)]
struct StoreView {
    kind: &'static str,
    available: bool,
    error: Option<String>,
}

/// Builds the status document from the state.
pub fn status_view(state: &AdminState) -> StatusView {
    let snap = state.ca.snapshot();
    let pinned = state.peers.current();
    let federation = state
        .status
        .all()
        .into_iter()
        .map(|s| {
            let bundle = pinned.get(&s.trust_domain);
            PeerView {
                trust_domain: s.trust_domain.to_string(),
                url: s.url,
                profile: s.profile,
                state: s.state.as_str(),
                sequence: bundle.as_ref().and_then(|b| b.sequence),
                authorities: bundle
                    .as_ref()
                    .map(|b| summary::summarize(&b.x509_authorities)),
                last_success: s.last_success.map(rfc3339),
                last_attempt: s.last_attempt.map(rfc3339),
                last_error: s.last_error,
                next_refresh: s.next_refresh.map(rfc3339),
                earliest_expiry: bundle
                    .as_ref()
                    .and_then(|b| summary::earliest_expiry(&b.x509_authorities))
                    .map(rfc3339),
                lease_holder: state.peers.leases().holder(&s.trust_domain),
            }
        })
        .collect();
    StatusView {
        trust_domain: snap.trust_domain.to_string(),
        ca: CaView {
            active: snap.active().map(|a| authority_view(a)),
            prepared: snap.prepared().map(|a| authority_view(a)),
        },
        bundle: BundleView {
            sequence: snap.bundle.sequence,
            refresh_hint: snap.bundle.refresh_hint.map(|d| d.as_secs()),
            authorities: summary::summarize(&snap.bundle.x509_authorities),
            jwt_authorities: snap
                .bundle
                .jwt_authorities
                .iter()
                .map(|j| j.kid.clone())
                .collect(),
        },
        federation,
        store: {
            let (kind, health) = state.peers.store_health();
            match health {
                crate::store::StoreHealth::Available => StoreView {
                    kind,
                    available: true,
                    error: None,
                },
                crate::store::StoreHealth::Unavailable(why) => StoreView {
                    kind,
                    available: false,
                    error: Some(format!("store unavailable: {why}")),
                },
            }
        },
        entries: state.entries.borrow().iter().map(entry_view).collect(),
        last_reload: state.last_reload.get(),
        replica: state
            .peers
            .leases()
            .me()
            .map(|id| ReplicaIdView { id: id.to_owned() }),
        replicas: state.peers.leases().me().map(|_| {
            state
                .peers
                .leases()
                .mesh()
                .map(|m| replicas_view(&m))
                .unwrap_or_default()
        }),
    }
}

async fn status(State(state): State<AdminState>) -> Json<StatusView> {
    Json(status_view(&state))
}

fn error(code: StatusCode, msg: String) -> Response {
    (code, Json(serde_json::json!({ "error": msg }))).into_response()
}

fn bad_name(name: &str, e: &dyn std::fmt::Display) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("invalid trust domain {name:?}: {e}"),
    )
}

fn not_a_peer(td: &TrustDomain) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("{td} is not a federation peer"),
    )
}

/// 200 with the report when the fetch succeeded, 502 when it failed.
fn fetch_outcome(report: FetchReport) -> Response {
    let code = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (code, Json(report)).into_response()
}

async fn refresh(State(state): State<AdminState>, UrlPath(td): UrlPath<String>) -> Response {
    let td = match TrustDomain::new(&td) {
        Ok(td) => td,
        Err(e) => return bad_name(&td, &e),
    };
    match state.refresh.refresh(&td).await {
        Some(report) => fetch_outcome(report),
        None => not_a_peer(&td),
    }
}

/// The query of a reset: `?force=true` forgets the pinned bundle before fetching.
#[derive(Debug, serde::Deserialize)]
struct ResetQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /v1/federation/{trust_domain}/reset[?force=true]`: the fetch outcome (200/502; without
/// `force`, a 502 changed nothing), 409 when the reset was refused (its bootstrap bundle is
/// unreadable: nothing changed), 500 when the state could not be written.
async fn reset(
    State(state): State<AdminState>,
    UrlPath(td): UrlPath<String>,
    query: Result<axum::extract::Query<ResetQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let td = match TrustDomain::new(&td) {
        Ok(td) => td,
        Err(e) => return bad_name(&td, &e),
    };
    let force = match query {
        Ok(q) => q.0.force,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    match state.refresh.reset(&td, force).await {
        Some(Ok(report)) => fetch_outcome(report),
        Some(Err(e @ ResetError::Refused(_))) => error(StatusCode::CONFLICT, e.to_string()),
        Some(Err(e @ ResetError::Store(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        None => not_a_peer(&td),
    }
}

/// The query of `POST /v1/federation/invite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteQuery {
    /// How long the token is valid (a duration, e.g. `24h`).
    ttl: Option<String>,
    /// The bundle endpoint URL peers use, instead of the one made from the listen address.
    url: Option<String>,
}

/// `POST /v1/federation/invite[?ttl=DUR][&url=URL]`: a peering token for our bundle as it is
/// now: 200 `{"token","trust_domain","bundle_endpoint_url","endpoint_spiffe_id",
/// "x509_authorities_sha256","expires_at"}`; 400 for a bad ttl or url, 409 when there is no
/// `https_spiffe` bundle endpoint to invite to (or no URL for it).
async fn invite(State(state): State<AdminState>, Query(q): Query<InviteQuery>) -> Response {
    let ttl = match q.ttl.as_deref().map(crate::config::parse_duration) {
        None => invite::DEFAULT_TTL,
        Some(Ok(ttl)) => ttl,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    let snap = state.ca.snapshot();
    let made = invite::make(
        &snap.trust_domain,
        state.endpoint.as_ref(),
        &snap.bundle.x509_authorities,
        q.url.as_deref(),
        ttl,
        std::time::SystemTime::now(),
    );
    match made {
        Ok(i) => {
            tracing::info!(expires_at = %rfc3339(i.expires_at), url = %i.url, x509_authorities_sha256 = %i.x509_authorities_sha256, "federation invite made");
            Json(serde_json::json!({
                "token": i.encode(),
                "trust_domain": i.trust_domain.to_string(),
                "bundle_endpoint_url": i.url.to_string(),
                "endpoint_spiffe_id": i.endpoint_spiffe_id.to_string(),
                "x509_authorities_sha256": i.x509_authorities_sha256,
                "expires_at": rfc3339(i.expires_at),
            }))
            .into_response()
        }
        Err(e @ invite::InviteError::NoEndpoint(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
