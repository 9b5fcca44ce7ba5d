//! Firmware updates on this board (the `update` feature): the image slot
//! and the download record on "flash", the self-test a new image runs on
//! its trial boot, and the restart.
//!
//! qemu does not emulate the flash controller, so the "flash" here is the
//! upper 96 KiB of the SRAM (memory/update.x leaves the firmware the first
//! 32 KiB) with NOR flash's rules (erase sets bytes to 0xFF in 1 KiB
//! sectors, writes only clear bits). It keeps its
//! contents across a reset; the test harness, playing the bootloader,
//! saves it when the firmware resets and loads it back at the next boot,
//! as a board's flash would keep it. On a board, pass the HAL's flash
//! driver (the second bank, or the sectors above the running image) to the
//! same `FlashSlot` and `FlashStore`, and let MCUboot boot the slot: see
//! README.md, "Firmware updates".

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use lanyard_core::update::UpdateSession;
use lanyard_nostd::flash::FlashStore;
use lanyard_nostd::hal::SensorReading;
use lanyard_nostd::update_slot::{BootRequest, FlashSlot};

/// Where the "flash" is: the SRAM above the firmware's 32 KiB.
pub const FLASH_BASE: usize = 0x2000_8000;
/// Its size.
const FLASH_SIZE: u32 = 96 * 1024;
/// Its erase unit.
pub const SECTOR: u32 = 1024;
/// The download record (and the agent's slots) at the start: six sectors.
const STORE_BASE: u32 = 0;
/// The image slot, after the store; its trailer takes the sector after it.
pub const SLOT_BASE: u32 = 8 * 1024;
/// The image slot's size: what an image may be.
pub const SLOT_SIZE: u32 = 80 * 1024;

/// The fleet's Ed25519 public key, given at build time
/// (`LANYARD_FLEET_KEY`, 64 hex digits; see build.rs).
pub const FLEET_KEY: [u8; 32] = include!(concat!(env!("OUT_DIR"), "/fleet_key.rs"));

/// The slot the firmware downloads into.
pub type Slot = FlashSlot<SramFlash>;

/// The "flash" of this board: NOR flash rules on the upper SRAM.
/// A handle: the store and the slot each hold one, over disjoint sectors.
#[derive(Debug, Clone, Copy)]
pub struct SramFlash;

/// A "flash" operation outside the region or not aligned.
#[derive(Debug, Clone, Copy)]
pub struct SramError(NorFlashErrorKind);

impl NorFlashError for SramError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

impl ErrorType for SramFlash {
    type Error = SramError;
}

fn check(offset: u32, len: usize, align: u32) -> Result<(), SramError> {
    let end = offset as u64 + len as u64;
    if end > u64::from(FLASH_SIZE) {
        return Err(SramError(NorFlashErrorKind::OutOfBounds));
    }
    if !offset.is_multiple_of(align) || !(len as u32).is_multiple_of(align) {
        return Err(SramError(NorFlashErrorKind::NotAligned));
    }
    Ok(())
}

fn cell(offset: u32) -> *mut u8 {
    (FLASH_BASE + offset as usize) as *mut u8
}

impl ReadNorFlash for SramFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        check(offset, bytes.len(), 1)?;
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: inside the stand-in flash (checked above), SRAM that
            // no Rust object occupies: memory/update.x gives the linker
            // only the 32 KiB below it, stack included.
            *b = unsafe { cell(offset + i as u32).read_volatile() };
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        FLASH_SIZE as usize
    }
}

impl NorFlash for SramFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR as usize;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if to < from {
            return Err(SramError(NorFlashErrorKind::OutOfBounds));
        }
        check(from, (to - from) as usize, SECTOR)?;
        for at in from..to {
            // SAFETY: as in `read`.
            unsafe { cell(at).write_volatile(0xff) };
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check(offset, bytes.len(), 4)?;
        for (i, b) in bytes.iter().enumerate() {
            let p = cell(offset + i as u32);
            // Writing only clears bits, as on NOR flash.
            // SAFETY: as in `read`.
            unsafe { p.write_volatile(p.read_volatile() & b) };
        }
        Ok(())
    }
}

/// The store that keeps the download record (and, with the
/// `persistence` feature, the agent's state).
pub fn store() -> FlashStore<SramFlash> {
    FlashStore::new(SramFlash, STORE_BASE, SECTOR).with_update_record()
}

/// The largest block the firmware's 256-byte messages hold (the block's
/// job id, index and CBOR heads take the rest); a job with larger blocks
/// is refused as `bad_block`.
pub const MAX_BLOCK: u16 = 192;

/// The update session on the image slot.
pub fn session() -> UpdateSession<Slot> {
    UpdateSession::new(
        FLEET_KEY,
        FlashSlot::new(SramFlash, SLOT_BASE, SLOT_SIZE, SECTOR),
    )
    .with_max_block_size(MAX_BLOCK)
}

/// Whether this boot runs the new image on trial: its slot asks for a
/// trial, neither confirmed nor reverted (a bootloader that gave up on
/// the trial marks it reverted before it boots the old image).
pub fn running_trial(session: &mut UpdateSession<Slot>) -> bool {
    session.slot_mut().boot_request() == Ok(BootRequest::Trial)
}

/// What a new image checks on its trial boot before it is kept: the
/// sensor answers with a plausible reading. An image built with
/// `LANYARD_SELF_TEST=fail` fails it, to show a rollback.
pub fn self_test(read: impl FnOnce() -> Option<SensorReading>) -> bool {
    if option_env!("LANYARD_SELF_TEST") == Some("fail") {
        return false;
    }
    matches!(read(), Some(r) if (-40.0..=85.0).contains(&r.temperature_c))
}

/// Resets the chip: the bootloader then boots the image the slot asks for.
pub fn restart() -> ! {
    cortex_m::peripheral::SCB::sys_reset()
}
