//! The blocking bare-metal driver of the agent: one loop that reads frames
//! from the serial link, feeds them and the time to the agent, sends what
//! the agent produces and sleeps until the next deadline.
//!
//! It adds no rules: every decision is the agent's. What it does add is the
//! link's envelope (each message travels with its topic, see
//! [`crate::envelope`]) and one check that belongs to a link rather than to
//! the agent: a frame addressed to another device, or of a kind only devices
//! send, is dropped and counted.
//!
//! ```
//! use lanyard_nostd::driver::{Driver, Step};
//! # use lanyard_nostd::core::agent::{Agent, Identity, config::DeviceConfig, health::SlowTelemetryOnLowBattery};
//! # use lanyard_nostd::core::agent::platform::*;
//! # struct Port;
//! # impl embedded_io::ErrorType for Port { type Error = core::convert::Infallible; }
//! # impl embedded_io::Read for Port { fn read(&mut self, _: &mut [u8]) -> Result<usize, Self::Error> { Ok(0) } }
//! # impl embedded_io::ReadReady for Port { fn read_ready(&mut self) -> Result<bool, Self::Error> { Ok(false) } }
//! # impl embedded_io::Write for Port { fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> { Ok(b.len()) } fn flush(&mut self) -> Result<(), Self::Error> { Ok(()) } }
//! let identity = Identity { mac: [2, 0, 0, 0, 0, 1], device_id: None, firmware: "1.0.0" };
//! let agent: Agent<SlowTelemetryOnLowBattery, 8, 256> =
//!     Agent::new(identity, DeviceConfig::default(), SlowTelemetryOnLowBattery);
//! // 8 messages of 256 bytes queued; 512-byte receive and transmit buffers.
//! let mut driver: Driver<Port, _, 8, 256, 512, 512> = Driver::new(agent, Port);
//! // A mains-powered device with no telemetry or commands of its own,
//! // whose reported state mirrors desired state.
//! let mut platform = Platform {
//!     storage: &mut NoStorage,
//!     probe: &mut MainsPowered,
//!     telemetry: &mut NoTelemetry,
//!     commands: &mut NoCommands,
//!     desired: &mut MirrorDesired,
//! };
//! driver.boot(0, &mut platform).unwrap();
//! // A firmware calls this forever, sleeping (WFI) until the deadline.
//! let Step { next_deadline_ms, .. } = driver.poll(0, &mut platform).unwrap();
//! assert!(next_deadline_ms.is_some()); // the registration retry
//! assert_eq!(driver.stats().frames_out, 2); // lifecycle event and registration
//! ```

use embedded_io::{Read, ReadReady, Write};
use lanyard_core::EncodeError;
use lanyard_core::agent::Agent;
use lanyard_core::agent::health::TelemetryPolicy;
use lanyard_core::agent::messages::topic;
use lanyard_core::agent::platform::Platform;

use crate::envelope::{MAX_HEADER_LEN, decode_envelope, encode_header};
use crate::frame::{FramedLink, LinkError, max_frame_len};

/// Counters of the link side (the agent keeps its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Frames received and handed to the agent (it may still refuse them).
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Good frames that were not a `[topic, message]` envelope with a
    /// lanyard topic.
    pub bad_envelopes: u64,
    /// Envelopes for another device, or of a kind the cloud never sends.
    pub misdirected: u64,
    /// Messages the agent refused.
    pub refused: u64,
}

/// Why the driver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError<E> {
    /// The serial port failed.
    Link(LinkError<E>),
    /// The agent's message did not fit the driver's message buffer
    /// (configuration error: `M` of the driver is below the agent's).
    Encode(EncodeError),
    /// The agent refused to start: the device is decommissioned or its
    /// saved state cannot be read.
    Boot(lanyard_core::agent::BootError),
}

/// What one [`Driver::poll`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When to poll again at the latest (ms, the clock passed to `poll`);
    /// `None` when only an inbound frame can give the agent work.
    pub next_deadline_ms: Option<u64>,
    /// A firmware update asks for a restart now (into a verified image on
    /// trial, or back to the old one): everything it had to say was sent.
    /// Always `false` from [`Driver::poll`].
    pub restart_due: bool,
}

/// The agent on a framed serial link. `Q` and `M` are the agent's outbox
/// (messages, bytes each); `RX` and `TX` the link's receive and transmit
/// buffers, which must hold a framed envelope of an `M`-byte message
/// (checked at compile time: see [`link_buffer_len`]).
pub struct Driver<
    IO,
    P: TelemetryPolicy,
    const Q: usize,
    const M: usize,
    const RX: usize,
    const TX: usize,
> {
    agent: Agent<P, Q, M>,
    link: FramedLink<IO, RX, TX>,
    message: [u8; M],
    stats: DriverStats,
}

/// The link buffer a driver with `M`-byte messages needs, each way.
pub const fn link_buffer_len(message_len: usize) -> usize {
    max_frame_len(MAX_HEADER_LEN + message_len)
}

impl<IO, P, const Q: usize, const M: usize, const RX: usize, const TX: usize>
    Driver<IO, P, Q, M, RX, TX>
where
    IO: Read + ReadReady + Write,
    P: TelemetryPolicy,
{
    /// The driver of `agent` over the serial port `io`.
    pub fn new(agent: Agent<P, Q, M>, io: IO) -> Self {
        const {
            assert!(
                TX >= link_buffer_len(M) && RX >= link_buffer_len(M),
                "RX and TX must be at least link_buffer_len(M)"
            )
        };
        Driver {
            agent,
            link: FramedLink::new(io),
            message: [0; M],
            stats: DriverStats::default(),
        }
    }

    /// The agent (its state, health, counters, events).
    pub fn agent(&self) -> &Agent<P, Q, M> {
        &self.agent
    }

    /// The agent, to set reported values or drain its events.
    pub fn agent_mut(&mut self) -> &mut Agent<P, Q, M> {
        &mut self.agent
    }

    /// Link counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// The framed link (its receive counters, its port).
    pub fn link_mut(&mut self) -> &mut FramedLink<IO, RX, TX> {
        &mut self.link
    }

    /// Boots the agent (restoring persisted state) at `now_ms`.
    pub fn boot(
        &mut self,
        now_ms: u64,
        platform: &mut Platform<'_>,
    ) -> Result<(), DriverError<IO::Error>> {
        self.agent
            .boot(now_ms, platform)
            .map_err(DriverError::Boot)?;
        self.flush()?;
        Ok(())
    }

    /// One turn of the loop at `now_ms`: every frame the port has ready,
    /// then whatever is due, then everything the agent queued is sent.
    /// Never waits for input.
    // Kept out of line: inlined into a firmware's `main`, its frame (the
    // decoded delta, the command result) would stay on the stack for the
    // life of the program instead of only while it runs.
    #[inline(never)]
    pub fn poll(
        &mut self,
        now_ms: u64,
        platform: &mut Platform<'_>,
    ) -> Result<Step, DriverError<IO::Error>> {
        self.turn(now_ms, platform, None)
    }

    /// [`Driver::poll`] for a device that takes firmware updates: frames
    /// on the update topics go to `updates` (the device runs
    /// `running_version`), and what it has to say is sent after the
    /// agent's. Its download record is saved in the platform's storage
    /// ([`StorageSlot::UpdateRecord`](lanyard_core::agent::platform::StorageSlot))
    /// before anything more is sent. When [`Step::restart_due`] says so,
    /// the firmware resets into the image its bootloader picks.
    #[cfg(feature = "update")]
    #[inline(never)]
    pub fn poll_updating<S: lanyard_core::update::UpdateSlot>(
        &mut self,
        now_ms: u64,
        platform: &mut Platform<'_>,
        updates: &mut lanyard_core::update::UpdateSession<S>,
        running_version: &str,
    ) -> Result<Step, DriverError<IO::Error>> {
        let mut hook = updating::Hook {
            session: updates,
            running_version,
        };
        self.turn(now_ms, platform, Some(&mut hook))
    }

    fn turn(
        &mut self,
        now_ms: u64,
        platform: &mut Platform<'_>,
        mut updates: Option<&mut dyn Updating>,
    ) -> Result<Step, DriverError<IO::Error>> {
        loop {
            let Driver {
                agent, link, stats, ..
            } = self;
            let got = link
                .try_receive(|frame| {
                    if let Some(u) = updates.as_deref_mut() {
                        let degraded = agent.state()
                            == lanyard_core::agent::lifecycle::LifecycleState::Degraded;
                        match u.inbound(agent.device_id(), frame, degraded) {
                            Taken::Yes => {
                                stats.frames_in += 1;
                                return;
                            }
                            Taken::Refused => {
                                stats.refused += 1;
                                return;
                            }
                            Taken::NotAnUpdate => {}
                        }
                    }
                    deliver(agent, stats, now_ms, frame, platform)
                })
                .map_err(DriverError::Link)?;
            // Send between reads, so a burst of commands cannot overflow
            // the outbox with acknowledgements.
            self.flush()?;
            if let Some(u) = updates.as_deref_mut() {
                self.flush_updates(now_ms, u, platform)?;
            }
            if !got {
                break;
            }
        }
        if self.agent.poll_timeout().is_some_and(|at| at <= now_ms) {
            self.agent.handle_timeout(now_ms, platform);
            self.flush()?;
        }
        let mut step = Step {
            next_deadline_ms: self.agent.poll_timeout(),
            restart_due: false,
        };
        if let Some(u) = updates {
            if u.timeout().is_some_and(|at| at <= now_ms) {
                self.flush_updates(now_ms, u, platform)?;
            }
            step.restart_due = u.take_restart();
            step.next_deadline_ms = match (step.next_deadline_ms, u.timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(step)
    }

    /// Sends what the updates have to say, saving their record first.
    fn flush_updates(
        &mut self,
        now_ms: u64,
        updates: &mut dyn Updating,
        platform: &mut Platform<'_>,
    ) -> Result<(), DriverError<IO::Error>> {
        let Driver {
            agent,
            link,
            stats,
            message,
        } = self;
        let mut failed = None;
        updates.flush(
            now_ms,
            agent.device_id(),
            message,
            platform,
            &mut |topic, bytes| match send_enveloped(link, stats, topic, bytes) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            },
        );
        failed.map_or(Ok(()), |e| Err(DriverError::Link(e)))
    }

    /// Runs the loop until `stop` says so: `now` reads the clock (ms),
    /// `idle` is called with the next deadline when there is nothing to do
    /// and may return early (a WFI returns on any interrupt, a received
    /// byte included); `stop` sees the agent after every turn.
    pub fn run(
        &mut self,
        platform: &mut Platform<'_>,
        mut now: impl FnMut() -> u64,
        mut idle: impl FnMut(Option<u64>),
        mut stop: impl FnMut(&mut Agent<P, Q, M>) -> bool,
    ) -> Result<(), DriverError<IO::Error>> {
        loop {
            let step = self.poll(now(), platform)?;
            if stop(&mut self.agent) {
                return Ok(());
            }
            idle(step.next_deadline_ms);
        }
    }

    /// Sends everything the agent has queued.
    fn flush(&mut self) -> Result<(), DriverError<IO::Error>> {
        while let Some(t) = self
            .agent
            .poll_transmit(&mut self.message)
            .map_err(DriverError::Encode)?
        {
            let topic = topic(self.agent.device_id(), t.kind);
            send_enveloped(
                &mut self.link,
                &mut self.stats,
                &topic,
                &self.message[..t.len],
            )
            .map_err(DriverError::Link)?;
        }
        Ok(())
    }
}

/// Sends `message` under `topic` as one frame, its envelope header
/// framed with the message where it lies (no copy), and counts it.
fn send_enveloped<IO: Read + ReadReady + Write, const RX: usize, const TX: usize>(
    link: &mut FramedLink<IO, RX, TX>,
    stats: &mut DriverStats,
    topic: &str,
    message: &[u8],
) -> Result<(), LinkError<IO::Error>> {
    let mut header = [0u8; MAX_HEADER_LEN];
    // The header buffer holds the longest topic: cannot fail.
    let h = encode_header(topic, message.len(), &mut header).unwrap_or(0);
    link.send_parts(&[&header[..h], message])?;
    stats.frames_out += 1;
    Ok(())
}

/// What became of a frame offered to the updates.
// Built only by the update hook (the `update` feature).
#[cfg_attr(not(feature = "update"), allow(dead_code))]
enum Taken {
    /// An update message for this device, handled.
    Yes,
    /// An update message that was refused (for another device, of a
    /// topic only devices send, or unreadable).
    Refused,
    /// Not on an update topic: the agent's.
    NotAnUpdate,
}

/// A device's firmware updates as the driver's loop sees them (an object,
/// so that one loop serves devices with and without updates).
trait Updating {
    fn inbound(&mut self, device_id: &str, frame: &[u8], degraded: bool) -> Taken;
    /// Sends (through `send`, false once the link failed) what is due,
    /// `buf` being the message buffer.
    fn flush(
        &mut self,
        now_ms: u64,
        device_id: &str,
        buf: &mut [u8],
        platform: &mut Platform<'_>,
        send: &mut dyn FnMut(&str, &[u8]) -> bool,
    );
    fn timeout(&self) -> Option<u64>;
    fn take_restart(&mut self) -> bool;
}

/// Hands one received frame to the agent, if it is for this device.
fn deliver<P: TelemetryPolicy, const Q: usize, const M: usize>(
    agent: &mut Agent<P, Q, M>,
    stats: &mut DriverStats,
    now_ms: u64,
    frame: &[u8],
    platform: &mut Platform<'_>,
) {
    let Ok(envelope) = decode_envelope(frame) else {
        stats.bad_envelopes += 1;
        return;
    };
    if envelope.device_id != agent.device_id() || envelope.kind.from_device() {
        stats.misdirected += 1;
        return;
    }
    stats.frames_in += 1;
    if agent
        .handle_inbound(now_ms, envelope.kind, envelope.message, platform)
        .is_err()
    {
        stats.refused += 1;
    }
}

#[cfg(feature = "update")]
mod updating {
    use lanyard_core::agent::platform::{Platform, StorageSlot};
    use lanyard_core::update::messages::UpdateTopic;
    use lanyard_core::update::{RECORD_MAX, Running, UpdateSession, UpdateSlot};

    use super::{Taken, Updating};
    use crate::envelope::decode_update_envelope;

    /// The session and what the device runs, for one turn of the loop.
    pub(super) struct Hook<'a, 'v, S> {
        pub(super) session: &'a mut UpdateSession<S>,
        pub(super) running_version: &'v str,
    }

    impl<S: UpdateSlot> Updating for Hook<'_, '_, S> {
        fn inbound(&mut self, device_id: &str, frame: &[u8], degraded: bool) -> Taken {
            let Ok(e) = decode_update_envelope(frame) else {
                return Taken::NotAnUpdate;
            };
            if e.device_id != device_id || e.topic.from_device() {
                return Taken::Refused;
            }
            let running = Running {
                version: self.running_version,
                degraded,
            };
            match self.session.handle(e.topic, e.message, running) {
                Ok(()) => Taken::Yes,
                Err(_) => Taken::Refused,
            }
        }

        fn flush(
            &mut self,
            now_ms: u64,
            device_id: &str,
            buf: &mut [u8],
            platform: &mut Platform<'_>,
            send: &mut dyn FnMut(&str, &[u8]) -> bool,
        ) {
            loop {
                save(self.session, platform);
                let Ok(Some((topic, n))) = self.session.poll_transmit(now_ms, buf) else {
                    break;
                };
                let topic: heapless::String<128> = UpdateTopic::topic(topic, device_id);
                if !send(&topic, &buf[..n]) {
                    return;
                }
            }
            save(self.session, platform);
        }

        fn timeout(&self) -> Option<u64> {
            self.session.poll_timeout()
        }

        fn take_restart(&mut self) -> bool {
            self.session.take_restart()
        }
    }

    /// Saves the download record if it changed. A failed save is not
    /// fatal: a restart then asks again for the blocks it lost.
    fn save<S: UpdateSlot>(session: &mut UpdateSession<S>, platform: &mut Platform<'_>) {
        let mut record = [0u8; RECORD_MAX];
        if let Some(Ok(n)) = session.take_record(&mut record) {
            let _ = platform
                .storage
                .store(StorageSlot::UpdateRecord, &record[..n]);
        }
    }
}

/// At boot, before the first [`Driver::poll_updating`]: takes back the
/// download record `storage` kept (one that does not read is dropped and
/// the job starts over when offered), and tells the session whether this
/// boot runs the new image on trial (the bootloader's word): a verified
/// image on trial runs `self_test`, and the outcome goes out with the
/// next poll.
#[cfg(feature = "update")]
pub fn boot_updates<S: lanyard_core::update::UpdateSlot>(
    session: &mut lanyard_core::update::UpdateSession<S>,
    storage: &mut dyn lanyard_core::agent::platform::Storage,
    running_trial: bool,
    self_test: impl FnOnce() -> bool,
) {
    use lanyard_core::agent::platform::StorageSlot;
    let mut record = [0u8; lanyard_core::update::RECORD_MAX];
    if let Ok(n) = storage.load(StorageSlot::UpdateRecord, &mut record)
        && n > 0
        && session.resume(&record[..n]).is_err()
    {
        let _ = storage.store(StorageSlot::UpdateRecord, &[]);
    }
    session.boot(running_trial, self_test);
}
