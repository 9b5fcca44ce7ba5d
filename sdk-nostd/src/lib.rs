//! # lanyard-nostd
//!
//! Lanyard on bare metal, `no_std` and without an allocator:
//!
//! - [`driver`]: the blocking driver of the agent: it feeds the agent the
//!   frames and the time, sends what the agent produces and sleeps (WFI or
//!   a callback) until the next deadline;
//! - [`frame`] and [`envelope`]: the framed serial link to a gateway, COBS
//!   frames with a CRC-16 over `embedded-io`, each carrying `[topic,
//!   message]`; damaged frames are dropped and counted;
//! - [`hal`]: adapters from embedded-hal 1.0 (an LED on a GPIO pin, the
//!   SHT3x sensor on I2C, a battery gauge, a board health probe);
//! - [`flash`]: the agent's storage on NOR flash, readable after a power cut
//!   during any write.
//!
//! Capacities and their RAM cost: `docs/capacities.md`. A complete firmware
//! for the STM32F405, run under qemu by the tests: `examples/stm32`.
//!
//! ## Why these dependencies
//!
//! - `cobs`: consistent-overhead byte stuffing, so a zero byte can end every
//!   frame and a receiver that joins mid-stream resynchronises at the next.
//! - `minicbor`: the link envelope `[topic, message]`, the same CBOR codec
//!   as every SDK message.
//! - `crc`: the CRC-16 that rejects frames damaged on the wire.
//! - `embedded-io`: the `Read`/`Write` traits every HAL's UART implements.
//! - `embedded-hal`: the GPIO, I2C and delay traits every HAL implements.
//! - `embedded-storage`: the NOR flash traits of every HAL's flash driver.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod driver;
pub mod envelope;
pub mod flash;
pub mod frame;
pub mod hal;
#[cfg(feature = "update")]
pub mod update_slot;

pub use lanyard_core as core;
