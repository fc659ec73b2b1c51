//! HPACK encoding that never indexes (RFC 7541): only the static table is referenced, so the
//! server's dynamic table stays empty whatever the client's encoder did.

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
