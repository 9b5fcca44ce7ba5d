//! The serial link's frame decoder fed arbitrary bytes: it never panics,
//! and whatever it passes on is a payload whose frame decodes to itself.
#![no_main]

use lanyard_nostd::frame::{FrameDecoder, encode_frame, max_frame_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d: FrameDecoder<256> = FrameDecoder::new();
    let mut passed: Vec<Vec<u8>> = Vec::new();
    d.feed(data, |p| passed.push(p.to_vec()));
    let s = d.stats();
    assert_eq!(s.frames as usize, passed.len());
    for p in passed {
        let mut buf = vec![0u8; max_frame_len(p.len())];
        let n = encode_frame(&p, &mut buf).unwrap();
        let mut again: FrameDecoder<512> = FrameDecoder::new();
        let mut out = Vec::new();
        again.feed(&buf[..n], |q| out.push(q.to_vec()));
        assert_eq!(out, vec![p]);
    }
});
