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

use lanyard_core::agent::platform::{Storage, StorageSlot};
use lanyard_core::update::messages::UpdateTopic;
use lanyard_core::update::{RECORD_MAX, Running, SlotError, UpdateSession, UpdateSlot, Updater};
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

/// A device's firmware updates, for its driver: the core's
/// [`UpdateSession`] on a [`FileSlot`], its record in the device's state
/// directory. See the [module](self).
pub struct DeviceUpdates {
    session: UpdateSession<FileSlot>,
    store: FileStore,
    running_version: String,
    self_test: Box<dyn FnMut() -> bool + Send>,
    restart: Box<dyn FnMut() + Send>,
    restart_pending: bool,
    /// Messages are encoded, records saved and the image read back for
    /// its check through this, made once (not for every block).
    buf: Vec<u8>,
}

impl std::fmt::Debug for DeviceUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceUpdates")
            .field("state", &self.session.updater().state())
            .field("running_version", &self.running_version)
            .finish_non_exhaustive()
    }
}

/// The file of the download record in the device's state directory.
pub const RECORD_FILE: &str = crate::store::UPDATE_RECORD_FILE;

/// Bytes read at a time when the image is verified.
const VERIFY_CHUNK: usize = 64 * 1024;

impl DeviceUpdates {
    /// Updates trusting images signed with the fleet's Ed25519 `key`,
    /// written to `slot`, the record kept in `store` (the device's state
    /// directory, so that it is sealed with its data key), for a device
    /// running `running_version`. A record left by the last run is read
    /// back; one that does not read is set aside (renamed `.damaged`) and
    /// the job starts over when offered again.
    pub fn new(key: [u8; 32], slot: FileSlot, store: FileStore, running_version: &str) -> Self {
        let record = store.path(StorageSlot::UpdateRecord);
        let mut session = UpdateSession::new(key, slot);
        if let Ok(Some(bytes)) = store.read_record(&record) {
            if session.resume(&bytes).is_err() {
                let _ = std::fs::rename(&record, record.with_extension("damaged"));
            }
        }
        DeviceUpdates {
            session,
            store,
            running_version: running_version.to_owned(),
            self_test: Box::new(|| true),
            restart: Box::new(|| {}),
            restart_pending: false,
            buf: vec![0u8; VERIFY_CHUNK.max(RECORD_MAX)],
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
        self.session.updater()
    }

    /// What the session has to send, each record saved before the
    /// messages after it.
    fn drain(&mut self, now: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            self.save(&mut buf);
            match self.session.poll_transmit(now, &mut buf) {
                Ok(Some((topic, n))) => out.push((topic, buf[..n].to_vec())),
                Ok(None) => break,
                // A report always fits the buffer: nothing to send.
                Err(_) => break,
            }
        }
        self.save(&mut buf);
        self.buf = buf;
        if self.session.take_restart() {
            self.restart_pending = true;
        }
        out
    }

    fn save(&mut self, buf: &mut [u8]) {
        if let Some(Ok(n)) = self.session.take_record(buf)
            && n > 0
            && self
                .store
                .store(StorageSlot::UpdateRecord, &buf[..n])
                .is_err()
        {
            #[cfg(feature = "runtime")]
            tracing::error!(
                file = %self.store.path(StorageSlot::UpdateRecord).display(),
                "update record not saved"
            );
        }
    }

    /// At start: the restart's outcome (on trial, the self-test decides;
    /// rolled back), reported, and a download under way asked for again.
    pub fn boot(&mut self, now: u64) -> Vec<Outgoing> {
        let running_trial = self.session.updater().state().is_some()
            && self.session.slot_mut().boot().unwrap_or(false);
        self.session.boot(running_trial, &mut self.self_test);
        self.drain(now)
    }

    /// A message on one of the update topics, and whether the device is
    /// in degraded mode: what to send back. One that does not read
    /// changes nothing.
    pub fn inbound(
        &mut self,
        now: u64,
        topic: UpdateTopic,
        payload: &[u8],
        degraded: bool,
    ) -> Vec<Outgoing> {
        let running = Running {
            version: &self.running_version,
            degraded,
        };
        let _ = self.session.handle(topic, payload, running);
        self.drain(now)
    }

    /// Blocks asked for that did not come, asked again when due.
    pub fn tick(&mut self, now: u64) -> Vec<Outgoing> {
        self.drain(now)
    }

    /// When [`DeviceUpdates::tick`] should run next (a block awaited).
    pub fn next_tick(&self) -> Option<u64> {
        self.session.poll_timeout()
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
