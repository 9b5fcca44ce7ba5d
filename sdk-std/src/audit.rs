//! The fleet's audit log: what happened to which device, when, and who
//! asked, one JSON line per entry, append-only. Each entry carries the
//! SHA-256 of the line before it, so an entry edited or removed anywhere
//! but at the end breaks the chain at the next one, and [`verify`] says
//! where. The end itself is anchored by the head hash [`verify`] returns:
//! an operator who keeps it (`lanyard audit verify --head`) detects lines
//! cut from the end too.
//!
//! ```
//! use lanyard_std::audit::{AuditAction, AuditLog, verify};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("audit.log");
//! let mut log = AuditLog::open(&path)?;
//! log.record(1_700_000_000_000, "ly-0a1b2c3d4e5f", AuditAction::Registered, Some("ly-0a1b2c3d4e5f"),
//!            serde_json::json!({"boot": 1}));
//! log.commit()?;
//! let checked = verify(&path)?;
//! assert_eq!(checked.entries, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A device registered for the first time (or after re-provisioning).
    Registered,
    /// A device decommissioned: its shadow archived, its messages refused.
    Decommissioned,
    /// An operator accepted a decommissioned device again.
    Reprovisioned,
    /// An app or operator set desired state (the new version in the
    /// detail).
    DesiredSet,
    /// An operator settled a conflict parked for one (the path, the
    /// winner and the new version in the detail).
    ConflictResolved,
    /// An operator pushed a configuration to a device (the version and
    /// the fields it changes in the detail).
    ConfigPushed,
    /// A device answered a configuration: applied, ignored or rejected.
    ConfigAcknowledged,
    /// The provisioning service issued a device a certificate (its serial,
    /// expiry, and whether by claim or renewal in the detail).
    CertificateIssued,
    /// A certificate was revoked (its serial and why in the detail).
    CertificateRevoked,
    /// An operator started a rollout (its job, version, image digest,
    /// target count and plan in the detail).
    RolloutStarted,
    /// An operator paused a rollout.
    RolloutPaused,
    /// An operator resumed a rollout.
    RolloutResumed,
    /// An operator cancelled a rollout.
    RolloutCancelled,
    /// A rollout ended (completed, aborted by its criteria, or cancelled;
    /// its devices by where they stand in the detail).
    RolloutEnded,
}

impl AuditAction {
    /// Its name in the log.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::Registered => "registered",
            AuditAction::Decommissioned => "decommissioned",
            AuditAction::Reprovisioned => "reprovisioned",
            AuditAction::DesiredSet => "desired_set",
            AuditAction::ConflictResolved => "conflict_resolved",
            AuditAction::ConfigPushed => "config_pushed",
            AuditAction::ConfigAcknowledged => "config_acknowledged",
            AuditAction::CertificateIssued => "certificate_issued",
            AuditAction::CertificateRevoked => "certificate_revoked",
            AuditAction::RolloutStarted => "rollout_started",
            AuditAction::RolloutPaused => "rollout_paused",
            AuditAction::RolloutResumed => "rollout_resumed",
            AuditAction::RolloutCancelled => "rollout_cancelled",
            AuditAction::RolloutEnded => "rollout_ended",
        }
    }
}

/// The hash the first entry names as its predecessor.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of one entry's line (without its newline), as the next entry
/// names it and [`verify`] returns the last one.
pub fn line_hash(line: &[u8]) -> String {
    crate::hex::to_hex(&Sha256::digest(line))
}

/// Why a log did not verify.
#[derive(Debug)]
pub enum AuditError {
    /// It could not be read.
    Io(io::Error),
    /// Line `line` (from 1) breaks the log: edited, removed, reordered or
    /// not an entry.
    Broken {
        /// Where.
        line: u64,
        /// What is wrong.
        why: String,
    },
    /// The log verifies but does not end at the head hash given.
    Head {
        /// The hash it ends at.
        found: String,
    },
}

impl std::fmt::Display for AuditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditError::Io(e) => write!(f, "{e}"),
            AuditError::Broken { line, why } => write!(f, "line {line}: {why}"),
            AuditError::Head { found } => write!(
                f,
                "the log ends at {found}, not at the head given: entries were cut from its end"
            ),
        }
    }
}

impl std::error::Error for AuditError {}

impl From<io::Error> for AuditError {
    fn from(e: io::Error) -> Self {
        AuditError::Io(e)
    }
}

/// What [`verify`] found in a sound log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries, all chained.
    pub entries: u64,
    /// The hash of the last entry (the head to keep).
    pub head: String,
    /// Bytes of an unfinished last line (a write cut off by a crash; never
    /// committed, so nothing was acknowledged for it), 0 when none.
    pub torn_tail: u64,
}

/// Reads the log at `path` and checks every entry's link to the one
/// before. An empty or missing log verifies, with no entries.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Verified {
                entries: 0,
                head: GENESIS.into(),
                torn_tail: 0,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut reader = BufReader::new(file);
    let mut head = GENESIS.to_owned();
    let mut entries = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            return Ok(Verified {
                entries,
                head,
                torn_tail: n as u64,
            });
        }
        line.pop();
        let at = entries + 1;
        let broken = |why: String| AuditError::Broken { line: at, why };
        let entry: Json =
            serde_json::from_slice(&line).map_err(|e| broken(format!("not an entry: {e}")))?;
        if entry["seq"].as_u64() != Some(at) {
            return Err(broken(format!(
                "sequence {} where {at} was due",
                entry["seq"]
            )));
        }
        if entry["prev"].as_str() != Some(head.as_str()) {
            return Err(broken(
                "does not follow the entry before it (that entry was edited or removed)".into(),
            ));
        }
        head = line_hash(&line);
        entries = at;
    }
    Ok(Verified {
        entries,
        head,
        torn_tail: 0,
    })
}

/// An audit log open for appending.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    head: String,
    seq: u64,
    /// Entries made since the last commit.
    pending: Vec<u8>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, verifying it first: a broken
    /// log is refused (appending to it would hide where it broke). An
    /// unfinished last line (a crash mid-write, never committed) is cut
    /// off.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let checked = verify(path)?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if checked.torn_tail > 0 {
            let len = file.metadata()?.len();
            file.set_len(len - checked.torn_tail)?;
            tracing::warn!(
                path = %path.display(),
                bytes = checked.torn_tail,
                "audit log: an unfinished last line (cut off by a crash) removed"
            );
        }
        Ok(AuditLog {
            path: path.to_owned(),
            file,
            head: checked.head,
            seq: checked.entries,
            pending: Vec::new(),
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds an entry, written by the next [`AuditLog::commit`]: `actor` is
    /// who asked (a device id, an operator's identity), `device` the
    /// device concerned.
    pub fn record(
        &mut self,
        at_ms: u64,
        actor: &str,
        action: AuditAction,
        device: Option<&str>,
        detail: Json,
    ) {
        self.seq += 1;
        let entry = json!({
            "seq": self.seq,
            "at_ms": at_ms,
            "actor": actor,
            "action": action.name(),
            "device": device,
            "detail": detail,
            "prev": self.head,
        });
        let line = entry.to_string();
        self.head = line_hash(line.as_bytes());
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
    }

    /// Writes the entries recorded since the last commit and makes them
    /// durable (fsync).
    pub fn commit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.file.sync_data()?;
        self.pending.clear();
        Ok(())
    }

    /// The hash of the last entry recorded.
    pub fn head(&self) -> &str {
        &self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &Path, n: u64) {
        let mut log = AuditLog::open(path).unwrap();
        for i in 0..n {
            log.record(
                1_000 + i,
                "lanyard-ops",
                AuditAction::DesiredSet,
                Some("ly-1"),
                json!({"version": i + 1}),
            );
        }
        log.commit().unwrap();
    }

    #[test]
    fn a_log_verifies_and_resumes_its_chain_when_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        sample(&path, 3);
        sample(&path, 2);
        let v = verify(&path).unwrap();
        assert_eq!((v.entries, v.torn_tail), (5, 0));
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), v.head);
    }

    #[test]
    fn an_edited_or_removed_entry_is_found_and_the_log_is_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        sample(&path, 4);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replacen("\"version\":2", "\"version\":9", 1);
        std::fs::write(&path, &edited).unwrap();
        match verify(&path) {
            Err(AuditError::Broken { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
        assert!(
            AuditLog::open(&path).is_err(),
            "appending would hide the break"
        );

        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        std::fs::write(&path, removed).unwrap();
        match verify(&path) {
            Err(AuditError::Broken { line, why }) => {
                assert_eq!(line, 2);
                assert!(why.contains("sequence"), "{why}");
            }
            other => panic!("{other:?}"),
        }

        // Renumbered to hide the gap: the chain still breaks.
        let renumbered = format!(
            "{}\n{}\n",
            lines[0],
            lines[2].replacen("\"seq\":3", "\"seq\":2", 1)
        );
        std::fs::write(&path, renumbered).unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 2, .. })
        ));
    }

    #[test]
    fn a_line_cut_off_by_a_crash_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        sample(&path, 2);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"at_ms\"").unwrap();
        assert_eq!(verify(&path).unwrap().torn_tail, 16);
        sample(&path, 1);
        let v = verify(&path).unwrap();
        assert_eq!((v.entries, v.torn_tail), (3, 0));
    }
}
