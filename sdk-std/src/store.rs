//! Crash-safe file storage for the agent's persisted state.
//!
//! Every write goes to a temporary file in the same directory, is flushed to
//! the disk (`fsync`), then renamed over the old file, and the directory is
//! flushed so the rename itself survives a power cut. A reader therefore
//! sees the old record or the new one, never a mix.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use lanyard_core::agent::platform::{Storage, StorageError, StorageSlot};

/// Writes `data` to `path` atomically (temporary file, fsync, rename,
/// directory fsync).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = fs::File::create(&tmp)?;
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

/// One file per storage slot in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
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
        Ok(FileStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, slot: StorageSlot) -> PathBuf {
        self.dir.join(match slot {
            StorageSlot::AgentState => "agent-state.cbor",
            StorageSlot::Credentials => "credentials.bin",
        })
    }
}

impl Storage for FileStore {
    fn load(&mut self, slot: StorageSlot, buf: &mut [u8]) -> Result<usize, StorageError> {
        match fs::read(self.path(slot)) {
            Ok(data) if data.len() > buf.len() => Err(StorageError::TooLarge),
            Ok(data) => {
                buf[..data.len()].copy_from_slice(&data);
                Ok(data.len())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(_) => Err(StorageError::Io),
        }
    }

    fn store(&mut self, slot: StorageSlot, data: &[u8]) -> Result<(), StorageError> {
        write_atomic(&self.path(slot), data).map_err(|_| StorageError::Io)
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        for slot in [StorageSlot::AgentState, StorageSlot::Credentials] {
            match fs::remove_file(self.path(slot)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => return Err(StorageError::Io),
            }
        }
        sync_dir(&self.dir).map_err(|_| StorageError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
