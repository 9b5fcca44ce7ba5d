//! Where a twin host keeps its shadows: a directory of files ([`DirStore`],
//! for the smallest gateways) or an SQLite database ([`SqliteStore`], one
//! durable transaction per batch of messages). Both behind
//! [`ShadowStore`], which the host writes in batches: everything a batch of
//! messages changed, in one step, before any of them is acknowledged.
//!
//! Each write says which version of the shadow it replaces, so that a
//! store shared by several hosts can refuse a write made from a stale copy
//! (compare-and-set on the version) instead of losing the other host's
//! update.

use std::io;
use std::path::{Path, PathBuf};

use lanyard_core::topic::valid_device_id;

use crate::store::{seal, unseal, write_atomic};

/// One shadow to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The device (its id, or `{tenant}/{id}`).
    pub key: String,
    /// The version of the stored shadow this replaces; `None` for a new one.
    pub replaces: Option<u64>,
    /// Its version after.
    pub version: u64,
    /// The shadow, encoded (`Shadow::encode`).
    pub bytes: Vec<u8>,
}

/// What a batch of messages changed, written in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Shadows written.
    pub puts: Vec<Put>,
    /// Devices decommissioned, and when (ms): their shadows go, a marker
    /// stays.
    pub decommissioned: Vec<(String, u64)>,
    /// Devices re-provisioned: their markers go.
    pub reprovisioned: Vec<String>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.decommissioned.is_empty() && self.reprovisioned.is_empty()
    }
}

/// What a store holds at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Each shadow: its bytes, or why they could not be read (the store has
    /// set the damaged record aside).
    pub shadows: Vec<(String, Result<Vec<u8>, String>)>,
    /// Devices decommissioned.
    pub decommissioned: Vec<String>,
}

/// What a store holds for one device, read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Its shadow: version and bytes.
    Shadow(u64, Vec<u8>),
    /// It is decommissioned.
    Decommissioned,
    /// Nothing: it never registered (or was re-provisioned).
    Absent,
}

/// A twin host's storage.
pub trait ShadowStore: Send {
    /// Everything stored.
    fn load(&mut self) -> io::Result<Loaded>;
    /// Writes `batch` durably, all or (on an error) nothing. Returns the
    /// keys whose [`Put::replaces`] was not the stored version (another
    /// host wrote them meanwhile): those puts are not written, the rest
    /// are.
    fn commit(&mut self, batch: &Batch) -> io::Result<Vec<String>>;
    /// What is stored for `key`, read again: after a conflict, and, when
    /// the store is [shared](ShadowStore::shared), for a device the host
    /// has not seen.
    fn reload(&mut self, key: &str) -> io::Result<Stored>;
    /// Whether other hosts write this store too: the host then reads a
    /// device it does not know (or knows as decommissioned) from the store
    /// before it refuses it, and reads a shadow again before it answers a
    /// `get` with it.
    fn shared(&self) -> bool {
        false
    }
}

/// One file per device in a directory (`{dir}/{id}.cbor`, or
/// `{dir}/{tenant}/{id}.cbor`), each written atomically and sealed with a
/// CRC-32; a marker file per decommissioned device. One fsync per shadow
/// written: for small gateways; a busy host wants [`SqliteStore`].
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Uses `dir`, creating it.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DirStore { dir })
    }
}

impl ShadowStore for DirStore {
    fn load(&mut self) -> io::Result<Loaded> {
        let mut loaded = Loaded::default();
        // Shared-namespace shadows at the top, tenants' in a directory each.
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let tenant = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
            if path.is_dir() && lanyard_core::agent::messages::valid_tenant(tenant) {
                for inner in std::fs::read_dir(&path)? {
                    files.push((Some(tenant.to_owned()), inner?.path()));
                }
            } else {
                files.push((None, path));
            }
        }
        for (tenant, path) in files {
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if !valid_device_id(stem) {
                continue;
            }
            let key = match tenant {
                Some(t) => format!("{t}/{stem}"),
                None => stem.to_owned(),
            };
            match ext {
                "cbor" => {
                    let bytes = std::fs::read(&path)?;
                    let read = match readable(&bytes) {
                        Ok(b) => Ok(b.to_vec()),
                        Err(why) => Err(set_aside(&self.dir, &path, &why)?),
                    };
                    loaded.shadows.push((key, read));
                }
                "decommissioned" => loaded.decommissioned.push(key),
                _ => {}
            }
        }
        Ok(loaded)
    }

    fn commit(&mut self, batch: &Batch) -> io::Result<Vec<String>> {
        let ensure_parent = |path: &Path| match path.parent() {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        };
        for p in &batch.puts {
            let path = shadow_file(&self.dir, &p.key);
            ensure_parent(&path)?;
            write_atomic(&path, &seal(&p.bytes))?;
        }
        for (key, at_ms) in &batch.decommissioned {
            let marker = marker_file(&self.dir, key);
            ensure_parent(&marker)?;
            write_atomic(&marker, at_ms.to_string().as_bytes())?;
            remove_if_there(&shadow_file(&self.dir, key))?;
        }
        for key in &batch.reprovisioned {
            remove_if_there(&marker_file(&self.dir, key))?;
        }
        // One writer: nothing can have changed under it.
        Ok(Vec::new())
    }

    fn reload(&mut self, key: &str) -> io::Result<Stored> {
        // One writer: the host's memory is the truth, and this store
        // reports no conflicts.
        let _ = key;
        Ok(Stored::Absent)
    }
}

/// A stored record's shadow bytes, if the seal holds and they decode as
/// a shadow; otherwise why not.
fn readable(record: &[u8]) -> Result<&[u8], String> {
    let bytes = unseal(record).map_err(|e| e.to_string())?;
    super::TwinShadow::decode(bytes, lanyard_core::shadow::ConflictPolicy::CloudWins)
        .map_err(|e| format!("not a shadow: {e}"))?;
    Ok(bytes)
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Where a [`DirStore`] keeps a device's shadow (the one place that says
/// so): `{dir}/{device-id}.cbor`, or `{dir}/{tenant}/{device-id}.cbor` for
/// a device named `{tenant}/{device-id}`.
pub fn shadow_file(dir: &Path, device: &str) -> PathBuf {
    dir.join(format!("{device}.cbor"))
}

/// Where a [`DirStore`] records that a device is decommissioned:
/// `{dir}/{device-id}.decommissioned` (or under its tenant's directory).
pub fn marker_file(dir: &Path, device: &str) -> PathBuf {
    dir.join(format!("{device}.decommissioned"))
}

/// Moves a damaged file to `{dir}/.damaged/`, named after it and the time;
/// returns why it was set aside and where it went, to log.
fn set_aside(dir: &Path, file: &Path, why: &str) -> io::Result<String> {
    let aside = dir.join(".damaged");
    std::fs::create_dir_all(&aside)?;
    let name = file
        .strip_prefix(dir)
        .unwrap_or(file)
        .to_string_lossy()
        .replace('/', "_");
    let to = aside.join(format!("{name}.{}", unix_ms()));
    std::fs::rename(file, &to)?;
    Ok(format!(
        "{why}; {} moved to {}",
        file.display(),
        to.display()
    ))
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Shadows in an SQLite database (WAL, `synchronous=FULL`): a batch is one
/// transaction, so a busy host pays one fsync per batch, not per update.
/// Each shadow is sealed with a CRC-32 like a file would be; a damaged one
/// is moved to the `damaged` table. The default store of `lanyard twin`
/// (`--db`); SQLite is embedded (`rusqlite` with its bundled SQLite), so a
/// single host needs no server.
pub struct SqliteStore {
    db: rusqlite::Connection,
}

fn sql(e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("sqlite: {e}"))
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let db = rusqlite::Connection::open(path).map_err(sql)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS shadows (
                 device TEXT PRIMARY KEY, version INTEGER NOT NULL, doc BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS decommissioned (
                 device TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS damaged (
                 device TEXT NOT NULL, at_ms INTEGER NOT NULL, doc BLOB NOT NULL);",
        )
        .map_err(sql)?;
        Ok(SqliteStore { db })
    }

    /// Copies a [`DirStore`] directory (what `lanyard twin --state-dir`
    /// kept) into this database: every shadow and marker; damaged files are
    /// set aside as the directory store does and not copied. Returns how
    /// many shadows were copied. Shadows already in the database are kept.
    pub fn import_dir(&mut self, dir: &Path) -> io::Result<usize> {
        let loaded = DirStore::open(dir)?.load()?;
        let tx = self.db.transaction().map_err(sql)?;
        let mut n = 0;
        for (key, read) in loaded.shadows {
            let Ok(bytes) = read else { continue };
            let version =
                super::TwinShadow::decode(&bytes, lanyard_core::shadow::ConflictPolicy::CloudWins)
                    .map(|s| s.version())
                    .unwrap_or(0);
            n += tx
                .execute(
                    "INSERT INTO shadows (device, version, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT (device) DO NOTHING",
                    rusqlite::params![key, version as i64, seal(&bytes)],
                )
                .map_err(sql)?;
        }
        for key in loaded.decommissioned {
            tx.execute(
                "INSERT INTO decommissioned (device, at_ms) VALUES (?1, ?2)
                 ON CONFLICT (device) DO NOTHING",
                rusqlite::params![key, unix_ms() as i64],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(n)
    }
}

impl ShadowStore for SqliteStore {
    fn load(&mut self) -> io::Result<Loaded> {
        let mut loaded = Loaded::default();
        let mut damaged = Vec::new();
        {
            let mut q = self
                .db
                .prepare("SELECT device, doc FROM shadows")
                .map_err(sql)?;
            let rows = q
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(sql)?;
            for row in rows {
                let (key, doc) = row.map_err(sql)?;
                match readable(&doc) {
                    Ok(b) => loaded.shadows.push((key, Ok(b.to_vec()))),
                    Err(why) => damaged.push((key, doc, why)),
                }
            }
        }
        for (key, doc, why) in damaged {
            let tx = self.db.transaction().map_err(sql)?;
            tx.execute(
                "INSERT INTO damaged (device, at_ms, doc) VALUES (?1, ?2, ?3)",
                rusqlite::params![key, unix_ms() as i64, doc],
            )
            .map_err(sql)?;
            tx.execute("DELETE FROM shadows WHERE device = ?1", [&key])
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
            loaded
                .shadows
                .push((key, Err(format!("{why}; moved to the damaged table"))));
        }
        let mut q = self
            .db
            .prepare("SELECT device FROM decommissioned")
            .map_err(sql)?;
        for row in q.query_map([], |r| r.get::<_, String>(0)).map_err(sql)? {
            loaded.decommissioned.push(row.map_err(sql)?);
        }
        Ok(loaded)
    }

    fn commit(&mut self, batch: &Batch) -> io::Result<Vec<String>> {
        let tx = self.db.transaction().map_err(sql)?;
        let mut conflicts = Vec::new();
        for p in &batch.puts {
            let doc = seal(&p.bytes);
            let written = match p.replaces {
                None => tx.execute(
                    "INSERT INTO shadows (device, version, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT (device) DO NOTHING",
                    rusqlite::params![p.key, p.version as i64, doc],
                ),
                Some(v) => tx.execute(
                    "UPDATE shadows SET version = ?2, doc = ?3 WHERE device = ?1 AND version = ?4",
                    rusqlite::params![p.key, p.version as i64, doc, v as i64],
                ),
            }
            .map_err(sql)?;
            if written == 0 {
                conflicts.push(p.key.clone());
            }
        }
        for (key, at_ms) in &batch.decommissioned {
            tx.execute("DELETE FROM shadows WHERE device = ?1", [key])
                .map_err(sql)?;
            tx.execute(
                "INSERT INTO decommissioned (device, at_ms) VALUES (?1, ?2)
                 ON CONFLICT (device) DO UPDATE SET at_ms = excluded.at_ms",
                rusqlite::params![key, *at_ms as i64],
            )
            .map_err(sql)?;
        }
        for key in &batch.reprovisioned {
            tx.execute("DELETE FROM decommissioned WHERE device = ?1", [key])
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(conflicts)
    }

    fn reload(&mut self, key: &str) -> io::Result<Stored> {
        let row = self
            .db
            .query_row(
                "SELECT version, doc FROM shadows WHERE device = ?1",
                [key],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(sql(e)),
            })?;
        if let Some((v, doc)) = row {
            let bytes =
                readable(&doc).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            return Ok(Stored::Shadow(v as u64, bytes.to_vec()));
        }
        let gone: i64 = self
            .db
            .query_row(
                "SELECT count(*) FROM decommissioned WHERE device = ?1",
                [key],
                |r| r.get(0),
            )
            .map_err(sql)?;
        Ok(if gone > 0 {
            Stored::Decommissioned
        } else {
            Stored::Absent
        })
    }
}

/// Shadows in a PostgreSQL database, shared by several twin hosts: every
/// write is a compare-and-set on the shadow's version (a host writing from
/// a stale copy is refused and reads it again), a batch is one
/// transaction, and a host reads from the database a device it has not
/// seen. The connection runs on a thread of its own (the `postgres`
/// client blocks, and must not block inside the host's async runtime's
/// own machinery).
pub struct PgStore {
    requests: std::sync::mpsc::Sender<PgRequest>,
}

enum PgRequest {
    Load(std::sync::mpsc::Sender<io::Result<Loaded>>),
    Commit(Batch, std::sync::mpsc::Sender<io::Result<Vec<String>>>),
    Reload(String, std::sync::mpsc::Sender<io::Result<Stored>>),
}

fn pg(e: postgres::Error) -> io::Error {
    io::Error::other(format!("postgres: {e}"))
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`, or the
    /// `host=... port=...` form) and creates the tables if needed.
    pub fn connect(url: &str) -> io::Result<Self> {
        let (requests, inbox) = std::sync::mpsc::channel::<PgRequest>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<io::Result<()>>();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("lanyard-pg".into())
            .spawn(move || {
                let mut db = match postgres::Client::connect(&url, postgres::NoTls) {
                    Ok(db) => db,
                    Err(e) => {
                        let _ = ready_tx.send(Err(pg(e)));
                        return;
                    }
                };
                let made = db.batch_execute(
                    "CREATE TABLE IF NOT EXISTS shadows (
                         device TEXT PRIMARY KEY, version BIGINT NOT NULL, doc BYTEA NOT NULL);
                     CREATE TABLE IF NOT EXISTS decommissioned (
                         device TEXT PRIMARY KEY, at_ms BIGINT NOT NULL);
                     CREATE TABLE IF NOT EXISTS damaged (
                         device TEXT NOT NULL, at_ms BIGINT NOT NULL, doc BYTEA NOT NULL);",
                );
                let _ = ready_tx.send(made.map_err(pg));
                for request in inbox {
                    match request {
                        PgRequest::Load(reply) => {
                            let _ = reply.send(pg_load(&mut db));
                        }
                        PgRequest::Commit(batch, reply) => {
                            let _ = reply.send(pg_commit(&mut db, &batch));
                        }
                        PgRequest::Reload(key, reply) => {
                            let _ = reply.send(pg_reload(&mut db, &key));
                        }
                    }
                }
            })?;
        ready
            .recv()
            .map_err(|_| io::Error::other("postgres: connection thread ended"))??;
        Ok(PgStore { requests })
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<io::Result<T>>) -> PgRequest,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| io::Error::other("postgres: connection thread ended"))?;
        rx.recv()
            .map_err(|_| io::Error::other("postgres: connection thread ended"))?
    }
}

fn pg_load(db: &mut postgres::Client) -> io::Result<Loaded> {
    let mut loaded = Loaded::default();
    for row in db
        .query("SELECT device, doc FROM shadows", &[])
        .map_err(pg)?
    {
        let (key, doc): (String, Vec<u8>) = (row.get(0), row.get(1));
        match readable(&doc) {
            Ok(b) => loaded.shadows.push((key, Ok(b.to_vec()))),
            Err(why) => {
                let mut tx = db.transaction().map_err(pg)?;
                tx.execute(
                    "INSERT INTO damaged (device, at_ms, doc) VALUES ($1, $2, $3)",
                    &[&key, &(unix_ms() as i64), &doc],
                )
                .map_err(pg)?;
                tx.execute("DELETE FROM shadows WHERE device = $1", &[&key])
                    .map_err(pg)?;
                tx.commit().map_err(pg)?;
                loaded
                    .shadows
                    .push((key, Err(format!("{why}; moved to the damaged table"))));
            }
        }
    }
    for row in db
        .query("SELECT device FROM decommissioned", &[])
        .map_err(pg)?
    {
        loaded.decommissioned.push(row.get(0));
    }
    Ok(loaded)
}

fn pg_commit(db: &mut postgres::Client, batch: &Batch) -> io::Result<Vec<String>> {
    let mut tx = db.transaction().map_err(pg)?;
    let mut conflicts = Vec::new();
    // In one order on every host: two hosts' transactions never wait on
    // each other's rows in a cycle.
    let mut puts: Vec<&Put> = batch.puts.iter().collect();
    puts.sort_by(|a, b| a.key.cmp(&b.key));
    for p in puts {
        let doc = seal(&p.bytes);
        let version = p.version as i64;
        let written = match p.replaces {
            None => tx.execute(
                "INSERT INTO shadows (device, version, doc) VALUES ($1, $2, $3)
                 ON CONFLICT (device) DO NOTHING",
                &[&p.key, &version, &doc],
            ),
            Some(v) => tx.execute(
                "UPDATE shadows SET version = $2, doc = $3 WHERE device = $1 AND version = $4",
                &[&p.key, &version, &doc, &(v as i64)],
            ),
        }
        .map_err(pg)?;
        if written == 0 {
            conflicts.push(p.key.clone());
        }
    }
    for (key, at_ms) in &batch.decommissioned {
        tx.execute("DELETE FROM shadows WHERE device = $1", &[key])
            .map_err(pg)?;
        tx.execute(
            "INSERT INTO decommissioned (device, at_ms) VALUES ($1, $2)
             ON CONFLICT (device) DO UPDATE SET at_ms = excluded.at_ms",
            &[key, &(*at_ms as i64)],
        )
        .map_err(pg)?;
    }
    for key in &batch.reprovisioned {
        tx.execute("DELETE FROM decommissioned WHERE device = $1", &[key])
            .map_err(pg)?;
    }
    tx.commit().map_err(pg)?;
    Ok(conflicts)
}

fn pg_reload(db: &mut postgres::Client, key: &str) -> io::Result<Stored> {
    if let Some(row) = db
        .query_opt(
            "SELECT version, doc FROM shadows WHERE device = $1",
            &[&key],
        )
        .map_err(pg)?
    {
        let (v, doc): (i64, Vec<u8>) = (row.get(0), row.get(1));
        let bytes = readable(&doc).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        return Ok(Stored::Shadow(v as u64, bytes.to_vec()));
    }
    let gone = db
        .query_opt("SELECT 1 FROM decommissioned WHERE device = $1", &[&key])
        .map_err(pg)?
        .is_some();
    Ok(if gone {
        Stored::Decommissioned
    } else {
        Stored::Absent
    })
}

impl ShadowStore for PgStore {
    fn load(&mut self) -> io::Result<Loaded> {
        self.ask(PgRequest::Load)
    }

    fn commit(&mut self, batch: &Batch) -> io::Result<Vec<String>> {
        let batch = batch.clone();
        self.ask(|reply| PgRequest::Commit(batch, reply))
    }

    fn reload(&mut self, key: &str) -> io::Result<Stored> {
        let key = key.to_owned();
        self.ask(|reply| PgRequest::Reload(key, reply))
    }

    fn shared(&self) -> bool {
        true
    }
}
