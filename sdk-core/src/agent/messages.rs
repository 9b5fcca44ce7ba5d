//! The agent's CBOR messages and their topics. Each is a map keyed by small
//! integers; unknown keys are skipped, so fields can be added. The CDDL and
//! a hex example of each are in `docs/wire-format.md`.

use minicbor::decode::Decoder;
use minicbor::encode::{Encoder, Write};

use super::health::{HealthMetrics, HealthReport, HealthStatus};
use super::lifecycle::{LifecycleState, Trigger};
use crate::error::{DecodeError, Error};
use crate::shadow::{LeafMeta, Source, StateTree};
use crate::wire::cbor;
use crate::wire::each_field;

/// Longest device id, bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Longest command id, bytes.
pub const MAX_COMMAND_ID_LEN: usize = 64;
/// Longest command name, bytes.
pub const MAX_COMMAND_NAME_LEN: usize = 32;
/// Largest command arguments or result map, bytes.
pub const MAX_COMMAND_ARGS_LEN: usize = 256;

/// Every kind of message, with its topic suffix and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// Device → cloud: registration request.
    Register,
    /// Cloud → device: registration accepted, with the initial configuration.
    RegisterAccepted,
    /// Device → cloud: a lifecycle transition.
    Lifecycle,
    /// Device → cloud: alive.
    Heartbeat,
    /// Device → cloud: sensor readings.
    Telemetry,
    /// Device → cloud: a health report.
    Health,
    /// Device → cloud: reported shadow state (`wire::ShadowUpdate`).
    ShadowUpdate,
    /// Cloud → device: shadow delta (`wire::ShadowDelta`).
    ShadowDelta,
    /// Cloud → device: a command.
    Command,
    /// Device → cloud: a command acknowledgement.
    Ack,
    /// Cloud → device: a configuration update.
    Config,
    /// Device → cloud: the outcome of a configuration update.
    ConfigAck,
}

impl MessageKind {
    /// Every kind.
    pub const ALL: [MessageKind; 12] = [
        MessageKind::Register,
        MessageKind::RegisterAccepted,
        MessageKind::Lifecycle,
        MessageKind::Heartbeat,
        MessageKind::Telemetry,
        MessageKind::Health,
        MessageKind::ShadowUpdate,
        MessageKind::ShadowDelta,
        MessageKind::Command,
        MessageKind::Ack,
        MessageKind::Config,
        MessageKind::ConfigAck,
    ];

    /// The last part of the topic: `lanyard/v1/{device-id}/{suffix}`.
    pub fn topic_suffix(self) -> &'static str {
        match self {
            MessageKind::Register => "register",
            MessageKind::RegisterAccepted => "register/accepted",
            MessageKind::Lifecycle => "lifecycle",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::Telemetry => "telemetry",
            MessageKind::Health => "health",
            MessageKind::ShadowUpdate => "shadow/update",
            MessageKind::ShadowDelta => "shadow/delta",
            MessageKind::Command => "cmd",
            MessageKind::Ack => "ack",
            MessageKind::Config => "config",
            MessageKind::ConfigAck => "config/ack",
        }
    }

    /// Whether the device sends it (else the cloud does).
    pub fn from_device(self) -> bool {
        !matches!(
            self,
            MessageKind::RegisterAccepted
                | MessageKind::ShadowDelta
                | MessageKind::Command
                | MessageKind::Config
        )
    }

    /// Whether it needs at-least-once delivery (MQTT QoS 1). Telemetry,
    /// heartbeats and health reports are periodic: the next one replaces a
    /// lost one.
    pub fn needs_ack(self) -> bool {
        !matches!(
            self,
            MessageKind::Telemetry | MessageKind::Heartbeat | MessageKind::Health
        )
    }

    /// Parses a topic `lanyard/v1/{device-id}/{suffix}` into its device id
    /// and kind.
    pub fn parse_topic(topic: &str) -> Option<(&str, MessageKind)> {
        let rest = topic.strip_prefix(TOPIC_PREFIX)?;
        let (id, suffix) = split_at_slash(rest)?;
        let kind = MessageKind::from_suffix(suffix)?;
        (!id.is_empty()).then_some((id, kind))
    }

    /// Parses a tenant's topic `lanyard/v1/{tenant}/{device-id}/{suffix}`
    /// into its tenant, device id and kind. A deployment uses tenant topics
    /// or shared ones, never both on one broker: `parse_topic` and this
    /// would each misread some of the other's topics.
    ///
    /// ```
    /// use lanyard_core::agent::messages::MessageKind;
    /// assert_eq!(
    ///     MessageKind::parse_tenant_topic("lanyard/v1/acme/ly-0a1b2c3d4e5f/config/ack"),
    ///     Some(("acme", "ly-0a1b2c3d4e5f", MessageKind::ConfigAck))
    /// );
    /// assert_eq!(MessageKind::parse_tenant_topic("lanyard/v1/ACME/dev/ack"), None);
    /// ```
    pub fn parse_tenant_topic(topic: &str) -> Option<(&str, &str, MessageKind)> {
        let rest = topic.strip_prefix(TOPIC_PREFIX)?;
        let (tenant, rest) = split_at_slash(rest)?;
        let (id, suffix) = split_at_slash(rest)?;
        let kind = MessageKind::from_suffix(suffix)?;
        (valid_tenant(tenant) && !id.is_empty()).then_some((tenant, id, kind))
    }

    /// The kind whose topic ends in `suffix`.
    pub fn from_suffix(suffix: &str) -> Option<MessageKind> {
        MessageKind::ALL
            .into_iter()
            .find(|k| k.topic_suffix() == suffix)
    }
}

pub use crate::topic::{
    MAX_TENANT_LEN, TOPIC_PREFIX, parse_topic_in, tenant_topic, topic, topic_in, valid_device_id,
    valid_tenant,
};

/// Reads a text field of at most `max` bytes.
pub(crate) fn read_text<'b>(
    d: &mut Decoder<'b>,
    max: usize,
    what: &'static str,
) -> Result<&'b str, DecodeError> {
    let at = d.position();
    let s = cbor::read_str(d).map_err(|e| match e {
        DecodeError::Malformed { .. } => DecodeError::Malformed { what, at },
        e => e,
    })?;
    if s.len() > max || s.is_empty() {
        return Err(DecodeError::Malformed { what, at });
    }
    Ok(s)
}

/// Reads any one data item and returns its bytes.
fn read_raw<'b>(d: &mut Decoder<'b>) -> Result<&'b [u8], DecodeError> {
    let start = d.position();
    cbor::skip_item(d, 0)?;
    Ok(&d.input()[start..d.position()])
}

pub(crate) fn read_code<T>(
    d: &mut Decoder<'_>,
    from: impl Fn(u64) -> Option<T>,
    what: &'static str,
) -> Result<T, DecodeError> {
    let at = d.position();
    from(cbor::read_u64(d)?).ok_or(DecodeError::Malformed { what, at })
}

fn write_raw<W: Write>(
    e: &mut Encoder<W>,
    raw: &[u8],
) -> Result<(), minicbor::encode::Error<W::Error>> {
    e.writer_mut()
        .write_all(raw)
        .map_err(minicbor::encode::Error::write)
}

/// A message the agent can encode into a caller's buffer.
pub trait Encodable {
    /// Its kind (and so its topic).
    const KIND: MessageKind;
    /// Writes it with minicbor.
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>>;
    /// Encodes into `out`; returns the length. A buffer too small is left
    /// untouched.
    fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(cbor::encode_into(out, |e| self.encode_cbor(e))?)
    }
}

pub(crate) fn whole<'b, T>(
    bytes: &'b [u8],
    f: impl FnOnce(&mut Decoder<'b>) -> Result<T, DecodeError>,
) -> Result<T, Error> {
    let mut d = Decoder::new(bytes);
    let v = f(&mut d)?;
    if d.position() != bytes.len() {
        return Err(DecodeError::TrailingBytes { at: d.position() }.into());
    }
    Ok(v)
}

/// A field that must be present.
pub(crate) fn req<T>(v: Option<T>, name: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::MissingField(name))
}

/// `s.split_once('/')` by bytes: the `char` searcher behind `split_once`
/// is 0.3 KB of flash a firmware that parses topics does not need.
use crate::topic::split_at_slash;

/// Device → cloud: "this is me; please accept me".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register<'a> {
    /// The device id (from the MAC address unless configured).
    pub device_id: &'a str,
    /// Firmware version text.
    pub firmware: &'a str,
    /// Version of the configuration the device holds.
    pub config_version: u64,
    /// Boots so far, this one included.
    pub boot_count: u64,
    /// Device clock, ms since the epoch.
    pub time_ms: u64,
    /// The device resumed its saved state in service and registers again
    /// only for the cloud's time (and any newer configuration); false for
    /// a device that is not yet registered. Sent only when true.
    pub resumed: bool,
    /// How much shadow state the device holds; the cloud refuses desired
    /// state past it. `None` from devices that do not say.
    pub capacity: Option<ShadowCapacity>,
}

/// How much shadow state a device holds: the leaves and the bytes of keys
/// and text of its reported tree (the agent's `L` and `B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowCapacity {
    /// Leaves.
    pub leaves: u32,
    /// Bytes of keys, text, byte strings and arrays.
    pub pool_bytes: u32,
}

impl Encodable for Register<'_> {
    const KIND: MessageKind = MessageKind::Register;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(5 + u64::from(self.resumed) + u64::from(self.capacity.is_some()))?;
        e.u8(0)?.str(self.device_id)?;
        e.u8(1)?.str(self.firmware)?;
        e.u8(2)?.u64(self.config_version)?;
        e.u8(3)?.u64(self.boot_count)?;
        e.u8(4)?.u64(self.time_ms)?;
        if self.resumed {
            e.u8(5)?.bool(true)?;
        }
        if let Some(c) = self.capacity {
            e.u8(6)?.array(2)?.u32(c.leaves)?.u32(c.pool_bytes)?;
        }
        Ok(())
    }
}

impl<'a> Register<'a> {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut fw, mut cv, mut bc, mut t) = (None, None, None, None, None);
            let mut resumed = false;
            let mut capacity = None;
            each_field(d, |k, d| {
                match k {
                    0 => id = Some(read_text(d, MAX_DEVICE_ID_LEN, "a device id")?),
                    1 => fw = Some(read_text(d, 64, "a firmware version")?),
                    2 => cv = Some(cbor::read_u64(d)?),
                    3 => bc = Some(cbor::read_u64(d)?),
                    4 => t = Some(cbor::read_u64(d)?),
                    5 => resumed = d.bool()?,
                    6 => {
                        const WHAT: &str = "a capacity [leaves, pool bytes]";
                        let at = d.position();
                        let bad = DecodeError::Malformed { what: WHAT, at };
                        if cbor::read_container(d, 4, WHAT)? != Some(2) {
                            return Err(bad);
                        }
                        let leaves = u32::try_from(cbor::read_u64(d)?).map_err(|_| bad)?;
                        let pool_bytes = u32::try_from(cbor::read_u64(d)?).map_err(|_| bad)?;
                        capacity = Some(ShadowCapacity { leaves, pool_bytes });
                    }
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(Register {
                device_id: req(id, "device_id")?,
                firmware: req(fw, "firmware")?,
                config_version: req(cv, "config_version")?,
                boot_count: req(bc, "boot_count")?,
                time_ms: req(t, "time_ms")?,
                resumed,
                capacity,
            })
        })
    }
}

/// Cloud → device: registration accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterAccepted<'a> {
    /// The id the cloud accepted (must be the device's).
    pub device_id: &'a str,
    /// The initial configuration, a `device-config` map (raw CBOR).
    pub config: Option<&'a [u8]>,
    /// Cloud clock, ms since the epoch.
    pub time_ms: u64,
}

impl Encodable for RegisterAccepted<'_> {
    const KIND: MessageKind = MessageKind::RegisterAccepted;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(2 + u64::from(self.config.is_some()))?;
        e.u8(0)?.str(self.device_id)?;
        if let Some(c) = self.config {
            e.u8(1)?;
            write_raw(e, c)?;
        }
        e.u8(2)?.u64(self.time_ms)?;
        Ok(())
    }
}

impl<'a> RegisterAccepted<'a> {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut config, mut t) = (None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => id = Some(read_text(d, MAX_DEVICE_ID_LEN, "a device id")?),
                    1 => {
                        let at = d.position();
                        if cbor::peek_major(d)? != 5 {
                            return Err(DecodeError::Malformed {
                                what: "a configuration map",
                                at,
                            });
                        }
                        config = Some(read_raw(d)?)
                    }
                    2 => t = Some(cbor::read_u64(d)?),
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(RegisterAccepted {
                device_id: req(id, "device_id")?,
                config,
                time_ms: req(t, "time_ms")?,
            })
        })
    }
}

/// Device → cloud: a lifecycle transition, sent once per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// State before.
    pub from: LifecycleState,
    /// State after.
    pub to: LifecycleState,
    /// What caused it.
    pub cause: Trigger,
    /// Device clock, ms since the epoch.
    pub time_ms: u64,
    /// Sequence number of lifecycle events from this device, from 1.
    pub seq: u64,
}

impl Encodable for LifecycleEvent {
    const KIND: MessageKind = MessageKind::Lifecycle;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(5)?;
        e.u8(0)?.u8(self.from.code())?;
        e.u8(1)?.u8(self.to.code())?;
        e.u8(2)?.u8(self.cause.code())?;
        e.u8(3)?.u64(self.time_ms)?;
        e.u8(4)?.u64(self.seq)?;
        Ok(())
    }
}

impl LifecycleEvent {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut from, mut to, mut cause, mut t, mut seq) = (None, None, None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => from = Some(read_code(d, LifecycleState::from_code, "a state code")?),
                    1 => to = Some(read_code(d, LifecycleState::from_code, "a state code")?),
                    2 => cause = Some(read_code(d, Trigger::from_code, "a trigger code")?),
                    3 => t = Some(cbor::read_u64(d)?),
                    4 => seq = Some(cbor::read_u64(d)?),
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(LifecycleEvent {
                from: req(from, "from")?,
                to: req(to, "to")?,
                cause: req(cause, "cause")?,
                time_ms: req(t, "time_ms")?,
                seq: req(seq, "seq")?,
            })
        })
    }
}

/// Device → cloud: alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sequence number of heartbeats, from 1.
    pub seq: u64,
    /// Device clock, ms since the epoch.
    pub time_ms: u64,
    /// Time since boot, ms.
    pub uptime_ms: u64,
    /// Lifecycle state.
    pub state: LifecycleState,
    /// Last health status.
    pub health: HealthStatus,
}

impl Encodable for Heartbeat {
    const KIND: MessageKind = MessageKind::Heartbeat;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(5)?;
        e.u8(0)?.u64(self.seq)?;
        e.u8(1)?.u64(self.time_ms)?;
        e.u8(2)?.u64(self.uptime_ms)?;
        e.u8(3)?.u8(self.state.code())?;
        e.u8(4)?.u8(self.health as u8)?;
        Ok(())
    }
}

impl Heartbeat {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut seq, mut t, mut up, mut st, mut h) = (None, None, None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => seq = Some(cbor::read_u64(d)?),
                    1 => t = Some(cbor::read_u64(d)?),
                    2 => up = Some(cbor::read_u64(d)?),
                    3 => st = Some(read_code(d, LifecycleState::from_code, "a state code")?),
                    4 => {
                        h = Some(read_code(
                            d,
                            HealthStatus::from_code,
                            "a health status code",
                        )?)
                    }
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(Heartbeat {
                seq: req(seq, "seq")?,
                time_ms: req(t, "time_ms")?,
                uptime_ms: req(up, "uptime_ms")?,
                state: req(st, "state")?,
                health: req(h, "health")?,
            })
        })
    }
}

/// Device → cloud: the application's readings (see
/// [`TelemetrySource`](super::platform::TelemetrySource)), any map.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry<
    const L: usize = { super::SHADOW_LEAVES },
    const P: usize = { super::SHADOW_POOL },
> {
    /// Sequence number of telemetry messages, from 1.
    pub seq: u64,
    /// When read: the cloud's clock once the device knows it, ms since
    /// the epoch.
    pub time_ms: u64,
    /// What the application read.
    pub readings: StateTree<L, P>,
}

impl<const L: usize, const P: usize> Encodable for Telemetry<L, P> {
    const KIND: MessageKind = MessageKind::Telemetry;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(3)?;
        e.u8(0)?.u64(self.seq)?;
        e.u8(1)?.u64(self.time_ms)?;
        e.u8(2)?;
        self.readings.encode_cbor(e)
    }
}

impl<const L: usize, const P: usize> Telemetry<L, P> {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut readings = StateTree::new();
        let (seq, time_ms) = whole(bytes, |d| {
            let (mut seq, mut t, mut have_readings) = (None, None, false);
            each_field(d, |k, d| {
                match k {
                    0 => seq = Some(cbor::read_u64(d)?),
                    1 => t = Some(cbor::read_u64(d)?),
                    2 => {
                        readings.clear();
                        readings.decode_cbor(d, LeafMeta::new(Source::Device, 0), false)?;
                        have_readings = true;
                    }
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            req(have_readings.then_some(()), "readings")?;
            Ok((req(seq, "seq")?, req(t, "time_ms")?))
        })?;
        Ok(Telemetry {
            seq,
            time_ms,
            readings,
        })
    }
}

/// Device → cloud: the result of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthMessage {
    /// Device clock, ms since the epoch.
    pub time_ms: u64,
    /// The report.
    pub report: HealthReport,
}

impl Encodable for HealthMessage {
    const KIND: MessageKind = MessageKind::Health;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        let m = &self.report.metrics;
        e.map(9)?;
        e.u8(0)?.u64(self.time_ms)?;
        e.u8(1)?.u8(self.report.status as u8)?;
        e.u8(2)?.u8(self.report.reasons)?;
        e.u8(3)?.u8(m.battery_pct)?;
        e.u8(4)?.u8(m.link_quality_pct)?;
        e.u8(5)?.u32(m.sensor_failures)?;
        e.u8(6)?.u64(m.data_age_ms)?;
        e.u8(7)?.u8(m.free_buffer_pct)?;
        e.u8(8)?.u64(m.uptime_ms)?;
        Ok(())
    }
}

impl HealthMessage {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let mut t = None;
            let mut status = None;
            let mut reasons = 0u8;
            let mut m = HealthMetrics::default();
            each_field(d, |k, d| {
                let at = d.position();
                let small = |d: &mut Decoder<'_>| {
                    u8::try_from(cbor::read_u64(d)?)
                        .map_err(|_| DecodeError::IntegerOutOfRange { at })
                };
                match k {
                    0 => t = Some(cbor::read_u64(d)?),
                    1 => {
                        status = Some(read_code(
                            d,
                            HealthStatus::from_code,
                            "a health status code",
                        )?)
                    }
                    2 => reasons = small(d)?,
                    3 => m.battery_pct = small(d)?,
                    4 => m.link_quality_pct = small(d)?,
                    5 => {
                        m.sensor_failures = u32::try_from(cbor::read_u64(d)?)
                            .map_err(|_| DecodeError::IntegerOutOfRange { at })?
                    }
                    6 => m.data_age_ms = cbor::read_u64(d)?,
                    7 => m.free_buffer_pct = small(d)?,
                    8 => m.uptime_ms = cbor::read_u64(d)?,
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(HealthMessage {
                time_ms: req(t, "time_ms")?,
                report: HealthReport {
                    status: req(status, "status")?,
                    reasons,
                    metrics: m,
                },
            })
        })
    }
}

/// Cloud → device: a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// Unique id, for acknowledgements and deduplication.
    pub id: &'a str,
    /// What to do: one of the lifecycle's (`enter_maintenance`,
    /// `exit_maintenance`, `decommission`), `diagnostics` (with the
    /// `diagnostic-commands` feature), or the application's.
    pub name: &'a str,
    /// Arguments: a CBOR map (raw), empty when there are none.
    pub args: &'a [u8],
    /// When it was issued, cloud clock, ms since the epoch.
    pub issued_ms: u64,
    /// After this time it must not run.
    pub expires_ms: u64,
}

impl Encodable for Command<'_> {
    const KIND: MessageKind = MessageKind::Command;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(4 + u64::from(!self.args.is_empty()))?;
        e.u8(0)?.str(self.id)?;
        e.u8(1)?.str(self.name)?;
        if !self.args.is_empty() {
            e.u8(2)?;
            write_raw(e, self.args)?;
        }
        e.u8(3)?.u64(self.issued_ms)?;
        e.u8(4)?.u64(self.expires_ms)?;
        Ok(())
    }
}

impl<'a> Command<'a> {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut name, mut args, mut issued, mut expires) =
                (None, None, &[][..], None, None);
            each_field(d, |k, d| {
                match k {
                    0 => {
                        id = Some(read_text(
                            d,
                            MAX_COMMAND_ID_LEN,
                            "a command id of 1..=64 bytes",
                        )?)
                    }
                    1 => {
                        name = Some(read_text(
                            d,
                            MAX_COMMAND_NAME_LEN,
                            "a command name of 1..=32 bytes",
                        )?)
                    }
                    2 => {
                        let at = d.position();
                        if cbor::peek_major(d)? != 5 {
                            return Err(DecodeError::Malformed {
                                what: "an argument map",
                                at,
                            });
                        }
                        args = read_raw(d)?;
                        if args.len() > MAX_COMMAND_ARGS_LEN {
                            return Err(DecodeError::Malformed {
                                what: "arguments of at most 256 bytes",
                                at,
                            });
                        }
                    }
                    3 => issued = Some(cbor::read_u64(d)?),
                    4 => expires = Some(cbor::read_u64(d)?),
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(Command {
                id: req(id, "id")?,
                name: req(name, "name")?,
                args,
                issued_ms: req(issued, "issued_ms")?,
                expires_ms: req(expires, "expires_ms")?,
            })
        })
    }

    /// The arguments, to read by key and type.
    pub fn args(&self) -> super::platform::Args<'a> {
        super::platform::Args::new(self.args)
    }
}

/// Where a command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckStatus {
    /// Received and valid; will run.
    Accepted,
    /// Running (for commands that take time).
    InProgress,
    /// Done; may carry a result.
    Succeeded,
    /// Ran and failed; carries a reason.
    Failed,
    /// Not run; carries a reason.
    Rejected,
}

impl AckStatus {
    /// From a wire code.
    pub fn from_code(code: u64) -> Option<Self> {
        [
            AckStatus::Accepted,
            AckStatus::InProgress,
            AckStatus::Succeeded,
            AckStatus::Failed,
            AckStatus::Rejected,
        ]
        .get(usize::try_from(code).ok()?)
        .copied()
    }

    /// Stable name, as in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            AckStatus::Accepted => "Accepted",
            AckStatus::InProgress => "InProgress",
            AckStatus::Succeeded => "Succeeded",
            AckStatus::Failed => "Failed",
            AckStatus::Rejected => "Rejected",
        }
    }

    /// Whether no further acknowledgement follows.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            AckStatus::Succeeded | AckStatus::Failed | AckStatus::Rejected
        )
    }
}

/// Why a command was rejected or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckReason {
    /// No built-in or application handler knows the name.
    UnknownCommand,
    /// Its expiry time had passed.
    Expired,
    /// Not allowed in the device's lifecycle state.
    NotAllowed,
    /// Missing or out-of-range arguments.
    BadArguments,
    /// Another long-running command is still running.
    Busy,
    /// Ran and failed (see the detail text).
    ExecutionFailed,
    /// Issued no later than a command the device no longer remembers: it
    /// may have run already, so it is refused rather than risk running
    /// twice.
    Stale,
    /// It was running when the device restarted: it may have done part of
    /// its work, and it is not run again.
    Interrupted,
    /// Answered by the twin host, not the device: no device in service has
    /// this id (it never registered, or it was decommissioned).
    UnknownDevice,
    /// A code this version does not know (sent by a newer peer).
    Other(u64),
}

impl AckReason {
    /// Wire code.
    pub fn code(self) -> u64 {
        match self {
            AckReason::UnknownCommand => 0,
            AckReason::Expired => 1,
            AckReason::NotAllowed => 2,
            AckReason::BadArguments => 3,
            AckReason::Busy => 4,
            AckReason::ExecutionFailed => 5,
            AckReason::Stale => 6,
            AckReason::Interrupted => 7,
            AckReason::UnknownDevice => 8,
            AckReason::Other(c) => c,
        }
    }

    /// From a wire code; unknown codes are kept as `Other`.
    pub fn from_code(code: u64) -> Self {
        match code {
            0 => AckReason::UnknownCommand,
            1 => AckReason::Expired,
            2 => AckReason::NotAllowed,
            3 => AckReason::BadArguments,
            4 => AckReason::Busy,
            5 => AckReason::ExecutionFailed,
            6 => AckReason::Stale,
            7 => AckReason::Interrupted,
            8 => AckReason::UnknownDevice,
            c => AckReason::Other(c),
        }
    }
}

/// Device → cloud: a command acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    /// The command's id.
    pub command_id: &'a str,
    /// Where it stands.
    pub status: AckStatus,
    /// For Rejected and Failed.
    pub reason: Option<AckReason>,
    /// Human-readable detail.
    pub detail: Option<&'a str>,
    /// For Succeeded: the result, a CBOR item (raw).
    pub result: Option<&'a [u8]>,
    /// Device clock, ms since the epoch.
    pub time_ms: u64,
}

impl Encodable for Ack<'_> {
    const KIND: MessageKind = MessageKind::Ack;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        let n = 3
            + u64::from(self.reason.is_some())
            + u64::from(self.detail.is_some())
            + u64::from(self.result.is_some());
        e.map(n)?;
        e.u8(0)?.str(self.command_id)?;
        e.u8(1)?.u8(self.status as u8)?;
        if let Some(r) = self.reason {
            e.u8(2)?.u64(r.code())?;
        }
        if let Some(dt) = self.detail {
            e.u8(3)?.str(dt)?;
        }
        if let Some(r) = self.result {
            e.u8(4)?;
            write_raw(e, r)?;
        }
        e.u8(5)?.u64(self.time_ms)?;
        Ok(())
    }
}

impl<'a> Ack<'a> {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut st, mut reason, mut detail, mut result, mut t) =
                (None, None, None, None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => id = Some(read_text(d, MAX_COMMAND_ID_LEN, "a command id")?),
                    1 => st = Some(read_code(d, AckStatus::from_code, "an ack status code")?),
                    2 => reason = Some(AckReason::from_code(cbor::read_u64(d)?)),
                    3 => detail = Some(read_text(d, 128, "a detail text")?),
                    4 => result = Some(read_raw(d)?),
                    5 => t = Some(cbor::read_u64(d)?),
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(Ack {
                command_id: req(id, "command_id")?,
                status: req(st, "status")?,
                reason,
                detail,
                result,
                time_ms: req(t, "time_ms")?,
            })
        })
    }
}

/// What became of a configuration update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOutcome {
    /// Applied whole.
    Applied,
    /// Not newer than the current version; nothing changed.
    Ignored,
    /// A field was invalid; nothing changed.
    Rejected,
}

/// Device → cloud: the outcome of a configuration update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAck<'a> {
    /// The version the update carried.
    pub version: u64,
    /// What happened.
    pub outcome: ConfigOutcome,
    /// The version the device runs now.
    pub current_version: u64,
    /// For Rejected: the field.
    pub field: Option<&'a str>,
    /// For Rejected: why.
    pub reason: Option<&'a str>,
    /// Device clock, ms since the epoch.
    pub time_ms: u64,
}

impl Encodable for ConfigAck<'_> {
    const KIND: MessageKind = MessageKind::ConfigAck;
    fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(4 + u64::from(self.field.is_some()) + u64::from(self.reason.is_some()))?;
        e.u8(0)?.u64(self.version)?;
        e.u8(1)?.u8(self.outcome as u8)?;
        e.u8(2)?.u64(self.current_version)?;
        if let Some(f) = self.field {
            e.u8(3)?.str(f)?;
        }
        if let Some(r) = self.reason {
            e.u8(4)?.str(r)?;
        }
        e.u8(5)?.u64(self.time_ms)?;
        Ok(())
    }
}

impl<'a> ConfigAck<'a> {
    /// Decodes one message; the whole input must be it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut v, mut o, mut cv, mut f, mut r, mut t) = (None, None, None, None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => v = Some(cbor::read_u64(d)?),
                    1 => {
                        o = Some(read_code(
                            d,
                            |c| {
                                [
                                    ConfigOutcome::Applied,
                                    ConfigOutcome::Ignored,
                                    ConfigOutcome::Rejected,
                                ]
                                .get(usize::try_from(c).ok()?)
                                .copied()
                            },
                            "an outcome code",
                        )?)
                    }
                    2 => cv = Some(cbor::read_u64(d)?),
                    3 => f = Some(read_text(d, 64, "a field name")?),
                    4 => r = Some(read_text(d, 128, "a reason")?),
                    5 => t = Some(cbor::read_u64(d)?),
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(ConfigAck {
                version: req(v, "version")?,
                outcome: req(o, "outcome")?,
                current_version: req(cv, "current_version")?,
                field: f,
                reason: r,
                time_ms: req(t, "time_ms")?,
            })
        })
    }
}
