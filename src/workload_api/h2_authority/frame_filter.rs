//! The streaming HTTP/2 frame parser behind [`AuthorityRewrite`](super::AuthorityRewrite):
//! header blocks are gathered, rewritten and re-emitted; every other frame passes unchanged.

use std::fmt;

use http::uri::Authority;
use loona_hpack::Decoder;

use super::hpack::{encode_field, plain_literals};
use super::{H2AuthorityError, HTTP2_PREFACE, MAX_HEADER_BLOCK};

/// The value an unparsable `:authority` is replaced with.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// The largest frame payload we emit: the default `SETTINGS_MAX_FRAME_SIZE`, which every peer
/// accepts without negotiation.
const MAX_EMITTED_FRAME: usize = 16_384;

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// The streaming parser: consumes client bytes in chunks of any size, emits filtered bytes.
pub(super) struct FrameFilter {
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
    pub(super) fn new(header_table_size: u32) -> Self {
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
    pub(super) fn feed(
        &mut self,
        input: &[u8],
        emit: &mut impl FnMut(&[u8]),
    ) -> Result<(), H2AuthorityError> {
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
    pub(super) fn passthrough_remaining(&self) -> Option<usize> {
        match self.state {
            State::Passthrough { remaining } if remaining > 0 => Some(remaining),
            _ => None,
        }
    }

    /// Records `n` pass-through payload bytes as handed on.
    pub(super) fn consume_passthrough(&mut self, n: usize) {
        if let State::Passthrough { remaining } = self.state {
            self.state = match remaining - n {
                0 => State::FrameHead,
                remaining => State::Passthrough { remaining },
            };
        }
    }

    /// Whether a header block has started and not ended (END_HEADERS) yet.
    pub(super) fn in_header_block(&self) -> bool {
        self.block.is_some() && self.state != State::Failed
    }

    /// Marks the stream as failed (e.g. a header block timed out): nothing more is parsed.
    pub(super) fn fail(&mut self) {
        self.state = State::Failed;
        self.block = None;
    }

    /// Checks that the client's end of stream falls between frames.
    pub(super) fn finish(&self) -> Result<(), H2AuthorityError> {
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
        let fragments = plain_literals(fragments).map_err(H2AuthorityError::Hpack)?;
        self.decoder
            .decode_with_cb(&fragments, |name, value| {
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

#[cfg(test)]
mod tests;
