//! Typed state through the AWS IoT JSON mapping: a struct becomes a tree,
//! the tree the JSON an AWS-side client reads and writes, and back, with
//! nothing lost.

use lanyard_core::shadow::StateTree;
use lanyard_core::shadow::typed::{from_tree, to_tree};
use lanyard_std::aws_json::{tree_from_json, tree_to_json};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Thermostat {
    setpoint: i32,
    room_c: f64,
    heating: bool,
    zone: String,
    schedule: Option<Schedule>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Schedule {
    wake_min: u16,
    sleep_min: u16,
}

type Tree = StateTree<32, 1024>;

proptest! {
    #[test]
    fn a_struct_round_trips_through_the_aws_json_mapping(
        setpoint in any::<i32>(),
        // Finite: JSON has no NaN or infinity (the mapping refuses them).
        room_c in -1e9f64..1e9,
        heating in any::<bool>(),
        zone in "[a-z0-9_-]{1,16}",
        schedule in proptest::option::of((any::<u16>(), any::<u16>())),
    ) {
        let t = Thermostat {
            setpoint,
            room_c,
            heating,
            zone,
            schedule: schedule.map(|(wake_min, sleep_min)| Schedule { wake_min, sleep_min }),
        };
        let mut tree = Tree::new();
        to_tree(&t, &mut tree).unwrap();
        let json = tree_to_json(&tree);
        let obj = json.as_object().unwrap().clone();
        let back_tree: Tree = tree_from_json(&obj, false).unwrap();
        let back: Thermostat = from_tree(&back_tree).unwrap();
        prop_assert_eq!(back, t);
    }
}

#[test]
fn the_json_is_what_an_aws_client_expects() {
    let t = Thermostat {
        setpoint: 21,
        room_c: 19.5,
        heating: true,
        zone: "hall".into(),
        schedule: Some(Schedule {
            wake_min: 390,
            sleep_min: 1380,
        }),
    };
    let mut tree = Tree::new();
    to_tree(&t, &mut tree).unwrap();
    assert_eq!(
        tree_to_json(&tree),
        serde_json::json!({
            "setpoint": 21, "room_c": 19.5, "heating": true, "zone": "hall",
            "schedule": {"wake_min": 390, "sleep_min": 1380}
        })
    );
}
