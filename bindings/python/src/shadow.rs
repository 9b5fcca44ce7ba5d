//! `lanyard.Shadow`: a thin wrapper of `lanyard_std::local_shadow` (the
//! core's shadow engine with AWS IoT's view of its documents), which the
//! Kotlin `Shadow` wraps too. The Python package turns the JSON text into
//! dicts and the refusals into exceptions.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::errors::{PyKeyError, PyValueError};
use lanyard_std::local_shadow::{
    LocalShadow, LocalShadowError, Settled, Side, policy_named, winner_named,
};
use pyo3::prelude::*;
use serde_json::Value as Json;

/// A shadow document kept in this process. See the Python class.
#[pyclass(module = "lanyard._lanyard")]
pub struct Shadow {
    doc: LocalShadow,
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

/// The settled conflicts as the JSON text the Python package reads.
fn conflicts_json(conflicts: &[Settled]) -> String {
    Json::Array(conflicts.iter().map(Settled::to_json).collect()).to_string()
}

/// What a write answers: `(true, version, conflicts as JSON text)`, or
/// `(false, code, message)` as AWS IoT words the refusal (nothing
/// changed).
type Written = (bool, u64, String);

impl Shadow {
    fn write(
        &mut self,
        state: &str,
        side: Side,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        let obj = match serde_json::from_str::<Json>(state) {
            Ok(Json::Object(o)) => o,
            _ => return Err(PyValueError::new_err("state must be a JSON object")),
        };
        match self
            .doc
            .write(side, &obj, version, now_ms.unwrap_or_else(clock_ms))
        {
            Ok((version, conflicts)) => Ok((true, version, conflicts_json(&conflicts))),
            Err(LocalShadowError::Refused { code, message }) => {
                Ok((false, u64::from(code), message))
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
        Ok(Shadow { doc })
    }

    /// The document's version.
    #[getter]
    fn version(&self) -> u64 {
        self.doc.version()
    }

    /// An AWS IoT `/update` request (JSON text): `(True, accepted document,
    /// conflicts)` or `(False, rejected document, "[]")`; nothing changes
    /// when refused.
    #[pyo3(signature = (request, now_ms=None))]
    fn update_aws(&mut self, request: &str, now_ms: Option<u64>) -> (bool, String, String) {
        match self
            .doc
            .update_aws(request.as_bytes(), now_ms.unwrap_or_else(clock_ms))
        {
            Ok((doc, conflicts)) => (true, doc.to_string(), conflicts_json(&conflicts)),
            Err(doc) => (false, doc.to_string(), "[]".into()),
        }
    }

    /// The AWS IoT `/get/accepted` document (JSON text): `(True,
    /// document)`, or `(False, rejected document)` before the first write
    /// (AWS IoT answers 404: no such shadow).
    #[pyo3(signature = (client_token=None, now_ms=None))]
    fn get_aws(&self, client_token: Option<&str>, now_ms: Option<u64>) -> (bool, String) {
        match self
            .doc
            .get_aws(client_token, now_ms.unwrap_or_else(clock_ms))
        {
            Ok(doc) => (true, doc.to_string()),
            Err(doc) => (false, doc.to_string()),
        }
    }

    /// Writes desired state (JSON text; nulls delete), as the cloud. See
    /// `Written`.
    #[pyo3(signature = (state, version=None, now_ms=None))]
    fn update_desired(
        &mut self,
        state: &str,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        self.write(state, Side::Desired, version, now_ms)
    }

    /// Writes reported state, as the device. See `update_desired`.
    #[pyo3(signature = (state, version=None, now_ms=None))]
    fn update_reported(
        &mut self,
        state: &str,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        self.write(state, Side::Reported, version, now_ms)
    }

    /// Desired state as JSON text.
    fn desired_json(&self) -> String {
        self.doc.desired().to_string()
    }

    /// Reported state as JSON text.
    fn reported_json(&self) -> String {
        self.doc.reported().to_string()
    }

    /// The delta as JSON text.
    fn delta_json(&self) -> PyResult<String> {
        self.doc.delta().map(|d| d.to_string()).map_err(py_err)
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
