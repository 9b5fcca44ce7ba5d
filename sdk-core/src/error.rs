//! Error types. Each operation has a small `Copy` error; [`Error`] gathers
//! them into categories so callers can tell their own misuse (a bad path, a
//! buffer too small) from a fault in what the peer sent (a malformed message,
//! a stale version).

use core::fmt;

/// A property path that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A key of zero bytes; AWS IoT rejects them too.
    EmptyKey,
    /// A key longer than [`crate::shadow::MAX_KEY_LEN`] bytes.
    KeyTooLong {
        /// Length of the offending key in bytes.
        len: usize,
    },
    /// A key containing a NUL byte, which the path encoding reserves.
    NulInKey,
    /// More than [`crate::shadow::MAX_DEPTH`] levels of nesting.
    TooDeep,
    /// The path runs through a leaf, or a leaf would sit where a map is.
    LeafMapClash,
}

/// A fixed capacity was not enough; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityError {
    /// The tree already holds its maximum number of leaves.
    Leaves {
        /// The compile-time leaf capacity.
        capacity: usize,
    },
    /// The byte pool (keys, text, bytes, arrays) is too small.
    Pool {
        /// The compile-time pool capacity in bytes.
        capacity: usize,
    },
    /// A bounded table (conflict policies, manual-resolve queue) is full.
    Table {
        /// The table's capacity in entries.
        capacity: usize,
    },
}

/// Bytes from outside that are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    Truncated,
    /// The input is not well-formed CBOR, or not the expected shape.
    Malformed {
        /// What was expected.
        what: &'static str,
        /// Byte offset in the input.
        at: usize,
    },
    /// A CBOR type the shadow does not store (tags, undefined, simple values,
    /// indefinite-length strings).
    Unsupported {
        /// Byte offset in the input.
        at: usize,
    },
    /// An integer outside `i64`.
    IntegerOutOfRange {
        /// Byte offset in the input.
        at: usize,
    },
    /// The same key twice in one map.
    DuplicateKey {
        /// Byte offset in the input.
        at: usize,
    },
    /// `null` where a value is required (documents, arrays hold no deletes).
    NullNotAllowed {
        /// Byte offset in the input.
        at: usize,
    },
    /// A required field of a message is missing.
    MissingField(&'static str),
    /// A key or nesting limit was exceeded.
    Path(PathError),
    /// The message does not fit in the fixed capacity.
    Capacity(CapacityError),
    /// Bytes were left over after the message.
    TrailingBytes {
        /// Byte offset of the first unread byte.
        at: usize,
    },
}

/// An encoding could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small; it was left untouched.
    BufferTooSmall {
        /// The number of bytes the encoding needs.
        needed: usize,
    },
}

/// Every error of the core, by category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Caller misuse: an unusable path.
    Path(PathError),
    /// A fixed capacity is exhausted.
    Capacity(CapacityError),
    /// Fault of the peer: undecodable bytes.
    Decode(DecodeError),
    /// Caller misuse: an output buffer too small.
    Encode(EncodeError),
    /// Fault of the peer: an update based on a version that is not current.
    VersionConflict {
        /// The version the update said it was based on.
        expected: u64,
        /// The document's current version.
        current: u64,
    },
    /// The path has no conflict waiting for manual resolution.
    NotParked,
    /// A sync was asked for before the conflict backoff ended.
    BackingOff {
        /// The earliest time (ms) at which a sync is allowed.
        until_ms: u64,
    },
}

macro_rules! from_cat {
    ($t:ty, $v:ident) => {
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::$v(e)
            }
        }
    };
}
from_cat!(PathError, Path);
from_cat!(CapacityError, Capacity);
from_cat!(DecodeError, Decode);
from_cat!(EncodeError, Encode);

impl From<PathError> for DecodeError {
    fn from(e: PathError) -> Self {
        DecodeError::Path(e)
    }
}
impl From<CapacityError> for DecodeError {
    fn from(e: CapacityError) -> Self {
        DecodeError::Capacity(e)
    }
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        if e.is_end_of_input() {
            DecodeError::Truncated
        } else {
            DecodeError::Malformed {
                what: "well-formed CBOR",
                at: e.position().unwrap_or(0),
            }
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::EmptyKey => f.write_str("empty key"),
            PathError::KeyTooLong { len } => write!(
                f,
                "key of {len} bytes exceeds the limit of {}",
                crate::shadow::MAX_KEY_LEN
            ),
            PathError::NulInKey => f.write_str("key contains a NUL byte"),
            PathError::TooDeep => write!(f, "path deeper than {} levels", crate::shadow::MAX_DEPTH),
            PathError::LeafMapClash => f.write_str("path runs through a leaf or onto a map"),
        }
    }
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapacityError::Leaves { capacity } => write!(f, "more than {capacity} leaves"),
            CapacityError::Pool { capacity } => {
                write!(f, "keys and values exceed the {capacity}-byte pool")
            }
            CapacityError::Table { capacity } => write!(f, "table of {capacity} entries is full"),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("input ends in the middle of a value"),
            DecodeError::Malformed { what, at } => write!(f, "expected {what} at byte {at}"),
            DecodeError::Unsupported { at } => write!(f, "unsupported CBOR type at byte {at}"),
            DecodeError::IntegerOutOfRange { at } => {
                write!(f, "integer outside the i64 range at byte {at}")
            }
            DecodeError::DuplicateKey { at } => write!(f, "duplicate map key at byte {at}"),
            DecodeError::NullNotAllowed { at } => write!(f, "null not allowed at byte {at}"),
            DecodeError::MissingField(name) => write!(f, "missing field `{name}`"),
            DecodeError::Path(e) => write!(f, "bad path: {e}"),
            DecodeError::Capacity(e) => write!(f, "over capacity: {e}"),
            DecodeError::TrailingBytes { at } => write!(f, "trailing bytes from byte {at}"),
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Path(e) => write!(f, "path: {e}"),
            Error::Capacity(e) => write!(f, "capacity: {e}"),
            Error::Decode(e) => write!(f, "decode: {e}"),
            Error::Encode(e) => write!(f, "encode: {e}"),
            Error::VersionConflict { expected, current } => write!(
                f,
                "version conflict: update expects version {expected}, document is at {current}"
            ),
            Error::NotParked => f.write_str("no conflict is parked at this path"),
            Error::BackingOff { until_ms } => {
                write!(f, "sync backing off after a conflict until {until_ms} ms")
            }
        }
    }
}

impl core::error::Error for PathError {}
impl core::error::Error for CapacityError {}
impl core::error::Error for DecodeError {}
impl core::error::Error for EncodeError {}
impl core::error::Error for Error {}
