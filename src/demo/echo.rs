//! The demo's tiny workload: a line echo service and a client that sends one line.
//! `meshtrust demo echo` and `meshtrust demo call` run them in containers; `meshtrust demo` runs
//! the same functions in-process.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A demo workload failure.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The connection failed.
    #[error("{addr}: {source}")]
    Io {
        /// The peer.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed without answering (e.g. an mTLS peer refused us).
    #[error("{0}: the connection closed without an answer")]
    NoAnswer(String),
    /// No answer in time.
    #[error("{0}: no answer within 10s")]
    Timeout(String),
}

/// Serves line echo (`echo: <line>`) on `listener` until `cancel`.
pub async fn serve_echo(listener: TcpListener, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "echo accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("echo: {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

/// Sends one line to `addr` (`host:port`) and returns the answer line.
///
/// # Errors
/// [`EchoError`] when the connection fails, closes without an answer or times out.
pub async fn call(addr: &str, message: &str) -> Result<String, EchoError> {
    let name = addr.to_owned();
    let io = |source| EchoError::Io {
        addr: name.clone(),
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        stream
            .write_all(format!("{message}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut answer = String::new();
        let n = BufReader::new(&mut stream)
            .read_line(&mut answer)
            .await
            .map_err(io)?;
        if n == 0 {
            return Err(EchoError::NoAnswer(name.clone()));
        }
        Ok(answer.trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err(EchoError::Timeout(addr.to_owned())))
}
