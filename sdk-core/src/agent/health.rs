//! Health: metrics from a probe, a status with thresholds and hysteresis,
//! and the telemetry-rate policy of degraded mode.

use super::config::DeviceConfig;
use super::lifecycle::LifecycleState;

/// What a [`super::platform::HealthProbe`] reports.
///
/// The default is a healthy device on mains power: battery and link at
/// 100 %, no sensor failures, fresh data, an empty buffer. A probe fills
/// in what its board measures and leaves the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthMetrics {
    /// Battery charge, percent (0..=100).
    pub battery_pct: u8,
    /// Link quality, percent (0..=100).
    pub link_quality_pct: u8,
    /// Sensor reads that failed in a row.
    pub sensor_failures: u32,
    /// Age of the newest good sensor reading, ms.
    pub data_age_ms: u64,
    /// Free space in the outbound buffer, percent.
    pub free_buffer_pct: u8,
    /// Time since boot, ms.
    pub uptime_ms: u64,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        HealthMetrics {
            battery_pct: 100,
            link_quality_pct: 100,
            sensor_failures: 0,
            data_age_ms: 0,
            free_buffer_pct: 100,
            uptime_ms: 0,
        }
    }
}

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthStatus {
    /// All metrics fine.
    Normal = 0,
    /// Some metric past its warning threshold.
    Warning = 1,
    /// Some metric past its critical threshold: the device degrades.
    Critical = 2,
}

impl HealthStatus {
    /// From a wire code.
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(HealthStatus::Normal),
            1 => Some(HealthStatus::Warning),
            2 => Some(HealthStatus::Critical),
            _ => None,
        }
    }

    /// Stable name, as in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            HealthStatus::Normal => "Normal",
            HealthStatus::Warning => "Warning",
            HealthStatus::Critical => "Critical",
        }
    }
}

/// Which metric set the status: bits of [`HealthReport::reasons`].
pub mod reason {
    /// Battery low.
    pub const BATTERY: u8 = 1 << 0;
    /// Link quality low.
    pub const LINK: u8 = 1 << 1;
    /// Sensor reads failing.
    pub const SENSOR: u8 = 1 << 2;
    /// Sensor data stale.
    pub const STALE_DATA: u8 = 1 << 3;
    /// Outbound buffer nearly full.
    pub const BUFFER: u8 = 1 << 4;
}

/// Thresholds: a metric is Warning past `warn`, Critical past `crit`. To
/// leave Critical, it must come back past `crit` by the hysteresis margin,
/// so a battery hovering at the threshold does not flap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthThresholds {
    /// Battery warning below this percent.
    pub battery_warn_pct: u8,
    /// Battery critical below this percent (the seed: 10).
    pub battery_crit_pct: u8,
    /// Link warning below this percent.
    pub link_warn_pct: u8,
    /// Link critical below this percent.
    pub link_crit_pct: u8,
    /// Sensor failures in a row for Warning.
    pub sensor_failures_warn: u32,
    /// Sensor failures in a row for Critical.
    pub sensor_failures_crit: u32,
    /// Data older than this (ms) is Warning.
    pub stale_warn_ms: u64,
    /// Data older than this (ms) is Critical.
    pub stale_crit_ms: u64,
    /// Free buffer below this percent is Warning.
    pub buffer_warn_pct: u8,
    /// Free buffer below this percent is Critical.
    pub buffer_crit_pct: u8,
    /// Margin (percentage points) a percent metric must regain to leave
    /// Critical.
    pub hysteresis_pct: u8,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            battery_warn_pct: 20,
            battery_crit_pct: 10,
            link_warn_pct: 30,
            link_crit_pct: 10,
            sensor_failures_warn: 1,
            sensor_failures_crit: 3,
            stale_warn_ms: 120_000,
            stale_crit_ms: 600_000,
            buffer_warn_pct: 25,
            buffer_crit_pct: 10,
            hysteresis_pct: 5,
        }
    }
}

/// The result of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReport {
    /// Overall status.
    pub status: HealthStatus,
    /// Which metrics are at the status (bits of [`reason`]).
    pub reasons: u8,
    /// The metrics it was computed from.
    pub metrics: HealthMetrics,
}

impl HealthThresholds {
    /// Evaluates `m`. `was_critical` applies the hysteresis: percent metrics
    /// that were critical stay critical until they regain the margin.
    pub fn evaluate(&self, m: &HealthMetrics, was_critical: bool) -> HealthReport {
        let margin = if was_critical { self.hysteresis_pct } else { 0 };
        let mut worst = HealthStatus::Normal;
        let mut reasons = 0u8;
        let mut rate = |status: HealthStatus, bit: u8| {
            if status > worst {
                worst = status;
                reasons = 0;
            }
            if status == worst && status != HealthStatus::Normal {
                reasons |= bit;
            }
        };
        let low = |value: u8, warn: u8, crit: u8| {
            if value < crit.saturating_add(margin) {
                HealthStatus::Critical
            } else if value < warn {
                HealthStatus::Warning
            } else {
                HealthStatus::Normal
            }
        };
        let high = |value: u64, warn: u64, crit: u64| {
            if value >= crit {
                HealthStatus::Critical
            } else if value >= warn {
                HealthStatus::Warning
            } else {
                HealthStatus::Normal
            }
        };
        rate(
            low(m.battery_pct, self.battery_warn_pct, self.battery_crit_pct),
            reason::BATTERY,
        );
        rate(
            low(m.link_quality_pct, self.link_warn_pct, self.link_crit_pct),
            reason::LINK,
        );
        rate(
            high(
                u64::from(m.sensor_failures),
                u64::from(self.sensor_failures_warn),
                u64::from(self.sensor_failures_crit),
            ),
            reason::SENSOR,
        );
        rate(
            high(m.data_age_ms, self.stale_warn_ms, self.stale_crit_ms),
            reason::STALE_DATA,
        );
        rate(
            low(
                m.free_buffer_pct,
                self.buffer_warn_pct,
                self.buffer_crit_pct,
            ),
            reason::BUFFER,
        );
        HealthReport {
            status: worst,
            reasons,
            metrics: *m,
        }
    }
}

/// Decides the telemetry interval from the configuration in force, the
/// lifecycle state and the last health report. Users can supply their own.
pub trait TelemetryPolicy {
    /// The interval to use, in ms.
    fn telemetry_interval_ms(
        &self,
        config: &DeviceConfig,
        state: LifecycleState,
        health: &HealthReport,
    ) -> u64;
}

/// The default rule: in Degraded with the battery below the critical
/// threshold, telemetry slows by the configuration's
/// `degraded_telemetry_factor` (3 unless the fleet says otherwise);
/// heartbeats are not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlowTelemetryOnLowBattery;

impl TelemetryPolicy for SlowTelemetryOnLowBattery {
    fn telemetry_interval_ms(
        &self,
        config: &DeviceConfig,
        state: LifecycleState,
        health: &HealthReport,
    ) -> u64 {
        let low_battery = health.metrics.battery_pct < config.thresholds.battery_crit_pct;
        if state == LifecycleState::Degraded && low_battery {
            config
                .telemetry_ms
                .saturating_mul(u64::from(config.degraded_telemetry_factor.max(1)))
        } else {
            config.telemetry_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HealthMetrics {
        HealthMetrics {
            battery_pct: 80,
            link_quality_pct: 90,
            sensor_failures: 0,
            data_age_ms: 1_000,
            free_buffer_pct: 90,
            uptime_ms: 0,
        }
    }

    #[test]
    fn thresholds_grade_each_metric_and_keep_the_worst() {
        let t = HealthThresholds::default();
        assert_eq!(t.evaluate(&healthy(), false).status, HealthStatus::Normal);
        let warn = HealthMetrics {
            battery_pct: 15,
            ..healthy()
        };
        let r = t.evaluate(&warn, false);
        assert_eq!(
            (r.status, r.reasons),
            (HealthStatus::Warning, reason::BATTERY)
        );
        let crit = HealthMetrics {
            battery_pct: 9,
            sensor_failures: 1,
            ..healthy()
        };
        let r = t.evaluate(&crit, false);
        assert_eq!(
            (r.status, r.reasons),
            (HealthStatus::Critical, reason::BATTERY)
        );
        let stale = HealthMetrics {
            data_age_ms: 600_000,
            free_buffer_pct: 5,
            ..healthy()
        };
        let r = t.evaluate(&stale, false);
        assert_eq!(r.reasons, reason::STALE_DATA | reason::BUFFER);
    }

    #[test]
    fn hysteresis_keeps_a_hovering_battery_critical() {
        let t = HealthThresholds::default();
        let at = |pct| HealthMetrics {
            battery_pct: pct,
            ..healthy()
        };
        assert_eq!(t.evaluate(&at(10), false).status, HealthStatus::Warning);
        assert_eq!(t.evaluate(&at(10), true).status, HealthStatus::Critical);
        assert_eq!(t.evaluate(&at(14), true).status, HealthStatus::Critical);
        assert_eq!(t.evaluate(&at(15), true).status, HealthStatus::Warning);
    }

    #[test]
    fn telemetry_slows_by_the_configured_factor_only_when_degraded_with_a_low_battery() {
        let mut config = DeviceConfig {
            telemetry_ms: 30_000,
            ..DeviceConfig::default()
        };
        let t = config.thresholds;
        let p = SlowTelemetryOnLowBattery;
        let low = t.evaluate(
            &HealthMetrics {
                battery_pct: 5,
                ..healthy()
            },
            false,
        );
        let ok = t.evaluate(&healthy(), false);
        assert_eq!(
            p.telemetry_interval_ms(&config, LifecycleState::Degraded, &low),
            90_000
        );
        assert_eq!(
            p.telemetry_interval_ms(&config, LifecycleState::Active, &low),
            30_000
        );
        assert_eq!(
            p.telemetry_interval_ms(&config, LifecycleState::Degraded, &ok),
            30_000
        );
        // The fleet's factor is the one used (it was always 3).
        config.degraded_telemetry_factor = 5;
        assert_eq!(
            p.telemetry_interval_ms(&config, LifecycleState::Degraded, &low),
            150_000
        );
    }

    #[test]
    fn the_default_metrics_are_a_healthy_mains_powered_device() {
        let report = HealthThresholds::default().evaluate(&HealthMetrics::default(), false);
        assert_eq!((report.status, report.reasons), (HealthStatus::Normal, 0));
    }
}
