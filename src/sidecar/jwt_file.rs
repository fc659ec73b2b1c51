//! Files mode's JWT-SVID (`--jwt-audience A`): `DIR/jwt_svid.token` (0600, replaced
//! atomically) holds a token for the audience, fetched with FetchJWTSVID and fetched again at
//! half its lifetime, as spiffe-helper does. A failed fetch is reported and retried with the
//! client's backoff; the last token stays in place meanwhile.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Reporter;
use super::client::{self, Backoff};
use crate::fetch::deepest;
use crate::fetch::files::{SECRET, write_atomic};
use crate::fetch::show::jwt_expiry;
use crate::spiffe_id::SpiffeId;
use crate::workload_api::proto::JwtsvidRequest;

/// The token file's name in `--out DIR`.
pub const TOKEN_FILE: &str = "jwt_svid.token";

/// The shortest wait before the next fetch: a token with a tiny lifetime cannot make us spin.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// What the JWT refresher needs.
#[derive(Debug, Clone)]
pub struct JwtFileOptions {
    /// The Workload API socket.
    pub socket: PathBuf,
    /// `--out DIR`.
    pub dir: PathBuf,
    /// `--jwt-audience` (at least one).
    pub audience: Vec<String>,
    /// `--spiffe-id`: the token of that identity (the default one when `None`).
    pub spiffe_id: Option<SpiffeId>,
}

/// Keeps `DIR/jwt_svid.token` fresh until `cancel` fires.
pub async fn run(opts: JwtFileOptions, report: Reporter, cancel: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let wait = match fetch_and_write(&opts).await {
            Ok((id, exp)) => {
                backoff.reset();
                let now = SystemTime::now();
                let left = exp.duration_since(now).unwrap_or_default();
                let refresh = (left / 2).max(MIN_REFRESH);
                report.line(format!(
                    "files: wrote a jwt-svid of {id} for audience {} to {} (expires {}; next fetch in {}s)",
                    opts.audience.join(","),
                    opts.dir.join(TOKEN_FILE).display(),
                    crate::clock::rfc3339(exp),
                    refresh.as_secs()
                ));
                refresh
            }
            Err(reason) => {
                let delay = backoff.next_delay();
                report.line(format!(
                    "files: cannot fetch a jwt-svid: {reason}; retrying in {}s",
                    delay.as_secs()
                ));
                delay
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One FetchJWTSVID and the file written; the token's SPIFFE ID and expiry.
async fn fetch_and_write(opts: &JwtFileOptions) -> Result<(String, SystemTime), String> {
    let mut c = client::connect(&opts.socket).await.map_err(|e| {
        format!(
            "cannot connect to {}: {}",
            opts.socket.display(),
            deepest(&e)
        )
    })?;
    let request = JwtsvidRequest {
        audience: opts.audience.clone(),
        spiffe_id: opts
            .spiffe_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    };
    let response = tokio::time::timeout(Duration::from_secs(30), c.fetch_jwtsvid(request))
        .await
        .map_err(|_| "no answer within 30s".to_owned())?
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    // The first token is the default identity's (or the only one asked for).
    let svid = response
        .svids
        .into_iter()
        .next()
        .ok_or_else(|| "the answer holds no jwt-svid".to_owned())?;
    let exp = jwt_expiry(&svid.svid).ok_or_else(|| "the token has no expiry".to_owned())?;
    write_atomic(&opts.dir, TOKEN_FILE, svid.svid.as_bytes(), SECRET).map_err(|e| e.to_string())?;
    Ok((svid.spiffe_id, exp))
}
