//! The board's telemetry as a typed struct (the `serde` feature): what an
//! application with its own state types writes, through lanyard-core's
//! typed state and no allocator.

use lanyard_core::agent::platform::{Readings, TelemetrySource};
use lanyard_nostd::hal::SensorReading;
use serde::Serialize;

/// One telemetry message of this board.
#[derive(Serialize)]
struct BoardReadings {
    temperature_c: f32,
    humidity_pct: f32,
    battery_pct: u8,
}

/// Telemetry from a reading and the battery level `read` returns (`None`:
/// the sensor failed, nothing is sent).
pub struct TypedTelemetry<F>(pub F);

impl<F: FnMut(u64) -> Option<(SensorReading, u8)>> TelemetrySource for TypedTelemetry<F> {
    fn read(&mut self, now_ms: u64, readings: &mut Readings) -> bool {
        let Some((r, battery_pct)) = (self.0)(now_ms) else {
            return false;
        };
        let typed = BoardReadings {
            temperature_c: r.temperature_c,
            humidity_pct: r.humidity_pct,
            battery_pct,
        };
        lanyard_core::shadow::typed::to_tree(&typed, readings).is_ok()
    }
}
