//! A small table keyed by path, for conflict policies and parked conflicts.

use super::path::Path;
use super::value::Span;
use crate::error::CapacityError;

/// At most `N` entries whose paths fit in `B` bytes.
#[derive(Clone, Debug)]
pub(crate) struct PathTable<V: Copy, const N: usize, const B: usize> {
    entries: heapless::Vec<(Span, V), N>,
    pool: heapless::Vec<u8, B>,
}

impl<V: Copy, const N: usize, const B: usize> PathTable<V, N, B> {
    pub const fn new() -> Self {
        PathTable {
            entries: heapless::Vec::new(),
            pool: heapless::Vec::new(),
        }
    }

    fn index(&self, path: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|(s, _)| s.slice(&self.pool) == path)
    }

    pub fn get(&self, path: &[u8]) -> Option<V> {
        self.index(path).map(|i| self.entries[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Sets or replaces; on error nothing changes.
    pub fn set(&mut self, path: &[u8], v: V) -> Result<(), CapacityError> {
        if let Some(i) = self.index(path) {
            self.entries[i].1 = v;
            return Ok(());
        }
        if self.entries.is_full() {
            return Err(CapacityError::Table { capacity: N });
        }
        let start = self.pool.len();
        self.pool
            .extend_from_slice(path)
            .map_err(|_| CapacityError::Table { capacity: N })?;
        let span = Span {
            start: start as u32,
            len: path.len() as u32,
        };
        let _ = self.entries.push((span, v));
        Ok(())
    }

    /// Removes an entry and compacts the pool.
    pub fn remove(&mut self, path: &[u8]) -> bool {
        let Some(i) = self.index(path) else {
            return false;
        };
        let (span, _) = self.entries.remove(i);
        let (start, end) = (span.start as usize, (span.start + span.len) as usize);
        self.pool.copy_within(end.., start);
        self.pool.truncate(self.pool.len() - span.len as usize);
        for (s, _) in self.entries.iter_mut() {
            if s.start as usize >= end {
                s.start -= span.len;
            }
        }
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = (Path<'_>, V)> + '_ {
        self.entries
            .iter()
            .map(|(s, v)| (Path::from_encoded(s.slice(&self.pool)), *v))
    }

    /// The value of the longest entry that `path` lies within.
    pub fn longest_prefix(&self, path: &[u8]) -> Option<V> {
        self.entries
            .iter()
            .filter(|(s, _)| path.starts_with(s.slice(&self.pool)))
            .max_by_key(|(s, _)| s.len)
            .map(|(_, v)| *v)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let mut i = 0;
        while i < self.entries.len() {
            let (s, _) = self.entries[i];
            let bytes = s.slice(&self.pool);
            if keep(bytes) {
                i += 1;
            } else {
                let mut copy: heapless::Vec<u8, { super::path::MAX_PATH_LEN }> =
                    heapless::Vec::new();
                let _ = copy.extend_from_slice(bytes);
                self.remove(&copy);
            }
        }
    }
}
