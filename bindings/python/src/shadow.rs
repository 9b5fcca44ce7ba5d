//! `lanyard.Shadow`: a thin wrapper of `lanyard_std::local_shadow` (the
//! core's shadow engine with AWS IoT's view of its documents), which the
//! Kotlin `Shadow` wraps too. Documents cross as dicts (`py_json`); the
//! Python package turns the refusals into exceptions.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::errors::{PyKeyError, PyValueError};
use crate::py_json::{KeyCache, from_py, object_from_py, to_py};
use lanyard_std::aws_json::TreeView;
use lanyard_std::local_shadow::{
    LocalShadow, LocalShadowError, Settled, Side, policy_named, winner_named,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use serde_json::Value as Json;

/// A shadow document kept in this process. See the Python class.
#[pyclass(module = "lanyard._lanyard")]
pub struct Shadow {
    doc: LocalShadow,
    /// What the last accepted write settled; turned into dicts only when
    /// read (a write that settles every leaf of a large document would
    /// otherwise build a list nobody asked for).
    last: Vec<Settled>,
    /// The keys of the documents this shadow hands out, made once.
    keys: Mutex<KeyCache>,
}

fn clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn py_err(e: LocalShadowError) -> PyErr {
    match e {
        LocalShadowError::NotParked(_) => PyKeyError::new_err(e.to_string()),
        e => PyValueError::new_err(e.to_string()),
    }
}

/// What a write answers: `(version, None)`, or `(code, message)` as AWS
/// IoT words the refusal (nothing changed).
type Written = (u64, Option<String>);

impl Shadow {
    /// `doc` as Python objects.
    fn to_py(&self, py: Python<'_>, doc: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
        // The cache is only ever used with the GIL held, so this lock is
        // never contended; a panic while it was held leaves it usable.
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        to_py(py, &mut keys, doc)
    }

    fn write(
        &mut self,
        state: &Bound<'_, PyAny>,
        side: Side,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        let what = match side {
            Side::Desired => "desired state",
            Side::Reported => "reported state",
        };
        let obj = object_from_py(state, what)?;
        match self
            .doc
            .write(side, &obj, version, now_ms.unwrap_or_else(clock_ms))
        {
            Ok((version, conflicts)) => {
                self.last = conflicts;
                Ok((version, None))
            }
            Err(LocalShadowError::Refused { code, message }) => {
                Ok((u64::from(code), Some(message)))
            }
            Err(e) => Err(py_err(e)),
        }
    }
}

#[pymethods]
impl Shadow {
    /// An empty document (version 0) whose conflicts are settled by
    /// `default_policy`, and by `policies` (dotted path → policy name) for
    /// the paths they name (the longest matching path decides).
    #[new]
    #[pyo3(signature = (policies=None, default_policy="cloud_wins", skew_tolerance_ms=1000))]
    fn new(
        policies: Option<Vec<(String, String)>>,
        default_policy: &str,
        skew_tolerance_ms: u64,
    ) -> PyResult<Self> {
        let mut doc = LocalShadow::new(
            policy_named(default_policy).map_err(py_err)?,
            skew_tolerance_ms,
        );
        for (path, name) in policies.unwrap_or_default() {
            doc.set_policy(&path, policy_named(&name).map_err(py_err)?)
                .map_err(py_err)?;
        }
        Ok(Shadow {
            doc,
            last: Vec::new(),
            keys: Mutex::new(KeyCache::default()),
        })
    }

    /// The document's version.
    #[getter]
    fn version(&self) -> u64 {
        self.doc.version()
    }

    /// An AWS IoT `/update` request (a dict, or JSON text as str or
    /// bytes): `(True, accepted document)` or `(False, rejected
    /// document)`; nothing changes when refused.
    #[pyo3(signature = (request, now_ms=None))]
    fn update_aws(
        &mut self,
        py: Python<'_>,
        request: &Bound<'_, PyAny>,
        now_ms: Option<u64>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let now_ms = now_ms.unwrap_or_else(clock_ms);
        // JSON text as it came off the network (an AWS update topic), or
        // the request as Python objects.
        let answer = if let Ok(text) = request.cast::<PyString>() {
            self.doc.update_aws(text.to_cow()?.as_bytes(), now_ms)
        } else if let Ok(bytes) = request.cast::<PyBytes>() {
            self.doc.update_aws(bytes.as_bytes(), now_ms)
        } else {
            self.doc
                .update_aws_json(&from_py(request, "request")?, now_ms)
        };
        match answer {
            Ok((doc, conflicts)) => {
                self.last = conflicts;
                Ok((true, self.to_py(py, &doc)?))
            }
            Err(doc) => Ok((false, self.to_py(py, &doc)?)),
        }
    }

    /// The AWS IoT `/get/accepted` document: `(True, document)`, or
    /// `(False, rejected document)` before the first write (AWS IoT
    /// answers 404: no such shadow).
    #[pyo3(signature = (client_token=None, now_ms=None))]
    fn get_aws(
        &self,
        py: Python<'_>,
        client_token: Option<&str>,
        now_ms: Option<u64>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        match self
            .doc
            .get_aws(client_token, now_ms.unwrap_or_else(clock_ms))
        {
            Ok(doc) => Ok((true, self.to_py(py, &doc)?)),
            Err(doc) => Ok((false, self.to_py(py, &doc)?)),
        }
    }

    /// Writes desired state (a dict; `None` deletes), as the cloud. See
    /// `Written`.
    #[pyo3(signature = (state, version=None, now_ms=None))]
    fn update_desired(
        &mut self,
        state: &Bound<'_, PyAny>,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        self.write(state, Side::Desired, version, now_ms)
    }

    /// Writes reported state, as the device. See `update_desired`.
    #[pyo3(signature = (state, version=None, now_ms=None))]
    fn update_reported(
        &mut self,
        state: &Bound<'_, PyAny>,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        self.write(state, Side::Reported, version, now_ms)
    }

    /// The conflicts the last accepted write settled, as dicts.
    fn last_conflicts(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let list: Vec<Json> = self.last.iter().map(Settled::to_json).collect();
        self.to_py(py, &list)
    }

    /// Desired state, a dict.
    fn desired(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.to_py(py, &self.doc.desired_view())
    }

    /// Reported state, a dict.
    fn reported(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.to_py(py, &self.doc.reported_view())
    }

    /// The delta, a dict.
    fn delta(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let delta = self.doc.delta_tree().map_err(py_err)?;
        self.to_py(py, &TreeView::values(&*delta))
    }

    /// Conflicts parked for an operator: `(dotted path, parked at ms)`.
    fn parked(&self) -> Vec<(String, u64)> {
        self.doc.parked()
    }

    /// Settles a parked conflict: `winner` is `"cloud"` (the desired value
    /// stands, the delta asks the device for it) or `"device"` (the
    /// reported value becomes the desired one). Returns the version.
    #[pyo3(signature = (path, winner, now_ms=None))]
    fn resolve(&mut self, path: &str, winner: &str, now_ms: Option<u64>) -> PyResult<u64> {
        let winner = winner_named(winner).map_err(py_err)?;
        self.doc
            .resolve(path, winner, now_ms.unwrap_or_else(clock_ms))
            .map_err(py_err)
    }

    /// Conflict counters: by policy, and who won.
    fn conflict_counts(&self) -> Vec<(String, u64)> {
        self.doc
            .conflict_counts()
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect()
    }

    /// The policy that applies to a dotted path.
    fn policy_for(&self, path: &str) -> PyResult<String> {
        self.doc
            .policy_for(path)
            .map(|p| p.name().to_owned())
            .map_err(py_err)
    }
}
