//! Crash-safe file storage for the agent's persisted state.
//!
//! Every write goes to a temporary file in the same directory, is flushed to
//! the disk (`fsync`), then renamed over the old file, and the directory is
//! flushed so the rename itself survives a power cut. A reader therefore
//! sees the old record or the new one, never a mix.
//!
//! Every record is [sealed](seal) with a CRC-32, so that damage done
//! outside Lanyard (a disk error, a truncated copy, a flipped bit) is found
//! when the record is read instead of being taken for state.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use lanyard_core::agent::platform::{Storage, StorageError, StorageSlot};

const SEAL_MAGIC: &[u8; 4] = b"LYR1";

/// `data` with a header that lets [`unseal`] find damage: `LYR1`, the
/// CRC-32 (ISO-HDLC, little-endian) of `data`, then `data`.
pub fn seal(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(SEAL_MAGIC);
    out.extend_from_slice(&CRC32.checksum(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A stored record whose checksum does not match its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damaged;

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("damaged record (checksum mismatch)")
    }
}

impl std::error::Error for Damaged {}

/// The record [`seal`] made, checked. A record without the header (written
/// before records were sealed) is returned as it is: it is sealed the next
/// time it is written, and its own decoding is its only check until then.
pub fn unseal(bytes: &[u8]) -> Result<&[u8], Damaged> {
    let Some(rest) = bytes.strip_prefix(SEAL_MAGIC) else {
        return Ok(bytes);
    };
    let (crc, data) = rest.split_at_checked(4).ok_or(Damaged)?;
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| Damaged)?);
    if CRC32.checksum(data) == crc {
        Ok(data)
    } else {
        Err(Damaged)
    }
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename,
/// directory fsync).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, None)
}

/// [`write_atomic`] for secrets (private keys, data keys): the file is
/// readable and writable by its owner only (mode 0600 on Unix) from the
/// moment it exists.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, Some(0o600))
}

fn write_atomic_mode(path: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        // A leftover from an interrupted write keeps its old mode: start anew.
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = options.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    // Directories can be opened and synced on Unix; elsewhere this is a no-op.
    match fs::File::open(dir) {
        Ok(d) => d.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// The file of renewed credentials not confirmed yet (see
/// `credentials::CredentialStore`), wiped with the slots.
pub const PENDING_CREDENTIALS_FILE: &str = "credentials.pending.bin";

/// One file per storage slot in a directory, each record sealed against
/// damage ([`seal`]) and, with a [`DataKey`](crate::data_key::DataKey),
/// encrypted: then [`Storage::wipe`] destroys the key before it deletes
/// the files (crypto-erase).
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    key: Option<crate::data_key::DataKey>,
}

impl FileStore {
    /// Uses `dir`, creating it if needed. Leftover temporary files from an
    /// interrupted write are removed: the record they were replacing stands.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        Ok(FileStore { dir, key: None })
    }

    /// [`FileStore::open`], with every record encrypted under `key`.
    /// Records written before without a key are still read (and encrypted
    /// when next written).
    pub fn encrypted(dir: impl Into<PathBuf>, key: crate::data_key::DataKey) -> io::Result<Self> {
        let mut store = Self::open(dir)?;
        store.key = Some(key);
        Ok(store)
    }

    /// The record in the file at `path` (a slot's, or another file of this
    /// store's), opened; `None` when there is none.
    pub fn read_record(&self, path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err(StorageError::Io),
        };
        let data = unseal(&bytes).map_err(|_| {
            #[cfg(feature = "runtime")]
            tracing::error!(file = %path.display(), "stored record damaged (checksum mismatch); left in place for inspection");
            StorageError::Corrupt
        })?;
        if !crate::data_key::DataKey::is_sealed(data) {
            return Ok(Some(data.to_vec()));
        }
        let key = self.key.as_ref().ok_or(StorageError::Corrupt)?;
        key.open(data).map(Some).map_err(|_| {
            #[cfg(feature = "runtime")]
            tracing::error!(file = %path.display(), "stored record does not open with this device's data key");
            StorageError::Corrupt
        })
    }

    /// Writes `data` as the record in the file at `path`, atomically,
    /// encrypted if the store has a key; mode 0600.
    pub fn write_record(&self, path: &Path, data: &[u8]) -> Result<(), StorageError> {
        let sealed = match &self.key {
            Some(k) => seal(&k.seal(data).map_err(|_| StorageError::Io)?),
            None => seal(data),
        };
        write_private(path, &sealed).map_err(|_| StorageError::Io)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `slot`.
    pub fn path(&self, slot: StorageSlot) -> PathBuf {
        self.dir.join(match slot {
            StorageSlot::AgentState => "agent-state.cbor",
            StorageSlot::Credentials => "credentials.bin",
            StorageSlot::UpdateRecord => UPDATE_RECORD_FILE,
        })
    }
}

/// The file of a firmware update's download record in the directory.
pub const UPDATE_RECORD_FILE: &str = "update.record";

/// The file store's records are sealed ([`seal`]). A damaged record is
/// left where it is and reported ([`StorageError::Corrupt`], logged with
/// its path): the agent then refuses to start rather than start over, and
/// the file is there to inspect. Removing it (or `lanyard device
/// --reprovision`) starts the device as new.
impl Storage for FileStore {
    fn load(&mut self, slot: StorageSlot, buf: &mut [u8]) -> Result<usize, StorageError> {
        let Some(data) = self.read_record(&self.path(slot))? else {
            return Ok(0);
        };
        let to = buf.get_mut(..data.len()).ok_or(StorageError::TooLarge)?;
        to.copy_from_slice(&data);
        Ok(data.len())
    }

    fn store(&mut self, slot: StorageSlot, data: &[u8]) -> Result<(), StorageError> {
        self.write_record(&self.path(slot), data)
    }

    /// The key goes first: once it is destroyed, the records are noise
    /// whatever happens to the files after.
    fn wipe(&mut self) -> Result<(), StorageError> {
        if let Some(k) = &self.key {
            k.destroy().map_err(|_| StorageError::Io)?;
        }
        let pending = self.dir.join(PENDING_CREDENTIALS_FILE);
        for path in [
            self.path(StorageSlot::AgentState),
            self.path(StorageSlot::Credentials),
            self.path(StorageSlot::UpdateRecord),
            pending,
        ] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => return Err(StorageError::Io),
            }
        }
        sync_dir(&self.dir).map_err(|_| StorageError::Io)
    }
}

/// Messages that must be delivered (MQTT QoS 1: acknowledgements,
/// lifecycle events, registrations, shadow reports, configuration acks),
/// kept on disk from before they are handed to the transport until the
/// broker has acknowledged them. A process killed meanwhile sends them
/// again when it restarts: delivery is at least once across crashes, and
/// every such message is safe to receive twice (acks and lifecycle events
/// carry ids and sequence numbers, shadow reports timestamps).
///
/// The file is rewritten whole (atomically) on every change: these
/// messages are few, and a journal of appended records would need its own
/// recovery of a torn last record.
#[derive(Debug)]
pub struct OutboundJournal {
    path: PathBuf,
    entries: std::collections::VecDeque<JournalEntry>,
}

/// One journalled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Its place among this process's QoS 1 publishes, from 1.
    pub ordinal: u64,
    /// What it is.
    pub kind: lanyard_core::agent::messages::MessageKind,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

const JOURNAL_MAGIC: &[u8; 4] = b"LYJ1";

/// Messages a previous process left undelivered, oldest first.
pub type Undelivered = Vec<(lanyard_core::agent::messages::MessageKind, Vec<u8>)>;
/// Largest journalled message; larger is refused as damage.
const JOURNAL_MAX_MESSAGE: usize = 64 * 1024;

impl OutboundJournal {
    /// Opens the journal in `dir`; returns it (empty) and the messages a
    /// previous process left undelivered, oldest first, to be sent again.
    /// A damaged file is an error naming it, and is left as it is.
    pub fn open(dir: &Path) -> io::Result<(Self, Undelivered)> {
        let path = dir.join("outbound.journal");
        let leftovers = match fs::read(&path) {
            Ok(data) => Self::decode(&data).map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {why}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let journal = OutboundJournal {
            path,
            entries: Default::default(),
        };
        Ok((journal, leftovers))
    }

    /// Messages awaiting the broker's acknowledgement.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing awaits acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a message about to be published as the `ordinal`-th QoS 1
    /// publish; on disk when this returns.
    pub fn record(
        &mut self,
        ordinal: u64,
        kind: lanyard_core::agent::messages::MessageKind,
        bytes: &[u8],
    ) -> io::Result<()> {
        self.entries.push_back(JournalEntry {
            ordinal,
            kind,
            bytes: bytes.to_vec(),
        });
        self.save()
    }

    /// Forgets every message up to the `acknowledged`-th (QoS 1
    /// acknowledgements arrive in publish order).
    pub fn acknowledged(&mut self, acknowledged: u64) -> io::Result<()> {
        let before = self.entries.len();
        while self
            .entries
            .front()
            .is_some_and(|e| e.ordinal <= acknowledged)
        {
            self.entries.pop_front();
        }
        if self.entries.len() == before {
            return Ok(());
        }
        self.save()
    }

    fn save(&self) -> io::Result<()> {
        let mut data = JOURNAL_MAGIC.to_vec();
        for e in &self.entries {
            let kind = lanyard_core::agent::messages::MessageKind::ALL
                .iter()
                .position(|k| *k == e.kind)
                .unwrap_or(0) as u8;
            data.push(kind);
            data.extend_from_slice(&(e.bytes.len() as u32).to_be_bytes());
            data.extend_from_slice(&e.bytes);
        }
        write_atomic(&self.path, &data)
    }

    fn decode(data: &[u8]) -> Result<Undelivered, String> {
        use lanyard_core::agent::messages::MessageKind;
        let mut rest = data
            .strip_prefix(JOURNAL_MAGIC)
            .ok_or("not an outbound journal (bad magic)")?;
        let mut out = Vec::new();
        while let Some((&kind, after)) = rest.split_first() {
            let kind = *MessageKind::ALL
                .get(usize::from(kind))
                .filter(|k| k.from_device())
                .ok_or(format!("bad message kind {kind} at entry {}", out.len()))?;
            let (len, after) = after
                .split_first_chunk::<4>()
                .ok_or(format!("truncated entry {}", out.len()))?;
            let len = u32::from_be_bytes(*len) as usize;
            if len > JOURNAL_MAX_MESSAGE || len > after.len() {
                return Err(format!("truncated or oversized entry {}", out.len()));
            }
            out.push((kind, after[..len].to_vec()));
            rest = &after[len..];
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_keeps_what_is_unacknowledged_across_a_reopen_and_refuses_damage() {
        use lanyard_core::agent::messages::MessageKind;
        let dir = tempfile::tempdir().unwrap();
        let (mut j, left) = OutboundJournal::open(dir.path()).unwrap();
        assert!(left.is_empty());
        j.record(1, MessageKind::Ack, b"a1").unwrap();
        j.record(2, MessageKind::Lifecycle, b"l2").unwrap();
        j.record(3, MessageKind::Ack, b"a3").unwrap();
        j.acknowledged(1).unwrap();
        assert_eq!(j.len(), 2);
        // The process dies here; the next one gets the two back, in order.
        let (_, left) = OutboundJournal::open(dir.path()).unwrap();
        assert_eq!(
            left,
            [
                (MessageKind::Lifecycle, b"l2".to_vec()),
                (MessageKind::Ack, b"a3".to_vec())
            ]
        );
        // Damage: a truncated file, a cloud-only kind, bad magic.
        let path = dir.path().join("outbound.journal");
        let good = fs::read(&path).unwrap();
        for bad in [
            good[..good.len() - 1].to_vec(),
            [&good[..4], &[7u8, 0, 0, 0, 0][..]].concat(),
            b"XXXX".to_vec(),
        ] {
            fs::write(&path, &bad).unwrap();
            let err = OutboundJournal::open(dir.path()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("outbound.journal"), "{err}");
            // Left as it was, for a person to look at.
            assert_eq!(fs::read(&path).unwrap(), bad);
        }
    }

    #[test]
    fn records_round_trip_and_wipe_removes_every_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::open(dir.path()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.load(StorageSlot::AgentState, &mut buf), Ok(0));
        s.store(StorageSlot::AgentState, b"state").unwrap();
        s.store(StorageSlot::Credentials, b"key").unwrap();
        assert_eq!(s.load(StorageSlot::AgentState, &mut buf), Ok(5));
        assert_eq!(&buf[..5], b"state");
        assert_eq!(
            s.load(StorageSlot::AgentState, &mut [0u8; 2]),
            Err(StorageError::TooLarge)
        );
        s.wipe().unwrap();
        assert_eq!(s.load(StorageSlot::Credentials, &mut buf), Ok(0));
    }

    #[test]
    fn an_interrupted_write_leaves_the_previous_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::open(dir.path()).unwrap();
        s.store(StorageSlot::AgentState, b"old").unwrap();
        // A crash between writing the temporary file and the rename.
        fs::write(dir.path().join("agent-state.cbor.tmp"), b"half-writ").unwrap();
        let mut s = FileStore::open(dir.path()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.load(StorageSlot::AgentState, &mut buf), Ok(3));
        assert_eq!(&buf[..3], b"old");
        assert!(!dir.path().join("agent-state.cbor.tmp").exists());
    }
}
