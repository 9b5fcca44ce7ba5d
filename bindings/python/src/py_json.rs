//! Python objects to and from the JSON the SDK's documents are made of,
//! without JSON text between them: dicts in are read into
//! `serde_json::Value` with the checks JSON text would have had (and one
//! it would not: integers past 64 bits, which the SDK would read back as
//! floats); documents out are written by their own `Serialize` straight
//! into dicts and lists, with their keys made once per shadow
//! ([`KeyCache`]), which a general serde-to-Python crate cannot do.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::ser;
use serde_json::{Map, Value as Json};

use crate::errors::PyValueError;

/// Deeper than the SDK accepts (16 levels), so the SDK's own message
/// reports a document that is merely too deep; this bound stops a
/// container that holds itself.
const MAX_DEPTH: usize = 32;

/// `obj` as JSON; `what` names it in errors (`lanyard.InvalidInput`).
pub fn from_py(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Json> {
    read(obj, what, 0)
}

/// A dict of properties (shadow state) as a JSON object; anything else is
/// refused, naming its type.
pub fn object_from_py(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Map<String, Json>> {
    match obj.cast::<PyDict>() {
        Ok(d) => read_dict(d, what, 0),
        Err(_) => Err(PyValueError::new_err(format!(
            "{what} must be a dict of properties, not {}",
            type_name(obj)
        ))),
    }
}

fn read_dict(d: &Bound<'_, PyDict>, what: &str, depth: usize) -> PyResult<Map<String, Json>> {
    let mut map = Map::new();
    for (k, v) in d.iter() {
        let Ok(key) = k.cast::<PyString>() else {
            return Err(PyValueError::new_err(format!(
                "{what}: keys are strings, not {}",
                type_name(&k)
            )));
        };
        map.insert(key.to_cow()?.into_owned(), read(&v, what, depth + 1)?);
    }
    Ok(map)
}

fn read(obj: &Bound<'_, PyAny>, what: &str, depth: usize) -> PyResult<Json> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!("{what}: nested too deep")));
    }
    // The common types first (their checks are type flags).
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Json::String(s.to_cow()?.into_owned()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return read_dict(d, what, depth).map(Json::Object);
    }
    if obj.is_none() {
        return Ok(Json::Null);
    }
    // bool before int: a Python bool is an int.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Json::Bool(b.is_true()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        return i
            .extract::<i64>()
            .map(Json::from)
            .map_err(|_| PyValueError::new_err(format!("{what}: {i} does not fit in 64 bits")));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let x = f.value();
        return serde_json::Number::from_f64(x)
            .map(Json::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{what}: {x} is not a JSON number")));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            items.push(read(&item?, what, depth + 1)?);
        }
        return Ok(Json::Array(items));
    }
    Err(PyValueError::new_err(format!(
        "{what}: a {} has no JSON form",
        type_name(obj)
    )))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "value".into())
}

/// Python strings of the keys documents use, made once: the same few
/// keys (`"timestamp"`, property names) recur in every document, and a
/// string made once is neither decoded nor hashed again.
#[derive(Default)]
pub struct KeyCache {
    strings: HashMap<String, Py<PyString>, foldhash::fast::RandomState>,
}

impl KeyCache {
    /// Keys kept at most; past that, keys are made afresh each time (a
    /// peer sending ever new keys cannot grow this without bound).
    const MAX_KEYS: usize = 4096;
    /// Longer keys are not kept.
    const MAX_KEY_LEN: usize = 64;

    fn key<'py>(&mut self, py: Python<'py>, key: &str) -> Bound<'py, PyAny> {
        if let Some(s) = self.strings.get(key) {
            return s.bind(py).clone().into_any();
        }
        let s = PyString::new(py, key);
        if key.len() <= Self::MAX_KEY_LEN && self.strings.len() < Self::MAX_KEYS {
            self.strings.insert(key.to_owned(), s.clone().unbind());
        }
        s.into_any()
    }
}

/// A document as Python dicts and lists, its keys from `keys`.
pub fn to_py(
    py: Python<'_>,
    keys: &mut KeyCache,
    doc: &impl serde::Serialize,
) -> PyResult<Py<PyAny>> {
    doc.serialize(ToPy { py, keys })
        .map(Bound::unbind)
        .map_err(|e| PyValueError::new_err(e.0))
}

/// Why a document could not be made into Python objects (only a kind of
/// value documents do not hold, or a Python error).
#[derive(Debug)]
pub struct ToPyError(String);

impl std::fmt::Display for ToPyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ToPyError {}

impl ser::Error for ToPyError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ToPyError(msg.to_string())
    }
}

impl From<PyErr> for ToPyError {
    fn from(e: PyErr) -> Self {
        ToPyError(e.to_string())
    }
}

/// The serde serializer into Python objects: maps become dicts, sequences
/// lists, the rest `None`, bools, ints, floats and strings. The shapes
/// documents never have (structs, enums) are refused.
struct ToPy<'py, 'c> {
    py: Python<'py>,
    keys: &'c mut KeyCache,
}

type Out<'py> = Bound<'py, PyAny>;

fn unsupported<T>(what: &str) -> Result<T, ToPyError> {
    Err(ToPyError(format!("a document holds no {what}")))
}

impl<'py, 'c> ser::Serializer for ToPy<'py, 'c> {
    type Ok = Out<'py>;
    type Error = ToPyError;
    type SerializeSeq = ListOut<'py, 'c>;
    type SerializeTuple = ListOut<'py, 'c>;
    type SerializeTupleStruct = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeTupleVariant = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeMap = DictOut<'py, 'c>;
    type SerializeStruct = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeStructVariant = ser::Impossible<Out<'py>, ToPyError>;

    fn serialize_bool(self, v: bool) -> Result<Out<'py>, ToPyError> {
        Ok(PyBool::new(self.py, v).to_owned().into_any())
    }
    fn serialize_i8(self, v: i8) -> Result<Out<'py>, ToPyError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Out<'py>, ToPyError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Out<'py>, ToPyError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Out<'py>, ToPyError> {
        let Ok(int) = v.into_pyobject(self.py);
        Ok(int.into_any())
    }
    fn serialize_u8(self, v: u8) -> Result<Out<'py>, ToPyError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Out<'py>, ToPyError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Out<'py>, ToPyError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Out<'py>, ToPyError> {
        let Ok(int) = v.into_pyobject(self.py);
        Ok(int.into_any())
    }
    fn serialize_f32(self, v: f32) -> Result<Out<'py>, ToPyError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Out<'py>, ToPyError> {
        Ok(PyFloat::new(self.py, v).into_any())
    }
    fn serialize_char(self, v: char) -> Result<Out<'py>, ToPyError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<Out<'py>, ToPyError> {
        Ok(PyString::new(self.py, v).into_any())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Out<'py>, ToPyError> {
        unsupported("bytes")
    }
    fn serialize_none(self) -> Result<Out<'py>, ToPyError> {
        Ok(self.py.None().into_bound(self.py))
    }
    fn serialize_some<T: ?Sized + ser::Serialize>(self, v: &T) -> Result<Out<'py>, ToPyError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Out<'py>, ToPyError> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Out<'py>, ToPyError> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Out<'py>, ToPyError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: ?Sized + ser::Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Out<'py>, ToPyError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + ser::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Out<'py>, ToPyError> {
        unsupported("enum variants")
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<ListOut<'py, 'c>, ToPyError> {
        Ok(ListOut {
            py: self.py,
            keys: self.keys,
            items: Vec::with_capacity(len.unwrap_or(0)),
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<ListOut<'py, 'c>, ToPyError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, ToPyError> {
        unsupported("tuple structs")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ToPyError> {
        unsupported("enum variants")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<DictOut<'py, 'c>, ToPyError> {
        Ok(DictOut {
            dict: PyDict::new(self.py),
            keys: self.keys,
            key: None,
        })
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, ToPyError> {
        unsupported("structs")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ToPyError> {
        unsupported("enum variants")
    }
}

/// A list being filled.
struct ListOut<'py, 'c> {
    py: Python<'py>,
    keys: &'c mut KeyCache,
    items: Vec<Out<'py>>,
}

impl<'py> ser::SerializeSeq for ListOut<'py, '_> {
    type Ok = Out<'py>;
    type Error = ToPyError;

    fn serialize_element<T: ?Sized + ser::Serialize>(&mut self, v: &T) -> Result<(), ToPyError> {
        let item = v.serialize(ToPy {
            py: self.py,
            keys: self.keys,
        })?;
        self.items.push(item);
        Ok(())
    }

    fn end(self) -> Result<Out<'py>, ToPyError> {
        Ok(PyList::new(self.py, self.items)?.into_any())
    }
}

impl<'py> ser::SerializeTuple for ListOut<'py, '_> {
    type Ok = Out<'py>;
    type Error = ToPyError;

    fn serialize_element<T: ?Sized + ser::Serialize>(&mut self, v: &T) -> Result<(), ToPyError> {
        ser::SerializeSeq::serialize_element(self, v)
    }

    fn end(self) -> Result<Out<'py>, ToPyError> {
        ser::SerializeSeq::end(self)
    }
}

/// A dict being filled; keys are text, taken from the cache.
struct DictOut<'py, 'c> {
    dict: Bound<'py, PyDict>,
    keys: &'c mut KeyCache,
    key: Option<Out<'py>>,
}

impl<'py> ser::SerializeMap for DictOut<'py, '_> {
    type Ok = Out<'py>;
    type Error = ToPyError;

    fn serialize_key<T: ?Sized + ser::Serialize>(&mut self, key: &T) -> Result<(), ToPyError> {
        self.key = Some(key.serialize(KeyText {
            py: self.dict.py(),
            keys: self.keys,
        })?);
        Ok(())
    }

    fn serialize_value<T: ?Sized + ser::Serialize>(&mut self, v: &T) -> Result<(), ToPyError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| ToPyError("a value before its key".into()))?;
        let value = v.serialize(ToPy {
            py: self.dict.py(),
            keys: self.keys,
        })?;
        self.dict.set_item(key, value)?;
        Ok(())
    }

    fn end(self) -> Result<Out<'py>, ToPyError> {
        Ok(self.dict.into_any())
    }
}

/// A map key, which documents always write as text: looked up in the
/// cache.
struct KeyText<'py, 'c> {
    py: Python<'py>,
    keys: &'c mut KeyCache,
}

macro_rules! not_text {
    ($($method:ident($($arg:ty),*);)*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<Out<'py>, ToPyError> {
            unsupported("keys that are not text")
        }
    )*};
}

impl<'py> ser::Serializer for KeyText<'py, '_> {
    type Ok = Out<'py>;
    type Error = ToPyError;
    type SerializeSeq = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeTuple = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeTupleStruct = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeTupleVariant = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeMap = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeStruct = ser::Impossible<Out<'py>, ToPyError>;
    type SerializeStructVariant = ser::Impossible<Out<'py>, ToPyError>;

    fn serialize_str(self, key: &str) -> Result<Out<'py>, ToPyError> {
        Ok(self.keys.key(self.py, key))
    }
    not_text! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32);
        serialize_u64(u64); serialize_f32(f32); serialize_f64(f64); serialize_char(char);
        serialize_bytes(&[u8]); serialize_none(); serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }
    fn serialize_some<T: ?Sized + ser::Serialize>(self, _: &T) -> Result<Out<'py>, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_newtype_struct<T: ?Sized + ser::Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Out<'py>, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_newtype_variant<T: ?Sized + ser::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Out<'py>, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, ToPyError> {
        unsupported("keys that are not text")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ToPyError> {
        unsupported("keys that are not text")
    }
}
