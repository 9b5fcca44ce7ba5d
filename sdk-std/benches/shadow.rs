//! Shadow engine against the way a typical std user does it: a
//! `serde_json::Value` merge and diff. Same document, same update, same run.
//!
//! Prints criterion's figures, then a summary with the ratios, and the
//! encoded size of the document in CBOR and in AWS IoT JSON.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use lanyard_core::shadow::{ConflictPolicy, Shadow, StateTree};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use lanyard_std::aws_json;
use serde_json::{Map, Value as Json, json};

type Doc = Shadow; // the default capacity: what a user gets without tuning
type Tree = StateTree;

const SECTIONS: [&str; 5] = ["config", "sensors", "power", "network", "display"];
const GROUPS: [&str; 2] = ["primary", "secondary"];

/// The realistic document: 5 sections x 2 groups x 5 leaves (interval_ms,
/// threshold, enabled, label, calibration) = 50 leaves,
/// 3 levels, mixed types. Two variants differ on every leaf, arrays
/// included.
fn document_json(variant: i64) -> Json {
    let mut root = Map::new();
    for (s, section) in SECTIONS.iter().enumerate() {
        let mut groups = Map::new();
        for (g, group) in GROUPS.iter().enumerate() {
            let n = (s * 10 + g * 5) as i64;
            groups.insert(
                (*group).into(),
                json!({
                    "interval_ms": 15_000 + n + variant,
                    "threshold": 10.5 + (n + variant) as f64,
                    "enabled": (n + variant) % 2 == 0,
                    "label": format!("{section}-{group}-unit-{variant}"),
                    "calibration": [n, n + 1, n + 2 + variant],
                }),
            );
        }
        root.insert((*section).into(), Json::Object(groups));
    }
    Json::Object(root)
}

/// The update: five leaves across sections, values depending on `i`.
fn update_json(i: i64) -> Json {
    json!({
        "config": {"primary": {"interval_ms": 30_000 + i, "enabled": i % 2 == 0}},
        "sensors": {"secondary": {"threshold": 12.25 + i as f64}},
        "power": {"primary": {"label": format!("battery-{}", i % 3)}},
        "display": {"secondary": {"interval_ms": 1_000 + i}},
    })
}

fn tree(v: &Json) -> Tree {
    aws_json::tree_from_json(v.as_object().unwrap(), true).unwrap()
}

// ---- the serde_json way ----

/// Merge with AWS semantics: objects merge, null deletes, anything else
/// replaces.
fn json_merge(target: &mut Json, update: &Json) {
    let (Json::Object(t), Json::Object(u)) = (target, update) else {
        return;
    };
    for (k, v) in u {
        match v {
            Json::Null => {
                t.remove(k);
            }
            Json::Object(_) => {
                let slot = t
                    .entry(k.clone())
                    .or_insert_with(|| Json::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Json::Object(Map::new());
                }
                json_merge(slot, v);
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
}

/// The delta: desired leaves that differ from reported, recursing into
/// objects.
fn json_delta(desired: &Json, reported: &Json) -> Option<Json> {
    match (desired, reported) {
        (Json::Object(d), Json::Object(r)) => {
            let mut out = Map::new();
            for (k, dv) in d {
                let sub = match r.get(k) {
                    Some(rv) => json_delta(dv, rv),
                    None => Some(dv.clone()),
                };
                if let Some(s) = sub {
                    out.insert(k.clone(), s);
                }
            }
            (!out.is_empty()).then_some(Json::Object(out))
        }
        (Json::Object(_), _) => Some(desired.clone()),
        _ => (desired != reported).then(|| desired.clone()),
    }
}

struct JsonShadow {
    desired: Json,
    reported: Json,
}

/// Desired state is variant 0; reported is `reported` (0: in sync, so a
/// delta holds what the update changed; 1: every leaf differs).
fn setup_lanyard_with(reported: i64) -> Box<Doc> {
    let mut doc = Box::new(Doc::new(ConflictPolicy::CloudWins));
    doc.apply_desired(&tree(&document_json(0)), None, 1)
        .unwrap();
    doc.apply_reported(&tree(&document_json(reported)), None, 2)
        .unwrap();
    doc
}

fn setup_json_with(reported: i64) -> JsonShadow {
    JsonShadow {
        desired: document_json(0),
        reported: document_json(reported),
    }
}

fn setup_lanyard() -> Box<Doc> {
    setup_lanyard_with(1)
}

fn setup_json() -> JsonShadow {
    setup_json_with(1)
}

fn lanyard_step(doc: &mut Doc, updates: &[Tree; 2], delta: &mut Tree, i: usize) -> usize {
    doc.apply_desired(&updates[i % 2], None, i as u64).unwrap();
    doc.delta_into(delta).unwrap();
    delta.len()
}

fn json_step(s: &mut JsonShadow, updates: &[Json; 2], i: usize) -> usize {
    json_merge(&mut s.desired, &updates[i % 2]);
    json_delta(&s.desired, &s.reported).map_or(0, |d| d.as_object().unwrap().len())
}

/// The update is decoded into a buffer the caller keeps, as a driver does.
fn lanyard_wire_step(
    doc: &mut Doc,
    up: &mut ShadowUpdate,
    wires: &[Vec<u8>; 2],
    delta: &mut Tree,
    i: usize,
) -> usize {
    up.decode_into(&wires[i % 2]).unwrap();
    up.apply_to(doc).unwrap();
    doc.delta_into(delta).unwrap();
    delta.len()
}

/// The whole path a twin host pays for: update bytes in, decoded, applied,
/// the delta computed and encoded for the device.
fn lanyard_full_step(
    doc: &mut Doc,
    up: &mut ShadowUpdate,
    wires: &[Vec<u8>; 2],
    delta: &mut ShadowDelta,
    out: &mut [u8],
    i: usize,
) -> usize {
    up.decode_into(&wires[i % 2]).unwrap();
    up.apply_to(doc).unwrap();
    doc.delta_into(&mut delta.state).unwrap();
    delta.version = doc.version();
    delta.encode(out).unwrap()
}

fn json_full_step(s: &mut JsonShadow, wires: &[Vec<u8>; 2], i: usize) -> usize {
    let up: Json = serde_json::from_slice(&wires[i % 2]).unwrap();
    json_merge(&mut s.desired, &up["state"]["desired"]);
    let delta = json_delta(&s.desired, &s.reported).unwrap_or(Json::Null);
    serde_json::to_vec(&json!({"version": i, "state": delta}))
        .unwrap()
        .len()
}

fn json_wire_step(s: &mut JsonShadow, wires: &[Vec<u8>; 2], i: usize) -> usize {
    let up: Json = serde_json::from_slice(&wires[i % 2]).unwrap();
    json_merge(&mut s.desired, &up["state"]["desired"]);
    json_delta(&s.desired, &s.reported).map_or(0, |d| d.as_object().unwrap().len())
}

/// Best of 5 batches, ns per operation: a summary in the same run, beside
/// criterion's distributions.
fn ns_per_op(mut f: impl FnMut(usize) -> usize) -> f64 {
    let batch = 20_000;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..batch {
            black_box(f(i));
        }
        best = best.min(t.elapsed());
    }
    best.as_nanos() as f64 / batch as f64
}

fn main() {
    let updates = [tree(&update_json(1)), tree(&update_json(2))];
    let json_updates = [update_json(1), update_json(2)];
    let wires: [Vec<u8>; 2] = core::array::from_fn(|i| {
        let mut up: ShadowUpdate = ShadowUpdate::new(5);
        up.desired = Some(updates[i].clone());
        let mut buf = vec![0u8; 4096];
        let n = up.encode(&mut buf).unwrap();
        buf.truncate(n);
        buf
    });
    let json_wires: [Vec<u8>; 2] = core::array::from_fn(|i| {
        serde_json::to_vec(&json!({"state": {"desired": json_updates[i]}})).unwrap()
    });

    // Both ways compute the same delta.
    {
        let (mut doc, mut js) = (setup_lanyard(), setup_json());
        let mut delta = Box::new(Tree::new());
        lanyard_step(&mut doc, &updates, &mut delta, 1);
        json_step(&mut js, &json_updates, 1);
        let expected = json_delta(&js.desired, &js.reported).unwrap();
        assert_eq!(
            aws_json::tree_to_json(&delta),
            expected,
            "the two ways disagree"
        );
        assert_eq!(aws_json::tree_to_json(doc.desired()), js.desired);
    }

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("apply update + delta (50 leaves, 3 levels)");
        let mut doc = setup_lanyard();
        let mut delta = Box::new(Tree::new());
        let mut i = 0;
        g.bench_function("lanyard", |b| {
            b.iter(|| {
                i += 1;
                lanyard_step(&mut doc, &updates, &mut delta, i)
            })
        });
        let mut js = setup_json();
        g.bench_function("serde_json Value", |b| {
            b.iter(|| {
                i += 1;
                json_step(&mut js, &json_updates, i)
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("decode + apply + delta from wire bytes");
        let mut up: Box<ShadowUpdate> = Box::new(ShadowUpdate::new(0));
        let mut doc = setup_lanyard();
        let mut delta = Box::new(Tree::new());
        let mut i = 0;
        g.bench_function("lanyard CBOR", |b| {
            b.iter(|| {
                i += 1;
                lanyard_wire_step(&mut doc, &mut up, &wires, &mut delta, i)
            })
        });
        let mut js = setup_json();
        g.bench_function("serde_json JSON", |b| {
            b.iter(|| {
                i += 1;
                json_wire_step(&mut js, &json_wires, i)
            })
        });
        g.finish();
    }

    // Summary with ratios, measured now, in this process.
    let (mut doc, mut js) = (setup_lanyard(), setup_json());
    let mut delta = Box::new(Tree::new());
    let ours = ns_per_op(|i| lanyard_step(&mut doc, &updates, &mut delta, i));
    let theirs = ns_per_op(|i| json_step(&mut js, &json_updates, i));
    let mut split_doc = setup_lanyard();
    let apply_only = ns_per_op(|i| {
        split_doc
            .apply_desired(&updates[i % 2], None, i as u64)
            .unwrap();
        0
    });
    let delta_only = ns_per_op(|_| {
        split_doc.delta_into(&mut delta).unwrap();
        delta.len()
    });
    let (mut doc, mut js) = (setup_lanyard(), setup_json());
    let mut up: Box<ShadowUpdate> = Box::new(ShadowUpdate::new(0));
    let ours_wire = ns_per_op(|i| lanyard_wire_step(&mut doc, &mut up, &wires, &mut delta, i));
    let theirs_wire = ns_per_op(|i| json_wire_step(&mut js, &json_wires, i));

    // The whole path on a small delta (desired and reported in sync, the
    // update changes up to 5 leaves) and on a full one (every leaf
    // differs, arrays included).
    let mut whole_path = |reported: i64| {
        let (mut doc, mut js) = (setup_lanyard_with(reported), setup_json_with(reported));
        let mut full_delta: Box<ShadowDelta> = Box::new(ShadowDelta::empty());
        let mut out = vec![0u8; 64 * 1024];
        let ours = ns_per_op(|i| {
            lanyard_full_step(&mut doc, &mut up, &wires, &mut full_delta, &mut out, i)
        });
        let leaves = full_delta.state.len();
        let theirs = ns_per_op(|i| json_full_step(&mut js, &json_wires, i));
        (ours, theirs, leaves)
    };
    let small = whole_path(0);
    let full = whole_path(1);
    let mut out = vec![0u8; 64 * 1024];
    let whole = tree(&document_json(0));
    let encode_only = ns_per_op(|_| whole.encode(&mut out).unwrap());

    let doc = setup_lanyard();
    let mut buf = vec![0u8; 64 * 1024];
    let cbor_doc = doc.encode(&mut buf).unwrap();
    let json_doc =
        serde_json::to_vec(&aws_json::get_document(&doc, 1_700_000_000_000, None).unwrap())
            .unwrap()
            .len();
    let cbor_state = doc.desired().encoded_len();
    let json_state = serde_json::to_vec(&aws_json::tree_to_json(doc.desired()))
        .unwrap()
        .len();
    println!("\n== lanyard shadow benchmark summary (best of 5 x 20000, this run) ==");
    println!("apply update + delta, 50 leaves / 3 levels:");
    println!("  lanyard           {ours:>10.0} ns/op");
    println!("  serde_json Value  {theirs:>10.0} ns/op");
    println!(
        "  speed-up          {:>10.1}x   (target >= 10x)",
        theirs / ours
    );
    println!("  (lanyard alone: apply {apply_only:.0} ns, delta {delta_only:.0} ns)");
    println!("decode + apply + delta from wire bytes:");
    println!("  lanyard CBOR      {ours_wire:>10.0} ns/op");
    println!("  serde_json JSON   {theirs_wire:>10.0} ns/op");
    println!("  speed-up          {:>10.1}x", theirs_wire / ours_wire);
    println!("update bytes in -> decode -> apply -> delta -> encoded delta out:");
    for (what, (ours, theirs, leaves)) in [("small", small), ("full", full)] {
        println!("  {what} delta ({leaves} leaves):");
        println!("    lanyard CBOR      {ours:>10.0} ns/op");
        println!("    serde_json JSON   {theirs:>10.0} ns/op");
        println!(
            "    speed-up          {:>10.1}x   (target >= 10x)",
            theirs / ours
        );
    }
    println!(
        "encode a {}-leaf tree: {encode_only:.0} ns (target < 1000 ns)",
        whole.len()
    );
    println!("encoded size of the document (desired + reported + metadata + version):");
    println!("  CBOR (lanyard document, incl. sync state) {cbor_doc:>6} B");
    println!("  AWS IoT JSON (get/accepted document)      {json_doc:>6} B");
    println!(
        "  ratio CBOR / JSON                         {:>6.2}   (target <= 0.50)",
        cbor_doc as f64 / json_doc as f64
    );
    println!("encoded size of the desired state alone:");
    println!(
        "  CBOR {cbor_state} B, JSON {json_state} B, ratio {:.2}",
        cbor_state as f64 / json_state as f64
    );
    c.final_summary();
}
