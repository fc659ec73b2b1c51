//! A bundle endpoint of our own whose every answer the test chooses: real TLS (tokio-rustls) on
//! 127.0.0.1:0, a raw HTTP/1.1 handler, behaviour per path, switchable between fetches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the server does with a request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// This status and body, with an honest `Content-Length`.
    Respond { status: u16, body: Vec<u8> },
    /// `200` and `len` bytes of body, without `Content-Length` (ends when the connection closes).
    Unbounded { len: usize },
    /// `200`, `Content-Length: 4096`, then one byte every 100 ms.
    Drip,
    /// Reads the request and never answers.
    Stall,
    /// `302` to this location.
    Redirect(String),
}

impl Behaviour {
    /// `200` with this body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::Respond {
            status: 200,
            body: body.into(),
        }
    }
}

#[derive(Debug)]
struct State {
    tls: Arc<ServerConfig>,
    routes: BTreeMap<String, Behaviour>,
    requests: Vec<String>,
}

/// The server; it runs until the test's runtime ends.
#[derive(Clone, Debug)]
pub struct Hostile {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// A TLS server config presenting `chain` with the PKCS#8 `key`.
pub fn tls_config(chain: Vec<CertificateDer<'static>>, key: &[u8]) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    Arc::new(config)
}

impl Hostile {
    /// Starts serving with `tls`; every path answers 404 until [`Hostile::route`].
    pub async fn start(tls: Arc<ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            tls,
            routes: BTreeMap::new(),
            requests: Vec::new(),
        }));
        let server = Self { addr, state };
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = accepting.clone();
                tokio::spawn(async move { conn.serve(tcp).await });
            }
        });
        server
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> url::Url {
        url::Url::parse(&format!("https://127.0.0.1:{}{path}", self.addr.port())).unwrap()
    }

    /// What `path` does from now on.
    pub fn route(&self, path: &str, behaviour: Behaviour) {
        let mut state = self.state.lock().unwrap();
        state.routes.insert(path.to_owned(), behaviour);
    }

    /// The identity presented from the next connection on.
    pub fn set_tls(&self, tls: Arc<ServerConfig>) {
        self.state.lock().unwrap().tls = tls;
    }

    /// The paths requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    async fn serve(&self, tcp: tokio::net::TcpStream) {
        let tls = self.state.lock().unwrap().tls.clone();
        let Ok(mut stream) = TlsAcceptor::from(tls).accept(tcp).await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let behaviour = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(path.clone());
            state.routes.get(&path).cloned()
        };
        let behaviour = behaviour.unwrap_or(Behaviour::Respond {
            status: 404,
            body: b"not found".to_vec(),
        });
        // Write errors mean the client hung up: that is the point of several behaviours.
        let _ = match behaviour {
            Behaviour::Respond { status, body } => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                write_all(&mut stream, &[head.as_bytes(), &body].concat()).await
            }
            Behaviour::Unbounded { len } => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                let mut result = write_all(&mut stream, head).await;
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while result.is_ok() && sent < len {
                    result = write_all(&mut stream, &chunk).await;
                    sent += chunk.len();
                }
                result
            }
            Behaviour::Drip => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n{";
                let mut result = write_all(&mut stream, head).await;
                while result.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    result = write_all(&mut stream, b" ").await;
                }
                result
            }
            Behaviour::Stall => {
                // Held open, silent, until the client gives up.
                let _ = stream.read(&mut buf).await;
                Ok(())
            }
            Behaviour::Redirect(location) => {
                let head = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                write_all(&mut stream, head.as_bytes()).await
            }
        };
        let _ = stream.shutdown().await;
    }
}

async fn write_all<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}
