//! A fixed-capacity tree of leaves: one side (`desired` or `reported`) of a
//! shadow, or the state carried by an update or a delta.
//!
//! The tree is stored flat: a vector of leaves sorted by [`Path`], and one
//! byte pool holding every path, text, byte string and array. Maps exist only
//! as shared path prefixes, so an empty map is not stored (AWS IoT prunes
//! them too). Operations that rebuild the tree write a fresh one, which
//! compacts the pool for free and leaves the source untouched on failure.

use core::fmt;

use minicbor::decode::Decoder;
use minicbor::encode::{Encoder, Write};

use super::path::{MAX_DEPTH, Path, PathBuf, SEP};
use super::value::{LeafMeta, Source, Span, Stored, Value};
use crate::error::{CapacityError, DecodeError, Error, PathError};
use crate::wire::cbor::{self, read_i64};

/// Default leaf capacity of a tree. With [`DEFAULT_POOL`] it holds an AWS IoT
/// shadow state document of 8 KB (the service's limit) of the usual shape: a
/// test fills both sides with an 8 KB document of 300+ leaves, 3 levels.
///
/// The limit is leaves and pool bytes, not JSON bytes, so a pathological
/// 8 KB document can still exceed it: more than 512 one-character leaves,
/// or many leaves under long ancestor keys (each leaf stores its full path).
/// Such an update is refused with [`crate::CapacityError`] (AWS code 413) and
/// changes nothing; pick larger capacities for such documents.
pub const DEFAULT_LEAVES: usize = 512;
/// Default pool capacity in bytes (paths, text, bytes, arrays).
pub const DEFAULT_POOL: usize = 16 * 1024;

#[derive(Clone, Copy, Debug)]
struct Leaf {
    path: Span,
    /// The first 8 path bytes, big-endian, zero-padded: most comparisons of
    /// a search are settled by this without reading the pool.
    key: u64,
    value: Stored,
    meta: LeafMeta,
    /// Kept by `Shadow`: the low 31 bits index the leaf at the same path in
    /// the other tree (desired <-> reported), or are `NO_TWIN`; the top bit
    /// (`DIFFERS`), on desired leaves, says the reported value differs.
    /// Packed so that a leaf stays 64 bytes with `hash`.
    link: u32,
    /// `hash_path` of the path, for the index.
    hash: u32,
}

// A leaf fits one cache line of 64 bytes; keep it so.
const _: () = assert!(core::mem::size_of::<Leaf>() <= 64);

// The encoder finds separators as zero bytes, 8 at a time.
const _: () = assert!(SEP == 0);

const NO_TWIN: u32 = 0x7fff_ffff;
const DIFFERS: u32 = 0x8000_0000;

/// Leaf indices found by a check, kept for the write that follows; small
/// because most updates are.
pub(crate) type FoundLeaves = heapless::Vec<u32, 16>;

/// A fast hash of a path, 8 bytes at a time.
fn hash_path(path: &[u8]) -> u32 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ path.len() as u64;
    let mut chunks = path.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ word(c)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 32)) as u32
}

/// Orders two paths whose order keys are equal: their first 8 bytes are, so
/// compare the rest 8 bytes at a time (faster than a `memcmp` call for the
/// short paths of a shadow).
fn cmp_after_key(a: &[u8], b: &[u8]) -> core::cmp::Ordering {
    let (a, b) = (a.get(8..).unwrap_or(&[]), b.get(8..).unwrap_or(&[]));
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (x, y) = (word(x), word(y));
        if x != y {
            return x.cmp(&y);
        }
    }
    // The tails (under 8 bytes) byte by byte: a slice comparison would be
    // a `memcmp` call, which dominated a document's sync in a profile.
    let n = a.len().min(b.len()) / 8 * 8;
    let (a, b) = (&a[n..], &b[n..]);
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

fn word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(chunk);
    u64::from_be_bytes(w)
}

fn order_key(path: &[u8]) -> u64 {
    match path.get(..8) {
        Some(head) => word(head),
        // Short paths byte by byte: a copy into a padded buffer is a
        // `memcpy` call, which showed in a profile of a sync.
        None => path
            .iter()
            .enumerate()
            .fold(0, |k, (i, b)| k | u64::from(*b) << (56 - 8 * i)),
    }
}

/// One leaf as seen from outside the tree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry<'a> {
    /// Where the leaf sits.
    pub path: Path<'a>,
    /// Its value.
    pub value: Value<'a>,
    /// Who wrote it, when, in which document version.
    pub meta: LeafMeta,
}

/// A tree of at most `LEAVES` leaves whose paths and payloads fit in `POOL`
/// bytes. See the module documentation for the layout.
///
/// ```
/// use lanyard_core::shadow::{StateTree, PathBuf, Value};
/// let mut t: StateTree<8, 256> = StateTree::new();
/// t.insert(&PathBuf::from_dotted("led.on")?, Value::Bool(true))?;
/// t.insert(&PathBuf::from_dotted("led.period_ms")?, Value::Int(500))?;
/// // A leaf where a map is, is refused and changes nothing.
/// assert!(t.insert(&PathBuf::from_dotted("led")?, Value::Int(1)).is_err());
/// assert_eq!(t.len(), 2);
/// let mut buf = [0u8; 64];
/// let n = t.encode(&mut buf)?;
/// let back: StateTree<8, 256> = StateTree::decode(&buf[..n])?;
/// assert_eq!(back, t);
/// # Ok::<(), lanyard_core::Error>(())
/// ```
#[derive(Clone)]
pub struct StateTree<const LEAVES: usize = DEFAULT_LEAVES, const POOL: usize = DEFAULT_POOL> {
    leaves: heapless::Vec<Leaf, LEAVES>,
    pool: heapless::Vec<u8, POOL>,
    /// Open-addressing hash index of paths: 0 empty, else leaf index + 1.
    /// Valid only while `indexed`; any change of the leaf list clears that.
    slots: [u32; LEAVES],
    indexed: bool,
}

impl Leaf {
    fn set_differs(&mut self, differs: bool) {
        self.link = (self.link & NO_TWIN) | if differs { DIFFERS } else { 0 };
    }
}

impl<const L: usize, const P: usize> Default for StateTree<L, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const L: usize, const P: usize> StateTree<L, P> {
    /// An empty tree.
    pub const fn new() -> Self {
        StateTree {
            leaves: heapless::Vec::new(),
            pool: heapless::Vec::new(),
            slots: [0; L],
            indexed: false,
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// True when there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Bytes of the pool in use.
    pub fn pool_used(&self) -> usize {
        self.pool.len()
    }

    /// Removes every leaf.
    pub fn clear(&mut self) {
        self.leaves.clear();
        self.indexed = false;
        self.pool.clear();
    }

    /// The leaf at sorted position `i`.
    pub(crate) fn at(&self, i: usize) -> Entry<'_> {
        let l = &self.leaves[i];
        Entry {
            path: Path::from_encoded(l.path.slice(&self.pool)),
            value: l.value.view(&self.pool),
            meta: l.meta,
        }
    }

    fn path_at(&self, i: usize) -> &[u8] {
        self.leaves[i].path.slice(&self.pool)
    }

    /// Leaves in path order.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> + '_ {
        (0..self.leaves.len()).map(move |i| self.at(i))
    }

    /// Binary search by encoded path.
    pub(crate) fn find(&self, path: &[u8]) -> Result<usize, usize> {
        self.find_from(0, path)
    }

    /// The leaf at `path`, if there is one.
    pub fn get(&self, path: Path<'_>) -> Option<Entry<'_>> {
        self.lookup(path.as_bytes()).map(|i| self.at(i))
    }

    /// Builds the hash index of paths, so that lookups cost one hash and
    /// usually one comparison instead of a binary search. Kept until the
    /// leaf list changes; trees fuller than 3/4 of `L` are not indexed.
    pub(crate) fn build_index(&mut self) {
        self.indexed = false;
        if L == 0 || self.leaves.len() * 4 > L * 3 {
            return;
        }
        self.slots.fill(0);
        for i in 0..self.leaves.len() {
            let mut s = (u64::from(self.leaves[i].hash) % L as u64) as usize;
            while self.slots[s] != 0 {
                s = (s + 1) % L;
            }
            self.slots[s] = i as u32 + 1;
        }
        self.indexed = true;
    }

    /// The index of the leaf at `path`: through the hash index when built,
    /// else by binary search.
    pub(crate) fn lookup(&self, path: &[u8]) -> Option<usize> {
        if !self.indexed {
            // No hash to compute for a binary search.
            return self.find(path).ok();
        }
        self.lookup_hashed(path, hash_path(path))
    }

    /// [`StateTree::lookup`] with the path's hash already known.
    fn lookup_hashed(&self, path: &[u8], hash: u32) -> Option<usize> {
        if !self.indexed {
            return self.find(path).ok();
        }
        let mut s = (u64::from(hash) % L as u64) as usize;
        // At most 3/4 full, so an empty slot ends every probe sequence.
        loop {
            match self.slots[s] {
                0 => return None,
                v => {
                    let i = (v - 1) as usize;
                    if self.leaves[i].hash == hash && self.path_at(i) == path {
                        return Some(i);
                    }
                }
            }
            s = (s + 1) % L;
        }
    }

    /// The leaf at a dotted path such as `"hvac.setpoint"`.
    pub fn get_dotted(&self, dotted: &str) -> Option<Entry<'_>> {
        let p = PathBuf::from_dotted(dotted).ok()?;
        self.find(p.as_path().as_bytes()).ok().map(|i| self.at(i))
    }

    /// True when some leaf lies inside `path` (or is `path`).
    pub(crate) fn has_within(&self, path: &[u8]) -> bool {
        // Decoding a sorted map appends: a path after the last leaf holds
        // none (a leaf inside it would sort at or after it).
        if self.sorts_after_last(path) {
            return false;
        }
        let pos = match self.find(path) {
            Ok(_) => return true,
            Err(pos) => pos,
        };
        pos < self.leaves.len() && self.path_at(pos).starts_with(path)
    }

    /// Sets `path` to `value` with default metadata (cloud, time 0).
    pub fn insert(&mut self, path: &PathBuf, value: Value<'_>) -> Result<(), Error> {
        self.insert_with_meta(path.as_path(), value, LeafMeta::new(Source::Cloud, 0))
    }

    /// Sets a leaf, replacing one at the same path. A path through an
    /// existing leaf, or onto an existing map, is refused. On any error the
    /// tree is unchanged.
    pub fn insert_with_meta(
        &mut self,
        path: Path<'_>,
        value: Value<'_>,
        meta: LeafMeta,
    ) -> Result<(), Error> {
        let bytes = path.as_bytes();
        if bytes.is_empty() {
            return Err(PathError::LeafMapClash.into());
        }
        // The usual case when decoding a sorted map: the path sorts after
        // every leaf and does not run through the last one. Then no leaf is
        // its ancestor either (an ancestor is a prefix of the path, and
        // every path between the two in order starts with it, the last
        // leaf included), so it is appended without searching.
        let appends = self.sorts_after_last(bytes)
            && !self
                .leaves
                .last()
                .is_some_and(|l| bytes.starts_with(l.path.slice(&self.pool)));
        let pos = if appends {
            self.leaves.len()
        } else {
            self.insert_position(path, value)?
        };
        if self.leaves.is_full() {
            return Err(CapacityError::Leaves { capacity: L }.into());
        }
        // A full pool is a capacity error here, as in the check above,
        // whichever value ran out of room.
        let leaf = self.store(bytes, value, meta, false).map_err(|e| match e {
            DecodeError::Capacity(c) => Error::Capacity(c),
            e => e.into(),
        })?;
        // Capacity was checked above, so the insert cannot fail.
        let _ = self.leaves.insert(pos, leaf);
        self.indexed = false;
        Ok(())
    }

    /// Where a leaf at `path` goes when it is not simply appended: after
    /// checking it runs through no leaf and onto no map. A leaf already at
    /// `path` is replaced: removed here, and its index returned.
    fn insert_position(&mut self, path: Path<'_>, value: Value<'_>) -> Result<usize, Error> {
        let bytes = path.as_bytes();
        let pos = match self.find(bytes) {
            Ok(i) => {
                // Replace: check the new value fits once the old one is gone,
                // so that the remove below is never left half done.
                let old = stored_len(&self.at(i));
                let new = bytes.len() + payload_len(value)?;
                if (self.pool.len() - old).saturating_add(new) > P {
                    return Err(CapacityError::Pool { capacity: P }.into());
                }
                self.remove(path);
                return Ok(i);
            }
            Err(pos) => pos,
        };
        if pos < self.leaves.len() && self.path_at(pos).starts_with(bytes) {
            return Err(PathError::LeafMapClash.into());
        }
        for d in 1..path.depth() {
            if self.find(path.prefix(d).as_bytes()).is_ok() {
                return Err(PathError::LeafMapClash.into());
            }
        }
        Ok(pos)
    }

    /// True when `path` sorts after every leaf (or there is none).
    fn sorts_after_last(&self, path: &[u8]) -> bool {
        self.leaves.last().is_none_or(|l| {
            let (k, p) = (order_key(path), l.path.slice(&self.pool));
            k > l.key || (k == l.key && cmp_after_key(path, p).is_gt())
        })
    }

    /// Appends a leaf that sorts after every existing one. Values that come
    /// from another tree are already canonical.
    pub(crate) fn push_sorted(
        &mut self,
        path: &[u8],
        value: Value<'_>,
        meta: LeafMeta,
    ) -> Result<(), DecodeError> {
        debug_assert!(
            self.leaves
                .last()
                .is_none_or(|l| l.path.slice(&self.pool) < path)
        );
        if self.leaves.is_full() {
            return Err(CapacityError::Leaves { capacity: L }.into());
        }
        let leaf = self.store(path, value, meta, true)?;
        let _ = self.leaves.push(leaf);
        self.indexed = false;
        Ok(())
    }

    /// Appends a copy of leaf `i` of `src` (which sorts after every existing
    /// leaf), bytes for bytes, without re-validating what `src` validated.
    pub(crate) fn push_copy<const L2: usize, const P2: usize>(
        &mut self,
        src: &StateTree<L2, P2>,
        i: usize,
    ) -> Result<(), DecodeError> {
        if self.leaves.is_full() {
            return Err(CapacityError::Leaves { capacity: L }.into());
        }
        let l = &src.leaves[i];
        let mark = self.pool.len();
        let path = self.append(l.path.slice(&src.pool))?;
        let value = match l.value {
            Stored::Text(s) | Stored::Bytes(s) | Stored::Array(s) => {
                match self.append(s.slice(&src.pool)) {
                    Ok(span) => l.value.with_span(span),
                    Err(e) => {
                        self.pool.truncate(mark);
                        return Err(e.into());
                    }
                }
            }
            scalar => scalar,
        };
        self.indexed = false;
        let _ = self.leaves.push(Leaf {
            path,
            key: l.key,
            value,
            meta: l.meta,
            link: NO_TWIN,
            hash: l.hash,
        });
        Ok(())
    }

    /// Copies `path` and the value's payload into the pool; on failure the
    /// pool is cut back to where it was.
    fn store(
        &mut self,
        path: &[u8],
        value: Value<'_>,
        meta: LeafMeta,
        canonical: bool,
    ) -> Result<Leaf, DecodeError> {
        let mark = self.pool.len();
        let r = self.store_inner(path, value, canonical);
        match r {
            Ok((path, value)) => Ok(Leaf {
                path,
                value,
                meta,
                key: order_key(path.slice(&self.pool)),
                link: NO_TWIN,
                hash: hash_path(path.slice(&self.pool)),
            }),
            Err(e) => {
                self.pool.truncate(mark);
                Err(e)
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<Span, CapacityError> {
        let start = self.pool.len();
        self.pool
            .extend_from_slice(bytes)
            .map_err(|_| CapacityError::Pool { capacity: P })?;
        Ok(Span {
            start: start as u32,
            len: bytes.len() as u32,
        })
    }

    fn store_inner(
        &mut self,
        path: &[u8],
        value: Value<'_>,
        canonical: bool,
    ) -> Result<(Span, Stored), DecodeError> {
        let path = self.append(path)?;
        let stored = match value {
            Value::Null => Stored::Null,
            Value::Bool(b) => Stored::Bool(b),
            Value::Int(i) => Stored::Int(i),
            Value::Float(x) => Stored::Float(x.to_bits()),
            Value::Text(s) => Stored::Text(self.append(s.as_bytes())?),
            Value::Bytes(b) => Stored::Bytes(self.append(b)?),
            Value::Array(a) if canonical => Stored::Array(self.append(a.0)?),
            Value::Array(a) => {
                let start = self.pool.len();
                let mut d = Decoder::new(a.0);
                let pool = &mut self.pool;
                cbor::canonicalize_array(
                    &mut d,
                    &mut |b| {
                        pool.extend_from_slice(b)
                            .map_err(|_| CapacityError::Pool { capacity: P }.into())
                    },
                    0,
                )?;
                if d.position() != a.0.len() {
                    return Err(DecodeError::TrailingBytes { at: d.position() });
                }
                Stored::Array(Span {
                    start: start as u32,
                    len: (self.pool.len() - start) as u32,
                })
            }
        };
        Ok((path, stored))
    }

    /// Removes the leaf at `path` and gives its bytes back to the pool.
    /// Returns whether a leaf was there.
    pub fn remove(&mut self, path: Path<'_>) -> bool {
        let Ok(i) = self.find(path.as_bytes()) else {
            return false;
        };
        self.remove_index(i);
        true
    }

    /// Removes the leaves that stand where a leaf at `path` would go: a
    /// leaf at one of its prefixes (the path runs through it) and the
    /// leaves under it (a map it would replace), as a merge replaces a
    /// value with a map or the reverse. Returns how many were removed.
    pub fn remove_overlapping(&mut self, path: Path<'_>) -> usize {
        let mut removed = 0;
        for depth in 1..path.depth() {
            removed += usize::from(self.remove(path.prefix(depth)));
        }
        let bytes = path.as_bytes();
        let from = match self.find(bytes) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        while from < self.leaves.len() && self.path_at(from).starts_with(bytes) {
            self.remove_index(from);
            removed += 1;
        }
        removed
    }

    fn remove_index(&mut self, i: usize) {
        let leaf = self.leaves.remove(i);
        self.indexed = false;
        let payload = match leaf.value {
            Stored::Text(s) | Stored::Bytes(s) | Stored::Array(s) => Some(s),
            _ => None,
        };
        // Cut the later range first so the earlier one's offsets still hold.
        match payload {
            Some(p) if p.start > leaf.path.start => {
                self.cut(p);
                self.cut(leaf.path);
            }
            Some(p) => {
                self.cut(leaf.path);
                self.cut(p);
            }
            None => self.cut(leaf.path),
        }
    }

    /// Removes a range of the pool and moves every later span down.
    fn cut(&mut self, range: Span) {
        let (start, end) = (range.start as usize, (range.start + range.len) as usize);
        self.pool.copy_within(end.., start);
        self.pool.truncate(self.pool.len() - range.len as usize);
        let shift = |s: &mut Span| {
            if s.start as usize >= end {
                s.start -= range.len;
            }
        };
        for l in self.leaves.iter_mut() {
            shift(&mut l.path);
            if let Stored::Text(s) | Stored::Bytes(s) | Stored::Array(s) = &mut l.value {
                shift(s);
            }
        }
    }

    /// Sets the metadata of leaf `i`.
    pub(crate) fn set_meta(&mut self, i: usize, meta: LeafMeta) {
        self.leaves[i].meta = meta;
    }

    /// Sets leaf `i` to the integer `v` with `meta`, in place: an integer
    /// takes no pool bytes, and the leaf's path (so its place, hash and
    /// index slot) stays.
    pub(crate) fn set_int_at(&mut self, i: usize, v: i64, meta: LeafMeta) {
        let leaf = &mut self.leaves[i];
        leaf.value = Stored::Int(v);
        leaf.meta = meta;
    }

    /// Whether `update` only overwrites existing leaves with values that
    /// need no change of the tree's shape: the common case of a device
    /// reporting the same properties again, or the cloud changing existing
    /// settings. Payloads of a new length go to the end of the pool, so the
    /// pool must have room for them; the old bytes are garbage until the
    /// next rebuild. The leaf indices found are kept in `found` while it has
    /// room, to spare the write a second lookup.
    pub(crate) fn can_overwrite_in_place<const UL: usize, const UP: usize>(
        &self,
        update: &StateTree<UL, UP>,
        found: &mut FoundLeaves,
    ) -> bool {
        found.clear();
        let mut extra = 0usize;
        for j in 0..update.len() {
            let u = &update.leaves[j];
            let Some(k) = self.lookup_hashed(update.path_at(j), u.hash) else {
                return false;
            };
            // When full, the write looks the rest up again.
            let _ = found.push(k as u32);
            match self.leaves[k].value.in_place_cost(&update.leaves[j].value) {
                Some(bytes) => extra += bytes,
                None => return false,
            }
        }
        self.pool.len() + extra <= P
    }

    /// Writes what [`StateTree::can_overwrite_in_place`] allowed, and keeps
    /// the delta flags right: `self` and `other` are desired and reported
    /// (`self_is_desired` says which way round), linked by twin indices
    /// unless `twins_stale`, in which case the caller refreshes every flag.
    pub(crate) fn overwrite_in_place<const UL: usize, const UP: usize>(
        &mut self,
        other: &mut Self,
        update: &StateTree<UL, UP>,
        found: &FoundLeaves,
        meta: LeafMeta,
        self_is_desired: bool,
        twins_stale: bool,
    ) {
        for j in 0..update.len() {
            let k = match found.get(j) {
                Some(&k) => k as usize,
                None => match self.lookup_hashed(update.path_at(j), update.leaves[j].hash) {
                    Some(k) => k,
                    None => continue,
                },
            };
            let new = update.leaves[j].value;
            let stored = match (self.leaves[k].value, new) {
                (Stored::Text(old), Stored::Text(src))
                | (Stored::Bytes(old), Stored::Bytes(src))
                | (Stored::Array(old), Stored::Array(src))
                    if old.len == src.len =>
                {
                    let (a, b) = (old.start as usize, (old.start + old.len) as usize);
                    self.pool[a..b].copy_from_slice(src.slice(&update.pool));
                    new.with_span(old)
                }
                (_, Stored::Text(src) | Stored::Bytes(src) | Stored::Array(src)) => {
                    // can_overwrite_in_place checked the room.
                    let Ok(span) = self.append(src.slice(&update.pool)) else {
                        continue;
                    };
                    new.with_span(span)
                }
                (_, scalar) => scalar,
            };
            self.leaves[k].value = stored;
            self.leaves[k].meta = meta;
            if twins_stale {
                continue;
            }
            // Only the written leaf can have changed its delta.
            if self_is_desired {
                let differs = self.value_differs(k, other, self.twin(k));
                self.leaves[k].set_differs(differs);
            } else if let Some(i) = self.twin(k) {
                let differs = other.value_differs(i, self, Some(k));
                other.leaves[i].set_differs(differs);
            }
        }
    }

    /// Orders `leaf` against `path`, whose order key is `key`.
    fn cmp_leaf(&self, leaf: &Leaf, key: u64, path: &[u8]) -> core::cmp::Ordering {
        leaf.key
            .cmp(&key)
            .then_with(|| cmp_after_key(leaf.path.slice(&self.pool), path))
    }

    /// Binary search from position `from` on.
    fn find_from(&self, from: usize, path: &[u8]) -> Result<usize, usize> {
        let key = order_key(path);
        self.leaves[from..]
            .binary_search_by(|l| self.cmp_leaf(l, key, path))
            .map(|k| k + from)
            .map_err(|k| k + from)
    }

    /// Walks forward from `from` (a cursor over paths visited in order) to
    /// the first leaf at or after `path`: the new cursor, and whether that
    /// leaf is at `path`. A sorted walk over another tree's paths costs one
    /// comparison or two per leaf instead of a search each.
    pub(crate) fn seek(&self, from: usize, path: &[u8]) -> (usize, bool) {
        let key = order_key(path);
        let mut k = from;
        while k < self.leaves.len() {
            match self.cmp_leaf(&self.leaves[k], key, path) {
                core::cmp::Ordering::Less => k += 1,
                core::cmp::Ordering::Equal => return (k, true),
                core::cmp::Ordering::Greater => return (k, false),
            }
        }
        (k, false)
    }

    /// The index of leaf `i`'s twin in the other tree, if it has one.
    pub(crate) fn twin(&self, i: usize) -> Option<usize> {
        let t = self.leaves[i].link & NO_TWIN;
        (t != NO_TWIN).then_some(t as usize)
    }

    /// Whether leaf `i`'s value differs from leaf `k` of `other`.
    pub(crate) fn value_differs<const L2: usize, const P2: usize>(
        &self,
        i: usize,
        other: &StateTree<L2, P2>,
        k: Option<usize>,
    ) -> bool {
        k.is_none_or(|k| {
            !self.leaves[i]
                .value
                .same_as(&self.pool, &other.leaves[k].value, &other.pool)
        })
    }

    /// Links every leaf to its twin at the same path in `other` (both ways)
    /// and sets each leaf's `differs` flag, in one walk.
    pub(crate) fn mark_differences<const L2: usize, const P2: usize>(
        &mut self,
        other: &mut StateTree<L2, P2>,
    ) {
        for l in other.leaves.iter_mut() {
            l.link = NO_TWIN;
        }
        let mut k = 0;
        for i in 0..self.len() {
            let p = self.leaves[i].path.slice(&self.pool);
            while k < other.len() && other.path_at(k) < p {
                k += 1;
            }
            let twin = (k < other.len() && other.path_at(k) == p).then_some(k);
            if let Some(k) = twin {
                other.leaves[k].link = i as u32;
            }
            self.leaves[i].link = twin.map_or(NO_TWIN, |k| k as u32);
            let differs = self.value_differs(i, other, twin);
            self.leaves[i].set_differs(differs);
        }
    }

    pub(crate) fn differs(&self, i: usize) -> bool {
        self.leaves[i].link & DIFFERS != 0
    }

    /// Walks `self` with `update` merged into it, in path order, with AWS IoT
    /// shadow semantics: a value replaces the leaf or the whole map at its
    /// path, a `null` deletes the leaf or map at its path, a value below an
    /// existing leaf turns that leaf into a map. `visit` gets each resulting
    /// leaf and whether it comes from the update.
    fn merge_walk<const UL: usize, const UP: usize, E>(
        &self,
        update: &StateTree<UL, UP>,
        mut visit: impl FnMut(usize, bool) -> Result<(), E>,
    ) -> Result<(), E> {
        // One pass over both sorted lists. Paths sort key by key with a map's
        // leaves right after the map's own path, so everything an update
        // entry replaces comes next to it.
        let (mut i, mut j) = (0, 0);
        while i < self.len() || j < update.len() {
            if i == self.len() {
                if !update.is_null(j) {
                    visit(j, true)?;
                }
                j += 1;
                continue;
            }
            let b = self.path_at(i);
            if j < update.len() {
                let u = update.path_at(j);
                // The update writes or deletes at `b` or a map around it.
                if b.starts_with(u) {
                    i += 1;
                    continue;
                }
                // The update writes below leaf `b`, turning it into a map (a
                // null below a leaf changes nothing).
                if u.starts_with(b) && update.writes_within(j, b) {
                    i += 1;
                    continue;
                }
                if u < b {
                    if !update.is_null(j) {
                        visit(j, true)?;
                    }
                    j += 1;
                    continue;
                }
            }
            visit(i, false)?;
            i += 1;
        }
        Ok(())
    }

    fn is_null(&self, i: usize) -> bool {
        matches!(self.leaves[i].value, Stored::Null)
    }

    /// Whether some non-null entry from position `from` on lies within `path`.
    fn writes_within(&self, from: usize, path: &[u8]) -> bool {
        (from..self.len())
            .take_while(|k| self.path_at(*k).starts_with(path))
            .any(|k| !matches!(self.leaves[k].value, Stored::Null))
    }

    /// Whether `self` merged with `update` fits in a tree of this capacity.
    pub(crate) fn merge_fits<const UL: usize, const UP: usize>(
        &self,
        update: &StateTree<UL, UP>,
    ) -> Result<(), CapacityError> {
        let (mut leaves, mut bytes) = (0usize, 0usize);
        let _ = self.merge_walk(update, |k, from_update| {
            leaves += 1;
            bytes += if from_update {
                stored_len(&update.at(k))
            } else {
                stored_len(&self.at(k))
            };
            Ok::<(), ()>(())
        });
        if leaves > L {
            return Err(CapacityError::Leaves { capacity: L });
        }
        if bytes > P {
            return Err(CapacityError::Pool { capacity: P });
        }
        Ok(())
    }

    /// Writes `self` with `update` merged into it (see `merge_walk`); leaves
    /// taken from the update get `meta`.
    pub(crate) fn merge_into<const UL: usize, const UP: usize>(
        &self,
        update: &StateTree<UL, UP>,
        meta: LeafMeta,
        out: &mut Self,
    ) -> Result<(), DecodeError> {
        out.clear();
        self.merge_walk(update, |k, from_update| {
            if from_update {
                out.push_copy(update, k)?;
                let last = out.len() - 1;
                out.set_meta(last, meta);
                Ok(())
            } else {
                out.push_copy(self, k)
            }
        })
    }

    /// Writes the leaves whose `differs` flag is set, skipping paths `skip`
    /// names. With flags kept against reported, this is the AWS delta.
    pub(crate) fn flagged_into<const L3: usize, const P3: usize>(
        &self,
        skip: impl Fn(&[u8]) -> bool,
        out: &mut StateTree<L3, P3>,
    ) -> Result<(), DecodeError> {
        out.clear();
        for (i, l) in self.leaves.iter().enumerate() {
            if l.link & DIFFERS != 0 && !skip(l.path.slice(&self.pool)) {
                out.push_copy(self, i)?;
            }
        }
        Ok(())
    }

    // ---- CBOR ----

    /// Encodes the tree as one nested CBOR map into `out`; returns the
    /// length. A buffer that is too small is left untouched.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(cbor::encode_into_bounded(
            out,
            self.encoded_len_bound(),
            |e| self.encode_cbor(e),
        )?)
    }

    /// At most how many bytes [`StateTree::encode`] writes, without
    /// encoding: the pool (every key, text, byte string and array once)
    /// plus, per leaf, a map head and a key head at each level and a
    /// value head, each at most 9 bytes. A buffer this large is written in
    /// one pass.
    pub fn encoded_len_bound(&self) -> usize {
        const HEAD: usize = 9;
        self.pool
            .len()
            .saturating_add(self.len().saturating_mul(MAX_DEPTH * 2 * HEAD + HEAD))
            .saturating_add(HEAD)
    }

    /// Length of [`StateTree::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        cbor::measure(|e| self.encode_cbor(e))
    }

    /// Writes the nested map through minicbor's writer.
    ///
    /// One pass over the sorted leaves: each leaf's path shares its first
    /// keys with the previous leaf's (those maps are open already), and
    /// each of its remaining keys but the last opens a map. A map's head
    /// needs its entry count first, read off a table of where each leaf's
    /// own keys start, built once: no path is compared twice, and none is
    /// searched from the root. Bytes are gathered in a small buffer on the
    /// stack and written a few hundred at a time, as a per-item write
    /// costs more than the item.
    pub fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        let n = self.leaves.len();
        // Per leaf, the byte offset in its path where its first key of its
        // own starts: after the keys it shares with the leaf before. A later
        // leaf starting at the same offset is another entry of the map that
        // offset is in; one starting before it has left that map.
        let mut starts = [0u16; L];
        for (j, start) in starts.iter_mut().enumerate().take(n).skip(1) {
            let (a, b) = (self.path_at(j - 1), self.path_at(j));
            let p = common_prefix(a, b);
            *start = b[..p].iter().rposition(|c| *c == SEP).map_or(0, |i| i + 1) as u16;
        }
        let entries = |j: usize, off: u16| -> u64 {
            let mut c = 1;
            for &s in starts.iter().take(n).skip(j + 1) {
                if s < off {
                    break;
                }
                c += u64::from(s == off);
            }
            c
        };
        let mut out = Staged::new(e);
        out.head(MAJOR_MAP, if n == 0 { 0 } else { entries(0, 0) })?;
        for (j, leaf) in self.leaves.iter().enumerate() {
            let path = leaf.path.slice(&self.pool);
            let mut off = usize::from(starts[j]);
            loop {
                let rest = &path[off..];
                let end = key_len(rest);
                // Keys were checked as UTF-8 when the path was built: their
                // bytes go out as they are.
                out.head(MAJOR_TEXT, end as u64)?;
                out.put(&rest[..end])?;
                off += end + 1;
                if off >= path.len() {
                    break;
                }
                out.head(MAJOR_MAP, entries(j, off as u16))?;
            }
            out.value(leaf.value, &self.pool)?;
        }
        out.flush()
    }

    /// Decodes a tree from one CBOR map holding no `null`s.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut d = Decoder::new(bytes);
        let mut t = Self::new();
        t.decode_cbor(&mut d, LeafMeta::new(Source::Cloud, 0), false)?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes { at: d.position() }.into());
        }
        Ok(t)
    }

    /// Decodes one nested map at the decoder's position into this (empty)
    /// tree. `allow_null` is true for updates, where null deletes.
    pub(crate) fn decode_cbor(
        &mut self,
        d: &mut Decoder<'_>,
        meta: LeafMeta,
        allow_null: bool,
    ) -> Result<(), DecodeError> {
        let mut path = PathBuf::new();
        let at = d.position();
        match cbor::peek_major(d)? {
            5 => self.decode_map(d, &mut path, meta, allow_null),
            _ => Err(DecodeError::Malformed {
                what: "a map of properties",
                at,
            }),
        }
    }

    fn decode_map(
        &mut self,
        d: &mut Decoder<'_>,
        path: &mut PathBuf,
        meta: LeafMeta,
        allow_null: bool,
    ) -> Result<(), DecodeError> {
        cbor::each_entry(d, |d| {
            let (key, at) = cbor::read_text_key(d)?;
            let mark = path.mark();
            path.push_bytes(key)?;
            if self.has_within(path.as_path().as_bytes()) {
                return Err(DecodeError::DuplicateKey { at });
            }
            let vat = d.position();
            match cbor::peek_major(d)? {
                5 => self.decode_map(d, path, meta, allow_null)?,
                _ => {
                    // Arrays come back raw and are canonicalised on insert.
                    let value = read_leaf(d, allow_null)?;
                    self.insert_with_meta(path.as_path(), value, meta)
                        .map_err(|e| match e {
                            Error::Capacity(c) => DecodeError::Capacity(c),
                            Error::Path(p) => DecodeError::Path(p),
                            Error::Decode(d) => d,
                            _ => DecodeError::Malformed {
                                what: "a storable value",
                                at: vat,
                            },
                        })?;
                }
            }
            path.cut_to(mark);
            Ok(())
        })
    }

    /// Encoded metadata of every leaf, in path order: `[* [ts, source, version]]`.
    pub(crate) fn encode_meta<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.array(self.len() as u64)?;
        for l in self.leaves.iter() {
            e.array(3)?
                .u64(l.meta.timestamp_ms)?
                .u8(l.meta.source.code())?
                .u64(l.meta.version)?;
        }
        Ok(())
    }

    /// Reads what [`StateTree::encode_meta`] wrote; the count must match.
    pub(crate) fn decode_meta(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        let at = d.position();
        let n = d.array()?;
        if n != Some(self.len() as u64) {
            return Err(DecodeError::Malformed {
                what: "one metadata entry per leaf",
                at,
            });
        }
        for i in 0..self.len() {
            let at = d.position();
            if d.array()? != Some(3) {
                return Err(DecodeError::Malformed {
                    what: "[timestamp, source, version]",
                    at,
                });
            }
            let timestamp_ms = cbor::read_u64(d)?;
            let sat = d.position();
            let source = Source::from_code(cbor::read_u64(d)?).ok_or(DecodeError::Malformed {
                what: "source 0 (cloud) or 1 (device)",
                at: sat,
            })?;
            let version = cbor::read_u64(d)?;
            self.set_meta(
                i,
                LeafMeta {
                    timestamp_ms,
                    source,
                    version,
                },
            );
        }
        Ok(())
    }
}

/// Reads one leaf value; arrays are returned raw and canonicalised on insert.
fn read_leaf<'b>(d: &mut Decoder<'b>, allow_null: bool) -> Result<Value<'b>, DecodeError> {
    let at = d.position();
    let first = cbor::peek(d)?;
    let (major, info) = (first >> 5, first & 0x1f);
    // Dispatched on the first byte, as the readers it calls read heads
    // (see `wire::cbor`).
    Ok(match (major, info) {
        // Reserved additional information: not CBOR.
        (0..=6, 28..=30) | (7, 28..=31) => {
            return Err(DecodeError::Malformed {
                what: "a value",
                at,
            });
        }
        (0 | 1, _) => Value::Int(read_i64(d)?),
        (2, 0..=27) => Value::Bytes(cbor::read_bytes(d)?),
        (3, 0..=27) => Value::Text(cbor::read_str(d)?),
        #[cfg(feature = "arrays")]
        (4, _) => {
            cbor::skip_item(d, 0)?;
            Value::Array(super::value::RawArray(&d.input()[at..d.position()]))
        }
        (7, 20 | 21) => {
            d.set_position(at + 1);
            Value::Bool(info == 21)
        }
        (7, 22) => {
            if !allow_null {
                return Err(DecodeError::NullNotAllowed { at });
            }
            d.set_position(at + 1);
            Value::Null
        }
        (7, 25..=27) => Value::Float(cbor::read_float(d)?),
        // Indefinite strings, tags, undefined, other simple values (and
        // arrays without the `arrays` feature).
        _ => return Err(DecodeError::Unsupported { at }),
    })
}

/// Pool bytes a leaf from another tree takes: its path and its payload.
pub(crate) fn stored_len(e: &Entry<'_>) -> usize {
    e.path.as_bytes().len()
        + match e.value {
            Value::Text(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Array(a) => a.0.len(),
            _ => 0,
        }
}

/// Pool bytes a caller's value will take once canonical.
fn payload_len(v: Value<'_>) -> Result<usize, DecodeError> {
    Ok(match v {
        Value::Text(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Array(a) => {
            let mut len = 0;
            let mut d = Decoder::new(a.0);
            cbor::canonicalize_array(
                &mut d,
                &mut |b| {
                    len += b.len();
                    Ok(())
                },
                0,
            )?;
            len
        }
        _ => 0,
    })
}

const MAJOR_BYTES: u8 = 2 << 5;
const MAJOR_TEXT: u8 = 3 << 5;
const MAJOR_MAP: u8 = 5 << 5;

/// Gathers small writes on the stack and hands them to the encoder's
/// writer in few large ones.
struct Staged<'e, W: Write> {
    e: &'e mut Encoder<W>,
    buf: [u8; 256],
    len: usize,
}

impl<'e, W: Write> Staged<'e, W> {
    fn new(e: &'e mut Encoder<W>) -> Self {
        Staged {
            e,
            buf: [0; 256],
            len: 0,
        }
    }

    fn flush(&mut self) -> Result<(), minicbor::encode::Error<W::Error>> {
        let len = core::mem::take(&mut self.len);
        self.e
            .writer_mut()
            .write_all(&self.buf[..len])
            .map_err(minicbor::encode::Error::write)
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<(), minicbor::encode::Error<W::Error>> {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
            return Ok(());
        }
        self.flush()?;
        if bytes.len() > self.buf.len() / 2 {
            return self
                .e
                .writer_mut()
                .write_all(bytes)
                .map_err(minicbor::encode::Error::write);
        }
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
        Ok(())
    }

    /// A CBOR head (major type and length or value) in its shortest form,
    /// as minicbor writes it.
    #[inline]
    fn head(&mut self, major: u8, n: u64) -> Result<(), minicbor::encode::Error<W::Error>> {
        // The value follows the head in 0, 1, 2, 4 or 8 bytes.
        let (info, extra) = match n {
            0..24 => (n as u8, 0),
            24..=0xff => (24, 1),
            0x100..=0xffff => (25, 2),
            0x1_0000..=0xffff_ffff => (26, 4),
            _ => (27, 8),
        };
        // The value's bytes, big-endian, at the front of 8 (written whole,
        // a fixed-size store, then only `extra` of them kept).
        let value = n
            .checked_shl(8 * (8 - extra) as u32)
            .unwrap_or(0)
            .to_be_bytes();
        if let Some(dst) = self.buf.get_mut(self.len..self.len + 9) {
            dst[0] = major | info;
            dst[1..].copy_from_slice(&value);
            self.len += 1 + extra;
            return Ok(());
        }
        let mut h = [0u8; 9];
        h[0] = major | info;
        h[1..].copy_from_slice(&value);
        self.put(&h[..=extra])
    }

    /// A stored leaf value (texts go out as their bytes: they were UTF-8
    /// when stored).
    fn value(&mut self, v: Stored, pool: &[u8]) -> Result<(), minicbor::encode::Error<W::Error>> {
        match v {
            Stored::Null => self.put(&[0xf6]),
            Stored::Bool(b) => self.put(&[if b { 0xf5 } else { 0xf4 }]),
            Stored::Int(i) if i >= 0 => self.head(0, i as u64),
            Stored::Int(i) => self.head(1 << 5, (-1 - i) as u64),
            Stored::Float(bits) => {
                let mut f = [0xfb, 0, 0, 0, 0, 0, 0, 0, 0];
                f[1..].copy_from_slice(&bits.to_be_bytes());
                self.put(&f)
            }
            Stored::Text(s) => {
                self.head(MAJOR_TEXT, u64::from(s.len))?;
                self.put(s.slice(pool))
            }
            Stored::Bytes(s) => {
                self.head(MAJOR_BYTES, u64::from(s.len))?;
                self.put(s.slice(pool))
            }
            Stored::Array(s) => self.put(s.slice(pool)),
        }
    }
}

/// Length of the first key of `path` (up to its separator), found 8 bytes
/// at a time.
fn key_len(path: &[u8]) -> usize {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut chunks = path.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let w = word(c);
        // The top bit of each zero byte, exactly (no borrow between bytes).
        let zero = !(((w & LOW7) + LOW7) | w | LOW7);
        if zero != 0 {
            return at + (zero.leading_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = chunks.remainder();
    at + tail.iter().position(|c| *c == SEP).unwrap_or(tail.len())
}

/// Length of the common prefix of two paths, compared 8 bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let max = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= max {
        let x = word(&a[i..i + 8]) ^ word(&b[i..i + 8]);
        if x != 0 {
            return i + (x.leading_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < max && a[i] == b[i] {
        i += 1;
    }
    i
}

impl<const L: usize, const P: usize> PartialEq for StateTree<L, P> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<const L: usize, const P: usize> fmt::Debug for StateTree<L, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for e in self.iter() {
            m.entry(&e.path.to_string_lossy(), &e.value);
        }
        m.finish()
    }
}
