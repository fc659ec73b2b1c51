//! An HTTP/2 frame filter that replaces an unparsable `:authority` with `localhost`.
//!
//! # Why
//!
//! gRPC C-core clients (Python `grpcio`, and so py-spiffe; grpc-java; grpcurl) send the
//! percent-encoded Unix socket path as the HTTP/2 `:authority` of calls over a Unix socket, for
//! example `tmp%2Fx%2Fworkload.sock`. The `http` crate's `Authority` parser rejects that value, and
//! the `h2` server under hyper/tonic resets the stream with `PROTOCOL_ERROR` before our service
//! sees the call; `h2` has no option to relax the check. SPIRE accepts these clients, so users
//! expect us to as well.
//!
//! # How
//!
//! [`AuthorityRewrite`] wraps the server side of an accepted connection and is handed to
//! hyper/tonic in its place. Writes (server to client) pass straight through. Reads (client to
//! server) are parsed frame by frame: every frame passes through byte for byte, except header
//! blocks (`HEADERS` + `CONTINUATION`), which are HPACK-decoded with a decoder that lives as long
//! as the connection, get an unparsable `:authority` replaced, and are re-encoded *without*
//! dynamic-table indexing. Because nothing we send is ever indexed, the server's HPACK table stays
//! empty and can never diverge from ours, which is why *every* header block is re-encoded, changed
//! or not. No task and no pipe is involved: the filtering happens inside `poll_read`.
//!
//! # Usage
//!
//! In the per-connection task of the Workload API accept loop (the socket also serves HTTP/1.1,
//! so sniff first; with tonic, yield the wrapped stream from `serve_with_incoming`'s stream: it
//! implements tonic's `Connected`, so peer credentials still reach the service):
//!
//! ```no_run
//! use bytes::Bytes;
//! use meshtrust::workload_api::h2_authority::{AuthorityRewrite, is_http2_preface};
//! use tokio::io::AsyncReadExt;
//! # async fn handle(mut stream: tokio::net::UnixStream) -> std::io::Result<()> {
//! let mut first = [0u8; 3];
//! stream.read_exact(&mut first).await?;
//! if is_http2_preface(&first) {
//!     let io = AuthorityRewrite::with_prefix(stream, Bytes::copy_from_slice(&first));
//!     // hyper::server::conn::http2::Builder::new(exec).serve_connection(TokioIo::new(io), svc)
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Memory
//!
//! An idle connection holds the struct (a few hundred bytes) and the client's HPACK dynamic table
//! (at most the advertised `SETTINGS_HEADER_TABLE_SIZE`, 4096 by default). Buffers are allocated
//! while a header block is in flight and released as soon as it has been handed on; `DATA` payload
//! is read straight into the caller's buffer.

mod frame_filter;
mod hpack;

use std::fmt;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use self::frame_filter::FrameFilter;

/// The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP/2 default `SETTINGS_HEADER_TABLE_SIZE`, which hyper and tonic servers keep.
pub const DEFAULT_HEADER_TABLE_SIZE: u32 = 4096;

/// Upper bound for one header block: its frames (headers included) as received, and its decoded
/// header list (RFC 9113 list size). 16 KiB: hyper's own `max_header_list_size`, which the
/// server also sets, so nothing h2 would accept is refused here, and a connection can never make
/// us buffer more than h2 itself would. Bounds memory; defeats CONTINUATION floods and HPACK bombs.
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;

/// Default deadline for completing a header block once its HEADERS frame started
/// ([`AuthorityRewrite::header_timeout`]): a block never finished is not held forever.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the stack buffer reads from the client go through when they need parsing.
const READ_CHUNK: usize = 8 * 1024;

/// Whether the first bytes of a connection are (the start of) the HTTP/2 client preface.
///
/// True when `prefix` is non-empty and agrees with [`HTTP2_PREFACE`] over their common length: a
/// caller that peeked only a few bytes gets `true` for `b"PRI"`. HTTP/1.1 never starts like this
/// (`PRI` is reserved for the preface), so the socket can serve both protocols.
pub fn is_http2_preface(prefix: &[u8]) -> bool {
    let n = prefix.len().min(HTTP2_PREFACE.len());
    n > 0 && prefix[..n] == HTTP2_PREFACE[..n]
}

/// Why the client's byte stream could not be filtered; each one fails the connection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum H2AuthorityError {
    /// The connection does not start with the HTTP/2 client preface.
    #[error("client did not send the http/2 connection preface")]
    NotHttp2Preface,
    /// A header block's frames add up to more than [`MAX_HEADER_BLOCK`] bytes.
    #[error("header block exceeds {max} bytes")]
    HeaderBlockTooLarge { max: usize },
    /// A header block decodes to more than [`MAX_HEADER_BLOCK`] bytes (RFC 9113 list size).
    #[error("decoded header list exceeds {max} bytes")]
    HeaderListTooLarge { max: usize },
    /// A HEADERS frame is too short for its padding and priority fields.
    #[error("headers frame of {frame_len} bytes cannot hold its padding and priority fields")]
    InvalidPadding { frame_len: usize },
    /// A header block was interrupted by another frame (RFC 9113 §6.10).
    #[error(
        "expected continuation of stream {stream_id}, got frame type {frame_type:#x} on stream {got_stream_id}"
    )]
    ExpectedContinuation {
        stream_id: u32,
        frame_type: u8,
        got_stream_id: u32,
    },
    /// A CONTINUATION frame arrived outside a header block.
    #[error("continuation frame without an open header block")]
    UnexpectedContinuation,
    /// The header block is not valid HPACK (including a table size update above the limit).
    #[error("invalid hpack header block")]
    Hpack(#[source] DecoderError),
    /// The client closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A header block was not completed within the header timeout.
    #[error("header block not completed within {0:?}")]
    HeaderTimeout(Duration),
    /// A read after the filter had already failed.
    #[error("http/2 filter already failed")]
    Failed,
}

impl From<H2AuthorityError> for io::Error {
    fn from(err: H2AuthorityError) -> Self {
        let kind = match err {
            H2AuthorityError::Truncated => io::ErrorKind::UnexpectedEof,
            H2AuthorityError::HeaderTimeout(_) => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

// === impl AuthorityRewrite ===

/// The server side of a client connection, with unparsable `:authority` values replaced.
///
/// Hand it to hyper or tonic instead of the raw stream (see the module docs for why). Writes pass
/// straight through; reads yield the client's frames, header blocks rewritten.
pub struct AuthorityRewrite<S> {
    /// The accepted connection.
    inner: S,
    /// Bytes the caller already read from `inner` (to sniff the protocol), parsed before `inner`.
    prefix: Bytes,
    /// The frame parser and HPACK state.
    filter: FrameFilter,
    /// Parsed bytes that did not fit the caller's buffer; empty (unallocated) most of the time.
    out: BytesMut,
    /// How long a header block may stay open.
    header_timeout: Duration,
    /// Runs while a header block is open (allocated then only).
    deadline: Option<Pin<Box<Sleep>>>,
    /// Called once when a header block times out (to count it: the error itself reaches the
    /// server's owner only as an opaque h2 error).
    on_timeout: Option<Box<dyn FnOnce() + Send>>,
}

impl<S> AuthorityRewrite<S> {
    /// Wraps a connection whose first byte has not been read yet (peeking is fine).
    pub fn new(inner: S) -> Self {
        Self::with_prefix(inner, Bytes::new())
    }

    /// Wraps a connection from which `prefix` was already read, e.g. to sniff the protocol.
    ///
    /// `prefix` is parsed as the start of the stream, before anything read from `inner`.
    pub fn with_prefix(inner: S, prefix: Bytes) -> Self {
        Self {
            inner,
            prefix,
            filter: FrameFilter::new(DEFAULT_HEADER_TABLE_SIZE),
            out: BytesMut::new(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            deadline: None,
            on_timeout: None,
        }
    }

    /// Calls `f` once if a header block times out ([`AuthorityRewrite::header_timeout`]).
    pub fn on_header_timeout(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_timeout = Some(Box::new(f));
        self
    }

    /// Sets how long a header block (HEADERS up to the CONTINUATION with END_HEADERS) may take
    /// to arrive; then reads fail with [`H2AuthorityError::HeaderTimeout`]. The default is
    /// [`DEFAULT_HEADER_TIMEOUT`]. Needs a tokio runtime with the timer.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets the HPACK table size the client may use: it must equal the
    /// `SETTINGS_HEADER_TABLE_SIZE` the server advertises (hyper's `header_table_size`); the
    /// default is [`DEFAULT_HEADER_TABLE_SIZE`]. Larger table size updates fail the connection,
    /// which also bounds the memory the client's table can take. Call it before the first read.
    pub fn header_table_size(mut self, size: u32) -> Self {
        self.filter = FrameFilter::new(size);
        self
    }

    /// The wrapped connection, e.g. for its peer credentials. Do not read from it.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for AuthorityRewrite<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityRewrite")
            .field("prefix_len", &self.prefix.len())
            .field("filter", &self.filter)
            .field("out_len", &self.out.len())
            .field("header_timeout", &self.header_timeout)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Self {
            inner,
            prefix,
            filter,
            out,
            header_timeout,
            deadline,
            on_timeout,
        } = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        loop {
            if !out.is_empty() {
                let n = out.len().min(buf.remaining());
                buf.put_slice(&out[..n]);
                out.advance(n);
                if out.is_empty() {
                    // Give the memory back: an idle connection should hold no buffer.
                    *out = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            // A header block in flight must complete before its deadline. Polled before every
            // read from the client, so a client that stops sending wakes us when it passes.
            if filter.in_header_block() {
                let timer =
                    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(*header_timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    filter.fail();
                    *deadline = None;
                    if let Some(f) = on_timeout.take() {
                        f();
                    }
                    return Poll::Ready(Err(
                        H2AuthorityError::HeaderTimeout(*header_timeout).into()
                    ));
                }
            } else if deadline.is_some() {
                *deadline = None;
            }
            if !prefix.is_empty() {
                let bytes = std::mem::take(prefix);
                filter.feed(&bytes, &mut |b| spill(buf, out, b))?;
            } else if let Some(remaining) = filter.passthrough_remaining() {
                // Inside a frame that passes unchanged (DATA, mostly): read straight into the
                // caller's buffer, but never past the end of the frame.
                let dst = buf.initialize_unfilled_to(remaining.min(buf.remaining()));
                let mut sub = ReadBuf::new(dst);
                ready!(Pin::new(&mut *inner).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                if n == 0 {
                    filter.finish()?;
                    return Poll::Ready(Ok(()));
                }
                buf.advance(n);
                filter.consume_passthrough(n);
            } else {
                let mut chunk = [0u8; READ_CHUNK];
                let mut chunk = ReadBuf::new(&mut chunk[..buf.remaining().min(READ_CHUNK)]);
                ready!(Pin::new(&mut *inner).poll_read(cx, &mut chunk))?;
                if chunk.filled().is_empty() {
                    filter.finish()?;
                    return Poll::Ready(Ok(()));
                }
                filter.feed(chunk.filled(), &mut |b| spill(buf, out, b))?;
            }
            // Returning without bytes would read as end of stream: keep reading until the
            // filter produced something (e.g. a header block split over many reads).
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Hands `bytes` to the caller's buffer, keeping in `out` what does not fit (in order).
fn spill(buf: &mut ReadBuf<'_>, out: &mut BytesMut, bytes: &[u8]) {
    let n = if out.is_empty() {
        bytes.len().min(buf.remaining())
    } else {
        0
    };
    buf.put_slice(&bytes[..n]);
    out.extend_from_slice(&bytes[n..]);
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// tonic's `serve_with_incoming` takes the wrapped stream directly and still sees the inner
/// stream's connection info (for a `UnixStream`: the peer credentials used for attestation).
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRewrite<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_of_the_wrapper_is_small() {
        let size = std::mem::size_of::<AuthorityRewrite<tokio::net::UnixStream>>();
        assert!(size < 512, "AuthorityRewrite<UnixStream> is {size} bytes");
    }
}
