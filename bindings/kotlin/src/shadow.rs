//! `Shadow`: a thin wrapper of `lanyard_std::local_shadow` (the core's
//! shadow engine with AWS IoT's view of its documents), which Python's
//! `lanyard.Shadow` wraps too; both run `bindings/shadow-cases.json`.
//! Documents cross as JSON text; `Shadow.kt` gives Kotlin
//! `kotlinx.serialization` objects over them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use lanyard_core::shadow::{ConflictPolicy as CorePolicy, Source};
use lanyard_std::aws_json::TreeView;
use lanyard_std::local_shadow::{LocalShadow, LocalShadowError, Settled, Side};
use serde_json::Value as Json;

use crate::{LanyardError, now_ms};

/// How a conflict on a property is settled: a property both sides changed,
/// to different values, since they last agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConflictPolicy {
    /// Desired state stands; the delta asks the device again.
    CloudWins,
    /// The reported value becomes desired.
    DeviceWins,
    /// The later write wins (the cloud's within the skew tolerance).
    LatestWins,
    /// Parked for an operator ([`Shadow::resolve`]); out of the delta
    /// meanwhile.
    ManualResolve,
}

impl From<ConflictPolicy> for CorePolicy {
    fn from(p: ConflictPolicy) -> Self {
        match p {
            ConflictPolicy::CloudWins => CorePolicy::CloudWins,
            ConflictPolicy::DeviceWins => CorePolicy::DeviceWins,
            ConflictPolicy::LatestWins => CorePolicy::LatestWins,
            ConflictPolicy::ManualResolve => CorePolicy::ManualResolve,
        }
    }
}

impl From<CorePolicy> for ConflictPolicy {
    fn from(p: CorePolicy) -> Self {
        match p {
            CorePolicy::CloudWins => ConflictPolicy::CloudWins,
            CorePolicy::DeviceWins => ConflictPolicy::DeviceWins,
            CorePolicy::LatestWins => ConflictPolicy::LatestWins,
            CorePolicy::ManualResolve => ConflictPolicy::ManualResolve,
        }
    }
}

/// Which side a parked conflict is settled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Winner {
    /// The desired value stands; the delta asks the device for it.
    Cloud,
    /// The reported value becomes desired.
    Device,
}

impl From<Source> for Winner {
    fn from(s: Source) -> Self {
        match s {
            Source::Cloud => Winner::Cloud,
            Source::Device => Winner::Device,
        }
    }
}

impl From<Winner> for Source {
    fn from(w: Winner) -> Self {
        match w {
            Winner::Cloud => Source::Cloud,
            Winner::Device => Source::Device,
        }
    }
}

/// A conflict a write settled (or parked).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Conflict {
    /// The property, dotted.
    pub path: String,
    /// The policy that settled it.
    pub policy: ConflictPolicy,
    /// Who won; `null` when parked for an operator.
    pub winner: Option<Winner>,
    /// The cloud's value, as JSON text.
    pub cloud_json: String,
    /// The device's value, as JSON text.
    pub device_json: String,
}

/// A conflict waiting for [`Shadow::resolve`].
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ParkedConflict {
    /// The property, dotted.
    pub path: String,
    /// When it was parked (ms since the epoch).
    pub parked_at_ms: u64,
}

/// A write's outcome: the new version and the conflicts it settled.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Written {
    /// The document's version after the write.
    pub version: u64,
    /// The conflicts the write settled or parked.
    pub conflicts: Vec<Conflict>,
}

fn conflict_of(c: &Settled) -> Conflict {
    Conflict {
        path: c.path.clone(),
        policy: c.policy.into(),
        winner: c.winner.map(Winner::from),
        cloud_json: c.cloud.to_string(),
        device_json: c.device.to_string(),
    }
}

impl From<LocalShadowError> for LanyardError {
    fn from(e: LocalShadowError) -> Self {
        match e {
            LocalShadowError::Refused { code, ref message } => LanyardError::ShadowRejected {
                code,
                reason: message.clone(),
                document: serde_json::json!({"code": code, "message": message}).to_string(),
            },
            LocalShadowError::NotParked(path) => LanyardError::NotParked { path },
            e => LanyardError::BadInput {
                detail: e.to_string(),
            },
        }
    }
}

/// The refusal of an AWS document (`{"code", "message", ...}`).
fn rejected(doc: Json) -> LanyardError {
    LanyardError::ShadowRejected {
        code: doc["code"].as_u64().unwrap_or(400) as u16,
        reason: doc["message"].as_str().unwrap_or_default().to_owned(),
        document: doc.to_string(),
    }
}

/// A shadow document kept in this process, by the same engine the twin
/// host runs: desired and reported state, the delta between them, a version
/// every write increases, and conflict policies per property path, for
/// gateways and services that keep shadows themselves. With `CloudWins`
/// everywhere (the default) `updateJson` and `getJson` behave as AWS IoT's
/// shadow service does. Times (`nowMs`) default to the clock's.
#[derive(uniffi::Object)]
pub struct Shadow {
    doc: Mutex<LocalShadow>,
}

impl Shadow {
    fn doc(&self) -> MutexGuard<'_, LocalShadow> {
        // A panic cannot leave the document half-written (every write is
        // checked before it changes anything), so a poisoned lock is used.
        self.doc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(
        &self,
        side: Side,
        state_json: &str,
        if_version: Option<u64>,
        now: Option<u64>,
    ) -> Result<Written, LanyardError> {
        let state = match serde_json::from_str::<Json>(state_json) {
            Ok(Json::Object(o)) => o,
            _ => {
                return Err(LanyardError::BadInput {
                    detail: "state must be a JSON object".into(),
                });
            }
        };
        let (version, conflicts) =
            self.doc()
                .write(side, &state, if_version, now.unwrap_or_else(now_ms))?;
        Ok(Written {
            version,
            conflicts: conflicts.iter().map(conflict_of).collect(),
        })
    }
}

#[uniffi::export]
impl Shadow {
    /// An empty document (version 0) whose conflicts `defaultPolicy`
    /// settles, and `policies` (dotted path to policy) for the paths they
    /// name (the longest matching path decides). `skewToleranceMs`: how
    /// much later a device's write must be to win under `LatestWins`.
    #[uniffi::constructor(default(policies = None, default_policy = None, skew_tolerance_ms = 1000))]
    pub fn new(
        policies: Option<HashMap<String, ConflictPolicy>>,
        default_policy: Option<ConflictPolicy>,
        skew_tolerance_ms: u64,
    ) -> Result<Arc<Self>, LanyardError> {
        let mut doc = LocalShadow::new(
            default_policy.unwrap_or(ConflictPolicy::CloudWins).into(),
            skew_tolerance_ms,
        );
        for (path, policy) in policies.unwrap_or_default() {
            doc.set_policy(&path, policy.into())?;
        }
        Ok(Arc::new(Shadow {
            doc: Mutex::new(doc),
        }))
    }

    /// The document's version: 0 before the first write.
    pub fn version(&self) -> u64 {
        self.doc().version()
    }

    /// Applies an AWS IoT shadow update request (JSON text: `{"state":
    /// {"desired": ..., "reported": ...}, "version": N, "clientToken":
    /// ...}`) and returns what AWS IoT publishes on `/update/accepted`.
    /// Refused (nothing changes): `ShadowRejected` with the code, message
    /// and document AWS IoT publishes on `/update/rejected`.
    #[uniffi::method(default(now_ms = None))]
    pub fn update_json(
        &self,
        request: String,
        now_ms: Option<u64>,
    ) -> Result<String, LanyardError> {
        let now = now_ms.unwrap_or_else(crate::now_ms);
        match self.doc().update_aws(request.as_bytes(), now) {
            Ok((doc, _)) => Ok(json_text(&doc)),
            Err(doc) => Err(rejected(doc)),
        }
    }

    /// What AWS IoT publishes on `/get/accepted` (JSON text: state with
    /// the delta, metadata, version, timestamp). Before the first write:
    /// `ShadowRejected` with code 404.
    #[uniffi::method(default(client_token = None, now_ms = None))]
    pub fn get_json(
        &self,
        client_token: Option<String>,
        now_ms: Option<u64>,
    ) -> Result<String, LanyardError> {
        let now = now_ms.unwrap_or_else(crate::now_ms);
        self.doc()
            .get_aws(client_token.as_deref(), now)
            .map(|d| json_text(&d))
            .map_err(rejected)
    }

    /// Writes desired state (a JSON object; nulls delete), as the cloud;
    /// with `ifVersion`, only if it is the document's.
    #[uniffi::method(default(if_version = None, now_ms = None))]
    pub fn update_desired_json(
        &self,
        state: String,
        if_version: Option<u64>,
        now_ms: Option<u64>,
    ) -> Result<Written, LanyardError> {
        self.write(Side::Desired, &state, if_version, now_ms)
    }

    /// Writes reported state, as the device. See `updateDesiredJson`.
    #[uniffi::method(default(if_version = None, now_ms = None))]
    pub fn update_reported_json(
        &self,
        state: String,
        if_version: Option<u64>,
        now_ms: Option<u64>,
    ) -> Result<Written, LanyardError> {
        self.write(Side::Reported, &state, if_version, now_ms)
    }

    /// Desired state (JSON text of an object).
    pub fn desired_json(&self) -> String {
        json_text(&self.doc().desired_view())
    }

    /// Reported state (JSON text of an object).
    pub fn reported_json(&self) -> String {
        json_text(&self.doc().reported_view())
    }

    /// The desired properties whose reported value differs or is missing,
    /// less the parked conflicts (JSON text of an object).
    pub fn delta_json(&self) -> Result<String, LanyardError> {
        let delta = self.doc().delta_tree()?;
        Ok(json_text(&TreeView::values(&*delta)))
    }

    /// Conflicts waiting for [`Shadow::resolve`].
    pub fn parked(&self) -> Vec<ParkedConflict> {
        self.doc()
            .parked()
            .into_iter()
            .map(|(path, parked_at_ms)| ParkedConflict { path, parked_at_ms })
            .collect()
    }

    /// Settles the conflict parked at `path` for `winner`; returns the
    /// version. `NotParked` when none is parked there.
    #[uniffi::method(default(now_ms = None))]
    pub fn resolve(
        &self,
        path: String,
        winner: Winner,
        now_ms: Option<u64>,
    ) -> Result<u64, LanyardError> {
        Ok(self
            .doc()
            .resolve(&path, winner.into(), now_ms.unwrap_or_else(crate::now_ms))?)
    }

    /// Conflicts settled so far: a count per policy (`cloud_wins`,
    /// `device_wins`, `latest_wins`, `manual_resolve`), and `cloud_won`,
    /// `device_won`.
    pub fn conflict_counts(&self) -> HashMap<String, u64> {
        self.doc()
            .conflict_counts()
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect()
    }

    /// The policy that settles the dotted `path`.
    pub fn policy_for(&self, path: String) -> Result<ConflictPolicy, LanyardError> {
        Ok(self.doc().policy_for(&path)?.into())
    }
}

/// A document as JSON text. Its keys are all text, so writing it cannot
/// fail.
fn json_text(doc: &impl serde::Serialize) -> String {
    serde_json::to_string(doc).unwrap_or_default()
}
