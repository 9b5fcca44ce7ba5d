//! The framed-link example in `docs/wire-format.md` is what the codec
//! produces, and decodes back to its envelope.

use lanyard_core::agent::messages::MessageKind;
use lanyard_nostd::envelope::{decode_envelope, encode_envelope};
use lanyard_nostd::frame::{FrameDecoder, encode_frame};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex line after `marker` in the doc.
fn doc_example(marker: &str) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/wire-format.md"
    ))
    .expect("docs/wire-format.md");
    let mut lines = doc.lines().skip_while(|l| !l.contains(marker));
    lines
        .next()
        .unwrap_or_else(|| panic!("{marker} is in the doc"));
    assert_eq!(lines.next(), Some("```hex"));
    lines.next().unwrap().trim().to_string()
}

#[test]
fn the_documented_frame_is_the_ack_example_framed() {
    // The `ack` example of the same document.
    let ack = [
        0xa4, 0x00, 0x62, 0x63, 0x39, 0x01, 0x04, 0x02, 0x02, 0x05, 0x1b, 0x00, 0x00, 0x01, 0x8b,
        0xcf, 0xe5, 0x6b, 0xe8,
    ];
    let mut env = [0u8; 128];
    let n = encode_envelope("ly-0a1b2c3d4e5f", MessageKind::Ack, &ack, &mut env).unwrap();
    let mut frame = [0u8; 160];
    let m = encode_frame(&env[..n], &mut frame).unwrap();
    assert_eq!(hex(&frame[..m]), doc_example("<!-- frame-example ack -->"));
    let mut d: FrameDecoder<160> = FrameDecoder::new();
    let mut seen = 0;
    d.feed(&frame[..m], |payload| {
        let e = decode_envelope(payload).unwrap();
        assert_eq!(
            (e.device_id, e.kind, e.message),
            ("ly-0a1b2c3d4e5f", MessageKind::Ack, &ack[..])
        );
        seen += 1;
    });
    assert_eq!(seen, 1);
}
