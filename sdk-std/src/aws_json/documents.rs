//! The documents AWS IoT publishes (`/update/accepted`, `/get/accepted`,
//! `/update/delta`, `/update/documents`), written straight from the core's
//! trees by any serde serializer: JSON text for the network, Python objects
//! for the binding. Nothing builds a `serde_json::Value` on the way: a
//! tree's leaves are sorted by path, so each nested object is a run of
//! leaves that share a key, walked in place.

use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};

use lanyard_core::shadow::{Entry, Shadow, StateTree, Value};

use super::{Part, UpdateRequest, b64};

/// What a tree's leaves become in a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaves {
    /// Their values.
    Values,
    /// `{"timestamp": s}`, each leaf's own time in seconds (metadata).
    Timestamps,
    /// `{"timestamp": s}` with one time for every leaf, in ms (the
    /// metadata of what an update wrote, stamped on receipt).
    StampedAt(u64),
}

/// A tree as nested JSON objects (see [`Leaves`]). Serialize it with
/// `serde_json` or any other serde serializer.
///
/// ```
/// use lanyard_std::aws_json::{TreeView, tree_from_json};
/// let t = tree_from_json::<8, 256>(
///     serde_json::json!({"fan": {"on": true, "rpm": 900}}).as_object().unwrap(), false)?;
/// assert_eq!(serde_json::to_string(&TreeView::values(&t))?, r#"{"fan":{"on":true,"rpm":900}}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct TreeView<'a, const L: usize, const P: usize> {
    tree: &'a StateTree<L, P>,
    leaves: Leaves,
}

impl<'a, const L: usize, const P: usize> TreeView<'a, L, P> {
    /// The tree's values.
    pub fn values(tree: &'a StateTree<L, P>) -> Self {
        TreeView {
            tree,
            leaves: Leaves::Values,
        }
    }

    /// The tree's metadata: each leaf's timestamp in seconds.
    pub fn metadata(tree: &'a StateTree<L, P>) -> Self {
        TreeView {
            tree,
            leaves: Leaves::Timestamps,
        }
    }

    /// The tree's metadata with every leaf stamped at `now_ms`.
    pub fn stamped(tree: &'a StateTree<L, P>, now_ms: u64) -> Self {
        TreeView {
            tree,
            leaves: Leaves::StampedAt(now_ms),
        }
    }
}

impl<const L: usize, const P: usize> Serialize for TreeView<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entries: Vec<Entry<'_>> = self.tree.iter().collect();
        Level {
            entries: &entries,
            prefix_len: 0,
            leaves: self.leaves,
        }
        .serialize(s)
    }
}

/// The object under one map: a run of sorted leaves whose encoded paths
/// share their first `prefix_len` bytes (the map's keys, each ended by a
/// NUL byte).
struct Level<'e, 'a> {
    entries: &'e [Entry<'a>],
    prefix_len: usize,
    leaves: Leaves,
}

impl Serialize for Level<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        let mut rest = self.entries;
        while let Some(first) = rest.first() {
            let below = first.path.as_bytes().get(self.prefix_len..).unwrap_or(&[]);
            let end = below
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| S::Error::custom("a leaf path shorter than its map"))?;
            // Keys were checked as UTF-8 when the path was built.
            let key = core::str::from_utf8(&below[..end]).map_err(S::Error::custom)?;
            // The key with its NUL: the leaves under it come together,
            // since paths sort key by key.
            let prefix = &below[..=end];
            let run = 1 + rest[1..]
                .iter()
                .take_while(|e| {
                    e.path
                        .as_bytes()
                        .get(self.prefix_len..)
                        .is_some_and(|p| p.starts_with(prefix))
                })
                .count();
            if end + 1 == below.len() {
                // A leaf (the tree keeps no leaf inside another).
                map.serialize_entry(key, &Leaf(first, self.leaves))?;
            } else {
                let level = Level {
                    entries: &rest[..run],
                    prefix_len: self.prefix_len + end + 1,
                    leaves: self.leaves,
                };
                map.serialize_entry(key, &level)?;
            }
            rest = &rest[run..];
        }
        map.end()
    }
}

struct Leaf<'e, 'a>(&'e Entry<'a>, Leaves);

impl Serialize for Leaf<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let seconds = match self.1 {
            Leaves::Values => return LeafValue(self.0.value).serialize(s),
            Leaves::Timestamps => self.0.meta.timestamp_ms / 1000,
            Leaves::StampedAt(ms) => ms / 1000,
        };
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("timestamp", &seconds)?;
        map.end()
    }
}

/// One leaf value as JSON: byte strings as base64 text, floats JSON
/// cannot hold (NaN, infinities) as `null`, arrays as JSON arrays.
pub struct LeafValue<'a>(pub Value<'a>);

impl Serialize for LeafValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(b),
            Value::Int(i) => s.serialize_i64(i),
            Value::Float(x) if x.is_finite() => s.serialize_f64(x),
            Value::Float(_) => s.serialize_unit(),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_str(&b64(b)),
            Value::Array(a) => CborItem(a.as_cbor()).serialize(s),
        }
    }
}

/// One item of the canonical CBOR the core stores arrays as.
struct CborItem<'a>(&'a [u8]);

impl CborItem<'_> {
    /// The next item of `d` on its own; `d` moves past it.
    fn next<'b, E: serde::ser::Error>(d: &mut minicbor::Decoder<'b>) -> Result<CborItem<'b>, E> {
        let start = d.position();
        d.skip().map_err(E::custom)?;
        Ok(CborItem(&d.input()[start..d.position()]))
    }
}

impl Serialize for CborItem<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use minicbor::data::Type;
        let mut d = minicbor::Decoder::new(self.0);
        let bad = |e: minicbor::decode::Error| S::Error::custom(e);
        match d.datatype().map_err(bad)? {
            Type::Array => {
                let n = d.array().map_err(bad)?.unwrap_or(0);
                let mut seq = s.serialize_seq(usize::try_from(n).ok())?;
                for _ in 0..n {
                    seq.serialize_element(&Self::next::<S::Error>(&mut d)?)?;
                }
                seq.end()
            }
            Type::Map => {
                let n = d.map().map_err(bad)?.unwrap_or(0);
                let mut map = s.serialize_map(usize::try_from(n).ok())?;
                for _ in 0..n {
                    let k = d.str().map_err(bad)?;
                    map.serialize_entry(k, &Self::next::<S::Error>(&mut d)?)?;
                }
                map.end()
            }
            Type::Bool => s.serialize_bool(d.bool().map_err(bad)?),
            Type::String => s.serialize_str(d.str().map_err(bad)?),
            Type::Bytes => s.serialize_str(&b64(d.bytes().map_err(bad)?)),
            Type::F64 | Type::F32 | Type::F16 => {
                let x = d.f64().map_err(bad)?;
                if x.is_finite() {
                    s.serialize_f64(x)
                } else {
                    s.serialize_unit()
                }
            }
            Type::Null => s.serialize_unit(),
            _ => s.serialize_i64(d.i64().map_err(bad)?),
        }
    }
}

/// `desired` and `reported` of a shadow, each left out when empty, as AWS
/// does; with the delta after them when one is given and not empty.
struct Sides<'a, const L: usize, const P: usize> {
    shadow: &'a Shadow<L, P>,
    leaves: Leaves,
    delta: Option<&'a StateTree<L, P>>,
}

impl<const L: usize, const P: usize> Serialize for Sides<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, t) in [
            ("desired", Some(self.shadow.desired())),
            ("reported", Some(self.shadow.reported())),
            ("delta", self.delta),
        ] {
            if let Some(t) = t.filter(|t| !t.is_empty()) {
                let view = TreeView {
                    tree: t,
                    leaves: self.leaves,
                };
                map.serialize_entry(name, &view)?;
            }
        }
        map.end()
    }
}

/// Ends a document: its `timestamp` (seconds) and the request's
/// `clientToken`, when it had one.
fn close<M: SerializeMap>(
    mut map: M,
    now_ms: u64,
    client_token: Option<&str>,
) -> Result<M::Ok, M::Error> {
    map.serialize_entry("timestamp", &(now_ms / 1000))?;
    if let Some(t) = client_token {
        map.serialize_entry("clientToken", t)?;
    }
    map.end()
}

/// The `/update/accepted` document ([`super::accepted_document`]).
pub struct AcceptedDocument<'a, const L: usize, const P: usize> {
    pub(super) request: &'a UpdateRequest<L, P>,
    pub(super) version: u64,
    pub(super) now_ms: u64,
}

/// The request's sides: their values (`stamp: None`) or the metadata of
/// what they wrote.
struct RequestSides<'a, const L: usize, const P: usize> {
    request: &'a UpdateRequest<L, P>,
    stamp: Option<u64>,
}

impl<const L: usize, const P: usize> Serialize for RequestSides<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, part) in [
            ("desired", &self.request.desired),
            ("reported", &self.request.reported),
        ] {
            match (part, self.stamp) {
                (Part::Absent, _) => {}
                (Part::Clear, None) => map.serialize_entry(name, &())?,
                // A cleared side has no metadata left to show.
                (Part::Clear, Some(_)) => {}
                (Part::Update(t), None) => map.serialize_entry(name, &TreeView::values(t))?,
                (Part::Update(t), Some(ms)) => {
                    map.serialize_entry(name, &TreeView::stamped(t, ms))?
                }
            }
        }
        map.end()
    }
}

impl<const L: usize, const P: usize> Serialize for AcceptedDocument<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        let sides = |stamp| RequestSides {
            request: self.request,
            stamp,
        };
        map.serialize_entry("state", &sides(None))?;
        map.serialize_entry("metadata", &sides(Some(self.now_ms)))?;
        map.serialize_entry("version", &self.version)?;
        close(map, self.now_ms, self.request.client_token.as_deref())
    }
}

/// The `/get/accepted` document ([`super::get_document`]).
pub struct GetDocument<'a, const L: usize, const P: usize> {
    pub(super) shadow: &'a Shadow<L, P>,
    pub(super) delta: Box<StateTree<L, P>>,
    pub(super) now_ms: u64,
    pub(super) client_token: Option<&'a str>,
}

impl<const L: usize, const P: usize> Serialize for GetDocument<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        let state = Sides {
            shadow: self.shadow,
            leaves: Leaves::Values,
            delta: Some(&self.delta),
        };
        let metadata = Sides {
            shadow: self.shadow,
            leaves: Leaves::Timestamps,
            delta: None,
        };
        map.serialize_entry("state", &state)?;
        map.serialize_entry("metadata", &metadata)?;
        map.serialize_entry("version", &self.shadow.version())?;
        close(map, self.now_ms, self.client_token)
    }
}

/// The `/update/delta` document ([`super::delta_document`]).
pub struct DeltaDocument<'a, const L: usize, const P: usize> {
    pub(super) version: u64,
    pub(super) delta: Box<StateTree<L, P>>,
    pub(super) now_ms: u64,
    pub(super) client_token: Option<&'a str>,
}

impl<const L: usize, const P: usize> Serialize for DeltaDocument<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("version", &self.version)?;
        map.serialize_entry("state", &TreeView::values(&self.delta))?;
        map.serialize_entry("metadata", &TreeView::metadata(&self.delta))?;
        close(map, self.now_ms, self.client_token)
    }
}

/// One side of an `/update/documents` document: state, metadata, version.
struct Snapshot<'a, const L: usize, const P: usize>(&'a Shadow<L, P>);

impl<const L: usize, const P: usize> Serialize for Snapshot<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        for (name, leaves) in [("state", Leaves::Values), ("metadata", Leaves::Timestamps)] {
            let sides = Sides {
                shadow: self.0,
                leaves,
                delta: None,
            };
            map.serialize_entry(name, &sides)?;
        }
        map.serialize_entry("version", &self.0.version())?;
        map.end()
    }
}

/// The `/update/documents` document ([`super::documents_document`]).
pub struct DocumentsDocument<'a, const L: usize, const P: usize> {
    pub(super) previous: &'a Shadow<L, P>,
    pub(super) current: &'a Shadow<L, P>,
    pub(super) now_ms: u64,
    pub(super) client_token: Option<&'a str>,
}

impl<const L: usize, const P: usize> Serialize for DocumentsDocument<'_, L, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("previous", &Snapshot(self.previous))?;
        map.serialize_entry("current", &Snapshot(self.current))?;
        close(map, self.now_ms, self.client_token)
    }
}
