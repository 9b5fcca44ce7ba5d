//! A smart valve built on Lanyard's std driver: the application, not the
//! agent, decides what becomes of desired state.
//!
//! - `position` (0-100 %) moves at a finite speed: a new position is
//!   *pending* while the valve moves, its progress is reported as it goes,
//!   and the position reached is reported at the end;
//! - a position past the valve's mechanical limit is *rejected* as out of
//!   range, and the app sees why in the device's report and the shadow
//!   document; the reported position stays where the valve is;
//! - other properties are rejected as unknown, a non-integer position as
//!   the wrong type;
//! - its telemetry is its own, a serde struct: the flow through it (l/min)
//!   and where it is;
//! - `calibrate {sweeps}` (typed arguments, a serde struct) takes a while:
//!   acknowledged in progress at once, finished by the motor task when the
//!   sweeps are done (`{"travel_pct": ...}`).
//!
//! Run it against a broker and a twin host:
//!
//! ```sh
//! lanyard twin --broker mqtt://127.0.0.1:1883 --state-dir /tmp/twin &
//! cargo run -p lanyard-std --example valve -- mqtt://127.0.0.1:1883 /tmp/valve
//! ```
//!
//! `sdk-std/tests/valve.rs` runs it against mosquitto and drives it with
//! the app client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_core::agent::platform::{
    Applied, CommandFailure, DesiredState, Readings, RejectReason, TelemetrySource,
};
use lanyard_core::shadow::{Path, Value};
use lanyard_std::device::{
    BuildError, Commands, DeviceBuilder, DeviceHandle, DeviceTransport, Reply,
};
use lanyard_std::driver::{DeviceDriver, LocalValue};
use lanyard_std::mqtt::MqttConfig;

/// The valve's mechanism: where it is and where it is going.
#[derive(Debug, Default)]
pub struct Mechanism {
    /// Position, percent open.
    pub position: i64,
    /// Where it was asked to go and has not reached yet.
    pub target: Option<i64>,
    /// Ticks of calibration sweep left, while `calibrate` runs.
    pub calibrating: Option<u32>,
}

/// The flow at a position: 0.4 l/min per percent open.
pub fn flow_lpm(position: i64) -> f64 {
    position as f64 * 0.4
}

/// The valve's telemetry message, as a typed struct.
#[derive(serde::Serialize)]
pub struct ValveReadings {
    /// Flow through the valve, l/min.
    pub flow_lpm: f64,
    /// Where it is, percent open.
    pub position: i64,
}

/// The valve's telemetry: flow and position.
pub struct ValveTelemetry(pub Arc<Mutex<Mechanism>>);

impl TelemetrySource for ValveTelemetry {
    fn read(&mut self, _now_ms: u64, readings: &mut Readings) -> bool {
        let position = self.0.lock().unwrap_or_else(|e| e.into_inner()).position;
        let r = ValveReadings {
            flow_lpm: flow_lpm(position),
            position,
        };
        lanyard_core::shadow::typed::to_tree(&r, readings).is_ok()
    }
}

/// `calibrate`'s arguments.
#[derive(serde::Deserialize)]
pub struct Calibrate {
    /// Sweeps from closed to open and back, 1..=5 (1 when absent).
    pub sweeps: Option<u8>,
}

/// The valve's commands: `calibrate`, which runs for a few motor ticks and
/// is finished by the motor task.
pub fn valve_commands(mechanism: Arc<Mutex<Mechanism>>) -> Commands {
    Commands::new().on_typed("calibrate", move |c: Calibrate| {
        let sweeps = c.sweeps.unwrap_or(1);
        if !(1..=5).contains(&sweeps) {
            return Err(CommandFailure::BadArguments);
        }
        let mut m = mechanism.lock().unwrap_or_else(|e| e.into_inner());
        m.calibrating = Some(u32::from(sweeps) * 5);
        Ok(Reply::<()>::Later)
    })
}

/// The valve's answer to desired state.
pub struct ValveDesired {
    /// Highest position the valve can reach, percent.
    pub limit: i64,
    /// Shared with the motor task.
    pub mechanism: Arc<Mutex<Mechanism>>,
}

impl DesiredState for ValveDesired {
    fn apply<'v>(&mut self, _now_ms: u64, path: Path<'_>, desired: Value<'v>) -> Applied<'v> {
        if path.depth() != 1 || path.key(0) != Some("position") {
            return Applied::Rejected(RejectReason::UnknownProperty);
        }
        let Value::Int(wanted) = desired else {
            return Applied::Rejected(RejectReason::WrongType);
        };
        if !(0..=self.limit).contains(&wanted) {
            return Applied::Rejected(RejectReason::OutOfRange);
        }
        let mut m = self.mechanism.lock().unwrap_or_else(|e| e.into_inner());
        if m.position == wanted {
            m.target = None;
            return Applied::Reached(Value::Int(wanted));
        }
        // The motor task moves it and reports the positions it passes.
        m.target = Some(wanted);
        Applied::Pending
    }
}

/// Moves the valve `step` percent every `tick` towards its target and
/// reports each position through the device's handle; counts a
/// calibration down and finishes the command. Ends when the device does.
pub async fn run_motor(
    mechanism: Arc<Mutex<Mechanism>>,
    step: i64,
    tick: Duration,
    device: DeviceHandle,
) {
    loop {
        tokio::time::sleep(tick).await;
        let (moved, calibrated) = {
            let mut m = mechanism.lock().unwrap_or_else(|e| e.into_inner());
            let moved = match m.target {
                Some(t) if t != m.position => {
                    m.position += (t - m.position).clamp(-step, step);
                    if m.position == t {
                        m.target = None;
                    }
                    Some(m.position)
                }
                _ => None,
            };
            let calibrated = match m.calibrating {
                Some(0) => {
                    m.calibrating = None;
                    true
                }
                Some(n) => {
                    m.calibrating = Some(n - 1);
                    false
                }
                None => false,
            };
            (moved, calibrated)
        };
        if let Some(p) = moved {
            if device.report("position", LocalValue::Int(p)).is_err() {
                return;
            }
        }
        if calibrated {
            // {"travel_pct": 100}
            let mut result = lanyard_core::minicbor::Encoder::new(Vec::new());
            let _ = result.map(1).and_then(|e| e.str("travel_pct")?.u8(100));
            if device.complete_command(Ok(result.into_writer())).is_err() {
                return;
            }
        }
    }
}

/// A valve device on `broker`, its state in `state_dir`, identified by
/// `mac`. Returns the driver (with the motor's reports wired to it) and
/// the mechanism, for a caller that wants to watch it.
pub fn valve(
    broker: MqttConfig,
    state_dir: &std::path::Path,
    mac: [u8; 6],
    limit: i64,
) -> Result<(DeviceDriver<DeviceTransport>, Arc<Mutex<Mechanism>>), BuildError> {
    let mechanism = Arc::new(Mutex::new(Mechanism::default()));
    let (driver, handle) = DeviceBuilder::new(mac, "valve-1.0", broker, state_dir)
        // On mains (the default probe): healthy unless the agent's own
        // queue fills.
        .telemetry(ValveTelemetry(mechanism.clone()))
        .commands(valve_commands(mechanism.clone()))
        .desired(ValveDesired {
            limit,
            mechanism: mechanism.clone(),
        })
        .build()?;
    tokio::spawn(run_motor(
        mechanism.clone(),
        10,
        Duration::from_millis(100),
        handle,
    ));
    Ok((driver, mechanism))
}

#[allow(dead_code)] // The test includes this file for `valve` alone.
#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: valve BROKER-URL STATE-DIR".into());
    };
    let mac = [0x02, 0, 0, 0, 0x0a, 0x01];
    let id = lanyard_core::agent::device_id_from_mac(mac);
    let broker = MqttConfig::from_url(&url, id.as_str(), None, None)?;
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (mut driver, _) = valve(broker, &dir, mac, 80).map_err(|e| e.to_string())?;
    println!("valve {id}: position limit 80 %");
    driver.start().await.map_err(|e| e.to_string())?;
    driver
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}
