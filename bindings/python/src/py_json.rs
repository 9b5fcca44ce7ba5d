//! Python objects to and from the JSON the SDK's documents are made of,
//! without JSON text between them: dicts in are read into
//! `serde_json::Value` with the checks JSON text would have had (and one
//! it would not: integers past 64 bits, which the SDK would read back as
//! floats); documents out are written by their own `Serialize` straight
//! into dicts and lists (`pythonize`).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
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

fn read(obj: &Bound<'_, PyAny>, what: &str, depth: usize) -> PyResult<Json> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!("{what}: nested too deep")));
    }
    // The common types first (their checks are type flags).
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Json::String(s.to_cow()?.into_owned()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
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
        return Ok(Json::Object(map));
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

/// A document as Python dicts and lists.
pub fn to_py(py: Python<'_>, doc: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
    pythonize::pythonize(py, doc)
        .map(Bound::unbind)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}
