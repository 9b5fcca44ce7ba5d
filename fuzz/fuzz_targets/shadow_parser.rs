//! Every CBOR decoder of the shadow: updates, deltas, documents, bare trees.
//! Whatever decodes must re-encode and decode to the same thing, and a
//! failed apply must leave the document unchanged.
#![no_main]

use lanyard_core::shadow::{ConflictPolicy, Shadow, StateTree};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use libfuzzer_sys::fuzz_target;

type Doc = Shadow<16, 512>;

fn encoded(doc: &Doc) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let n = doc.encode(&mut buf).expect("a 16-leaf document fits 8 KiB");
    buf.truncate(n);
    buf
}

fuzz_target!(|data: &[u8]| {
    let mut buf = vec![0u8; 8192];

    if let Ok(t) = StateTree::<16, 512>::decode(data) {
        let n = t.encode(&mut buf).unwrap();
        assert_eq!(StateTree::<16, 512>::decode(&buf[..n]).unwrap(), t);
    }

    if let Ok(d) = ShadowDelta::<16, 512>::decode(data) {
        let n = d.encode(&mut buf).unwrap();
        assert_eq!(ShadowDelta::<16, 512>::decode(&buf[..n]).unwrap(), d);
    }

    if let Ok(doc) = Doc::decode(data, ConflictPolicy::LatestWins) {
        let bytes = encoded(&doc);
        let again = Doc::decode(&bytes, ConflictPolicy::LatestWins).unwrap();
        assert_eq!(encoded(&again), bytes);
    }

    if let Ok(up) = ShadowUpdate::<16, 512>::decode(data) {
        let n = up.encode(&mut buf).unwrap();
        let back = ShadowUpdate::<16, 512>::decode(&buf[..n]).unwrap();
        assert_eq!(back.expected_version, up.expected_version);
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        let before = encoded(&doc);
        if up.apply_to(&mut doc).is_err() {
            assert_eq!(encoded(&doc), before);
        }
    }
});
