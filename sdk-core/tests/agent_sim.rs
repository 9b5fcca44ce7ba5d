//! The seed chapter's "Expected Outcomes" as a deterministic simulation: ten
//! simulated minutes of one device against a scripted cloud, asserting the
//! exact count and timing of every message kind.
//!
//! Script (times in ms): the cloud accepts the registration 500 ms after it
//! arrives; a command or a configuration change about every 45 s; two
//! desired-state changes; the battery drains 1 % every 3 s, so it is below
//! the critical 10 % from 273 000, while the device is in maintenance; it
//! degrades at the first health check after maintenance ends.

mod common;

use common::sim::*;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::{LifecycleState as S, Trigger};
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::Value;
use lanyard_core::wire::ShadowUpdate;

const END: u64 = 600_000;

enum Cloud {
    Send(MessageKind, Vec<u8>),
}

fn script() -> Vec<(u64, Cloud)> {
    let v2 = DeviceConfig {
        version: 2,
        heartbeat_ms: 15_000,
        ..DeviceConfig::default()
    };
    let mut v3 = DeviceConfig {
        version: 3,
        ..v2.clone()
    };
    v3.thresholds.battery_warn_pct = 25;
    let mut bad = DeviceConfig {
        version: 4,
        ..v3.clone()
    };
    bad.thresholds.battery_crit_pct = 30;
    let mut v4 = DeviceConfig {
        version: 4,
        ..v3.clone()
    };
    v4.thresholds.link_warn_pct = 35;
    let delta = |key: &str, v: Value<'_>, at: u64| delta_bytes(7, at, &[(key, v)]);
    use Cloud::Send;
    use MessageKind::{Command as Cmd, Config, ShadowDelta as Delta};
    vec![
        (45_000, Send(Cmd, command("c1", "diagnostics", &[], 45_000))),
        (46_000, Send(Cmd, command("c1", "diagnostics", &[], 45_000))),
        (90_000, Send(Config, config_bytes(&v2))),
        (
            135_000,
            Send(
                Cmd,
                command("c2", "blink_led", &blink_args(3, 500), 135_000),
            ),
        ),
        (180_000, Send(Config, config_bytes(&v3))),
        (
            200_000,
            Send(Delta, delta("led.on", Value::Bool(true), 200_000)),
        ),
        (
            225_000,
            Send(Cmd, command("c3", "read_sensor", &[], 225_000)),
        ),
        (
            270_000,
            Send(Cmd, command("c4", "enter_maintenance", &[], 270_000)),
        ),
        (
            315_000,
            Send(Cmd, command("c5", "exit_maintenance", &[], 315_000)),
        ),
        (360_000, Send(Config, config_bytes(&v3))),
        (
            405_000,
            Send(Cmd, command("c6", "diagnostics", &[], 405_000)),
        ),
        (450_000, Send(Config, config_bytes(&bad))),
        (
            495_000,
            Send(
                Cmd,
                command("c7", "blink_led", &blink_args(3, 500), 495_000),
            ),
        ),
        (
            500_000,
            Send(Delta, delta("display.brightness", Value::Int(40), 500_000)),
        ),
        (540_000, Send(Config, config_bytes(&v4))),
        (
            585_000,
            Send(Cmd, command("c8", "read_sensor", &[], 585_000)),
        ),
    ]
}

/// Runs ten minutes; returns every message the device sent.
fn run() -> (Vec<Sent>, SimAgent, Sim) {
    let mut sim = Sim::new(3_000);
    let mut agent = new_agent();
    let mut sent = Vec::new();
    let mut script = script();
    agent.boot(0, &mut sim.platform()).expect("boot");
    drain(&mut agent, 0, &mut sent);
    let mut answered = 0;
    loop {
        // The scripted cloud answers registrations 500 ms after they arrive.
        for s in &sent[answered..] {
            if s.kind == MessageKind::Register {
                let accept = encode(&RegisterAccepted {
                    device_id: DEVICE_ID,
                    config: Some(&config_bytes(&DeviceConfig {
                        version: 1,
                        ..DeviceConfig::default()
                    })),
                    time_ms: s.at + 500,
                });
                script.push((
                    s.at + 500,
                    Cloud::Send(MessageKind::RegisterAccepted, accept),
                ));
            }
        }
        answered = sent.len();
        script.sort_by_key(|(t, _)| *t);
        let next_script = script.first().map(|(t, _)| *t);
        // The board finishes a blink when its time is up.
        let next = [
            agent.poll_timeout(),
            next_script,
            sim.commands.blink_ends_ms,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
        if next > END {
            break;
        }
        while script.first().is_some_and(|(t, _)| *t == next) {
            let (_, Cloud::Send(kind, bytes)) = script.remove(0);
            agent
                .handle_inbound(next, kind, &bytes, &mut sim.platform())
                .unwrap();
        }
        agent.handle_timeout(next, &mut sim.platform());
        finish_blink(&mut agent, &mut sim, next);
        drain(&mut agent, next, &mut sent);
    }
    (sent, agent, sim)
}

fn times(sent: &[Sent], kind: MessageKind) -> Vec<u64> {
    sent.iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.at)
        .collect()
}

fn steps(from: u64, every: u64, until: u64) -> Vec<u64> {
    (0..)
        .map(|k| from + k * every)
        .take_while(|t| *t <= until)
        .collect()
}

#[test]
fn registration_within_three_seconds_then_active() {
    let (sent, agent, _) = run();
    assert_eq!(times(&sent, MessageKind::Register), vec![0]);
    let reg = Register::decode(&sent[1].bytes).unwrap();
    assert_eq!((reg.device_id, reg.boot_count), (DEVICE_ID, 1));
    let lifecycle: Vec<(u64, S, S, Trigger)> = sent
        .iter()
        .filter(|s| s.kind == MessageKind::Lifecycle)
        .map(|s| {
            let e = LifecycleEvent::decode(&s.bytes).unwrap();
            (s.at, e.from, e.to, e.cause)
        })
        .collect();
    assert_eq!(
        lifecycle,
        vec![
            (0, S::Unprovisioned, S::Provisioning, Trigger::Register),
            (
                500,
                S::Provisioning,
                S::Active,
                Trigger::RegistrationAccepted
            ),
            (
                270_000,
                S::Active,
                S::Maintenance,
                Trigger::EnterMaintenance
            ),
            (315_000, S::Maintenance, S::Active, Trigger::ExitMaintenance),
            (315_500, S::Active, S::Degraded, Trigger::HealthCritical),
        ]
    );
    assert_eq!(agent.state(), S::Degraded);
    assert_eq!(agent.config().version, 4);
    assert_eq!(agent.config().thresholds.link_warn_pct, 35);
}

#[test]
fn heartbeats_every_ten_seconds_then_fifteen_after_the_config_change() {
    let (sent, _, _) = run();
    let mut expected = steps(10_500, 10_000, 89_999);
    expected.extend(steps(105_000, 15_000, END));
    assert_eq!(times(&sent, MessageKind::Heartbeat), expected);
    assert_eq!(expected.len(), 42);
}

#[test]
fn health_checks_every_five_seconds() {
    let (sent, _, _) = run();
    let expected = steps(5_500, 5_000, END);
    assert_eq!(expected.len(), 119);
    assert_eq!(times(&sent, MessageKind::Health), expected);
    let at = |t: u64| {
        let s = sent
            .iter()
            .find(|s| s.kind == MessageKind::Health && s.at == t)
            .unwrap();
        HealthMessage::decode(&s.bytes).unwrap().report
    };
    assert_eq!(
        at(240_500).status,
        lanyard_core::agent::health::HealthStatus::Warning
    );
    assert_eq!(
        at(275_500).status,
        lanyard_core::agent::health::HealthStatus::Critical
    );
}

#[test]
fn telemetry_every_thirty_seconds_paused_in_maintenance_and_three_times_slower_when_degraded() {
    let (sent, _, _) = run();
    let mut expected = steps(30_500, 30_000, 269_999);
    // 270 500 and 300 500 fall in maintenance; degraded from 315 500 with
    // the battery below 10 %: every 90 s.
    expected.extend([330_500, 420_500, 510_500]);
    assert_eq!(times(&sent, MessageKind::Telemetry), expected);
    assert_eq!(expected.len(), 11);
    let last: Telemetry = Telemetry::decode(
        &sent
            .iter()
            .rev()
            .find(|s| s.kind == MessageKind::Telemetry)
            .unwrap()
            .bytes,
    )
    .unwrap();
    let battery = last.readings.get_dotted("battery_pct").unwrap().value;
    assert_eq!((last.seq, battery), (11, Value::Int(0)));
}

#[test]
fn shadow_syncs_every_fifteen_seconds_and_at_once_on_change() {
    let (sent, agent, _) = run();
    let mut expected = vec![500];
    expected.extend(steps(15_500, 15_000, 199_999));
    expected.push(200_000);
    expected.extend(steps(215_000, 15_000, 499_999));
    expected.push(500_000);
    expected.extend(steps(515_000, 15_000, END));
    assert_eq!(times(&sent, MessageKind::ShadowUpdate), expected);
    assert_eq!(expected.len(), 41);
    let last = sent
        .iter()
        .rev()
        .find(|s| s.kind == MessageKind::ShadowUpdate)
        .unwrap();
    let up: ShadowUpdate<16, 512> = ShadowUpdate::decode(&last.bytes).unwrap();
    let reported = up.reported.unwrap();
    assert_eq!(
        reported.get_dotted("led.on").unwrap().value,
        Value::Bool(true)
    );
    assert_eq!(
        reported.get_dotted("display.brightness").unwrap().value,
        Value::Int(40)
    );
    assert_eq!(agent.reported().len(), 2);
}

// The script runs the built-in diagnostics command.
#[cfg(feature = "diagnostic-commands")]
#[test]
fn commands_are_acknowledged_and_never_run_twice() {
    let (sent, agent, sim) = run();
    let acks: Vec<(u64, String, AckStatus)> = sent
        .iter()
        .filter(|s| s.kind == MessageKind::Ack)
        .map(|s| {
            let a = Ack::decode(&s.bytes).unwrap();
            (s.at, a.command_id.to_string(), a.status)
        })
        .collect();
    use AckStatus::*;
    let expected: Vec<(u64, String, AckStatus)> = [
        (45_000, "c1", Accepted),
        (45_000, "c1", Succeeded),
        (46_000, "c1", Succeeded),
        (135_000, "c2", Accepted),
        (135_000, "c2", InProgress),
        (136_500, "c2", Succeeded),
        (225_000, "c3", Accepted),
        (225_000, "c3", Succeeded),
        (270_000, "c4", Accepted),
        (270_000, "c4", Succeeded),
        (315_000, "c5", Accepted),
        (315_000, "c5", Succeeded),
        (405_000, "c6", Accepted),
        (405_000, "c6", Succeeded),
        (495_000, "c7", Accepted),
        (495_000, "c7", InProgress),
        (496_500, "c7", Succeeded),
        (585_000, "c8", Accepted),
        (585_000, "c8", Succeeded),
    ]
    .into_iter()
    .map(|(t, id, s)| (t, id.to_string(), s))
    .collect();
    assert_eq!(acks, expected);
    assert_eq!(agent.stats().commands_executed, 8);
    assert_eq!(agent.stats().duplicate_commands, 1);
    assert_eq!(sim.commands.blinks, vec![(3, 500), (3, 500)]);
    // The diagnostics result is a health report.
    let diag = sent
        .iter()
        .find(|s| {
            s.kind == MessageKind::Ack
                && s.at == 45_000
                && Ack::decode(&s.bytes).unwrap().status == Succeeded
        })
        .unwrap();
    let result = Ack::decode(&diag.bytes).unwrap().result.unwrap();
    assert_eq!(
        HealthMessage::decode(result)
            .unwrap()
            .report
            .metrics
            .battery_pct,
        85
    );
}

#[test]
fn configuration_changes_are_versioned_and_validated() {
    let (sent, _, _) = run();
    let acks: Vec<(u64, u64, ConfigOutcome, u64, Option<String>)> = sent
        .iter()
        .filter(|s| s.kind == MessageKind::ConfigAck)
        .map(|s| {
            let a = ConfigAck::decode(&s.bytes).unwrap();
            (
                s.at,
                a.version,
                a.outcome,
                a.current_version,
                a.field.map(String::from),
            )
        })
        .collect();
    assert_eq!(
        acks,
        vec![
            (90_000, 2, ConfigOutcome::Applied, 2, None),
            (180_000, 3, ConfigOutcome::Applied, 3, None),
            (360_000, 3, ConfigOutcome::Ignored, 3, None),
            (
                450_000,
                4,
                ConfigOutcome::Rejected,
                3,
                Some("battery_crit_pct".into())
            ),
            (540_000, 4, ConfigOutcome::Applied, 4, None),
        ]
    );
}

// The script runs the built-in diagnostics command.
#[cfg(feature = "diagnostic-commands")]
#[test]
fn the_whole_run_in_counts() {
    let (sent, agent, _) = run();
    let count = |k| sent.iter().filter(|s| s.kind == k).count();
    use MessageKind::*;
    let counts: Vec<(MessageKind, usize)> = [
        Register,
        Lifecycle,
        Heartbeat,
        Telemetry,
        Health,
        ShadowUpdate,
        Ack,
        ConfigAck,
    ]
    .into_iter()
    .map(|k| (k, count(k)))
    .collect();
    assert_eq!(
        counts,
        vec![
            (Register, 1),
            (Lifecycle, 5),
            (Heartbeat, 42),
            (Telemetry, 11),
            (Health, 119),
            (ShadowUpdate, 41),
            (Ack, 19),
            (ConfigAck, 5),
        ]
    );
    assert_eq!(sent.len(), 243);
    assert_eq!(agent.stats().dropped, [0; 12]);
}
