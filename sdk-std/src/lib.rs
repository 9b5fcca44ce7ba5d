//! # lanyard-std
//!
//! Lanyard for Linux devices, gateways and tests. It drives the
//! `lanyard-core` agent and shadow and adds no rules of its own:
//!
//! - [`transport`]: the transport trait, and an in-process broker;
//!   [`mqtt`]: MQTT over rumqttc with reconnection and resync; [`tls`]:
//!   mutual TLS with certificates checked on load;
//! - [`driver`]: the tokio driver of the device agent; [`store`]: crash-safe
//!   file storage; [`clock`]: real or compressed time; [`sim`]: simulated
//!   sensors;
//! - [`twin`]: the twin host (registrations, CBOR and AWS IoT shadow topics,
//!   conflict policies, persistence); [`broker`]: an embedded broker for the
//!   demo;
//! - [`bridge`]: the gateway side of the framed serial link (serial port,
//!   pseudo-terminal or TCP socket) to MQTT;
//! - [`acl`]: the mosquitto ACL file that keeps each device to its own
//!   topics;
//! - [`metrics`]: Prometheus text exposition on an optional port;
//! - [`app`]: the app side: set desired state, read shadows, watch deltas
//!   and reports, send commands and await their acknowledgement;
//! - [`aws_json`]: the AWS IoT Device Shadow JSON codec; [`local_shadow`]:
//!   a shadow kept in process with that JSON view (what the bindings'
//!   `Shadow` wraps); [`describe`]: any message as JSON.
//!
//! Features: `runtime` brings tokio and the network (everything a device,
//! gateway or service needs); `cli` (the default) adds the `lanyard`
//! command and the demo's in-process broker. A device turns the defaults
//! off and asks for `runtime` alone:
//!
//! ```toml
//! lanyard-std = { path = "sdk-std", default-features = false, features = ["runtime"] }
//! ```
//!
//! Without `runtime` only the codecs, the store and the simulation remain.
//!
//! ## Why these dependencies
//!
//! - `lanyard-nostd`: the framed link's frame and envelope codec, shared
//!   with the firmware so both ends are one implementation.
//! - `serde_json`: the JSON parser and printer every Rust service already
//!   trusts; AWS documents are plain JSON.
//! - `base64`: byte strings have no JSON form; they travel as base64 text.
//! - `minicbor` (with `alloc`): arrays are kept as CBOR inside the core, and
//!   are converted to and from JSON here.
//! - `tokio`, `rumqttc`, `async-trait`, `rustls`, `x509-parser`, `tracing`,
//!   `rand` (`runtime`): runtime, MQTT client, transport trait, TLS and
//!   certificate checks, logs, backoff jitter.
//! - `rumqttd`, `clap`, `indicatif`, `tracing-subscriber` (`cli`): the
//!   demo's broker, the command line, its progress bar, log output.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acl;
#[cfg(feature = "runtime")]
pub mod app;
#[cfg(feature = "runtime")]
pub mod audit;
#[cfg(feature = "runtime")]
pub mod aws_device;
pub mod aws_json;
#[cfg(feature = "runtime")]
pub mod bridge;
#[cfg(feature = "cli")]
pub mod broker;
#[cfg(feature = "runtime")]
pub mod clock;
pub mod cost;
#[cfg(feature = "runtime")]
pub mod credentials;
pub mod data_key;
pub mod describe;
#[cfg(feature = "runtime")]
pub mod device;
#[cfg(feature = "runtime")]
pub mod driver;
pub mod fog;
pub mod hex;
#[cfg(feature = "runtime")]
pub mod local_shadow;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod mqtt;
#[cfg(feature = "runtime")]
pub mod ota;
pub mod ota_messages;
pub mod provision;
pub mod sim;
pub mod store;
mod text_map;
#[cfg(feature = "runtime")]
pub mod tls;
#[cfg(feature = "runtime")]
pub mod transport;
#[cfg(feature = "runtime")]
pub mod twin;
#[cfg(feature = "runtime")]
pub mod update;

/// A tenant name the topics do not allow (1 to 32 of `a-z`, `0-9`, `-`,
/// `_`), from the `with_tenant(s)` builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTenant(pub String);

impl std::fmt::Display for InvalidTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {:?}: 1 to 32 of a-z, 0-9, '-' and '_' expected",
            self.0
        )
    }
}

impl std::error::Error for InvalidTenant {}

/// The largest message payload Lanyard carries (bytes). The MQTT transport
/// drops larger ones on receipt (acknowledged and counted in
/// `MqttStats::oversize_dropped`), and the broker configuration Lanyard
/// generates ([`acl::mosquitto_conf`]) refuses them at the broker.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Checks a tenant name for the `with_tenant(s)` builders.
#[cfg(feature = "runtime")]
pub(crate) fn check_tenant(tenant: &str) -> Result<(), InvalidTenant> {
    if lanyard_core::agent::messages::valid_tenant(tenant) {
        Ok(())
    } else {
        Err(InvalidTenant(tenant.to_owned()))
    }
}
