//! # lanyard-std
//!
//! Lanyard for Linux devices, gateways and tests. Today it holds the AWS IoT
//! Device Shadow JSON codec ([`aws_json`]), so documents, updates, deltas and
//! error payloads of the AWS service convert to and from the core's trees.
//! The tokio/MQTT driver, persistence, twin host and `lanyard` command are
//! not built yet (issue 4).
//!
//! ## Why these dependencies
//!
//! - `serde_json`: the JSON parser and printer every Rust service already
//!   trusts; AWS documents are plain JSON.
//! - `base64`: byte strings have no JSON form; they travel as base64 text.
//! - `minicbor` (with `alloc`): arrays are kept as CBOR inside the core, and
//!   are converted to and from JSON here.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aws_json;
pub mod broker;
pub mod clock;
pub mod describe;
pub mod driver;
pub mod mqtt;
pub mod sim;
pub mod store;
pub mod tls;
pub mod transport;
pub mod twin;
