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
//! let Step { next_deadline_ms } = driver.poll(0, &mut platform).unwrap();
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
        loop {
            let Driver {
                agent, link, stats, ..
            } = self;
            let got = link
                .try_receive(|frame| deliver(agent, stats, now_ms, frame, platform))
                .map_err(DriverError::Link)?;
            // Send between reads, so a burst of commands cannot overflow
            // the outbox with acknowledgements.
            self.flush()?;
            if !got {
                break;
            }
        }
        if self.agent.poll_timeout().is_some_and(|at| at <= now_ms) {
            self.agent.handle_timeout(now_ms, platform);
            self.flush()?;
        }
        Ok(Step {
            next_deadline_ms: self.agent.poll_timeout(),
        })
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
            let mut header = [0u8; MAX_HEADER_LEN];
            // The header buffer holds the longest topic: cannot fail.
            let h = encode_header(topic.as_str(), t.len, &mut header).unwrap_or(0);
            self.link
                .send_parts(&[&header[..h], &self.message[..t.len]])
                .map_err(DriverError::Link)?;
            self.stats.frames_out += 1;
        }
        Ok(())
    }
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
