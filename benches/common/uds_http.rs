//! A minimal HTTP/1.1 GET over a Unix socket: the admin API and the Workload API's JSON view.

use std::path::Path;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// `GET uri` on the socket at `path` with extra `headers`; the status and body, or an error
/// string when the socket does not answer (yet).
pub async fn get(path: &Path, uri: &str, headers: &[(&str, &str)]) -> Result<(u16, Bytes), String> {
    request(hyper::Method::GET, path, uri, headers, "").await
}

/// `POST uri` with a JSON `body` (may be empty) on the socket at `path`: the admin API's actions.
pub async fn post(path: &Path, uri: &str, body: &str) -> Result<(u16, Bytes), String> {
    request(
        hyper::Method::POST,
        path,
        uri,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

async fn request(
    method: hyper::Method,
    path: &Path,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Bytes), String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect {}: {e}", path.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(
            req.body(Full::new(Bytes::from(body.to_owned())))
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
