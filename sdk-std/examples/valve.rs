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
//!   the wrong type.
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

use lanyard_core::agent::platform::{Applied, DesiredState, NoCommands, RejectReason};
use lanyard_core::shadow::{Path, Value};
use lanyard_std::clock::Clock;
use lanyard_std::driver::{DeviceDriver, LocalChange, LocalValue, StdPlatform, std_agent};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::sim::{CountingLed, SimulatedSensors};
use lanyard_std::store::FileStore;
use tokio::sync::mpsc;

/// The valve's mechanism: where it is and where it is going.
#[derive(Debug, Default)]
pub struct Mechanism {
    /// Position, percent open.
    pub position: i64,
    /// Where it was asked to go and has not reached yet.
    pub target: Option<i64>,
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
/// reports each position through `report`, until `report` is closed.
pub async fn run_motor(
    mechanism: Arc<Mutex<Mechanism>>,
    step: i64,
    tick: Duration,
    report: mpsc::UnboundedSender<LocalChange>,
) {
    loop {
        tokio::time::sleep(tick).await;
        let moved = {
            let mut m = mechanism.lock().unwrap_or_else(|e| e.into_inner());
            match m.target {
                Some(t) if t != m.position => {
                    m.position += (t - m.position).clamp(-step, step);
                    if m.position == t {
                        m.target = None;
                    }
                    Some(m.position)
                }
                _ => None,
            }
        };
        if let Some(p) = moved {
            if report
                .send(("position".to_owned(), LocalValue::Int(p)))
                .is_err()
            {
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
) -> std::io::Result<(DeviceDriver<MqttTransport>, Arc<Mutex<Mechanism>>)> {
    let clock = Clock::real();
    let mechanism = Arc::new(Mutex::new(Mechanism::default()));
    let platform = StdPlatform {
        storage: Box::new(FileStore::open(state_dir)?),
        probe: Box::new(SimulatedSensors::new(clock.now_ms(), 3_600_000, 0)),
        actuators: Box::new(CountingLed::default()),
        commands: Box::new(NoCommands),
        desired: Box::new(ValveDesired {
            limit,
            mechanism: mechanism.clone(),
        }),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run_motor(
        mechanism.clone(),
        10,
        Duration::from_millis(100),
        tx,
    ));
    let driver = DeviceDriver::new(
        std_agent(mac, "valve-1.0"),
        MqttTransport::connect(broker),
        platform,
        clock,
    )
    .with_local_changes(rx);
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
