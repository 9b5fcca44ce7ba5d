//! Property tests: codec round trips, the delta against a plain reference
//! model, convergence of cloud and device under every policy, and random or
//! damaged bytes never changing a document.

mod common;
use std::collections::BTreeMap;

use common::*;
use lanyard_core::shadow::*;
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use proptest::prelude::*;

/// An owned leaf value for strategies and the model.
#[derive(Clone, Debug, PartialEq)]
enum V {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// Canonical CBOR of an int array.
    Arr(Vec<u8>),
}

impl V {
    fn view(&self) -> Value<'_> {
        match self {
            V::Null => Value::Null,
            V::Bool(b) => Value::Bool(*b),
            V::Int(i) => Value::Int(*i),
            V::Float(x) => Value::Float(*x),
            V::Text(s) => Value::Text(s),
            V::Bytes(b) => Value::Bytes(b),
            V::Arr(a) => Value::Array(RawArray::from_cbor(a)),
        }
    }
}

fn value(nulls: bool) -> impl Strategy<Value = V> {
    let some = prop_oneof![
        any::<bool>().prop_map(V::Bool),
        (-3i64..3).prop_map(V::Int),
        any::<i64>().prop_map(V::Int),
        prop_oneof![Just(0.5), Just(-0.0), Just(f64::NAN), any::<f64>()].prop_map(V::Float),
        "[a-z]{0,3}".prop_map(V::Text),
        proptest::collection::vec(any::<u8>(), 0..3).prop_map(V::Bytes),
        proptest::collection::vec(-2i64..2, 0..3).prop_map(|v| V::Arr(int_array(&v))),
    ];
    if nulls {
        prop_oneof![1 => Just(V::Null), 4 => some].boxed()
    } else {
        some.boxed()
    }
}

type Key = Vec<String>;

fn path() -> impl Strategy<Value = Key> {
    proptest::collection::vec(prop_oneof!["a", "b", "c"].prop_map(String::from), 1..=3)
}

fn entries(nulls: bool) -> impl Strategy<Value = Vec<(Key, V)>> {
    proptest::collection::vec((path(), value(nulls)), 0..6)
}

/// A tree from random entries, skipping those that clash with earlier ones.
fn build(entries: &[(Key, V)]) -> Tree {
    let mut t = Tree::new();
    for (k, v) in entries {
        let keys: Vec<&str> = k.iter().map(String::as_str).collect();
        let _ = t.insert_with_meta(
            PathBuf::from_keys(&keys).unwrap().as_path(),
            v.view(),
            LeafMeta::new(Source::Cloud, 0),
        );
    }
    t
}

type Model = BTreeMap<Key, String>;

fn keys_of(p: Path<'_>) -> Key {
    p.keys().map(String::from).collect()
}

fn model_of<const L: usize, const P: usize>(t: &StateTree<L, P>) -> Model {
    t.iter()
        .map(|e| (keys_of(e.path), format!("{:?}", e.value)))
        .collect()
}

/// The AWS merge rules, written the obvious way.
fn model_apply(m: &mut Model, update: &Tree) {
    for e in update.iter() {
        let p = keys_of(e.path);
        m.retain(|k, _| !k.starts_with(&p));
        if e.value != Value::Null {
            m.retain(|k, _| !(p.starts_with(k) && k.len() < p.len()));
            m.insert(p, format!("{:?}", e.value));
        }
    }
}

fn model_delta(desired: &Model, reported: &Model) -> Model {
    desired
        .iter()
        .filter(|(k, v)| reported.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn policy() -> impl Strategy<Value = ConflictPolicy> {
    prop_oneof![
        Just(ConflictPolicy::CloudWins),
        Just(ConflictPolicy::DeviceWins),
        Just(ConflictPolicy::LatestWins),
        Just(ConflictPolicy::ManualResolve),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Cloud(Vec<(Key, V)>),
    Device(Vec<(Key, V)>),
    Sync(u32),
    DeviceAppliesDelta,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => entries(true).prop_map(Op::Cloud),
        3 => entries(true).prop_map(Op::Device),
        2 => any::<u32>().prop_map(Op::Sync),
        2 => Just(Op::DeviceAppliesDelta),
        1 => (0u64..5_000).prop_map(Op::Advance),
    ]
}

/// The device side of the convergence test: its real state, reporting what
/// it changes.
struct Device {
    local: Model,
}

impl Device {
    fn set(&mut self, doc: &mut Doc, update: &Tree, now: u64) {
        model_apply(&mut self.local, update);
        doc.apply_reported(update, None, now).unwrap();
    }

    fn apply_delta(&mut self, doc: &mut Doc, now: u64) {
        let mut delta = Tree::new();
        doc.delta_into(&mut delta).unwrap();
        if !delta.is_empty() {
            self.set(doc, &delta, now);
        }
    }
}

/// Runs one step of a random history; returns the (maybe advanced) time.
fn play(op: &Op, doc: &mut Doc, dev: &mut Device, now: u64) -> u64 {
    match op {
        Op::Cloud(e) => {
            doc.apply_desired(&build(e), None, now).unwrap();
        }
        Op::Device(e) => dev.set(doc, &build(e), now),
        Op::Sync(j) => {
            let _ = doc.sync(now, *j, |_| {});
        }
        Op::DeviceAppliesDelta => dev.apply_delta(doc, now),
        Op::Advance(ms) => return now + ms,
    }
    now
}

/// A nested map of the reference encoder.
#[derive(Default)]
struct Node(BTreeMap<String, Either>);
enum Either {
    Leaf(V),
    Map(Node),
}

/// The tree's encoding written the plain way: a nested map built from the
/// leaves, encoded item by item with minicbor.
fn reference_encoding(t: &Tree) -> Vec<u8> {
    let mut root = Node::default();
    for e in t.iter() {
        let keys = keys_of(e.path);
        let mut at = &mut root;
        for k in &keys[..keys.len() - 1] {
            let next =
                at.0.entry(k.clone())
                    .or_insert_with(|| Either::Map(Node::default()));
            let Either::Map(n) = next else {
                unreachable!("a leaf where a map is")
            };
            at = n;
        }
        let leaf = match e.value {
            Value::Null => V::Null,
            Value::Bool(b) => V::Bool(b),
            Value::Int(i) => V::Int(i),
            Value::Float(x) => V::Float(x),
            Value::Text(s) => V::Text(s.into()),
            Value::Bytes(b) => V::Bytes(b.into()),
            Value::Array(a) => V::Arr(a.as_cbor().into()),
        };
        at.0.insert(keys[keys.len() - 1].clone(), Either::Leaf(leaf));
    }
    fn write(e: &mut minicbor::Encoder<&mut Vec<u8>>, n: &Node) {
        e.map(n.0.len() as u64).unwrap();
        for (k, v) in &n.0 {
            e.str(k).unwrap();
            match v {
                Either::Map(m) => write(e, m),
                Either::Leaf(V::Null) => drop(e.null().unwrap()),
                Either::Leaf(V::Bool(b)) => drop(e.bool(*b).unwrap()),
                Either::Leaf(V::Int(i)) => drop(e.i64(*i).unwrap()),
                Either::Leaf(V::Float(x)) => drop(e.f64(*x).unwrap()),
                Either::Leaf(V::Text(s)) => drop(e.str(s).unwrap()),
                Either::Leaf(V::Bytes(b)) => drop(e.bytes(b).unwrap()),
                Either::Leaf(V::Arr(a)) => e.writer_mut().extend_from_slice(a),
            }
        }
    }
    let mut out = Vec::new();
    write(&mut minicbor::Encoder::new(&mut out), &root);
    out
}

/// Wide and deep trees: maps of more than 23 entries, keys and texts whose
/// heads take 2 or 3 bytes, payloads larger than the encoder's buffer.
fn wide_entries() -> impl Strategy<Value = Vec<(Key, V)>> {
    let key = prop_oneof![
        3 => "[a-z]{1,2}",
        1 => Just("a_key_longer_than_twenty_three_bytes".to_string()),
        1 => Just("é".to_string()),
    ];
    let value = prop_oneof![
        4 => value(false),
        1 => "[a-z]{20,300}".prop_map(V::Text),
        1 => proptest::collection::vec(any::<u8>(), 250..600).prop_map(V::Bytes),
        1 => proptest::collection::vec(any::<i64>(), 0..40).prop_map(|v| V::Arr(int_array(&v))),
    ];
    proptest::collection::vec((proptest::collection::vec(key, 1..=5), value), 0..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn trees_round_trip_through_cbor(e in entries(false)) {
        let t = build(&e);
        let mut buf = vec![0u8; t.encoded_len()];
        let n = t.encode(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        let back = Tree::decode(&buf).unwrap();
        prop_assert_eq!(&back, &t);
        // A buffer as large as the bound is written in one pass: the same
        // bytes as the measured way, and never more than the bound.
        prop_assert!(t.encoded_len_bound() >= n);
        let mut big = vec![0u8; t.encoded_len_bound()];
        let m = t.encode(&mut big).unwrap();
        prop_assert_eq!(&big[..m], &buf[..]);
        // One byte short of the size: refused, untouched.
        if n > 0 {
            let mut short = vec![0xaa; n - 1];
            prop_assert!(t.encode(&mut short).is_err());
            prop_assert!(short.iter().all(|b| *b == 0xaa));
        }
    }

    #[test]
    fn encoding_matches_a_plain_nested_encoder(e in wide_entries()) {
        let t = build(&e);
        let mut buf = vec![0u8; t.encoded_len()];
        let n = t.encode(&mut buf).unwrap();
        prop_assert_eq!(&buf[..n], &reference_encoding(&t)[..]);
        prop_assert_eq!(&Tree::decode(&buf).unwrap(), &t);
    }

    #[test]
    fn updates_and_deltas_round_trip(d in entries(true), r in entries(true), v in any::<Option<u64>>(), ts in any::<u64>()) {
        let mut up: ShadowUpdate<64, 4096> = ShadowUpdate::new(ts);
        up.desired = Some(build(&d));
        up.reported = Some(build(&r));
        up.expected_version = v;
        up.client_token = Some(heapless::String::try_from("tok").unwrap());
        let mut buf = vec![0u8; 8192];
        let n = up.encode(&mut buf).unwrap();
        let back = ShadowUpdate::<64, 4096>::decode(&buf[..n]).unwrap();
        // Decoded leaves carry the side's source; compare values.
        prop_assert_eq!(model_of(back.desired.as_ref().unwrap()), model_of(up.desired.as_ref().unwrap()));
        prop_assert_eq!(model_of(back.reported.as_ref().unwrap()), model_of(up.reported.as_ref().unwrap()));
        prop_assert_eq!((back.expected_version, back.timestamp_ms), (v, ts));

        let delta = ShadowDelta { version: 3, timestamp_ms: ts, state: build(&r.iter().filter(|(_, v)| *v != V::Null).cloned().collect::<Vec<_>>()) };
        let n = delta.encode(&mut buf).unwrap();
        let back: ShadowDelta<64, 4096> = ShadowDelta::decode(&buf[..n]).unwrap();
        prop_assert_eq!(back, delta);
    }

    #[test]
    fn merge_and_delta_match_the_reference_model(ops in proptest::collection::vec((any::<bool>(), entries(true)), 1..12)) {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        let (mut md, mut mr) = (Model::new(), Model::new());
        for (i, (cloud, e)) in ops.iter().enumerate() {
            let up = build(e);
            if *cloud {
                doc.apply_desired(&up, None, i as u64).unwrap();
                model_apply(&mut md, &up);
            } else {
                doc.apply_reported(&up, None, i as u64).unwrap();
                model_apply(&mut mr, &up);
            }
            prop_assert_eq!(doc.version(), i as u64 + 1);
            prop_assert_eq!(model_of(doc.desired()), md.clone());
            prop_assert_eq!(model_of(doc.reported()), mr.clone());
            let mut delta = Tree::new();
            doc.delta_into(&mut delta).unwrap();
            prop_assert_eq!(model_of(&delta), model_delta(&md, &mr));
        }
    }

    #[test]
    fn cloud_and_device_converge_without_oscillation(
        policy in policy(),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let mut doc = Doc::new(policy);
        let mut dev = Device { local: Model::new() };
        let mut now = 1_000u64;
        for op in &ops {
            now += 10;
            now = play(op, &mut doc, &mut dev, now);
        }
        // Quiet period: syncs at the backoff bound, an operator answering
        // parked conflicts, the device following its delta.
        let cap = doc.config().backoff_cap_ms;
        let mut rounds = 0;
        while !(doc.in_sync() && doc.parked().count() == 0) {
            rounds += 1;
            prop_assert!(rounds <= 3, "not converged after 3 rounds: {:?}", doc);
            now += cap + 1;
            let _ = doc.sync(now, u32::MAX, |_| {}).unwrap();
            let parked: Vec<PathBuf> = doc.parked().map(|(p, _)| PathBuf::from_keys(&p.keys().collect::<Vec<_>>()).unwrap()).collect();
            for (i, p) in parked.iter().enumerate() {
                let winner = if i % 2 == 0 { Source::Cloud } else { Source::Device };
                doc.resolve(p.as_path(), winner, now).unwrap();
            }
            dev.apply_delta(&mut doc, now);
        }
        // Both sides hold the same values on every desired leaf.
        for (k, v) in model_of(doc.desired()) {
            prop_assert_eq!(dev.local.get(&k), Some(&v));
        }
        // No oscillation: more syncs change nothing and find no conflict.
        let version = doc.version();
        for _ in 0..3 {
            now += cap + 1;
            let r = doc.sync(now, u32::MAX, |_| {}).unwrap();
            prop_assert_eq!((r.conflicts, r.changed), (0, false));
            dev.apply_delta(&mut doc, now);
        }
        prop_assert_eq!(doc.version(), version);
    }

    #[test]
    fn random_bytes_never_change_a_document(
        setup in entries(false),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut doc = Doc::new(ConflictPolicy::LatestWins);
        doc.apply_desired(&build(&setup), None, 1).unwrap();
        let before = encoded(&doc);

        // A valid update, then damaged copies of it, then noise.
        let mut up: ShadowUpdate<64, 4096> = ShadowUpdate::new(5);
        up.reported = Some(build(&setup));
        up.expected_version = Some(1);
        let mut buf = vec![0u8; 8192];
        let n = up.encode(&mut buf).unwrap();
        let valid = buf[..n].to_vec();
        let mut damaged = valid.clone();
        for (i, b) in &damage {
            let at = i.index(damaged.len());
            damaged[at] ^= b | 1;
        }
        let truncated = valid[..cut.index(valid.len())].to_vec();
        for input in [&damaged, &truncated, &bytes] {
            let mut trial = doc.clone();
            match ShadowUpdate::<64, 4096>::decode(input) {
                Err(_) => prop_assert_eq!(encoded(&trial), before.clone()),
                Ok(u) => if u.apply_to(&mut trial).is_err() {
                    prop_assert_eq!(encoded(&trial), before.clone());
                }
            }
            prop_assert!(Doc::decode(input, ConflictPolicy::CloudWins).is_err() || input.len() > 4);
        }
    }

    #[test]
    fn documents_round_trip_after_random_histories(policy in policy(), ops in proptest::collection::vec(op(), 0..20)) {
        let mut doc = Doc::new(policy);
        let mut dev = Device { local: Model::new() };
        let mut now = 0u64;
        for op in &ops {
            now += 100;
            now = play(op, &mut doc, &mut dev, now);
        }
        let bytes = encoded(&doc);
        let back = Doc::decode(&bytes, policy).unwrap();
        prop_assert_eq!(encoded(&back), bytes);
    }
}
