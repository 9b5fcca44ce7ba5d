//! The sans-I/O device agent: lifecycle, registration, health and degraded
//! mode, scheduling, commands with acknowledgements, configuration and the
//! device side of the shadow.
//!
//! In the style of quinn-proto's `Connection`: inputs go in through
//! `handle_*(now_ms, ..)`, outputs come out of `poll_*`. The agent never
//! reads a clock, never sleeps and owns no socket. After any `handle_*`
//! call, drain in this order:
//!
//! 1. [`Agent::poll_transmit`] until `None`: messages to publish, each with
//!    its [`MessageKind`] (and so topic) and QoS need;
//! 2. [`Agent::poll_event`] until `None`: state changes for the application;
//! 3. [`Agent::poll_timeout`]: when to call [`Agent::handle_timeout`] next.
//!
//! A spurious `handle_timeout` (nothing due) does nothing.

mod commands;
pub mod config;
pub mod health;
pub mod lifecycle;
pub mod messages;
mod outbox;
#[cfg(feature = "persistence")]
mod persist;
pub mod platform;
mod registration;
mod shadow_sync;
mod timers;

pub use self::commands::NothingRunning;
use self::commands::{Remembered, Running};
use self::registration::Registration;
pub use self::shadow_sync::ReportError;
use self::timers::{ALL_TIMERS, TIMERS, Timer};

use minicbor::decode::Decoder;
use minicbor::encode::Encoder;

use self::config::DeviceConfig;
use self::health::{
    HealthMetrics, HealthReport, HealthStatus, SlowTelemetryOnLowBattery, TelemetryPolicy,
};
use self::lifecycle::{LifecycleState, Trigger, next_state};
use self::messages::*;
use self::outbox::{Outbox, Pushed};
use self::platform::{Applied, CommandFailure, Completion, Platform, RejectReason};
use crate::error::{DecodeError, EncodeError, Error};
use crate::shadow::{LeafMeta, Path, Source, StateTree, Value};
use crate::wire::{ShadowDelta, ShadowUpdateRef};

/// Leaves of the device-side shadow (reported state) unless the agent's
/// type says otherwise; also the capacity of telemetry readings.
pub const SHADOW_LEAVES: usize = 16;
/// Pool bytes of the device-side shadow unless the agent's type says
/// otherwise; also the pool of telemetry readings.
pub const SHADOW_POOL: usize = 512;
/// Commands remembered for deduplication.
pub const DEDUPE_WINDOW: usize = 16;
/// Application events buffered between polls (the oldest is dropped).
pub const EVENT_QUEUE: usize = 16;
/// Longest registration retry interval.
pub const MAX_REGISTER_BACKOFF_MS: u64 = 60_000;
/// Largest persisted agent record: configuration, the dedupe window of
/// commands with ids up to 64 bytes, and the reported shadow.
pub const STATE_RECORD_MAX: usize = 4096;
/// First registration retry interval.
pub const FIRST_REGISTER_BACKOFF_MS: u64 = 2_000;

/// Who the device is.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The network interface's MAC address.
    pub mac: [u8; 6],
    /// A configured id; `None`, or an id that is not
    /// [`valid_device_id`](crate::topic::valid_device_id), derives one from
    /// the MAC address (drivers refuse an invalid id before this).
    pub device_id: Option<&'a str>,
    /// Firmware version text (at most 32 bytes are kept).
    pub firmware: &'a str,
}

/// The id derived from a MAC address: `ly-` and 12 lowercase hex digits.
///
/// ```
/// use lanyard_core::agent::device_id_from_mac;
/// assert_eq!(device_id_from_mac([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]).as_str(), "ly-0a1b2c3d4e5f");
/// ```
pub fn device_id_from_mac(mac: [u8; 6]) -> heapless::String<MAX_DEVICE_ID_LEN> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = heapless::String::new();
    let _ = s.push_str("ly-");
    for b in mac {
        let _ = s.push(HEX[usize::from(b >> 4)] as char);
        let _ = s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// What the application may want to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEvent {
    /// The lifecycle state changed.
    StateChanged {
        /// Before.
        from: LifecycleState,
        /// After.
        to: LifecycleState,
        /// Why.
        cause: Trigger,
    },
    /// The health status changed.
    HealthChanged(HealthStatus),
    /// A configuration version was applied.
    ConfigApplied(u64),
    /// A delta went through the application's
    /// [`DesiredState`](platform::DesiredState): how many of its leaves it
    /// reached, rejected, or left pending.
    DesiredHandled {
        /// Leaves the device reached (reported now).
        reached: u16,
        /// Leaves it refused (the cloud is told why).
        rejected: u16,
        /// Leaves it is still working on.
        pending: u16,
    },
    /// A command finished (final acknowledgement queued).
    CommandFinished(AckStatus),
    /// Persisting state failed; the state lives on in memory.
    StorageFailed,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Messages queued, by kind (index: [`MessageKind::ALL`] order).
    pub queued: [u64; 12],
    /// Messages dropped from a full outbox, by kind.
    pub dropped: [u64; 12],
    /// Messages that could not be queued at all (outbox full of messages
    /// that may not be dropped, or larger than a slot).
    pub undeliverable: u64,
    /// Inbound messages refused (undecodable, wrong state, wrong device).
    pub inbound_refused: u64,
    /// Commands executed.
    pub commands_executed: u64,
    /// Commands seen again and acknowledged without running.
    pub duplicate_commands: u64,
    /// Commands refused because they were issued before every command the
    /// dedupe window remembers (they may have run already).
    pub stale_commands: u64,
    /// Commands refused (as `Busy`, not remembered) because they arrived
    /// after a resumed boot before the cloud's time was known again.
    pub refused_before_time: u64,
    /// Registration requests sent.
    pub register_attempts: u64,
    /// Failed writes to storage.
    pub storage_failures: u64,
    /// Refusals of desired values the agent could not keep to report
    /// (more refused properties at once than the reported shadow holds).
    pub refusals_unreported: u64,
}

fn kind_index(kind: MessageKind) -> usize {
    MessageKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0)
}

/// A message to publish, from [`Agent::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// What it is (and so its topic, see [`messages::topic`]).
    pub kind: MessageKind,
    /// Bytes written into the caller's buffer.
    pub len: usize,
    /// Whether it needs at-least-once delivery (MQTT QoS 1).
    pub needs_ack: bool,
}

/// Why an inbound message was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundError {
    /// Not decodable.
    Decode(DecodeError),
    /// A message the device sends, not receives.
    WrongDirection(MessageKind),
    /// Not expected in the current lifecycle state.
    NotNow(LifecycleState),
    /// Addressed to another device.
    WrongDevice,
    /// The device is decommissioned and accepts nothing.
    Decommissioned,
}

impl core::fmt::Display for InboundError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InboundError::Decode(e) => write!(f, "undecodable message: {e}"),
            InboundError::WrongDirection(k) => {
                write!(f, "{} is sent by devices, not to them", k.topic_suffix())
            }
            InboundError::NotNow(s) => write!(f, "not expected in state {s}"),
            InboundError::WrongDevice => f.write_str("addressed to another device"),
            InboundError::Decommissioned => f.write_str("the device is decommissioned"),
        }
    }
}

/// Why [`Agent::boot`] refused to start the device. The agent stays inert
/// (it sends nothing and accepts nothing): starting from scratch would
/// register the device again as new, with its commands' history lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// The device was decommissioned. It stays so until an operator
    /// re-provisions it (erases its storage and lets the cloud accept it
    /// again).
    Decommissioned,
    /// The saved state could not be read: the storage failed or holds a
    /// damaged record.
    Storage(platform::StorageError),
    /// The saved state was read but is not a state record of this device.
    Unreadable(DecodeError),
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::Decommissioned => {
                f.write_str("the device is decommissioned; an operator must re-provision it")
            }
            BootError::Storage(e) => write!(f, "saved state unavailable: {e}"),
            BootError::Unreadable(e) => write!(f, "saved state unreadable: {e}"),
        }
    }
}

impl From<Error> for InboundError {
    fn from(e: Error) -> Self {
        match e {
            Error::Decode(d) => InboundError::Decode(d),
            _ => InboundError::Decode(DecodeError::Malformed {
                what: "a valid message",
                at: 0,
            }),
        }
    }
}

impl From<DecodeError> for InboundError {
    fn from(e: DecodeError) -> Self {
        InboundError::Decode(e)
    }
}

/// The device agent. `Q` outbound messages of up to `M` bytes are kept while
/// offline; `P` decides degraded-mode telemetry; the device's shadow holds
/// up to `L` leaves with `B` bytes of keys and text (a gateway may hold an
/// 8 KB AWS-sized document, a microcontroller a small one). The device
/// announces `L` and `B` when it registers, and the twin host refuses
/// desired state that would not fit.
pub struct Agent<
    P: TelemetryPolicy = SlowTelemetryOnLowBattery,
    const Q: usize = 16,
    const M: usize = 512,
    const L: usize = SHADOW_LEAVES,
    const B: usize = SHADOW_POOL,
> {
    device_id: heapless::String<MAX_DEVICE_ID_LEN>,
    firmware: heapless::String<32>,
    state: LifecycleState,
    config: DeviceConfig,
    policy: P,
    timers: [Option<u64>; TIMERS],
    outbox: Outbox<Q, M>,
    events: heapless::Deque<AgentEvent, EVENT_QUEUE>,
    health: HealthReport,
    lifecycle_seq: u64,
    heartbeat_seq: u64,
    telemetry_seq: u64,
    boot_ms: u64,
    boot_count: u64,
    registration: Registration,
    rng: u64,
    dedupe: heapless::Deque<Remembered, DEDUPE_WINDOW>,
    running: Option<Running>,
    /// The newest issue time of a command the dedupe window let go of: a
    /// command not remembered and issued no later is refused as stale.
    forgotten_ms: Option<u64>,
    /// Issue time of the command being handled, for the dedupe window.
    issued_ms: u64,
    reported: StateTree<L, B>,
    /// Desired properties the application refuses, each leaf a
    /// [`RejectReason`] code; sent with every report.
    rejected: StateTree<L, B>,
    /// The reported state changed since it was last persisted.
    reported_dirty: bool,
    /// The cloud's clock minus this device's, learnt from the registration
    /// answer: a device without a real-time clock counts from boot, while
    /// command expiry times are the cloud's. Not persisted: a reboot may
    /// restart the device's clock.
    cloud_offset_ms: Option<i64>,
    stats: AgentStats,
}

impl<P: TelemetryPolicy, const Q: usize, const M: usize, const L: usize, const B: usize>
    Agent<P, Q, M, L, B>
{
    /// A new agent, Unprovisioned, with `config` until the cloud sends one.
    /// Call [`Agent::boot`] next.
    pub fn new(identity: Identity<'_>, config: DeviceConfig, policy: P) -> Self {
        let device_id = match identity.device_id {
            Some(id) if crate::topic::valid_device_id(id) => {
                let mut s = heapless::String::new();
                let _ = s.push_str(id);
                s
            }
            _ => device_id_from_mac(identity.mac),
        };
        let mut firmware = heapless::String::new();
        for c in identity.firmware.chars() {
            if firmware.push(c).is_err() {
                break;
            }
        }
        // Seeded per device, so a fleet that boots together spreads out.
        let rng = device_id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        Agent {
            device_id,
            firmware,
            state: LifecycleState::Unprovisioned,
            config,
            policy,
            timers: [None; TIMERS],
            outbox: Outbox::new(),
            events: heapless::Deque::new(),
            health: HealthReport {
                status: HealthStatus::Normal,
                reasons: 0,
                metrics: HealthMetrics::default(),
            },
            lifecycle_seq: 0,
            heartbeat_seq: 0,
            telemetry_seq: 0,
            boot_ms: 0,
            boot_count: 0,
            registration: Registration::NotSent,
            rng,
            dedupe: heapless::Deque::new(),
            running: None,
            forgotten_ms: None,
            issued_ms: 0,
            reported: StateTree::new(),
            rejected: StateTree::new(),
            reported_dirty: false,
            cloud_offset_ms: None,
            stats: AgentStats::default(),
        }
    }

    // ---- getters ----

    /// The cloud's clock minus the device's (ms), once a registration
    /// answer has said what the cloud's time was.
    pub fn cloud_offset_ms(&self) -> Option<i64> {
        self.cloud_offset_ms
    }

    /// `now_ms` on the cloud's clock, as well as the device knows it.
    fn cloud_now(&self, now_ms: u64) -> u64 {
        match self.cloud_offset_ms {
            Some(offset) => (now_ms as i64).saturating_add(offset).max(0) as u64,
            None => now_ms,
        }
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The lifecycle state.
    pub fn state(&self) -> LifecycleState {
        self.state
    }

    /// The configuration in force.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The last health report.
    pub fn health(&self) -> &HealthReport {
        &self.health
    }

    /// Counters.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// Messages waiting in the outbox.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Free outbox space, percent (a health metric the platform may use).
    pub fn outbox_free_pct(&self) -> u8 {
        self.outbox.free_pct()
    }

    /// The device's reported shadow state.
    pub fn reported(&self) -> &StateTree<L, B> {
        &self.reported
    }

    /// The desired properties the application refuses, each leaf the code
    /// of its [`RejectReason`].
    pub fn rejected(&self) -> &StateTree<L, B> {
        &self.rejected
    }

    /// Boots so far.
    pub fn boot_count(&self) -> u64 {
        self.boot_count
    }

    // ---- outputs ----

    /// The next message to publish, written into `buf`. A buffer too small
    /// leaves the message queued and says how much is needed.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, EncodeError> {
        let Some(m) = self.outbox.front() else {
            return Ok(None);
        };
        let (Some(out), Some(bytes)) = (buf.get_mut(..m.len), m.bytes.get(..m.len)) else {
            return Err(EncodeError::BufferTooSmall { needed: m.len });
        };
        out.copy_from_slice(bytes);
        let t = Transmit {
            kind: m.kind,
            len: m.len,
            needs_ack: m.kind.needs_ack(),
        };
        self.outbox.drop_front();
        Ok(Some(t))
    }

    /// The next application event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// When [`Agent::handle_timeout`] should next be called (ms), if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.iter().flatten().copied().min()
    }

    // ---- inputs ----

    /// Starts the agent: restores persisted state (a reboot resumes where it
    /// was), counts the boot, and starts registration or the periodic work.
    /// A device resumed in service also registers again, to learn the
    /// cloud's time; until the answer, commands that are not known
    /// duplicates are refused as `Busy` (expiry cannot be judged). A
    /// command that was running when the device went down is answered as
    /// [`AckReason::Interrupted`], never run again.
    ///
    /// Refused, with the agent left inert, when the device is
    /// decommissioned or its saved state cannot be read: a device never
    /// starts again from scratch on its own.
    pub fn boot(&mut self, now_ms: u64, platform: &mut Platform<'_>) -> Result<(), BootError> {
        self.boot_ms = now_ms;
        #[cfg(feature = "persistence")]
        self.resume(now_ms, platform)?;
        // Restored from storage: never past the top, whatever a record said.
        self.boot_count = self.boot_count.wrapping_add(1);
        match self.state {
            LifecycleState::Unprovisioned => {
                self.transition(now_ms, Trigger::Register, platform);
                self.send_register(now_ms);
            }
            LifecycleState::Provisioning => self.send_register(now_ms),
            LifecycleState::Decommissioned => return Err(BootError::Decommissioned),
            _ => {
                // Resumed in service: register again, for the cloud's time
                // (a clock that counts from boot has lost it, and command
                // expiry is judged on it) and any newer configuration.
                // The state stays as it was.
                self.start_periodic(now_ms);
                #[cfg(feature = "persistence")]
                self.send_register(now_ms);
            }
        }
        self.persist(platform);
        Ok(())
    }

    /// Runs whatever is due at `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64, platform: &mut Platform<'_>) {
        for timer in ALL_TIMERS {
            match self.timers[timer as usize] {
                Some(at) if at <= now_ms => {}
                _ => continue,
            }
            self.timers[timer as usize] = None;
            match timer {
                Timer::Register => self.send_register(now_ms),
                Timer::Heartbeat => {
                    self.heartbeat_seq += 1;
                    self.push(&Heartbeat {
                        seq: self.heartbeat_seq,
                        time_ms: now_ms,
                        uptime_ms: now_ms.saturating_sub(self.boot_ms),
                        state: self.state,
                        health: self.health.status,
                    });
                    self.schedule(Timer::Heartbeat, now_ms + self.config.heartbeat_ms);
                }
                Timer::Telemetry => {
                    self.send_telemetry(now_ms, platform);
                    let every =
                        self.policy
                            .telemetry_interval_ms(&self.config, self.state, &self.health);
                    self.schedule(Timer::Telemetry, now_ms + every);
                }
                Timer::Health => {
                    self.check_health(now_ms, platform);
                    self.schedule(Timer::Health, now_ms + self.config.health_ms);
                }
                Timer::ShadowSync => {
                    if core::mem::take(&mut self.reported_dirty) {
                        self.persist(platform);
                    }
                    self.send_shadow(now_ms);
                    self.schedule(Timer::ShadowSync, now_ms + self.config.shadow_sync_ms);
                }
            }
        }
    }

    /// The transport reconnected after a loss: anything sent to the device
    /// meanwhile may be gone. A registered device reports its shadow at once
    /// (the twin answers with the current delta); a provisioning one sends
    /// its registration again.
    pub fn handle_reconnect(&mut self, now_ms: u64) {
        match self.state {
            LifecycleState::Provisioning => self.schedule(Timer::Register, now_ms),
            s if s.is_registered() => {
                self.schedule(Timer::ShadowSync, now_ms);
                // Still waiting for the cloud's time after a reboot: ask
                // again now rather than after the backoff.
                #[cfg(feature = "persistence")]
                if self.awaiting_registration() {
                    self.schedule(Timer::Register, now_ms);
                }
            }
            _ => {}
        }
    }

    /// Handles one inbound message of `kind`. On error nothing changed.
    pub fn handle_inbound(
        &mut self,
        now_ms: u64,
        kind: MessageKind,
        bytes: &[u8],
        platform: &mut Platform<'_>,
    ) -> Result<(), InboundError> {
        let r = self.inbound(now_ms, kind, bytes, platform);
        if r.is_err() {
            self.stats.inbound_refused += 1;
        }
        r
    }

    fn inbound(
        &mut self,
        now_ms: u64,
        kind: MessageKind,
        bytes: &[u8],
        platform: &mut Platform<'_>,
    ) -> Result<(), InboundError> {
        if self.state == LifecycleState::Decommissioned {
            return Err(InboundError::Decommissioned);
        }
        match kind {
            MessageKind::RegisterAccepted => self.registration_answered(now_ms, bytes, platform),
            MessageKind::Config => {
                self.require_registered()?;
                let update = self.config.decode_update(&mut Decoder::new(bytes))?;
                self.apply_config(now_ms, update, platform);
                Ok(())
            }
            MessageKind::ShadowDelta => {
                self.require_registered()?;
                self.apply_delta(now_ms, bytes, platform)
            }
            MessageKind::Command => {
                let cmd = Command::decode(bytes)?;
                self.command(now_ms, &cmd, platform);
                Ok(())
            }
            k if k.from_device() => Err(InboundError::WrongDirection(k)),
            _ => Err(InboundError::NotNow(self.state)),
        }
    }

    fn require_registered(&self) -> Result<(), InboundError> {
        if self.state.is_registered() {
            Ok(())
        } else {
            Err(InboundError::NotNow(self.state))
        }
    }

    // ---- lifecycle ----

    /// Moves by `trigger` if the table allows it; reports and persists the
    /// change once. Returns whether it moved.
    fn transition(&mut self, now_ms: u64, trigger: Trigger, platform: &mut Platform<'_>) -> bool {
        let Ok(to) = next_state(self.state, trigger) else {
            return false;
        };
        let from = self.state;
        self.state = to;
        // Restored from storage: never past the top, whatever a record said.
        self.lifecycle_seq = self.lifecycle_seq.wrapping_add(1);
        self.push(&LifecycleEvent {
            from,
            to,
            cause: trigger,
            time_ms: now_ms,
            seq: self.lifecycle_seq,
        });
        self.push_event(AgentEvent::StateChanged {
            from,
            to,
            cause: trigger,
        });
        self.persist(platform);
        true
    }

    // ---- periodic work ----

    // Not inlined: see `apply_delta` (the readings live only while it runs).
    #[inline(never)]
    fn send_telemetry(&mut self, now_ms: u64, platform: &mut Platform<'_>) {
        // In maintenance the device is out of service: no telemetry.
        if self.state == LifecycleState::Maintenance {
            return;
        }
        let mut t = Telemetry {
            seq: self.telemetry_seq + 1,
            time_ms: self.cloud_now(now_ms),
            readings: StateTree::new(),
        };
        if !platform.telemetry.read(now_ms, &mut t.readings) {
            return;
        }
        self.telemetry_seq += 1;
        self.push(&t);
    }

    fn check_health(&mut self, now_ms: u64, platform: &mut Platform<'_>) {
        let metrics = self.metrics(now_ms, platform);
        let was_critical = self.state == LifecycleState::Degraded;
        let report = self.config.thresholds.evaluate(&metrics, was_critical);
        if report.status != self.health.status {
            self.push_event(AgentEvent::HealthChanged(report.status));
        }
        self.health = report;
        self.push(&HealthMessage {
            time_ms: now_ms,
            report,
        });
        match (self.state, report.status) {
            (LifecycleState::Active, HealthStatus::Critical) => {
                self.transition(now_ms, Trigger::HealthCritical, platform);
            }
            (LifecycleState::Degraded, s) if s != HealthStatus::Critical => {
                self.transition(now_ms, Trigger::HealthRecovered, platform);
            }
            _ => {}
        }
    }

    /// The probe's metrics, with the outbox's free space: a platform's
    /// buffers may be fuller, the agent's own queue is measured here.
    fn metrics(&self, now_ms: u64, platform: &mut Platform<'_>) -> HealthMetrics {
        let mut m = platform.probe.metrics(now_ms);
        m.free_buffer_pct = m.free_buffer_pct.min(self.outbox.free_pct());
        m
    }

    // ---- commands ----

    // ---- configuration ----

    fn apply_config(&mut self, now_ms: u64, update: DeviceConfig, platform: &mut Platform<'_>) {
        let current = self.config.version;
        if update.version <= current {
            self.push(&ConfigAck {
                version: update.version,
                outcome: ConfigOutcome::Ignored,
                current_version: current,
                field: None,
                reason: Some("version not newer than the current one"),
                time_ms: now_ms,
            });
            return;
        }
        if let Err(e) = update.validate() {
            self.push(&ConfigAck {
                version: update.version,
                outcome: ConfigOutcome::Rejected,
                current_version: current,
                field: Some(e.field),
                reason: Some(e.reason),
                time_ms: now_ms,
            });
            return;
        }
        let old = core::mem::replace(&mut self.config, update.clone());
        // Intervals that changed take effect from now.
        if old.heartbeat_ms != update.heartbeat_ms {
            self.schedule(Timer::Heartbeat, now_ms + update.heartbeat_ms);
        }
        if old.telemetry_ms != update.telemetry_ms {
            self.schedule(Timer::Telemetry, now_ms + update.telemetry_ms);
        }
        if old.health_ms != update.health_ms {
            self.schedule(Timer::Health, now_ms + update.health_ms);
        }
        if old.shadow_sync_ms != update.shadow_sync_ms {
            self.schedule(Timer::ShadowSync, now_ms + update.shadow_sync_ms);
        }
        self.push(&ConfigAck {
            version: update.version,
            outcome: ConfigOutcome::Applied,
            current_version: update.version,
            field: None,
            reason: None,
            time_ms: now_ms,
        });
        self.push_event(AgentEvent::ConfigApplied(update.version));
        self.persist(platform);
    }

    // ---- plumbing ----

    fn push<T: Encodable>(&mut self, msg: &T) {
        let pushed = self.outbox.push(msg);
        self.count_pushed(T::KIND, pushed);
    }

    /// Counts what `push` did; apart so that it is not copied per message
    /// type.
    fn count_pushed(&mut self, kind: MessageKind, pushed: Pushed) {
        let i = kind_index(kind);
        match pushed {
            Pushed::Queued => self.stats.queued[i] += 1,
            Pushed::QueuedDropping(k) => {
                self.stats.queued[i] += 1;
                self.stats.dropped[kind_index(k)] += 1;
            }
            Pushed::DroppedNew => self.stats.dropped[i] += 1,
            Pushed::Refused => self.stats.undeliverable += 1,
        }
    }

    /// Without the `persistence` feature nothing is saved: a reboot starts
    /// over (registers again, forgets the commands it ran).
    #[cfg(not(feature = "persistence"))]
    fn persist(&mut self, _: &mut Platform<'_>) {}

    fn push_event(&mut self, e: AgentEvent) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }
}
