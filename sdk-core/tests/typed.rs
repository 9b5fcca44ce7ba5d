//! Typed state (the `serde` feature): structs to trees and back, through
//! CBOR messages, partial deltas into `Option` fields, errors that name the
//! path and leave nothing half done, and the agent reporting a struct.

mod common;

use common::sim::*;
use lanyard_core::agent::messages::MessageKind;
use lanyard_core::shadow::typed::{TypedError, TypedErrorKind, from_tree, to_tree};
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Valve {
    position: u8,
    limit: i64,
    flow_lpm: f64,
    open: bool,
    label: String,
    mode: Mode,
    motor: Motor,
    calibration: Option<Calibration>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
enum Mode {
    Manual,
    Auto,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Motor {
    speed_pct_s: f32,
    faults: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Calibration {
    travel_pct: u16,
    at_ms: u64,
}

/// What a delta may carry: any of the valve's settable properties.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
struct ValveDelta {
    position: Option<u8>,
    mode: Option<Mode>,
    motor: Option<MotorDelta>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
struct MotorDelta {
    speed_pct_s: Option<f32>,
}

type Tree = StateTree<32, 1024>;

fn valves() -> impl Strategy<Value = Valve> {
    (
        (any::<u8>(), any::<i64>(), any::<f64>(), any::<bool>()),
        "[a-z ]{0,20}",
        prop_oneof![Just(Mode::Manual), Just(Mode::Auto)],
        (any::<f32>(), any::<u32>()),
        proptest::option::of((any::<u16>(), 0..i64::MAX as u64)),
    )
        .prop_map(
            |((position, limit, flow_lpm, open), label, mode, (speed, faults), cal)| Valve {
                position,
                limit,
                flow_lpm,
                open,
                label,
                mode,
                motor: Motor {
                    speed_pct_s: speed,
                    faults,
                },
                calibration: cal.map(|(travel_pct, at_ms)| Calibration { travel_pct, at_ms }),
            },
        )
}

/// Floats compare by bits, as the shadow does (NaN included).
fn same(a: &Valve, b: &Valve) -> bool {
    a.flow_lpm.to_bits() == b.flow_lpm.to_bits()
        && a.motor.speed_pct_s.to_bits() == b.motor.speed_pct_s.to_bits()
        && Valve {
            flow_lpm: 0.0,
            motor: Motor {
                speed_pct_s: 0.0,
                ..a.motor.clone()
            },
            ..a.clone()
        } == Valve {
            flow_lpm: 0.0,
            motor: Motor {
                speed_pct_s: 0.0,
                ..b.motor.clone()
            },
            ..b.clone()
        }
}

proptest! {
    #[test]
    fn a_struct_round_trips_through_a_tree_and_a_cbor_message(v in valves()) {
        let mut tree = Tree::new();
        to_tree(&v, &mut tree).unwrap();
        let back: Valve = from_tree(&tree).unwrap();
        prop_assert!(same(&back, &v), "{back:?} != {v:?}");

        // As a device's report on the wire and back.
        let mut up: ShadowUpdate<32, 1024> = ShadowUpdate::new(1);
        up.reported = Some(tree.clone());
        let mut buf = vec![0u8; 4096];
        let n = up.encode(&mut buf).unwrap();
        let decoded: ShadowUpdate<32, 1024> = ShadowUpdate::decode(&buf[..n]).unwrap();
        let back: Valve = from_tree(decoded.reported.as_ref().unwrap()).unwrap();
        prop_assert!(same(&back, &v), "{back:?} != {v:?}");
    }
}

#[test]
fn a_partial_delta_fills_only_the_fields_it_holds() {
    let mut state = Tree::new();
    let p = |d: &str| PathBuf::from_dotted(d).unwrap();
    state.insert(&p("mode"), Value::Text("Auto")).unwrap();
    state
        .insert(&p("motor.speed_pct_s"), Value::Float(2.5))
        .unwrap();
    // A key the type does not know is passed over.
    state
        .insert(&p("firmware_channel"), Value::Text("beta"))
        .unwrap();
    let bytes = delta_bytes(3, 1_000, &[]);
    let mut d: ShadowDelta<32, 1024> = ShadowDelta::decode(&bytes).unwrap();
    d.state = state;
    let delta: ValveDelta = from_tree(&d.state).unwrap();
    assert_eq!(
        delta,
        ValveDelta {
            position: None,
            mode: Some(Mode::Auto),
            motor: Some(MotorDelta {
                speed_pct_s: Some(2.5)
            }),
        }
    );
    // An empty delta is all None.
    assert_eq!(
        from_tree::<ValveDelta, 32, 1024>(&Tree::new()).unwrap(),
        ValveDelta::default()
    );
}

#[test]
fn errors_name_the_path_and_leave_nothing_half_done() {
    let p = |d: &str| PathBuf::from_dotted(d).unwrap();
    // Text where a number is expected, two levels down.
    let mut t = Tree::new();
    t.insert(&p("motor.speed_pct_s"), Value::Text("fast"))
        .unwrap();
    let e: TypedError = from_tree::<ValveDelta, 32, 1024>(&t).unwrap_err();
    assert_eq!(
        (e.path(), &e.kind),
        ("motor.speed_pct_s", &TypedErrorKind::WrongType)
    );
    assert_eq!(e.to_string(), "motor.speed_pct_s: wrong type");
    // A number out of the field's range is the wrong type too.
    let mut t = Tree::new();
    t.insert(&p("position"), Value::Int(300)).unwrap();
    let e = from_tree::<ValveDelta, 32, 1024>(&t).unwrap_err();
    assert_eq!(
        (e.path(), &e.kind),
        ("position", &TypedErrorKind::WrongType)
    );
    // A leaf where a struct is expected.
    let mut t = Tree::new();
    t.insert(&p("motor"), Value::Int(1)).unwrap();
    let e = from_tree::<ValveDelta, 32, 1024>(&t).unwrap_err();
    assert_eq!((e.path(), &e.kind), ("motor", &TypedErrorKind::WrongType));
    // A required field missing, inside a nested struct.
    let mut t = Tree::new();
    t.insert(&p("calibration.at_ms"), Value::Int(5)).unwrap();
    let e = from_tree::<Option<Calibration>, 32, 1024>(&t);
    assert!(e.is_err());
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        calibration: Calibration,
    }
    let e = from_tree::<Outer, 32, 1024>(&t).unwrap_err();
    assert_eq!(
        (e.path(), &e.kind),
        ("calibration", &TypedErrorKind::MissingField("travel_pct"))
    );
    // A value that does not fit the tree: nothing is left in it.
    #[derive(Serialize)]
    struct Big {
        a: u8,
        b: u8,
        c: u8,
    }
    let mut small: StateTree<2, 64> = StateTree::new();
    let e = to_tree(&Big { a: 1, b: 2, c: 3 }, &mut small).unwrap_err();
    assert_eq!(e.path(), "c");
    assert!(matches!(e.kind, TypedErrorKind::Tree(_)));
    assert!(small.is_empty());
    // A sequence is not mapped yet: said so, with its place.
    #[derive(Serialize)]
    struct WithList {
        list: [u8; 2],
    }
    let e = to_tree(&WithList { list: [1, 2] }, &mut Tree::new()).unwrap_err();
    assert_eq!(
        (e.path(), &e.kind),
        ("list", &TypedErrorKind::Unsupported("a tuple"))
    );
    // A u64 past the shadow's signed range.
    #[derive(Serialize)]
    struct Huge {
        n: u64,
    }
    let e = to_tree(&Huge { n: u64::MAX }, &mut Tree::new()).unwrap_err();
    assert_eq!((e.path(), &e.kind), ("n", &TypedErrorKind::WrongType));
}

#[test]
fn the_agent_reports_a_struct_all_or_nothing() {
    #[derive(Serialize)]
    struct Reading {
        position: u8,
        motor: Motor,
        calibration: Option<Calibration>,
    }
    let mut sim = Sim::new(1_000_000);
    let (mut agent, _) = registered(&mut sim);
    let r = Reading {
        position: 40,
        motor: Motor {
            speed_pct_s: 10.0,
            faults: 0,
        },
        calibration: None,
    };
    agent.report_typed(1_000, &r).unwrap();
    agent.handle_timeout(1_000, &mut sim.platform());
    let mut sent = Vec::new();
    drain(&mut agent, 1_000, &mut sent);
    let up = sent
        .iter()
        .find(|s| s.kind == MessageKind::ShadowUpdate)
        .map(|s| ShadowUpdate::<16, 512>::decode(&s.bytes).unwrap())
        .expect("a report");
    let reported = up.reported.unwrap();
    assert_eq!(
        reported.get_dotted("position").unwrap().value,
        Value::Int(40)
    );
    assert_eq!(
        reported.get_dotted("motor.faults").unwrap().value,
        Value::Int(0)
    );
    assert!(reported.get_dotted("calibration").is_none());

    // Too much for the device's 16 leaves: nothing of it is kept.
    #[derive(Serialize)]
    struct Many {
        m: std::collections::BTreeMap<String, u8>,
    }
    let many = Many {
        m: (0..20).map(|i| (format!("k{i:02}"), i)).collect(),
    };
    let before = agent.reported().len();
    let e = agent.report_typed(2_000, &many).unwrap_err();
    assert!(matches!(e.kind, TypedErrorKind::Tree(_)), "{e}");
    assert_eq!(agent.reported().len(), before);
}
