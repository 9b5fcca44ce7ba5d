//! Typed state with serde (the `serde` feature), without an allocator: a
//! `Serialize` value becomes a [`StateTree`], and a tree (a delta, a
//! document's desired or reported state, telemetry readings)
//! deserializes into a user struct.
//!
//! Structs and maps with text keys are nested maps; integers, floats,
//! booleans and text are leaves; `None` is left out (so a struct of
//! `Option` fields is a partial update, and a partial delta fills only the
//! fields it holds); unit enum variants are their names as text. Sequences
//! and tuples are not supported yet (an [`TypedErrorKind::Unsupported`]
//! error names where).
//!
//! ```
//! use lanyard_core::shadow::typed::{from_tree, to_tree};
//! use lanyard_core::shadow::StateTree;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Hvac { setpoint: i32, mode: Mode, fan: Option<Fan> }
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum Mode { Heat, Cool }
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Fan { speed: f32 }
//!
//! let hvac = Hvac { setpoint: 21, mode: Mode::Heat, fan: Some(Fan { speed: 0.5 }) };
//! let mut tree: StateTree<16, 256> = StateTree::new();
//! to_tree(&hvac, &mut tree)?;
//! assert_eq!(tree.len(), 3); // setpoint, mode, fan.speed
//! let back: Hvac = from_tree(&tree)?;
//! assert_eq!(back, hvac);
//! # Ok::<(), lanyard_core::shadow::typed::TypedError>(())
//! ```
//!
//! Errors name the path where they arose (`fan.speed: wrong type`), and a
//! failed [`to_tree`] leaves the tree empty rather than half filled.

use core::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::ser::{self, Impossible, Serialize};

use super::path::{MAX_KEY_LEN, Path, PathBuf};
use super::tree::StateTree;
use super::value::{LeafMeta, Source, Value};
use crate::error::Error;

/// Longest path an error names; a longer one is cut, ending in `~`.
/// Errors stay small because every serde call returns them (on a
/// microcontroller's stack).
pub const ERROR_PATH_LEN: usize = 48;

/// What went wrong, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedError {
    path: heapless::String<ERROR_PATH_LEN>,
    /// What went wrong.
    pub kind: TypedErrorKind,
}

/// What went wrong converting between a value and a tree.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedErrorKind {
    /// The tree holds another type than the field has (text for a number,
    /// a map for a leaf, a number out of the field's range).
    WrongType,
    /// A field that is not an `Option` is missing from the tree.
    MissingField(&'static str),
    /// A shape the tree cannot hold or this version does not map yet
    /// (sequences, tuples, non-text map keys, a bare value at the top).
    Unsupported(&'static str),
    /// The tree refused the leaf (full, a key too long, a path too deep).
    Tree(Error),
    /// Another error from the type's own serde code, its message cut to
    /// 32 bytes.
    Other(heapless::String<32>),
}

impl fmt::Display for TypedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        match &self.kind {
            TypedErrorKind::WrongType => write!(f, "{at}: wrong type"),
            TypedErrorKind::MissingField(name) => write!(f, "{at}: missing field {name}"),
            TypedErrorKind::Unsupported(what) => write!(f, "{at}: {what} not supported"),
            TypedErrorKind::Tree(e) => write!(f, "{at}: {e}"),
            TypedErrorKind::Other(m) => write!(f, "{at}: {m}"),
        }
    }
}

impl TypedError {
    fn new(kind: TypedErrorKind) -> Self {
        TypedError {
            path: heapless::String::new(),
            kind,
        }
    }

    /// The tree refused a leaf.
    pub(crate) fn tree(e: Error) -> Self {
        TypedError::new(TypedErrorKind::Tree(e))
    }

    /// The property where it went wrong, dotted (empty: the top level).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Names `path` as the place of an error that does not name one yet
    /// (the innermost place wins).
    pub(crate) fn at(mut self, path: Path<'_>) -> Self {
        if self.path.is_empty() {
            for (i, k) in path.keys().enumerate() {
                let cut = (i > 0 && self.path.push('.').is_err()) || self.path.push_str(k).is_err();
                if cut {
                    self.path.truncate(ERROR_PATH_LEN - 1);
                    let _ = self.path.push('~');
                    break;
                }
            }
        }
        self
    }
}

fn other(msg: impl fmt::Display) -> TypedError {
    let mut s = heapless::String::new();
    // Cut at 32 bytes: a message is for people, the kind is the error.
    let _ = write!(Cutter(&mut s), "{msg}");
    TypedError::new(TypedErrorKind::Other(s))
}

/// Writes what fits and drops the rest.
struct Cutter<'a>(&'a mut heapless::String<32>);

impl fmt::Write for Cutter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

impl ser::Error for TypedError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        other(msg)
    }
}

impl de::Error for TypedError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        other(msg)
    }
    fn invalid_type(_: de::Unexpected<'_>, _: &dyn de::Expected) -> Self {
        TypedError::new(TypedErrorKind::WrongType)
    }
    fn invalid_value(_: de::Unexpected<'_>, _: &dyn de::Expected) -> Self {
        TypedError::new(TypedErrorKind::WrongType)
    }
    fn missing_field(field: &'static str) -> Self {
        TypedError::new(TypedErrorKind::MissingField(field))
    }
}

impl core::error::Error for TypedError {}

/// Writes `value` into `tree` (which is cleared first), its leaves stamped
/// as the device's at time 0. On error the tree is left empty.
pub fn to_tree<T: Serialize + ?Sized, const L: usize, const P: usize>(
    value: &T,
    tree: &mut StateTree<L, P>,
) -> Result<(), TypedError> {
    tree.clear();
    let mut ser = TreeSerializer {
        tree,
        path: PathBuf::new(),
        meta: LeafMeta::new(Source::Device, 0),
    };
    let r = value.serialize(&mut ser);
    if r.is_err() {
        ser.tree.clear();
    }
    r
}

/// Reads a `T` from `tree`: a struct's fields from the tree's top-level
/// keys, nested structs from nested maps. Keys the type does not know are
/// ignored (serde's default), so a document with more in it still reads.
pub fn from_tree<'de, T: de::Deserialize<'de>, const L: usize, const P: usize>(
    tree: &'de StateTree<L, P>,
) -> Result<T, TypedError> {
    T::deserialize(Node {
        tree,
        start: 0,
        end: tree.len(),
        depth: 0,
    })
}

struct TreeSerializer<'t, const L: usize, const P: usize> {
    tree: &'t mut StateTree<L, P>,
    path: PathBuf,
    meta: LeafMeta,
}

impl<const L: usize, const P: usize> TreeSerializer<'_, L, P> {
    fn leaf(&mut self, v: Value<'_>) -> Result<(), TypedError> {
        if self.path.as_path().depth() == 0 {
            return Err(TypedError::new(TypedErrorKind::Unsupported(
                "a value outside a struct or map",
            )));
        }
        self.tree
            .insert_with_meta(self.path.as_path(), v, self.meta)
            .map_err(|e| TypedError::new(TypedErrorKind::Tree(e)).at(self.path.as_path()))
    }

    fn unsupported(&self, what: &'static str) -> TypedError {
        TypedError::new(TypedErrorKind::Unsupported(what)).at(self.path.as_path())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), TypedError> {
        self.path
            .push(key)
            .map_err(|e| TypedError::new(TypedErrorKind::Tree(e.into())).at(self.path.as_path()))?;
        let r = value.serialize(&mut *self);
        self.path.pop();
        r
    }
}

impl<'a, 't, const L: usize, const P: usize> ser::Serializer for &'a mut TreeSerializer<'t, L, P> {
    type Ok = ();
    type Error = TypedError;
    type SerializeSeq = Impossible<(), TypedError>;
    type SerializeTuple = Impossible<(), TypedError>;
    type SerializeTupleStruct = Impossible<(), TypedError>;
    type SerializeTupleVariant = Impossible<(), TypedError>;
    type SerializeMap = MapSerializer<'a, 't, L, P>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), TypedError>;

    fn serialize_bool(self, v: bool) -> Result<(), TypedError> {
        self.leaf(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<(), TypedError> {
        self.leaf(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<(), TypedError> {
        self.leaf(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<(), TypedError> {
        self.leaf(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<(), TypedError> {
        self.leaf(Value::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<(), TypedError> {
        self.leaf(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<(), TypedError> {
        self.leaf(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<(), TypedError> {
        self.leaf(Value::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<(), TypedError> {
        // The shadow's integers are signed 64-bit, as CBOR's and JSON's
        // common range.
        match i64::try_from(v) {
            Ok(i) => self.leaf(Value::Int(i)),
            Err(_) => Err(TypedError::new(TypedErrorKind::WrongType).at(self.path.as_path())),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<(), TypedError> {
        self.leaf(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<(), TypedError> {
        self.leaf(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<(), TypedError> {
        let mut buf = [0u8; 4];
        self.leaf(Value::Text(v.encode_utf8(&mut buf)))
    }
    fn serialize_str(self, v: &str) -> Result<(), TypedError> {
        self.leaf(Value::Text(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), TypedError> {
        self.leaf(Value::Bytes(v))
    }
    fn serialize_none(self) -> Result<(), TypedError> {
        // Left out: an absent property.
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), TypedError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), TypedError> {
        self.leaf(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), TypedError> {
        self.leaf(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), TypedError> {
        self.leaf(Value::Text(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), TypedError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), TypedError> {
        Err(self.unsupported("an enum variant with data"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, TypedError> {
        Err(self.unsupported("a sequence"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, TypedError> {
        Err(self.unsupported("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, TypedError> {
        Err(self.unsupported("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, TypedError> {
        Err(self.unsupported("an enum variant with data"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, TypedError> {
        Ok(MapSerializer {
            ser: self,
            key: heapless::String::new(),
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, TypedError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, TypedError> {
        Err(self.unsupported("an enum variant with data"))
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), TypedError> {
        let mut s: heapless::String<64> = heapless::String::new();
        write!(s, "{value}").map_err(|_| self.unsupported("text longer than 64 bytes"))?;
        self.leaf(Value::Text(&s))
    }
}

impl<const L: usize, const P: usize> ser::SerializeStruct for &mut TreeSerializer<'_, L, P> {
    type Ok = ();
    type Error = TypedError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TypedError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), TypedError> {
        Ok(())
    }
}

/// A map's entries: the key (text) is kept until its value comes.
pub struct MapSerializer<'a, 't, const L: usize, const P: usize> {
    ser: &'a mut TreeSerializer<'t, L, P>,
    key: heapless::String<MAX_KEY_LEN>,
}

impl<const L: usize, const P: usize> ser::SerializeMap for MapSerializer<'_, '_, L, P> {
    type Ok = ();
    type Error = TypedError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), TypedError> {
        self.key.clear();
        key.serialize(KeySerializer(&mut self.key))
            .map_err(|e| e.at(self.ser.path.as_path()))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TypedError> {
        let key = self.key.clone();
        self.ser.field(&key, value)
    }
    fn end(self) -> Result<(), TypedError> {
        Ok(())
    }
}

/// Takes a map key that is text (or a unit variant's name).
struct KeySerializer<'k>(&'k mut heapless::String<MAX_KEY_LEN>);

impl KeySerializer<'_> {
    fn text(self, s: &str) -> Result<(), TypedError> {
        self.0.push_str(s).map_err(|_| {
            TypedError::new(TypedErrorKind::Tree(Error::Path(
                crate::PathError::KeyTooLong { len: s.len() },
            )))
        })
    }
}

fn not_text() -> TypedError {
    TypedError::new(TypedErrorKind::Unsupported("a map key that is not text"))
}

impl ser::Serializer for KeySerializer<'_> {
    type Ok = ();
    type Error = TypedError;
    type SerializeSeq = Impossible<(), TypedError>;
    type SerializeTuple = Impossible<(), TypedError>;
    type SerializeTupleStruct = Impossible<(), TypedError>;
    type SerializeTupleVariant = Impossible<(), TypedError>;
    type SerializeMap = Impossible<(), TypedError>;
    type SerializeStruct = Impossible<(), TypedError>;
    type SerializeStructVariant = Impossible<(), TypedError>;

    fn serialize_str(self, v: &str) -> Result<(), TypedError> {
        self.text(v)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), TypedError> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), TypedError> {
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_i8(self, _: i8) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_i16(self, _: i16) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_i32(self, _: i32) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_i64(self, _: i64) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_u8(self, _: u8) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_u16(self, _: u16) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_u32(self, _: u32) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_u64(self, _: u64) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_f32(self, _: f32) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_f64(self, _: f64) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_char(self, v: char) -> Result<(), TypedError> {
        let mut buf = [0u8; 4];
        self.text(v.encode_utf8(&mut buf))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_none(self) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_unit(self) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), TypedError> {
        Err(not_text())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, TypedError> {
        Err(not_text())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, TypedError> {
        Err(not_text())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, TypedError> {
        Err(not_text())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, TypedError> {
        Err(not_text())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, TypedError> {
        Err(not_text())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, TypedError> {
        Err(not_text())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, TypedError> {
        Err(not_text())
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, _: &T) -> Result<(), TypedError> {
        Err(not_text())
    }
}

/// The leaves `start..end` of a tree, which share their first `depth`
/// keys: one leaf (a value) or a map of the keys at level `depth`.
#[derive(Clone, Copy)]
struct Node<'de, const L: usize, const P: usize> {
    tree: &'de StateTree<L, P>,
    start: usize,
    end: usize,
    depth: usize,
}

impl<'de, const L: usize, const P: usize> Node<'de, L, P> {
    /// The node's value, when it is a single leaf at its own depth.
    fn leaf(&self) -> Option<Value<'de>> {
        if self.end != self.start + 1 {
            return None;
        }
        let e = self.tree.at(self.start);
        (e.path.depth() == self.depth).then_some(e.value)
    }

    fn wrong_type(&self) -> TypedError {
        TypedError::new(TypedErrorKind::WrongType)
    }
}

impl<'de, const L: usize, const P: usize> de::Deserializer<'de> for Node<'de, L, P> {
    type Error = TypedError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TypedError> {
        match self.leaf() {
            Some(Value::Null) => visitor.visit_unit(),
            Some(Value::Bool(b)) => visitor.visit_bool(b),
            Some(Value::Int(i)) => visitor.visit_i64(i),
            Some(Value::Float(x)) => visitor.visit_f64(x),
            Some(Value::Text(s)) => visitor.visit_borrowed_str(s),
            Some(Value::Bytes(b)) => visitor.visit_borrowed_bytes(b),
            Some(Value::Array(_)) => Err(TypedError::new(TypedErrorKind::Unsupported("an array"))),
            // Keys below this one (or the top level): a map.
            None => visitor.visit_map(Entries {
                node: self,
                next: self.start,
                group_end: self.start,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TypedError> {
        // Present (a field's node exists only when the tree holds it).
        match self.leaf() {
            Some(Value::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, TypedError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TypedError> {
        match self.leaf() {
            Some(Value::Text(name)) => {
                visitor.visit_enum(IntoDeserializer::<TypedError>::into_deserializer(name))
            }
            _ => Err(self.wrong_type()),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TypedError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TypedError> {
        if self.leaf().is_some() {
            return Err(self.wrong_type());
        }
        visitor.visit_map(Entries {
            node: self,
            next: self.start,
            group_end: self.start,
        })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TypedError> {
        Err(TypedError::new(TypedErrorKind::Unsupported("a sequence")))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, TypedError> {
        Err(TypedError::new(TypedErrorKind::Unsupported("a tuple")))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, TypedError> {
        Err(TypedError::new(TypedErrorKind::Unsupported(
            "a tuple struct",
        )))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct identifier ignored_any
    }
}

/// The entries of a map node: one per distinct key at the node's depth.
struct Entries<'de, const L: usize, const P: usize> {
    node: Node<'de, L, P>,
    next: usize,
    group_end: usize,
}

impl<'de, const L: usize, const P: usize> MapAccess<'de> for Entries<'de, L, P> {
    type Error = TypedError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TypedError> {
        let Node {
            tree, end, depth, ..
        } = self.node;
        if self.next >= end {
            return Ok(None);
        }
        let Some(key) = tree.at(self.next).path.key(depth) else {
            return Err(TypedError::new(TypedErrorKind::WrongType));
        };
        // The leaves under this key are the ones that follow with it.
        let mut j = self.next + 1;
        while j < end && tree.at(j).path.key(depth) == Some(key) {
            j += 1;
        }
        self.group_end = j;
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TypedError> {
        let child = Node {
            tree: self.node.tree,
            start: self.next,
            end: self.group_end,
            depth: self.node.depth + 1,
        };
        self.next = self.group_end;
        let path = self.node.tree.at(child.start).path.prefix(child.depth);
        seed.deserialize(child).map_err(|e| e.at(path))
    }
}
