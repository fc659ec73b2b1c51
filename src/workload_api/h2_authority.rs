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
//! # Memory
//!
//! An idle connection holds the struct (a few hundred bytes) and the client's HPACK dynamic table
//! (at most the advertised `SETTINGS_HEADER_TABLE_SIZE`, 4096 by default). Buffers are allocated
//! while a header block is in flight and released as soon as it has been handed on; `DATA` payload
//! is read straight into the caller's buffer.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use loona_hpack::Decoder;
use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP/2 default `SETTINGS_HEADER_TABLE_SIZE`, which hyper and tonic servers keep.
pub const DEFAULT_HEADER_TABLE_SIZE: u32 = 4096;

/// Upper bound for one header block: its frames (headers included) as received, and its decoded
/// header list. Far above any sane request; it bounds memory and defeats CONTINUATION floods and
/// HPACK bombs.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// The value an unparsable `:authority` is replaced with.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// The largest frame payload we emit: the default `SETTINGS_MAX_FRAME_SIZE`, which every peer
/// accepts without negotiation.
const MAX_EMITTED_FRAME: usize = 16_384;
/// Size of the stack buffer reads from the client go through when they need parsing.
const READ_CHUNK: usize = 8 * 1024;

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

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
    /// A read after the filter had already failed.
    #[error("http/2 filter already failed")]
    Failed,
}

impl From<H2AuthorityError> for io::Error {
    fn from(err: H2AuthorityError) -> Self {
        let kind = match err {
            H2AuthorityError::Truncated => io::ErrorKind::UnexpectedEof,
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
        }
    }

    /// Sets the HPACK table size the client may use: it must equal the
    /// `SETTINGS_HEADER_TABLE_SIZE` the server advertises (hyper's `header_table_size`); the
    /// default is [`DEFAULT_HEADER_TABLE_SIZE`]. Larger table size updates fail the connection.
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

// === impl FrameFilter ===

/// The streaming parser: consumes client bytes in chunks of any size, emits filtered bytes.
struct FrameFilter {
    /// The client's HPACK state; it must see every header block of the connection, in order.
    decoder: Decoder<'static>,
    state: State,
    /// The frame header being assembled: it can straddle reads.
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// The header block being gathered, from its HEADERS frame until END_HEADERS.
    block: Option<HeaderBlock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Checking the client preface; `matched` bytes of it seen so far.
    Preface { matched: usize },
    /// Between frames, or inside a frame header (`head_len` bytes of it seen).
    FrameHead,
    /// Inside a frame that passes unchanged; `remaining` payload bytes to go.
    Passthrough { remaining: usize },
    /// Inside a HEADERS or CONTINUATION payload, gathered into the open block.
    HeaderPayload {
        remaining: usize,
        frame_type: u8,
        flags: u8,
        /// Where this frame's payload starts in `HeaderBlock::fragments`.
        start: usize,
    },
    /// The stream was malformed; nothing more is parsed.
    Failed,
}

/// A header block in flight.
#[derive(Debug)]
struct HeaderBlock {
    stream_id: u32,
    end_stream: bool,
    /// The HEADERS frame's priority fields, re-emitted as they came.
    priority: Option<[u8; PRIORITY_LEN]>,
    /// Header block fragments, padding and priority fields stripped.
    fragments: Vec<u8>,
    /// Bytes received for this block so far, frame headers included (for the size cap).
    received: usize,
}

impl fmt::Debug for FrameFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameFilter")
            .field("state", &self.state)
            .field("head_len", &self.head_len)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl FrameFilter {
    fn new(header_table_size: u32) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(header_table_size as usize);
        Self {
            decoder,
            state: State::Preface { matched: 0 },
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            block: None,
        }
    }

    /// Parses `input`, handing filtered bytes to `emit` in stream order.
    fn feed(&mut self, input: &[u8], emit: &mut impl FnMut(&[u8])) -> Result<(), H2AuthorityError> {
        let result = self.feed_inner(input, emit);
        if result.is_err() {
            self.state = State::Failed;
            self.block = None;
        }
        result
    }

    fn feed_inner(
        &mut self,
        mut input: &[u8],
        emit: &mut impl FnMut(&[u8]),
    ) -> Result<(), H2AuthorityError> {
        while !input.is_empty() {
            match self.state {
                State::Failed => return Err(H2AuthorityError::Failed),
                State::Preface { matched } => {
                    let n = input.len().min(HTTP2_PREFACE.len() - matched);
                    if input[..n] != HTTP2_PREFACE[matched..matched + n] {
                        return Err(H2AuthorityError::NotHttp2Preface);
                    }
                    emit(&input[..n]);
                    input = &input[n..];
                    self.state = if matched + n == HTTP2_PREFACE.len() {
                        State::FrameHead
                    } else {
                        State::Preface {
                            matched: matched + n,
                        }
                    };
                }
                State::FrameHead => {
                    let n = input.len().min(FRAME_HEADER_LEN - self.head_len);
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == FRAME_HEADER_LEN {
                        self.head_len = 0;
                        self.start_frame(emit)?;
                    }
                }
                State::Passthrough { remaining } => {
                    let n = input.len().min(remaining);
                    emit(&input[..n]);
                    input = &input[n..];
                    self.consume_passthrough(n);
                }
                State::HeaderPayload {
                    remaining,
                    frame_type,
                    flags,
                    start,
                } => {
                    let n = input.len().min(remaining);
                    if let Some(block) = self.block.as_mut() {
                        block.fragments.extend_from_slice(&input[..n]);
                    }
                    input = &input[n..];
                    if n == remaining {
                        self.finish_header_frame(frame_type, flags, start, emit)?;
                    } else {
                        self.state = State::HeaderPayload {
                            remaining: remaining - n,
                            frame_type,
                            flags,
                            start,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// The payload bytes left in a pass-through frame, if the parser is inside one.
    fn passthrough_remaining(&self) -> Option<usize> {
        match self.state {
            State::Passthrough { remaining } if remaining > 0 => Some(remaining),
            _ => None,
        }
    }

    /// Records `n` pass-through payload bytes as handed on.
    fn consume_passthrough(&mut self, n: usize) {
        if let State::Passthrough { remaining } = self.state {
            self.state = match remaining - n {
                0 => State::FrameHead,
                remaining => State::Passthrough { remaining },
            };
        }
    }

    /// Checks that the client's end of stream falls between frames.
    fn finish(&self) -> Result<(), H2AuthorityError> {
        match self.state {
            State::Preface { matched: 0 } => Ok(()),
            State::FrameHead if self.head_len == 0 && self.block.is_none() => Ok(()),
            State::Failed => Err(H2AuthorityError::Failed),
            _ => Err(H2AuthorityError::Truncated),
        }
    }

    /// Dispatches on a complete frame header.
    fn start_frame(&mut self, emit: &mut impl FnMut(&[u8])) -> Result<(), H2AuthorityError> {
        let head = self.head;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (frame_type, flags) = (head[3], head[4]);
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match (&self.block, frame_type) {
            (Some(block), TYPE_CONTINUATION) if block.stream_id == stream_id => {}
            (Some(block), _) => {
                return Err(H2AuthorityError::ExpectedContinuation {
                    stream_id: block.stream_id,
                    frame_type,
                    got_stream_id: stream_id,
                });
            }
            (None, TYPE_CONTINUATION) => return Err(H2AuthorityError::UnexpectedContinuation),
            (None, TYPE_HEADERS) => {
                self.block = Some(HeaderBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority: None,
                    fragments: Vec::new(),
                    received: 0,
                });
            }
            (None, _) => {
                emit(&head);
                self.state = State::Passthrough { remaining: len };
                self.consume_passthrough(0);
                return Ok(());
            }
        }
        let Some(block) = self.block.as_mut() else {
            return Err(H2AuthorityError::UnexpectedContinuation);
        };
        block.received += FRAME_HEADER_LEN + len;
        if block.received > MAX_HEADER_BLOCK {
            return Err(H2AuthorityError::HeaderBlockTooLarge {
                max: MAX_HEADER_BLOCK,
            });
        }
        block.fragments.reserve_exact(len);
        let start = block.fragments.len();
        self.state = State::HeaderPayload {
            remaining: len,
            frame_type,
            flags,
            start,
        };
        if len == 0 {
            self.finish_header_frame(frame_type, flags, start, emit)?;
        }
        Ok(())
    }

    /// Strips padding/priority from a complete HEADERS/CONTINUATION payload; at END_HEADERS
    /// rewrites and emits the whole block.
    fn finish_header_frame(
        &mut self,
        frame_type: u8,
        flags: u8,
        start: usize,
        emit: &mut impl FnMut(&[u8]),
    ) -> Result<(), H2AuthorityError> {
        self.state = State::FrameHead;
        let Some(block) = self.block.as_mut() else {
            return Err(H2AuthorityError::UnexpectedContinuation);
        };
        if frame_type == TYPE_HEADERS {
            let payload = &block.fragments[start..];
            let frame_len = payload.len();
            let bad = H2AuthorityError::InvalidPadding { frame_len };
            let (mut front, mut pad) = (0, 0);
            if flags & FLAG_PADDED != 0 {
                pad = usize::from(*payload.first().ok_or(bad.clone())?);
                front = 1;
            }
            if flags & FLAG_PRIORITY != 0 {
                let fields = payload
                    .get(front..front + PRIORITY_LEN)
                    .ok_or(bad.clone())?;
                let mut priority = [0; PRIORITY_LEN];
                priority.copy_from_slice(fields);
                block.priority = Some(priority);
                front += PRIORITY_LEN;
            }
            if front + pad > frame_len {
                return Err(bad);
            }
            block.fragments.truncate(start + frame_len - pad);
            block.fragments.drain(start..start + front);
        }
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let encoded = self.rewrite(&block.fragments)?;
        emit_header_frames(&block, &encoded, emit);
        Ok(())
    }

    /// Decodes a header block and re-encodes it without indexing, `:authority` fixed.
    fn rewrite(&mut self, fragments: &[u8]) -> Result<Vec<u8>, H2AuthorityError> {
        let mut encoded = Vec::with_capacity(fragments.len() + 64);
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(fragments, |name, value| {
                // RFC 9113 §6.5.2 list size: the sum of name, value and 32 per field.
                list_size += name.len() + value.len() + 32;
                if list_size > MAX_HEADER_BLOCK {
                    return;
                }
                let value: &[u8] =
                    if &*name == b":authority" && Authority::try_from(&*value).is_err() {
                        tracing::trace!(
                            authority = %String::from_utf8_lossy(&value),
                            "replacing unparsable :authority with localhost"
                        );
                        REPLACEMENT_AUTHORITY
                    } else {
                        &value
                    };
                encode_field(&mut encoded, &name, value);
            })
            .map_err(H2AuthorityError::Hpack)?;
        if list_size > MAX_HEADER_BLOCK {
            return Err(H2AuthorityError::HeaderListTooLarge {
                max: MAX_HEADER_BLOCK,
            });
        }
        Ok(encoded)
    }
}

/// Emits a re-encoded block as HEADERS (+ CONTINUATION) frames of at most 16384 bytes.
fn emit_header_frames(block: &HeaderBlock, encoded: &[u8], emit: &mut impl FnMut(&[u8])) {
    let priority_len = if block.priority.is_some() {
        PRIORITY_LEN
    } else {
        0
    };
    let (first, mut rest) = encoded.split_at(encoded.len().min(MAX_EMITTED_FRAME - priority_len));
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let len = priority_len + first.len();
    emit(&frame_head(len, TYPE_HEADERS, flags, block.stream_id));
    if let Some(priority) = &block.priority {
        emit(priority);
    }
    emit(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_EMITTED_FRAME));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        emit(&frame_head(
            chunk.len(),
            TYPE_CONTINUATION,
            flags,
            block.stream_id,
        ));
        emit(chunk);
        rest = tail;
    }
}

fn frame_head(len: usize, frame_type: u8, flags: u8, stream_id: u32) -> [u8; FRAME_HEADER_LEN] {
    let [_, l0, l1, l2] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    let [s0, s1, s2, s3] = stream_id.to_be_bytes();
    [l0, l1, l2, frame_type, flags, s0, s1, s2, s3]
}

// === HPACK encoding without indexing (RFC 7541) ===

/// The HPACK static table (RFC 7541 Appendix A); index = position + 1.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Encodes one field using only the static table: "indexed" for an exact static match, else
/// "literal without indexing" (indexed name when the static table has it). The receiver's
/// dynamic table is never touched.
fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut name_index = None;
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if *n == name {
            if *v == value {
                encode_integer(out, i + 1, 7, 0x80);
                return;
            }
            name_index.get_or_insert(i + 1);
        }
    }
    match name_index {
        Some(index) => encode_integer(out, index, 4, 0x00),
        None => {
            out.push(0x00);
            encode_string(out, name);
        }
    }
    encode_string(out, value);
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, value: usize, prefix_bits: u8, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_fields_decode_to_themselves_without_touching_the_dynamic_table() {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = STATIC_TABLE
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        fields.extend(
            STATIC_TABLE
                .iter()
                .map(|(n, _)| (n.to_vec(), b"x".to_vec())),
        );
        fields.push((b"te".to_vec(), b"trailers".to_vec()));
        fields.push((b"x-long".to_vec(), vec![b'v'; 300]));
        let mut block = Vec::new();
        for (n, v) in &fields {
            encode_field(&mut block, n, v);
        }
        let mut decoder = Decoder::new();
        let decoded = decoder.decode(&block).expect("our encoding is valid hpack");
        assert_eq!(decoded, fields);
        // Index 62 would be the first dynamic entry: there must be none.
        assert!(decoder.decode(&[0x80 | 62]).is_err());
    }

    #[test]
    fn integers_use_the_prefix_and_continuation_bytes() {
        // RFC 7541 C.1.1 - C.1.3.
        let mut out = Vec::new();
        encode_integer(&mut out, 10, 5, 0);
        encode_integer(&mut out, 1337, 5, 0);
        encode_integer(&mut out, 42, 8, 0);
        assert_eq!(out, [10, 31, 154, 10, 42]);
    }

    #[test]
    fn idle_filter_holds_no_buffers_after_a_header_block() {
        let mut filter = FrameFilter::new(DEFAULT_HEADER_TABLE_SIZE);
        let mut input = HTTP2_PREFACE.to_vec();
        let block = [0x82, 0x86, 0x84, 0x41, 0x03, b'a', b'%', b'b'];
        input.extend_from_slice(&frame_head(block.len(), TYPE_HEADERS, FLAG_END_HEADERS, 1));
        input.extend_from_slice(&block);
        let mut output = Vec::new();
        filter
            .feed(&input, &mut |b| output.extend_from_slice(b))
            .expect("valid input");
        assert!(filter.block.is_none());
        assert_eq!(filter.state, State::FrameHead);
        filter.finish().expect("stream ends between frames");
    }

    #[test]
    fn size_of_the_wrapper_is_small() {
        let size = std::mem::size_of::<AuthorityRewrite<tokio::net::UnixStream>>();
        assert!(size < 512, "AuthorityRewrite<UnixStream> is {size} bytes");
    }
}
