//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod sim;

use lanyard_core::shadow::{PathBuf, StateTree, Value};

pub type Tree = StateTree<64, 4096>;
pub type Doc = lanyard_core::shadow::Shadow<64, 4096>;

/// A tree from `(dotted path, value)` pairs.
#[track_caller]
pub fn tree(pairs: &[(&str, Value<'_>)]) -> Tree {
    let mut t = Tree::new();
    for (p, v) in pairs {
        t.insert(&PathBuf::from_dotted(p).unwrap(), *v).unwrap();
    }
    t
}

/// The tree's leaves as `(dotted path, value debug)` for readable asserts.
pub fn leaves<const L: usize, const P: usize>(t: &StateTree<L, P>) -> Vec<(String, String)> {
    t.iter()
        .map(|e| (e.path.to_string(), format!("{:?}", e.value)))
        .collect()
}

#[track_caller]
pub fn delta(doc: &Doc) -> Vec<(String, String)> {
    let mut d = Tree::new();
    doc.delta_into(&mut d).unwrap();
    leaves(&d)
}

pub fn encoded(doc: &Doc) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = doc.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// CBOR array bytes for `[a, b, ...]` of small ints.
pub fn int_array(items: &[i64]) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    e.array(items.len() as u64).unwrap();
    for i in items {
        e.i64(*i).unwrap();
    }
    e.into_writer()
}
