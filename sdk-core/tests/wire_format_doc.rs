//! Every hex example in `docs/wire-format.md` decodes as the message it is
//! labelled with, and encodes back to the same bytes.

use lanyard_core::shadow::{ConflictPolicy, Shadow};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};

fn examples() -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire-format.md");
    let doc = std::fs::read_to_string(path).expect("docs/wire-format.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- example ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next(),
            Some("```hex"),
            "example {name} needs a hex block"
        );
        let hex = lines.next().unwrap().trim();
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.push((name.to_string(), bytes));
    }
    out
}

#[test]
fn every_example_decodes_and_re_encodes_identically() {
    let examples = examples();
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["shadow-update", "shadow-delta", "shadow-document"]);
    let mut buf = vec![0u8; 4096];
    for (name, bytes) in &examples {
        let n = match name.as_str() {
            "shadow-update" => {
                let m: ShadowUpdate<8, 256> = ShadowUpdate::decode(bytes).unwrap();
                assert_eq!(m.expected_version, Some(7));
                assert_eq!(m.reported.as_ref().unwrap().len(), 3);
                m.encode(&mut buf).unwrap()
            }
            "shadow-delta" => {
                let m: ShadowDelta<8, 256> = ShadowDelta::decode(bytes).unwrap();
                assert_eq!(m.version, 1);
                m.encode(&mut buf).unwrap()
            }
            "shadow-document" => {
                let m: Shadow<8, 256> = Shadow::decode(bytes, ConflictPolicy::CloudWins).unwrap();
                assert_eq!(m.version(), 2);
                assert!(m.in_sync());
                m.encode(&mut buf).unwrap()
            }
            other => panic!("unknown example {other}"),
        };
        assert_eq!(&buf[..n], &bytes[..], "{name} re-encodes differently");
    }
}
