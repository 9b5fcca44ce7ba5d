//! The device agent, grouped by lifecycle state: registration, the
//! registered states, decommissioning, reboots, the outbox, bad input.

mod common;

use common::sim::*;
use lanyard_core::agent::InboundError;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::{LifecycleState as S, TRANSITIONS, Trigger, next_state};
use lanyard_core::agent::messages::*;

fn send_cmd(
    agent: &mut SimAgent,
    sim: &mut Sim,
    at: u64,
    id: &str,
    name: &str,
    args: &[u8],
) -> Vec<(AckStatus, Option<AckReason>)> {
    send_cmd_bytes(agent, sim, at, &command(id, name, args, at))
}

/// Hands the agent an encoded command at `at`; returns the acks it sent.
fn send_cmd_bytes(
    agent: &mut SimAgent,
    sim: &mut Sim,
    at: u64,
    bytes: &[u8],
) -> Vec<(AckStatus, Option<AckReason>)> {
    command_acks(agent, &mut sim.platform(), at, bytes)
        .into_iter()
        .map(|a| (a.status, a.reason))
        .collect()
}

mod lifecycle_table {
    use super::*;

    #[test]
    fn every_pair_not_in_the_table_is_refused() {
        for state in S::ALL {
            for trigger in Trigger::ALL {
                let listed = TRANSITIONS
                    .iter()
                    .find(|(f, t, _)| *f == state && *t == trigger);
                match (next_state(state, trigger), listed) {
                    (Ok(to), Some((_, _, want))) => assert_eq!(to, *want),
                    (Err(e), None) => assert_eq!((e.state, e.trigger), (state, trigger)),
                    (got, want) => panic!("{state:?} {trigger:?}: {got:?} vs {want:?}"),
                }
            }
        }
        assert!(
            Trigger::ALL
                .iter()
                .all(|t| next_state(S::Decommissioned, *t).is_err())
        );
    }

    #[test]
    fn the_lifecycle_diagram_matches_the_table() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/lifecycle.md"))
                .unwrap();
        let block = doc
            .split("```mermaid")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let mut edges: Vec<(String, String, String)> = block
            .lines()
            .filter_map(|l| {
                let (lhs, label) = l.trim().split_once(" : ")?;
                let (from, to) = lhs.split_once(" --> ")?;
                Some((from.into(), to.into(), label.into()))
            })
            .collect();
        let mut table: Vec<(String, String, String)> = TRANSITIONS
            .iter()
            .map(|(f, t, to)| (f.name().into(), to.name().into(), t.name().into()))
            .collect();
        edges.sort();
        table.sort();
        assert_eq!(edges, table);
    }
}

mod registration {
    use super::*;

    #[test]
    fn the_id_comes_from_the_mac_unless_configured() {
        assert_eq!(new_agent().device_id(), DEVICE_ID);
        let configured: SimAgent = lanyard_core::agent::Agent::new(
            lanyard_core::agent::Identity {
                mac: MAC,
                device_id: Some("boiler-7"),
                firmware: "1",
            },
            DeviceConfig::default(),
            Default::default(),
        );
        assert_eq!(configured.device_id(), "boiler-7");
    }

    #[test]
    fn without_an_answer_registration_retries_with_exponential_backoff() {
        let mut sim = Sim::new(1_000_000);
        let mut agent = new_agent();
        let mut sent = Vec::new();
        agent.boot(0, &mut sim.platform()).expect("boot");
        drain(&mut agent, 0, &mut sent);
        while let Some(t) = agent.poll_timeout() {
            if t > 400_000 {
                break;
            }
            agent.handle_timeout(t, &mut sim.platform());
            drain(&mut agent, t, &mut sent);
        }
        let at: Vec<u64> = sent
            .iter()
            .filter(|s| s.kind == MessageKind::Register)
            .map(|s| s.at)
            .collect();
        // A first registration, not a resumed device's.
        assert!(
            sent.iter()
                .filter(|s| s.kind == MessageKind::Register)
                .all(|s| !Register::decode(&s.bytes).unwrap().resumed)
        );
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // Window b doubles from 2 s to a 60 s cap; each wait is in [b/2, b].
        let windows = [
            2_000u64, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000,
        ];
        for (gap, b) in gaps.iter().zip(windows) {
            assert!(
                (b / 2..=b).contains(gap),
                "gap {gap} outside [{}, {b}]",
                b / 2
            );
        }
        assert!(gaps.len() >= 8);
        assert_eq!(agent.state(), S::Provisioning);
        // Accepted after all: active, retries stop.
        accept(&mut agent, &mut sim, 400_001);
        assert_eq!(agent.state(), S::Active);
        assert!(agent.poll_timeout().unwrap() >= 400_001);
    }

    #[test]
    fn an_acceptance_for_another_device_or_out_of_turn_changes_nothing() {
        let mut sim = Sim::new(1_000_000);
        let mut agent = new_agent();
        agent.boot(0, &mut sim.platform()).expect("boot");
        let other = encode(&RegisterAccepted {
            device_id: "ly-ffffffffffff",
            config: None,
            time_ms: 1,
        });
        assert_eq!(
            agent.handle_inbound(
                1,
                MessageKind::RegisterAccepted,
                &other,
                &mut sim.platform()
            ),
            Err(InboundError::WrongDevice)
        );
        assert_eq!(agent.state(), S::Provisioning);
        accept(&mut agent, &mut sim, 2);
        let again = encode(&RegisterAccepted {
            device_id: DEVICE_ID,
            config: None,
            time_ms: 3,
        });
        assert_eq!(
            agent.handle_inbound(
                3,
                MessageKind::RegisterAccepted,
                &again,
                &mut sim.platform()
            ),
            Err(InboundError::NotNow(S::Active))
        );
    }

    #[test]
    fn the_initial_configuration_is_applied_on_acceptance() {
        let mut sim = Sim::new(1_000_000);
        let mut agent = new_agent();
        agent.boot(0, &mut sim.platform()).expect("boot");
        let cfg = config_bytes(&DeviceConfig {
            version: 9,
            heartbeat_ms: 20_000,
            ..DeviceConfig::default()
        });
        let bytes = encode(&RegisterAccepted {
            device_id: DEVICE_ID,
            config: Some(&cfg),
            time_ms: 5,
        });
        agent
            .handle_inbound(
                5,
                MessageKind::RegisterAccepted,
                &bytes,
                &mut sim.platform(),
            )
            .unwrap();
        assert_eq!(
            (agent.config().version, agent.config().heartbeat_ms),
            (9, 20_000)
        );
    }
}

mod cloud_time {
    use super::*;

    /// A device whose clock counts from boot (no real-time clock) takes the
    /// cloud's time from the registration answer, so a command's expiry
    /// (cloud time) still means something to it.
    #[test]
    fn a_device_without_a_real_time_clock_judges_expiry_on_the_clouds_clock() {
        const CLOUD: u64 = 1_700_000_000_000;
        let mut sim = Sim::new(1_000_000);
        let mut agent = new_agent();
        agent.boot(0, &mut sim.platform()).expect("boot");
        answer_registration(&mut agent, &mut sim, 100, CLOUD + 100).unwrap();
        assert_eq!(agent.cloud_offset_ms(), Some(CLOUD as i64));
        let mut sent = Vec::new();
        drain(&mut agent, 100, &mut sent);

        let cmd = |id: &'static str| {
            encode(&Command {
                id,
                name: "reboot_modem",
                args: &[],
                issued_ms: CLOUD + 1_000,
                expires_ms: CLOUD + 5_000,
            })
        };
        let final_ack = |agent: &mut SimAgent, sim: &mut Sim, at: u64, id: &'static str| {
            send_cmd_bytes(agent, sim, at, &cmd(id)).pop()
        };
        // 2 s after boot = 1.9 s of cloud time after the answer: in time.
        assert_eq!(
            final_ack(&mut agent, &mut sim, 2_000, "in-time").map(|a| a.0),
            Some(AckStatus::Succeeded)
        );
        // 10 s after boot: past the expiry on the cloud's clock, though the
        // device's own clock reads 10 000 ms.
        assert_eq!(
            final_ack(&mut agent, &mut sim, 10_000, "late"),
            Some((AckStatus::Rejected, Some(AckReason::Expired)))
        );
    }
}

mod configuration {
    use super::*;

    #[test]
    fn telemetry_carries_what_the_application_read_when_it_is_due() {
        // A fleet may set telemetry faster than health checks; the first
        // telemetry then precedes every check, and the application's
        // readings are of the time it is sent.
        let mut sim = Sim::new(1_000);
        let (mut agent, _) = registered(&mut sim);
        let fast = DeviceConfig {
            version: 2,
            telemetry_ms: 1_000,
            health_ms: 30_000,
            ..DeviceConfig::default()
        };
        assert_eq!(
            push_config(&mut agent, &mut sim, &fast).0,
            ConfigOutcome::Applied
        );
        let mut sent = Vec::new();
        let mut now = 1_000;
        while !sent.iter().any(|s: &Sent| s.kind == MessageKind::Telemetry) {
            now = agent.poll_timeout().unwrap();
            agent.handle_timeout(now, &mut sim.platform());
            drain(&mut agent, now, &mut sent);
        }
        assert!(!sent.iter().any(|s| s.kind == MessageKind::Health));
        let t = sent
            .iter()
            .find(|s| s.kind == MessageKind::Telemetry)
            .unwrap();
        let expected = 100 - (now / 1_000) as u8;
        let t: Telemetry = Telemetry::decode(&t.bytes).unwrap();
        assert_eq!(
            t.readings.get_dotted("battery_pct").unwrap().value,
            lanyard_core::shadow::Value::Int(i64::from(expected))
        );
        assert_eq!(t.time_ms, now, "on the cloud's clock, here the device's");
    }

    /// Sends a configuration; returns the ack's outcome, field, current version.
    fn push_config(
        agent: &mut SimAgent,
        sim: &mut Sim,
        c: &DeviceConfig,
    ) -> (ConfigOutcome, Option<String>, u64) {
        agent
            .handle_inbound(
                1_000,
                MessageKind::Config,
                &config_bytes(c),
                &mut sim.platform(),
            )
            .unwrap();
        let mut sent = Vec::new();
        drain(agent, 1_000, &mut sent);
        let s = sent
            .iter()
            .find(|s| s.kind == MessageKind::ConfigAck)
            .unwrap();
        let a = ConfigAck::decode(&s.bytes).unwrap();
        (a.outcome, a.field.map(String::from), a.current_version)
    }

    #[test]
    fn conflict_policies_an_older_host_sends_are_ignored_not_refused() {
        // Conflict policies are the twin host's (`FleetPolicies`); older
        // hosts sent them to devices as keys 11 and 12 of the configuration.
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        let c = DeviceConfig {
            version: 2,
            heartbeat_ms: 20_000,
            ..DeviceConfig::default()
        };
        let mut e = minicbor::Encoder::new(Vec::new());
        e.map(4).unwrap();
        e.u8(0).unwrap().u64(2).unwrap();
        e.u8(1).unwrap().u64(20_000).unwrap();
        e.u8(11).unwrap().u8(2).unwrap();
        e.u8(12).unwrap().array(1).unwrap();
        e.array(2).unwrap().str("sensors").unwrap().u8(1).unwrap();
        let bytes = e.into_writer();
        agent
            .handle_inbound(5_000, MessageKind::Config, &bytes, &mut sim.platform())
            .unwrap();
        let mut sent = Vec::new();
        drain(&mut agent, 5_000, &mut sent);
        let ack = sent
            .iter()
            .find(|s| s.kind == MessageKind::ConfigAck)
            .map(|s| ConfigAck::decode(&s.bytes).unwrap())
            .unwrap();
        assert_eq!(ack.outcome, ConfigOutcome::Applied);
        assert_eq!(agent.config(), &c);
    }
}

mod commands {
    use super::*;

    #[test]
    fn commands_not_allowed_in_the_state_unknown_expired_or_malformed_are_rejected() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 1_000, "a", "exit_maintenance", &[]),
            vec![(AckStatus::Rejected, Some(AckReason::NotAllowed))]
        );
        assert_eq!(agent.state(), S::Active);
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 1_000, "b", "self_destruct", &[]),
            vec![(AckStatus::Rejected, Some(AckReason::UnknownCommand))]
        );
        assert_eq!(
            send_cmd(
                &mut agent,
                &mut sim,
                1_000,
                "c",
                "blink_led",
                &blink_args(0, 500)
            ),
            vec![(AckStatus::Rejected, Some(AckReason::BadArguments))]
        );
        let late = command("d", "diagnostics", &[], 0);
        agent
            .handle_inbound(40_000, MessageKind::Command, &late, &mut sim.platform())
            .unwrap();
        let mut sent = Vec::new();
        drain(&mut agent, 40_000, &mut sent);
        let a = Ack::decode(
            &sent
                .iter()
                .find(|s| s.kind == MessageKind::Ack)
                .unwrap()
                .bytes,
        )
        .unwrap();
        assert_eq!(
            (a.status, a.reason),
            (AckStatus::Rejected, Some(AckReason::Expired))
        );
        assert_eq!(agent.stats().commands_executed, 0);
    }

    #[test]
    fn application_commands_run_through_the_handler_once() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 1_000, "m1", "reboot_modem", &[]),
            vec![(AckStatus::Accepted, None), (AckStatus::Succeeded, None)]
        );
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 2_000, "m1", "reboot_modem", &[]),
            vec![(AckStatus::Succeeded, None)]
        );
        assert_eq!(sim.commands.runs, 1);
    }

    #[test]
    fn a_handlers_own_words_travel_in_the_acknowledgements_detail() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        let args = |k: &str, v: &str| {
            let mut e = minicbor::Encoder::new(Vec::new());
            e.map(1).unwrap().str(k).unwrap().str(v).unwrap();
            e.into_writer()
        };
        let acks = |agent: &mut SimAgent, sim: &mut Sim, at: u64, id: &str, a: &[u8]| {
            command_acks(
                agent,
                &mut sim.platform(),
                at,
                &command(id, "explain", a, at),
            )
        };
        let failed = acks(
            &mut agent,
            &mut sim,
            1_000,
            "e1",
            &args("fail", "valve stuck at 40 %"),
        );
        let last = failed.last().unwrap();
        assert_eq!(
            (last.status, last.reason, last.detail.as_deref()),
            (
                AckStatus::Failed,
                Some(AckReason::ExecutionFailed),
                Some("valve stuck at 40 %")
            )
        );
        let refused = acks(
            &mut agent,
            &mut sim,
            2_000,
            "e2",
            &args("refuse", "no unit \"x\""),
        );
        assert_eq!(
            (refused[0].status, refused[0].detail.as_deref()),
            (AckStatus::Rejected, Some("no unit \"x\""))
        );
        // A long text is cut at a character boundary, and says so.
        let long = "é".repeat(100);
        let cut = acks(&mut agent, &mut sim, 3_000, "e3", &args("fail", &long));
        let detail = cut.last().unwrap().detail.clone().unwrap();
        assert!(detail.ends_with("..."), "{detail}");
        assert_eq!(
            detail.len(),
            lanyard_core::agent::platform::MAX_DETAIL_LEN + 3
        );
        assert!(long.starts_with(detail.trim_end_matches("...")));
    }

    #[test]
    fn a_long_command_is_in_progress_until_the_application_completes_it() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        let first = send_cmd(
            &mut agent,
            &mut sim,
            1_000,
            "b1",
            "blink_led",
            &blink_args(10, 1_000),
        );
        assert_eq!(
            first,
            vec![(AckStatus::Accepted, None), (AckStatus::InProgress, None)]
        );
        assert_eq!(
            send_cmd(
                &mut agent,
                &mut sim,
                2_000,
                "b2",
                "blink_led",
                &blink_args(1, 100)
            ),
            vec![(AckStatus::Rejected, Some(AckReason::Busy))]
        );
        // The same id again while running: still in progress, not re-run.
        assert_eq!(
            send_cmd(
                &mut agent,
                &mut sim,
                3_000,
                "b1",
                "blink_led",
                &blink_args(10, 1_000)
            ),
            vec![(AckStatus::InProgress, None)]
        );
        assert_eq!(sim.commands.blinks.len(), 1);
        assert_eq!(agent.running_command(), Some("b1"));
        // The board finishes it: the final acknowledgement, and it is
        // remembered like any other.
        agent
            .complete_command(11_000, Ok(&[0xf5]), &mut sim.platform())
            .unwrap();
        let mut sent = Vec::new();
        drain(&mut agent, 11_000, &mut sent);
        let a = Ack::decode(&sent[0].bytes).unwrap();
        assert_eq!(
            (a.command_id, a.status, a.result),
            ("b1", AckStatus::Succeeded, Some(&[0xf5][..]))
        );
        assert_eq!(
            agent.complete_command(11_000, Ok(&[]), &mut sim.platform()),
            Err(lanyard_core::agent::NothingRunning)
        );
        assert_eq!(
            send_cmd(
                &mut agent,
                &mut sim,
                12_000,
                "b1",
                "blink_led",
                &blink_args(10, 1_000)
            ),
            vec![(AckStatus::Succeeded, None)]
        );
        // A long command that fails is acknowledged Failed with its reason.
        send_cmd(
            &mut agent,
            &mut sim,
            13_000,
            "b3",
            "blink_led",
            &blink_args(2, 100),
        );
        agent
            .complete_command(
                13_200,
                Err(lanyard_core::agent::platform::CommandFailure::Failed(
                    "LED driver fault",
                )),
                &mut sim.platform(),
            )
            .unwrap();
        let mut sent = Vec::new();
        drain(&mut agent, 13_200, &mut sent);
        let a = Ack::decode(&sent[0].bytes).unwrap();
        assert_eq!(
            (a.status, a.reason, a.detail),
            (
                AckStatus::Failed,
                Some(AckReason::ExecutionFailed),
                Some("LED driver fault")
            )
        );
    }

    #[test]
    fn a_command_issued_before_one_the_window_let_go_of_is_refused_as_stale_not_run() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        // w0 .. w16: w0 (issued at 10 000) falls out of the window.
        for i in 0..=lanyard_core::agent::DEDUPE_WINDOW as u64 {
            send_cmd(
                &mut agent,
                &mut sim,
                10_000 + i,
                &format!("w{i}"),
                "reboot_modem",
                &[],
            );
        }
        let runs = sim.commands.runs;
        // A replay of w0 with its original issue time, and a late command
        // issued before it: both refused, neither runs.
        for (id, issued) in [("w0", 10_000), ("late", 9_000)] {
            let old = command(id, "reboot_modem", &[], issued);
            agent
                .handle_inbound(20_000, MessageKind::Command, &old, &mut sim.platform())
                .unwrap();
            let mut sent = Vec::new();
            drain(&mut agent, 20_000, &mut sent);
            let a = Ack::decode(&sent[0].bytes).unwrap();
            assert_eq!(
                (a.status, a.reason),
                (AckStatus::Rejected, Some(AckReason::Stale))
            );
        }
        assert_eq!(sim.commands.runs, runs);
        assert_eq!(agent.stats().stale_commands, 2);
        // A new one runs.
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 20_001, "new", "reboot_modem", &[]).len(),
            2
        );
        assert_eq!(sim.commands.runs, runs + 1);
    }

    // Across a reboot: what `persistence` keeps.
    #[cfg(feature = "persistence")]
    #[test]
    fn a_replay_pushed_out_by_earlier_issued_commands_does_not_run_again_even_after_a_reboot() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        // The newest command arrives first; then a window's worth of
        // commands issued before it (delivered late) push it out.
        send_cmd(&mut agent, &mut sim, 50_000, "first", "reboot_modem", &[]);
        for i in 0..lanyard_core::agent::DEDUPE_WINDOW as u64 {
            send_cmd(
                &mut agent,
                &mut sim,
                20_000 + i,
                &format!("e{i}"),
                "reboot_modem",
                &[],
            );
        }
        let runs = sim.commands.runs;
        drop(agent);
        let mut rebooted = new_agent();
        rebooted.boot(60_000, &mut sim.platform()).expect("boot");
        accept(&mut rebooted, &mut sim, 60_100);
        drain(&mut rebooted, 60_100, &mut Vec::new());
        let replay = command("first", "reboot_modem", &[], 50_000);
        assert_eq!(
            send_cmd_bytes(&mut rebooted, &mut sim, 60_200, &replay),
            vec![(AckStatus::Rejected, Some(AckReason::Stale))]
        );
        assert_eq!(sim.commands.runs, runs);
    }

    // Across a reboot: what `persistence` keeps.
    #[cfg(feature = "persistence")]
    #[test]
    fn a_command_running_when_the_device_died_is_answered_interrupted_and_never_rerun() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        let mut buf = [0u8; 64];
        let n = lanyard_core::wire::encode_into(&mut buf, |e| {
            e.map(1)?.str("count")?.u8(3)?;
            Ok(())
        })
        .unwrap();
        let blink = command("b1", "blink_led", &buf[..n], 5_000);
        assert_eq!(
            send_cmd_bytes(&mut agent, &mut sim, 5_000, &blink),
            vec![(AckStatus::Accepted, None), (AckStatus::InProgress, None)]
        );
        assert_eq!(sim.commands.blinks.len(), 1);
        // Killed while it blinks.
        drop(agent);
        let mut rebooted = new_agent();
        rebooted.boot(6_000, &mut sim.platform()).expect("boot");
        let mut sent = Vec::new();
        drain(&mut rebooted, 6_000, &mut sent);
        let acks: Vec<_> = sent
            .iter()
            .filter(|s| s.kind == MessageKind::Ack)
            .map(|s| Ack::decode(&s.bytes).unwrap())
            .map(|a| (a.command_id.to_owned(), a.status, a.reason))
            .collect();
        assert_eq!(
            acks,
            vec![(
                "b1".to_owned(),
                AckStatus::Failed,
                Some(AckReason::Interrupted)
            )]
        );
        accept(&mut rebooted, &mut sim, 6_100);
        drain(&mut rebooted, 6_100, &mut Vec::new());
        // Redelivered by the broker: answered from the window, not run.
        let again = send_cmd_bytes(&mut rebooted, &mut sim, 6_200, &blink);
        assert_eq!(
            again,
            vec![(AckStatus::Failed, Some(AckReason::Interrupted))]
        );
        assert_eq!(sim.commands.blinks.len(), 1);
    }

    #[test]
    fn the_dedupe_window_is_bounded() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        for i in 0..=lanyard_core::agent::DEDUPE_WINDOW {
            send_cmd(
                &mut agent,
                &mut sim,
                1_000 + i as u64,
                &format!("r{i}"),
                "reboot_modem",
                &[],
            );
        }
        // r0 fell out of the window; the newest is still remembered.
        let last = format!("r{}", lanyard_core::agent::DEDUPE_WINDOW);
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 5_000, &last, "reboot_modem", &[]).len(),
            1
        );
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 5_000, "r0", "reboot_modem", &[]).len(),
            2
        );
    }
}

mod decommissioning {
    use super::*;

    #[test]
    fn decommission_audits_wipes_and_then_refuses_everything() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        sim.storage
            .slots
            .insert("credentials", b"private key".to_vec());
        let bytes = command("z", "decommission", &[], 5_000);
        agent
            .handle_inbound(5_000, MessageKind::Command, &bytes, &mut sim.platform())
            .unwrap();
        let mut sent = Vec::new();
        drain(&mut agent, 5_000, &mut sent);
        let kinds: Vec<MessageKind> = sent.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![MessageKind::Ack, MessageKind::Lifecycle, MessageKind::Ack]
        );
        let audit = LifecycleEvent::decode(&sent[1].bytes).unwrap();
        assert_eq!(
            (audit.from, audit.to, audit.cause),
            (S::Active, S::Decommissioned, Trigger::Decommission)
        );
        // Credentials wiped; with `persistence`, the state record is the
        // decommissioned fact (without it, nothing is kept).
        let kept: Vec<&&str> = sim.storage.slots.keys().collect();
        if cfg!(feature = "persistence") {
            assert_eq!(kept, vec![&"state"]);
        } else {
            assert!(kept.is_empty());
        }
        assert_eq!(agent.state(), S::Decommissioned);
        assert_eq!(agent.poll_timeout(), None);
        for kind in [
            MessageKind::Command,
            MessageKind::Config,
            MessageKind::ShadowDelta,
            MessageKind::RegisterAccepted,
        ] {
            assert_eq!(
                agent.handle_inbound(6_000, kind, &bytes, &mut sim.platform()),
                Err(InboundError::Decommissioned)
            );
        }
        agent.handle_timeout(100_000, &mut sim.platform());
        assert_eq!(agent.queued(), 0);
        // Only the fact is kept, and a restart does not bring it back.
        assert!(!sim.storage.slots.contains_key("credentials"));
        if !cfg!(feature = "persistence") {
            return;
        }
        drop(agent);
        let mut restarted = new_agent();
        assert_eq!(
            restarted.boot(200_000, &mut sim.platform()),
            Err(lanyard_core::agent::BootError::Decommissioned)
        );
        assert_eq!(restarted.state(), S::Decommissioned);
        assert_eq!(restarted.queued(), 0);
        assert_eq!(restarted.poll_timeout(), None);
    }
}

// Without the `persistence` feature nothing survives a reboot:
// tests/capabilities.rs checks that instead.
#[cfg(feature = "persistence")]
mod reboots {
    use super::*;

    #[test]
    fn a_reboot_resumes_in_the_same_state_and_still_deduplicates() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        send_cmd(&mut agent, &mut sim, 1_000, "x1", "reboot_modem", &[]);
        send_cmd(&mut agent, &mut sim, 1_100, "m1", "enter_maintenance", &[]);
        drop(agent);
        let mut rebooted = new_agent();
        rebooted.boot(50_000, &mut sim.platform()).expect("boot");
        let mut sent = Vec::new();
        drain(&mut rebooted, 50_000, &mut sent);
        assert_eq!(rebooted.state(), S::Maintenance);
        assert_eq!(rebooted.boot_count(), 2);
        // It registers again (for the cloud's time) but keeps its state.
        let again: Vec<Register> = sent
            .iter()
            .filter(|s| s.kind == MessageKind::Register)
            .map(|s| Register::decode(&s.bytes).unwrap())
            .collect();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].boot_count, again[0].resumed), (2, true));
        assert!(sent.iter().all(|s| s.kind != MessageKind::Lifecycle));
        accept(&mut rebooted, &mut sim, 50_100);
        assert_eq!(rebooted.state(), S::Maintenance);
        assert_eq!(
            duplicate_acks(&mut rebooted, &mut sim, 51_000, "x1"),
            vec![(AckStatus::Succeeded, Some("duplicate".to_string()))]
        );
        assert_eq!(sim.commands.runs, 1);
    }

    /// The acks (status, detail) a repeated `reboot_modem` gets.
    fn duplicate_acks(
        agent: &mut SimAgent,
        sim: &mut Sim,
        at: u64,
        id: &str,
    ) -> Vec<(AckStatus, Option<String>)> {
        let bytes = command(id, "reboot_modem", &[], at);
        command_acks(agent, &mut sim.platform(), at, &bytes)
            .into_iter()
            .map(|a| (a.status, a.detail))
            .collect()
    }

    #[test]
    fn after_a_reboot_commands_wait_for_the_clouds_time() {
        // A clock that counts from boot: 0 at each boot. The cloud's clock
        // is CLOUD + the device's at the first registration.
        const CLOUD: u64 = 1_700_000_000_000;
        let mut sim = Sim::new(1_000_000);
        let mut agent = new_agent();
        agent.boot(0, &mut sim.platform()).expect("boot");
        let at_cloud = |ms: u64| CLOUD + ms;
        answer_registration(&mut agent, &mut sim, 100, at_cloud(100)).unwrap();
        drain(&mut agent, 100, &mut Vec::new());
        drop(agent);

        // An hour later (cloud time) the device reboots; its clock reads 0.
        let hour = 3_600_000;
        let mut rebooted = new_agent();
        rebooted.boot(0, &mut sim.platform()).expect("boot");
        drain(&mut rebooted, 0, &mut Vec::new());
        assert_eq!(rebooted.cloud_offset_ms(), None);
        // Issued a minute after the first boot, expired a minute later: long
        // gone, though the device's own clock would call it fresh.
        let old = encode(&Command {
            id: "old",
            name: "reboot_modem",
            args: &[],
            issued_ms: at_cloud(60_000),
            expires_ms: at_cloud(120_000),
        });
        assert_eq!(
            send_cmd_bytes(&mut rebooted, &mut sim, 200, &old),
            vec![(AckStatus::Rejected, Some(AckReason::Busy))]
        );
        assert_eq!(sim.commands.runs, 0);
        assert_eq!(rebooted.stats().refused_before_time, 1);

        answer_registration(&mut rebooted, &mut sim, 300, at_cloud(hour + 300)).unwrap();
        assert_eq!(rebooted.cloud_offset_ms(), Some((CLOUD + hour) as i64));
        // Now judged, not answered from memory: expired.
        assert_eq!(
            send_cmd_bytes(&mut rebooted, &mut sim, 400, &old),
            vec![(AckStatus::Rejected, Some(AckReason::Expired))]
        );
        let fresh = encode(&Command {
            id: "fresh",
            name: "reboot_modem",
            args: &[],
            issued_ms: at_cloud(hour + 350),
            expires_ms: at_cloud(hour + 30_000),
        });
        assert_eq!(
            send_cmd_bytes(&mut rebooted, &mut sim, 500, &fresh).pop(),
            Some((AckStatus::Succeeded, None))
        );
        assert_eq!(sim.commands.runs, 1);
        // A second answer, not awaited, changes nothing.
        assert!(answer_registration(&mut rebooted, &mut sim, 600, at_cloud(5 * hour)).is_err());
        assert_eq!(rebooted.cloud_offset_ms(), Some((CLOUD + hour) as i64));
    }

    #[test]
    fn a_reconnection_while_waiting_for_the_time_asks_again_at_once() {
        let mut sim = Sim::new(1_000_000);
        let (agent, _) = registered(&mut sim);
        drop(agent);
        let mut rebooted = new_agent();
        rebooted.boot(0, &mut sim.platform()).expect("boot");
        let registers = |agent: &mut SimAgent, at: u64| {
            let mut sent = Vec::new();
            drain(agent, at, &mut sent);
            sent.iter()
                .filter(|s| s.kind == MessageKind::Register)
                .count()
        };
        assert_eq!(registers(&mut rebooted, 0), 1);
        // The first retry is due after the backoff (at least 1 s)...
        rebooted.handle_timeout(100, &mut sim.platform());
        assert_eq!(registers(&mut rebooted, 100), 0);
        // ...but a reconnection asks again at once.
        rebooted.handle_reconnect(100);
        rebooted.handle_timeout(100, &mut sim.platform());
        assert_eq!(registers(&mut rebooted, 100), 1);
        // Once answered, a reconnection does not register.
        accept(&mut rebooted, &mut sim, 150);
        rebooted.handle_reconnect(200);
        rebooted.handle_timeout(200, &mut sim.platform());
        assert_eq!(registers(&mut rebooted, 200), 0);
    }

    #[test]
    fn registering_again_takes_only_a_newer_configuration() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        let mut newer = DeviceConfig {
            version: 5,
            ..DeviceConfig::default()
        };
        newer.heartbeat_ms = 20_000;
        agent
            .handle_inbound(
                1_000,
                MessageKind::Config,
                &config_bytes(&newer),
                &mut sim.platform(),
            )
            .unwrap();
        assert_eq!(agent.config().version, 5);
        drop(agent);

        let reboot_and_answer = |sim: &mut Sim, config: &DeviceConfig| {
            let mut agent = new_agent();
            agent.boot(0, &mut sim.platform()).expect("boot");
            let raw = config_bytes(config);
            let bytes = encode(&RegisterAccepted {
                device_id: DEVICE_ID,
                config: Some(&raw),
                time_ms: 100,
            });
            agent
                .handle_inbound(
                    100,
                    MessageKind::RegisterAccepted,
                    &bytes,
                    &mut sim.platform(),
                )
                .unwrap();
            agent
        };
        // The fleet's configuration, older than the one the device holds.
        let fleet = DeviceConfig {
            version: 2,
            ..DeviceConfig::default()
        };
        let agent = reboot_and_answer(&mut sim, &fleet);
        assert_eq!(agent.config().version, 5);
        assert_eq!(agent.config().heartbeat_ms, 20_000);
        drop(agent);
        let later = DeviceConfig {
            version: 6,
            ..DeviceConfig::default()
        };
        let agent = reboot_and_answer(&mut sim, &later);
        assert_eq!(agent.config().version, 6);
        assert_eq!(agent.state(), S::Active);
    }

    #[test]
    fn reported_state_and_a_full_window_of_long_command_ids_survive_a_reboot() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        let delta = delta_bytes(3, 1, &[("led.on", lanyard_core::shadow::Value::Bool(true))]);
        agent
            .handle_inbound(2_000, MessageKind::ShadowDelta, &delta, &mut sim.platform())
            .unwrap();
        let ids: Vec<String> = (0..lanyard_core::agent::DEDUPE_WINDOW)
            .map(|i| format!("{i:0>64}"))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            send_cmd(
                &mut agent,
                &mut sim,
                3_000 + i as u64,
                id,
                "reboot_modem",
                &[],
            );
        }
        assert_eq!(agent.stats().storage_failures, 0);
        drop(agent);
        let mut rebooted = new_agent();
        rebooted.boot(60_000, &mut sim.platform()).expect("boot");
        accept(&mut rebooted, &mut sim, 60_100);
        assert_eq!(
            rebooted.reported().get_dotted("led.on").map(|e| e.value),
            Some(lanyard_core::shadow::Value::Bool(true))
        );
        for id in &ids {
            assert_eq!(
                duplicate_acks(&mut rebooted, &mut sim, 61_000, id),
                vec![(AckStatus::Succeeded, Some("duplicate".to_string()))]
            );
        }
        assert_eq!(sim.commands.runs, lanyard_core::agent::DEDUPE_WINDOW as u32);
    }

    #[test]
    fn a_record_that_is_not_this_devices_state_stops_the_boot_instead_of_starting_over() {
        let mut sim = Sim::new(1_000_000);
        sim.storage.slots.insert("state", vec![0xff, 0x00, 0x13]);
        let mut agent = new_agent();
        assert!(matches!(
            agent.boot(0, &mut sim.platform()),
            Err(lanyard_core::agent::BootError::Unreadable(_))
        ));
        assert_eq!(agent.state(), S::Unprovisioned);
        assert_eq!(agent.poll_timeout(), None);
        assert_eq!(agent.queued(), 0);
        // Nothing was overwritten: the record is there to inspect.
        assert_eq!(sim.storage.slots["state"], vec![0xff, 0x00, 0x13]);
    }

    #[test]
    fn storage_failures_are_counted_and_reported() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        sim.storage.fail = true;
        let delta = delta_bytes(3, 1, &[("led.on", lanyard_core::shadow::Value::Bool(true))]);
        agent
            .handle_inbound(2_000, MessageKind::ShadowDelta, &delta, &mut sim.platform())
            .unwrap();
        assert!(agent.stats().storage_failures > 0);
        let mut saw = false;
        while let Some(e) = agent.poll_event() {
            saw |= e == lanyard_core::agent::AgentEvent::StorageFailed;
        }
        assert!(saw);
        // The device keeps working from memory.
        let failures = agent.stats().storage_failures;
        assert_eq!(
            send_cmd(&mut agent, &mut sim, 3_000, "c", "reboot_modem", &[]).len(),
            2
        );
        assert!(agent.stats().storage_failures > failures);
    }
}

mod health {
    use super::*;

    #[test]
    fn a_battery_hovering_at_the_threshold_does_not_flap() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        let mut seen = Vec::new();
        for (i, pct) in [9u8, 10, 11, 9, 12, 14, 10, 15, 16].into_iter().enumerate() {
            let t = 5_100 + i as u64 * 5_000;
            // battery(t) = 100 - t / drain: pick drain so it reads `pct` at t.
            sim.probe.drain_every_ms = t / u64::from(100 - pct);
            assert_eq!(sim.probe.battery(t), pct);
            agent.handle_timeout(t, &mut sim.platform());
            // Sent, as a connected device's are: a full outbox is a health
            // reason of its own.
            drain(&mut agent, t, &mut Vec::new());
            seen.push(agent.state());
        }
        use S::{Active as A, Degraded as D};
        assert_eq!(seen, vec![D, D, D, D, D, D, D, A, A]);
    }
}

mod outbox {
    use super::*;

    #[test]
    fn offline_the_oldest_telemetry_goes_first_and_acks_and_lifecycle_never() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        // Offline for ten minutes: nothing is polled out.
        let mut t = 100;
        while let Some(next) = agent.poll_timeout() {
            if next > 600_000 {
                break;
            }
            t = next;
            agent.handle_timeout(t, &mut sim.platform());
        }
        let bytes = command("k1", "enter_maintenance", &[], t);
        agent
            .handle_inbound(t, MessageKind::Command, &bytes, &mut sim.platform())
            .unwrap();
        assert_eq!(agent.queued(), 16);
        let stats = *agent.stats();
        let idx = |k| MessageKind::ALL.iter().position(|x| *x == k).unwrap();
        assert!(stats.dropped[idx(MessageKind::Telemetry)] > 0);
        assert_eq!(stats.dropped[idx(MessageKind::Ack)], 0);
        assert_eq!(stats.dropped[idx(MessageKind::Lifecycle)], 0);
        let mut sent = Vec::new();
        drain(&mut agent, t, &mut sent);
        let kinds: Vec<MessageKind> = sent.iter().map(|s| s.kind).collect();
        assert!(kinds.contains(&MessageKind::Lifecycle));
        assert_eq!(kinds.iter().filter(|k| **k == MessageKind::Ack).count(), 2);
        // Telemetry went first: none is left while heartbeats remain.
        assert!(!kinds.contains(&MessageKind::Telemetry));
    }
}

mod bad_input {
    use super::*;

    #[test]
    fn device_bound_kinds_only_and_garbage_changes_nothing() {
        let mut sim = Sim::new(1_000_000);
        let (mut agent, _) = registered(&mut sim);
        assert_eq!(
            agent.handle_inbound(1, MessageKind::Heartbeat, &[0xa0], &mut sim.platform()),
            Err(InboundError::WrongDirection(MessageKind::Heartbeat))
        );
        for kind in [
            MessageKind::Command,
            MessageKind::Config,
            MessageKind::ShadowDelta,
        ] {
            for garbage in [&[][..], &[0xff], &[0xa1, 0x00], &[0x9f, 0x01]] {
                assert!(matches!(
                    agent.handle_inbound(2, kind, garbage, &mut sim.platform()),
                    Err(InboundError::Decode(_))
                ));
            }
        }
        assert_eq!(agent.state(), S::Active);
        assert_eq!(agent.stats().inbound_refused, 13);
        assert_eq!(agent.queued(), 0);
    }
}
