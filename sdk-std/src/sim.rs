//! A simulated device: a battery that drains, a temperature that drifts, an
//! LED that only counts, and the board's commands (`blink_led`,
//! `read_sensor`). For the demo, benchmarks and tests; real devices
//! implement the same traits on real hardware.

use lanyard_core::agent::health::HealthMetrics;
use lanyard_core::agent::platform::{HealthProbe, Readings, TelemetrySource};
use lanyard_nostd::hal::{BoardCommands, SensorReading, board_readings};

/// Battery and sensors driven by a deterministic model of time.
#[derive(Debug, Clone)]
pub struct SimulatedSensors {
    /// When the simulation started, ms.
    pub start_ms: u64,
    /// Battery at the start, percent.
    pub start_battery_pct: u8,
    /// The battery loses 1 % every this many ms.
    pub drain_every_ms: u64,
    /// Phase of the temperature wave, so a fleet does not move in step.
    pub phase: u64,
}

impl SimulatedSensors {
    /// A device starting at `start_ms` with a full battery losing 1 % every
    /// `drain_every_ms`.
    pub fn new(start_ms: u64, drain_every_ms: u64, phase: u64) -> Self {
        SimulatedSensors {
            start_ms,
            start_battery_pct: 100,
            drain_every_ms: drain_every_ms.max(1),
            phase,
        }
    }

    /// Battery at `now_ms`.
    pub fn battery(&self, now_ms: u64) -> u8 {
        let used = now_ms.saturating_sub(self.start_ms) / self.drain_every_ms;
        u64::from(self.start_battery_pct).saturating_sub(used) as u8
    }
}

impl HealthProbe for SimulatedSensors {
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics {
        HealthMetrics {
            battery_pct: self.battery(now_ms),
            link_quality_pct: 80,
            sensor_failures: 0,
            data_age_ms: 0,
            free_buffer_pct: 90,
            uptime_ms: now_ms.saturating_sub(self.start_ms),
        }
    }
}

impl TelemetrySource for SimulatedSensors {
    fn read(&mut self, now_ms: u64, readings: &mut Readings) -> bool {
        let r = self.read_sensors(now_ms);
        board_readings(readings, r, self.battery(now_ms))
    }
}

impl SimulatedSensors {
    /// The sensor reading at `now_ms`.
    pub fn read_sensors(&self, now_ms: u64) -> SensorReading {
        // A slow triangle wave between 19 and 25 °C.
        let t = (now_ms + self.phase) / 1_000 % 600;
        let wave = if t < 300 { t } else { 600 - t } as f32 / 50.0;
        SensorReading {
            temperature_c: 19.0 + wave,
            humidity_pct: 40.0 + wave,
        }
    }
}

/// An LED that remembers how it was asked to blink.
#[derive(Debug, Default, Clone)]
pub struct CountingLed {
    /// `(count, period_ms)` of every blink command.
    pub blinks: Vec<(u32, u32)>,
}

impl CountingLed {
    /// Records a blink.
    pub fn blink(&mut self, count: u32, period_ms: u32) {
        self.blinks.push((count, period_ms));
    }
}

/// The simulated board's commands, those of the example board
/// ([`BoardCommands`]): `blink_led` blinks a [`CountingLed`], `read_sensor`
/// reads the [`SimulatedSensors`].
pub fn simulated_board(
    sensors: SimulatedSensors,
    led: std::sync::Arc<std::sync::Mutex<CountingLed>>,
) -> BoardCommands<impl FnMut(u32, u32) + Send, impl FnMut(u64) -> Option<SensorReading> + Send> {
    BoardCommands {
        blink: move |count, period| {
            led.lock()
                .unwrap_or_else(|e| e.into_inner())
                .blink(count, period)
        },
        read: move |now_ms| Some(sensors.read_sensors(now_ms)),
    }
}
