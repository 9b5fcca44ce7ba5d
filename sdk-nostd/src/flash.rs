//! Persistent storage on NOR flash (`embedded-storage`), safe against power
//! cuts: each slot has two sectors used in turn. A record is written to the
//! sector not holding the newest one, payload first and header last, and
//! the header carries a sequence number and a CRC-32 of the payload. A cut
//! at any moment leaves either the new record complete or the previous one
//! the newest valid: never a mix.

use embedded_storage::nor_flash::NorFlash;
use lanyard_core::agent::platform::{RecordWriter, Storage, StorageError, StorageSlot};

/// Without a lookup table (1 KiB of flash): a record is a few KiB at
/// most, checked once per boot and per save.
const CRC32: crc::Crc<u32, crc::NoTable> =
    crc::Crc::<u32, crc::NoTable>::new(&crc::CRC_32_ISO_HDLC);
const MAGIC: u32 = 0x4c59_5244; // "LYRD"
/// Header bytes before a record: magic, sequence, length, CRC-32.
pub const HEADER_LEN: usize = 16;
/// Bytes gathered before a write to the flash: a multiple of every write
/// unit the store supports.
const STAGE: usize = 64;

/// A [`Storage`] on NOR flash: `sector_size` bytes per sector, two sectors
/// per slot, from `base` on (AgentState at `base`, Credentials after it,
/// and the firmware update's record after those if
/// [asked for](FlashStore::with_update_record)). Records may be up to
/// `sector_size - HEADER_LEN` bytes.
pub struct FlashStore<F> {
    flash: F,
    base: u32,
    sector_size: u32,
    slots: u32,
}

fn slot_index(slot: StorageSlot) -> u32 {
    match slot {
        StorageSlot::AgentState => 0,
        StorageSlot::Credentials => 1,
        StorageSlot::UpdateRecord => 2,
    }
}

struct Header {
    seq: u32,
    len: u32,
    crc: u32,
}

impl<F: NorFlash> FlashStore<F> {
    /// A store in `flash` from `base`, with sectors of `sector_size` bytes
    /// (a multiple of the flash's erase size).
    pub fn new(flash: F, base: u32, sector_size: u32) -> Self {
        FlashStore {
            flash,
            base,
            sector_size,
            slots: 2,
        }
    }

    /// Keeps the firmware update's download record too, in two more
    /// sectors (six in all). Without it, that record is not kept (a
    /// restart starts a download over) and the store spans four sectors.
    pub fn with_update_record(mut self) -> Self {
        self.slots = 3;
        self
    }

    fn holds(&self, slot: StorageSlot) -> bool {
        slot_index(slot) < self.slots
    }

    /// The flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// The longest record a sector holds. Lengths are compared with it,
    /// never added to the header's: a length read from flash may be
    /// anything, and `len + HEADER_LEN` wraps on a 32-bit target.
    fn max_record_len(&self) -> usize {
        (self.sector_size as usize).saturating_sub(HEADER_LEN)
    }

    fn sector(&self, slot: StorageSlot, half: u32) -> u32 {
        self.base + (slot_index(slot) * 2 + half) * self.sector_size
    }

    fn header(&mut self, at: u32) -> Option<Header> {
        let mut h = [0u8; HEADER_LEN];
        self.flash.read(at, &mut h).ok()?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        (word(0) == MAGIC).then(|| Header {
            seq: word(4),
            len: word(8),
            crc: word(12),
        })
    }

    /// The header at `at` if its record is complete: the CRC over the
    /// payload, read in small chunks so no buffer of a record's size is
    /// needed.
    fn valid(&mut self, at: u32) -> Option<Header> {
        let h = self.header(at)?;
        let len = h.len as usize;
        if len > self.max_record_len() {
            return None;
        }
        let mut digest = CRC32.digest();
        let mut chunk = [0u8; 64];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.flash
                .read(at + (HEADER_LEN + done) as u32, &mut chunk[..n])
                .ok()?;
            digest.update(&chunk[..n]);
            done += n;
        }
        (digest.finalize() == h.crc).then_some(h)
    }

    /// The newest complete record of `slot`: which half, and its header.
    fn newest(&mut self, slot: StorageSlot) -> Option<(u32, Header)> {
        let mut best: Option<(u32, Header)> = None;
        for half in 0..2 {
            let Some(h) = self.valid(self.sector(slot, half)) else {
                continue;
            };
            // Wrapping comparison: the later of two sequence numbers.
            if best
                .as_ref()
                .is_none_or(|(_, b)| h.seq.wrapping_sub(b.seq) as i32 > 0)
            {
                best = Some((half, h));
            }
        }
        best
    }
}

impl<F: NorFlash> Storage for FlashStore<F> {
    fn load(&mut self, slot: StorageSlot, buf: &mut [u8]) -> Result<usize, StorageError> {
        if !self.holds(slot) {
            return Ok(0);
        }
        match self.newest(slot) {
            Some((half, h)) => {
                let len = h.len as usize;
                let dst = buf.get_mut(..len).ok_or(StorageError::TooLarge)?;
                self.flash
                    .read(self.sector(slot, half) + HEADER_LEN as u32, dst)
                    .map_err(|_| StorageError::Io)?;
                Ok(len)
            }
            None => Ok(0),
        }
    }

    fn store(&mut self, slot: StorageSlot, data: &[u8]) -> Result<(), StorageError> {
        self.store_with(slot, data.len(), &mut |sink| sink(data))
    }

    /// Streams the record to the flash through a 64-byte staging buffer,
    /// computing its CRC on the way: no buffer of the record's size.
    fn store_with(
        &mut self,
        slot: StorageSlot,
        len: usize,
        write: &mut RecordWriter<'_>,
    ) -> Result<(), StorageError> {
        if len > self.max_record_len() || !self.holds(slot) {
            return Err(StorageError::TooLarge);
        }
        // Pieces are gathered into whole write units; flashes whose unit
        // does not divide the 16-byte header (STM32F4's is 1 to 4 bytes,
        // STM32L4's 8) are not supported.
        let ws = F::WRITE_SIZE.max(1);
        if !STAGE.is_multiple_of(ws) || !HEADER_LEN.is_multiple_of(ws) {
            return Err(StorageError::Io);
        }
        // Write over the other half than the newest complete record, so
        // that record survives whatever happens to this write.
        let (target, seq) = match self.newest(slot) {
            Some((half, h)) => (1 - half, h.seq.wrapping_add(1)),
            None => (0, 1),
        };
        let at = self.sector(slot, target);
        self.flash
            .erase(at, at + self.sector_size)
            .map_err(|_| StorageError::Io)?;
        // Payload first; the header last, so the record exists only once
        // all of it is on the flash.
        let flash = &mut self.flash;
        let payload_at = at + HEADER_LEN as u32;
        let mut stage = [0xFFu8; STAGE];
        let (mut staged, mut flushed, mut total) = (0usize, 0usize, 0usize);
        let mut digest = CRC32.digest();
        write(&mut |mut piece| {
            total += piece.len();
            if total > len {
                return Err(StorageError::TooLarge);
            }
            digest.update(piece);
            while !piece.is_empty() {
                let n = (STAGE - staged).min(piece.len());
                stage[staged..staged + n].copy_from_slice(&piece[..n]);
                staged += n;
                piece = &piece[n..];
                if staged == STAGE {
                    flash
                        .write(payload_at + flushed as u32, &stage)
                        .map_err(|_| StorageError::Io)?;
                    flushed += STAGE;
                    staged = 0;
                }
            }
            Ok(())
        })?;
        if total != len {
            return Err(StorageError::TooLarge);
        }
        if staged > 0 {
            // The last unit is padded with erased bytes.
            let padded = staged.div_ceil(ws) * ws;
            stage[staged..padded].fill(0xFF);
            flash
                .write(payload_at + flushed as u32, &stage[..padded])
                .map_err(|_| StorageError::Io)?;
        }
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&seq.to_le_bytes());
        h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        h[12..16].copy_from_slice(&digest.finalize().to_le_bytes());
        self.flash.write(at, &h).map_err(|_| StorageError::Io)
    }

    /// Erases the store's sectors, credentials included, then reads them
    /// back: a sector that still holds anything but erased bytes (a flash
    /// that failed without saying so) is an error, so that a device never
    /// takes its keys for gone when they are not.
    fn wipe(&mut self) -> Result<(), StorageError> {
        let end = self.base + 2 * self.slots * self.sector_size;
        self.flash
            .erase(self.base, end)
            .map_err(|_| StorageError::Io)?;
        let mut chunk = [0u8; 32];
        let mut at = self.base;
        while at < end {
            let n = chunk.len().min((end - at) as usize);
            self.flash
                .read(at, &mut chunk[..n])
                .map_err(|_| StorageError::Io)?;
            if chunk[..n].iter().any(|b| *b != 0xff) {
                return Err(StorageError::Io);
            }
            at += n as u32;
        }
        Ok(())
    }
}

/// NOR flash in RAM, for testing firmware on a host and for fuzzing: like
/// real NOR flash, erasing sets bytes to `0xFF` and writing can only clear
/// bits; erases must cover whole 1 KiB sectors and writes whole 4-byte
/// words. [`RamFlash::cut_power_after`] makes a write fail part way, as a
/// power cut would.
///
/// ```
/// use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
/// use lanyard_nostd::flash::RamFlash;
///
/// let mut flash = RamFlash::<2048>::new();
/// flash.write(0, &[0x0f, 0xf0, 0x00, 0xff]).unwrap();
/// flash.write(0, &[0xff, 0x0f, 0xff, 0xff]).unwrap(); // bits only clear
/// let mut word = [0u8; 4];
/// flash.read(0, &mut word).unwrap();
/// assert_eq!(word, [0x0f, 0x00, 0x00, 0xff]);
/// assert!(flash.write(2, &[0; 4]).is_err()); // not on a word boundary
/// flash.erase(0, 1024).unwrap();
/// assert_eq!(flash.bytes()[..4], [0xff; 4]);
/// ```
pub struct RamFlash<const N: usize> {
    mem: [u8; N],
    cut_after: Option<usize>,
    written: usize,
}

/// Why a [`RamFlash`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFlashError {
    /// Outside the flash.
    OutOfBounds,
    /// Not on a sector (erase) or word (write) boundary.
    NotAligned,
    /// The simulated power cut happened during this write.
    PowerCut,
}

impl embedded_storage::nor_flash::NorFlashError for RamFlashError {
    fn kind(&self) -> embedded_storage::nor_flash::NorFlashErrorKind {
        use embedded_storage::nor_flash::NorFlashErrorKind as Kind;
        match self {
            RamFlashError::OutOfBounds => Kind::OutOfBounds,
            RamFlashError::NotAligned => Kind::NotAligned,
            RamFlashError::PowerCut => Kind::Other,
        }
    }
}

impl<const N: usize> RamFlash<N> {
    /// Erased flash of `N` bytes.
    pub const fn new() -> Self {
        RamFlash {
            mem: [0xFF; N],
            cut_after: None,
            written: 0,
        }
    }

    /// The whole content.
    pub fn bytes(&self) -> &[u8] {
        &self.mem
    }

    /// The whole content, to lay down an image (say, a damaged one).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem
    }

    /// Bytes written since creation.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Lets `bytes` more bytes be written, then fails every write as if
    /// the power had gone; `None` restores the power.
    pub fn cut_power_after(&mut self, bytes: Option<usize>) {
        self.cut_after = bytes.map(|b| self.written.saturating_add(b));
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, RamFlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(RamFlashError::OutOfBounds)?;
        if end > N {
            return Err(RamFlashError::OutOfBounds);
        }
        Ok(start..end)
    }
}

impl<const N: usize> Default for RamFlash<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> embedded_storage::nor_flash::ErrorType for RamFlash<N> {
    type Error = RamFlashError;
}

impl<const N: usize> embedded_storage::nor_flash::ReadNorFlash for RamFlash<N> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> NorFlash for RamFlash<N> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        if from > to {
            return Err(RamFlashError::OutOfBounds);
        }
        let r = self.range(from, (to - from) as usize)?;
        if r.start % Self::ERASE_SIZE != 0 || r.end % Self::ERASE_SIZE != 0 {
            return Err(RamFlashError::NotAligned);
        }
        self.mem[r].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        let r = self.range(offset, bytes.len())?;
        if r.start % Self::WRITE_SIZE != 0 || r.len() % Self::WRITE_SIZE != 0 {
            return Err(RamFlashError::NotAligned);
        }
        for (cell, b) in self.mem[r].iter_mut().zip(bytes) {
            if self.cut_after.is_some_and(|c| self.written >= c) {
                return Err(RamFlashError::PowerCut);
            }
            *cell &= b;
            self.written += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    type Flash = RamFlash<{ 8 * 1024 }>;

    #[test]
    fn the_update_record_is_kept_only_when_asked_for_and_wiped_with_the_rest() {
        let mut plain = store();
        assert_eq!(
            plain.store(StorageSlot::UpdateRecord, b"blocks"),
            Err(StorageError::TooLarge)
        );
        assert_eq!(plain.load(StorageSlot::UpdateRecord, &mut [0u8; 16]), Ok(0));
        // Sectors past the four of a plain store are not its to erase.
        let mut flash = plain.into_inner();
        flash.write(5 * 1024, &[0x11; 4]).unwrap();
        let mut plain = FlashStore::new(flash, 0, 1024);
        plain.wipe().unwrap();
        assert_eq!(plain.into_inner().bytes()[5 * 1024], 0x11);

        let mut s = FlashStore::new(Flash::new(), 0, 1024).with_update_record();
        s.store(StorageSlot::AgentState, b"state").unwrap();
        s.store(StorageSlot::UpdateRecord, b"blocks").unwrap();
        s.store(StorageSlot::UpdateRecord, b"more blocks").unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(s.load(StorageSlot::UpdateRecord, &mut buf), Ok(11));
        assert_eq!(&buf[..11], b"more blocks");
        assert_eq!(s.load(StorageSlot::AgentState, &mut buf), Ok(5));
        s.wipe().unwrap();
        assert_eq!(s.load(StorageSlot::UpdateRecord, &mut buf), Ok(0));
        assert!(
            s.into_inner().bytes()[..6 * 1024]
                .iter()
                .all(|b| *b == 0xff)
        );
    }

    fn store() -> FlashStore<Flash> {
        FlashStore::new(Flash::new(), 0, 1024)
    }

    fn load(s: &mut FlashStore<Flash>, slot: StorageSlot) -> Vec<u8> {
        let mut buf = [0u8; 1024];
        let n = s.load(slot, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// A flash whose erase reports success and does nothing.
    struct StuckFlash(Flash);

    impl embedded_storage::nor_flash::ErrorType for StuckFlash {
        type Error = <Flash as embedded_storage::nor_flash::ErrorType>::Error;
    }

    impl embedded_storage::nor_flash::ReadNorFlash for StuckFlash {
        const READ_SIZE: usize = 1;
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            self.0.read(offset, bytes)
        }
        fn capacity(&self) -> usize {
            self.0.capacity()
        }
    }

    impl NorFlash for StuckFlash {
        const WRITE_SIZE: usize = Flash::WRITE_SIZE;
        const ERASE_SIZE: usize = Flash::ERASE_SIZE;
        fn erase(&mut self, _from: u32, _to: u32) -> Result<(), Self::Error> {
            Ok(())
        }
        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
            self.0.write(offset, bytes)
        }
    }

    #[test]
    fn a_wipe_is_read_back_and_a_flash_that_kept_the_keys_is_an_error() {
        let mut s = store();
        s.store(StorageSlot::Credentials, b"private key").unwrap();
        s.wipe().unwrap();
        assert_eq!(load(&mut s, StorageSlot::Credentials), b"");
        let mut stuck = FlashStore::new(StuckFlash(Flash::new()), 0, 1024);
        stuck
            .store(StorageSlot::Credentials, b"private key")
            .unwrap();
        assert_eq!(stuck.wipe(), Err(StorageError::Io));
    }

    #[test]
    fn records_alternate_sectors_and_the_newest_wins() {
        let mut s = store();
        assert_eq!(load(&mut s, StorageSlot::AgentState), b"");
        for i in 0..5u8 {
            let rec = std::vec![i; 10 + i as usize];
            s.store(StorageSlot::AgentState, &rec).unwrap();
            assert_eq!(load(&mut s, StorageSlot::AgentState), rec);
        }
        s.store(StorageSlot::Credentials, b"key").unwrap();
        assert_eq!(load(&mut s, StorageSlot::Credentials), b"key");
        assert_eq!(load(&mut s, StorageSlot::AgentState), std::vec![4u8; 14]);
        assert_eq!(
            s.store(StorageSlot::AgentState, &[0u8; 1020]),
            Err(StorageError::TooLarge)
        );
        s.wipe().unwrap();
        assert_eq!(load(&mut s, StorageSlot::AgentState), b"");
        assert_eq!(load(&mut s, StorageSlot::Credentials), b"");
    }

    #[test]
    fn a_record_written_in_pieces_is_the_record_written_whole() {
        let record: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let mut whole = store();
        whole.store(StorageSlot::AgentState, &record).unwrap();
        let mut pieces = store();
        pieces
            .store_with(StorageSlot::AgentState, record.len(), &mut |sink| {
                // Pieces of 1 to 9 bytes, like an encoder's.
                let mut rest = &record[..];
                let mut n = 1;
                while !rest.is_empty() {
                    let (piece, after) = rest.split_at(n.min(rest.len()));
                    sink(piece)?;
                    rest = after;
                    n = n % 9 + 1;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(pieces.into_inner().bytes(), whole.into_inner().bytes());
    }

    #[test]
    fn a_writer_that_breaks_its_length_leaves_the_old_record() {
        let mut s = store();
        s.store(StorageSlot::AgentState, b"old").unwrap();
        let more = s.store_with(StorageSlot::AgentState, 3, &mut |sink| sink(b"four"));
        assert_eq!(more, Err(StorageError::TooLarge));
        let fewer = s.store_with(StorageSlot::AgentState, 5, &mut |sink| sink(b"two"));
        assert_eq!(fewer, Err(StorageError::TooLarge));
        let failing = s.store_with(StorageSlot::AgentState, 4, &mut |sink| {
            sink(b"ab")?;
            Err(StorageError::Io)
        });
        assert_eq!(failing, Err(StorageError::Io));
        assert_eq!(load(&mut s, StorageSlot::AgentState), b"old");
    }

    #[test]
    fn a_header_claiming_more_than_its_sector_is_no_record() {
        let mut s = store();
        s.store(StorageSlot::AgentState, b"kept").unwrap();
        let mut flash = s.into_inner();
        // A newer header in the other half, with lengths no sector holds
        // (u32::MAX would wrap `len + HEADER_LEN` on a 32-bit target).
        for len in [1009u32, u32::MAX - 8, u32::MAX] {
            let h = &mut flash.bytes_mut()[1024..1024 + HEADER_LEN];
            h.fill(0xFF);
            h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            h[4..8].copy_from_slice(&7u32.to_le_bytes());
            h[8..12].copy_from_slice(&len.to_le_bytes());
            let mut s2 = FlashStore::new(flash, 0, 1024);
            assert_eq!(load(&mut s2, StorageSlot::AgentState), b"kept");
            flash = s2.into_inner();
        }
    }

    proptest::proptest! {
        #[test]
        fn power_cuts_at_any_byte_leave_the_last_complete_record(
            cuts in proptest::collection::vec(0usize..120, 1..4),
            lens in proptest::collection::vec(1usize..60, 4),
        ) {
            let mut s = store();
            s.store(StorageSlot::AgentState, &[1, 2, 3]).unwrap();
            let mut last = std::vec![1u8, 2, 3];
            // Several writes in a row, each cut somewhere, each followed by a
            // "reboot" with the flash as the cut left it.
            for (i, cut) in cuts.iter().enumerate() {
                let rec = std::vec![i as u8 + 10; lens[i]];
                let mut flash = s.into_inner();
                flash.cut_power_after(Some(*cut));
                let mut cut_store = FlashStore::new(flash, 0, 1024);
                let wrote = cut_store.store(StorageSlot::AgentState, &rec).is_ok();
                let mut flash = cut_store.into_inner();
                flash.cut_power_after(None);
                s = FlashStore::new(flash, 0, 1024);
                if wrote {
                    last = rec;
                }
                proptest::prop_assert_eq!(load(&mut s, StorageSlot::AgentState), last.clone());
            }
        }
    }
}
