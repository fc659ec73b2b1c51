//! Tests of the HTTP/2 `:authority` filter: frame-level behaviour through its `AsyncRead`, then a
//! real hyper HTTP/2 server on a Unix socket, with and without the filter.

mod common;

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame as BodyFrame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtrust::workload_api::h2_authority::{
    AuthorityRewrite, H2AuthorityError, HTTP2_PREFACE, MAX_HEADER_BLOCK, is_http2_preface,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIO: u8 = 0x20;

const C_CORE_AUTHORITY: &str = "tmp%2Fx%2Fworkload.sock";

type Fields = Vec<(String, String)>;

// === helpers: frames ===

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], frame_type, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, Clone, PartialEq)]
struct Frame {
    frame_type: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

/// Splits a filtered stream (preface first) into frames.
fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(&bytes[..HTTP2_PREFACE.len()], HTTP2_PREFACE);
    let mut rest = &bytes[HTTP2_PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let stream_id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        frames.push(Frame {
            frame_type: rest[3],
            flags: rest[4],
            stream_id,
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    frames
}

fn to_strings(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Fields {
    fields
        .into_iter()
        .map(|(n, v)| {
            let n = String::from_utf8(n).expect("utf-8 name");
            (n, String::from_utf8(v).expect("utf-8 value"))
        })
        .collect()
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Decodes every header block of the filtered output as the server would, except with a fresh
/// decoder per block: that passes only if the filter never relies on dynamic-table state.
fn header_blocks(frames: &[Frame]) -> Vec<Fields> {
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for f in frames {
        match f.frame_type {
            HEADERS => {
                assert!(block.is_empty(), "headers inside an open block");
                assert_eq!(f.flags & PADDED, 0, "filter emits no padding");
                let skip = if f.flags & PRIO != 0 { 5 } else { 0 };
                block.extend_from_slice(&f.payload[skip..]);
            }
            CONTINUATION => block.extend_from_slice(&f.payload),
            _ => continue,
        }
        assert!(
            f.payload.len() <= 16_384,
            "frame larger than the default max"
        );
        if f.flags & END_HEADERS != 0 {
            let decoded = loona_hpack::Decoder::new()
                .decode(&block)
                .expect("filtered block decodes with an empty dynamic table");
            blocks.push(to_strings(decoded));
            block.clear();
        }
    }
    assert!(block.is_empty(), "unterminated header block");
    blocks
}

fn request(authority: &str) -> Fields {
    fields(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-python/1.0 grpc-c/1.0 (linux; chttp2)"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ])
}

/// Encodes like a real client: with dynamic-table indexing (loona's encoder indexes everything).
fn encode(encoder: &mut loona_hpack::Encoder<'_>, fields: &Fields) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

/// Encodes like grpc C-core's first request: every field a literal with incremental indexing,
/// so the next request can refer to all of them (see [`encode_references`]).
fn encode_indexing(fields: &Fields) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x40);
        for s in [name, value] {
            loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut out).expect("vec");
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// A block that repeats the `count` fields [`encode_indexing`] added, by dynamic-table index.
fn encode_references(count: u8) -> Vec<u8> {
    // The newest entry has index 62, so the first field inserted has the highest index.
    (0..count).map(|i| 0x80 | (62 + count - 1 - i)).collect()
}

fn stream_start() -> Vec<u8> {
    let mut input = HTTP2_PREFACE.to_vec();
    input.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    input
}

// === helpers: running the filter ===

/// Writes `input` through a duplex of `pipe` bytes and reads the filter with `read_size` reads.
async fn run_filter_with(
    input: Vec<u8>,
    prefix_len: usize,
    pipe: usize,
    read_size: usize,
    table_size: Option<u32>,
) -> io::Result<Vec<u8>> {
    let (mut client, server) = tokio::io::duplex(pipe);
    let prefix = Bytes::copy_from_slice(&input[..prefix_len]);
    let rest = input[prefix_len..].to_vec();
    let writer = tokio::spawn(async move {
        // The filter may fail early and drop its end; that is not the writer's problem.
        let _ = client.write_all(&rest).await;
        let _ = client.shutdown().await;
    });
    let mut filter = AuthorityRewrite::with_prefix(server, prefix);
    if let Some(size) = table_size {
        filter = filter.header_table_size(size);
    }
    let mut output = Vec::new();
    let mut buf = vec![0; read_size];
    let result = loop {
        match filter.read(&mut buf).await {
            Ok(0) => break Ok(output),
            Ok(n) => output.extend_from_slice(&buf[..n]),
            Err(err) => break Err(err),
        }
    };
    drop(filter);
    writer.await.expect("writer task");
    result
}

async fn run_filter(input: Vec<u8>) -> io::Result<Vec<u8>> {
    run_filter_with(input, 0, 64 * 1024, 16 * 1024, None).await
}

async fn filter_error(input: Vec<u8>) -> (io::ErrorKind, H2AuthorityError) {
    let err = run_filter(input).await.expect_err("filter must fail");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<H2AuthorityError>())
        .cloned()
        .expect("an H2AuthorityError inside the io::Error");
    (err.kind(), inner)
}

// === frame-level tests ===

#[tokio::test]
async fn percent_encoded_authority_is_rewritten_to_localhost() {
    let mut input = stream_start();
    let block = encode(&mut loona_hpack::Encoder::new(), &request(C_CORE_AUTHORITY));
    input.extend(frame(HEADERS, END_HEADERS, 1, &block));
    let frames = parse_frames(&run_filter(input).await.expect("filtered"));
    assert_eq!(header_blocks(&frames), [request("localhost")]);
}

#[tokio::test]
async fn unparsable_authorities_are_replaced_and_valid_ones_kept() {
    let cases = [
        (C_CORE_AUTHORITY, "localhost"),
        ("", "localhost"),
        ("a b", "localhost"),
        ("localhost", "localhost"),
        ("spiffe.test:8081", "spiffe.test:8081"),
        ("[::1]:443", "[::1]:443"),
        ("user@example.org", "user@example.org"),
    ];
    for (sent, expected) in cases {
        let mut input = stream_start();
        let block = encode(&mut loona_hpack::Encoder::new(), &request(sent));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let frames = parse_frames(&run_filter(input).await.expect("filtered"));
        assert_eq!(header_blocks(&frames), [request(expected)], "for {sent:?}");
        assert_eq!(frames[1].flags, END_HEADERS | END_STREAM);
    }
}

#[tokio::test]
async fn other_headers_keep_their_order_and_values() {
    let sent = fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", C_CORE_AUTHORITY),
        (":path", "/"),
        ("x-b", "2"),
        ("accept", "*/*"),
        ("x-a", "1"),
        ("x-a", "again"),
        ("grpc-timeout", "5S"),
        ("cookie", "k=v"),
    ]);
    let mut expected = sent.clone();
    expected[2].1 = "localhost".into();
    let mut input = stream_start();
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &encode(&mut Default::default(), &sent),
    ));
    let frames = parse_frames(&run_filter(input).await.expect("filtered"));
    assert_eq!(header_blocks(&frames), [expected]);
}

fn non_header_frames() -> Vec<u8> {
    let mut input = stream_start();
    input.extend(frame(SETTINGS, 0x1, 0, &[]));
    input.extend(frame(PING, 0, 0, b"12345678"));
    input.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]));
    input.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 0, 0x40, 0]));
    input.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 3, b'a', b'b', b'c']));
    input.extend(frame(DATA, PADDED | END_STREAM, 1, &[2, b'x', 0, 0]));
    input.extend(frame(DATA, 0, 3, &vec![7; 40_000]));
    input.extend(frame(DATA, END_STREAM, 3, &[]));
    input.extend(frame(PRIORITY, 0, 5, &[0, 0, 0, 1, 16]));
    input.extend(frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
    input.extend(frame(0xfa, 0xff, 7, b"unknown frame types pass too"));
    input.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    input
}

#[tokio::test]
async fn non_header_frames_pass_through_unchanged() {
    let input = non_header_frames();
    assert_eq!(run_filter(input.clone()).await.expect("filtered"), input);
}

#[tokio::test]
async fn byte_sized_reads_and_writes_give_the_same_output() {
    let mut input = non_header_frames();
    let block = encode_indexing(&request(C_CORE_AUTHORITY));
    input.extend(frame(HEADERS, END_HEADERS, 9, &block));
    input.extend(frame(DATA, 0, 9, b"\0\0\0\0\0"));
    input.extend(frame(HEADERS, END_HEADERS, 11, &encode_references(8)));
    let bulk = run_filter(input.clone()).await.expect("bulk");
    for (pipe, read_size) in [(1, 1), (1, 4096), (7, 3), (4096, 1), (10, 9)] {
        let chunked = run_filter_with(input.clone(), 0, pipe, read_size, None).await;
        assert_eq!(
            chunked.expect("chunked"),
            bulk,
            "pipe {pipe}, reads of {read_size}"
        );
    }
    assert_eq!(
        header_blocks(&parse_frames(&bulk)),
        [request("localhost"), request("localhost")]
    );
}

#[tokio::test]
async fn with_prefix_parses_the_already_read_bytes_first() {
    let mut input = stream_start();
    let block = encode(&mut Default::default(), &request(C_CORE_AUTHORITY));
    input.extend(frame(HEADERS, END_HEADERS, 1, &block));
    let expected = run_filter(input.clone()).await.expect("no prefix");
    for prefix_len in [3, 24, 30, 40, input.len()] {
        let out = run_filter_with(input.clone(), prefix_len, 1024, 16 * 1024, None).await;
        assert_eq!(
            out.expect("with prefix"),
            expected,
            "prefix of {prefix_len}"
        );
    }
}

#[tokio::test]
async fn header_block_split_over_headers_and_continuation_is_joined() {
    let block = encode(&mut Default::default(), &request(C_CORE_AUTHORITY));
    let (a, rest) = block.split_at(10);
    let (b, c) = rest.split_at(15);
    let mut input = stream_start();
    input.extend(frame(HEADERS, END_STREAM, 1, a));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, 0, 1, &[]));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    let frames = parse_frames(&run_filter(input).await.expect("filtered"));
    assert_eq!(frames.len(), 2, "settings, then one joined headers frame");
    assert_eq!(frames[1].flags, END_STREAM | END_HEADERS);
    assert_eq!(header_blocks(&frames), [request("localhost")]);
}

#[tokio::test]
async fn padded_headers_with_priority_keep_priority_and_drop_padding() {
    let block = encode(&mut Default::default(), &request(C_CORE_AUTHORITY));
    let priority = [0x80, 0, 0, 3, 200];
    let mut payload = vec![4];
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(&block[..20]);
    payload.extend_from_slice(&[0; 4]);
    let mut input = stream_start();
    input.extend(frame(HEADERS, PADDED | PRIO, 5, &payload));
    input.extend(frame(CONTINUATION, END_HEADERS, 5, &block[20..]));
    let frames = parse_frames(&run_filter(input).await.expect("filtered"));
    assert_eq!(frames[1].frame_type, HEADERS);
    assert_eq!(frames[1].flags, PRIO | END_HEADERS);
    assert_eq!(frames[1].stream_id, 5);
    assert_eq!(frames[1].payload[..5], priority);
    assert_eq!(header_blocks(&frames), [request("localhost")]);
}

#[tokio::test]
async fn second_request_uses_dynamic_table_entries_from_the_first() {
    // RFC 7541 C.4.1 and C.4.2: Huffman-coded, the second request refers to index 62.
    let first = [
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];
    let second = [
        0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
    ];
    let mut input = stream_start();
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &first));
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    // The C-core case: the percent-encoded authority is indexed once, then referenced.
    let third = encode_indexing(&request(C_CORE_AUTHORITY));
    let fourth = encode_references(8);
    input.extend(frame(HEADERS, END_HEADERS, 5, &third));
    input.extend(frame(HEADERS, END_HEADERS, 7, &fourth));
    let frames = parse_frames(&run_filter(input).await.expect("filtered"));
    let get = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
    let mut first_fields = fields(&get);
    first_fields.push((":authority".into(), "www.example.com".into()));
    let mut second_fields = first_fields.clone();
    second_fields.push(("cache-control".into(), "no-cache".into()));
    assert_eq!(
        header_blocks(&frames),
        [
            first_fields,
            second_fields,
            request("localhost"),
            request("localhost")
        ]
    );
}

#[tokio::test]
async fn dynamic_table_size_updates_are_honoured() {
    let indexed = [0x40, 3, b'x', b'-', b'a', 1, b'1']; // literal with indexing: x-a: 1
    let evict = [0x20, 0x82]; // size update to 0, then :method GET
    let refer = [0x82, 0xbe]; // :method GET, index 62
    let mut input = stream_start();
    input.extend(frame(HEADERS, END_HEADERS, 1, &indexed));
    input.extend(frame(HEADERS, END_HEADERS, 3, &refer));
    let frames = parse_frames(&run_filter(input).await.expect("index 62 resolves"));
    assert_eq!(
        header_blocks(&frames)[1],
        fields(&[(":method", "GET"), ("x-a", "1")])
    );

    let mut input = stream_start();
    input.extend(frame(HEADERS, END_HEADERS, 1, &indexed));
    input.extend(frame(HEADERS, END_HEADERS, 3, &evict));
    input.extend(frame(HEADERS, END_HEADERS, 5, &refer));
    let (kind, err) = filter_error(input).await;
    assert_eq!(kind, io::ErrorKind::InvalidData);
    assert!(matches!(err, H2AuthorityError::Hpack(_)), "{err:?}");

    // Above the advertised SETTINGS_HEADER_TABLE_SIZE (4096 unless configured): rejected.
    let grow = [0x3f, 0xe1, 0x3f, 0x82]; // size update to 8192, then :method GET
    let mut input = stream_start();
    input.extend(frame(HEADERS, END_HEADERS, 1, &grow));
    let (_, err) = filter_error(input.clone()).await;
    assert!(matches!(err, H2AuthorityError::Hpack(_)), "{err:?}");
    let out = run_filter_with(input, 0, 1024, 1024, Some(8192)).await;
    let frames = parse_frames(&out.expect("allowed when configured"));
    assert_eq!(header_blocks(&frames), [fields(&[(":method", "GET")])]);
}

#[tokio::test]
async fn a_large_header_block_passes_up_to_the_cap_and_not_above() {
    // The cap is hyper's own max_header_list_size (16 KiB): a decoded list within it always
    // re-encodes (no indexing, no Huffman) into at most one full HEADERS frame.
    let mut sent = request(C_CORE_AUTHORITY);
    sent.push(("x-big".into(), "v".repeat(15_000)));
    let mut input = stream_start();
    input.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &encode(&mut Default::default(), &sent),
    ));
    let frames = parse_frames(&run_filter(input).await.expect("filtered"));
    let kinds: Vec<(u8, u8)> = frames[1..]
        .iter()
        .map(|f| (f.frame_type, f.flags))
        .collect();
    assert_eq!(kinds, [(HEADERS, END_STREAM | END_HEADERS)]);
    let mut expected = sent.clone();
    expected[3].1 = "localhost".into();
    assert_eq!(header_blocks(&frames), [expected]);

    // 40,000 bytes (accepted before the cap was lowered to h2's): refused.
    sent.last_mut().unwrap().1 = "v".repeat(40_000);
    let mut input = stream_start();
    input.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &encode(&mut Default::default(), &sent),
    ));
    let (_, err) = filter_error(input).await;
    assert_eq!(
        err,
        H2AuthorityError::HeaderBlockTooLarge {
            max: MAX_HEADER_BLOCK
        }
    );
}

#[tokio::test]
async fn malformed_input_fails_the_connection() {
    let block = encode(&mut Default::default(), &request("localhost"));
    let with = |frames: &[Vec<u8>]| {
        let mut input = stream_start();
        frames.iter().for_each(|f| input.extend_from_slice(f));
        input
    };
    let cases = [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            H2AuthorityError::NotHttp2Preface,
        ),
        (
            with(&[frame(CONTINUATION, END_HEADERS, 1, &block)]),
            H2AuthorityError::UnexpectedContinuation,
        ),
        (
            with(&[frame(HEADERS, 0, 1, &block), frame(DATA, 0, 1, b"x")]),
            H2AuthorityError::ExpectedContinuation {
                stream_id: 1,
                frame_type: DATA,
                got_stream_id: 1,
            },
        ),
        (
            with(&[
                frame(HEADERS, 0, 1, &block),
                frame(CONTINUATION, END_HEADERS, 3, &[]),
            ]),
            H2AuthorityError::ExpectedContinuation {
                stream_id: 1,
                frame_type: CONTINUATION,
                got_stream_id: 3,
            },
        ),
        (
            with(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82])]),
            H2AuthorityError::InvalidPadding { frame_len: 2 },
        ),
        (
            with(&[frame(HEADERS, PRIO | END_HEADERS, 1, &[0, 0, 0])]),
            H2AuthorityError::InvalidPadding { frame_len: 3 },
        ),
    ];
    for (input, expected) in cases {
        let (kind, err) = filter_error(input).await;
        assert_eq!((kind, err), (io::ErrorKind::InvalidData, expected));
    }

    let (kind, err) = filter_error(with(&[frame(HEADERS, END_HEADERS, 1, &[0x80 | 70])])).await;
    assert_eq!(kind, io::ErrorKind::InvalidData);
    assert!(matches!(err, H2AuthorityError::Hpack(_)), "{err:?}");

    let mut truncated = with(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    truncated.truncate(truncated.len() - 1);
    let (kind, err) = filter_error(truncated).await;
    assert_eq!(
        (kind, err),
        (io::ErrorKind::UnexpectedEof, H2AuthorityError::Truncated)
    );
}

#[tokio::test]
async fn oversized_header_blocks_are_refused() {
    // A CONTINUATION flood: empty frames, no end; the frame headers alone exceed the cap.
    let mut input = stream_start();
    input.extend(frame(HEADERS, 0, 1, &[0x82]));
    for _ in 0..MAX_HEADER_BLOCK / 9 {
        input.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    let (_, err) = filter_error(input).await;
    assert_eq!(
        err,
        H2AuthorityError::HeaderBlockTooLarge {
            max: MAX_HEADER_BLOCK
        }
    );

    // An HPACK bomb: one 4000-byte table entry referenced 400 times decodes to 1.6 MB.
    let mut block = vec![0x40, 5];
    block.extend_from_slice(b"x-big");
    block.extend_from_slice(&[0x7f, 0xa1, 0x1e]); // value length 4000, no Huffman
    block.extend(std::iter::repeat_n(b'v', 4000));
    block.extend(std::iter::repeat_n(0x80 | 62, 400));
    let mut input = stream_start();
    input.extend(frame(HEADERS, END_HEADERS, 1, &block));
    let (_, err) = filter_error(input).await;
    assert_eq!(
        err,
        H2AuthorityError::HeaderListTooLarge {
            max: MAX_HEADER_BLOCK
        }
    );
}

#[test]
fn preface_sniffing_accepts_partial_prefaces_only() {
    assert!(is_http2_preface(HTTP2_PREFACE));
    assert!(is_http2_preface(b"PRI"));
    assert!(is_http2_preface(&[HTTP2_PREFACE, b"\0\0\0\x04"].concat()));
    assert!(!is_http2_preface(b""));
    assert!(!is_http2_preface(b"POST /v1 HTTP/1.1\r\n"));
    assert!(!is_http2_preface(b"PRI * HTTP/1.1\r\n"));
}

// === a real hyper HTTP/2 server on a Unix socket ===

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Response headers for the stream.
    Response(Fields),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
}

const PROTOCOL_ERROR: u32 = 0x1;

/// Serves HTTP/2 on a socket in a temp dir; the response echoes the request's authority.
async fn start_server(filter: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("workload.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if filter {
                // The accept loop of the real socket: sniff, then wrap with what was read.
                tokio::spawn(async move {
                    let mut stream = stream;
                    let mut first = [0u8; 3];
                    if stream.read_exact(&mut first).await.is_ok() && is_http2_preface(&first) {
                        let prefix = Bytes::copy_from_slice(&first);
                        serve(AuthorityRewrite::with_prefix(stream, prefix)).await;
                    }
                });
            } else {
                tokio::spawn(serve(stream));
            }
        }
    });
    (dir, path)
}

async fn serve<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO) {
    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // A complete unary gRPC answer: one message, then `grpc-status: 0` trailers.
        let message = format!("authority={authority}");
        let mut data = vec![0];
        data.extend_from_slice(&u32::try_from(message.len()).expect("short").to_be_bytes());
        data.extend_from_slice(message.as_bytes());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = [
            BodyFrame::data(Bytes::from(data)),
            BodyFrame::trailers(trailers),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames.map(Ok::<_, Infallible>)));
        let response = Response::builder()
            .header("content-type", "application/grpc")
            .header("x-authority", authority)
            .body(body)
            .expect("response");
        Ok::<_, Infallible>(response)
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Sends requests like a C-core client (preface, SETTINGS, then HEADERS + DATA per stream) and
/// reports what the server did to each stream.
async fn call(path: &PathBuf, streams: &[u32]) -> Vec<Outcome> {
    let mut stream = UnixStream::connect(path).await.expect("connect");
    let mut out = stream_start();
    for (i, &id) in streams.iter().enumerate() {
        let block = match i {
            0 => encode_indexing(&request(C_CORE_AUTHORITY)),
            _ => encode_references(8),
        };
        out.extend(frame(HEADERS, END_HEADERS, id, &block));
        out.extend(frame(DATA, END_STREAM, id, &[0, 0, 0, 0, 0]));
    }
    stream.write_all(&out).await.expect("send requests");
    let mut decoder = loona_hpack::Decoder::new();
    let mut outcomes = Vec::new();
    let read = async {
        while outcomes.len() < streams.len() {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0; len];
            stream
                .read_exact(&mut payload)
                .await
                .expect("frame payload");
            let code = || u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            match head[3] {
                SETTINGS if head[4] & 0x1 == 0 => {
                    stream
                        .write_all(&frame(SETTINGS, 0x1, 0, &[]))
                        .await
                        .expect("ack");
                }
                HEADERS => {
                    let decoded = decoder.decode(&payload).expect("response headers");
                    let fields = to_strings(decoded);
                    // Response headers, not the trailers that follow them.
                    if fields.iter().any(|(name, _)| name == ":status") {
                        outcomes.push(Outcome::Response(fields));
                    }
                }
                RST_STREAM => outcomes.push(Outcome::Reset(code())),
                GOAWAY => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    outcomes.push(Outcome::GoAway(code));
                    break;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("server answered in time");
    outcomes
}

fn ok_response(outcome: &Outcome) -> bool {
    let Outcome::Response(headers) = outcome else {
        return false;
    };
    headers.contains(&(":status".into(), "200".into()))
        && headers.contains(&("x-authority".into(), "localhost".into()))
}

#[tokio::test]
async fn hyper_resets_a_percent_encoded_authority_without_the_filter() {
    let (_dir, path) = start_server(false).await;
    let outcomes = call(&path, &[1]).await;
    assert!(
        matches!(
            outcomes[..],
            [Outcome::Reset(PROTOCOL_ERROR)] | [Outcome::GoAway(PROTOCOL_ERROR)]
        ),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn hyper_answers_a_percent_encoded_authority_through_the_filter() {
    let (_dir, path) = start_server(true).await;
    let outcomes = call(&path, &[1]).await;
    assert!(
        outcomes.len() == 1 && ok_response(&outcomes[0]),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn hyper_answers_indexed_requests_on_one_filtered_connection() {
    let (_dir, path) = start_server(true).await;
    let outcomes = call(&path, &[1, 3, 5]).await;
    assert!(
        outcomes.len() == 3 && outcomes.iter().all(ok_response),
        "{outcomes:?}"
    );
}

#[test]
fn the_wrapper_keeps_tonic_connect_info() {
    fn assert_connected<T: tonic::transport::server::Connected>() {}
    assert_connected::<AuthorityRewrite<UnixStream>>();
}

/// The unmodified Python gRPC client (C-core), three calls on one channel so the later ones
/// send `:authority` as a dynamic-table reference. Without the filter hyper resets the stream.
#[tokio::test]
async fn python_grpcio_client_is_served_through_the_filter() {
    const SCRIPT: &str = "import grpc, sys
channel = grpc.insecure_channel('unix:' + sys.argv[1])
call = channel.unary_unary('/SpiffeWorkloadAPI/FetchJWTBundles')
for _ in range(3):
    try:
        print('ok', call(b'', timeout=5).decode())
    except grpc.RpcError as err:
        print('error', err.code(), err.details())
";
    // grpcio comes with the interop venv (tests/python/setup.sh).
    let Some(python) = common::python::interpreter() else {
        return;
    };
    for (filter, expected) in [
        (true, "ok authority=localhost\n".repeat(3)),
        (false, String::new()),
    ] {
        let (_dir, path) = start_server(filter).await;
        let output = tokio::process::Command::new(&python)
            .args(["-c", SCRIPT])
            .arg(&path)
            .output()
            .await
            .expect("run python");
        let stdout = String::from_utf8_lossy(&output.stdout);
        if filter {
            assert_eq!(
                stdout,
                expected,
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        } else {
            assert!(stdout.starts_with("error StatusCode.INTERNAL"), "{stdout}");
            assert!(stdout.contains("RST_STREAM"), "{stdout}");
        }
    }
}
