//! The AWS IoT Device Shadow JSON codec: request documents, `/accepted`,
//! `/delta`, `/documents` and error payloads, converted to and from the
//! core's [`StateTree`] and [`Shadow`].
//!
//! Differences that cannot be avoided, all documented in
//! `docs/wire-format.md`: AWS timestamps are seconds (the core keeps ms);
//! byte strings, which JSON lacks, are written as base64 text and come back
//! as text; integers outside `i64` are refused.
//!
//! ```
//! use lanyard_std::aws_json;
//! use lanyard_core::shadow::{Shadow, ConflictPolicy};
//! let req = br#"{"state":{"desired":{"color":{"r":255,"g":255,"b":0}}},"clientToken":"t1"}"#;
//! let mut shadow: Shadow<32, 2048> = Shadow::new(ConflictPolicy::CloudWins);
//! let update = aws_json::parse_update::<32, 2048>(req)?;
//! update.apply_to(&mut shadow, 1_700_000_000_000)?;
//! let delta = aws_json::delta_document(&shadow, 1_700_000_000_000, None)?;
//! // Documents serialize straight to JSON (or any serde format).
//! let delta = serde_json::to_value(&delta).unwrap();
//! assert_eq!(delta["state"]["color"]["g"], 255);
//! # Ok::<(), aws_json::AwsJsonError>(())
//! ```

use std::fmt;

use base64::Engine as _;
use lanyard_core::shadow::{PathBuf, RawArray, Shadow, StateTree, Value};
use serde_json::{Map, Value as Json, json};

mod documents;

pub use documents::{
    AcceptedDocument, DeltaDocument, DocumentsDocument, GetDocument, LeafValue, Leaves, TreeView,
};

/// Why a JSON document could not be used; each maps to the HTTP-style code
/// the AWS service answers with ([`AwsJsonError::code`]).
#[derive(Debug)]
pub enum AwsJsonError {
    /// Not JSON, or not UTF-8.
    InvalidJson(String),
    /// JSON, but not the shape of a shadow document.
    BadRequest(&'static str),
    /// A number outside `i64` / `f64`.
    NumberOutOfRange(String),
    /// Refused by the core (version conflict, capacity, path rules).
    Core(lanyard_core::Error),
}

impl AwsJsonError {
    /// The AWS error code: 400, 409 (version conflict) or 413 (too large).
    pub fn code(&self) -> u16 {
        match self {
            AwsJsonError::Core(lanyard_core::Error::VersionConflict { .. }) => 409,
            AwsJsonError::Core(lanyard_core::Error::Capacity(_)) => 413,
            _ => 400,
        }
    }

    /// The message AWS uses for this kind of error.
    pub fn message(&self) -> String {
        match self {
            AwsJsonError::InvalidJson(_) => "Invalid JSON".into(),
            AwsJsonError::BadRequest(m) => (*m).into(),
            AwsJsonError::NumberOutOfRange(n) => format!("Number out of range: {n}"),
            AwsJsonError::Core(lanyard_core::Error::VersionConflict { .. }) => {
                "Version conflict".into()
            }
            AwsJsonError::Core(lanyard_core::Error::Capacity(_)) => {
                "The payload exceeds the maximum size allowed".into()
            }
            AwsJsonError::Core(lanyard_core::Error::Path(lanyard_core::PathError::TooDeep)) => {
                format!(
                    "JSON contains too many levels of nesting; maximum is {}",
                    lanyard_core::shadow::MAX_DEPTH
                )
            }
            AwsJsonError::Core(e) => format!("State contains an invalid node: {e}"),
        }
    }
}

impl fmt::Display for AwsJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsJsonError::InvalidJson(detail) => write!(f, "invalid JSON: {detail}"),
            other => write!(f, "{} ({})", other.message(), other.code()),
        }
    }
}

impl std::error::Error for AwsJsonError {}

impl From<lanyard_core::Error> for AwsJsonError {
    fn from(e: lanyard_core::Error) -> Self {
        AwsJsonError::Core(e)
    }
}

impl From<lanyard_core::PathError> for AwsJsonError {
    fn from(e: lanyard_core::PathError) -> Self {
        AwsJsonError::Core(e.into())
    }
}

/// One side of an update request.
#[derive(Debug, Clone, PartialEq)]
pub enum Part<const L: usize, const P: usize> {
    /// Not in the request.
    Absent,
    /// `"desired": null`: delete the whole side.
    Clear,
    /// Leaves to set or (with `null`) delete. Boxed: a request moves
    /// through a few hands, and a tree is kilobytes.
    Update(Box<StateTree<L, P>>),
}

/// A parsed `/update` request document.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest<const L: usize, const P: usize> {
    /// `state.desired`.
    pub desired: Part<L, P>,
    /// `state.reported`.
    pub reported: Part<L, P>,
    /// `version`: refuse unless current.
    pub version: Option<u64>,
    /// `clientToken`, echoed in responses.
    pub client_token: Option<String>,
}

impl<const L: usize, const P: usize> UpdateRequest<L, P> {
    /// Applies the request atomically at `now_ms` (the service's clock, as
    /// AWS stamps updates on receipt). Returns the new version.
    pub fn apply_to<const SL: usize, const SP: usize>(
        &self,
        shadow: &mut Shadow<SL, SP>,
        now_ms: u64,
    ) -> Result<u64, AwsJsonError> {
        // Only a cleared side needs a tree of its own; the trees (kilobytes
        // each) are never copied.
        let cleared_desired = cleared(&self.desired, shadow.desired())?;
        let cleared_reported = cleared(&self.reported, shadow.reported())?;
        let desired = side(&self.desired, cleared_desired.as_deref());
        let reported = side(&self.reported, cleared_reported.as_deref());
        Ok(shadow.apply(desired, reported, self.version, now_ms)?)
    }
}

/// The tree a side writes: its update, or the nulls that clear it.
fn side<'a, const L: usize, const P: usize>(
    part: &'a Part<L, P>,
    cleared: Option<&'a StateTree<L, P>>,
) -> Option<&'a StateTree<L, P>> {
    match part {
        Part::Absent => None,
        Part::Update(t) => Some(t),
        Part::Clear => cleared,
    }
}

/// For `Clear`, nulls for the side's current top-level keys.
fn cleared<const L: usize, const P: usize, const SL: usize, const SP: usize>(
    part: &Part<L, P>,
    current: &StateTree<SL, SP>,
) -> Result<Option<Box<StateTree<L, P>>>, AwsJsonError> {
    if !matches!(part, Part::Clear) {
        return Ok(None);
    }
    let mut t: Box<StateTree<L, P>> = Box::new(StateTree::new());
    let mut last: Option<String> = None;
    for e in current.iter() {
        let top = e.path.key(0).unwrap_or_default();
        if last.as_deref() != Some(top) {
            t.insert(&PathBuf::from_keys(&[top])?, Value::Null)?;
            last = Some(top.to_owned());
        }
    }
    Ok(Some(t))
}

/// Parses an `/update` request document.
pub fn parse_update<const L: usize, const P: usize>(
    bytes: &[u8],
) -> Result<UpdateRequest<L, P>, AwsJsonError> {
    let doc: Json =
        serde_json::from_slice(bytes).map_err(|e| AwsJsonError::InvalidJson(e.to_string()))?;
    parse_update_json(&doc)
}

/// Parses an `/update` request document already read as JSON (from text,
/// or from a binding's own objects).
pub fn parse_update_json<const L: usize, const P: usize>(
    doc: &Json,
) -> Result<UpdateRequest<L, P>, AwsJsonError> {
    let Json::Object(top) = doc else {
        return Err(AwsJsonError::BadRequest("Payload contains an invalid json"));
    };
    let state = match top.get("state") {
        Some(Json::Object(s)) => s,
        Some(_) => return Err(AwsJsonError::BadRequest("State node must be an object")),
        None => return Err(AwsJsonError::BadRequest("Missing required node: state")),
    };
    let part = |name: &str, msg: &'static str| -> Result<Part<L, P>, AwsJsonError> {
        match state.get(name) {
            None => Ok(Part::Absent),
            Some(Json::Null) => Ok(Part::Clear),
            Some(Json::Object(m)) => {
                let mut t = Box::new(StateTree::new());
                fill(&mut t, &mut PathBuf::new(), m, true)?;
                Ok(Part::Update(t))
            }
            Some(_) => Err(AwsJsonError::BadRequest(msg)),
        }
    };
    let desired = part("desired", "Desired node must be an object")?;
    let reported = part("reported", "Reported node must be an object")?;
    let version = match top.get("version") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or(AwsJsonError::BadRequest("Invalid version"))?,
        ),
    };
    let client_token = match top.get("clientToken") {
        None => None,
        Some(Json::String(s)) if !s.is_empty() && s.len() <= 64 => Some(s.clone()),
        Some(_) => return Err(AwsJsonError::BadRequest("Invalid clientToken")),
    };
    Ok(UpdateRequest {
        desired,
        reported,
        version,
        client_token,
    })
}

/// Builds a tree from a JSON object. `allow_null` for updates.
pub fn tree_from_json<const L: usize, const P: usize>(
    obj: &Map<String, Json>,
    allow_null: bool,
) -> Result<StateTree<L, P>, AwsJsonError> {
    let mut t = StateTree::new();
    let mut path = PathBuf::new();
    fill(&mut t, &mut path, obj, allow_null)?;
    Ok(t)
}

fn fill<const L: usize, const P: usize>(
    t: &mut StateTree<L, P>,
    path: &mut PathBuf,
    obj: &Map<String, Json>,
    allow_null: bool,
) -> Result<(), AwsJsonError> {
    for (k, v) in obj {
        path.push(k)?;
        match v {
            Json::Object(m) => fill(t, path, m, allow_null)?,
            Json::Null if !allow_null => {
                return Err(AwsJsonError::BadRequest("State contains an invalid node"));
            }
            Json::Array(_) => {
                let mut e = minicbor::Encoder::new(Vec::new());
                json_to_cbor(&mut e, v, 0)?;
                let bytes = e.into_writer();
                t.insert(path, Value::Array(RawArray::from_cbor(&bytes)))?;
            }
            scalar => t.insert(path, scalar_value(scalar)?)?,
        }
        path.pop();
    }
    Ok(())
}

fn scalar_value(v: &Json) -> Result<Value<'_>, AwsJsonError> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::String(s) => Value::Text(s),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if n.is_u64() {
                return Err(AwsJsonError::NumberOutOfRange(n.to_string()));
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::Array(_) | Json::Object(_) => {
            return Err(AwsJsonError::BadRequest("State contains an invalid node"));
        }
    })
}

fn json_to_cbor(
    e: &mut minicbor::Encoder<Vec<u8>>,
    v: &Json,
    depth: usize,
) -> Result<(), AwsJsonError> {
    if depth > lanyard_core::wire::MAX_NESTING {
        return Err(lanyard_core::Error::Path(lanyard_core::PathError::TooDeep).into());
    }
    // Writing to a Vec cannot fail.
    match v {
        Json::Null => drop(e.null()),
        Json::Bool(b) => drop(e.bool(*b)),
        Json::String(s) => drop(e.str(s)),
        Json::Number(_) => match scalar_value(v)? {
            Value::Int(i) => drop(e.i64(i)),
            Value::Float(x) => drop(e.f64(x)),
            _ => {}
        },
        Json::Array(items) => {
            let _ = e.array(items.len() as u64);
            for i in items {
                json_to_cbor(e, i, depth + 1)?;
            }
        }
        Json::Object(m) => {
            let _ = e.map(m.len() as u64);
            for (k, i) in m {
                let _ = e.str(k);
                json_to_cbor(e, i, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The JSON form of one leaf value. Floats that JSON cannot hold (NaN,
/// infinities) become `null`, as serde_json does.
pub fn value_to_json(v: Value<'_>) -> Json {
    // Serializing into a `Json` fails only for non-text map keys, which
    // a leaf value does not have.
    serde_json::to_value(LeafValue(v)).unwrap_or(Json::Null)
}

/// The values of a tree as a JSON object. Documents to send are better
/// serialized straight from a [`TreeView`].
pub fn tree_to_json<const L: usize, const P: usize>(t: &StateTree<L, P>) -> Json {
    serde_json::to_value(TreeView::values(t)).unwrap_or(Json::Null)
}

/// A shadow's delta ([`Shadow::delta_into`]), boxed: a tree is
/// kilobytes, and documents carry it.
pub fn delta_tree<const L: usize, const P: usize>(
    s: &Shadow<L, P>,
) -> Result<Box<StateTree<L, P>>, AwsJsonError> {
    let mut delta: Box<StateTree<L, P>> = Box::new(StateTree::new());
    s.delta_into(&mut delta)?;
    Ok(delta)
}

/// The `/get/accepted` document: state with `delta`, metadata, version.
pub fn get_document<'a, const L: usize, const P: usize>(
    s: &'a Shadow<L, P>,
    now_ms: u64,
    client_token: Option<&'a str>,
) -> Result<GetDocument<'a, L, P>, AwsJsonError> {
    let delta = delta_tree(s)?;
    Ok(GetDocument {
        shadow: s,
        delta,
        now_ms,
        client_token,
    })
}

/// The `/update/accepted` document: the request's state and the metadata
/// of what it wrote.
pub fn accepted_document<const L: usize, const P: usize>(
    request: &UpdateRequest<L, P>,
    version: u64,
    now_ms: u64,
) -> AcceptedDocument<'_, L, P> {
    AcceptedDocument {
        request,
        version,
        now_ms,
    }
}

/// The `/update/delta` document. AWS publishes no delta when it would be
/// empty; check [`Shadow::in_sync`] first to do the same.
pub fn delta_document<'a, const L: usize, const P: usize>(
    s: &Shadow<L, P>,
    now_ms: u64,
    client_token: Option<&'a str>,
) -> Result<DeltaDocument<'a, L, P>, AwsJsonError> {
    let delta = delta_tree(s)?;
    Ok(DeltaDocument {
        version: s.version(),
        delta,
        now_ms,
        client_token,
    })
}

/// The `/update/documents` document: the shadow before and after an
/// update.
pub fn documents_document<'a, const L: usize, const P: usize>(
    previous: &'a Shadow<L, P>,
    current: &'a Shadow<L, P>,
    now_ms: u64,
    client_token: Option<&'a str>,
) -> DocumentsDocument<'a, L, P> {
    DocumentsDocument {
        previous,
        current,
        now_ms,
        client_token,
    }
}

/// An `/rejected` error document.
pub fn error_document(err: &AwsJsonError, now_ms: u64, client_token: Option<&str>) -> Json {
    let mut doc =
        json!({ "code": err.code(), "message": err.message(), "timestamp": now_ms / 1000 });
    if let Some(t) = client_token {
        doc["clientToken"] = Json::String(t.to_owned());
    }
    doc
}
