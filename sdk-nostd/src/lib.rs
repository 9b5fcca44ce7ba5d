//! # lanyard-nostd
//!
//! Lanyard on bare metal. Built so far: [`frame`], the framed serial link
//! that carries SDK messages between a device and a gateway (COBS frames
//! with a CRC-16, over `embedded-io`), and [`hal`], adapters from
//! embedded-hal 1.0 (an LED on a GPIO pin, the SHT3x sensor on I2C, a
//! battery gauge, a board health probe), and [`flash`], persistent storage
//! on NOR flash that survives a power cut during a write. Not built yet
//! (issue 5): the blocking driver of the agent and the STM32 reference
//! firmware under qemu.
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

pub use lanyard_core as core;
