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
//! - `diagnostic-commands`: the agent's own `diagnostics` and
//!   `read_sensor` commands. Without them those names go to the
//!   application's [`CommandHandler`](agent::platform::CommandHandler).
//!
//! On the STM32 reference firmware they cost 2.2, 1.7 and 0.8 KB of flash
//! (`examples/stm32/README.md`, "Size").
//!
//! ## Why these dependencies
//!
//! - [`minicbor`]: CBOR (RFC 8949) encoding that works on a byte slice
//!   without allocating, and the decoder's cursor; items are read on their
//!   heads in [`wire`] (cheaper in flash than minicbor's typed readers,
//!   and tested against them).
//! - [`heapless`]: fixed-capacity vectors, so every capacity is a compile-time
//!   constant and an insert that does not fit fails instead of allocating.
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
pub mod wire;

pub use error::{CapacityError, DecodeError, EncodeError, Error, PathError};

/// The examples of `docs/conflict-resolution.md` run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/conflict-resolution.md")]
pub struct ConflictResolutionDoc;

/// The Rust examples of `README.md` run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoc;
