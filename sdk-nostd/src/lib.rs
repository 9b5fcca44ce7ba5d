//! # lanyard-nostd
//!
//! **Not built yet.** This crate will hold the blocking bare-metal driver,
//! the framed serial link, embedded-hal adapters and the flash store
//! (issue 5). Today it only re-exports the core so firmware can depend on the
//! final crate name.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use lanyard_core as core;
