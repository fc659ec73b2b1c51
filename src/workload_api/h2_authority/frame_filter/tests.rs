//! Buffer release of the frame filter.

use super::*;

#[test]
fn idle_filter_holds_no_buffers_after_a_header_block() {
    let mut filter = FrameFilter::new(super::super::DEFAULT_HEADER_TABLE_SIZE);
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
