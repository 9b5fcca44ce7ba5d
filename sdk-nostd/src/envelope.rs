//! What one frame of the serial link carries: an SDK message and the MQTT
//! topic it belongs to, as the CBOR array `[topic: tstr, message: bstr]`.
//!
//! Carrying the whole topic (rather than a kind code) keeps the gateway
//! bridge free of rules: it checks that a device only speaks for itself and
//! republishes the message unchanged, and a new message kind needs no new
//! gateway. The cost is some 30 bytes per frame on a link that carries a
//! few messages a second.

use lanyard_core::agent::messages::{MessageKind, topic};
use lanyard_core::wire::{encode_into, read_bytes, read_str};
use minicbor::Decoder;

/// The longest topic an envelope may carry (`lanyard/v1/` + a 64-byte id +
/// the longest suffix fits).
pub const MAX_TOPIC_LEN: usize = 128;

/// Bytes of a CBOR length header for `n`.
const fn head_len(n: usize) -> usize {
    if n < 24 {
        1
    } else if n < 0x100 {
        2
    } else if n < 0x1_0000 {
        3
    } else {
        5
    }
}

/// Bytes of the envelope of a `message_len`-byte message under a
/// `topic_len`-byte topic.
pub const fn envelope_len(topic_len: usize, message_len: usize) -> usize {
    1 + head_len(topic_len) + topic_len + head_len(message_len) + message_len
}

/// The longest envelope header: what a device's link buffers need beyond
/// its largest message.
pub const MAX_HEADER_LEN: usize = envelope_len(MAX_TOPIC_LEN, 0xffff) - 0xffff;

/// Why an envelope was refused. Nothing was passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not `[tstr, bstr]`, or bytes after it.
    Malformed,
    /// The topic is not `lanyard/v1/{device-id}/{suffix}` with a known suffix.
    UnknownTopic,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl core::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EnvelopeError::Malformed => "frame is not a [topic, message] envelope",
            EnvelopeError::UnknownTopic => "envelope topic is not a lanyard topic",
            EnvelopeError::BufferTooSmall => "buffer too small for the envelope",
        })
    }
}

/// A decoded envelope, borrowing the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The whole topic.
    pub topic: &'a str,
    /// The device the topic names.
    pub device_id: &'a str,
    /// The message kind the topic names.
    pub kind: MessageKind,
    /// The message bytes.
    pub message: &'a [u8],
}

/// Writes the envelope of `message` (of `kind`, for `device_id`) into
/// `out`; returns its length.
pub fn encode_envelope(
    device_id: &str,
    kind: MessageKind,
    message: &[u8],
    out: &mut [u8],
) -> Result<usize, EnvelopeError> {
    encode_with_topic(topic(device_id, kind).as_str(), message, out)
}

/// Writes `[topic, message]` into `out`; returns its length.
pub fn encode_with_topic(
    topic: &str,
    message: &[u8],
    out: &mut [u8],
) -> Result<usize, EnvelopeError> {
    let h = encode_header(topic, message.len(), out)?;
    let total = h + message.len();
    out.get_mut(h..total)
        .ok_or(EnvelopeError::BufferTooSmall)?
        .copy_from_slice(message);
    Ok(total)
}

/// Writes everything of the envelope but the message bytes, which follow
/// it: a sender can frame the header and the message it already holds
/// without copying them together.
pub fn encode_header(
    topic: &str,
    message_len: usize,
    out: &mut [u8],
) -> Result<usize, EnvelopeError> {
    // Through core's writer, so the firmware holds one instance of
    // minicbor's encoder; the byte string's header alone, via the
    // length-only form.
    encode_into(out, |e| {
        e.array(2)?.str(topic)?.bytes_len(message_len as u64)?;
        Ok(())
    })
    .map_err(|_| EnvelopeError::BufferTooSmall)
}

/// Reads an envelope's two items: its topic and its message.
fn split(frame: &[u8]) -> Result<(&str, &[u8]), EnvelopeError> {
    // A two-item array, in the one-byte head every encoder writes for it
    // (read as a byte: minicbor's array reader costs the firmware 0.5 KB).
    if frame.first() != Some(&0x82) {
        return Err(EnvelopeError::Malformed);
    }
    let mut d = Decoder::new(frame);
    d.set_position(1);
    let topic = read_str(&mut d).map_err(|_| EnvelopeError::Malformed)?;
    let message = read_bytes(&mut d).map_err(|_| EnvelopeError::Malformed)?;
    if d.position() != frame.len() {
        return Err(EnvelopeError::Malformed);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(EnvelopeError::UnknownTopic);
    }
    Ok((topic, message))
}

/// Reads an envelope and checks its topic.
pub fn decode_envelope(frame: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let (topic, message) = split(frame)?;
    let (device_id, kind) = MessageKind::parse_topic(topic).ok_or(EnvelopeError::UnknownTopic)?;
    Ok(Envelope {
        topic,
        device_id,
        kind,
        message,
    })
}

/// A decoded envelope of a firmware update message, borrowing the frame.
#[cfg(feature = "update")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateEnvelope<'a> {
    /// The device the topic names.
    pub device_id: &'a str,
    /// The update topic.
    pub topic: lanyard_core::update::messages::UpdateTopic,
    /// The message bytes.
    pub message: &'a [u8],
}

/// Reads an envelope on one of the firmware update topics.
#[cfg(feature = "update")]
pub fn decode_update_envelope(frame: &[u8]) -> Result<UpdateEnvelope<'_>, EnvelopeError> {
    let (topic, message) = split(frame)?;
    let (device_id, topic) = lanyard_core::update::messages::UpdateTopic::parse(topic)
        .ok_or(EnvelopeError::UnknownTopic)?;
    Ok(UpdateEnvelope {
        device_id,
        topic,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_bad_ones_are_refused() {
        let mut buf = [0u8; 64];
        let n = encode_envelope("dev-1", MessageKind::Ack, &[0xa0], &mut buf).unwrap();
        let e = decode_envelope(&buf[..n]).unwrap();
        assert_eq!(e.topic, "lanyard/v1/dev-1/ack");
        assert_eq!(
            (e.device_id, e.kind, e.message),
            ("dev-1", MessageKind::Ack, &[0xa0][..])
        );
        assert_eq!(n, envelope_len(e.topic.len(), 1));
        // Trailing bytes, truncation, wrong types, foreign topics.
        let mut long = buf;
        long[n] = 0;
        assert_eq!(
            decode_envelope(&long[..n + 1]),
            Err(EnvelopeError::Malformed)
        );
        assert_eq!(
            decode_envelope(&buf[..n - 1]),
            Err(EnvelopeError::Malformed)
        );
        assert_eq!(
            decode_envelope(&[0x82, 0x01, 0x40]),
            Err(EnvelopeError::Malformed)
        );
        // The array head must be the one byte 0x82: a two-byte or an
        // indefinite head around the same items is refused.
        let items = &buf[1..n];
        let wide = [&[0x98, 0x02][..], items].concat();
        assert_eq!(decode_envelope(&wide), Err(EnvelopeError::Malformed));
        let indefinite = [&[0x9f][..], items, &[0xff]].concat();
        assert_eq!(decode_envelope(&indefinite), Err(EnvelopeError::Malformed));
        let n = encode_with_topic("other/dev-1/ack", &[], &mut buf).unwrap();
        assert_eq!(decode_envelope(&buf[..n]), Err(EnvelopeError::UnknownTopic));
        assert_eq!(
            encode_envelope("dev-1", MessageKind::Ack, &[0; 41], &mut buf),
            Err(EnvelopeError::BufferTooSmall)
        );
    }
}
