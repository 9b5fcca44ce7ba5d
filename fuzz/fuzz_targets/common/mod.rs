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
        SlowTelemetryOnLowBattery::default(),
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
    fn read_sensors(&mut self, _: u64) -> Option<SensorReading> {
        Some(SensorReading {
            temperature_c: 20.0,
            humidity_pct: 40.0,
        })
    }
}

/// An LED nobody looks at.
pub struct Led;
impl Actuators for Led {
    fn blink(&mut self, _: u32, _: u32) {}
}
