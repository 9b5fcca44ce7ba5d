//! Property tests of the agent: no sequence of inbound messages (valid or
//! not) and timeouts panics, leaves the lifecycle outside the transition
//! table, or runs a command twice.

mod common;

use std::collections::HashMap;

use common::sim::*;
use lanyard_core::agent::AgentEvent;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::TRANSITIONS;
use lanyard_core::agent::messages::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Input {
    Accept,
    Cmd {
        id: u8,
        name: u8,
        count: u64,
        late: bool,
    },
    Config {
        version: u64,
        heartbeat: u64,
        crit: u8,
    },
    Delta(u8),
    Garbage(MessageKindIdx, Vec<u8>),
    Mutated(u8, Vec<(prop::sample::Index, u8)>),
    Advance(u64),
    Reboot,
}

type MessageKindIdx = prop::sample::Index;

const NAMES: [&str; 8] = [
    "diagnostics",
    "blink_led",
    "read_sensor",
    "enter_maintenance",
    "exit_maintenance",
    "decommission",
    "reboot_modem",
    "nonsense",
];

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => Just(Input::Accept),
        4 => (0u8..6, 0u8..8, 0u64..4, any::<bool>()).prop_map(|(id, name, count, late)| Input::Cmd { id, name, count, late }),
        2 => (0u64..6, prop_oneof![Just(500u64), Just(10_000), Just(30_000)], 0u8..40).prop_map(|(version, heartbeat, crit)| Input::Config { version, heartbeat, crit }),
        1 => any::<u8>().prop_map(Input::Delta),
        2 => (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(k, b)| Input::Garbage(k, b)),
        2 => (0u8..8, proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)).prop_map(|(n, m)| Input::Mutated(n, m)),
        3 => (0u64..60_000).prop_map(Input::Advance),
        1 => Just(Input::Reboot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_input_sequence_breaks_the_rules(inputs in proptest::collection::vec(input(), 1..60)) {
        let mut sim = Sim::new(2_000);
        let mut agent = new_agent();
        let mut now = 0u64;
        agent.boot(now, &mut sim.platform()).expect("boot");
        while agent.poll_event().is_some() {}
        let mut state = agent.state();
        // Command ids whose final result was "ran": must happen once per id.
        let mut ran: HashMap<String, u32> = HashMap::new();
        let mut out = vec![0u8; 1024];
        for input in inputs {
            now += 1;
            let (kind, bytes) = match input {
                Input::Accept => (MessageKind::RegisterAccepted, encode(&RegisterAccepted { device_id: DEVICE_ID, config: None, time_ms: now })),
                Input::Cmd { id, name, count, late } => {
                    let name = NAMES[name as usize];
                    let args = if name == "blink_led" { blink_args(count, 100) } else { Vec::new() };
                    let issued = if late { now.saturating_sub(40_000) } else { now };
                    (MessageKind::Command, command(&format!("c{id}"), name, &args, issued))
                }
                Input::Config { version, heartbeat, crit } => {
                    let mut c = DeviceConfig { version, heartbeat_ms: heartbeat, ..DeviceConfig::default() };
                    c.thresholds.battery_crit_pct = crit;
                    (MessageKind::Config, config_bytes(&c))
                }
                Input::Delta(v) => {
                    let leaf = ("k", lanyard_core::shadow::Value::Int(i64::from(v)));
                    (MessageKind::ShadowDelta, delta_bytes(1, now, &[leaf]))
                }
                Input::Garbage(k, b) => (MessageKind::ALL[k.index(MessageKind::ALL.len())], b),
                Input::Mutated(n, edits) => {
                    let mut b = command("m", NAMES[n as usize], &[], now);
                    for (i, x) in edits {
                        let at = i.index(b.len());
                        b[at] ^= x | 1;
                    }
                    (MessageKind::Command, b)
                }
                Input::Advance(ms) => {
                    let until = now + ms;
                    while let Some(t) = agent.poll_timeout() {
                        if t > until { break; }
                        now = now.max(t);
                        agent.handle_timeout(now, &mut sim.platform());
                        while let Some(e) = agent.poll_event() {
                            if let AgentEvent::StateChanged { from, to, cause } = e {
                                prop_assert_eq!(from, state);
                                prop_assert!(TRANSITIONS.contains(&(from, cause, to)));
                                state = to;
                            }
                        }
                    }
                    now = until;
                    continue;
                }
                Input::Reboot => {
                    agent = new_agent();
                    let booted = agent.boot(now, &mut sim.platform());
                    // A reboot resumes the persisted state; a
                    // decommissioned device (with persistence) stays so and
                    // refuses to start. The checks go on from there.
                    prop_assert_eq!(
                        booted.is_err(),
                        cfg!(feature = "persistence") && state == lanyard_core::agent::lifecycle::LifecycleState::Decommissioned
                    );
                    while agent.poll_event().is_some() {}
                    state = agent.state();
                    // Without persistence a reboot forgets the commands
                    // that ran: "at most once" holds within one boot.
                    #[cfg(not(feature = "persistence"))]
                    ran.clear();
                    continue;
                }
            };
            let before_runs = sim.commands.runs;
            let _ = agent.handle_inbound(now, kind, &bytes, &mut sim.platform());
            if sim.commands.runs > before_runs {
                if let Ok(c) = Command::decode(&bytes) {
                    *ran.entry(c.id.to_string()).or_default() += 1;
                }
            }
            // Every state change follows the table.
            while let Some(e) = agent.poll_event() {
                if let AgentEvent::StateChanged { from, to, cause } = e {
                    prop_assert_eq!(from, state);
                    prop_assert!(TRANSITIONS.contains(&(from, cause, to)), "{:?} -{:?}-> {:?}", from, cause, to);
                    state = to;
                }
            }
            prop_assert_eq!(agent.state(), state);
            while agent.poll_transmit(&mut out).unwrap().is_some() {}
        }
        // An application command id runs at most once while remembered
        // (ids are drawn from 6, well inside the dedupe window of 16),
        // across reboots with the `persistence` feature.
        for (id, n) in ran {
            prop_assert!(n <= 1, "command {} ran {} times", id, n);
        }
    }
}
