//! Leaf values and their metadata.

use core::fmt;

/// Which side wrote a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The cloud, an app or an operator (writes `desired`).
    Cloud,
    /// The device (writes `reported`).
    Device,
}

impl Source {
    pub(crate) fn code(self) -> u8 {
        match self {
            Source::Cloud => 0,
            Source::Device => 1,
        }
    }
    pub(crate) fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Source::Cloud),
            1 => Some(Source::Device),
            _ => None,
        }
    }
}

/// Per-leaf metadata, as AWS IoT keeps it in `metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafMeta {
    /// When the write happened, ms since the Unix epoch, on the writer's clock.
    pub timestamp_ms: u64,
    /// Who wrote it.
    pub source: Source,
    /// The document version of the update that wrote it.
    pub version: u64,
}

impl LeafMeta {
    /// Metadata for a write by `source` at `timestamp_ms`; the version is set
    /// when the document accepts the write.
    pub const fn new(source: Source, timestamp_ms: u64) -> Self {
        LeafMeta {
            timestamp_ms,
            source,
            version: 0,
        }
    }
}

/// A leaf value, borrowed from a tree or from the caller.
///
/// Floats compare by bit pattern, so `NaN == NaN` and `0.0 != -0.0`: a delta
/// must never be non-empty forever because of a value equal to nothing.
/// Integers and floats are different types: `1` and `1.0` differ.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// Deletes the key (only in updates).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A double-precision float.
    Float(f64),
    /// UTF-8 text.
    Text(&'a str),
    /// A byte string.
    Bytes(&'a [u8]),
    /// An array, kept and compared whole, as canonical CBOR (see [`RawArray`]).
    Array(RawArray<'a>),
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a.0 == b.0,
            _ => false,
        }
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "h'{}'", Hex(b)),
            Value::Array(a) => write!(f, "array(cbor h'{}')", Hex(a.0)),
        }
    }
}

struct Hex<'a>(&'a [u8]);
impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An array value as CBOR bytes.
///
/// Inside a tree the bytes are canonical (definite lengths, shortest
/// integer heads, floats as 64-bit), so two arrays are equal exactly when
/// their bytes are. From a caller, any well-formed CBOR array is accepted
/// and canonicalised on insert. Arrays may hold every value type, nested
/// arrays and maps (maps keep their key order), up to the depth limit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawArray<'a>(pub(crate) &'a [u8]);

impl<'a> RawArray<'a> {
    /// Wraps CBOR bytes that should hold one array; they are checked when the
    /// value is inserted into a tree.
    pub const fn from_cbor(bytes: &'a [u8]) -> Self {
        RawArray(bytes)
    }

    /// The CBOR bytes.
    pub fn as_cbor(&self) -> &'a [u8] {
        self.0
    }
}

/// How a leaf value is kept inside a tree: fixed size, with text and bytes in
/// the tree's pool.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stored {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Text(Span),
    Bytes(Span),
    Array(Span),
}

/// A range of a tree's byte pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    #[inline]
    pub fn slice(self, pool: &[u8]) -> &[u8] {
        &pool[self.start as usize..(self.start + self.len) as usize]
    }
}

impl Stored {
    /// Pool bytes `new` needs to replace `self` in place: 0 for scalars and
    /// same-length payloads, the payload length otherwise; `None` for a
    /// delete, which changes the tree's shape.
    pub fn in_place_cost(&self, new: &Stored) -> Option<usize> {
        match (self, new) {
            (_, Stored::Null) => None,
            (Stored::Text(a), Stored::Text(b))
            | (Stored::Bytes(a), Stored::Bytes(b))
            | (Stored::Array(a), Stored::Array(b))
                if a.len == b.len =>
            {
                Some(0)
            }
            (_, Stored::Text(b) | Stored::Bytes(b) | Stored::Array(b)) => Some(b.len as usize),
            _ => Some(0),
        }
    }

    /// The same kind of value, with its payload at `span`.
    pub fn with_span(self, span: Span) -> Stored {
        match self {
            Stored::Text(_) => Stored::Text(span),
            Stored::Bytes(_) => Stored::Bytes(span),
            Stored::Array(_) => Stored::Array(span),
            other => other,
        }
    }

    /// Value equality across two pools, with the rules of `Value`'s `==`.
    pub fn same_as(&self, pool: &[u8], other: &Stored, other_pool: &[u8]) -> bool {
        match (self, other) {
            (Stored::Null, Stored::Null) => true,
            (Stored::Bool(a), Stored::Bool(b)) => a == b,
            (Stored::Int(a), Stored::Int(b)) => a == b,
            (Stored::Float(a), Stored::Float(b)) => a == b,
            (Stored::Text(a), Stored::Text(b))
            | (Stored::Bytes(a), Stored::Bytes(b))
            | (Stored::Array(a), Stored::Array(b)) => a.slice(pool) == b.slice(other_pool),
            _ => false,
        }
    }

    pub fn view(self, pool: &[u8]) -> Value<'_> {
        match self {
            Stored::Null => Value::Null,
            Stored::Bool(b) => Value::Bool(b),
            Stored::Int(i) => Value::Int(i),
            Stored::Float(bits) => Value::Float(f64::from_bits(bits)),
            // Text spans are only ever filled from `&str`.
            Stored::Text(s) => Value::Text(core::str::from_utf8(s.slice(pool)).unwrap_or("")),
            Stored::Bytes(s) => Value::Bytes(s.slice(pool)),
            Stored::Array(s) => Value::Array(RawArray(s.slice(pool))),
        }
    }
}
