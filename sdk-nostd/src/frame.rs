//! The framed link: each message is sent as `COBS(payload ++ CRC-16) 0x00`.
//!
//! COBS removes every zero byte from the frame, so `0x00` can only be the
//! delimiter: a receiver that starts mid-stream, or loses bytes, drops at
//! most the frame it is in and is back in step at the next delimiter. The
//! CRC (CRC-16/CCITT-FALSE, big-endian) rejects damaged frames. Frames
//! longer than the receiver's buffer are dropped whole. Nothing damaged is
//! ever passed on; everything dropped is counted.

use embedded_io::{Read, ReadReady, Write};

/// Bit by bit, without a lookup table: the table costs 512 bytes of flash,
/// and a frame's CRC takes microseconds either way, against the
/// milliseconds its bytes take on a serial line.
const CRC16: crc::Crc<u16, crc::NoTable> =
    crc::Crc::<u16, crc::NoTable>::new(&crc::CRC_16_IBM_3740);
const DELIMITER: u8 = 0;

/// Why a frame could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The output buffer is too small for the encoded frame.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
    },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::BufferTooSmall { needed } => write!(f, "frame needs {needed} bytes"),
        }
    }
}

/// Bytes a frame of `payload_len` bytes takes on the wire, at most.
pub const fn max_frame_len(payload_len: usize) -> usize {
    cobs::max_encoding_length(payload_len + 2) + 1
}

/// Encodes one frame (COBS of payload and CRC, then the delimiter) into
/// `out`; returns its length. A buffer too small is an error.
pub fn encode_frame(payload: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    encode_frame_parts(&[payload], out)
}

/// Encodes one frame whose payload is `parts` one after the other, so a
/// header and a body need not be copied together first.
pub fn encode_frame_parts(parts: &[&[u8]], out: &mut [u8]) -> Result<usize, FrameError> {
    let payload_len = parts.iter().map(|p| p.len()).sum();
    let needed = max_frame_len(payload_len);
    if out.len() < needed {
        return Err(FrameError::BufferTooSmall { needed });
    }
    let mut digest = CRC16.digest();
    let n = {
        let mut enc = cobs::CobsEncoder::new(&mut out[..needed - 1]);
        // The buffer holds the worst case, so no push can fail.
        for part in parts {
            digest.update(part);
            let _ = enc.push(part);
        }
        let _ = enc.push(&digest.finalize().to_be_bytes());
        enc.finalize()
    };
    out[n] = DELIMITER;
    Ok(n + 1)
}

/// What the receiver dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames passed on.
    pub frames: u64,
    /// Frames whose CRC did not match.
    pub crc_errors: u64,
    /// Frames that were not valid COBS (or too short for a CRC).
    pub malformed: u64,
    /// Frames longer than the receive buffer.
    pub oversized: u64,
}

/// Reassembles frames from a byte stream; at most `N` encoded bytes per
/// frame.
#[derive(Debug)]
pub struct FrameDecoder<const N: usize> {
    buf: heapless::Vec<u8, N>,
    /// Inside a frame that did not fit: skip to the next delimiter.
    discarding: bool,
    stats: LinkStats,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        FrameDecoder {
            buf: heapless::Vec::new(),
            discarding: false,
            stats: LinkStats {
                frames: 0,
                crc_errors: 0,
                malformed: 0,
                oversized: 0,
            },
        }
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Feeds received bytes; calls `on_frame` with the payload of every
    /// good frame they complete.
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut(&[u8])) {
        for &b in bytes {
            if b != DELIMITER {
                if !self.discarding && self.buf.push(b).is_err() {
                    self.discarding = true;
                }
                continue;
            }
            if self.discarding {
                self.stats.oversized += 1;
            } else if !self.buf.is_empty() {
                match cobs::decode_in_place(&mut self.buf) {
                    Ok(n) if n >= 2 => {
                        let (payload, crc) = self.buf[..n].split_at(n - 2);
                        if CRC16.checksum(payload).to_be_bytes() == [crc[0], crc[1]] {
                            self.stats.frames += 1;
                            on_frame(payload);
                        } else {
                            self.stats.crc_errors += 1;
                        }
                    }
                    _ => self.stats.malformed += 1,
                }
            }
            self.buf.clear();
            self.discarding = false;
        }
    }
}

/// Why the link failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError<E> {
    /// The frame did not fit the transmit buffer.
    Frame(FrameError),
    /// The serial port failed.
    Io(E),
}

/// A framed link over a serial port: `RX` bytes of receive buffer, `TX`
/// bytes of transmit buffer (at least [`max_frame_len`] of the largest
/// payload).
pub struct FramedLink<IO, const RX: usize, const TX: usize> {
    io: IO,
    decoder: FrameDecoder<RX>,
    tx: [u8; TX],
}

impl<IO: Read + Write, const RX: usize, const TX: usize> FramedLink<IO, RX, TX> {
    /// A link over `io`.
    pub fn new(io: IO) -> Self {
        FramedLink {
            io,
            decoder: FrameDecoder::new(),
            tx: [0; TX],
        }
    }

    /// Sends one message.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), LinkError<IO::Error>> {
        self.send_parts(&[payload])
    }

    /// Sends one message made of `parts` (a header and a body, say).
    pub fn send_parts(&mut self, parts: &[&[u8]]) -> Result<(), LinkError<IO::Error>> {
        let n = encode_frame_parts(parts, &mut self.tx).map_err(LinkError::Frame)?;
        self.io.write_all(&self.tx[..n]).map_err(LinkError::Io)?;
        self.io.flush().map_err(LinkError::Io)
    }

    /// Reads what the port has (blocking until at least one byte) and
    /// passes every complete good frame to `on_frame`.
    pub fn receive(&mut self, on_frame: impl FnMut(&[u8])) -> Result<(), LinkError<IO::Error>> {
        let mut chunk = [0u8; 64];
        let n = self.io.read(&mut chunk).map_err(LinkError::Io)?;
        self.decoder.feed(&chunk[..n], on_frame);
        Ok(())
    }

    /// Like [`FramedLink::receive`], but returns at once (`Ok(false)`)
    /// when the port has nothing to read, so a device loop never blocks on
    /// a quiet link.
    pub fn try_receive(&mut self, on_frame: impl FnMut(&[u8])) -> Result<bool, LinkError<IO::Error>>
    where
        IO: ReadReady,
    {
        if !self.io.read_ready().map_err(LinkError::Io)? {
            return Ok(false);
        }
        self.receive(on_frame)?;
        Ok(true)
    }

    /// Receive counters.
    pub fn stats(&self) -> LinkStats {
        self.decoder.stats()
    }

    /// The port.
    pub fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// The port back.
    pub fn into_inner(self) -> IO {
        self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn frames<const N: usize>(d: &mut FrameDecoder<N>, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        d.feed(bytes, |p| out.push(p.to_vec()));
        out
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut buf = std::vec![0u8; max_frame_len(payload.len())];
        let n = encode_frame(payload, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn frames_round_trip_and_contain_no_zero_but_the_delimiter() {
        let payload = [0u8, 1, 0, 0, 255, 0];
        let f = frame(&payload);
        assert_eq!(f.iter().filter(|b| **b == 0).count(), 1);
        assert_eq!(*f.last().unwrap(), 0);
        let mut d: FrameDecoder<64> = FrameDecoder::new();
        assert_eq!(frames(&mut d, &f), std::vec![payload.to_vec()]);
        assert_eq!(
            encode_frame(&payload, &mut [0u8; 4]),
            Err(FrameError::BufferTooSmall { needed: 10 })
        );
    }

    #[test]
    fn damaged_and_oversized_frames_are_dropped_and_counted_and_the_next_one_gets_through() {
        let mut d: FrameDecoder<16> = FrameDecoder::new();
        let mut damaged = frame(b"hello");
        damaged[2] ^= 0x40;
        let big = frame(&[7u8; 40]);
        let mut stream = Vec::new();
        stream.extend_from_slice(&damaged);
        stream.extend_from_slice(&big);
        stream.extend_from_slice(&[3, 9]); // noise without a delimiter...
        stream.push(0); // ...ends as a malformed frame
        stream.extend_from_slice(&frame(b"ok"));
        assert_eq!(frames(&mut d, &stream), std::vec![b"ok".to_vec()]);
        let s = d.stats();
        assert_eq!(
            (s.frames, s.crc_errors, s.oversized, s.malformed),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn a_receiver_joining_mid_frame_resynchronises() {
        let mut d: FrameDecoder<64> = FrameDecoder::new();
        let first = frame(b"first");
        let second = frame(b"second");
        let mut stream = first[3..].to_vec();
        stream.extend_from_slice(&second);
        assert_eq!(frames(&mut d, &stream), std::vec![b"second".to_vec()]);
    }

    struct Loopback {
        data: Vec<u8>,
        at: usize,
    }
    impl embedded_io::ErrorType for Loopback {
        type Error = core::convert::Infallible;
    }
    impl Read for Loopback {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = buf.len().min(self.data.len() - self.at).min(5);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    impl Write for Loopback {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[test]
    fn a_link_over_a_port_carries_messages_in_small_reads() {
        let mut link: FramedLink<Loopback, 128, 128> = FramedLink::new(Loopback {
            data: Vec::new(),
            at: 0,
        });
        link.send(b"register").unwrap();
        link.send(&[0u8; 20]).unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            link.receive(|p| got.push(p.to_vec())).unwrap();
        }
        assert_eq!(got, std::vec![b"register".to_vec(), std::vec![0u8; 20]]);
        assert_eq!(link.stats().frames, 2);
        assert!(matches!(link.send(&[1u8; 200]), Err(LinkError::Frame(_))));
    }

    proptest::proptest! {
        #[test]
        fn after_any_noise_the_next_frame_arrives_whole(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let mut d: FrameDecoder<64> = FrameDecoder::new();
            d.feed(&noise, |_| {});
            let mut stream = std::vec![0u8];
            stream.extend_from_slice(&frame(&payload));
            proptest::prop_assert_eq!(frames(&mut d, &stream), std::vec![payload]);
        }
    }
}
