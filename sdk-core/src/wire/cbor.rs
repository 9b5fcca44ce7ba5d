//! CBOR plumbing shared by every message: reading items on their heads
//! (skipping, integers, strings, floats, container lengths), canonical
//! re-encoding of arrays, and the one writer every encoder writes through.
//!
//! Why heads: minicbor encodes every message and its `Decoder` is the
//! cursor, but its typed readers (one per CBOR type, with a type
//! classification behind each error) cost a firmware several KiB of flash
//! where these few readers cost a few hundred bytes; on the STM32 reference
//! firmware moving strings, containers and floats here saved 2.6 KB. Each
//! reader is tested against minicbor's on arbitrary input (the tests below).

use minicbor::decode::Decoder;
use minicbor::encode::{Encoder, Write};

use crate::error::{DecodeError, EncodeError};

/// Deepest nesting accepted anywhere in a message. Bounds recursion (and so
/// stack use) on hostile input.
pub const MAX_NESTING: usize = 16;

/// The one writer every encoder of the SDK writes through: into a
/// caller's buffer (copying what fits, counting everything; the caller
/// compares the count with the buffer) or to a byte sink (the agent's
/// state streamed to storage, arrays re-encoded into a tree's pool).
///
/// It cannot fail, so minicbor's calls carry no write error to check and
/// convert after every item (1.6 KB less on the STM32 firmware); a sink
/// that can fail keeps its own error. One writer type means one copy of
/// each of minicbor's encoding functions and of each of ours in a
/// firmware image. Public so that a driver encoding its own framing
/// (lanyard-nostd's envelope) shares it.
pub struct CborWriter<'a> {
    to: Target<'a>,
    len: usize,
}

enum Target<'a> {
    Slice(&'a mut [u8]),
    // Only the capabilities that stream need it; without them the writer
    // has one branch.
    #[cfg(any(feature = "persistence", feature = "arrays"))]
    Sink(&'a mut dyn FnMut(&[u8])),
}

impl Write for CborWriter<'_> {
    type Error = core::convert::Infallible;
    fn write_all(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        let end = self.len.saturating_add(data.len());
        match &mut self.to {
            Target::Slice(buf) => {
                if let Some(dst) = buf.get_mut(self.len..end) {
                    dst.copy_from_slice(data);
                }
            }
            #[cfg(any(feature = "persistence", feature = "arrays"))]
            Target::Sink(sink) => sink(data),
        }
        self.len = end;
        Ok(())
    }
}

/// What every encoding closure of the SDK is.
pub(crate) type EncodeResult = Result<(), minicbor::encode::Error<core::convert::Infallible>>;

/// Streams what `write` encodes to `sink`; returns its length. The sink
/// may fail (a storage write, a full pool): from its first error on it is
/// given nothing more, and that error is returned.
#[cfg(any(feature = "persistence", feature = "arrays"))]
pub(crate) fn stream<E>(
    sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    write: impl FnOnce(&mut Encoder<CborWriter<'_>>) -> EncodeResult,
) -> Result<usize, E> {
    let mut failed = None;
    let mut forward = |b: &[u8]| {
        if failed.is_none()
            && let Err(e) = sink(b)
        {
            failed = Some(e);
        }
    };
    let mut e = Encoder::new(CborWriter {
        to: Target::Sink(&mut forward),
        len: 0,
    });
    // minicbor's own errors (none for the calls we make) end the stream;
    // the caller's length check catches what is missing.
    let _ = write(&mut e);
    let len = e.writer().len;
    match failed {
        Some(err) => Err(err),
        None => Ok(len),
    }
}

/// The length of what `write` encodes, with the writer [`encode_into`]
/// writes with (one copy of each encoder serves measuring and writing).
/// minicbor's own errors (none for the calls we make) end the count early;
/// `encode_into`'s writing pass reports them.
pub(crate) fn measure(write: impl Fn(&mut Encoder<CborWriter<'_>>) -> EncodeResult) -> usize {
    let mut e = Encoder::new(CborWriter {
        to: Target::Slice(&mut []),
        len: 0,
    });
    let _ = write(&mut e);
    e.writer().len
}

/// Runs `write` twice: once to measure, then into `out` if it fits; returns
/// the length written. A buffer that is too small is left untouched and the
/// error names the size needed.
///
/// ```
/// use lanyard_core::wire::encode_into;
///
/// let mut out = [0u8; 8];
/// let n = encode_into(&mut out, |e| e.array(2)?.u8(1)?.str("a").map(|_| ()))?;
/// assert_eq!(&out[..n], &[0x82, 0x01, 0x61, b'a']);
/// // Too small: nothing written, and the size needed is known.
/// let mut small = [0u8; 2];
/// assert!(encode_into(&mut small, |e| e.str("abc").map(|_| ())).is_err());
/// assert_eq!(small, [0, 0]);
/// # Ok::<(), lanyard_core::EncodeError>(())
/// ```
pub fn encode_into(
    out: &mut [u8],
    write: impl Fn(
        &mut Encoder<CborWriter<'_>>,
    ) -> Result<(), minicbor::encode::Error<core::convert::Infallible>>,
) -> Result<usize, EncodeError> {
    let needed = measure(&write);
    if needed > out.len() {
        return Err(EncodeError::BufferTooSmall { needed });
    }
    // minicbor's own errors (none for the calls we make) count as "needs
    // more room".
    let too_small = |_| EncodeError::BufferTooSmall { needed: usize::MAX };
    let mut e = Encoder::new(CborWriter {
        to: Target::Slice(out),
        len: 0,
    });
    write(&mut e).map_err(too_small)?;
    // The writer drops what does not fit rather than fail: a second pass
    // longer than the first must not pass as a shorter message.
    let written = e.writer().len;
    if written != needed {
        return Err(EncodeError::BufferTooSmall { needed: written });
    }
    Ok(needed)
}

/// [`encode_into`] for an encoding known to take at most `bound` bytes: a
/// buffer that holds the bound is written in one pass (no measuring pass
/// first, the cost of every large message); a smaller one is measured
/// first as [`encode_into`] does, and left untouched if too small.
pub(crate) fn encode_into_bounded(
    out: &mut [u8],
    bound: usize,
    write: impl Fn(&mut Encoder<CborWriter<'_>>) -> EncodeResult,
) -> Result<usize, EncodeError> {
    if bound > out.len() {
        return encode_into(out, write);
    }
    let mut e = Encoder::new(CborWriter {
        to: Target::Slice(out),
        len: 0,
    });
    write(&mut e).map_err(|_| EncodeError::BufferTooSmall { needed: usize::MAX })?;
    let written = e.writer().len;
    if written > bound {
        // A bound that was not one: said as a size, never a cut message.
        return Err(EncodeError::BufferTooSmall { needed: written });
    }
    Ok(written)
}

fn malformed(what: &'static str, at: usize) -> DecodeError {
    DecodeError::Malformed { what, at }
}

/// Reads a CBOR "break" if one is next; used to end indefinite containers.
pub(crate) fn take_break(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    let at = d.position();
    match d.input().get(at) {
        Some(0xff) => {
            d.set_position(at + 1);
            Ok(true)
        }
        Some(_) => Ok(false),
        None => Err(DecodeError::Truncated),
    }
}

/// Reads the head of an array (`major` 4) or a map (5): its length, `None`
/// when indefinite. Anything else is refused as not `what`.
///
/// On the head, like [`skip_item`], rather than through minicbor's `array`
/// and `map`: one reader for both, and nothing more for the firmware to
/// link.
pub(crate) fn read_container(
    d: &mut Decoder<'_>,
    major: u8,
    what: &'static str,
) -> Result<Option<u64>, DecodeError> {
    let at = d.position();
    match read_head(d.input(), at)? {
        (m, len, next) if m == major => {
            d.set_position(next);
            Ok(len)
        }
        _ => Err(malformed(what, at)),
    }
}

/// Skips one data item with bounded recursion: checks it is well formed
/// (and its text UTF-8) without decoding it.
///
/// Written on CBOR heads rather than on minicbor's typed readers: minicbor's
/// own `skip` needs an allocator for nested indefinite containers, and one
/// typed read per CBOR type costs about 1.5 KiB of firmware flash where a
/// head reader costs a few hundred bytes.
pub(crate) fn skip_item(d: &mut Decoder<'_>, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_NESTING {
        return Err(malformed("shallower nesting", d.position()));
    }
    let input = d.input();
    let at = d.position();
    let (major, arg, next) = read_head(input, at)?;
    d.set_position(next);
    match (major, arg) {
        // Integers; simple values and floats (the head holds their bytes).
        (0 | 1 | 7, Some(_)) => {}
        // Byte and text strings.
        (2 | 3, Some(len)) => skip_string(d, major, len, at)?,
        // Indefinite strings: definite chunks of the same type, then a break.
        (2 | 3, None) => {
            while !take_break(d)? {
                let chunk_at = d.position();
                match read_head(input, chunk_at)? {
                    (m, Some(len), next) if m == major => {
                        d.set_position(next);
                        skip_string(d, major, len, chunk_at)?;
                    }
                    _ => return Err(malformed("a definite string chunk", chunk_at)),
                }
            }
        }
        (4 | 5, Some(n)) => {
            let per_entry = if major == 5 { 2 } else { 1 };
            for _ in 0..n {
                for _ in 0..per_entry {
                    skip_item(d, depth + 1)?;
                }
            }
        }
        (4 | 5, None) => {
            while !take_break(d)? {
                skip_item(d, depth + 1)?;
                if major == 5 {
                    skip_item(d, depth + 1)?;
                }
            }
        }
        (6, Some(_)) => skip_item(d, depth + 1)?,
        // A break where an item belongs, or an indefinite integer or tag.
        _ => return Err(malformed("a data item", at)),
    }
    Ok(())
}

/// Reads the head at `at`: major type, argument (`None`: indefinite
/// length) and where the item's content starts.
fn read_head(input: &[u8], at: usize) -> Result<(u8, Option<u64>, usize), DecodeError> {
    let first = *input.get(at).ok_or(DecodeError::Truncated)?;
    let (major, info) = (first >> 5, first & 0x1f);
    let len = match info {
        0..=23 => return Ok((major, Some(u64::from(info)), at + 1)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => return Ok((major, None, at + 1)),
        _ => return Err(malformed("a data item", at)),
    };
    let arg = input
        .get(at + 1..at + 1 + len)
        .ok_or(DecodeError::Truncated)?
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Ok((major, Some(arg), at + 1 + len))
}

/// Skips a definite string of `len` bytes whose head is behind the
/// decoder; text must be UTF-8.
fn skip_string(d: &mut Decoder<'_>, major: u8, len: u64, at: usize) -> Result<(), DecodeError> {
    let bytes = take_string(d, len)?;
    if major == 3 {
        utf8(bytes, at)?;
    }
    Ok(())
}

/// Takes the `len` bytes of a string whose head is behind the decoder.
fn take_string<'b>(d: &mut Decoder<'b>, len: u64) -> Result<&'b [u8], DecodeError> {
    let start = d.position();
    let bytes = usize::try_from(len)
        .ok()
        .and_then(|len| d.input().get(start..start.checked_add(len)?))
        .ok_or(DecodeError::Truncated)?;
    d.set_position(start + bytes.len());
    Ok(bytes)
}

fn utf8(bytes: &[u8], at: usize) -> Result<&str, DecodeError> {
    core::str::from_utf8(bytes).map_err(|_| malformed("UTF-8 text", at))
}

/// Reads a definite-length string of major type `major` (2 bytes, 3 text).
fn read_string<'b>(
    d: &mut Decoder<'b>,
    major: u8,
    what: &'static str,
) -> Result<&'b [u8], DecodeError> {
    let at = d.position();
    match read_head(d.input(), at)? {
        (m, Some(len), next) if m == major => {
            d.set_position(next);
            take_string(d, len)
        }
        _ => Err(malformed(what, at)),
    }
}

/// Reads a definite-length text string, which must be UTF-8.
///
/// Public, with [`read_bytes`], for drivers that read their own framing
/// around SDK messages (lanyard-nostd's envelope): the SDK reads strings on
/// their CBOR heads rather than through minicbor's `str` and `bytes`, and a
/// firmware that used both would hold two string readers.
///
/// ```
/// use lanyard_core::wire::read_str;
///
/// let mut d = minicbor::Decoder::new(&[0x62, b'h', b'i']);
/// assert_eq!(read_str(&mut d)?, "hi");
/// // A byte string is not text; bad UTF-8 is refused too.
/// assert!(read_str(&mut minicbor::Decoder::new(&[0x42, b'h', b'i'])).is_err());
/// assert!(read_str(&mut minicbor::Decoder::new(&[0x61, 0xff])).is_err());
/// # Ok::<(), lanyard_core::DecodeError>(())
/// ```
pub fn read_str<'b>(d: &mut Decoder<'b>) -> Result<&'b str, DecodeError> {
    let at = d.position();
    utf8(read_string(d, 3, "a text string")?, at)
}

/// Reads a definite-length byte string (see [`read_str`] for why this is
/// public).
///
/// ```
/// use lanyard_core::wire::read_bytes;
///
/// let mut d = minicbor::Decoder::new(&[0x42, 1, 2]);
/// assert_eq!(read_bytes(&mut d)?, &[1, 2]);
/// // Truncated: fewer bytes than the head promises.
/// assert!(read_bytes(&mut minicbor::Decoder::new(&[0x43, 1, 2])).is_err());
/// # Ok::<(), lanyard_core::DecodeError>(())
/// ```
pub fn read_bytes<'b>(d: &mut Decoder<'b>) -> Result<&'b [u8], DecodeError> {
    read_string(d, 2, "a byte string")
}

/// CBOR's `null`, a whole item in one byte.
#[cfg(feature = "persistence")]
pub(crate) const NULL: u8 = 0xf6;

/// The next item's first byte, without moving.
pub(crate) fn peek(d: &Decoder<'_>) -> Result<u8, DecodeError> {
    d.input()
        .get(d.position())
        .copied()
        .ok_or(DecodeError::Truncated)
}

/// The next item's major type (5 for a map), without moving.
pub(crate) fn peek_major(d: &Decoder<'_>) -> Result<u8, DecodeError> {
    Ok(peek(d)? >> 5)
}

/// Reads a half, single or double float as `f64` (exactly: every f16 and
/// f32 is an f64).
///
/// On the head, like the rest of this module; the half is widened by
/// [`f16_to_f32`] (tested on every half against minicbor's `half` reader).
pub(crate) fn read_float(d: &mut Decoder<'_>) -> Result<f64, DecodeError> {
    let at = d.position();
    let first = peek(d)?;
    let (_, bits, next) = read_head(d.input(), at)?;
    let bits = bits.unwrap_or(0);
    let value = match first {
        0xf9 => f64::from(f16_to_f32(bits as u16)),
        0xfa => f64::from(f32::from_bits(bits as u32)),
        0xfb => f64::from_bits(bits),
        _ => return Err(malformed("a float", at)),
    };
    d.set_position(next);
    Ok(value)
}

/// Widens an IEEE 754 half (binary16) to single precision, bit by bit: no
/// float arithmetic, which the Cortex-M4's FPU has only for f32 anyway.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        // Subnormal half: mant x 2^-24, normal in f32. Shift the leading
        // one up to the implicit bit (bit 10); each shift lowers the
        // exponent by one from the smallest normal half's 2^-14.
        (0, _) => {
            let shift = mant.leading_zeros() - 21;
            let exp32 = 127 - 14 - shift;
            sign | (exp32 << 23) | (((mant << shift) & 0x3ff) << 13)
        }
        // Infinity and NaN (payload kept).
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Reads an integer that must fit in `i64` (on its head, like
/// [`skip_item`]: minicbor's `int` goes through `i128`, which costs flash).
pub(crate) fn read_i64(d: &mut Decoder<'_>) -> Result<i64, DecodeError> {
    let at = d.position();
    match read_head(d.input(), at)? {
        (major @ (0 | 1), Some(n), next) => {
            let n = i64::try_from(n).map_err(|_| DecodeError::IntegerOutOfRange { at })?;
            d.set_position(next);
            // A negative integer's head holds -1 - n.
            Ok(if major == 0 { n } else { -1 - n })
        }
        _ => Err(malformed("an integer", at)),
    }
}

/// Reads an unsigned integer.
pub(crate) fn read_u64(d: &mut Decoder<'_>) -> Result<u64, DecodeError> {
    let at = d.position();
    match read_head(d.input(), at)? {
        (0, Some(n), next) => {
            d.set_position(next);
            Ok(n)
        }
        _ => Err(malformed("an unsigned integer", at)),
    }
}

/// Re-encodes one array (and everything in it) canonically into `sink`:
/// definite lengths, shortest integer heads, floats as f64. `depth` counts
/// nesting used so far. The sink is dynamic so that the re-encoder exists
/// once in a firmware image, whether it measures or writes.
#[cfg(feature = "arrays")]
pub(crate) fn canonicalize_array(
    d: &mut Decoder<'_>,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), DecodeError>,
    depth: usize,
) -> Result<(), DecodeError> {
    if peek_major(d)? != 4 {
        return Err(malformed("an array", d.position()));
    }
    let mut walked = Ok(());
    stream(sink, |e| {
        walked = canonicalize_item(d, e, depth);
        Ok(())
    })?;
    walked
}

/// Without the `arrays` feature no array is ever stored: refused where it
/// starts, before anything is written.
#[cfg(not(feature = "arrays"))]
pub(crate) fn canonicalize_array(
    d: &mut Decoder<'_>,
    _: &mut dyn FnMut(&[u8]) -> Result<(), DecodeError>,
    _: usize,
) -> Result<(), DecodeError> {
    Err(DecodeError::Unsupported { at: d.position() })
}

#[cfg(feature = "arrays")]
fn put(
    r: Result<&mut Encoder<CborWriter<'_>>, minicbor::encode::Error<core::convert::Infallible>>,
) -> Result<(), DecodeError> {
    // The writer cannot fail; minicbor's own errors (none for the calls
    // made here) would mean a value it cannot encode.
    r.map(|_| ()).map_err(|_| malformed("encodable value", 0))
}

#[cfg(feature = "arrays")]
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

#[cfg(feature = "arrays")]
fn canonicalize_item(
    d: &mut Decoder<'_>,
    e: &mut Encoder<CborWriter<'_>>,
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > MAX_NESTING {
        return Err(malformed("shallower nesting", d.position()));
    }
    let at = d.position();
    let first = peek(d)?;
    // Dispatched on the first byte, like the shadow's leaf reader.
    match (first >> 5, first & 0x1f) {
        (major @ (4 | 5), 0..=27 | 31) => {
            let is_map = major == 5;
            let per_entry = if is_map { 2 } else { 1 };
            let len = read_container(d, major, "an array or a map")?;
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
        (0 | 1, 0..=27) => put(e.i64(read_i64(d)?)),
        (2, 0..=27) => put(e.bytes(read_bytes(d)?)),
        (3, 0..=27) => put(e.str(read_str(d)?)),
        (7, 20 | 21) => {
            d.set_position(at + 1);
            put(e.bool(first == 0xf5))
        }
        (7, 22) => {
            d.set_position(at + 1);
            put(e.null())
        }
        (7, 25..=27) => put(e.f64(read_float(d)?)),
        (7, 31) => Err(malformed("a data item", at)),
        // Indefinite strings, tags, undefined, other simple values.
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
    each_entry_dyn(d, &mut entry)
}

/// The body of [`each_entry`]: not generic, so the walk exists once in a
/// firmware image rather than once per message type.
fn each_entry_dyn<'b>(
    d: &mut Decoder<'b>,
    entry: &mut dyn FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = read_container(d, 5, "a map")?;
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

/// Reads a text map key, checked as UTF-8; returns its bytes and where it
/// started. Bytes rather than `str`: keys are stored as bytes, and most are
/// ASCII, which is checked here without `from_utf8`'s call.
pub(crate) fn read_text_key<'b>(d: &mut Decoder<'b>) -> Result<(&'b [u8], usize), DecodeError> {
    let at = d.position();
    let key = read_string(d, 3, "a text key")?;
    if !key.is_ascii() {
        utf8(key, at)?;
    }
    Ok((key, at))
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
    each_tuple_dyn(d, len, list, tuple, &mut each)
}

/// The body of [`each_tuple`], not generic for the same reason as
/// [`each_entry_dyn`].
fn each_tuple_dyn<'b>(
    d: &mut Decoder<'b>,
    len: u64,
    list: &'static str,
    tuple: &'static str,
    each: &mut dyn FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let at = d.position();
    let n = read_container(d, 4, list)?.ok_or(malformed(list, at))?;
    for _ in 0..n {
        let at = d.position();
        if read_container(d, 4, tuple)? != Some(len) {
            return Err(malformed(tuple, at));
        }
        each(d)?;
    }
    Ok(())
}

/// Reads a path written as an array of text keys.
pub(crate) fn read_path(d: &mut Decoder<'_>) -> Result<crate::shadow::PathBuf, DecodeError> {
    let at = d.position();
    let what = "a definite array of keys";
    let n = read_container(d, 4, what)?.ok_or(malformed(what, at))?;
    if n > crate::shadow::MAX_DEPTH as u64 {
        return Err(DecodeError::Path(crate::PathError::TooDeep));
    }
    let mut p = crate::shadow::PathBuf::new();
    for _ in 0..n {
        p.push(read_str(d)?)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encode_into_writes_what_it_measured_or_nothing() {
        let mut out = [0xEEu8; 4];
        let n = encode_into(&mut out, |e| {
            e.array(2)?.u8(1)?.u8(2)?;
            Ok(())
        });
        assert_eq!(n, Ok(3));
        assert_eq!(out, [0x82, 0x01, 0x02, 0xEE]);

        let mut small = [0xEEu8; 2];
        let n = encode_into(&mut small, |e| {
            e.array(2)?.u8(1)?.u8(2)?;
            Ok(())
        });
        assert_eq!(n, Err(EncodeError::BufferTooSmall { needed: 3 }));
        assert_eq!(small, [0xEE, 0xEE]);

        // An encoder that writes more the second time is caught, not
        // passed on cut to the measured length.
        let passes = core::cell::Cell::new(0);
        let mut out = [0u8; 8];
        let n = encode_into(&mut out, |e| {
            passes.set(passes.get() + 1);
            e.u8(1)?;
            if passes.get() == 2 {
                e.u8(2)?;
            }
            Ok(())
        });
        assert_eq!(n, Err(EncodeError::BufferTooSmall { needed: 2 }));
    }

    /// Skips the item at the start of `bytes`; returns where it ended.
    fn skip(bytes: &[u8]) -> Result<usize, DecodeError> {
        let mut d = Decoder::new(bytes);
        skip_item(&mut d, 0)?;
        Ok(d.position())
    }

    #[test]
    fn skips_every_kind_of_item_to_its_end() {
        let items: &[&[u8]] = &[
            &[0x17],                                     // 23
            &[0x1b, 0, 0, 0, 1, 0, 0, 0, 0],             // 2^32
            &[0x38, 0x63],                               // -100
            &[0x43, 1, 2, 3],                            // h'010203'
            &[0x62, b'h', b'i'],                         // "hi"
            &[0x5f, 0x41, 1, 0x42, 2, 3, 0xff],          // (_ h'01', h'0203')
            &[0x7f, 0x61, b'a', 0x60, 0xff],             // (_ "a", "")
            &[0x82, 0x01, 0x82, 0x02, 0x03],             // [1, [2, 3]]
            &[0x9f, 0x01, 0x9f, 0xff, 0xff],             // [_ 1, [_ ]]
            &[0xa1, 0x61, b'k', 0xbf, 0x01, 0x02, 0xff], // {"k": {_ 1: 2}}
            &[0xc1, 0x1a, 0, 0, 0, 1],                   // 1(1)
            &[0xf4],                                     // false
            &[0xf7],                                     // undefined
            &[0xf8, 0x20],                               // simple(32)
            &[0xf9, 0x3c, 0x00],                         // 1.0 as f16
            &[0xfa, 0x3f, 0x80, 0, 0],                   // 1.0 as f32
            &[0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0],       // 1.0 as f64
        ];
        for item in items {
            let mut with_more = item.to_vec();
            with_more.push(0x00);
            assert_eq!(skip(&with_more), Ok(item.len()), "{item:02x?}");
            // Every proper prefix is incomplete.
            for cut in 0..item.len() {
                assert!(skip(&item[..cut]).is_err(), "{:02x?}", &item[..cut]);
            }
        }
    }

    #[test]
    fn refuses_what_is_not_one_well_formed_item() {
        let bad: &[&[u8]] = &[
            &[0xff],                                                       // a break alone
            &[0x1f],                                                       // an indefinite integer
            &[0xdf, 0x01],                                                 // an indefinite tag
            &[0x1c],                   // reserved additional information
            &[0x7f, 0x41, 0x00, 0xff], // a byte chunk in indefinite text
            &[0x5f, 0x5f, 0xff, 0xff], // an indefinite chunk
            &[0x62, 0xc3, 0x28],       // invalid UTF-8
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00], // 2^64-1 bytes
        ];
        for item in bad {
            assert!(skip(item).is_err(), "{item:02x?}");
        }
        // Nesting past the bound, even when well formed.
        let mut deep = [0x81u8; MAX_NESTING + 2];
        deep[MAX_NESTING + 1] = 0x00;
        assert!(matches!(
            skip(&deep),
            Err(DecodeError::Malformed {
                what: "shallower nesting",
                ..
            })
        ));
        assert_eq!(skip(&deep[1..]), Ok(MAX_NESTING + 1));
    }

    #[test]
    fn integers_read_from_heads_keep_their_range() {
        let i = |bytes: &[u8]| read_i64(&mut Decoder::new(bytes));
        assert_eq!(i(&[0x00]), Ok(0));
        assert_eq!(i(&[0x20]), Ok(-1));
        assert_eq!(i(&[0x39, 0x01, 0xf3]), Ok(-500));
        let max = [0x1b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(i(&max), Ok(i64::MAX));
        let min = [0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(i(&min), Ok(i64::MIN));
        let past = [0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(i(&past), Err(DecodeError::IntegerOutOfRange { at: 0 }));
        assert_eq!(i(&[0x3b, 0x80, 0, 0, 0, 0, 0, 0, 0]), i(&past));
        assert!(matches!(
            i(&[0x61, b'1']),
            Err(DecodeError::Malformed { .. })
        ));
        assert_eq!(i(&[0x19, 0x01]), Err(DecodeError::Truncated));

        let u = |bytes: &[u8]| read_u64(&mut Decoder::new(bytes));
        assert_eq!(u(&past), Ok(1 << 63));
        assert!(matches!(u(&[0x20]), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn every_half_float_widens_as_minicbor_reads_it() {
        // All 65 536 halves against minicbor's reader (the `half` crate).
        for h in 0..=u16::MAX {
            let [hi, lo] = h.to_be_bytes();
            let ours = f16_to_f32(h);
            let theirs = Decoder::new(&[0xf9, hi, lo]).f32().unwrap();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn floats_read_from_heads_in_every_width() {
        let f = |bytes: &[u8]| {
            let mut d = Decoder::new(bytes);
            read_float(&mut d).map(|v| (v, d.position()))
        };
        assert_eq!(f(&[0xf9, 0x3c, 0x00]), Ok((1.0, 3)));
        assert_eq!(f(&[0xf9, 0x00, 0x01]), Ok((2f64.powi(-24), 3)));
        assert_eq!(f(&[0xf9, 0xfc, 0x00]), Ok((f64::NEG_INFINITY, 3)));
        assert_eq!(f(&[0xfa, 0x41, 0xc8, 0x00, 0x00]), Ok((25.0, 5)));
        let tenth = 0.1f64.to_bits().to_be_bytes();
        assert_eq!(f(&[&[0xfb][..], &tenth].concat()), Ok((0.1, 9)));
        // Not a float: refused where it starts, decoder unmoved.
        assert_eq!(f(&[0x01]), Err(malformed("a float", 0)));
        assert_eq!(f(&[0xf5]), Err(malformed("a float", 0)));
        assert_eq!(f(&[0xfa, 0x41]), Err(DecodeError::Truncated));
        assert_eq!(f(&[]), Err(DecodeError::Truncated));
    }

    #[test]
    fn strings_read_from_heads() {
        fn t(bytes: &[u8]) -> Result<&str, DecodeError> {
            read_str(&mut Decoder::new(bytes))
        }
        assert_eq!(t(&[0x63, b'a', b'b', b'c']), Ok("abc"));
        assert_eq!(t(&[0x60]), Ok(""));
        assert_eq!(t(&[0x63, b'a']), Err(DecodeError::Truncated));
        assert_eq!(t(&[0x62, 0xc3, 0x28]), Err(malformed("UTF-8 text", 0)));
        assert_eq!(t(&[0x43, 1, 2, 3]), Err(malformed("a text string", 0)));
        // Indefinite strings are not read as one string.
        assert_eq!(
            t(&[0x7f, 0x61, b'a', 0xff]),
            Err(malformed("a text string", 0))
        );
        fn b(bytes: &[u8]) -> Result<&[u8], DecodeError> {
            read_bytes(&mut Decoder::new(bytes))
        }
        assert_eq!(b(&[0x42, 0xc3, 0x28]), Ok(&[0xc3, 0x28][..]));
        assert_eq!(b(&[0x62, b'a', b'b']), Err(malformed("a byte string", 0)));
        // A length past what a usize holds on the target is truncation.
        let huge = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(b(&huge), Err(DecodeError::Truncated));
    }

    #[test]
    fn containers_and_breaks_read_from_heads() {
        let c = |bytes: &[u8], major| read_container(&mut Decoder::new(bytes), major, "x");
        assert_eq!(c(&[0xa2], 5), Ok(Some(2)));
        assert_eq!(c(&[0x98, 0x20], 4), Ok(Some(32)));
        assert_eq!(c(&[0xbf], 5), Ok(None));
        assert_eq!(c(&[0x82], 5), Err(malformed("x", 0)));
        assert_eq!(c(&[], 4), Err(DecodeError::Truncated));
        let mut d = Decoder::new(&[0xff, 0x01]);
        assert_eq!(take_break(&mut d), Ok(true));
        assert_eq!(take_break(&mut d), Ok(false));
        assert_eq!(d.position(), 1);
    }

    proptest! {
        /// Strings, floats and integers read on their heads agree with
        /// minicbor's typed readers on any input.
        #[test]
        fn typed_reads_agree_with_minicbor(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let ours = read_str(&mut Decoder::new(&bytes)).ok();
            prop_assert_eq!(ours, Decoder::new(&bytes).str().ok());
            let ours = read_bytes(&mut Decoder::new(&bytes)).ok();
            prop_assert_eq!(ours, Decoder::new(&bytes).bytes().ok());
            let ours = read_float(&mut Decoder::new(&bytes)).ok();
            let theirs = Decoder::new(&bytes).f64().ok();
            // Every NaN is NaN; payloads may differ.
            let bits = |v: f64| if v.is_nan() { u64::MAX } else { v.to_bits() };
            prop_assert_eq!(ours.map(bits), theirs.map(bits));
        }
    }

    proptest! {
        /// Whatever the head reader accepts, minicbor's own (allocating)
        /// skip accepts too, and it ends at the same byte.
        #[test]
        fn agrees_with_minicbor(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            if let Ok(end) = skip(&bytes) {
                let mut d = Decoder::new(&bytes);
                prop_assert!(d.skip().is_ok(), "{:02x?}", bytes);
                prop_assert_eq!(d.position(), end);
            }
        }
    }
}
