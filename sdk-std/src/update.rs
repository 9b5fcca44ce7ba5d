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

/// The image file of slot A in a slot directory.
pub const IMAGE_FILE: &str = "image.bin";
/// The image file of slot B in a slot directory.
pub const IMAGE_B_FILE: &str = "image-b.bin";
/// The bootloader's request in a slot directory.
pub const BOOT_FILE: &str = "boot";

/// Which image a device goes back to when a trial fails: the one
/// installed (the executable its supervisor starts) or a slot's that was
/// confirmed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    Installed,
    A,
    B,
}

/// What the bootloader is asked for the candidate slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// Nothing: no image on trial (a download under way, or none).
    Nothing,
    /// Boot it once, on trial.
    Trial,
    /// It booted on trial and was not confirmed yet: the next restart
    /// goes back.
    TrialBooted,
    /// It runs for good.
    Confirmed,
    /// Its trial failed: the image before runs.
    Reverted,
}

impl Request {
    /// Each request and its word in the `boot` file.
    const NAMES: [(Request, &'static str); 5] = [
        (Request::Nothing, ""),
        (Request::Trial, "trial"),
        (Request::TrialBooted, "trial-booted"),
        (Request::Confirmed, "confirmed"),
        (Request::Reverted, "reverted"),
    ];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("", |(_, n)| n)
    }

    /// A word this does not know (a file damaged by hand) reads as no
    /// request: the installed or fallback image runs.
    fn named(word: &str) -> Request {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == word)
            .map_or(Request::Nothing, |(r, _)| *r)
    }
}

/// The slots' state, in the `boot` file: the bootloader's request for the
/// candidate slot on its first line (`trial`, `trial-booted`, `confirmed`,
/// `reverted`, or empty), and which image to go back to on a second line
/// (`fallback a` or `fallback b`; absent: the installed one). One file, so
/// that a power cut never leaves a request paired with the wrong slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotState {
    request: Request,
    fallback: Fallback,
}

/// Two slots as files in a directory (`image.bin` and `image-b.bin`),
/// used in turn, and the bootloader's state beside them (`boot`, see
/// [`FileSlot::boot_request`]).
///
/// The slot an update writes (the *candidate*) is never the image that
/// runs: after a confirmed update the next one goes to the other file, and
/// the confirmed image becomes the one a failed trial goes back to. So a
/// device that runs its slot's image itself (`lanyard device
/// --exec-image`) never has its running executable rewritten, and a
/// failed trial returns to the previous update, not to the image first
/// installed.
#[derive(Debug, Clone)]
pub struct FileSlot {
    dir: PathBuf,
    capacity: u32,
}

impl FileSlot {
    /// Slots of `capacity` bytes each in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, capacity: u32) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(FileSlot { dir, capacity })
    }

    /// The candidate slot's image file: the one an update writes, and the
    /// new image once verified.
    pub fn image(&self) -> PathBuf {
        self.file(match self.state().fallback {
            Fallback::A => IMAGE_B_FILE,
            Fallback::Installed | Fallback::B => IMAGE_FILE,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn state(&self) -> SlotState {
        let text = std::fs::read_to_string(self.file(BOOT_FILE)).unwrap_or_default();
        let mut lines = text.lines();
        let request = Request::named(lines.next().unwrap_or("").trim());
        let fallback = match lines.next().map(str::trim) {
            Some("fallback a") => Fallback::A,
            Some("fallback b") => Fallback::B,
            _ => Fallback::Installed,
        };
        SlotState { request, fallback }
    }

    fn save(&self, state: &SlotState) -> std::io::Result<()> {
        let text = match state.fallback {
            // The single-line form of slots that never switched.
            Fallback::Installed => state.request.name().to_owned(),
            Fallback::A => format!("{}\nfallback a\n", state.request.name()),
            Fallback::B => format!("{}\nfallback b\n", state.request.name()),
        };
        crate::store::write_atomic(&self.file(BOOT_FILE), text.as_bytes())
    }

    fn set(&self, request: Request) -> Result<(), SlotError> {
        let state = SlotState {
            request,
            ..self.state()
        };
        self.save(&state).map_err(|_| SlotError)
    }

    /// What the bootloader is asked for the candidate slot.
    pub fn boot_request(&self) -> BootRequest {
        match self.state().request {
            Request::Trial | Request::TrialBooted => BootRequest::Trial,
            Request::Confirmed => BootRequest::Confirmed,
            Request::Reverted => BootRequest::Reverted,
            Request::Nothing => BootRequest::None,
        }
    }

    /// What a bootloader does at a restart: a slot asked for a trial boots
    /// once (and is marked as booted); a trial that booted and was not
    /// confirmed goes back to the old image. Whether the image that runs
    /// now is the candidate slot's.
    pub fn boot(&self) -> std::io::Result<bool> {
        let state = self.state();
        let to = |request| {
            self.save(&SlotState {
                request,
                ..state.clone()
            })
        };
        Ok(match state.request {
            Request::Trial => {
                to(Request::TrialBooted)?;
                true
            }
            Request::TrialBooted => {
                to(Request::Reverted)?;
                false
            }
            Request::Confirmed => true,
            Request::Nothing | Request::Reverted => false,
        })
    }

    /// The image the last [`FileSlot::boot`] chose, without changing
    /// anything: the candidate slot's file when it runs on trial or
    /// confirmed, else the one to go back to (`None`: the installed one).
    pub fn chosen_image(&self) -> Option<PathBuf> {
        let state = self.state();
        match (state.request, state.fallback) {
            (Request::TrialBooted | Request::Confirmed, _) => Some(self.image()),
            (_, Fallback::Installed) => None,
            (_, Fallback::A) => Some(self.file(IMAGE_FILE)),
            (_, Fallback::B) => Some(self.file(IMAGE_B_FILE)),
        }
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
        let state = self.state();
        // A confirmed candidate is the image that runs now: it becomes the
        // one to go back to, and the update goes to the other file.
        let fallback = if state.request == Request::Confirmed {
            match state.fallback {
                Fallback::A => Fallback::B,
                Fallback::Installed | Fallback::B => Fallback::A,
            }
        } else {
            state.fallback
        };
        self.save(&SlotState {
            request: Request::Nothing,
            fallback,
        })
        .map_err(io)?;
        // A new file rather than the old one truncated: a process may
        // still run the old one (Linux refuses to write a running
        // executable, but lets its name go).
        let image = self.image();
        match std::fs::remove_file(&image) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return Err(SlotError),
        }
        std::fs::File::create(image).map_err(io)?;
        Ok(())
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
        self.set(Request::Trial)
    }

    fn confirm(&mut self) -> Result<(), SlotError> {
        self.set(Request::Confirmed)
    }

    fn revert(&mut self) -> Result<(), SlotError> {
        self.set(Request::Reverted)
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
    /// Whether the image that runs is the candidate slot's, when a boot
    /// step before this process's start said so (see
    /// [`DeviceUpdates::booted_by_loader`]).
    booted: Option<bool>,
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
            booted: None,
            buf: vec![0u8; VERIFY_CHUNK.max(RECORD_MAX)],
        }
    }

    /// The new image's self-test, run when it boots on trial: `true`
    /// confirms it. By default it passes.
    pub fn on_self_test(mut self, test: impl FnMut() -> bool + Send + 'static) -> Self {
        self.self_test = Box::new(test);
        self
    }

    /// The bootloader's step already ran before this process started (it
    /// chose the image, see [`boot_image`]), and `running_candidate` says
    /// whether the image that runs is the candidate slot's. Without this,
    /// [`DeviceUpdates::boot`] plays that step itself.
    pub fn booted_by_loader(mut self, running_candidate: bool) -> Self {
        self.booted = Some(running_candidate);
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
            && match self.booted {
                Some(candidate) => candidate,
                None => self.session.slot_mut().boot().unwrap_or(false),
            };
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

/// The image a device starts on, as the bootloader's step at start-up
/// chose it: see [`boot_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootImage {
    /// The installed executable (no update confirmed, or none to go back
    /// to).
    Installed,
    /// A slot's image on trial or confirmed: the candidate.
    Candidate(PathBuf),
    /// A slot's image confirmed by an earlier update, gone back to after a
    /// trial that failed.
    Fallback(PathBuf),
}

impl BootImage {
    /// Its file, `None` for the installed executable.
    pub fn path(&self) -> Option<&Path> {
        match self {
            BootImage::Installed => None,
            BootImage::Candidate(p) | BootImage::Fallback(p) => Some(p),
        }
    }
}

/// The bootloader's step for a device that runs its slots' images itself:
/// plays the restart ([`FileSlot::boot`]: a trial boots once, a trial that
/// was not confirmed goes back) and says which image to start.
pub fn boot_image(slot: &FileSlot) -> std::io::Result<BootImage> {
    let candidate = slot.boot()?;
    Ok(match slot.chosen_image() {
        Some(path) if candidate => BootImage::Candidate(path),
        Some(path) => BootImage::Fallback(path),
        None => BootImage::Installed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_image(slot: &mut FileSlot, bytes: &[u8]) {
        slot.erase().unwrap();
        slot.write(0, bytes).unwrap();
        slot.mark_trial().unwrap();
    }

    #[test]
    fn updates_take_the_two_slot_files_in_turn_and_go_back_to_the_last_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut slot = FileSlot::new(dir.path(), 1024).unwrap();
        // Nothing downloaded: the installed image runs.
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Installed);

        // First update: slot A, on trial, then confirmed.
        write_image(&mut slot, b"v2");
        let a = dir.path().join(IMAGE_FILE);
        let b = dir.path().join(IMAGE_B_FILE);
        assert_eq!(slot.image(), a);
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Candidate(a.clone()));
        slot.confirm().unwrap();
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Candidate(a.clone()));

        // Second update: slot B; A (running) untouched.
        write_image(&mut slot, b"v3");
        assert_eq!(slot.image(), b);
        assert_eq!(std::fs::read(&a).unwrap(), b"v2");
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Candidate(b.clone()));
        // Reset before confirming: back to A, the last confirmed.
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Fallback(a.clone()));
        assert_eq!(slot.boot_request(), BootRequest::Reverted);
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Fallback(a.clone()));

        // Third update after a rejected one: B again (A still runs).
        write_image(&mut slot, b"v4");
        assert_eq!(slot.image(), b);
        assert_eq!(std::fs::read(&a).unwrap(), b"v2");
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Candidate(b.clone()));
        slot.confirm().unwrap();
        // Fourth: A, B now being the one that runs.
        write_image(&mut slot, b"v5");
        assert_eq!(slot.image(), a);
        assert_eq!(std::fs::read(&b).unwrap(), b"v4");
        slot.revert().unwrap();
        assert_eq!(boot_image(&slot).unwrap(), BootImage::Fallback(b));
    }

    #[test]
    fn a_slot_written_before_fallbacks_existed_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BOOT_FILE), "confirmed").unwrap();
        let slot = FileSlot::new(dir.path(), 1024).unwrap();
        assert_eq!(slot.boot_request(), BootRequest::Confirmed);
        assert_eq!(slot.image(), dir.path().join(IMAGE_FILE));
        // Its confirmed image becomes the fallback of the next update.
        let mut slot = slot;
        slot.erase().unwrap();
        assert_eq!(slot.image(), dir.path().join(IMAGE_B_FILE));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(BOOT_FILE)).unwrap(),
            "\nfallback a\n"
        );
    }

    #[test]
    fn erasing_the_slot_leaves_a_process_reading_the_old_file_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut slot = FileSlot::new(dir.path(), 1024).unwrap();
        write_image(&mut slot, b"old image");
        slot.revert().unwrap();
        // Someone holds the old file open (as a running executable is).
        let mut held = std::fs::File::open(slot.image()).unwrap();
        write_image(&mut slot, b"new");
        let mut old = String::new();
        held.read_to_string(&mut old).unwrap();
        assert_eq!(old, "old image");
        assert_eq!(std::fs::read(slot.image()).unwrap(), b"new");
    }
}
