//! Prints a hex example of each shadow message; `docs/wire-format.md`
//! carries these, and `tests/wire_format_doc.rs` decodes them.

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::{HealthMetrics, HealthStatus, HealthThresholds};
use lanyard_core::agent::lifecycle::{LifecycleState, Trigger};
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{ConflictPolicy, PathBuf, Shadow, StateTree, Value};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};

/// A tiny writer into a fixed buffer, for the configuration map.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl minicbor::encode::Write for Cursor<'_> {
    type Error = ();
    fn write_all(&mut self, data: &[u8]) -> Result<(), ()> {
        let end = self.len + data.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(())?
            .copy_from_slice(data);
        self.len = end;
        Ok(())
    }
}

fn lanyard_core_cursor(buf: &mut [u8]) -> Cursor<'_> {
    Cursor { buf, len: 0 }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> Result<(), lanyard_core::Error> {
    let mut buf = [0u8; 1024];
    let p = |s: &str| PathBuf::from_dotted(s).unwrap();

    // A device reports a temperature and its LED; the LED period is deleted.
    let mut reported: StateTree<8, 256> = StateTree::new();
    reported.insert(&p("temp"), Value::Float(21.5))?;
    reported.insert(&p("led.on"), Value::Bool(true))?;
    reported.insert(&p("led.period_ms"), Value::Null)?;
    let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(1_700_000_000_000);
    up.reported = Some(reported);
    up.expected_version = Some(7);
    up.client_token = Some(heapless::String::try_from("c1").unwrap());
    let n = up.encode(&mut buf)?;
    println!("shadow-update {}", hex(&buf[..n]));

    // The cloud asks for a new interval; the delta a device receives.
    let mut shadow: Shadow<8, 256> = Shadow::new(ConflictPolicy::CloudWins);
    let mut desired: StateTree<8, 256> = StateTree::new();
    desired.insert(&p("config.interval_ms"), Value::Int(30_000))?;
    shadow.apply_desired(&desired, None, 1_700_000_000_000)?;
    let delta: ShadowDelta<8, 256> = ShadowDelta::of(&shadow, 1_700_000_000_500)?;
    let n = delta.encode(&mut buf)?;
    println!("shadow-delta {}", hex(&buf[..n]));

    // The whole document after the device reports it applied the change.
    let mut rep: StateTree<8, 256> = StateTree::new();
    rep.insert(&p("config.interval_ms"), Value::Int(30_000))?;
    shadow.apply_reported(&rep, None, 1_700_000_001_000)?;
    let _ = shadow.sync(1_700_000_001_000, 0, |_| {})?;
    let n = shadow.encode(&mut buf)?;
    println!("shadow-document {}", hex(&buf[..n]));

    // A valve asked for position 150 refuses it as out of range (reason
    // 1) and reports where it is; the document keeps the refusal.
    let mut valve: Shadow<8, 256> = Shadow::new(ConflictPolicy::CloudWins);
    let mut ask: StateTree<8, 256> = StateTree::new();
    ask.insert(&p("position"), Value::Int(150))?;
    valve.apply_desired(&ask, None, 1_700_000_000_000)?;
    let mut at: StateTree<8, 256> = StateTree::new();
    at.insert(&p("position"), Value::Int(40))?;
    let mut refused: StateTree<8, 256> = StateTree::new();
    refused.insert(&p("position"), Value::Int(1))?;
    let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(1_700_000_001_000);
    up.reported = Some(at);
    up.rejected = Some(refused);
    let n = up.encode(&mut buf)?;
    println!("shadow-update-rejected {}", hex(&buf[..n]));
    up.apply_to(&mut valve)?;
    let n = valve.encode(&mut buf)?;
    println!("shadow-document-rejected {}", hex(&buf[..n]));

    // The agent's messages.
    let t = 1_700_000_000_000;
    let id = "ly-0a1b2c3d4e5f";
    let print = |name: &str, n: usize, buf: &[u8]| println!("{name} {}", hex(&buf[..n]));
    let n = Register {
        device_id: id,
        firmware: "1.0.0",
        config_version: 0,
        boot_count: 1,
        time_ms: t,
        resumed: false,
        capacity: None,
    }
    .encode(&mut buf)?;
    print("register", n, &buf);
    // The same device after a reboot that resumed it in service.
    let n = Register {
        device_id: id,
        firmware: "1.0.0",
        config_version: 1,
        boot_count: 2,
        time_ms: 600_000,
        resumed: true,
        capacity: None,
    }
    .encode(&mut buf)?;
    print("register-resumed", n, &buf);
    let mut cfg = [0u8; 128];
    let mut e = minicbor::Encoder::new(lanyard_core_cursor(&mut cfg));
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::default()
    };
    config.encode_cbor(&mut e).expect("fits");
    let cfg_len = e.into_writer().len;
    print("device-config", cfg_len, &cfg);
    let n = RegisterAccepted {
        device_id: id,
        config: Some(&cfg[..cfg_len]),
        time_ms: t + 500,
    }
    .encode(&mut buf)?;
    print("register-accepted", n, &buf);
    let n = LifecycleEvent {
        from: LifecycleState::Provisioning,
        to: LifecycleState::Active,
        cause: Trigger::RegistrationAccepted,
        time_ms: t + 500,
        seq: 2,
    }
    .encode(&mut buf)?;
    print("lifecycle-event", n, &buf);
    let n = Heartbeat {
        seq: 1,
        time_ms: t + 10_500,
        uptime_ms: 10_500,
        state: LifecycleState::Active,
        health: HealthStatus::Normal,
    }
    .encode(&mut buf)?;
    print("heartbeat", n, &buf);
    let mut readings: StateTree<8, 256> = StateTree::new();
    readings.insert(&p("flow_lpm"), Value::Float(12.5))?;
    readings.insert(&p("valve.position"), Value::Int(40))?;
    let n = Telemetry {
        seq: 1,
        time_ms: t + 30_500,
        readings,
    }
    .encode(&mut buf)?;
    print("telemetry", n, &buf);
    let metrics = HealthMetrics {
        battery_pct: 9,
        link_quality_pct: 80,
        sensor_failures: 0,
        data_age_ms: 1_000,
        free_buffer_pct: 90,
        uptime_ms: 315_500,
    };
    let report = HealthThresholds::default().evaluate(&metrics, false);
    let n = HealthMessage {
        time_ms: t + 315_500,
        report,
    }
    .encode(&mut buf)?;
    print("health-report", n, &buf);
    let args = [
        0xa2, 0x65, b'c', b'o', b'u', b'n', b't', 0x03, 0x69, b'p', b'e', b'r', b'i', b'o', b'd',
        b'_', b'm', b's', 0x19, 0x01, 0xf4,
    ];
    let n = Command {
        id: "c2",
        name: "blink_led",
        args: &args,
        issued_ms: t + 135_000,
        expires_ms: t + 165_000,
    }
    .encode(&mut buf)?;
    print("command", n, &buf);
    let n = Ack {
        command_id: "c9",
        status: AckStatus::Rejected,
        reason: Some(AckReason::NotAllowed),
        detail: None,
        result: None,
        time_ms: t + 1_000,
    }
    .encode(&mut buf)?;
    print("ack", n, &buf);
    let n = ConfigAck {
        version: 4,
        outcome: ConfigOutcome::Rejected,
        current_version: 3,
        field: Some("battery_crit_pct"),
        reason: Some("critical must be below warning, warning at most 100"),
        time_ms: t + 450_000,
    }
    .encode(&mut buf)?;
    print("config-ack", n, &buf);
    Ok(())
}
