//! `lanyard.Shadow`: the core's shadow engine (desired, reported, delta,
//! versions, per-path conflict policies, parked conflicts) in a Python
//! object, with the AWS IoT view of its documents
//! (`lanyard_std::aws_json`, the same code the twin host answers the
//! `$aws/things/...` topics with). The Python package turns the JSON text
//! into dicts and the refusals into exceptions.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::errors::{PyKeyError, PyValueError};
use lanyard_core::shadow::{
    ConflictPolicy, PathBuf, Shadow as CoreShadow, ShadowConfig, Source, StateTree,
};
use lanyard_std::aws_json::{
    self, AwsJsonError, accepted_document, error_document, get_document, parse_update, tree_to_json,
};
use pyo3::prelude::*;
use serde_json::json;

/// Leaves a document holds, and the bytes of their paths and values: the
/// twin host's, so that a document one takes, the other takes too.
pub const LEAVES: usize = lanyard_std::twin::TWIN_LEAVES;
/// See [`LEAVES`].
pub const POOL: usize = lanyard_std::twin::TWIN_POOL;

type Doc = CoreShadow<LEAVES, POOL>;
type Tree = StateTree<LEAVES, POOL>;

/// A shadow document kept in this process. See the Python class.
#[pyclass(module = "lanyard._lanyard")]
pub struct Shadow {
    doc: Box<Doc>,
}

fn clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn policy(name: &str) -> PyResult<ConflictPolicy> {
    ConflictPolicy::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown conflict policy {name:?}: cloud_wins, device_wins, latest_wins or manual_resolve"
        ))
    })
}

/// What a write answers: `(true, version, conflicts as JSON text)`, or
/// `(false, code, message)` as AWS IoT words the refusal (nothing
/// changed).
type Written = (bool, u64, String);

fn refused(e: &AwsJsonError) -> Written {
    (false, u64::from(e.code()), e.message())
}

impl Shadow {
    /// Settles what the last write changed under the paths' policies (a
    /// conflict decided, parked, or the device's value taken). Under
    /// `cloud_wins` for every path, the default, nothing changes the
    /// desired state and the document is AWS IoT's.
    fn settle(&mut self, now_ms: u64) -> Vec<serde_json::Value> {
        let mut conflicts = Vec::new();
        // No backoff in a local engine (see `new`): a sync always runs.
        let _ = self.doc.sync(now_ms, 0, |c| {
            conflicts.push(json!({
                "path": c.path.to_string(),
                "policy": c.policy.name(),
                "winner": c.winner.map(|w| match w {
                    Source::Cloud => "cloud",
                    Source::Device => "device",
                }),
                "cloud": aws_json::value_to_json(c.cloud),
                "device": aws_json::value_to_json(c.device),
            }))
        });
        conflicts
    }

    fn write(
        &mut self,
        state: &str,
        desired: bool,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        let now = now_ms.unwrap_or_else(clock_ms);
        let obj = match serde_json::from_str::<serde_json::Value>(state) {
            Ok(serde_json::Value::Object(o)) => o,
            _ => return Err(PyValueError::new_err("state must be a JSON object")),
        };
        // Nulls delete, on either side (as in an AWS update).
        let tree: Tree = match aws_json::tree_from_json(&obj, true) {
            Ok(t) => t,
            Err(e) => return Ok(refused(&e)),
        };
        let applied = if desired {
            self.doc.apply_desired(&tree, version, now)
        } else {
            self.doc.apply_reported(&tree, version, now)
        };
        match applied {
            Ok(_) => {
                let conflicts = self.settle(now);
                Ok((true, self.doc.version(), json!(conflicts).to_string()))
            }
            Err(e) => Ok(refused(&AwsJsonError::Core(e))),
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
        let mut doc = Box::new(Doc::new(policy(default_policy)?));
        // The backoff after a conflict paces a device and the cloud over
        // the network; here every write is settled at once.
        doc.set_config(ShadowConfig {
            skew_tolerance_ms,
            backoff_base_ms: 0,
            backoff_cap_ms: 0,
        });
        for (path, name) in policies.unwrap_or_default() {
            let p = PathBuf::from_dotted(&path)
                .map_err(|e| PyValueError::new_err(format!("policy path {path:?}: {e}")))?;
            doc.set_policy(&p, policy(&name)?)
                .map_err(|e| PyValueError::new_err(format!("policy for {path:?}: {e}")))?;
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
        let now = now_ms.unwrap_or_else(clock_ms);
        let req = match parse_update::<LEAVES, POOL>(request.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                return (
                    false,
                    error_document(&e, now, None).to_string(),
                    "[]".into(),
                );
            }
        };
        match req.apply_to(&mut self.doc, now) {
            Ok(version) => {
                let conflicts = self.settle(now);
                (
                    true,
                    accepted_document(&req, version, now).to_string(),
                    json!(conflicts).to_string(),
                )
            }
            Err(e) => (
                false,
                error_document(&e, now, req.client_token.as_deref()).to_string(),
                "[]".into(),
            ),
        }
    }

    /// The AWS IoT `/get/accepted` document (JSON text), or `None` before
    /// the first write (AWS IoT answers 404: no such shadow).
    #[pyo3(signature = (client_token=None, now_ms=None))]
    fn get_aws(&self, client_token: Option<&str>, now_ms: Option<u64>) -> PyResult<Option<String>> {
        if self.doc.version() == 0 {
            return Ok(None);
        }
        let now = now_ms.unwrap_or_else(clock_ms);
        get_document(&self.doc, now, client_token)
            .map(|d| Some(d.to_string()))
            .map_err(|e| PyValueError::new_err(e.to_string()))
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
        self.write(state, true, version, now_ms)
    }

    /// Writes reported state, as the device. See `update_desired`.
    #[pyo3(signature = (state, version=None, now_ms=None))]
    fn update_reported(
        &mut self,
        state: &str,
        version: Option<u64>,
        now_ms: Option<u64>,
    ) -> PyResult<Written> {
        self.write(state, false, version, now_ms)
    }

    /// Desired state as JSON text.
    fn desired_json(&self) -> String {
        tree_to_json(self.doc.desired()).to_string()
    }

    /// Reported state as JSON text.
    fn reported_json(&self) -> String {
        tree_to_json(self.doc.reported()).to_string()
    }

    /// The delta as JSON text.
    fn delta_json(&self) -> PyResult<String> {
        let mut delta = Tree::new();
        self.doc
            .delta_into(&mut delta)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(tree_to_json(&delta).to_string())
    }

    /// Conflicts parked for an operator: `(dotted path, parked at ms)`.
    fn parked(&self) -> Vec<(String, u64)> {
        self.doc
            .parked()
            .map(|(p, at)| (p.to_string(), at))
            .collect()
    }

    /// Settles a parked conflict: `winner` is `"cloud"` (the desired value
    /// stands, the delta asks the device for it) or `"device"` (the
    /// reported value becomes the desired one). Returns the version.
    #[pyo3(signature = (path, winner, now_ms=None))]
    fn resolve(&mut self, path: &str, winner: &str, now_ms: Option<u64>) -> PyResult<u64> {
        let winner = match winner {
            "cloud" => Source::Cloud,
            "device" => Source::Device,
            other => {
                return Err(PyValueError::new_err(format!(
                    "winner {other:?}: \"cloud\" or \"device\""
                )));
            }
        };
        let p = PathBuf::from_dotted(path)
            .map_err(|e| PyValueError::new_err(format!("path {path:?}: {e}")))?;
        self.doc
            .resolve(p.as_path(), winner, now_ms.unwrap_or_else(clock_ms))
            .map_err(|e| match e {
                lanyard_core::Error::NotParked => {
                    PyKeyError::new_err(format!("no conflict is parked at {path:?}"))
                }
                e => PyValueError::new_err(e.to_string()),
            })
    }

    /// Conflict counters: by policy, and who won.
    fn conflict_counts(&self) -> Vec<(String, u64)> {
        let s = self.doc.stats();
        let mut out: Vec<(String, u64)> = ConflictPolicy::ALL
            .into_iter()
            .map(|p| (p.name().to_owned(), s.count(p)))
            .collect();
        out.push(("cloud_won".into(), s.cloud_won));
        out.push(("device_won".into(), s.device_won));
        out
    }

    /// The policy that applies to a dotted path.
    fn policy_for(&self, path: &str) -> PyResult<String> {
        let p = PathBuf::from_dotted(path)
            .map_err(|e| PyValueError::new_err(format!("path {path:?}: {e}")))?;
        Ok(self.doc.policy_for(p.as_path()).name().to_owned())
    }
}
