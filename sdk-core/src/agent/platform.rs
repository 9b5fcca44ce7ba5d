//! The traits a platform implements so the agent can run on it. They are
//! called synchronously from the agent's `handle_*` methods; none of them
//! is expected to block for long.

use super::health::HealthMetrics;

/// What persistent state the agent stores, by slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageSlot {
    /// Lifecycle state, identity, configuration, command dedupe window.
    AgentState,
    /// Device credentials (certificates, keys), opaque to the agent; only
    /// ever wiped by it, at decommissioning.
    Credentials,
}

/// A storage failure, reported by the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageError {
    /// The medium failed (I/O error, flash write failure).
    Io,
    /// The record does not fit the buffer given or the medium.
    TooLarge,
}

impl core::fmt::Display for StorageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            StorageError::Io => "storage I/O failure",
            StorageError::TooLarge => "record too large for storage",
        })
    }
}

/// Persistent storage: whole records by slot. Implementations must make
/// `store` atomic (the old record or the new one survives a power cut,
/// never a mix): the std driver writes a temporary file and renames it, the
/// flash store alternates between two sectors.
pub trait Storage {
    /// Reads the record of `slot` into `buf`; `Ok(0)` when there is none.
    fn load(&mut self, slot: StorageSlot, buf: &mut [u8]) -> Result<usize, StorageError>;
    /// Replaces the record of `slot`.
    fn store(&mut self, slot: StorageSlot, data: &[u8]) -> Result<(), StorageError>;
    /// Erases every slot, credentials included.
    fn wipe(&mut self) -> Result<(), StorageError>;
}

/// Storage that keeps nothing: every boot starts unprovisioned. For
/// platforms with nothing to persist to (an emulator without flash, a
/// test); real devices want a store that survives a reboot.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStorage;

impl Storage for NoStorage {
    fn load(&mut self, _: StorageSlot, _: &mut [u8]) -> Result<usize, StorageError> {
        Ok(0)
    }
    fn store(&mut self, _: StorageSlot, _: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }
    fn wipe(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A sensor reading for telemetry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorReading {
    /// Temperature, °C.
    pub temperature_c: f32,
    /// Relative humidity, percent.
    pub humidity_pct: f32,
}

/// The device's own measurements.
pub trait HealthProbe {
    /// Current health metrics.
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics;
    /// Reads the sensors; `None` when the read failed.
    fn read_sensors(&mut self, now_ms: u64) -> Option<SensorReading>;
}

/// Things the built-in commands act on.
pub trait Actuators {
    /// Blinks the indicator LED `count` times, `period_ms` per blink. May
    /// return at once and blink in the background.
    fn blink(&mut self, count: u32, period_ms: u32);
}

/// Why a user command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandFailure {
    /// The arguments were not acceptable (acknowledged as Rejected).
    BadArguments,
    /// Execution failed (acknowledged as Failed with this reason).
    Failed(&'static str),
}

/// Application commands beyond the built-in ones.
pub trait CommandHandler {
    /// Runs command `name` with `args` (a CBOR map). Writes a result (CBOR)
    /// into `result` and returns its length. `None` means the handler does
    /// not know the command (acknowledged as Rejected, unknown command).
    fn execute(
        &mut self,
        name: &str,
        args: &[u8],
        result: &mut [u8],
    ) -> Option<Result<usize, CommandFailure>>;
}

/// A handler that knows no commands.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(
        &mut self,
        _: &str,
        _: &[u8],
        _: &mut [u8],
    ) -> Option<Result<usize, CommandFailure>> {
        None
    }
}

/// Everything the agent may call during one `handle_*` call.
pub struct Platform<'a> {
    /// Persistent storage.
    pub storage: &'a mut dyn Storage,
    /// Health metrics and sensors.
    pub probe: &'a mut dyn HealthProbe,
    /// LED and other outputs of built-in commands.
    pub actuators: &'a mut dyn Actuators,
    /// Application commands.
    pub commands: &'a mut dyn CommandHandler,
}
