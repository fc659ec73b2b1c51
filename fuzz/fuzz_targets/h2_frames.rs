//! The h2_authority target's reference: a model of what the `:authority` filter must make of a
//! client's bytes (RFC 9113 framing, RFC 7541 HPACK), and a parser of what it made, both into
//! the same [`Segment`]s so the two can be compared.

use http::uri::Authority;
use loona_hpack::Decoder;
use meshtrust::workload_api::h2_authority::{
    DEFAULT_HEADER_TABLE_SIZE, HTTP2_PREFACE, MAX_HEADER_BLOCK,
};

const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The default SETTINGS_MAX_FRAME_SIZE: every frame the filter writes must fit it.
const MAX_FRAME: usize = 16_384;
/// HPACK static table size (RFC 7541 Appendix A).
const STATIC_ENTRIES: usize = 61;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// What the server sees, in order: raw bytes (preface, frames outside header blocks) and header
/// blocks as decoded fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Raw(Vec<u8>),
    Block {
        stream_id: u32,
        end_stream: bool,
        priority: Option<Vec<u8>>,
        fields: Fields,
    },
}

fn push_raw(out: &mut Vec<Segment>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(Segment::Raw(raw)) => raw.extend_from_slice(bytes),
        _ => out.push(Segment::Raw(bytes.to_vec())),
    }
}

struct Head {
    len: usize,
    frame_type: u8,
    flags: u8,
    stream_id: u32,
}

fn head(bytes: &[u8]) -> Head {
    Head {
        len: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
        frame_type: bytes[3],
        flags: bytes[4],
        stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
    }
}

/// The reference model: what the filter must make of the client's `input`, and whether the
/// input is a valid stream to its end (`true`) or the filter must fail at the end of the output.
pub(crate) fn model(input: &[u8]) -> (Vec<Segment>, bool) {
    let mut out = Vec::new();
    let n = input.len().min(HTTP2_PREFACE.len());
    let matched = input
        .iter()
        .zip(HTTP2_PREFACE)
        .take_while(|(a, b)| a == b)
        .count();
    push_raw(&mut out, &input[..matched.min(n)]);
    if matched < n {
        return (out, false); // not the preface
    }
    if n < HTTP2_PREFACE.len() {
        return (out, n == 0); // an empty stream is fine, a cut preface is not
    }
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE as usize);
    // (stream id, end_stream, priority, fragments, bytes received)
    let mut block: Option<(u32, bool, Option<Vec<u8>>, Vec<u8>, usize)> = None;
    let mut rest = &input[n..];
    loop {
        if rest.is_empty() {
            return (out, block.is_none());
        }
        if rest.len() < FRAME_HEADER_LEN {
            return (out, false);
        }
        let h = head(rest);
        let after = &rest[FRAME_HEADER_LEN..];
        match (&block, h.frame_type) {
            (Some(b), CONTINUATION) if b.0 == h.stream_id => {}
            (Some(_), _) | (None, CONTINUATION) => return (out, false), // RFC 9113 §6.10
            (None, HEADERS) => {
                block = Some((h.stream_id, h.flags & END_STREAM != 0, None, Vec::new(), 0));
            }
            (None, _) => {
                // Any other frame passes through as it is, even a partial one.
                let take = h.len.min(after.len());
                push_raw(&mut out, &rest[..FRAME_HEADER_LEN + take]);
                if take < h.len {
                    return (out, false);
                }
                rest = &after[h.len..];
                continue;
            }
        }
        let b = block.as_mut().expect("a block is open");
        b.4 += FRAME_HEADER_LEN + h.len;
        if b.4 > MAX_HEADER_BLOCK || after.len() < h.len {
            return (out, false);
        }
        let payload = &after[..h.len];
        rest = &after[h.len..];
        let fragment = if h.frame_type == HEADERS {
            let (mut front, mut pad) = (0, 0);
            if h.flags & PADDED != 0 {
                let Some(p) = payload.first() else {
                    return (out, false);
                };
                pad = usize::from(*p);
                front = 1;
            }
            if h.flags & PRIORITY != 0 {
                let Some(p) = payload.get(front..front + 5) else {
                    return (out, false);
                };
                b.2 = Some(p.to_vec());
                front += 5;
            }
            if front + pad > payload.len() {
                return (out, false);
            }
            &payload[front..payload.len() - pad]
        } else {
            payload
        };
        b.3.extend_from_slice(fragment);
        if h.flags & END_HEADERS == 0 {
            continue;
        }
        let (stream_id, end_stream, priority, fragments, _) = block.take().expect("open");
        let Ok(mut fields) = decoder.decode(&fragments) else {
            return (out, false);
        };
        let list_size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        if list_size > MAX_HEADER_BLOCK {
            return (out, false);
        }
        for (name, value) in &mut fields {
            if name == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                *value = b"localhost".to_vec();
            }
        }
        out.push(Segment::Block {
            stream_id,
            end_stream,
            priority,
            fields,
        });
    }
}

/// Reads an HPACK integer with an `prefix_bits` prefix (RFC 7541 §5.1).
fn hpack_int(block: &mut &[u8], prefix_bits: u8) -> Option<usize> {
    let max = (1usize << prefix_bits) - 1;
    let (&first, rest) = block.split_first()?;
    *block = rest;
    let mut value = usize::from(first) & max;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let (&b, rest) = block.split_first()?;
        *block = rest;
        value = value.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
}

/// Skips an HPACK string literal.
fn hpack_skip_string(block: &mut &[u8]) -> Option<()> {
    let len = hpack_int(block, 7)?;
    *block = block.get(len..)?;
    Some(())
}

/// Checks that a block the filter wrote uses only "indexed" (static entries) and "literal
/// without indexing": it never adds to, resizes or refers to the server's dynamic table.
fn assert_static_only(mut block: &[u8]) {
    while let Some(&first) = block.first() {
        if first & 0x80 != 0 {
            let index = hpack_int(&mut block, 7).expect("indexed field");
            assert!((1..=STATIC_ENTRIES).contains(&index), "indexed {index}");
        } else {
            assert_eq!(first & 0xf0, 0, "only literal without indexing: {first:#x}");
            let index = hpack_int(&mut block, 4).expect("literal name index");
            assert!(index <= STATIC_ENTRIES, "name index {index}");
            if index == 0 {
                hpack_skip_string(&mut block).expect("literal name");
            }
            hpack_skip_string(&mut block).expect("literal value");
        }
    }
}

/// Parses what the filter produced. Returns the segments and whether the output ends between
/// frames. A cut is only allowed inside a raw frame (a header block is written whole).
pub(crate) fn parse_output(output: &[u8]) -> (Vec<Segment>, bool) {
    let mut out = Vec::new();
    let n = output.len().min(HTTP2_PREFACE.len());
    assert_eq!(
        output[..n],
        HTTP2_PREFACE[..n],
        "the preface passes unchanged"
    );
    push_raw(&mut out, &output[..n]);
    if n < HTTP2_PREFACE.len() {
        return (out, n == 0);
    }
    let mut rest = &output[n..];
    while !rest.is_empty() {
        if rest.len() < FRAME_HEADER_LEN {
            push_raw(&mut out, rest);
            return (out, false);
        }
        let h = head(rest);
        let after = &rest[FRAME_HEADER_LEN..];
        match h.frame_type {
            HEADERS => {}
            CONTINUATION => panic!("a CONTINUATION outside a header block in the output"),
            _ => {
                let take = h.len.min(after.len());
                push_raw(&mut out, &rest[..FRAME_HEADER_LEN + take]);
                if take < h.len {
                    return (out, false);
                }
                rest = &after[h.len..];
                continue;
            }
        }
        // A header block as the filter writes it.
        assert_eq!(
            h.flags & !(END_STREAM | END_HEADERS | PRIORITY),
            0,
            "HEADERS flags {:#x}",
            h.flags
        );
        assert!(h.len <= MAX_FRAME, "HEADERS frame of {} bytes", h.len);
        let payload = after.get(..h.len).expect("a header block is written whole");
        let (priority, first) = if h.flags & PRIORITY != 0 {
            let (p, f) = payload.split_at_checked(5).expect("priority fields");
            (Some(p.to_vec()), f)
        } else {
            (None, payload)
        };
        let mut fragments = first.to_vec();
        rest = &after[h.len..];
        let mut flags = h.flags;
        while flags & END_HEADERS == 0 {
            assert!(
                rest.len() >= FRAME_HEADER_LEN,
                "a header block is written whole"
            );
            let c = head(rest);
            assert_eq!(c.frame_type, CONTINUATION, "header block interrupted");
            assert_eq!(c.stream_id, h.stream_id, "CONTINUATION on another stream");
            assert_eq!(
                c.flags & !END_HEADERS,
                0,
                "CONTINUATION flags {:#x}",
                c.flags
            );
            assert!(c.len <= MAX_FRAME, "CONTINUATION frame of {} bytes", c.len);
            let payload = rest[FRAME_HEADER_LEN..]
                .get(..c.len)
                .expect("a header block is written whole");
            fragments.extend_from_slice(payload);
            rest = &rest[FRAME_HEADER_LEN + c.len..];
            flags = c.flags;
        }
        assert_static_only(&fragments);
        // A fresh decoder: the block stands on its own, as the server's empty table requires.
        let fields = Decoder::new()
            .decode(&fragments)
            .expect("the filter's header blocks decode");
        for (name, value) in &fields {
            if name == b":authority" {
                assert!(Authority::try_from(value.as_slice()).is_ok(), "{value:?}");
            }
        }
        out.push(Segment::Block {
            stream_id: h.stream_id,
            end_stream: h.flags & END_STREAM != 0,
            priority,
            fields,
        });
    }
    (out, true)
}
