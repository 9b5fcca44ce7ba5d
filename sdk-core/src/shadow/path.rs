//! Property paths.
//!
//! A path is stored as its keys, each followed by a NUL byte: `hvac` /
//! `setpoint` is `b"hvac\0setpoint\0"`. Because NUL sorts before every other
//! byte, ordering these byte strings orders paths key by key, so the leaves
//! under a map are always contiguous in a sorted tree, and "is `p` inside
//! map `m`" is a plain `starts_with`. Keys therefore may not contain NUL.

use core::fmt;

use crate::error::PathError;

/// Deepest nesting of a leaf, in keys. AWS IoT allows 8 levels in `desired`
/// and `reported`; we accept the same.
pub const MAX_DEPTH: usize = 8;
/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 64;
/// Longest encoded path in bytes.
pub const MAX_PATH_LEN: usize = MAX_DEPTH * (MAX_KEY_LEN + 1);

pub(crate) const SEP: u8 = 0;

/// A borrowed, validated path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path<'a>(&'a [u8]);

impl<'a> Path<'a> {
    /// The empty path (the root of a tree).
    pub const ROOT: Path<'static> = Path(&[]);

    /// Wraps bytes that came out of a tree or a [`PathBuf`]; callers outside
    /// the crate go through [`PathBuf`].
    pub(crate) fn from_encoded(bytes: &'a [u8]) -> Self {
        Path(bytes)
    }

    /// The encoded form (keys each followed by NUL).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The keys from the root down.
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .split(|b| *b == SEP)
            .take(self.depth())
            // Keys were validated as UTF-8 when the path was built.
            .map(|k| core::str::from_utf8(k).unwrap_or(""))
    }

    /// Number of keys.
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|b| **b == SEP).count()
    }

    /// True when `self` is `ancestor` or lies inside it.
    pub fn is_within(&self, ancestor: Path<'_>) -> bool {
        self.0.starts_with(ancestor.0)
    }

    /// The path of the first `depth` keys.
    pub fn prefix(&self, depth: usize) -> Path<'a> {
        let mut seen = 0;
        for (i, b) in self.0.iter().enumerate() {
            if *b == SEP {
                seen += 1;
                if seen == depth {
                    return Path(&self.0[..=i]);
                }
            }
        }
        *self
    }

    /// The key at `level` (0 = top).
    pub fn key(&self, level: usize) -> Option<&'a str> {
        self.keys().nth(level)
    }
}

impl fmt::Debug for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

/// Dotted form for logs and messages; a key containing a dot is not escaped.
impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, k) in self.keys().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(k)?;
        }
        Ok(())
    }
}

/// An owned path with room for [`MAX_DEPTH`] keys of [`MAX_KEY_LEN`] bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PathBuf {
    bytes: heapless::Vec<u8, MAX_PATH_LEN>,
}

impl PathBuf {
    /// The empty path.
    pub const fn new() -> Self {
        PathBuf {
            bytes: heapless::Vec::new(),
        }
    }

    /// Builds a path from its keys.
    ///
    /// ```
    /// use lanyard_core::shadow::PathBuf;
    /// let p = PathBuf::from_keys(&["hvac", "setpoint"])?;
    /// assert_eq!(p.as_path().to_string_lossy(), "hvac.setpoint");
    /// # Ok::<(), lanyard_core::PathError>(())
    /// ```
    pub fn from_keys(keys: &[&str]) -> Result<Self, PathError> {
        let mut p = PathBuf::new();
        for k in keys {
            p.push(k)?;
        }
        Ok(p)
    }

    /// Builds a path from `a.b.c`; use [`PathBuf::from_keys`] for keys that
    /// contain dots.
    pub fn from_dotted(dotted: &str) -> Result<Self, PathError> {
        let mut p = PathBuf::new();
        // Split by bytes, not `split('.')`: its `char` searcher is 0.3 KB of
        // flash on a microcontroller. Pieces of a str cut at ASCII dots are
        // UTF-8, so `from_utf8` never fails here.
        for k in dotted.as_bytes().split(|&b| b == b'.') {
            p.push(core::str::from_utf8(k).map_err(|_| PathError::EmptyKey)?)?;
        }
        Ok(p)
    }

    /// Appends a key; on error the path is unchanged.
    pub fn push(&mut self, key: &str) -> Result<(), PathError> {
        self.push_bytes(key.as_bytes())
    }

    /// [`PathBuf::push`] of a key's bytes, UTF-8 already checked (by the
    /// decoder that read them).
    pub(crate) fn push_bytes(&mut self, key: &[u8]) -> Result<(), PathError> {
        check_key(key)?;
        // Keys are not empty, so a path of MAX_DEPTH keys has at least
        // twice as many bytes: shorter ones need no count.
        if self.bytes.len() >= 2 * MAX_DEPTH && self.as_path().depth() >= MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        // Capacity is MAX_DEPTH * (MAX_KEY_LEN + 1), so both always fit here.
        self.bytes
            .extend_from_slice(key)
            .map_err(|_| PathError::TooDeep)?;
        self.bytes.push(SEP).map_err(|_| PathError::TooDeep)?;
        Ok(())
    }

    /// Removes the last key.
    pub fn pop(&mut self) {
        // The key's bytes, up to the separator that ends the key before.
        let Some((_, keys)) = self.bytes.split_last() else {
            return;
        };
        let kept = keys.iter().rposition(|&b| b == SEP).map_or(0, |i| i + 1);
        self.bytes.truncate(kept);
    }

    /// Where the path ends now, for [`PathBuf::cut_to`]: cheaper than a
    /// [`PathBuf::pop`], which looks for the key's start.
    pub(crate) fn mark(&self) -> usize {
        self.bytes.len()
    }

    /// Back to what it was at `mark`.
    pub(crate) fn cut_to(&mut self, mark: usize) {
        self.bytes.truncate(mark);
    }

    /// Borrowed view.
    pub fn as_path(&self) -> Path<'_> {
        Path(&self.bytes)
    }
}

impl Path<'_> {
    /// Dotted text of the path, for messages (requires no allocator).
    pub fn to_string_lossy(&self) -> heapless::String<MAX_PATH_LEN> {
        let mut s = heapless::String::new();
        for (i, k) in self.keys().enumerate() {
            if i > 0 {
                let _ = s.push('.');
            }
            let _ = s.push_str(k);
        }
        s
    }
}

impl fmt::Debug for PathBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.as_path(), f)
    }
}

/// Checks one key against the path rules.
pub(crate) fn check_key(key: &[u8]) -> Result<(), PathError> {
    if key.is_empty() {
        return Err(PathError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(PathError::KeyTooLong { len: key.len() });
    }
    // A fold rather than `contains`, which calls `memchr`, or an early
    // exit, which is not vectorised: keys are short.
    if key.iter().fold(false, |nul, &b| nul | (b == SEP)) {
        return Err(PathError::NulInKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_orders_children_after_their_map() {
        let a = PathBuf::from_dotted("a").unwrap();
        let ab = PathBuf::from_dotted("a.b").unwrap();
        let a_b = PathBuf::from_keys(&["a!"]).unwrap();
        // "a" < "a.b" < "a!" because NUL sorts first: children stay contiguous.
        assert!(a.as_path() < ab.as_path());
        assert!(ab.as_path() < a_b.as_path());
        assert!(ab.as_path().is_within(a.as_path()));
        assert!(!a_b.as_path().is_within(a.as_path()));
    }

    #[test]
    fn limits_are_enforced_and_leave_the_path_unchanged() {
        let mut p = PathBuf::new();
        for i in 0..MAX_DEPTH {
            p.push(["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"][i])
                .unwrap();
        }
        let before = p.clone();
        assert_eq!(p.push("x"), Err(PathError::TooDeep));
        assert_eq!(p, before);
        let long = "x".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            PathBuf::new().push(&long),
            Err(PathError::KeyTooLong {
                len: MAX_KEY_LEN + 1
            })
        );
        assert_eq!(PathBuf::new().push(""), Err(PathError::EmptyKey));
        assert_eq!(PathBuf::new().push("a\0b"), Err(PathError::NulInKey));
    }

    #[test]
    fn keys_prefix_pop_and_display() {
        let mut p = PathBuf::from_dotted("a.bb.c").unwrap();
        assert_eq!(p.as_path().depth(), 3);
        assert_eq!(p.as_path().key(1), Some("bb"));
        assert_eq!(p.as_path().prefix(2).to_string_lossy().as_str(), "a.bb");
        p.pop();
        assert_eq!(p.as_path().to_string_lossy().as_str(), "a.bb");
    }
}
