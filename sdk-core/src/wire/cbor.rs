//! CBOR plumbing shared by every message: bounded skipping, canonical
//! re-encoding of arrays, and writers for caller-owned buffers.

use minicbor::data::Type;
use minicbor::decode::Decoder;
use minicbor::encode::{Encoder, Write};

use crate::error::{CapacityError, DecodeError, EncodeError};

/// Deepest nesting accepted anywhere in a message. Bounds recursion (and so
/// stack use) on hostile input.
pub const MAX_NESTING: usize = 16;

/// A writer that only counts, for the first pass of "measure, check, write".
#[derive(Default)]
pub(crate) struct Counter(pub usize);

impl Write for Counter {
    type Error = core::convert::Infallible;
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.0 += buf.len();
        Ok(())
    }
}

/// Writes into a slice that has been checked to be large enough.
pub(crate) struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> SliceWriter<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Write for SliceWriter<'_> {
    type Error = EncodeError;
    fn write_all(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + data.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall { needed: end })?;
        dst.copy_from_slice(data);
        self.pos = end;
        Ok(())
    }
}

/// Appends to a fixed-capacity byte vector.
pub(crate) struct VecWriter<'a, const N: usize>(pub &'a mut heapless::Vec<u8, N>);

impl<const N: usize> Write for VecWriter<'_, N> {
    type Error = CapacityError;
    fn write_all(&mut self, data: &[u8]) -> Result<(), CapacityError> {
        self.0
            .extend_from_slice(data)
            .map_err(|_| CapacityError::Pool { capacity: N })
    }
}

/// An encoder over a byte sink, as [`encode_into`] hands to its closure.
pub(crate) type SinkEncoder<'a> = Encoder<FnWriter<'a>>;

/// Runs `write` twice: once to measure, then into `out` if it fits. A buffer
/// that is too small is left untouched and the error names the size needed.
pub(crate) fn encode_into(
    out: &mut [u8],
    write: impl Fn(&mut SinkEncoder<'_>) -> Result<(), minicbor::encode::Error<EncodeError>>,
) -> Result<usize, EncodeError> {
    let mut needed = 0usize;
    let mut count = |b: &[u8]| {
        needed += b.len();
        Ok(())
    };
    write(&mut Encoder::new(FnWriter(&mut count))).map_err(enc_err)?;
    if needed > out.len() {
        return Err(EncodeError::BufferTooSmall { needed });
    }
    let mut w = SliceWriter { buf: out, pos: 0 };
    let mut copy = |b: &[u8]| w.write_all(b);
    write(&mut Encoder::new(FnWriter(&mut copy))).map_err(enc_err)?;
    Ok(needed)
}

/// Adapts a byte sink closure to minicbor's `Write`.
pub(crate) struct FnWriter<'a>(pub &'a mut dyn FnMut(&[u8]) -> Result<(), EncodeError>);

impl Write for FnWriter<'_> {
    type Error = EncodeError;
    fn write_all(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        (self.0)(data)
    }
}

/// Maps a minicbor encode error whose write error is already ours.
pub(crate) fn enc_err(e: minicbor::encode::Error<EncodeError>) -> EncodeError {
    // The only failures of our writers are write failures; minicbor's own
    // messages (none for the calls we make) count as "needs more room".
    match e.into_write() {
        Some(w) => w,
        None => EncodeError::BufferTooSmall { needed: usize::MAX },
    }
}

fn malformed(what: &'static str, at: usize) -> DecodeError {
    DecodeError::Malformed { what, at }
}

/// Reads a CBOR "break" if one is next; used to end indefinite containers.
pub(crate) fn take_break(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    if d.datatype()? == Type::Break {
        d.set_position(d.position() + 1);
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Skips one data item with bounded recursion (minicbor's own `skip` needs
/// an allocator).
pub(crate) fn skip_item(d: &mut Decoder<'_>, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_NESTING {
        return Err(malformed("shallower nesting", d.position()));
    }
    let at = d.position();
    match d.datatype()? {
        Type::Array => {
            let n = d.array()?.unwrap_or(0);
            for _ in 0..n {
                skip_item(d, depth + 1)?;
            }
        }
        Type::ArrayIndef => {
            d.array()?;
            while !take_break(d)? {
                skip_item(d, depth + 1)?;
            }
        }
        Type::Map => {
            let n = d.map()?.unwrap_or(0);
            for _ in 0..n {
                skip_item(d, depth + 1)?;
                skip_item(d, depth + 1)?;
            }
        }
        Type::MapIndef => {
            d.map()?;
            while !take_break(d)? {
                skip_item(d, depth + 1)?;
                skip_item(d, depth + 1)?;
            }
        }
        Type::Tag => {
            d.tag()?;
            skip_item(d, depth + 1)?;
        }
        Type::BytesIndef => {
            for c in d.bytes_iter()? {
                c?;
            }
        }
        Type::StringIndef => {
            for c in d.str_iter()? {
                c?;
            }
        }
        Type::Break | Type::Unknown(_) => return Err(malformed("a data item", at)),
        Type::Bytes => {
            d.bytes()?;
        }
        Type::String => {
            d.str()?;
        }
        Type::Bool => {
            d.bool()?;
        }
        Type::Null => d.null()?,
        Type::Undefined => d.undefined()?,
        Type::Simple => {
            d.simple()?;
        }
        Type::F16 | Type::F32 | Type::F64 => {
            d.f64()?;
        }
        _ => {
            d.int()?;
        }
    }
    Ok(())
}

/// Reads an integer that must fit in `i64`.
pub(crate) fn read_i64(d: &mut Decoder<'_>) -> Result<i64, DecodeError> {
    let at = d.position();
    let n: i128 = d.int()?.into();
    i64::try_from(n).map_err(|_| DecodeError::IntegerOutOfRange { at })
}

/// Reads an unsigned integer.
pub(crate) fn read_u64(d: &mut Decoder<'_>) -> Result<u64, DecodeError> {
    let at = d.position();
    match d.datatype()? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Ok(d.u64()?),
        _ => Err(malformed("an unsigned integer", at)),
    }
}

/// Re-encodes one array (and everything in it) canonically: definite lengths,
/// shortest integer heads, floats as f64. `depth` counts nesting used so far.
pub(crate) fn canonicalize_array<W: Write>(
    d: &mut Decoder<'_>,
    e: &mut Encoder<W>,
    depth: usize,
) -> Result<(), DecodeError>
where
    DecodeError: From<W::Error>,
{
    match d.datatype()? {
        Type::Array | Type::ArrayIndef => canonicalize_item(d, e, depth),
        _ => Err(malformed("an array", d.position())),
    }
}

fn put<W: Write>(
    r: Result<&mut Encoder<W>, minicbor::encode::Error<W::Error>>,
) -> Result<(), DecodeError>
where
    DecodeError: From<W::Error>,
{
    match r {
        Ok(_) => Ok(()),
        Err(e) => match e.into_write() {
            Some(w) => Err(DecodeError::from(w)),
            None => Err(malformed("encodable value", 0)),
        },
    }
}

/// Counts the items of a container whose head has just been read, then
/// rewinds; needed to write a definite length for an indefinite input.
fn count_indef(d: &mut Decoder<'_>, per_entry: usize, depth: usize) -> Result<u64, DecodeError> {
    let start = d.position();
    let mut n = 0u64;
    while !take_break(d)? {
        for _ in 0..per_entry {
            skip_item(d, depth + 1)?;
        }
        n += 1;
    }
    d.set_position(start);
    Ok(n)
}

fn canonicalize_item<W: Write>(
    d: &mut Decoder<'_>,
    e: &mut Encoder<W>,
    depth: usize,
) -> Result<(), DecodeError>
where
    DecodeError: From<W::Error>,
{
    if depth > MAX_NESTING {
        return Err(malformed("shallower nesting", d.position()));
    }
    let at = d.position();
    match d.datatype()? {
        ty @ (Type::Array | Type::ArrayIndef | Type::Map | Type::MapIndef) => {
            let is_map = matches!(ty, Type::Map | Type::MapIndef);
            let per_entry = if is_map { 2 } else { 1 };
            let len = if is_map { d.map()? } else { d.array()? };
            let n = match len {
                Some(n) => n,
                None => count_indef(d, per_entry, depth)?,
            };
            if is_map {
                put(e.map(n))?;
            } else {
                put(e.array(n))?;
            }
            for _ in 0..n * per_entry as u64 {
                canonicalize_item(d, e, depth + 1)?;
            }
            if len.is_none() && !take_break(d)? {
                return Err(malformed("break", d.position()));
            }
            Ok(())
        }
        Type::Bool => put(e.bool(d.bool()?)),
        Type::Null => {
            d.null()?;
            put(e.null())
        }
        Type::F16 | Type::F32 | Type::F64 => put(e.f64(d.f64()?)),
        Type::String => put(e.str(d.str()?)),
        Type::Bytes => put(e.bytes(d.bytes()?)),
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64
        | Type::Int => put(e.i64(read_i64(d)?)),
        Type::Break => Err(malformed("a data item", at)),
        _ => Err(DecodeError::Unsupported { at }),
    }
}

impl From<core::convert::Infallible> for DecodeError {
    fn from(e: core::convert::Infallible) -> Self {
        match e {}
    }
}

/// Walks the map at the decoder (definite or indefinite length), calling
/// `entry` once per pair with the decoder at its key.
pub(crate) fn each_entry<'b>(
    d: &mut Decoder<'b>,
    mut entry: impl FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let at = d.position();
    let len = match d.datatype()? {
        Type::Map | Type::MapIndef => d.map()?,
        _ => return Err(malformed("a map", at)),
    };
    let mut seen = 0u64;
    loop {
        match len {
            Some(n) if seen == n => return Ok(()),
            None if take_break(d)? => return Ok(()),
            _ => {}
        }
        seen += 1;
        entry(d)?;
    }
}

/// Reads a text map key; returns it and where it started.
pub(crate) fn read_text_key<'b>(d: &mut Decoder<'b>) -> Result<(&'b str, usize), DecodeError> {
    let at = d.position();
    if d.datatype()? != Type::String {
        return Err(malformed("a text key", at));
    }
    Ok((d.str()?, at))
}

/// Reads a definite array of fixed-length arrays (`[* [a, b, ...]]`),
/// handing each tuple's decoder to `each` after its head; `list` and
/// `tuple` name them in errors.
pub(crate) fn each_tuple<'b>(
    d: &mut Decoder<'b>,
    len: u64,
    list: &'static str,
    tuple: &'static str,
    mut each: impl FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let at = d.position();
    let n = d
        .array()?
        .ok_or(DecodeError::Malformed { what: list, at })?;
    for _ in 0..n {
        let at = d.position();
        if d.array()? != Some(len) {
            return Err(DecodeError::Malformed { what: tuple, at });
        }
        each(d)?;
    }
    Ok(())
}

/// Reads a path written as an array of text keys.
pub(crate) fn read_path(d: &mut Decoder<'_>) -> Result<crate::shadow::PathBuf, DecodeError> {
    let at = d.position();
    let n = d.array()?.ok_or(DecodeError::Malformed {
        what: "a definite array of keys",
        at,
    })?;
    if n > crate::shadow::MAX_DEPTH as u64 {
        return Err(DecodeError::Path(crate::PathError::TooDeep));
    }
    let mut p = crate::shadow::PathBuf::new();
    for _ in 0..n {
        p.push(d.str()?)?;
    }
    Ok(p)
}
