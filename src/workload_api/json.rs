//! The JSON view of the Workload API: plain HTTP/1.1 on the same socket, for tools that speak
//! no gRPC (`curl --unix-socket`). Same security header (as an HTTP header), same attestation,
//! same content and the same SVID cache as the gRPC service (CONTRACT.md "Workload API").
//!
//! - `GET /v1/x509-svid` → `{"svids":[{"spiffe_id","x509_svid_pem","x509_svid_key_pem",
//!   "bundle_pem","expires_at","hint"}],"federated_bundles":{"spiffe://<td>":"<PEM>"}}`
//! - `GET /v1/x509-bundles` → `{"bundles":{"spiffe://<own>":"<PEM>","spiffe://<peer>":"<PEM>"}}`
//! - errors as `{"error":"..."}`: 400 missing header, 403 no identity, 503 attestation or
//!   issuance failure, 404 unknown path, 405 other methods.
//!
//! The X509-SVID body carries the keys: its buffer is zeroized once hyper is done with it.
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

use super::state::{Attestation, SECURITY_HEADER, Shared, Watchers, WorkloadApiError};
use super::views::{BundlesView, X509SvidView};
use crate::bundle::TrustBundle;
use crate::bundle::pem::certs_to_pem;
use crate::clock::rfc3339;

/// `GET /v1/x509-svid`.
pub const X509_SVID_PATH: &str = "/v1/x509-svid";
/// `GET /v1/x509-bundles`.
pub const X509_BUNDLES_PATH: &str = "/v1/x509-bundles";

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
    if path != X509_SVID_PATH && path != X509_BUNDLES_PATH {
        return Ok(error_response(StatusCode::NOT_FOUND, "not found"));
    }
    if request.method() != Method::GET {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(response);
    }
    let result = match request.headers().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => render(&shared, &attestation, path),
        _ => Err(WorkloadApiError::MissingHeader),
    };
    Ok(match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => api_error(&e),
    })
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
    let body = X509SvidJson {
        svids,
        federated_bundles,
    };
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, &body)?;
    let mut out = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *out, &body)?;
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

fn x509_bundles_json(view: &BundlesView) -> serde_json::Result<Vec<u8>> {
    let bundles = view
        .all()
        .map(|b| (b.trust_domain.id_string(), bundle_pem(b)))
        .collect();
    serde_json::to_vec(&X509BundlesJson { bundles })
}
