//! HPACK encoding that never indexes (RFC 7541): only the static table is referenced, so the
//! server's dynamic table stays empty whatever the client's encoder did. And
//! [`plain_literals`], which keeps Huffman decoding cheap on the decoding side.

use std::borrow::Cow;

use loona_hpack::decoder::{DecoderError, StringDecodingError};
use loona_hpack::huffman::HuffmanDecoder;

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
pub(super) fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
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
/// Rewrites every Huffman-coded string literal of a header block as a plain literal: the block
/// decodes to the same header list with the same dynamic-table changes, but `loona-hpack` never
/// decodes Huffman itself. It builds a 257-entry hash table for *every* Huffman string (about
/// 16 us of CPU a string), so a client could make one 16 KiB block of one-byte Huffman strings
/// cost ~100 ms of CPU, and a 1 MiB block seconds (found by the h2_authority fuzz target, see
/// FUZZING.md). Here one decoder serves the whole block. Blocks without Huffman strings are
/// returned as they are.
///
/// From a representation it cannot walk (a truncated or over-long integer or string) on, the
/// block is copied unchanged, for the HPACK decoder to refuse; every integer `loona-hpack`
/// accepts (at most 5 octets) is walked.
///
/// # Errors
/// A Huffman string that does not decode (EOS inside, bad padding), as the decoder reports it.
pub(super) fn plain_literals(block: &[u8]) -> Result<Cow<'_, [u8]>, DecoderError> {
    let mut out: Option<Vec<u8>> = None;
    let mut huffman: Option<HuffmanDecoder> = None;
    let mut pos = 0;
    'fields: while let Some(&first) = block.get(pos) {
        // RFC 7541 §6: the representation, its integer prefix, and how many string literals
        // follow the integer (a literal field with a literal name has two).
        let (prefix_bits, literal) = match first {
            b if b & 0x80 != 0 => (7, false), // indexed field
            b if b & 0x40 != 0 => (6, true),  // literal with incremental indexing
            b if b & 0x20 != 0 => (5, false), // dynamic table size update
            _ => (4, true),                   // literal without indexing / never indexed
        };
        let Some((index, n)) = decode_integer(&block[pos..], prefix_bits) else {
            break;
        };
        if let Some(out) = out.as_mut() {
            out.extend_from_slice(&block[pos..pos + n]);
        }
        pos += n;
        let strings = match (literal, index) {
            (false, _) => 0,
            (true, 0) => 2,
            (true, _) => 1,
        };
        for _ in 0..strings {
            let Some((len, n)) = block.get(pos..).and_then(|b| decode_integer(b, 7)) else {
                break 'fields;
            };
            let Some(raw) = block.get(pos + n..).and_then(|b| b.get(..len)) else {
                break 'fields;
            };
            if block[pos] & 0x80 != 0 {
                let out = out.get_or_insert_with(|| block[..pos].to_vec());
                let decoded = huffman
                    .get_or_insert_with(HuffmanDecoder::new)
                    .decode(raw)
                    .map_err(|e| {
                        DecoderError::StringDecodingError(StringDecodingError::HuffmanDecoderError(
                            e,
                        ))
                    })?;
                encode_string(out, &decoded);
            } else if let Some(out) = out.as_mut() {
                out.extend_from_slice(&block[pos..pos + n + len]);
            }
            pos += n + len;
        }
    }
    Ok(match out {
        None => Cow::Borrowed(block),
        Some(mut out) => {
            out.extend_from_slice(&block[pos..]);
            Cow::Owned(out)
        }
    })
}

/// An HPACK integer with an N-bit prefix, as `loona-hpack` reads it (at most 5 octets): the value
/// and the octets used, or `None` where it would fail.
fn decode_integer(buf: &[u8], prefix_bits: u8) -> Option<(usize, usize)> {
    let max = (1usize << prefix_bits) - 1;
    let mut value = usize::from(*buf.first()?) & max;
    if value < max {
        return Some((value, 1));
    }
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
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
        let mut decoder = loona_hpack::Decoder::new();
        let decoded = decoder.decode(&block).expect("our encoding is valid hpack");
        assert_eq!(decoded, fields);
        // Index 62 would be the first dynamic entry: there must be none.
        assert!(decoder.decode(&[0x80 | 62]).is_err());
    }

    /// Regression (h2_authority fuzz target): a block of many tiny Huffman strings reaches the
    /// HPACK decoder as plain literals, so its per-string Huffman table is never built, and it
    /// decodes to the same fields with the same dynamic-table entries.
    #[test]
    fn huffman_literals_are_handed_on_as_plain_literals_with_the_same_meaning() {
        // "a" is the 5-bit Huffman code 00011, padded with 1s: 0x1f.
        let huffman_a = [0x81, 0x1f];
        // A dynamic table size update (to 4096) may only open a block.
        let mut block = vec![0x3f, 0xe1, 0x1f];
        for _ in 0..3000 {
            block.push(0x00); // literal without indexing, literal name
            block.extend_from_slice(&huffman_a);
            block.extend_from_slice(&huffman_a);
        }
        // Literal with incremental indexing, indexed name (:path), Huffman value; then a plain
        // literal, and an indexed field referring to the new dynamic entry.
        block.extend_from_slice(&[0x44, 0x81, 0x1f, 0x00, 0x01, b'x', 0x01, b'y', 0xbe]);
        let plain = plain_literals(&block).expect("valid huffman");
        assert!(matches!(plain, Cow::Owned(_)));
        let mut walk = &plain[..];
        let mut huffman_strings = 0;
        while let Some(&first) = walk.first() {
            let (bits, literal) = match first {
                b if b & 0x80 != 0 => (7, false),
                b if b & 0x40 != 0 => (6, true),
                b if b & 0x20 != 0 => (5, false),
                _ => (4, true),
            };
            let (index, n) = decode_integer(walk, bits).expect("integer");
            walk = &walk[n..];
            for _ in 0..match (literal, index) {
                (false, _) => 0,
                (true, 0) => 2,
                _ => 1,
            } {
                huffman_strings += usize::from(walk[0] & 0x80 != 0);
                let (len, n) = decode_integer(walk, 7).expect("length");
                walk = &walk[n + len..];
            }
        }
        assert_eq!(huffman_strings, 0);
        let expected = loona_hpack::Decoder::new()
            .decode(&block)
            .expect("valid block");
        let got = loona_hpack::Decoder::new()
            .decode(&plain)
            .expect("valid block");
        assert_eq!(got, expected);
        assert_eq!(got.len(), 3003);
        assert_eq!(got[3000], (b":path".to_vec(), b"a".to_vec()));
        assert_eq!(
            got[3002], got[3000],
            "index 62 is the entry the block added"
        );
    }

    #[test]
    fn blocks_without_huffman_are_borrowed_and_broken_ones_stay_broken() {
        let block = [0x82, 0x86, 0x04, 0x01, b'/'];
        assert!(matches!(plain_literals(&block), Ok(Cow::Borrowed(b)) if b == block));
        // A Huffman string holding EOS (30 bits of 1s) is refused like the decoder does.
        assert!(matches!(
            plain_literals(&[0x00, 0x81, 0x1f, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(DecoderError::StringDecodingError(
                StringDecodingError::HuffmanDecoderError(_)
            ))
        ));
        // A truncated string or an integer of 6 octets is copied unchanged, after the rewritten
        // part, for the decoder to refuse.
        let cut = [0x00, 0x81, 0x1f, 0x85, 0x1f];
        let out = plain_literals(&cut).expect("left to the decoder");
        assert_eq!(&out[..], &[0x00, 0x01, b'a', 0x85, 0x1f]);
        assert!(loona_hpack::Decoder::new().decode(&out).is_err());
        let long = [0x00, 0x81, 0x1f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x01];
        let out = plain_literals(&long).expect("left to the decoder");
        assert_eq!(
            &out[..],
            &[0x00, 0x01, b'a', 0x7f, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert!(loona_hpack::Decoder::new().decode(&out).is_err());
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
}
