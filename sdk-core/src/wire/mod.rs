//! The CBOR messages of the shadow protocol. Each is a map keyed by small
//! integers so that new optional fields can be added without breaking old
//! peers; unknown keys are skipped. `docs/wire-format.md` gives the CDDL.

pub(crate) mod cbor;
mod messages;

pub use cbor::{CborWriter, MAX_NESTING, encode_into, read_bytes, read_str};
pub(crate) use messages::each_field;
pub use messages::{MAX_CLIENT_TOKEN_LEN, ShadowDelta, ShadowUpdate, ShadowUpdateRef, reason_code};
