//! Credentials over a device's life, on the fleet's side: its certificate
//! authority ([`authority`]), the provisioning exchange
//! ([`messages`]) and the service that answers it ([`service`]).
//!
//! A device made without its own certificate holds the fleet's claim
//! certificate, which reaches nothing but the provisioning topics. It makes
//! its own key pair, sends a signing request for its device id, gets an
//! ownership token, and registers with the token and its hardware id; if
//! the fleet's allow-list names that hardware as that device, it gets its
//! certificate. It renews it the same way on its own channel before it
//! expires, and confirms the new one once connected with it, which revokes
//! the old one. Revoked certificates go in the revocation list the broker
//! reads. The device's side is [`crate::credentials`]; the whole flow is in
//! `docs/provisioning.md`.

//!
//! The messages are here without the `runtime` feature (for fuzzing); the
//! authority and the service need it.

#[cfg(feature = "runtime")]
pub mod authority;
pub mod messages;
#[cfg(feature = "runtime")]
pub mod service;

#[cfg(feature = "runtime")]
pub use authority::{Authority, AuthorityError};
#[cfg(feature = "runtime")]
pub use service::{AllowList, BrokerReload, ProvisionPolicy, Provisioner, run_provision};
