//! What the agent fuzz targets share: the board the agent runs on and the
//! agent itself, built the same way in each.

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::{HealthMetrics, SlowTelemetryOnLowBattery};
use lanyard_core::agent::platform::*;
use lanyard_core::agent::{Agent, Identity};

/// The agent every target fuzzes.
pub type FuzzAgent = Agent<SlowTelemetryOnLowBattery, 8, 256>;

/// A fresh agent for the device `ly-010203040506`.
pub fn new_agent() -> FuzzAgent {
    Agent::new(
        Identity {
            mac: [1, 2, 3, 4, 5, 6],
            device_id: None,
            firmware: "fuzz",
        },
        DeviceConfig::default(),
        SlowTelemetryOnLowBattery,
    )
}

/// Health that changes with time (the battery drains a percent a second),
/// and a sensor that always answers.
pub struct Probe;
impl HealthProbe for Probe {
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics {
        HealthMetrics {
            battery_pct: (100 - (now_ms / 1000) % 100) as u8,
            link_quality_pct: 50,
            free_buffer_pct: 50,
            ..HealthMetrics::default()
        }
    }
}

/// Telemetry that always reads a temperature.
impl TelemetrySource for Probe {
    fn read(&mut self, _: u64, readings: &mut Readings) -> bool {
        let key = lanyard_core::shadow::PathBuf::from_dotted("temperature_c").unwrap();
        readings
            .insert(&key, lanyard_core::shadow::Value::Float(20.0))
            .is_ok()
    }
}

/// Commands: `quick` finishes at once (reading an argument), `long` runs
/// until completed (which no target does: it stays running), others are
/// unknown.
pub struct Commands;
impl CommandHandler for Commands {
    fn execute(
        &mut self,
        _: u64,
        name: &str,
        args: Args<'_>,
        _: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        match name {
            "quick" => Some(args.u64("n").map(|_| Completion::Done(0))),
            "long" => Some(Ok(Completion::Later)),
            _ => None,
        }
    }
}
