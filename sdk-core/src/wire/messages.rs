//! Shadow update and delta messages.

use minicbor::decode::Decoder;
use minicbor::encode::{Encoder, Write};

use super::cbor;
use crate::error::{DecodeError, Error};
use crate::shadow::{DEFAULT_LEAVES, DEFAULT_POOL, LeafMeta, Shadow, Source, StateTree};

/// Longest client token, as in AWS IoT.
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;

/// An update of a shadow: a desired part from the cloud, a reported part
/// from the device, or both. `null` leaves delete.
///
/// ```
/// use lanyard_core::wire::ShadowUpdate;
/// use lanyard_core::shadow::{Shadow, ConflictPolicy, Value};
/// // {2: {"temp": 21}, 4: 1000} — a device reporting temp = 21 at t = 1 s.
/// let bytes = [0xa2, 0x02, 0xa1, 0x64, b't', b'e', b'm', b'p', 0x15, 0x04, 0x19, 0x03, 0xe8];
/// let up: ShadowUpdate<8, 128> = ShadowUpdate::decode(&bytes)?;
/// let mut shadow: Shadow<8, 128> = Shadow::new(ConflictPolicy::DeviceWins);
/// up.apply_to(&mut shadow)?;
/// assert_eq!(shadow.reported().get_dotted("temp").unwrap().value, Value::Int(21));
/// # Ok::<(), lanyard_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowUpdate<const L: usize = DEFAULT_LEAVES, const P: usize = DEFAULT_POOL> {
    /// Changes to `desired`.
    pub desired: Option<StateTree<L, P>>,
    /// Changes to `reported`.
    pub reported: Option<StateTree<L, P>>,
    /// Refuse the update unless the document is at this version.
    pub expected_version: Option<u64>,
    /// When the writer made the change, ms since the epoch (writer's clock).
    pub timestamp_ms: u64,
    /// Echoed back in responses so the writer can match them.
    pub client_token: Option<heapless::String<MAX_CLIENT_TOKEN_LEN>>,
    /// From a device: the desired properties it refuses, each leaf the
    /// code of a [`RejectReason`](crate::agent::platform::RejectReason).
    /// The whole set the device refuses now; absent means none.
    pub rejected: Option<StateTree<L, P>>,
}

/// A [`ShadowUpdate`] whose trees are borrowed: encodes an update from
/// trees held elsewhere without copying them (a device reporting its state
/// would otherwise copy its reported tree onto the stack). Same encoding,
/// by construction: [`ShadowUpdate::encode_cbor`] goes through it.
#[derive(Debug, Clone, Copy)]
pub struct ShadowUpdateRef<'a, const L: usize = DEFAULT_LEAVES, const P: usize = DEFAULT_POOL> {
    /// Changes to `desired`.
    pub desired: Option<&'a StateTree<L, P>>,
    /// Changes to `reported`.
    pub reported: Option<&'a StateTree<L, P>>,
    /// Refuse the update unless the document is at this version.
    pub expected_version: Option<u64>,
    /// When the writer made the change, ms since the epoch (writer's clock).
    pub timestamp_ms: u64,
    /// Echoed back in responses so the writer can match them.
    pub client_token: Option<&'a str>,
    /// From a device: the desired properties it refuses (see
    /// [`ShadowUpdate::rejected`]).
    pub rejected: Option<&'a StateTree<L, P>>,
}

impl<const L: usize, const P: usize> ShadowUpdateRef<'_, L, P> {
    /// Writes the update with minicbor.
    pub fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        let n = 1
            + u64::from(self.desired.is_some())
            + u64::from(self.reported.is_some())
            + u64::from(self.expected_version.is_some())
            + u64::from(self.client_token.is_some())
            + u64::from(self.rejected.is_some());
        e.map(n)?;
        if let Some(t) = self.desired {
            e.u8(1)?;
            t.encode_cbor(e)?;
        }
        if let Some(t) = self.reported {
            e.u8(2)?;
            t.encode_cbor(e)?;
        }
        if let Some(v) = self.expected_version {
            e.u8(3)?.u64(v)?;
        }
        e.u8(4)?.u64(self.timestamp_ms)?;
        if let Some(t) = self.client_token {
            e.u8(5)?.str(t)?;
        }
        if let Some(t) = self.rejected {
            e.u8(6)?;
            t.encode_cbor(e)?;
        }
        Ok(())
    }
}

impl<const L: usize, const P: usize> ShadowUpdate<L, P> {
    /// An update with no parts yet.
    pub fn new(timestamp_ms: u64) -> Self {
        ShadowUpdate {
            desired: None,
            reported: None,
            expected_version: None,
            timestamp_ms,
            client_token: None,
            rejected: None,
        }
    }

    /// Applies the update to `shadow`, atomically. Returns the new version.
    ///
    /// An update with a reported part is the device's: its `rejected` part
    /// (none when absent) replaces the rejections the shadow keeps.
    pub fn apply_to<const SL: usize, const SP: usize>(
        &self,
        shadow: &mut Shadow<SL, SP>,
    ) -> Result<u64, Error> {
        let rejections = match self.reported {
            Some(_) => Some(Shadow::<SL, SP>::rejections_of(self.rejected.as_ref())?),
            None => None,
        };
        let version = shadow.apply(
            self.desired.as_ref(),
            self.reported.as_ref(),
            self.expected_version,
            self.timestamp_ms,
        )?;
        if let Some(table) = rejections {
            shadow.set_rejected(table);
        }
        Ok(version)
    }

    /// Encodes into `out`; returns the length. A buffer too small is left
    /// untouched.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        let trees = [&self.desired, &self.reported, &self.rejected]
            .into_iter()
            .flatten()
            .map(|t| t.encoded_len_bound())
            .sum::<usize>();
        // Three keyed integers, a token and the map's head.
        let bound = trees + 48 + MAX_CLIENT_TOKEN_LEN;
        Ok(cbor::encode_into_bounded(out, bound, |e| {
            self.encode_cbor(e)
        })?)
    }

    /// Writes the update with minicbor.
    pub fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        self.as_ref().encode_cbor(e)
    }

    /// A borrowed view of this update.
    pub fn as_ref(&self) -> ShadowUpdateRef<'_, L, P> {
        ShadowUpdateRef {
            desired: self.desired.as_ref(),
            reported: self.reported.as_ref(),
            expected_version: self.expected_version,
            timestamp_ms: self.timestamp_ms,
            client_token: self.client_token.as_deref(),
            rejected: self.rejected.as_ref(),
        }
    }

    /// Decodes one update; the whole input must be the message.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut up = Self::new(0);
        up.decode_into(bytes)?;
        Ok(up)
    }

    /// Decodes one update into `self`, reusing its trees: the way to decode
    /// many messages without moving tens of KiB per message. On error the
    /// contents of `self` are unspecified (but valid); no document changes.
    pub fn decode_into(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut d = Decoder::new(bytes);
        self.decode_cbor(&mut d)?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes { at: d.position() }.into());
        }
        Ok(())
    }

    /// Decodes one update at the decoder's position into `self`.
    pub fn decode_cbor(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        self.expected_version = None;
        self.client_token = None;
        let mut have_ts = false;
        let mut seen = 0u8;
        each_field(d, |key, d| {
            if (1..=6).contains(&key) {
                if seen & (1 << key) != 0 {
                    return Err(DecodeError::DuplicateKey { at: d.position() });
                }
                seen |= 1 << key;
            }
            match key {
                1 | 2 | 6 => {
                    let (slot, source) = match key {
                        1 => (&mut self.desired, Source::Cloud),
                        2 => (&mut self.reported, Source::Device),
                        _ => (&mut self.rejected, Source::Device),
                    };
                    let t = slot.get_or_insert_with(StateTree::new);
                    t.clear();
                    let at = d.position();
                    t.decode_cbor(d, LeafMeta::new(source, 0), key != 6)?;
                    if key == 6 && !t.iter().all(|l| reason_code(l.value).is_some()) {
                        return Err(DecodeError::Malformed {
                            what: "rejections whose leaves are reason codes",
                            at,
                        });
                    }
                }
                3 => self.expected_version = Some(cbor::read_u64(d)?),
                4 => {
                    self.timestamp_ms = cbor::read_u64(d)?;
                    have_ts = true;
                }
                5 => {
                    let at = d.position();
                    let s = cbor::read_str(d)?;
                    let mut t = heapless::String::new();
                    t.push_str(s).map_err(|_| DecodeError::Malformed {
                        what: "a client token of at most 64 bytes",
                        at,
                    })?;
                    self.client_token = Some(t);
                }
                _ => cbor::skip_item(d, 0)?,
            }
            Ok(())
        })?;
        if seen & (1 << 1) == 0 {
            self.desired = None;
        }
        if seen & (1 << 2) == 0 {
            self.reported = None;
        }
        if seen & (1 << 6) == 0 {
            self.rejected = None;
        }
        if !have_ts {
            return Err(DecodeError::MissingField("timestamp"));
        }
        Ok(())
    }
}

/// A rejection leaf's reason code: an unsigned integer that fits 32 bits.
pub fn reason_code(v: crate::shadow::Value<'_>) -> Option<u32> {
    match v {
        crate::shadow::Value::Int(c) => u32::try_from(c).ok(),
        _ => None,
    }
}

/// The delta a device receives: what it should change to match `desired`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowDelta<const L: usize = DEFAULT_LEAVES, const P: usize = DEFAULT_POOL> {
    /// The document version the delta was computed at.
    pub version: u64,
    /// When it was computed, ms since the epoch (cloud clock).
    pub timestamp_ms: u64,
    /// The desired leaves that differ from reported.
    pub state: StateTree<L, P>,
}

impl<const L: usize, const P: usize> ShadowDelta<L, P> {
    /// The current delta of `shadow`.
    pub fn of<const SL: usize, const SP: usize>(
        shadow: &Shadow<SL, SP>,
        timestamp_ms: u64,
    ) -> Result<Self, Error> {
        let mut state = StateTree::new();
        shadow.delta_into(&mut state)?;
        Ok(ShadowDelta {
            version: shadow.version(),
            timestamp_ms,
            state,
        })
    }

    /// Encodes into `out`; returns the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        // Two keyed integers and the map's head besides the state.
        let bound = self.state.encoded_len_bound() + 24;
        Ok(cbor::encode_into_bounded(out, bound, |e| {
            self.encode_cbor(e)
        })?)
    }

    /// Writes the delta with minicbor.
    pub fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(3)?;
        e.u8(1)?.u64(self.version)?;
        e.u8(2)?.u64(self.timestamp_ms)?;
        e.u8(3)?;
        self.state.encode_cbor(e)
    }

    /// Decodes one delta; the whole input must be the message.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut delta = Self::empty();
        delta.decode_into(bytes)?;
        Ok(delta)
    }

    /// A delta with no leaves at version 0, to decode into.
    pub fn empty() -> Self {
        ShadowDelta {
            version: 0,
            timestamp_ms: 0,
            state: StateTree::new(),
        }
    }

    /// Decodes one delta into `self`, reusing its tree: a device decodes
    /// into a delta it already holds rather than building one on the stack
    /// and moving it. On error `self` holds an unspecified part of the
    /// input: discard it.
    pub fn decode_into(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut d = Decoder::new(bytes);
        let (mut version, mut ts, mut state) = (None, None, false);
        self.state.clear();
        each_field(&mut d, |key, d| {
            let dup = match key {
                1 => version.replace(cbor::read_u64(d)?).is_some(),
                2 => ts.replace(cbor::read_u64(d)?).is_some(),
                3 => {
                    if state {
                        true
                    } else {
                        self.state
                            .decode_cbor(d, LeafMeta::new(Source::Cloud, 0), false)?;
                        state = true;
                        false
                    }
                }
                _ => {
                    cbor::skip_item(d, 0)?;
                    false
                }
            };
            if dup {
                return Err(DecodeError::DuplicateKey { at: d.position() });
            }
            Ok(())
        })?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes { at: d.position() }.into());
        }
        self.version = version.ok_or(DecodeError::MissingField("version"))?;
        self.timestamp_ms = ts.ok_or(DecodeError::MissingField("timestamp"))?;
        if !state {
            return Err(DecodeError::MissingField("state").into());
        }
        Ok(())
    }
}

/// Walks a top-level message map keyed by unsigned integers.
pub(crate) fn each_field<'b>(
    d: &mut Decoder<'b>,
    mut field: impl FnMut(u64, &mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    each_field_dyn(d, &mut field)
}

/// The body of [`each_field`], not generic (one copy in a firmware image).
fn each_field_dyn<'b>(
    d: &mut Decoder<'b>,
    field: &mut dyn FnMut(u64, &mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    cbor::each_entry(d, |d| {
        let key = cbor::read_u64(d)?;
        field(key, d)
    })
}
