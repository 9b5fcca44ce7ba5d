//! What the agent and the shadow do when a firmware leaves an optional
//! capability out (`default-features = false`, see Cargo.toml). Each test
//! exists only in the build it describes; `scripts/test-all.sh` runs this
//! crate's tests with every capability and with none.
#![allow(unused_imports)]

mod common;

use common::sim::*;
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::*;
use lanyard_core::agent::platform::{Args, CommandFailure, CommandHandler, Completion, Platform};
use lanyard_core::shadow::{PathBuf, RawArray, StateTree, Value};
use lanyard_core::{DecodeError, Error};

/// The final acknowledgement of a command sent at `at`.
fn final_ack(
    agent: &mut SimAgent,
    platform: &mut Platform<'_>,
    at: u64,
    id: &str,
    name: &str,
) -> (AckStatus, Option<AckReason>) {
    let last = command_acks(agent, platform, at, &command(id, name, &[], at))
        .pop()
        .expect("an acknowledgement");
    (last.status, last.reason)
}

#[cfg(not(feature = "persistence"))]
#[test]
fn without_persistence_nothing_is_stored_and_a_reboot_starts_over() {
    let mut sim = Sim::new(1_000_000);
    let (mut agent, _) = registered(&mut sim);
    assert_eq!(agent.state(), LifecycleState::Active);
    let acked = final_ack(&mut agent, &mut sim.platform(), 1_000, "x1", "reboot_modem");
    assert_eq!(acked, (AckStatus::Succeeded, None));
    let enter = final_ack(
        &mut agent,
        &mut sim.platform(),
        1_100,
        "m1",
        "enter_maintenance",
    );
    assert_eq!(enter.0, AckStatus::Succeeded);
    // Every change above would have been saved with the feature.
    assert!(
        sim.storage.slots.is_empty(),
        "{:?}",
        sim.storage.slots.keys()
    );
    assert_eq!(agent.stats().storage_failures, 0);

    drop(agent);
    let mut rebooted = new_agent();
    rebooted.boot(50_000, &mut sim.platform()).expect("boot");
    assert_eq!(rebooted.state(), LifecycleState::Provisioning);
    assert_eq!(rebooted.boot_count(), 1);
    let mut sent = Vec::new();
    drain(&mut rebooted, 50_000, &mut sent);
    assert!(sent.iter().any(|s| s.kind == MessageKind::Register));
}

#[cfg(not(feature = "arrays"))]
#[test]
fn without_arrays_an_array_is_refused_where_it_starts_and_nothing_changes() {
    // {"a": 1, "b": [1, 2]}: the array starts at byte 6.
    let doc = [0xa2, 0x61, b'a', 0x01, 0x61, b'b', 0x82, 0x01, 0x02];
    assert_eq!(
        StateTree::<8, 64>::decode(&doc).unwrap_err(),
        Error::Decode(DecodeError::Unsupported { at: 6 })
    );

    let mut tree: StateTree<8, 64> = StateTree::new();
    tree.insert(&PathBuf::from_dotted("a").unwrap(), Value::Int(1))
        .unwrap();
    let before = tree.clone();
    let array = [0x82, 0x01, 0x02];
    assert!(
        tree.insert(
            &PathBuf::from_dotted("b").unwrap(),
            Value::Array(RawArray::from_cbor(&array)),
        )
        .is_err()
    );
    assert_eq!(tree, before);
}

#[cfg(not(feature = "arrays"))]
#[test]
fn without_arrays_a_delta_holding_one_is_refused_and_the_reported_state_kept() {
    let mut sim = Sim::new(1_000_000);
    let (mut agent, _) = registered(&mut sim);
    let good = delta_bytes(
        3,
        1,
        &[("led.on", Value::Bool(true)), ("zone", Value::Int(7))],
    );
    // The same delta with `zone` an array: "zone" then 7 becomes "zone" then [1, 2].
    let at = good
        .windows(6)
        .position(|w| w == [0x64, b'z', b'o', b'n', b'e', 0x07])
        .expect("zone: 7 in the encoding")
        + 5;
    let mut bad = good[..at].to_vec();
    bad.extend_from_slice(&[0x82, 0x01, 0x02]);
    bad.extend_from_slice(&good[at + 1..]);

    let before = agent.reported().clone();
    let refused = agent.handle_inbound(2_000, MessageKind::ShadowDelta, &bad, &mut sim.platform());
    assert!(
        matches!(
            refused,
            Err(lanyard_core::agent::InboundError::Decode(
                DecodeError::Unsupported { .. }
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(agent.reported(), &before);
    // The same delta without the array is applied.
    agent
        .handle_inbound(2_100, MessageKind::ShadowDelta, &good, &mut sim.platform())
        .unwrap();
    assert_eq!(
        agent.reported().get_dotted("zone").map(|e| e.value),
        Some(Value::Int(7))
    );
}

/// Answers `diagnostics` itself and records every name it is asked for.
#[derive(Default)]
struct OwnDiagnostics {
    asked: Vec<String>,
}

impl CommandHandler for OwnDiagnostics {
    fn execute(
        &mut self,
        _now_ms: u64,
        name: &str,
        _args: Args<'_>,
        result: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        self.asked.push(name.to_string());
        (name == "diagnostics").then(|| {
            result[0] = 0x07;
            Ok(Completion::Done(1))
        })
    }
}

/// With the feature the agent answers `diagnostics` itself; without it the
/// name goes to the application's handler. Board commands such as
/// `read_sensor` are the application's either way.
#[test]
fn diagnostic_command_names_go_to_the_agent_or_else_to_the_application() {
    let mut sim = Sim::new(1_000_000);
    let (mut agent, _) = registered(&mut sim);
    let mut own = OwnDiagnostics::default();
    let mut platform = Platform {
        storage: &mut sim.storage,
        probe: &mut sim.probe,
        telemetry: &mut sim.telemetry,
        commands: &mut own,
        desired: &mut lanyard_core::agent::platform::MirrorDesired,
    };
    assert_eq!(
        final_ack(&mut agent, &mut platform, 1_000, "d1", "diagnostics"),
        (AckStatus::Succeeded, None)
    );
    let read_sensor = final_ack(&mut agent, &mut platform, 1_100, "r1", "read_sensor");
    assert_eq!(
        read_sensor,
        (AckStatus::Rejected, Some(AckReason::UnknownCommand))
    );
    if cfg!(feature = "diagnostic-commands") {
        assert_eq!(own.asked, ["read_sensor"]);
    } else {
        assert_eq!(own.asked, ["diagnostics", "read_sensor"]);
    }
}
