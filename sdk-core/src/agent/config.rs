//! Versioned device configuration: what the device runs with (intervals,
//! health thresholds, the degraded-mode factor). The fleet's conflict
//! policies are the twin host's, not the device's:
//! [`FleetPolicies`](crate::shadow::FleetPolicies).

use minicbor::decode::Decoder;
use minicbor::encode::{Encoder, Write};

use super::health::HealthThresholds;
use crate::error::DecodeError;
use crate::wire::cbor;
use crate::wire::each_field;

/// The configuration the agent runs with. Defaults are the seed chapter's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Version; an update must be newer to apply.
    pub version: u64,
    /// Heartbeat interval (seed: 10 s).
    pub heartbeat_ms: u64,
    /// Telemetry interval (seed: 30 s).
    pub telemetry_ms: u64,
    /// Health check interval (seed: 5 s).
    pub health_ms: u64,
    /// Shadow sync interval (seed: 15 s; also at once on change).
    pub shadow_sync_ms: u64,
    /// Health thresholds (seed: battery critical below 10 %).
    pub thresholds: HealthThresholds,
    /// Telemetry slow-down in Degraded with a low battery (seed: 3x).
    pub degraded_telemetry_factor: u32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            version: 0,
            heartbeat_ms: 10_000,
            telemetry_ms: 30_000,
            health_ms: 5_000,
            shadow_sync_ms: 15_000,
            thresholds: HealthThresholds::default(),
            degraded_telemetry_factor: 3,
        }
    }
}

/// A configuration value that is out of range; names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidConfig {
    /// The field's wire name.
    pub field: &'static str,
    /// Why it was refused.
    pub reason: &'static str,
}

impl core::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.reason)
    }
}

/// Shortest interval accepted, ms.
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// Longest interval accepted, ms (one day).
pub const MAX_INTERVAL_MS: u64 = 86_400_000;

impl DeviceConfig {
    /// Checks every field; the first bad one is named.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let interval = |field, v: u64| {
            if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&v) {
                Ok(())
            } else {
                Err(InvalidConfig {
                    field,
                    reason: "must be between 1000 ms and 86400000 ms",
                })
            }
        };
        interval("heartbeat_ms", self.heartbeat_ms)?;
        interval("telemetry_ms", self.telemetry_ms)?;
        interval("health_ms", self.health_ms)?;
        interval("shadow_sync_ms", self.shadow_sync_ms)?;
        let t = &self.thresholds;
        let pair = |field, crit: u8, warn: u8| {
            if crit < warn && warn <= 100 {
                Ok(())
            } else {
                Err(InvalidConfig {
                    field,
                    reason: "critical must be below warning, warning at most 100",
                })
            }
        };
        pair("battery_crit_pct", t.battery_crit_pct, t.battery_warn_pct)?;
        pair("link_crit_pct", t.link_crit_pct, t.link_warn_pct)?;
        if t.hysteresis_pct > 50 {
            return Err(InvalidConfig {
                field: "hysteresis_pct",
                reason: "must be at most 50",
            });
        }
        if !(1..=100).contains(&self.degraded_telemetry_factor) {
            return Err(InvalidConfig {
                field: "degraded_telemetry_factor",
                reason: "must be between 1 and 100",
            });
        }
        Ok(())
    }

    /// Writes the full configuration as a `device-config` map.
    pub fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        let t = &self.thresholds;
        e.map(11)?;
        e.u8(0)?.u64(self.version)?;
        e.u8(1)?.u64(self.heartbeat_ms)?;
        e.u8(2)?.u64(self.telemetry_ms)?;
        e.u8(3)?.u64(self.health_ms)?;
        e.u8(4)?.u64(self.shadow_sync_ms)?;
        e.u8(5)?.u8(t.battery_warn_pct)?;
        e.u8(6)?.u8(t.battery_crit_pct)?;
        e.u8(7)?.u8(t.link_warn_pct)?;
        e.u8(8)?.u8(t.link_crit_pct)?;
        e.u8(9)?.u8(t.hysteresis_pct)?;
        e.u8(10)?.u32(self.degraded_telemetry_factor)?;
        Ok(())
    }

    /// Reads a `device-config` map as an update of `self`: the version is
    /// required, absent fields keep their current value, keys it does not
    /// know are skipped (11 and 12, the conflict policies older hosts sent,
    /// among them). The result is not validated here; see
    /// [`DeviceConfig::validate`].
    pub fn decode_update(&self, d: &mut Decoder<'_>) -> Result<DeviceConfig, DecodeError> {
        let mut c = self.clone();
        let mut have_version = false;
        each_field(d, |key, d| {
            let at = d.position();
            let small = |d: &mut Decoder<'_>| -> Result<u8, DecodeError> {
                u8::try_from(cbor::read_u64(d)?).map_err(|_| DecodeError::IntegerOutOfRange { at })
            };
            match key {
                0 => {
                    c.version = cbor::read_u64(d)?;
                    have_version = true;
                }
                1 => c.heartbeat_ms = cbor::read_u64(d)?,
                2 => c.telemetry_ms = cbor::read_u64(d)?,
                3 => c.health_ms = cbor::read_u64(d)?,
                4 => c.shadow_sync_ms = cbor::read_u64(d)?,
                5 => c.thresholds.battery_warn_pct = small(d)?,
                6 => c.thresholds.battery_crit_pct = small(d)?,
                7 => c.thresholds.link_warn_pct = small(d)?,
                8 => c.thresholds.link_crit_pct = small(d)?,
                9 => c.thresholds.hysteresis_pct = small(d)?,
                10 => {
                    c.degraded_telemetry_factor = u32::try_from(cbor::read_u64(d)?)
                        .map_err(|_| DecodeError::IntegerOutOfRange { at })?
                }
                _ => cbor::skip_item(d, 0)?,
            }
            Ok(())
        })?;
        if !have_version {
            return Err(DecodeError::MissingField("version"));
        }
        Ok(c)
    }
}

/// One field of [`DeviceConfig`], by its key in the `device-config` map;
/// what a [`ConfigPatch`] changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigField {
    /// `heartbeat_ms`.
    HeartbeatMs = 1,
    /// `telemetry_ms`.
    TelemetryMs = 2,
    /// `health_ms`.
    HealthMs = 3,
    /// `shadow_sync_ms`.
    ShadowSyncMs = 4,
    /// `battery_warn_pct`.
    BatteryWarnPct = 5,
    /// `battery_crit_pct`.
    BatteryCritPct = 6,
    /// `link_warn_pct`.
    LinkWarnPct = 7,
    /// `link_crit_pct`.
    LinkCritPct = 8,
    /// `hysteresis_pct`.
    HysteresisPct = 9,
    /// `degraded_telemetry_factor`.
    DegradedTelemetryFactor = 10,
}

impl ConfigField {
    /// Every field, in key order.
    pub const ALL: [ConfigField; 10] = [
        ConfigField::HeartbeatMs,
        ConfigField::TelemetryMs,
        ConfigField::HealthMs,
        ConfigField::ShadowSyncMs,
        ConfigField::BatteryWarnPct,
        ConfigField::BatteryCritPct,
        ConfigField::LinkWarnPct,
        ConfigField::LinkCritPct,
        ConfigField::HysteresisPct,
        ConfigField::DegradedTelemetryFactor,
    ];

    /// Its name, as [`InvalidConfig::field`] and the CLI spell it.
    pub const fn name(self) -> &'static str {
        match self {
            ConfigField::HeartbeatMs => "heartbeat_ms",
            ConfigField::TelemetryMs => "telemetry_ms",
            ConfigField::HealthMs => "health_ms",
            ConfigField::ShadowSyncMs => "shadow_sync_ms",
            ConfigField::BatteryWarnPct => "battery_warn_pct",
            ConfigField::BatteryCritPct => "battery_crit_pct",
            ConfigField::LinkWarnPct => "link_warn_pct",
            ConfigField::LinkCritPct => "link_crit_pct",
            ConfigField::HysteresisPct => "hysteresis_pct",
            ConfigField::DegradedTelemetryFactor => "degraded_telemetry_factor",
        }
    }

    /// The field `name` names.
    ///
    /// ```
    /// use lanyard_core::agent::config::ConfigField;
    /// assert_eq!(ConfigField::from_name("telemetry_ms"), Some(ConfigField::TelemetryMs));
    /// assert_eq!(ConfigField::from_name("telemetry"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// `config` with this field set to `value`; `None` when `value` does
    /// not fit the field's type (a percentage over 255, say).
    pub fn set(self, config: &DeviceConfig, value: u64) -> Option<DeviceConfig> {
        let mut c = config.clone();
        let t = &mut c.thresholds;
        let pct = || u8::try_from(value).ok();
        match self {
            ConfigField::HeartbeatMs => c.heartbeat_ms = value,
            ConfigField::TelemetryMs => c.telemetry_ms = value,
            ConfigField::HealthMs => c.health_ms = value,
            ConfigField::ShadowSyncMs => c.shadow_sync_ms = value,
            ConfigField::BatteryWarnPct => t.battery_warn_pct = pct()?,
            ConfigField::BatteryCritPct => t.battery_crit_pct = pct()?,
            ConfigField::LinkWarnPct => t.link_warn_pct = pct()?,
            ConfigField::LinkCritPct => t.link_crit_pct = pct()?,
            ConfigField::HysteresisPct => t.hysteresis_pct = pct()?,
            ConfigField::DegradedTelemetryFactor => {
                c.degraded_telemetry_factor = u32::try_from(value).ok()?
            }
        }
        Some(c)
    }
}

/// A configuration update that changes some fields and keeps the others
/// (a device applies a `device-config` map's absent fields as unchanged):
/// what an operator pushes to many devices that may differ elsewhere.
///
/// ```
/// use lanyard_core::agent::config::{ConfigField, ConfigPatch, DeviceConfig};
/// let mut patch = ConfigPatch::new(7);
/// patch.set(ConfigField::TelemetryMs, 60_000)?;
/// let mut e = minicbor::Encoder::new(Vec::new());
/// patch.encode_cbor(&mut e).unwrap();
/// let bytes = e.into_writer();
/// let now = DeviceConfig::default();
/// let next = now.decode_update(&mut minicbor::Decoder::new(&bytes)).unwrap();
/// assert_eq!((next.version, next.telemetry_ms, next.heartbeat_ms), (7, 60_000, now.heartbeat_ms));
/// # Ok::<(), lanyard_core::agent::config::InvalidConfig>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPatch {
    /// The version it brings; a device takes it only if newer.
    pub version: u64,
    fields: heapless::Vec<(ConfigField, u64), 10>,
}

impl ConfigPatch {
    /// A patch to `version` that changes nothing yet.
    pub const fn new(version: u64) -> Self {
        ConfigPatch {
            version,
            fields: heapless::Vec::new(),
        }
    }

    /// Sets `field` to `value` (replacing a value it had), refused when
    /// the value is out of the field's range on a default configuration.
    pub fn set(&mut self, field: ConfigField, value: u64) -> Result<(), InvalidConfig> {
        let out_of_range = InvalidConfig {
            field: field.name(),
            reason: "out of range",
        };
        field
            .set(&DeviceConfig::default(), value)
            .ok_or(out_of_range)?
            .validate()
            .map_err(|e| {
                if e.field == field.name() {
                    e
                } else {
                    out_of_range
                }
            })?;
        self.fields.retain(|(f, _)| *f != field);
        // At most one entry per field, and there are ten: it fits.
        let _ = self.fields.push((field, value));
        Ok(())
    }

    /// The fields it changes.
    pub fn fields(&self) -> &[(ConfigField, u64)] {
        &self.fields
    }

    /// Writes it as a `device-config` map with only its fields.
    pub fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(1 + self.fields.len() as u64)?;
        e.u8(0)?.u64(self.version)?;
        for (f, v) in &self.fields {
            e.u8(*f as u8)?.u64(*v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ConfigField`'s keys and the `device-config` reader's are one table
    /// written twice (the reader is the firmware's, kept small): each
    /// field's key must land in that field.
    #[test]
    fn each_config_field_is_read_back_into_its_own_field() {
        let now = DeviceConfig::default();
        for field in ConfigField::ALL {
            let mut e = Encoder::new(std::vec::Vec::new());
            e.map(2).unwrap();
            e.u8(0).unwrap().u64(9).unwrap();
            e.u8(field as u8).unwrap().u64(7).unwrap();
            let bytes = e.into_writer();
            let read = now.decode_update(&mut Decoder::new(&bytes)).unwrap();
            let mut expected = field.set(&now, 7).unwrap();
            expected.version = 9;
            assert_eq!(read, expected, "{}", field.name());
        }
    }
}
