//! The HTTP/2 `:authority` filter of the Workload API socket (`AuthorityRewrite`): any local uid
//! can send it any bytes.
//!
//! The input is two bytes of driver settings (whether the client preface is prepended, how the
//! bytes are chunked and read, whether the sniffed prefix path is used) and then the client's
//! bytes after the preface. The filter runs through its real `AsyncRead`, over a reader that hands
//! out fuzzer-chosen chunk sizes and sometimes returns `Pending`, into read buffers of varying
//! sizes.
//!
//! Invariants, checked against a reference model written from RFC 9113/7541 (`h2_frames.rs`):
//! - the output is the preface and a valid frame sequence: every header block is a HEADERS frame
//!   then CONTINUATIONs on its stream, no padding, at most 16,384 bytes per frame, and decodes on
//!   its own with HPACK that only uses the static table (the server's dynamic table stays empty);
//! - every frame outside header blocks passes through byte for byte, in order;
//! - each header block decodes to the client's fields, in order, with an `:authority` that
//!   `http` cannot parse replaced by `localhost` (and nothing else changed);
//! - the filter ends cleanly exactly when the model says the stream is valid to its end; when it
//!   fails, what it produced before is a prefix of the model's output, and the error is an
//!   `H2AuthorityError`.

#![no_main]

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshtrust::workload_api::h2_authority::{AuthorityRewrite, H2AuthorityError, HTTP2_PREFACE};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

mod h2_frames;
use h2_frames::{Segment, model, parse_output};

/// The largest read buffer the driver offers the filter.
const READ_BUF: usize = 20_000;

/// A client connection: hands out the input in chunks of pseudo-random sizes, and now and then
/// says `Pending` first (waking the task at once), as a socket does.
struct Client {
    data: Vec<u8>,
    pos: usize,
    rng: u32,
    max_chunk: usize,
    pended: bool,
}

impl Client {
    fn next(&mut self) -> u32 {
        // xorshift32: deterministic per input, so a crash reproduces.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        self.rng
    }
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pended && this.next() % 8 == 0 {
            this.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pended = false;
        let chunk = 1 + this.next() as usize % this.max_chunk;
        let n = chunk.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    // One runtime for all inputs (the filter may use tokio timers; polling needs a runtime).
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime"),
    );
}

fuzz_target!(|data: &[u8]| {
    let [settings, seed, body @ ..] = data else {
        return;
    };
    // settings: bit 0 = no preface prepended; bit 1 = hand the first bytes over as a sniffed
    // prefix; bits 2-5 = largest chunk as a power of two.
    let mut input = Vec::with_capacity(HTTP2_PREFACE.len() + body.len());
    if settings & 1 == 0 {
        input.extend_from_slice(HTTP2_PREFACE);
    }
    input.extend_from_slice(body);
    let (expected, valid) = model(&input);

    let prefix_len = if settings & 2 != 0 {
        usize::from(*seed % 32).min(input.len())
    } else {
        0
    };
    let prefix = Bytes::copy_from_slice(&input[..prefix_len]);
    let client = Client {
        data: input[prefix_len..].to_vec(),
        pos: 0,
        rng: 0x9e37_79b9 ^ u32::from(*seed) << 8 ^ u32::from(*settings),
        max_chunk: 1 << ((settings >> 2) & 0xf),
        pended: false,
    };
    let mut read_sizes = client.rng.rotate_left(7) | 1;
    let (output, result) = RUNTIME.with(|rt| {
        rt.borrow().block_on(async move {
            let mut io = AuthorityRewrite::with_prefix(client, prefix);
            let mut output = Vec::new();
            let mut buf = vec![0; READ_BUF];
            loop {
                read_sizes ^= read_sizes << 13;
                read_sizes ^= read_sizes >> 17;
                read_sizes ^= read_sizes << 5;
                let size = 1 + (read_sizes as usize % READ_BUF);
                match io.read(&mut buf[..size]).await {
                    Ok(0) => return (output, Ok(())),
                    Ok(n) => output.extend_from_slice(&buf[..n]),
                    Err(e) => return (output, Err(e)),
                }
            }
        })
    });

    let (got, whole) = parse_output(&output);
    match result {
        Ok(()) => {
            assert!(valid, "the filter accepted a stream the model refuses");
            assert!(whole, "clean end in the middle of a frame");
            assert_eq!(got, expected);
        }
        Err(e) => {
            assert!(!valid, "the filter failed a valid stream: {e}");
            assert!(
                e.get_ref()
                    .is_some_and(|inner| inner.is::<H2AuthorityError>()),
                "not a filter error: {e:?}"
            );
            assert!(got.len() <= expected.len(), "{got:?} vs {expected:?}");
            if let Some((last, before)) = got.split_last() {
                assert_eq!(before, &expected[..before.len()]);
                match (last, &expected[before.len()]) {
                    (Segment::Raw(a), Segment::Raw(b)) => assert!(b.starts_with(a), "raw prefix"),
                    (a, b) => assert_eq!(a, b),
                }
            }
        }
    }
});
