//! The inactive image slot of a firmware update on `embedded-storage` NOR
//! flash ([`lanyard_core::update::UpdateSlot`]), with the bootloader's
//! requests in a trailer sector after the image.
//!
//! The trailer holds three words, each written once (all bits cleared)
//! and only by erasing the slot set again: *trial* (boot this image once),
//! *confirmed* (keep it), *reverted* (go back to the old image). NOR flash
//! writes only clear bits, so a word cut by a power failure is neither
//! erased nor all cleared: it counts as not written, and the bootloader
//! stays on the image it knows. A board with MCUboot maps these onto
//! MCUboot's own trailer (`boot_set_pending`, `boot_set_confirmed`); the
//! reference firmware's tests play the bootloader with
//! [`FlashSlot::boot_request`].

use embedded_storage::nor_flash::NorFlash;
use lanyard_core::update::{SlotError, UpdateSlot};

/// What the trailer asks of the bootloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootRequest {
    /// Nothing: boot the image that runs now.
    None,
    /// Boot the new image once, on trial.
    Trial,
    /// The new image is confirmed: keep it.
    Confirmed,
    /// Go back to the old image.
    Reverted,
}

/// The trailer's words, in order; each takes one flash write unit (at
/// least 4 bytes).
const TRIAL: u32 = 0;
const CONFIRMED: u32 = 1;
const REVERTED: u32 = 2;
/// The largest flash write unit the trailer handles.
const MAX_WORD: usize = 32;

/// An image slot of `size` bytes at `base` in `flash`, erased in sectors
/// of `sector` bytes, its trailer in the sector after it.
pub struct FlashSlot<F> {
    flash: F,
    base: u32,
    size: u32,
    sector: u32,
}

impl<F: NorFlash> FlashSlot<F> {
    /// A slot of `size` bytes (a multiple of `sector`, itself a multiple
    /// of the flash's erase size) at `base`, and its trailer sector after.
    pub fn new(flash: F, base: u32, size: u32, sector: u32) -> Self {
        FlashSlot {
            flash,
            base,
            size,
            sector,
        }
    }

    /// The flash, back.
    pub fn release(self) -> F {
        self.flash
    }

    /// The flash.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    fn trailer(&self) -> u32 {
        self.base + self.size
    }

    fn word(&self) -> usize {
        F::WRITE_SIZE.max(4)
    }

    fn set(&mut self, which: u32) -> Result<(), SlotError> {
        let n = self.word();
        if n > MAX_WORD {
            return Err(SlotError);
        }
        let at = self.trailer() + which * n as u32;
        self.flash
            .write(at, &[0u8; MAX_WORD][..n])
            .map_err(|_| SlotError)
    }

    fn is_set(&mut self, which: u32) -> Result<bool, SlotError> {
        let n = self.word();
        if n > MAX_WORD {
            return Err(SlotError);
        }
        let mut w = [0xffu8; MAX_WORD];
        self.flash
            .read(self.trailer() + which * n as u32, &mut w[..n])
            .map_err(|_| SlotError)?;
        Ok(w[..n].iter().all(|b| *b == 0))
    }

    /// What the bootloader is asked to do (a reverted slot is reverted
    /// whatever else was asked; a confirmed one is kept).
    pub fn boot_request(&mut self) -> Result<BootRequest, SlotError> {
        Ok(if self.is_set(REVERTED)? {
            BootRequest::Reverted
        } else if self.is_set(CONFIRMED)? {
            BootRequest::Confirmed
        } else if self.is_set(TRIAL)? {
            BootRequest::Trial
        } else {
            BootRequest::None
        })
    }
}

impl<F: NorFlash> UpdateSlot for FlashSlot<F> {
    fn capacity(&self) -> u32 {
        self.size
    }

    fn erase(&mut self) -> Result<(), SlotError> {
        self.flash
            .erase(self.base, self.trailer() + self.sector)
            .map_err(|_| SlotError)
    }

    /// Writes whole flash words: a block whose length is not a multiple of
    /// the word size (an image's last) is padded with erased bytes, which
    /// leave the flash as it was.
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), SlotError> {
        let end = offset.checked_add(data.len() as u32).ok_or(SlotError)?;
        if end > self.size {
            return Err(SlotError);
        }
        let word = F::WRITE_SIZE.max(1);
        let whole = data.len() - data.len() % word;
        if whole > 0 {
            self.flash
                .write(self.base + offset, &data[..whole])
                .map_err(|_| SlotError)?;
        }
        if whole < data.len() {
            let mut tail = [0xffu8; MAX_WORD];
            let rest = &data[whole..];
            if word > tail.len() {
                return Err(SlotError);
            }
            tail[..rest.len()].copy_from_slice(rest);
            self.flash
                .write(self.base + offset + whole as u32, &tail[..word])
                .map_err(|_| SlotError)?;
        }
        Ok(())
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), SlotError> {
        let end = offset.checked_add(buf.len() as u32).ok_or(SlotError)?;
        if end > self.size {
            return Err(SlotError);
        }
        self.flash
            .read(self.base + offset, buf)
            .map_err(|_| SlotError)
    }

    fn mark_trial(&mut self) -> Result<(), SlotError> {
        self.set(TRIAL)
    }

    fn confirm(&mut self) -> Result<(), SlotError> {
        self.set(CONFIRMED)
    }

    fn revert(&mut self) -> Result<(), SlotError> {
        self.set(REVERTED)
    }
}
