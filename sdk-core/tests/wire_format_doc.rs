//! Every hex example in `docs/wire-format.md` decodes as the message it is
//! labelled with, and encodes back to the same bytes.

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::HealthStatus;
use lanyard_core::agent::lifecycle::{LifecycleState, Trigger};
use lanyard_core::agent::messages::*;
use lanyard_core::agent::platform::RejectReason;
use lanyard_core::shadow::{ConflictPolicy, Shadow};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate, reason_code};

fn examples() -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire-format.md");
    let doc = std::fs::read_to_string(path).expect("docs/wire-format.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- example ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next(),
            Some("```hex"),
            "example {name} needs a hex block"
        );
        let hex = lines.next().unwrap().trim();
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.push((name.to_string(), bytes));
    }
    out
}

#[test]
fn every_example_decodes_and_re_encodes_identically() {
    let examples = examples();
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "shadow-update",
            "shadow-update-rejected",
            "shadow-delta",
            "shadow-document",
            "shadow-document-rejected",
            "register",
            "register-resumed",
            "register-accepted",
            "device-config",
            "config-ack",
            "lifecycle-event",
            "heartbeat",
            "telemetry",
            "health-report",
            "command",
            "ack",
        ]
    );
    let mut buf = vec![0u8; 4096];
    for (name, bytes) in &examples {
        let n = match name.as_str() {
            "shadow-update" => {
                let m: ShadowUpdate<8, 256> = ShadowUpdate::decode(bytes).unwrap();
                assert_eq!(m.expected_version, Some(7));
                assert_eq!(m.reported.as_ref().unwrap().len(), 3);
                m.encode(&mut buf).unwrap()
            }
            "shadow-update-rejected" => {
                let m: ShadowUpdate<8, 256> = ShadowUpdate::decode(bytes).unwrap();
                let refused = m.rejected.as_ref().unwrap();
                let code = refused.get_dotted("position").unwrap().value;
                assert_eq!(
                    reason_code(code).map(RejectReason::from_code),
                    Some(RejectReason::OutOfRange)
                );
                m.encode(&mut buf).unwrap()
            }
            "shadow-document-rejected" => {
                let m: Shadow<8, 256> = Shadow::decode(bytes, ConflictPolicy::CloudWins).unwrap();
                let refused: Vec<(String, u32)> = m
                    .rejected()
                    .map(|(p, c)| (p.keys().collect::<Vec<_>>().join("."), c))
                    .collect();
                assert_eq!(refused, [("position".to_string(), 1)]);
                assert!(!m.in_sync());
                m.encode(&mut buf).unwrap()
            }
            "shadow-delta" => {
                let m: ShadowDelta<8, 256> = ShadowDelta::decode(bytes).unwrap();
                assert_eq!(m.version, 1);
                m.encode(&mut buf).unwrap()
            }
            "shadow-document" => {
                let m: Shadow<8, 256> = Shadow::decode(bytes, ConflictPolicy::CloudWins).unwrap();
                assert_eq!(m.version(), 2);
                assert!(m.in_sync());
                m.encode(&mut buf).unwrap()
            }
            "register" => {
                let m = Register::decode(bytes).unwrap();
                assert_eq!(
                    (m.device_id, m.boot_count, m.resumed),
                    ("ly-0a1b2c3d4e5f", 1, false)
                );
                m.encode(&mut buf).unwrap()
            }
            "register-resumed" => {
                let m = Register::decode(bytes).unwrap();
                assert_eq!((m.boot_count, m.time_ms, m.resumed), (2, 600_000, true));
                m.encode(&mut buf).unwrap()
            }
            "register-accepted" => {
                let m = RegisterAccepted::decode(bytes).unwrap();
                let c = DeviceConfig::default()
                    .decode_update(&mut minicbor::Decoder::new(m.config.unwrap()))
                    .unwrap();
                assert_eq!(c.version, 1);
                m.encode(&mut buf).unwrap()
            }
            "device-config" => {
                let c = DeviceConfig::default()
                    .decode_update(&mut minicbor::Decoder::new(bytes))
                    .unwrap();
                assert_eq!(
                    c,
                    DeviceConfig {
                        version: 1,
                        ..DeviceConfig::default()
                    }
                );
                let mut e = minicbor::Encoder::new(Vec::new());
                c.encode_cbor(&mut e).unwrap();
                let v = e.into_writer();
                buf[..v.len()].copy_from_slice(&v);
                v.len()
            }
            "config-ack" => {
                let m = ConfigAck::decode(bytes).unwrap();
                assert_eq!(
                    (m.outcome, m.field),
                    (ConfigOutcome::Rejected, Some("battery_crit_pct"))
                );
                m.encode(&mut buf).unwrap()
            }
            "lifecycle-event" => {
                let m = LifecycleEvent::decode(bytes).unwrap();
                assert_eq!(
                    (m.from, m.to, m.cause),
                    (
                        LifecycleState::Provisioning,
                        LifecycleState::Active,
                        Trigger::RegistrationAccepted
                    )
                );
                m.encode(&mut buf).unwrap()
            }
            "heartbeat" => {
                let m = Heartbeat::decode(bytes).unwrap();
                assert_eq!((m.seq, m.health), (1, HealthStatus::Normal));
                m.encode(&mut buf).unwrap()
            }
            "telemetry" => {
                let m: Telemetry<8, 256> = Telemetry::decode(bytes).unwrap();
                let flow = m.readings.get_dotted("flow_lpm").unwrap().value;
                assert_eq!((m.seq, flow), (1, lanyard_core::shadow::Value::Float(12.5)));
                m.encode(&mut buf).unwrap()
            }
            "health-report" => {
                let m = HealthMessage::decode(bytes).unwrap();
                assert_eq!(m.report.status, HealthStatus::Critical);
                m.encode(&mut buf).unwrap()
            }
            "command" => {
                let m = Command::decode(bytes).unwrap();
                assert_eq!(
                    (m.name, m.args().u64("count").unwrap()),
                    ("blink_led", Some(3))
                );
                m.encode(&mut buf).unwrap()
            }
            "ack" => {
                let m = Ack::decode(bytes).unwrap();
                assert_eq!(
                    (m.status, m.reason),
                    (AckStatus::Rejected, Some(AckReason::NotAllowed))
                );
                m.encode(&mut buf).unwrap()
            }
            other => panic!("unknown example {other}"),
        };
        assert_eq!(&buf[..n], &bytes[..], "{name} re-encodes differently");
    }
}
