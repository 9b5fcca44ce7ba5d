//! # lanyard-core
//!
//! The rules of the Lanyard IoT SDK with no I/O in them: the device shadow
//! (desired / reported / delta, versions, per-property conflict policies) and
//! its CBOR wire format. Everything here is `no_std`, needs no allocator and
//! contains no `unsafe`; time is always a value passed in (`now_ms`), never
//! read from a clock.
//!
//! Drivers (`lanyard-std` on Linux, `lanyard-nostd` on bare metal) move bytes
//! and timestamps in and out; they add no rules of their own.
//!
//! ## Cargo features
//!
//! Three capabilities a firmware short of flash may leave out; all on by
//! default (`default-features = false` and a list picks them):
//!
//! - `persistence`: the agent saves its state through
//!   [`Storage`](agent::platform::Storage) after every change and resumes
//!   it at boot. Without it a reboot starts over and `Storage` is only
//!   wiped on decommission.
//! - `arrays`: shadow values may be arrays. Without it an array is refused
//!   with [`DecodeError::Unsupported`] where it starts, nothing applied.
//! - `diagnostic-commands`: the agent's own `diagnostics` command (a
//!   health report). Without it the name goes to the application's
//!   [`CommandHandler`](agent::platform::CommandHandler).
//!
//!
//! And two off by default: `serde`, typed state ([`shadow::typed`]):
//! any `Serialize` value becomes a state tree and a tree deserializes into
//! a struct, without an allocator; [`agent::Agent::report_typed`]. And
//! `update`, firmware updates (`update`): signed images downloaded in
//! blocks, resumable across reboots, verified, booted on trial and
//! confirmed or rolled back.
//!
//! On the STM32 reference firmware they cost 2.2, 1.7 and 0.8 KB of flash
//! (`examples/stm32/README.md`, "Size").
//!
//! ## Building a device
//!
//! The [`agent::Agent`] runs the protocol: registration, lifecycle, health,
//! the schedule, commands and their acknowledgements, the device side of
//! the shadow. The application owns the device, through the traits of
//! [`agent::platform`]: what becomes of desired state
//! ([`DesiredState`](agent::platform::DesiredState)), what telemetry says
//! ([`TelemetrySource`](agent::platform::TelemetrySource)), which commands
//! exist ([`CommandHandler`](agent::platform::CommandHandler)), its health
//! ([`HealthProbe`](agent::platform::HealthProbe)) and where state is kept
//! ([`Storage`](agent::platform::Storage)). A driver moves the bytes:
//! `lanyard-nostd`'s over a serial link, `lanyard-std`'s over MQTT.
//!
//! A thermostat whose heater cannot go past 30 °C, reporting its room
//! temperature, with one command:
//!
//! ```
//! use lanyard_core::agent::{Agent, Identity, config::DeviceConfig, health::SlowTelemetryOnLowBattery};
//! use lanyard_core::agent::messages::{MessageKind, RegisterAccepted, Encodable};
//! use lanyard_core::agent::platform::*;
//! use lanyard_core::shadow::{Path, PathBuf, StateTree, Value};
//! use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
//!
//! struct Thermostat { setpoint: i64, room_c: f64 }
//!
//! impl DesiredState for Thermostat {
//!     fn apply<'v>(&mut self, _now: u64, path: Path<'_>, desired: Value<'v>) -> Applied<'v> {
//!         match (path.key(0), desired) {
//!             (Some("setpoint"), Value::Int(t)) if !(5..=40).contains(&t) => {
//!                 Applied::Rejected(RejectReason::OutOfRange)
//!             }
//!             // The heater stops at 30: report what it will hold.
//!             (Some("setpoint"), Value::Int(t)) => {
//!                 self.setpoint = t.min(30);
//!                 Applied::Reached(Value::Int(self.setpoint))
//!             }
//!             _ => Applied::Rejected(RejectReason::UnknownProperty),
//!         }
//!     }
//! }
//!
//! impl TelemetrySource for Thermostat {
//!     fn read(&mut self, _now: u64, readings: &mut Readings) -> bool {
//!         let key = PathBuf::from_dotted("room_c").expect("a valid key");
//!         readings.insert(&key, Value::Float(self.room_c)).is_ok()
//!     }
//! }
//!
//! impl CommandHandler for Thermostat {
//!     fn execute(&mut self, _now: u64, name: &str, args: Args<'_>, _result: &mut [u8])
//!         -> Option<Result<Completion, CommandFailure>> {
//!         (name == "boost").then(|| {
//!             let minutes = args.u64("minutes")?.ok_or(CommandFailure::BadArguments)?;
//!             if minutes > 60 { return Err(CommandFailure::BadArguments); }
//!             Ok(Completion::Done(0))
//!         })
//!     }
//! }
//!
//! let identity = Identity { mac: [2, 0, 0, 0, 0, 7], device_id: None, firmware: "1.0.0" };
//! // Up to 8 queued messages of 256 bytes while offline.
//! let mut agent: Agent<SlowTelemetryOnLowBattery, 8, 256> =
//!     Agent::new(identity, DeviceConfig::default(), SlowTelemetryOnLowBattery);
//! let (mut desired, mut telemetry, mut commands) = (
//!     Thermostat { setpoint: 20, room_c: 19.5 },
//!     Thermostat { setpoint: 20, room_c: 19.5 },
//!     Thermostat { setpoint: 20, room_c: 19.5 },
//! );
//! let mut platform = Platform {
//!     storage: &mut NoStorage,
//!     probe: &mut MainsPowered,
//!     telemetry: &mut telemetry,
//!     commands: &mut commands,
//!     desired: &mut desired,
//! };
//!
//! // A driver's loop, with the cloud's answers written by hand here.
//! let mut buf = [0u8; 512];
//! agent.boot(0, &mut platform).expect("boot");
//! let accepted = RegisterAccepted { device_id: agent.device_id(), config: None, time_ms: 1_000 };
//! let n = accepted.encode(&mut buf)?;
//! agent.handle_inbound(100, MessageKind::RegisterAccepted, &buf[..n], &mut platform)
//!     .expect("our registration's answer");
//! // The cloud asks for 35 °C.
//! let mut state: StateTree<16, 512> = StateTree::new();
//! state.insert(&PathBuf::from_dotted("setpoint")?, Value::Int(35))?;
//! let n = ShadowDelta { version: 2, timestamp_ms: 1_200, state }.encode(&mut buf)?;
//! agent.handle_inbound(200, MessageKind::ShadowDelta, &buf[..n], &mut platform)
//!     .expect("a well-formed delta");
//! agent.handle_timeout(200, &mut platform);
//!
//! // What the device reports is what it will hold, 30.
//! let mut reported = None;
//! while let Some(t) = agent.poll_transmit(&mut buf)? {
//!     if t.kind == MessageKind::ShadowUpdate {
//!         let up: ShadowUpdate<16, 512> = ShadowUpdate::decode(&buf[..t.len])?;
//!         reported = up.reported.and_then(|r| r.get_dotted("setpoint").map(|e| e.value == Value::Int(30)));
//!     }
//! }
//! assert_eq!(reported, Some(true));
//! # Ok::<(), lanyard_core::Error>(())
//! ```
//!
//! The application's parts need not be one object each: a board whose
//! sensor feeds both its health and its telemetry is lent to both through
//! a `RefCell` (see [`agent::platform::HealthProbe`]'s implementations).
//!
//! ## Why these dependencies
//!
//! - [`minicbor`]: CBOR (RFC 8949) encoding that works on a byte slice
//!   without allocating, and the decoder's cursor; items are read on their
//!   heads in [`wire`] (cheaper in flash than minicbor's typed readers,
//!   and tested against them).
//! - [`heapless`]: fixed-capacity vectors, so every capacity is a compile-time
//!   constant and an insert that does not fit fails instead of allocating.
//! - `serde` (feature `serde`, without `std` or `alloc`): the data model every
//!   Rust type already derives, so an application's structs are its state.
//!
//! ## Example
//!
//! ```
//! use lanyard_core::shadow::{Shadow, ConflictPolicy, Source, StateTree, Value, PathBuf};
//!
//! // A small shadow: 32 leaves, 1 KiB of keys and text per tree.
//! let mut shadow: Shadow<32, 1024> = Shadow::new(ConflictPolicy::CloudWins);
//!
//! // The cloud asks for a set-point of 21.
//! let mut desired: StateTree<32, 1024> = StateTree::new();
//! desired.insert(&PathBuf::from_dotted("hvac.setpoint")?, Value::Int(21))?;
//! shadow.apply_desired(&desired, None, 1_000)?;
//!
//! // The device has not reported it yet, so the delta holds it.
//! let mut delta: StateTree<32, 1024> = StateTree::new();
//! shadow.delta_into(&mut delta)?;
//! assert_eq!(delta.get_dotted("hvac.setpoint").map(|e| e.value), Some(Value::Int(21)));
//! assert_eq!(shadow.version(), 1);
//! # Ok::<(), lanyard_core::Error>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod agent;
mod error;
pub mod shadow;
pub mod topic;
#[cfg(feature = "update")]
pub mod update;
pub mod wire;

pub use error::{CapacityError, DecodeError, EncodeError, Error, PathError};
/// The CBOR codec the wire format is written with, for command arguments
/// and results an application encodes itself (the same version Lanyard
/// uses, so its `Encoder` works with [`wire::encode_into`]).
pub use minicbor;

/// The examples of `docs/conflict-resolution.md` run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/conflict-resolution.md")]
pub struct ConflictResolutionDoc;

/// The Rust examples of `README.md` run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoc;
