//! Firmware updates on a Linux device: the inactive slot as a file
//! ([`FileSlot`]), the bootloader's requests beside it, and
//! [`DeviceUpdates`], which the [driver](crate::driver::DeviceDriver) hands
//! the update topics: it takes jobs, asks for blocks, saves its record
//! after every block (in the device's state directory, sealed with its
//! data key), verifies the image, and runs the trial boot, self-test and
//! confirmation or rollback. The rules are the core's
//! ([`lanyard_core::update`]); this module moves bytes and files.
//!
//! "Restarting" is the application's: [`DeviceUpdates::on_restart`] is
//! called when the device must boot the other image (after a verified
//! download, after a failed self-test). A process supervisor that starts
//! the image the slot's boot request names plays the bootloader.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use lanyard_core::update::messages::{Block, UpdateJob, UpdateTopic};
use lanyard_core::update::{Offer, RECORD_MAX, SlotError, Stored, UpdateSlot, Updater, WINDOW};
pub use lanyard_nostd::update_slot::BootRequest;

use crate::store::FileStore;

/// The image file in a slot directory.
pub const IMAGE_FILE: &str = "image.bin";
/// The bootloader's request in a slot directory.
pub const BOOT_FILE: &str = "boot";

/// The inactive slot as a file (`image.bin` in a directory) and the
/// bootloader's request beside it (`boot`: `trial`, `trial-booted`,
/// `confirmed` or `reverted`).
#[derive(Debug, Clone)]
pub struct FileSlot {
    dir: PathBuf,
    capacity: u32,
}

impl FileSlot {
    /// A slot of `capacity` bytes in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, capacity: u32) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(FileSlot { dir, capacity })
    }

    /// The image file.
    pub fn image(&self) -> PathBuf {
        self.dir.join(IMAGE_FILE)
    }

    fn request(&self) -> String {
        std::fs::read_to_string(self.dir.join(BOOT_FILE))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn set(&self, what: &str) -> Result<(), SlotError> {
        crate::store::write_atomic(&self.dir.join(BOOT_FILE), what.as_bytes())
            .map_err(|_| SlotError)
    }

    /// What the bootloader is asked.
    pub fn boot_request(&self) -> BootRequest {
        match self.request().as_str() {
            "trial" | "trial-booted" => BootRequest::Trial,
            "confirmed" => BootRequest::Confirmed,
            "reverted" => BootRequest::Reverted,
            _ => BootRequest::None,
        }
    }

    /// What a bootloader does at a restart: a slot asked for a trial boots
    /// once (and is marked as booted); a trial that booted and was not
    /// confirmed goes back to the old image. Whether the image that runs
    /// now is this slot's.
    pub fn boot(&self) -> std::io::Result<bool> {
        let to =
            |what: &str| crate::store::write_atomic(&self.dir.join(BOOT_FILE), what.as_bytes());
        Ok(match self.request().as_str() {
            "trial" => {
                to("trial-booted")?;
                true
            }
            "trial-booted" => {
                to("reverted")?;
                false
            }
            "confirmed" => true,
            _ => false,
        })
    }
}

fn io(_: std::io::Error) -> SlotError {
    SlotError
}

impl UpdateSlot for FileSlot {
    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn erase(&mut self) -> Result<(), SlotError> {
        std::fs::File::create(self.image()).map_err(io)?;
        match std::fs::remove_file(self.dir.join(BOOT_FILE)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) => Err(SlotError),
        }
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), SlotError> {
        if u64::from(offset) + data.len() as u64 > u64::from(self.capacity) {
            return Err(SlotError);
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.image())
            .map_err(io)?;
        f.seek(SeekFrom::Start(u64::from(offset))).map_err(io)?;
        f.write_all(data).map_err(io)?;
        // On disk before the record says the block is in.
        f.sync_data().map_err(io)
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), SlotError> {
        let mut f = std::fs::File::open(self.image()).map_err(io)?;
        f.seek(SeekFrom::Start(u64::from(offset))).map_err(io)?;
        f.read_exact(buf).map_err(io)
    }

    fn mark_trial(&mut self) -> Result<(), SlotError> {
        self.set("trial")
    }

    fn confirm(&mut self) -> Result<(), SlotError> {
        self.set("confirmed")
    }

    fn revert(&mut self) -> Result<(), SlotError> {
        self.set("reverted")
    }
}

/// A message the updater sends: its topic and bytes.
pub type Outgoing = (UpdateTopic, Vec<u8>);

/// A device's firmware updates, for its driver. See the [module](self).
pub struct DeviceUpdates {
    updater: Updater,
    slot: FileSlot,
    store: FileStore,
    record: PathBuf,
    running_version: String,
    self_test: Box<dyn FnMut() -> bool + Send>,
    restart: Box<dyn FnMut() + Send>,
    restart_pending: bool,
}

impl std::fmt::Debug for DeviceUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceUpdates")
            .field("state", &self.updater.state())
            .field("running_version", &self.running_version)
            .finish_non_exhaustive()
    }
}

/// The file of the download record in the device's state directory.
pub const RECORD_FILE: &str = "update.record";

impl DeviceUpdates {
    /// Updates trusting images signed with the fleet's Ed25519 `key`,
    /// written to `slot`, the record kept in `store` (the device's state
    /// directory, so that it is sealed with its data key), for a device
    /// running `running_version`. A record left by the last run is read
    /// back; one that does not read is set aside (renamed `.damaged`) and
    /// the job starts over when offered again.
    pub fn new(key: [u8; 32], slot: FileSlot, store: FileStore, running_version: &str) -> Self {
        let record = store.dir().join(RECORD_FILE);
        let mut updater = Updater::new(key);
        if let Ok(Some(bytes)) = store.read_record(&record) {
            if updater.resume(&bytes).is_err() {
                let _ = std::fs::rename(&record, record.with_extension("damaged"));
            }
        }
        DeviceUpdates {
            updater,
            slot,
            store,
            record,
            running_version: running_version.to_owned(),
            self_test: Box::new(|| true),
            restart: Box::new(|| {}),
            restart_pending: false,
        }
    }

    /// The new image's self-test, run when it boots on trial: `true`
    /// confirms it. By default it passes.
    pub fn on_self_test(mut self, test: impl FnMut() -> bool + Send + 'static) -> Self {
        self.self_test = Box::new(test);
        self
    }

    /// Called when the device must restart into the other image.
    pub fn on_restart(mut self, restart: impl FnMut() + Send + 'static) -> Self {
        self.restart = Box::new(restart);
        self
    }

    /// The updater's state.
    pub fn updater(&self) -> &Updater {
        &self.updater
    }

    fn save(&mut self) {
        let mut out = vec![0u8; RECORD_MAX];
        if let Ok(n) = self.updater.save(&mut out) {
            if n > 0 && self.store.write_record(&self.record, &out[..n]).is_err() {
                #[cfg(feature = "runtime")]
                tracing::error!(file = %self.record.display(), "update record not saved");
            }
        }
    }

    fn report(&self, now: u64, out: &mut Vec<Outgoing>) {
        if let Some(r) = self.updater.report(now) {
            let mut buf = [0u8; 128];
            if let Ok(n) = r.encode(&mut buf) {
                out.push((UpdateTopic::Report, buf[..n].to_vec()));
            }
        }
    }

    fn requests(&mut self, now: u64, out: &mut Vec<Outgoing>) {
        let mut want = [0u32; WINDOW];
        let n = self.updater.wanted(now, &mut want);
        let Some(report) = self.updater.report(now) else {
            return;
        };
        let job_id = report.job_id.to_owned();
        for &first in &want[..n] {
            let req = lanyard_core::update::messages::BlockRequest {
                job_id: &job_id,
                first,
                count: 1,
            };
            let mut buf = [0u8; 64];
            if let Ok(len) = req.encode(&mut buf) {
                out.push((UpdateTopic::Request, buf[..len].to_vec()));
            }
        }
    }

    /// At start: the restart's outcome (on trial, the self-test decides;
    /// rolled back), reported, and a download under way asked for again.
    pub fn boot(&mut self, now: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.updater.state().is_none() {
            return out;
        }
        let running_trial = self.slot.boot().unwrap_or(false);
        self.updater.booted(running_trial);
        if self.updater.state() == Some(lanyard_core::update::messages::UpdateState::Testing) {
            let passed = (self.self_test)();
            if self.updater.self_test(passed, &mut self.slot).is_ok() && !passed {
                self.restart_pending = true;
            }
        }
        self.save();
        self.report(now, &mut out);
        self.requests(now, &mut out);
        out
    }

    /// A message on one of the update topics, and whether the device is
    /// in degraded mode: what to send back.
    pub fn inbound(
        &mut self,
        now: u64,
        topic: UpdateTopic,
        payload: &[u8],
        degraded: bool,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        match topic {
            UpdateTopic::Job => {
                let Ok(job) = UpdateJob::decode(payload) else {
                    return out;
                };
                let offer = Offer {
                    running_version: &self.running_version,
                    slot_capacity: self.slot.capacity(),
                    degraded,
                };
                let was = self.updater.state();
                match self.updater.offer(&job, offer) {
                    Ok(()) => {
                        let fresh = was.is_none_or(|s| s.is_final())
                            || self.updater.report(now).is_some_and(|r| r.received == 0);
                        if fresh && self.slot.erase().is_err() {
                            self.updater.cancel(job.job_id);
                        }
                        self.save();
                        self.report(now, &mut out);
                        self.requests(now, &mut out);
                    }
                    Err(reason) => {
                        let r = lanyard_core::update::messages::UpdateReport {
                            job_id: job.job_id,
                            state: lanyard_core::update::messages::UpdateState::Rejected,
                            received: 0,
                            total: job.blocks(),
                            reason: Some(reason),
                            time_ms: now,
                        };
                        let mut buf = [0u8; 128];
                        if let Ok(n) = r.encode(&mut buf) {
                            out.push((UpdateTopic::Report, buf[..n].to_vec()));
                        }
                    }
                }
            }
            UpdateTopic::Block => {
                let Ok(block) = Block::decode(payload) else {
                    return out;
                };
                match self.updater.block(&block, &mut self.slot) {
                    Ok(Stored::Progress { .. }) => {
                        self.save();
                        self.requests(now, &mut out);
                    }
                    Ok(Stored::Complete) => {
                        self.save();
                        self.report(now, &mut out);
                        let mut buf = vec![0u8; 64 * 1024];
                        let verified = self.updater.verify(&mut self.slot, &mut buf).is_ok();
                        self.save();
                        self.report(now, &mut out);
                        if verified {
                            self.restart_pending = true;
                        }
                    }
                    Ok(_) | Err(_) => {}
                }
            }
            UpdateTopic::Cancel => {
                if let Ok(id) = minicbor::decode::<&str>(payload) {
                    self.updater.cancel(id);
                    self.save();
                    self.report(now, &mut out);
                }
            }
            UpdateTopic::Request | UpdateTopic::Report => {}
        }
        out
    }

    /// Blocks asked for that did not come, asked again when due.
    pub fn tick(&mut self, now: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.requests(now, &mut out);
        out
    }

    /// When [`DeviceUpdates::tick`] should run next (a download under way).
    pub fn next_tick(&self, now: u64) -> Option<u64> {
        (self.updater.state() == Some(lanyard_core::update::messages::UpdateState::Downloading))
            .then_some(now + 1_000)
    }

    /// Restarts into the other image if one is due (a verified download,
    /// a failed self-test): after the messages saying so have gone.
    pub fn restart_if_due(&mut self) -> bool {
        if std::mem::take(&mut self.restart_pending) {
            (self.restart)();
            true
        } else {
            false
        }
    }
}

/// A slot directory beside the device's state: `{state_dir}/slot`.
pub fn default_slot_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("slot")
}
