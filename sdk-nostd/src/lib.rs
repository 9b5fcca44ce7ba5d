//! # lanyard-nostd
//!
//! Lanyard on bare metal. Built so far: [`frame`], the framed serial link
//! that carries SDK messages between a device and a gateway (COBS frames
//! with a CRC-16, over `embedded-io`). Not built yet (issue 5): the blocking
//! driver of the agent, the embedded-hal adapters (LED, I2C sensor, battery
//! ADC), the flash store, and the STM32 reference firmware under qemu.
//!
//! ## Why these dependencies
//!
//! - `cobs`: consistent-overhead byte stuffing, so a zero byte can end every
//!   frame and a receiver that joins mid-stream resynchronises at the next.
//! - `crc`: the CRC-16 that rejects frames damaged on the wire.
//! - `embedded-io`: the `Read`/`Write` traits every HAL's UART implements.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod frame;

pub use lanyard_core as core;
