//! The device shadow: desired and reported state, the delta between them,
//! versions, and per-property conflict policies.
//!
//! Semantics follow the AWS IoT Device Shadow service: `null` deletes a key,
//! nested maps merge and recurse in the delta, arrays are leaves compared
//! whole, and the delta holds the desired leaves whose reported value
//! differs. On top of AWS, [`Shadow::sync`] detects leaves that both sides
//! changed since the last sync and settles them by [`ConflictPolicy`];
//! `docs/conflict-resolution.md` explains how to choose.

mod document;
mod path;
mod policies;
mod table;
mod tree;
#[cfg(feature = "serde")]
pub mod typed;
mod value;

pub use document::{
    ConflictPolicy, ConflictRecord, ConflictStats, MAX_PARKED, MAX_POLICIES, Shadow, ShadowConfig,
    SyncReport,
};
pub use path::{MAX_DEPTH, MAX_KEY_LEN, MAX_PATH_LEN, Path, PathBuf};
pub use policies::{FleetPolicies, MAX_FLEET_POLICIES, MAX_POLICY_PATH_LEN, PropertyPolicy};
pub use tree::{DEFAULT_LEAVES, DEFAULT_POOL, Entry, StateTree};
pub use value::{LeafMeta, RawArray, Source, Value};
