//! A shadow document kept in the process that uses it, in JSON: the core's
//! shadow engine (desired, reported, delta, versions, per-path conflict
//! policies, parked conflicts) with the AWS IoT view of its documents
//! ([`crate::aws_json`], the code the twin host answers the
//! `$aws/things/...` topics with).
//!
//! The Python `lanyard.Shadow` and the Kotlin `Shadow` are thin wrappers of
//! [`LocalShadow`], so the two bindings cannot disagree on a rule: they run
//! the same shared test cases (`bindings/shadow-cases.json`).
//!
//! ```
//! use lanyard_std::local_shadow::LocalShadow;
//! use lanyard_core::shadow::ConflictPolicy;
//!
//! let mut s = LocalShadow::new(ConflictPolicy::CloudWins, 1000);
//! let (doc, _) = s.update_aws(br#"{"state":{"desired":{"color":"red"}}}"#, 5_000).unwrap();
//! assert_eq!(serde_json::to_value(&doc).unwrap()["version"], 1);
//! s.update_aws(br#"{"state":{"reported":{"color":"blue"}}}"#, 6_000).unwrap();
//! assert_eq!(s.delta().unwrap(), serde_json::json!({"color": "red"}));
//! // A stale version is refused as AWS IoT refuses it, and nothing changes.
//! let refused = s.update_aws(br#"{"state":{"desired":{"color":null}},"version":1}"#, 7_000);
//! assert_eq!(refused.unwrap_err()["code"], 409);
//! assert_eq!(s.version(), 2);
//! ```

use lanyard_core::shadow::{
    ConflictPolicy, PathBuf, Shadow as CoreShadow, ShadowConfig, Source, StateTree,
};
use serde_json::{Value as Json, json};

use crate::aws_json::{
    self, AwsJsonError, GetDocument, TreeView, UpdateRequest, accepted_document, error_document,
    get_document, parse_update, tree_to_json,
};

/// Leaves a document holds, and the bytes of their paths and values: the
/// twin host's, so that a document one takes, the other takes too.
pub const LEAVES: usize = crate::twin::TWIN_LEAVES;
/// See [`LEAVES`].
pub const POOL: usize = crate::twin::TWIN_POOL;

type Doc = CoreShadow<LEAVES, POOL>;
/// A tree of the size a local shadow keeps.
pub type Tree = StateTree<LEAVES, POOL>;

/// Why a call that is not an AWS update failed (an AWS update answers with
/// AWS IoT's rejected document instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalShadowError {
    /// A policy or winner name that is not one.
    UnknownName(String),
    /// A dotted path that is not a shadow path.
    BadPath(String),
    /// `resolve` of a path where no conflict is parked.
    NotParked(String),
    /// The write was refused: AWS IoT's code and message. Nothing changed.
    Refused {
        /// 400, 409 (version conflict) or 413 (too large).
        code: u16,
        /// AWS IoT's words.
        message: String,
    },
}

impl std::fmt::Display for LocalShadowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalShadowError::UnknownName(m) | LocalShadowError::BadPath(m) => f.write_str(m),
            LocalShadowError::NotParked(p) => write!(f, "no conflict is parked at {p:?}"),
            LocalShadowError::Refused { code, message } => write!(f, "{code}: {message}"),
        }
    }
}

impl std::error::Error for LocalShadowError {}

impl From<&AwsJsonError> for LocalShadowError {
    fn from(e: &AwsJsonError) -> Self {
        LocalShadowError::Refused {
            code: e.code(),
            message: e.message(),
        }
    }
}

/// The policy named `name` (`cloud_wins`, `device_wins`, `latest_wins`,
/// `manual_resolve`).
pub fn policy_named(name: &str) -> Result<ConflictPolicy, LocalShadowError> {
    ConflictPolicy::from_name(name).ok_or_else(|| {
        LocalShadowError::UnknownName(format!(
            "unknown conflict policy {name:?}: cloud_wins, device_wins, latest_wins or manual_resolve"
        ))
    })
}

/// The side named `name` (`cloud` or `device`).
pub fn winner_named(name: &str) -> Result<Source, LocalShadowError> {
    match name {
        "cloud" => Ok(Source::Cloud),
        "device" => Ok(Source::Device),
        other => Err(LocalShadowError::UnknownName(format!(
            "winner {other:?}: \"cloud\" or \"device\""
        ))),
    }
}

fn path_of(what: &str, dotted: &str) -> Result<PathBuf, LocalShadowError> {
    PathBuf::from_dotted(dotted)
        .map_err(|e| LocalShadowError::BadPath(format!("{what} {dotted:?}: {e}")))
}

/// Which side a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Desired state, written by the cloud.
    Desired,
    /// Reported state, written by the device.
    Reported,
}

/// A conflict a write settled (or parked for an operator).
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The property, dotted.
    pub path: String,
    /// The policy that settled it.
    pub policy: ConflictPolicy,
    /// Who won; `None` when parked for an operator.
    pub winner: Option<Source>,
    /// The cloud's value.
    pub cloud: Json,
    /// The device's value.
    pub device: Json,
}

impl Settled {
    /// As a JSON object: `path`, `policy` and `winner` (`"cloud"`,
    /// `"device"` or null) by name, the two values.
    pub fn to_json(&self) -> Json {
        json!({
            "path": self.path,
            "policy": self.policy.name(),
            "winner": self.winner.map(|w| match w {
                Source::Cloud => "cloud",
                Source::Device => "device",
            }),
            "cloud": self.cloud,
            "device": self.device,
        })
    }
}

/// What [`LocalShadow::update_aws`] accepted: serialized, it is the
/// document AWS IoT publishes on `/update/accepted`.
#[derive(Debug)]
pub struct Accepted {
    request: Box<UpdateRequest<LEAVES, POOL>>,
    version: u64,
    now_ms: u64,
}

impl Accepted {
    /// The shadow's version after the update.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl serde::Serialize for Accepted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        accepted_document(&self.request, self.version, self.now_ms).serialize(s)
    }
}

/// A shadow document kept in this process. See the [module](self).
pub struct LocalShadow {
    doc: Box<Doc>,
}

impl LocalShadow {
    /// An empty document (version 0) whose conflicts `default_policy`
    /// settles; `latest_wins` gives the cloud a write within
    /// `skew_tolerance_ms` of the device's.
    pub fn new(default_policy: ConflictPolicy, skew_tolerance_ms: u64) -> Self {
        let mut doc = Box::new(Doc::new(default_policy));
        // The backoff after a conflict paces a device and the cloud over
        // the network; here every write is settled at once.
        doc.set_config(ShadowConfig {
            skew_tolerance_ms,
            backoff_base_ms: 0,
            backoff_cap_ms: 0,
        });
        LocalShadow { doc }
    }

    /// Settles the paths under `dotted` (the longest matching path decides)
    /// by `policy`.
    pub fn set_policy(
        &mut self,
        dotted: &str,
        policy: ConflictPolicy,
    ) -> Result<(), LocalShadowError> {
        let p = path_of("policy path", dotted)?;
        self.doc
            .set_policy(&p, policy)
            .map_err(|e| LocalShadowError::BadPath(format!("policy for {dotted:?}: {e}")))
    }

    /// The policy that settles `dotted`.
    pub fn policy_for(&self, dotted: &str) -> Result<ConflictPolicy, LocalShadowError> {
        Ok(self.doc.policy_for(path_of("path", dotted)?.as_path()))
    }

    /// The document's version: 0 before the first write.
    pub fn version(&self) -> u64 {
        self.doc.version()
    }

    /// Settles what the last write changed under the paths' policies (a
    /// conflict decided, parked, or the device's value taken), and returns
    /// the conflicts it settled. Under `cloud_wins` for every path, the
    /// default, nothing changes the desired state and the document is AWS
    /// IoT's.
    fn settle(&mut self, now_ms: u64) -> Vec<Settled> {
        let mut conflicts = Vec::new();
        // No backoff (see `new`): a sync always runs.
        let _ = self.doc.sync(now_ms, 0, |c| {
            conflicts.push(Settled {
                path: c.path.to_string(),
                policy: c.policy,
                winner: c.winner,
                cloud: aws_json::value_to_json(c.cloud),
                device: aws_json::value_to_json(c.device),
            })
        });
        conflicts
    }

    /// Applies an AWS IoT `/update` request (JSON bytes): what AWS IoT
    /// publishes on `/update/accepted` and the conflicts the write settled,
    /// or what it publishes on `/update/rejected` (nothing changed).
    pub fn update_aws(
        &mut self,
        request: &[u8],
        now_ms: u64,
    ) -> Result<(Accepted, Vec<Settled>), Json> {
        let req =
            parse_update::<LEAVES, POOL>(request).map_err(|e| error_document(&e, now_ms, None))?;
        self.apply_aws(req, now_ms)
    }

    /// [`LocalShadow::update_aws`] of a request already read as JSON.
    pub fn update_aws_json(
        &mut self,
        request: &Json,
        now_ms: u64,
    ) -> Result<(Accepted, Vec<Settled>), Json> {
        let req = aws_json::parse_update_json::<LEAVES, POOL>(request)
            .map_err(|e| error_document(&e, now_ms, None))?;
        self.apply_aws(req, now_ms)
    }

    fn apply_aws(
        &mut self,
        request: UpdateRequest<LEAVES, POOL>,
        now_ms: u64,
    ) -> Result<(Accepted, Vec<Settled>), Json> {
        match request.apply_to(&mut self.doc, now_ms) {
            Ok(version) => {
                let conflicts = self.settle(now_ms);
                let accepted = Accepted {
                    request: Box::new(request),
                    version,
                    now_ms,
                };
                Ok((accepted, conflicts))
            }
            Err(e) => Err(error_document(&e, now_ms, request.client_token.as_deref())),
        }
    }

    /// What AWS IoT publishes on `/get/accepted`, or on `/get/rejected`
    /// (404: no shadow) before the first write.
    pub fn get_aws<'a>(
        &'a self,
        client_token: Option<&'a str>,
        now_ms: u64,
    ) -> Result<GetDocument<'a, LEAVES, POOL>, Json> {
        if self.doc.version() == 0 {
            let mut doc =
                json!({"code": 404, "message": "No shadow exists", "timestamp": now_ms / 1000});
            if let Some(t) = client_token {
                doc["clientToken"] = t.into();
            }
            return Err(doc);
        }
        get_document(&self.doc, now_ms, client_token)
            .map_err(|e| error_document(&e, now_ms, client_token))
    }

    /// Writes one side's state (a JSON object; nulls delete), only if
    /// `version`, when given, is the document's. Returns the new version
    /// and the conflicts the write settled.
    pub fn write(
        &mut self,
        side: Side,
        state: &serde_json::Map<String, Json>,
        version: Option<u64>,
        now_ms: u64,
    ) -> Result<(u64, Vec<Settled>), LocalShadowError> {
        // Nulls delete, on either side (as in an AWS update).
        let tree: Tree =
            aws_json::tree_from_json(state, true).map_err(|e| LocalShadowError::from(&e))?;
        let applied = match side {
            Side::Desired => self.doc.apply_desired(&tree, version, now_ms),
            Side::Reported => self.doc.apply_reported(&tree, version, now_ms),
        };
        match applied {
            Ok(_) => {
                let conflicts = self.settle(now_ms);
                Ok((self.doc.version(), conflicts))
            }
            Err(e) => Err(LocalShadowError::from(&AwsJsonError::Core(e))),
        }
    }

    /// Desired state, a JSON object.
    pub fn desired(&self) -> Json {
        tree_to_json(self.doc.desired())
    }

    /// Desired state, to serialize (as JSON text or otherwise).
    pub fn desired_view(&self) -> TreeView<'_, LEAVES, POOL> {
        TreeView::values(self.doc.desired())
    }

    /// Reported state, a JSON object.
    pub fn reported(&self) -> Json {
        tree_to_json(self.doc.reported())
    }

    /// Reported state, to serialize (as JSON text or otherwise).
    pub fn reported_view(&self) -> TreeView<'_, LEAVES, POOL> {
        TreeView::values(self.doc.reported())
    }

    /// The desired properties whose reported value differs or is missing,
    /// less the conflicts parked for an operator.
    pub fn delta(&self) -> Result<Json, LocalShadowError> {
        Ok(tree_to_json(&*self.delta_tree()?))
    }

    /// [`LocalShadow::delta`] as a tree, to serialize with
    /// [`TreeView::values`].
    pub fn delta_tree(&self) -> Result<Box<Tree>, LocalShadowError> {
        aws_json::delta_tree(&self.doc).map_err(|e| LocalShadowError::from(&e))
    }

    /// Conflicts parked for an operator: dotted path and when it was
    /// parked.
    pub fn parked(&self) -> Vec<(String, u64)> {
        self.doc
            .parked()
            .map(|(p, at)| (p.to_string(), at))
            .collect()
    }

    /// Settles the conflict parked at `dotted`: the cloud's value stands
    /// (the delta asks the device for it) or the device's becomes desired.
    /// Returns the version.
    pub fn resolve(
        &mut self,
        dotted: &str,
        winner: Source,
        now_ms: u64,
    ) -> Result<u64, LocalShadowError> {
        let p = path_of("path", dotted)?;
        self.doc
            .resolve(p.as_path(), winner, now_ms)
            .map_err(|e| match e {
                lanyard_core::Error::NotParked => LocalShadowError::NotParked(dotted.into()),
                e => LocalShadowError::BadPath(e.to_string()),
            })
    }

    /// Conflicts settled so far: a count per policy name, then
    /// `cloud_won` and `device_won`.
    pub fn conflict_counts(&self) -> Vec<(&'static str, u64)> {
        let s = self.doc.stats();
        let mut out: Vec<(&'static str, u64)> = ConflictPolicy::ALL
            .into_iter()
            .map(|p| (p.name(), s.count(p)))
            .collect();
        out.push(("cloud_won", s.cloud_won));
        out.push(("device_won", s.device_won));
        out
    }
}
