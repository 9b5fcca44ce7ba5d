//! Firmware updates on the device, sans-I/O like the agent: a job announces
//! a signed image; the [`Updater`] decides whether to take it, asks for its
//! blocks a few at a time (asking again for those that do not come), writes
//! each through the platform's [`UpdateSlot`] (the inactive one of two),
//! and keeps which blocks it has in a record the platform saves after every
//! block, so that a reboot or a lost connection resumes where it stopped.
//! With every block in, it checks the image's SHA-256 and the fleet's
//! Ed25519 signature of its manifest, and the slot is marked for one trial
//! boot. The new image's self-test confirms it; a failure, or a restart
//! before confirming, brings the old one back (test / confirm / revert, as
//! MCUboot does it). Every state is reported to the cloud.
//!
//! The driver moves the messages and calls the platform; the rules are
//! here. Behind the `update` cargo feature.
//!
//! ```
//! use lanyard_core::update::{Updater, Offer, UpdateSlot, SlotError};
//! use lanyard_core::update::messages::UpdateState;
//! use lanyard_core::update::messages::{Block, UpdateJob};
//!
//! // A slot in RAM (a real one writes the inactive flash bank).
//! struct Ram(Vec<u8>, bool);
//! impl UpdateSlot for Ram {
//!     fn capacity(&self) -> u32 { 4096 }
//!     fn erase(&mut self) -> Result<(), SlotError> { self.0 = vec![0xff; 4096]; Ok(()) }
//!     fn write(&mut self, at: u32, data: &[u8]) -> Result<(), SlotError> {
//!         self.0[at as usize..at as usize + data.len()].copy_from_slice(data); Ok(())
//!     }
//!     fn read(&mut self, at: u32, buf: &mut [u8]) -> Result<(), SlotError> {
//!         buf.copy_from_slice(&self.0[at as usize..at as usize + buf.len()]); Ok(())
//!     }
//!     fn mark_trial(&mut self) -> Result<(), SlotError> { self.1 = true; Ok(()) }
//!     fn confirm(&mut self) -> Result<(), SlotError> { Ok(()) }
//!     fn revert(&mut self) -> Result<(), SlotError> { Ok(()) }
//! }
//!
//! // The operator signs the manifest with the fleet's key.
//! let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
//! let image = [0x42u8; 1000];
//! let mut job = UpdateJob {
//!     job_id: "job-1", version: "1.1.0", size: 1000,
//!     sha256: lanyard_core::update::sha256(&image), signature: [0; 64],
//!     block_size: 256, allow_downgrade: false, force: false,
//! };
//! let mut manifest = [0u8; lanyard_core::update::messages::MANIFEST_MAX];
//! let n = job.manifest(&mut manifest).unwrap();
//! job.signature = *pair.sk.sign(&manifest[..n], None);
//!
//! // The device takes it, downloads it, verifies it.
//! let mut updater = Updater::new(*pair.pk);
//! let mut slot = Ram(Vec::new(), false);
//! updater.offer(&job, Offer { running_version: "1.0.0", slot_capacity: 4096, degraded: false }).unwrap();
//! slot.erase().unwrap();
//! for (i, chunk) in image.chunks(256).enumerate() {
//!     updater.block(&Block { job_id: "job-1", index: i as u32, data: chunk }, &mut slot).unwrap();
//! }
//! updater.verify(&mut slot, &mut [0u8; 128]).unwrap();
//! assert_eq!(updater.state(), Some(UpdateState::Verified));
//! assert!(slot.1); // marked for its trial boot
//! ```

pub mod messages;
pub mod session;

use heapless::String;
use minicbor::Encoder;
use sha2::{Digest, Sha256};

use crate::agent::messages::{read_code, req, whole};
use crate::error::{DecodeError, Error};
use crate::wire::{cbor, each_field};
pub use session::{Running, UpdateSession};

use messages::{
    Block, MANIFEST_MAX, MAX_BLOCK_SIZE, MAX_JOB_ID, MAX_VERSION, UpdateJob, UpdateReason,
    UpdateReport, UpdateState,
};

/// The most blocks an image may have (its size over its block size): the
/// record keeps one bit for each.
pub const MAX_BLOCKS: u32 = 2048;
/// Blocks asked for and not received yet, at most.
pub const WINDOW: usize = 4;
/// How long a block asked for may take before it is asked again (ms).
pub const BLOCK_TIMEOUT_MS: u64 = 5_000;
/// The largest saved record (bytes).
pub const RECORD_MAX: usize = 64 + MAX_JOB_ID + MAX_VERSION + 32 + 64 + (MAX_BLOCKS as usize) / 8;

/// A slot failed: the medium refused a write, read or switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotError;

/// The platform's inactive image slot, and its bootloader's switch.
pub trait UpdateSlot {
    /// Bytes it holds.
    fn capacity(&self) -> u32;
    /// Erases it before an image is written.
    fn erase(&mut self) -> Result<(), SlotError>;
    /// Writes `data` at `offset` (each block once, in any order).
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), SlotError>;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), SlotError>;
    /// Boots this slot once at the next restart; unless confirmed there,
    /// the restart after brings the old image back.
    fn mark_trial(&mut self) -> Result<(), SlotError>;
    /// Keeps the running trial image for good.
    fn confirm(&mut self) -> Result<(), SlotError>;
    /// Brings the old image back at the next restart.
    fn revert(&mut self) -> Result<(), SlotError>;
}

/// The SHA-256 of `bytes` (what an operator puts in a job).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What the device knows when a job is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer<'a> {
    /// The running image's version.
    pub running_version: &'a str,
    /// The inactive slot's size.
    pub slot_capacity: u32,
    /// Whether the device is in degraded mode (low battery, bad health).
    pub degraded: bool,
}

/// How an offered job was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A new job: erase the slot, then save the record.
    Started,
    /// The job under way, offered again: its blocks are kept.
    Resumed,
    /// A job this device finished (accepted or rejected), offered again:
    /// nothing changes, and its outcome is reported again (the cloud may
    /// have missed it).
    Finished,
}

/// What a block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written; this many of the image's blocks are in.
    Progress {
        /// Blocks in.
        received: u32,
        /// Blocks in all.
        total: u32,
    },
    /// Written, and it was the last one missing: verify now.
    Complete,
    /// Had it already (a block asked twice and sent twice): nothing
    /// written.
    Duplicate,
    /// Not for the job under way: ignored.
    OtherJob,
}

/// The job under way: what the record keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    id: String<MAX_JOB_ID>,
    version: String<MAX_VERSION>,
    size: u32,
    sha256: [u8; 32],
    signature: [u8; 64],
    block_size: u16,
    have: [u8; (MAX_BLOCKS as usize) / 8],
    received: u32,
    state: UpdateState,
    reason: Option<UpdateReason>,
}

impl Job {
    fn total(&self) -> u32 {
        messages::blocks(self.size, self.block_size)
    }

    fn has(&self, i: u32) -> bool {
        self.have[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    fn first_missing(&self, from: u32, skip: &[Option<(u32, u64)>]) -> Option<u32> {
        (from..self.total())
            .chain(0..from)
            .find(|&i| !self.has(i) && !skip.iter().flatten().any(|(j, _)| *j == i))
    }
}

/// Compares dotted versions number by number (`1.10.0` is newer than
/// `1.9.2`); a part that is not a number compares as text.
fn newer(candidate: &str, running: &str) -> bool {
    let mut a = candidate.split('.');
    let mut b = running.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return false,
            (Some(_), None) => return true,
            (None, Some(_)) => return false,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                match order {
                    core::cmp::Ordering::Equal => continue,
                    o => return o == core::cmp::Ordering::Greater,
                }
            }
        }
    }
}

/// The device's side of firmware updates. See the [module](self).
#[derive(Debug, Clone)]
pub struct Updater {
    key: [u8; 32],
    job: Option<Job>,
    asked: [Option<(u32, u64)>; WINDOW],
}

impl Updater {
    /// An updater trusting images signed by the fleet's Ed25519 `key`.
    pub fn new(key: [u8; 32]) -> Self {
        Updater {
            key,
            job: None,
            asked: [None; WINDOW],
        }
    }

    /// The state of the job under way (or the last one), if any.
    pub fn state(&self) -> Option<UpdateState> {
        self.job.as_ref().map(|j| j.state)
    }

    /// Why the last job was rejected or aborted.
    pub fn reason(&self) -> Option<UpdateReason> {
        self.job.as_ref().and_then(|j| j.reason)
    }

    /// Takes `job` or says why not. A job already under way with the same
    /// id is taken again as it stands (its blocks kept). A job
    /// [started](Taken::Started) needs its slot erased before the
    /// [record](Updater::save) is saved.
    pub fn offer(&mut self, job: &UpdateJob<'_>, at: Offer<'_>) -> Result<Taken, UpdateReason> {
        if let Some(current) = &self.job {
            if current.id.as_str() == job.job_id {
                match current.state {
                    UpdateState::Accepted | UpdateState::Rejected => return Ok(Taken::Finished),
                    // An aborted job starts over.
                    UpdateState::Aborted => {}
                    _ => return Ok(Taken::Resumed),
                }
            }
            if !current.state.is_final() {
                return Err(UpdateReason::Busy);
            }
        }
        if job.size > at.slot_capacity || job.blocks() > MAX_BLOCKS {
            return Err(UpdateReason::TooLarge);
        }
        if !job.allow_downgrade && !newer(job.version, at.running_version) {
            return Err(UpdateReason::Downgrade);
        }
        if at.degraded && !job.force {
            return Err(UpdateReason::Degraded);
        }
        if job.block_size == 0 || job.block_size > MAX_BLOCK_SIZE {
            return Err(UpdateReason::BadBlock);
        }
        let (Ok(id), Ok(version)) = (String::try_from(job.job_id), String::try_from(job.version))
        else {
            return Err(UpdateReason::TooLarge);
        };
        self.job = Some(Job {
            id,
            version,
            size: job.size,
            sha256: job.sha256,
            signature: job.signature,
            block_size: job.block_size,
            have: [0; (MAX_BLOCKS as usize) / 8],
            received: 0,
            state: UpdateState::Downloading,
            reason: None,
        });
        self.asked = [None; WINDOW];
        Ok(Taken::Started)
    }

    /// When a block asked for will be due to be asked again, if any is
    /// awaited.
    pub fn next_ask(&self) -> Option<u64> {
        if self.state() != Some(UpdateState::Downloading) {
            return None;
        }
        self.asked
            .iter()
            .flatten()
            .map(|(_, at)| at + BLOCK_TIMEOUT_MS)
            .min()
    }

    /// The job under way fails on the device's side (its slot cannot be
    /// erased): aborted with `reason`.
    pub fn abort(&mut self, reason: UpdateReason) {
        if let Some(job) = self.job.as_mut().filter(|j| !j.state.is_final()) {
            job.state = UpdateState::Aborted;
            job.reason = Some(reason);
        }
    }

    /// The blocks to ask for now (at most [`WINDOW`] in flight; one not
    /// received [`BLOCK_TIMEOUT_MS`] after it was asked is asked again),
    /// into `out`; how many.
    pub fn wanted(&mut self, now_ms: u64, out: &mut [u32; WINDOW]) -> usize {
        let Some(job) = self
            .job
            .as_ref()
            .filter(|j| j.state == UpdateState::Downloading)
        else {
            return 0;
        };
        let mut n = 0;
        for k in 0..WINDOW {
            let due = match self.asked[k] {
                None => true,
                Some((i, at)) => job.has(i) || now_ms.saturating_sub(at) >= BLOCK_TIMEOUT_MS,
            };
            if !due {
                continue;
            }
            // A block asked long ago and still missing is asked again;
            // else the next one nobody asked for.
            let index = match self.asked[k] {
                Some((i, _)) if !job.has(i) => Some(i),
                _ => {
                    let from = self
                        .asked
                        .iter()
                        .flatten()
                        .map(|(i, _)| i + 1)
                        .max()
                        .unwrap_or(0);
                    job.first_missing(from % job.total().max(1), &self.asked)
                }
            };
            match index {
                Some(i) => {
                    self.asked[k] = Some((i, now_ms));
                    out[n] = i;
                    n += 1;
                }
                None => self.asked[k] = None,
            }
        }
        n
    }

    /// Takes one block: writes it at its place in `slot` and marks it
    /// received. A block of the wrong size or out of range is refused
    /// (nothing written, the download goes on).
    pub fn block<S: UpdateSlot>(
        &mut self,
        block: &Block<'_>,
        slot: &mut S,
    ) -> Result<Stored, UpdateReason> {
        let Some(job) = self.job.as_mut() else {
            return Ok(Stored::OtherJob);
        };
        if job.id.as_str() != block.job_id || job.state != UpdateState::Downloading {
            return Ok(Stored::OtherJob);
        }
        let total = job.total();
        if block.index >= total {
            return Err(UpdateReason::BadBlock);
        }
        let bs = u32::from(job.block_size);
        let offset = block.index * bs;
        let expected = (job.size - offset).min(bs) as usize;
        if block.data.len() != expected {
            return Err(UpdateReason::BadBlock);
        }
        if job.has(block.index) {
            return Ok(Stored::Duplicate);
        }
        slot.write(offset, block.data)
            .map_err(|_| UpdateReason::Storage)?;
        job.have[(block.index / 8) as usize] |= 1 << (block.index % 8);
        job.received += 1;
        for a in self.asked.iter_mut() {
            if matches!(a, Some((i, _)) if *i == block.index) {
                *a = None;
            }
        }
        if job.received == total {
            job.state = UpdateState::Verifying;
            Ok(Stored::Complete)
        } else {
            Ok(Stored::Progress {
                received: job.received,
                total,
            })
        }
    }

    /// Checks the complete image in `slot` (read back through `buf`): its
    /// SHA-256 against the job's, and the fleet's signature of its
    /// manifest. Verified, the slot is marked for a trial boot and the
    /// platform restarts; refused, the job is rejected with the reason and
    /// the running image is untouched.
    pub fn verify<S: UpdateSlot>(
        &mut self,
        slot: &mut S,
        buf: &mut [u8],
    ) -> Result<(), UpdateReason> {
        let Some(job) = self
            .job
            .as_mut()
            .filter(|j| j.state == UpdateState::Verifying)
        else {
            return Err(UpdateReason::Busy);
        };
        let outcome = check(job, &self.key, slot, buf)
            .and_then(|()| slot.mark_trial().map_err(|_| UpdateReason::Storage));
        match outcome {
            Ok(()) => job.state = UpdateState::Verified,
            Err(r) => {
                job.state = UpdateState::Rejected;
                job.reason = Some(r);
            }
        }
        outcome
    }

    /// At boot, after the record was [resumed](Updater::resume): whether
    /// the running image is the trial one (the platform's bootloader
    /// says). A verified job now runs on trial (its self-test decides); one
    /// that was on trial and is not any more was rolled back by a restart
    /// before it was confirmed.
    pub fn booted(&mut self, running_trial: bool) {
        let Some(job) = self.job.as_mut() else {
            return;
        };
        match (job.state, running_trial) {
            (UpdateState::Verified, true) => job.state = UpdateState::Testing,
            (UpdateState::Verified | UpdateState::Testing, false) => {
                job.state = UpdateState::Rejected;
                job.reason = Some(UpdateReason::ResetBeforeConfirm);
            }
            _ => {}
        }
    }

    /// The new image's self-test finished: passed, the slot is confirmed
    /// and the job accepted; failed, the slot is reverted (the platform
    /// restarts into the old image) and the job rejected.
    pub fn self_test<S: UpdateSlot>(
        &mut self,
        passed: bool,
        slot: &mut S,
    ) -> Result<(), UpdateReason> {
        let Some(job) = self
            .job
            .as_mut()
            .filter(|j| j.state == UpdateState::Testing)
        else {
            return Err(UpdateReason::Busy);
        };
        if passed {
            slot.confirm().map_err(|_| UpdateReason::Storage)?;
            job.state = UpdateState::Accepted;
        } else {
            slot.revert().map_err(|_| UpdateReason::Storage)?;
            job.state = UpdateState::Rejected;
            job.reason = Some(UpdateReason::SelfTestFailed);
        }
        Ok(())
    }

    /// The cloud cancelled the job under way (before its trial boot).
    pub fn cancel(&mut self, job_id: &str) {
        if let Some(job) = self.job.as_mut() {
            let before_trial = matches!(
                job.state,
                UpdateState::Available | UpdateState::Downloading | UpdateState::Verifying
            );
            if job.id.as_str() == job_id && before_trial {
                job.state = UpdateState::Aborted;
                job.reason = Some(UpdateReason::Cancelled);
            }
        }
    }

    /// The report of the job, if any.
    pub fn report(&self, time_ms: u64) -> Option<UpdateReport<'_>> {
        let job = self.job.as_ref()?;
        Some(UpdateReport {
            job_id: &job.id,
            state: job.state,
            received: job.received,
            total: job.total(),
            reason: job.reason,
            time_ms,
        })
    }

    /// The record to save (after every block and every change of state):
    /// the job, the blocks received, the state. Into `out`; its length (0
    /// when there is no job).
    pub fn save(&self, out: &mut [u8]) -> Result<usize, Error> {
        let Some(job) = &self.job else {
            return Ok(0);
        };
        Ok(cbor::encode_into(out, |e: &mut Encoder<_>| {
            e.map(9 + u64::from(job.reason.is_some()))?;
            e.u8(0)?.str(&job.id)?;
            e.u8(1)?.str(&job.version)?;
            e.u8(2)?.u32(job.size)?;
            e.u8(3)?.bytes(&job.sha256)?;
            e.u8(4)?.bytes(&job.signature)?;
            e.u8(5)?.u16(job.block_size)?;
            let used = (job.total() as usize).div_ceil(8);
            e.u8(6)?.bytes(&job.have[..used])?;
            e.u8(7)?.u32(job.received)?;
            e.u8(8)?.u8(job.state.code())?;
            if let Some(r) = job.reason {
                e.u8(9)?.u8(r.code())?;
            }
            Ok(())
        })?)
    }

    /// Takes back a saved record at boot. One that does not read, or whose
    /// counts disagree with its bitmap, is an error and nothing changes
    /// (the platform then drops it: the job starts over when offered).
    pub fn resume(&mut self, record: &[u8]) -> Result<(), Error> {
        let job = whole(record, |d| {
            let (mut id, mut version, mut size, mut sha, mut sig, mut bs) =
                (None, None, None, None, None, None);
            let (mut have, mut received, mut state, mut reason) = (None, None, None, None);
            each_field(d, |k, d| {
                let at = d.position();
                let bad = |what| DecodeError::Malformed { what, at };
                match k {
                    0 => {
                        id = Some(
                            String::try_from(cbor::read_str(d)?).map_err(|_| bad("a job id"))?,
                        )
                    }
                    1 => {
                        version = Some(
                            String::try_from(cbor::read_str(d)?).map_err(|_| bad("a version"))?,
                        )
                    }
                    2 => size = Some(u32::try_from(cbor::read_u64(d)?).map_err(|_| bad("a size"))?),
                    3 => {
                        sha = Some(
                            <[u8; 32]>::try_from(cbor::read_bytes(d)?)
                                .map_err(|_| bad("a SHA-256"))?,
                        )
                    }
                    4 => {
                        sig = Some(
                            <[u8; 64]>::try_from(cbor::read_bytes(d)?)
                                .map_err(|_| bad("a signature"))?,
                        )
                    }
                    5 => {
                        let b = cbor::read_u64(d)?;
                        if b == 0 || b > u64::from(MAX_BLOCK_SIZE) {
                            return Err(bad("a block size"));
                        }
                        bs = Some(b as u16);
                    }
                    6 => {
                        let b = cbor::read_bytes(d)?;
                        let mut bits = [0u8; (MAX_BLOCKS as usize) / 8];
                        bits.get_mut(..b.len())
                            .ok_or(bad("a block bitmap"))?
                            .copy_from_slice(b);
                        have = Some(bits);
                    }
                    7 => {
                        received =
                            Some(u32::try_from(cbor::read_u64(d)?).map_err(|_| bad("a count"))?)
                    }
                    8 => state = Some(read_code(d, UpdateState::from_code, "an update state")?),
                    9 => reason = Some(read_code(d, UpdateReason::from_code, "an update reason")?),
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            let job = Job {
                id: req(id, "job_id")?,
                version: req(version, "version")?,
                size: req(size, "size")?,
                sha256: req(sha, "sha256")?,
                signature: req(sig, "signature")?,
                block_size: req(bs, "block_size")?,
                have: req(have, "have")?,
                received: req(received, "received")?,
                state: req(state, "state")?,
                reason,
            };
            // The counts must agree with the bitmap, and no bit past the
            // image's last block may be set.
            // More blocks than the bitmap holds (a small block size for
            // the size) is refused before the bitmap is looked at.
            let total = job.total();
            let bad = DecodeError::Malformed {
                what: "an update record",
                at: 0,
            };
            if total > MAX_BLOCKS || job.size == 0 {
                return Err(bad);
            }
            let counted: u32 = job.have.iter().map(|b| b.count_ones()).sum();
            let inside = (0..total).filter(|&i| job.has(i)).count() as u32;
            if counted != job.received || inside != counted {
                return Err(bad);
            }
            Ok(job)
        })?;
        self.job = Some(job);
        self.asked = [None; WINDOW];
        Ok(())
    }
}

/// The image's digest, then the signature of its manifest.
fn check<S: UpdateSlot>(
    job: &Job,
    key: &[u8; 32],
    slot: &mut S,
    buf: &mut [u8],
) -> Result<(), UpdateReason> {
    if buf.is_empty() {
        return Err(UpdateReason::Storage);
    }
    let mut hash = Sha256::new();
    let mut at = 0u32;
    while at < job.size {
        let n = buf.len().min((job.size - at) as usize);
        slot.read(at, &mut buf[..n])
            .map_err(|_| UpdateReason::Storage)?;
        hash.update(&buf[..n]);
        at += n as u32;
    }
    let digest: [u8; 32] = hash.finalize().into();
    if digest != job.sha256 {
        return Err(UpdateReason::DigestMismatch);
    }
    let as_job = UpdateJob {
        job_id: &job.id,
        version: &job.version,
        size: job.size,
        sha256: job.sha256,
        signature: job.signature,
        block_size: job.block_size,
        allow_downgrade: false,
        force: false,
    };
    let mut manifest = [0u8; MANIFEST_MAX];
    let n = as_job
        .manifest(&mut manifest)
        .map_err(|_| UpdateReason::BadSignature)?;
    let key = ed25519_compact::PublicKey::new(*key);
    let signature = ed25519_compact::Signature::new(job.signature);
    key.verify(&manifest[..n], &signature)
        .map_err(|_| UpdateReason::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_number_by_number() {
        assert!(newer("1.10.0", "1.9.2"));
        assert!(newer("2.0", "1.99.99"));
        assert!(newer("1.0.1", "1.0"));
        assert!(!newer("1.0.0", "1.0.0"));
        assert!(!newer("1.2.0", "1.10.0"));
        assert!(newer("1.0.0-rc2", "1.0.0-rc1"));
    }
}
