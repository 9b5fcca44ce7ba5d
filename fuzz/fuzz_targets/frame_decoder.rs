//! The serial link's frame decoder fed arbitrary bytes: it never panics,
//! and whatever it passes on is a payload whose frame decodes to itself.
//! Each payload also goes through the envelope decoder (the bridge's and
//! the device driver's next step): no panic, and an accepted envelope
//! re-encodes to one with the same topic and message; the same for the
//! firmware update topics' envelopes.
#![no_main]

use lanyard_nostd::envelope::{decode_envelope, decode_update_envelope, encode_with_topic};
use lanyard_nostd::frame::{FrameDecoder, encode_frame, max_frame_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d: FrameDecoder<256> = FrameDecoder::new();
    let mut passed: Vec<Vec<u8>> = Vec::new();
    d.feed(data, |p| passed.push(p.to_vec()));
    let s = d.stats();
    assert_eq!(s.frames as usize, passed.len());
    for p in passed {
        if let Ok(e) = decode_envelope(&p) {
            let mut buf = vec![0u8; p.len() + 16];
            let n = encode_with_topic(e.topic, e.message, &mut buf).unwrap();
            let again = decode_envelope(&buf[..n]).unwrap();
            assert_eq!(
                (again.topic, again.kind, again.message),
                (e.topic, e.kind, e.message)
            );
        }
        if let Ok(u) = decode_update_envelope(&p) {
            let mut buf = vec![0u8; p.len() + 16];
            let n = encode_with_topic(&u.topic.topic(u.device_id), u.message, &mut buf).unwrap();
            assert_eq!(decode_update_envelope(&buf[..n]).unwrap(), u);
            assert!(
                decode_envelope(&p).is_err(),
                "an update topic is no agent topic"
            );
        }
        let mut buf = vec![0u8; max_frame_len(p.len())];
        let n = encode_frame(&p, &mut buf).unwrap();
        let mut again: FrameDecoder<512> = FrameDecoder::new();
        let mut out = Vec::new();
        again.feed(&buf[..n], |q| out.push(q.to_vec()));
        assert_eq!(out, vec![p]);
    }
});
