//! The JSON view of the Workload API: plain HTTP/1.1 on the same socket, for tools that speak
//! no gRPC (`curl --unix-socket`). Same security header (as an HTTP header), same attestation,
//! same content and the same SVID cache as the gRPC service (CONTRACT.md "Workload API").
//!
//! - `GET /v1/x509-svid` → `{"svids":[{"spiffe_id","x509_svid_pem","x509_svid_key_pem",
//!   "bundle_pem","expires_at","hint"}],"federated_bundles":{"spiffe://<td>":"<PEM>"}}`
//! - `GET /v1/x509-bundles` → `{"bundles":{"spiffe://<own>":"<PEM>","spiffe://<peer>":"<PEM>"}}`
//! - `GET /v1/jwt-svid?audience=A[&audience=B][&spiffe_id=ID]` →
//!   `{"svids":[{"spiffe_id","token","expires_at","hint"}]}`, minted by the gRPC service's own
//!   FetchJWTSVID (same checks, same messages); 400 without an audience, with an unknown
//!   parameter, more than [`MAX_AUDIENCES`] audiences or a query over [`MAX_QUERY_LEN`] bytes.
//! - `GET /v1/jwt-bundles` → `{"bundles":{"spiffe://<td>":{"keys":[...]}}}`: the JWKS of each
//!   trust domain, as FetchJWTBundles sends it.
//! - `GET /` → `{"routes":[{"path","description"}]}`; needs neither the header nor an identity
//!   (it says nothing about the caller).
//! - errors as `{"error":"..."}`: 400 missing header or bad request, 403 no identity, 503
//!   attestation or issuance failure, 404 unknown path, 405 other methods.
//!
//! The X509-SVID and JWT-SVID bodies carry keys and tokens: their buffers are zeroized once
//! hyper is done with them.
//!
//! `hint` is `""` when the entry has none (as in the proto), `expires_at` is RFC 3339, and a
//! revoked (empty) peer bundle is served as `""`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use zeroize::Zeroizing;

use super::proto::JwtsvidRequest;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi as _;
use super::service::WorkloadApi;
use super::state::{Attestation, SECURITY_HEADER, Shared, Watchers, WorkloadApiError};
use super::views::{BundlesView, X509SvidView};
use crate::bundle::pem::certs_to_pem;
use crate::bundle::{TrustBundle, jwks};
use crate::clock::rfc3339;

/// `GET /v1/x509-svid`.
pub const X509_SVID_PATH: &str = "/v1/x509-svid";
/// `GET /v1/x509-bundles`.
pub const X509_BUNDLES_PATH: &str = "/v1/x509-bundles";
/// `GET /v1/jwt-svid?audience=A`.
pub const JWT_SVID_PATH: &str = "/v1/jwt-svid";
/// `GET /v1/jwt-bundles`.
pub const JWT_BUNDLES_PATH: &str = "/v1/jwt-bundles";
/// `GET /`: the routes.
pub const ROUTES_PATH: &str = "/";

/// The most audiences one `/v1/jwt-svid` request may ask for.
pub const MAX_AUDIENCES: usize = 32;
/// The longest query string `/v1/jwt-svid` reads.
pub const MAX_QUERY_LEN: usize = 8 * 1024;

/// Every route with what it serves, for `GET /`.
const ROUTES: [(&str, &str); 5] = [
    (
        X509_SVID_PATH,
        "this caller's X509-SVIDs, their keys and bundles (header workload.spiffe.io: true)",
    ),
    (
        X509_BUNDLES_PATH,
        "the X.509 bundles this caller may use, PEM per trust domain",
    ),
    (
        JWT_SVID_PATH,
        "JWT-SVIDs: ?audience=A (repeatable, required) [&spiffe_id=ID]",
    ),
    (
        JWT_BUNDLES_PATH,
        "the JWT bundles this caller may use, a JWKS per trust domain",
    ),
    (ROUTES_PATH, "this list"),
];

#[derive(Serialize)]
struct SvidJson<'a> {
    spiffe_id: &'a str,
    x509_svid_pem: String,
    /// Borrowed from a zeroized PEM string; only the response body holds another copy.
    x509_svid_key_pem: &'a str,
    bundle_pem: &'a str,
    expires_at: String,
    hint: &'a str,
}

#[derive(Serialize)]
struct X509SvidJson<'a> {
    svids: Vec<SvidJson<'a>>,
    federated_bundles: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct X509BundlesJson {
    bundles: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct JwtSvidJson<'a> {
    spiffe_id: &'a str,
    token: &'a str,
    expires_at: Option<String>,
    hint: &'a str,
}

#[derive(Serialize)]
struct JwtSvidsJson<'a> {
    svids: Vec<JwtSvidJson<'a>>,
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Responses carry private keys: nothing on the way may keep them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    json_response(status, Bytes::from(body.into_bytes()))
}

fn api_error(e: &WorkloadApiError) -> Response<Full<Bytes>> {
    use WorkloadApiError::*;
    let status = match e {
        MissingHeader | InvalidArgument(_) | Jwt(_) => StatusCode::BAD_REQUEST,
        NoIdentity => StatusCode::FORBIDDEN,
        Attestation(_) | Ca(_) | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, &e.to_string())
}

fn bundle_pem(bundle: &TrustBundle) -> String {
    certs_to_pem(&bundle.x509_authorities)
}

/// Answers one request of the JSON view. Never fails: every problem is a JSON error response.
pub(crate) async fn handle<B>(
    shared: Arc<Shared>,
    attestation: Attestation,
    request: http::Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if ![
        X509_SVID_PATH,
        X509_BUNDLES_PATH,
        JWT_SVID_PATH,
        JWT_BUNDLES_PATH,
        ROUTES_PATH,
    ]
    .contains(&path)
    {
        return Ok(error_response(StatusCode::NOT_FOUND, "not found"));
    }
    if request.method() != Method::GET {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(response);
    }
    if path == ROUTES_PATH {
        return Ok(json_response(StatusCode::OK, routes_json()));
    }
    let header =
        matches!(request.headers().get(SECURITY_HEADER), Some(v) if v.as_bytes() == b"true");
    if !header {
        return Ok(api_error(&WorkloadApiError::MissingHeader));
    }
    if path == JWT_SVID_PATH {
        let query = request.uri().query().unwrap_or("");
        return Ok(jwt_svid(shared, attestation, query).await);
    }
    Ok(match render(&shared, &attestation, path) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => api_error(&e),
    })
}

fn routes_json() -> Bytes {
    let routes: Vec<_> = ROUTES
        .iter()
        .map(|(path, description)| serde_json::json!({ "path": path, "description": description }))
        .collect();
    Bytes::from(
        serde_json::json!({ "routes": routes })
            .to_string()
            .into_bytes(),
    )
}

/// The FetchJWTSVID request of a `/v1/jwt-svid` query string (bounded before it is parsed).
fn jwt_request(query: &str) -> Result<JwtsvidRequest, WorkloadApiError> {
    let bad = |m: String| WorkloadApiError::InvalidArgument(m);
    if query.len() > MAX_QUERY_LEN {
        return Err(bad(format!(
            "query string too long (at most {MAX_QUERY_LEN} bytes)"
        )));
    }
    let mut request = JwtsvidRequest::default();
    let mut spiffe_id = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "audience" => {
                if request.audience.len() == MAX_AUDIENCES {
                    return Err(bad(format!("too many audiences (at most {MAX_AUDIENCES})")));
                }
                request.audience.push(value.into_owned());
            }
            "spiffe_id" if spiffe_id.is_none() => spiffe_id = Some(value.into_owned()),
            "spiffe_id" => return Err(bad("spiffe_id given more than once".to_owned())),
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(bad(format!(
                    "unknown query parameter {shown:?} (use audience and spiffe_id)"
                )));
            }
        }
    }
    request.spiffe_id = spiffe_id.unwrap_or_default();
    Ok(request)
}

/// `/v1/jwt-svid`: the gRPC service's FetchJWTSVID, called with this request's attestation.
async fn jwt_svid(
    shared: Arc<Shared>,
    attestation: Attestation,
    query: &str,
) -> Response<Full<Bytes>> {
    let message = match jwt_request(query) {
        Ok(m) => m,
        Err(e) => return api_error(&e),
    };
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request.extensions_mut().insert(attestation);
    let api = WorkloadApi::from_shared(shared);
    let response = match api.fetch_jwtsvid(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return status_response(&status),
    };
    let svids = response
        .svids
        .iter()
        .map(|s| JwtSvidJson {
            spiffe_id: &s.spiffe_id,
            token: &s.svid,
            expires_at: jwt_expiry(&s.svid).map(rfc3339),
            hint: &s.hint,
        })
        .collect();
    match zeroized_json(&JwtSvidsJson { svids }) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => api_error(&WorkloadApiError::Internal(format!(
            "cannot serialize: {e}"
        ))),
    }
}

/// A gRPC status of the service as the HTTP status [`api_error`] gives the error it was made
/// from, with the same words.
fn status_response(status: &tonic::Status) -> Response<Full<Bytes>> {
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(code, status.message())
}

/// The `exp` of a token we just minted.
fn jwt_expiry(token: &str) -> Option<std::time::SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(exp))
}

fn render(
    shared: &Shared,
    attestation: &Attestation,
    path: &str,
) -> Result<Bytes, WorkloadApiError> {
    let caller = attestation.caller()?;
    let inputs = Watchers::new(shared).inputs();
    let ids = inputs.identities(&caller)?;
    let body = if path == X509_SVID_PATH {
        let view = X509SvidView::build(&inputs, &ids, &shared.svids, shared.now())?;
        x509_svid_json(&view)
    } else if path == JWT_BUNDLES_PATH {
        jwt_bundles_json(&BundlesView::build(&inputs, &ids)).map(Bytes::from)
    } else {
        x509_bundles_json(&BundlesView::build(&inputs, &ids)).map(Bytes::from)
    };
    body.map_err(|e| WorkloadApiError::Internal(format!("cannot serialize: {e}")))
}

/// The X509-SVID response body. It holds the keys' PEM, so it is written into a buffer of its
/// exact size (serialized once to count, then for real: never reallocated with a key in it)
/// that is zeroized when the last reference to the body is dropped (after hyper wrote it).
fn x509_svid_json(view: &X509SvidView) -> serde_json::Result<Bytes> {
    let own = bundle_pem(&view.bundles.own);
    let keys: Vec<_> = view
        .svids
        .iter()
        .map(|s| s.cached.svid.private_key.to_pem())
        .collect();
    let svids = view
        .svids
        .iter()
        .zip(&keys)
        .map(|(s, key)| SvidJson {
            spiffe_id: s.cached.svid.spiffe_id.as_str(),
            x509_svid_pem: certs_to_pem(&s.cached.svid.cert_chain),
            x509_svid_key_pem: key.as_str(),
            bundle_pem: &own,
            expires_at: rfc3339(s.cached.svid.not_after),
            hint: &s.hint,
        })
        .collect();
    let federated_bundles = view
        .bundles
        .federated
        .iter()
        .map(|b| (b.trust_domain.id_string(), bundle_pem(b)))
        .collect();
    zeroized_json(&X509SvidJson {
        svids,
        federated_bundles,
    })
}

/// A body holding secrets, written into a buffer of its exact size (serialized once to count,
/// then for real: never reallocated with a secret in it), zeroized when the last reference to
/// it is dropped (after hyper wrote it).
fn zeroized_json(body: &impl Serialize) -> serde_json::Result<Bytes> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, body)?;
    let mut out = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *out, body)?;
    Ok(Bytes::from_owner(out))
}

/// An `io::Write` that only counts.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Each trust domain's JWKS as FetchJWTBundles sends it, embedded as a JSON object.
fn jwt_bundles_json(view: &BundlesView) -> serde_json::Result<Vec<u8>> {
    let bundles = view
        .all()
        .map(|b| {
            let jwks = serde_json::from_slice::<serde_json::Value>(&jwks::jwt_jwks(b))?;
            Ok((b.trust_domain.id_string(), jwks))
        })
        .collect::<serde_json::Result<BTreeMap<_, _>>>()?;
    serde_json::to_vec(&serde_json::json!({ "bundles": bundles }))
}

fn x509_bundles_json(view: &BundlesView) -> serde_json::Result<Vec<u8>> {
    let bundles = view
        .all()
        .map(|b| (b.trust_domain.id_string(), bundle_pem(b)))
        .collect();
    serde_json::to_vec(&X509BundlesJson { bundles })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwt_query_is_bounded_and_strict() {
        let r = jwt_request("audience=a&audience=b%20c&spiffe_id=spiffe%3A%2F%2Ftd%2Fw").unwrap();
        assert_eq!(r.audience, ["a", "b c"]);
        assert_eq!(r.spiffe_id, "spiffe://td/w");
        let too_many = vec!["audience=x"; MAX_AUDIENCES + 1].join("&");
        assert_eq!(
            jwt_request(&too_many).unwrap_err().to_string(),
            format!("too many audiences (at most {MAX_AUDIENCES})")
        );
        let long = format!("audience={}", "a".repeat(MAX_QUERY_LEN));
        assert!(
            jwt_request(&long)
                .unwrap_err()
                .to_string()
                .starts_with("query string too long")
        );
        assert_eq!(
            jwt_request("audiences=a").unwrap_err().to_string(),
            "unknown query parameter \"audiences\" (use audience and spiffe_id)"
        );
        // No audience is the service's own refusal (SPIRE's words), not the parser's.
        assert!(jwt_request("").unwrap().audience.is_empty());
    }
}
