//! The traits a platform implements so the agent can run on it. They are
//! called synchronously from the agent's `handle_*` methods; none of them
//! is expected to block for long.

use super::health::HealthMetrics;
use crate::shadow::{Path, Value};

/// What persistent state the agent stores, by slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageSlot {
    /// Lifecycle state, identity, configuration, command dedupe window.
    AgentState,
    /// Device credentials (certificates, keys), opaque to the agent; only
    /// ever wiped by it, at decommissioning.
    Credentials,
    /// The download record of a firmware update (which blocks are in),
    /// saved by the update driver after every block; wiped with the rest.
    UpdateRecord,
}

/// A storage failure, reported by the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageError {
    /// The medium failed (I/O error, flash write failure).
    Io,
    /// The record does not fit the buffer given or the medium.
    TooLarge,
    /// The record is there but damaged (its checksum does not match) and
    /// no earlier good record is left: the store keeps it aside for
    /// inspection rather than hand back nothing.
    Corrupt,
}

impl core::fmt::Display for StorageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            StorageError::Io => "storage I/O failure",
            StorageError::TooLarge => "record too large for storage",
            StorageError::Corrupt => "stored record damaged (checksum mismatch)",
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

    /// Replaces the record of `slot` with the `len` bytes that `write`
    /// hands its sink in pieces, as atomically as [`Storage::store`]; a
    /// writer that produces more or fewer than `len` bytes fails the store
    /// and leaves the old record.
    ///
    /// The agent saves its state this way. The default gathers the pieces
    /// in a buffer of [`STATE_RECORD_MAX`](super::STATE_RECORD_MAX) bytes on
    /// the stack and calls `store`; a store that can write in pieces
    /// overrides it, so that saving needs no record-sized buffer (the flash
    /// store does: 4 KiB less stack on a microcontroller).
    fn store_with(
        &mut self,
        slot: StorageSlot,
        len: usize,
        write: &mut RecordWriter<'_>,
    ) -> Result<(), StorageError> {
        let mut buf = [0u8; super::STATE_RECORD_MAX];
        let record = buf.get_mut(..len).ok_or(StorageError::TooLarge)?;
        let mut filled = 0;
        write(&mut |piece| {
            let end = filled + piece.len();
            record
                .get_mut(filled..end)
                .ok_or(StorageError::TooLarge)?
                .copy_from_slice(piece);
            filled = end;
            Ok(())
        })?;
        if filled != len {
            return Err(StorageError::TooLarge);
        }
        self.store(slot, &buf[..len])
    }
}

/// Produces a record in consecutive pieces, handing each to the sink it is
/// given, and stops at the sink's first error (see [`Storage::store_with`]).
pub type RecordWriter<'a> =
    dyn FnMut(&mut dyn FnMut(&[u8]) -> Result<(), StorageError>) -> Result<(), StorageError> + 'a;

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
    fn store_with(
        &mut self,
        _: StorageSlot,
        _: usize,
        _: &mut RecordWriter<'_>,
    ) -> Result<(), StorageError> {
        Ok(())
    }
}

/// The device's own health measurements. Fill in what the board measures
/// and leave the rest at [`HealthMetrics::default`] (a healthy device on
/// mains power); the agent measures its own outbox.
pub trait HealthProbe {
    /// Current health metrics.
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics;
}

/// A device with nothing to measure: always the healthy defaults, the
/// uptime excepted.
#[derive(Debug, Default, Clone, Copy)]
pub struct MainsPowered;

impl HealthProbe for MainsPowered {
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics {
        HealthMetrics {
            uptime_ms: now_ms,
            ..HealthMetrics::default()
        }
    }
}

/// What a telemetry message carries: a map the application fills, with
/// the shadow's value types (numbers, text, booleans, bytes, arrays,
/// nested maps).
pub type Readings = crate::shadow::StateTree<{ super::SHADOW_LEAVES }, { super::SHADOW_POOL }>;

/// The application's telemetry. The agent decides when it is due (the
/// configured interval, stretched in degraded mode, none in maintenance)
/// and asks for the readings; the application decides what they are.
///
/// ```
/// use lanyard_core::agent::platform::{Readings, TelemetrySource};
/// use lanyard_core::shadow::{PathBuf, Value};
///
/// struct FlowMeter { litres_per_min: f64 }
///
/// impl TelemetrySource for FlowMeter {
///     fn read(&mut self, _now_ms: u64, readings: &mut Readings) -> bool {
///         let key = PathBuf::from_dotted("flow_lpm").expect("a valid key");
///         readings.insert(&key, Value::Float(self.litres_per_min)).is_ok()
///     }
/// }
/// ```
pub trait TelemetrySource {
    /// Telemetry is due: put this period's readings into `readings` (empty
    /// when called). Returns whether to send them; `false` (a failed read)
    /// sends nothing this time.
    fn read(&mut self, now_ms: u64, readings: &mut Readings) -> bool;
}

/// One board lent as several platform parts: a probe whose health counts
/// the sensor reads that telemetry makes, or commands that read the same
/// sensor. Wrap it in a [`RefCell`](core::cell::RefCell) and lend `&cell`
/// to each part. The agent never calls two parts at once; if one were
/// borrowed, the probe reads as the healthy defaults and telemetry as a
/// failed read rather than panicking.
impl<T: HealthProbe> HealthProbe for &core::cell::RefCell<T> {
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics {
        self.try_borrow_mut()
            .map(|mut t| t.metrics(now_ms))
            .unwrap_or_default()
    }
}

impl<T: TelemetrySource> TelemetrySource for &core::cell::RefCell<T> {
    fn read(&mut self, now_ms: u64, readings: &mut Readings) -> bool {
        self.try_borrow_mut()
            .is_ok_and(|mut t| t.read(now_ms, readings))
    }
}

/// A device that sends no telemetry (heartbeats and health still go out).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTelemetry;

impl TelemetrySource for NoTelemetry {
    fn read(&mut self, _: u64, _: &mut Readings) -> bool {
        false
    }
}

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandFailure {
    /// The arguments were not acceptable (acknowledged as Rejected).
    BadArguments,
    /// Execution failed (acknowledged as Failed with this reason).
    Failed(&'static str),
    /// The arguments were not acceptable, and the first `n` bytes of the
    /// result buffer say why (UTF-8 text, sent as the acknowledgement's
    /// detail, cut to [`MAX_DETAIL_LEN`] bytes).
    BadArgumentsBecause(usize),
    /// Execution failed, and the first `n` bytes of the result buffer say
    /// why (as for [`CommandFailure::BadArgumentsBecause`]).
    FailedBecause(usize),
}

impl CommandFailure {
    /// Execution failed for `why`, in the device's words: writes them into
    /// the handler's `result` buffer (as much as fits, whole characters)
    /// and says so.
    ///
    /// ```
    /// use lanyard_core::agent::platform::CommandFailure;
    /// let mut result = [0u8; 8];
    /// assert_eq!(CommandFailure::failed_because("fuse blew", &mut result), CommandFailure::FailedBecause(8));
    /// assert_eq!(&result, b"fuse ble");
    /// ```
    pub fn failed_because(why: &str, result: &mut [u8]) -> Self {
        CommandFailure::FailedBecause(put_detail(why, result))
    }

    /// The arguments were not acceptable, for `why`: as
    /// [`failed_because`](Self::failed_because).
    pub fn bad_arguments_because(why: &str, result: &mut [u8]) -> Self {
        CommandFailure::BadArgumentsBecause(put_detail(why, result))
    }
}

/// Copies the longest prefix of `why` that fits `out` and ends on a
/// character boundary; its length.
fn put_detail(why: &str, out: &mut [u8]) -> usize {
    let mut n = why.len().min(out.len());
    while !why.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&why.as_bytes()[..n]);
    n
}

/// The longest detail an acknowledgement carries from a handler
/// ([`CommandFailure::FailedBecause`]); a longer text is cut at a
/// character boundary and ends with `...`.
pub const MAX_DETAIL_LEN: usize = 120;

/// How far a command got when its handler returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Finished: the first `n` bytes of the result buffer are its result
    /// (CBOR; 0 for none).
    Done(usize),
    /// Started and still running (a calibration, a move): the agent
    /// acknowledges it as in progress, and the application finishes it
    /// with [`Agent::complete_command`](super::Agent::complete_command).
    /// One such command runs at a time; until it finishes, other
    /// application commands are refused as busy.
    Later,
}

/// A command's arguments: a CBOR map with text keys, read by key and type.
/// A value of another type than asked is [`CommandFailure::BadArguments`],
/// as is an argument map that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    /// The arguments of `raw` (a CBOR map; empty for none).
    pub fn new(raw: &'a [u8]) -> Self {
        Args(raw)
    }

    /// The map as CBOR, for a handler that decodes it itself.
    pub fn raw(&self) -> &'a [u8] {
        self.0
    }

    fn find<T>(
        &self,
        key: &str,
        read: impl Fn(&mut minicbor::Decoder<'a>) -> Result<T, crate::DecodeError>,
    ) -> Result<Option<T>, CommandFailure> {
        use crate::wire::cbor;
        if self.0.is_empty() {
            return Ok(None);
        }
        let mut d = minicbor::Decoder::new(self.0);
        let mut found = None;
        cbor::each_entry(&mut d, |d| {
            if found.is_none() && cbor::read_text_key(d)?.0 == key.as_bytes() {
                found = Some(read(d)?);
                Ok(())
            } else {
                cbor::skip_item(d, 0)
            }
        })
        .map_err(|_| CommandFailure::BadArguments)?;
        Ok(found)
    }

    /// An unsigned integer argument.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, CommandFailure> {
        self.find(key, crate::wire::cbor::read_u64)
    }

    /// A signed integer argument.
    pub fn i64(&self, key: &str) -> Result<Option<i64>, CommandFailure> {
        self.find(key, crate::wire::cbor::read_i64)
    }

    /// A number argument (an integer is taken as a float too).
    pub fn f64(&self, key: &str) -> Result<Option<f64>, CommandFailure> {
        self.find(key, |d| match crate::wire::cbor::peek_major(d)? {
            0 | 1 => crate::wire::cbor::read_i64(d).map(|i| i as f64),
            _ => crate::wire::cbor::read_float(d),
        })
    }

    /// A text argument.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>, CommandFailure> {
        self.find(key, crate::wire::cbor::read_str)
    }

    /// A boolean argument.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, CommandFailure> {
        self.find(key, |d| {
            let at = d.position();
            let b = d.bool().map_err(|_| crate::DecodeError::Malformed {
                what: "a boolean",
                at,
            })?;
            Ok(b)
        })
    }
}

/// The application's commands. The agent handles deduplication, expiry,
/// the lifecycle's own commands and the acknowledgements; the handler runs
/// what it knows.
///
/// ```
/// use lanyard_core::agent::platform::{Args, CommandFailure, CommandHandler, Completion};
///
/// struct Valve { position: u64 }
///
/// impl CommandHandler for Valve {
///     fn execute(&mut self, _now_ms: u64, name: &str, args: Args<'_>, result: &mut [u8])
///         -> Option<Result<Completion, CommandFailure>> {
///         match name {
///             "set_position" => Some((|| {
///                 let p = args.u64("percent")?.ok_or(CommandFailure::BadArguments)?;
///                 if p > 100 { return Err(CommandFailure::BadArguments); }
///                 self.position = p;
///                 // The result, a CBOR map: {"position": p}.
///                 let n = lanyard_core::wire::encode_into(result, |e| {
///                     e.map(1)?.str("position")?.u64(p)?;
///                     Ok(())
///                 }).map_err(|_| CommandFailure::Failed("result too large"))?;
///                 Ok(Completion::Done(n))
///             })()),
///             _ => None,
///         }
///     }
/// }
/// ```
pub trait CommandHandler {
    /// Runs command `name` with `args`. Writes a result (CBOR) into
    /// `result` and says how far it got. `None` means the handler does not
    /// know the command (acknowledged as Rejected, unknown command).
    fn execute(
        &mut self,
        now_ms: u64,
        name: &str,
        args: Args<'_>,
        result: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>>;
}

/// A handler that knows no commands.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(
        &mut self,
        _: u64,
        _: &str,
        _: Args<'_>,
        _: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        None
    }
}

/// Why the application refused a desired value. Sent to the cloud with the
/// device's next report, where an app sees it (see `docs/wire-format.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The value is outside what the device can do (a setpoint past its
    /// limit).
    OutOfRange,
    /// The property is the device's to set, not the cloud's.
    ReadOnly,
    /// The device has no such property.
    UnknownProperty,
    /// The value has the wrong type for the property.
    WrongType,
    /// The device cannot act on it now (an actuator fault, a safety
    /// interlock).
    Unavailable,
    /// The device's reported state has no room for it.
    NoRoom,
    /// An application's own reason; codes from 100 up are the
    /// application's (lower ones read back as the named reasons, or as
    /// `Other` when unknown to this version).
    Other(u32),
}

impl RejectReason {
    /// The code on the wire.
    pub fn code(self) -> u32 {
        match self {
            RejectReason::OutOfRange => 1,
            RejectReason::ReadOnly => 2,
            RejectReason::UnknownProperty => 3,
            RejectReason::WrongType => 4,
            RejectReason::Unavailable => 5,
            RejectReason::NoRoom => 6,
            RejectReason::Other(c) => c,
        }
    }

    /// The reason a wire code stands for.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => RejectReason::OutOfRange,
            2 => RejectReason::ReadOnly,
            3 => RejectReason::UnknownProperty,
            4 => RejectReason::WrongType,
            5 => RejectReason::Unavailable,
            6 => RejectReason::NoRoom,
            c => RejectReason::Other(c),
        }
    }

    /// A short name, for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::ReadOnly => "read_only",
            RejectReason::UnknownProperty => "unknown_property",
            RejectReason::WrongType => "wrong_type",
            RejectReason::Unavailable => "unavailable",
            RejectReason::NoRoom => "no_room",
            RejectReason::Other(_) => "other",
        }
    }
}

impl core::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RejectReason::Other(c) => write!(f, "application reason {c}"),
            r => f.write_str(r.name()),
        }
    }
}

/// What the application did with one desired property.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Applied<'v> {
    /// The device now holds this value: the desired one, or what it could
    /// reach (a clamped setpoint). The agent reports it.
    Reached(Value<'v>),
    /// The device will not take the value; the cloud is told why and the
    /// reported value stays as it was.
    Rejected(RejectReason),
    /// The device is working on it (a valve still moving) and will report
    /// the value it reaches with [`Agent::report`](super::Agent::report).
    Pending,
}

/// The application's side of the shadow: it decides, property by property,
/// what becomes of each desired value the cloud sends. The agent reports
/// only what the application says the device reached, so reported state is
/// what the device did, not what it was asked.
///
/// Called once per leaf of each delta, in path order. A delta repeats the
/// desired values that still differ from reported, so an application may
/// be asked again about a value it rejected or is still working on: it
/// answers the same way, and the agent sends nothing new.
///
/// ```
/// use lanyard_core::agent::platform::{Applied, DesiredState, RejectReason};
/// use lanyard_core::shadow::{Path, Value};
///
/// /// A thermostat whose setpoint goes no higher than 30 °C.
/// struct Thermostat { setpoint: i64 }
///
/// impl DesiredState for Thermostat {
///     fn apply<'v>(&mut self, _now_ms: u64, path: Path<'_>, desired: Value<'v>) -> Applied<'v> {
///         match (path.key(0), desired) {
///             (Some("setpoint"), Value::Int(t)) if t > 40 => Applied::Rejected(RejectReason::OutOfRange),
///             (Some("setpoint"), Value::Int(t)) => {
///                 self.setpoint = t.min(30);
///                 Applied::Reached(Value::Int(self.setpoint))
///             }
///             (Some("setpoint"), _) => Applied::Rejected(RejectReason::WrongType),
///             _ => Applied::Rejected(RejectReason::UnknownProperty),
///         }
///     }
/// }
/// ```
pub trait DesiredState {
    /// Decides what becomes of `desired` at `path`.
    fn apply<'v>(&mut self, now_ms: u64, path: Path<'_>, desired: Value<'v>) -> Applied<'v>;
}

/// Takes every desired value as it is: reported state mirrors desired.
/// For a device with nothing to actuate (a demo, a simulator) or whose
/// properties are settings it only stores.
#[derive(Debug, Default, Clone, Copy)]
pub struct MirrorDesired;

impl DesiredState for MirrorDesired {
    fn apply<'v>(&mut self, _: u64, _: Path<'_>, desired: Value<'v>) -> Applied<'v> {
        Applied::Reached(desired)
    }
}

/// Everything the agent may call during one `handle_*` call.
pub struct Platform<'a> {
    /// Persistent storage.
    pub storage: &'a mut dyn Storage,
    /// Health metrics.
    pub probe: &'a mut dyn HealthProbe,
    /// The application's telemetry.
    pub telemetry: &'a mut dyn TelemetrySource,
    /// Application commands.
    pub commands: &'a mut dyn CommandHandler,
    /// What becomes of desired state.
    pub desired: &'a mut dyn DesiredState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Keeps the last record stored, whole.
    #[derive(Default)]
    struct Kept(Option<Vec<u8>>);

    impl Storage for Kept {
        fn load(&mut self, _: StorageSlot, buf: &mut [u8]) -> Result<usize, StorageError> {
            let r = self.0.as_deref().unwrap_or_default();
            buf[..r.len()].copy_from_slice(r);
            Ok(r.len())
        }
        fn store(&mut self, _: StorageSlot, data: &[u8]) -> Result<(), StorageError> {
            self.0 = Some(data.to_vec());
            Ok(())
        }
        fn wipe(&mut self) -> Result<(), StorageError> {
            self.0 = None;
            Ok(())
        }
    }

    #[test]
    fn the_default_store_with_gathers_the_pieces_or_stores_nothing() {
        let mut s = Kept::default();
        let slot = StorageSlot::AgentState;
        let ok = s.store_with(slot, 5, &mut |sink| {
            sink(b"he")?;
            sink(b"")?;
            sink(b"llo")
        });
        assert_eq!((ok, s.0.as_deref()), (Ok(()), Some(&b"hello"[..])));
        // More or fewer bytes than announced, a failing writer, a record
        // past the buffer: refused, the record kept.
        assert!(s.store_with(slot, 2, &mut |sink| sink(b"abc")).is_err());
        assert!(s.store_with(slot, 4, &mut |sink| sink(b"abc")).is_err());
        let failing = s.store_with(slot, 1, &mut |_| Err(StorageError::Io));
        assert_eq!(failing, Err(StorageError::Io));
        let huge = s.store_with(slot, super::super::STATE_RECORD_MAX + 1, &mut |_| Ok(()));
        assert_eq!(huge, Err(StorageError::TooLarge));
        assert_eq!(s.0.as_deref(), Some(&b"hello"[..]));
    }
}
