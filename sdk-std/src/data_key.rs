//! The key a std device encrypts what it saves with (its agent state and
//! its credentials), held in a file of its own so that it can be
//! destroyed alone: decommissioning destroys the key first, and what
//! remains on disk (or in a backup, or on a recovered sector) is
//! unreadable. This is crypto-erase: deleting files leaves their bytes on
//! the medium; destroying 32 bytes of key makes them noise.
//!
//! Records are sealed with ChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`: authenticated, so a record changed on disk is
//! refused rather than read wrong) under a random 256-bit key and a random
//! nonce per record. The key file is written with mode 0600; keep it apart
//! from the state (another partition, a secrets mount) with
//! [`DataKey::at`]; by default it is [`default_path`].

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// What starts an encrypted record: `LYE1`, then the 12-byte nonce, then
/// the ciphertext and its 16-byte tag.
const MAGIC: &[u8; 4] = b"LYE1";
const NONCE_LEN: usize = 12;

struct Inner {
    path: PathBuf,
    key: Option<[u8; 32]>,
}

/// A device's data key, shared by the stores that use it (cheap to
/// clone: every clone sees the same key, and its destruction).
#[derive(Clone)]
pub struct DataKey(Arc<Mutex<Inner>>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        let inner = self.lock();
        f.debug_struct("DataKey")
            .field("path", &inner.path)
            .finish_non_exhaustive()
    }
}

/// A record that cannot be opened: not sealed by this key (the key was
/// destroyed, or it is another device's), or changed on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the record does not open with this device's data key (destroyed, another key, or changed on disk)")
    }
}

impl std::error::Error for Unreadable {}

impl DataKey {
    /// The key in the file at `path`, made (32 random bytes, mode 0600) the
    /// first time it is needed.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        DataKey(Arc::new(Mutex::new(Inner {
            path: path.into(),
            key: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the key is kept.
    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn cipher(&self) -> io::Result<ChaCha20Poly1305> {
        let mut inner = self.lock();
        if inner.key.is_none() {
            let key = match std::fs::read(&inner.path) {
                Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    io::Error::other(format!(
                        "{}: not a data key (32 bytes expected)",
                        inner.path.display()
                    ))
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let key: [u8; 32] = ChaCha20Poly1305::generate_key(&mut OsRng).into();
                    if let Some(dir) = inner.path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    crate::store::write_private(&inner.path, &key)?;
                    key
                }
                Err(e) => return Err(e),
            };
            inner.key = Some(key);
        }
        let key = inner
            .key
            .as_ref()
            .ok_or_else(|| io::Error::other("no key"))?;
        Ok(ChaCha20Poly1305::new(Key::from_slice(key)))
    }

    /// `plain`, encrypted and authenticated.
    pub fn seal(&self, plain: &[u8]) -> io::Result<Vec<u8>> {
        let cipher = self.cipher()?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(&nonce, plain)
            .map_err(|_| io::Error::other("encryption failed"))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Whether `bytes` is a record [`DataKey::seal`] made (by any key).
    pub fn is_sealed(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// What [`DataKey::seal`] sealed.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Unreadable> {
        let body = sealed.strip_prefix(MAGIC.as_slice()).ok_or(Unreadable)?;
        if body.len() < NONCE_LEN {
            return Err(Unreadable);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let cipher = self.cipher().map_err(|_| Unreadable)?;
        cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| Unreadable)
    }

    /// Destroys the key: the file is overwritten with zeros, synced, and
    /// removed, and the copy in memory is cleared. Everything sealed with it
    /// is unreadable from now on; the next seal makes a new key.
    pub fn destroy(&self) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(k) = inner.key.as_mut() {
            k.fill(0);
        }
        inner.key = None;
        match std::fs::OpenOptions::new().write(true).open(&inner.path) {
            Ok(mut f) => {
                let len = f.metadata()?.len() as usize;
                f.write_all(&vec![0u8; len])?;
                f.sync_all()?;
                drop(f);
                std::fs::remove_file(&inner.path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = inner.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// The default place of a device's data key: `data.key` in its state
/// directory (mode 0600).
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("data.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_until_the_key_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::at(dir.path().join("data.key"));
        let sealed = key.seal(b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(DataKey::is_sealed(&sealed));
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"));
        // Another handle on the same file reads it.
        assert_eq!(
            DataKey::at(dir.path().join("data.key"))
                .open(&sealed)
                .unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(&changed), Err(Unreadable));
        key.destroy().unwrap();
        assert!(!dir.path().join("data.key").exists());
        assert_eq!(key.open(&sealed), Err(Unreadable));
        // A new key for what comes next.
        let again = key.seal(b"decommissioned").unwrap();
        assert_eq!(key.open(&again).unwrap(), b"decommissioned");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
