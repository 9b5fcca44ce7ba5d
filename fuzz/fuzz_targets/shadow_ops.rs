//! Random operation sequences on a small shadow, checking invariants after
//! every step: failed operations change nothing, versions only grow, the
//! delta is exactly the desired leaves that reported lacks or differs on
//! (less parked ones), and the document always round-trips through CBOR.
#![no_main]

use arbitrary::Arbitrary;
use lanyard_core::shadow::{ConflictPolicy, LeafMeta, PathBuf, Shadow, Source, StateTree, Value};
use libfuzzer_sys::fuzz_target;

type Doc = Shadow<8, 256>;
type Tree = StateTree<8, 256>;

#[derive(Arbitrary, Debug)]
enum Val {
    Null,
    Bool(bool),
    Int(i8),
    Text(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Desired(Vec<(u8, Val)>, Option<u8>),
    Reported(Vec<(u8, Val)>, Option<u8>),
    Sync(u16, u32),
    Resolve(u8, bool),
    Policy(u8, u8),
}

const KEYS: [&[&str]; 6] = [
    &["a"],
    &["b"],
    &["a", "x"],
    &["a", "y"],
    &["c", "d", "e"],
    &["c"],
];
const TEXTS: [&str; 3] = ["", "on", "a longer value that eats pool space"];

fn tree(entries: &[(u8, Val)]) -> Tree {
    let mut t = Tree::new();
    for (k, v) in entries {
        let path = PathBuf::from_keys(KEYS[*k as usize % KEYS.len()]).unwrap();
        let value = match v {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(i) => Value::Int(i64::from(*i)),
            Val::Text(i) => Value::Text(TEXTS[*i as usize % TEXTS.len()]),
        };
        let _ = t.insert_with_meta(path.as_path(), value, LeafMeta::new(Source::Cloud, 0));
    }
    t
}

fn encoded(doc: &Doc) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = doc.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn check(doc: &Doc) {
    let mut delta: StateTree<8, 256> = StateTree::new();
    doc.delta_into(&mut delta).unwrap();
    let parked: Vec<Vec<u8>> = doc.parked().map(|(p, _)| p.as_bytes().to_vec()).collect();
    for d in doc.desired().iter() {
        let differs = doc
            .reported()
            .get(d.path)
            .is_none_or(|r| r.value != d.value);
        let expected = differs && !parked.contains(&d.path.as_bytes().to_vec());
        assert_eq!(
            delta.get(d.path).is_some(),
            expected,
            "delta wrong at {}",
            d.path
        );
    }
    assert_eq!(doc.in_sync(), delta.is_empty());
    let bytes = encoded(doc);
    let back = Doc::decode(&bytes, ConflictPolicy::CloudWins).unwrap();
    assert_eq!(encoded(&back), bytes);
}

fuzz_target!(|ops: Vec<Op>| {
    let mut doc = Doc::new(ConflictPolicy::LatestWins);
    let mut now = 0u64;
    for op in ops.iter().take(64) {
        now += 100;
        let before = encoded(&doc);
        let version = doc.version();
        let result = match op {
            Op::Desired(e, v) => doc
                .apply_desired(&tree(e), v.map(u64::from), now)
                .map(|_| ()),
            Op::Reported(e, v) => doc
                .apply_reported(&tree(e), v.map(u64::from), now)
                .map(|_| ()),
            Op::Sync(dt, jitter) => {
                now += u64::from(*dt);
                doc.sync(now, *jitter, |_| {}).map(|_| ())
            }
            Op::Resolve(k, cloud) => {
                let path = PathBuf::from_keys(KEYS[*k as usize % KEYS.len()]).unwrap();
                let winner = if *cloud {
                    Source::Cloud
                } else {
                    Source::Device
                };
                doc.resolve(path.as_path(), winner, now).map(|_| ())
            }
            Op::Policy(k, p) => {
                let path = PathBuf::from_keys(KEYS[*k as usize % KEYS.len()]).unwrap();
                doc.set_policy(&path, ConflictPolicy::ALL[*p as usize % 4])
            }
        };
        if result.is_err() {
            assert_eq!(encoded(&doc), before, "failed {op:?} changed the document");
        }
        assert!(doc.version() >= version);
        check(&doc);
    }
});
