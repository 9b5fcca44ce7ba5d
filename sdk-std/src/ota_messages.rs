//! Rollout plans and the rollout service's messages, without the runtime:
//! what an operator's tool sends the rollout service beside the twin host
//! (`ota::service`) and what it answers, as CBOR maps with text
//! keys like the other operator messages. Here rather than in
//! `ota` so that a build without the runtime (the fuzz targets)
//! reads them with the same code.

use lanyard_core::topic::{FLEET_KEY, TOPIC_PREFIX};
use lanyard_core::update::messages::UpdateReason;
use minicbor::{Decoder, Encoder};

use crate::text_map::{each_text_key, read_text_map};

/// When a rollout stops by itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortCriteria {
    /// Devices that must have finished (accepted, or failed) before the
    /// failure rate counts.
    pub min_finished: usize,
    /// The share of finished devices that may fail (0.0 to 1.0); past it,
    /// the rollout aborts.
    pub max_failure_rate: f64,
    /// Failures that abort at once, whatever the rate (a bad signature
    /// means the release itself is wrong).
    pub abort_on: Vec<UpdateReason>,
}

/// How a release reaches a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// The share of the target devices offered by the end of each stage,
    /// growing, the last 1.0.
    pub stages: Vec<f64>,
    /// The share of a stage's devices that must have accepted the release
    /// before the next stage opens.
    pub advance_when: f64,
    /// When it stops by itself.
    pub abort: AbortCriteria,
    /// How long a device may take from its offer to accepting; past it,
    /// it counts as failed.
    pub device_timeout_ms: u64,
}

impl RolloutPlan {
    /// Whether it is a plan a rollout can run: stages growing from above 0
    /// to the whole target (1.0), and a stage that can open the next
    /// (`advance_when` above 0). What is read from outside (a request, a
    /// journal) is checked against this.
    pub fn is_well_formed(&self) -> bool {
        let s = &self.stages;
        !s.is_empty()
            && s.windows(2).all(|w| w[1] > w[0])
            && s.first().is_some_and(|x| *x > 0.0)
            && s.last() == Some(&1.0)
            && self.advance_when > 0.0
    }

    /// 1 %, 10 %, 50 %, 100 %; a stage opens when 90 % of the last one
    /// accepted; it aborts when more than 10 % of at least one finished
    /// device failed, or at once on a bad signature or digest; an hour per
    /// device.
    pub fn staged() -> Self {
        RolloutPlan {
            stages: vec![0.01, 0.10, 0.50, 1.0],
            advance_when: 0.9,
            abort: AbortCriteria {
                min_finished: 1,
                max_failure_rate: 0.10,
                abort_on: vec![UpdateReason::BadSignature, UpdateReason::DigestMismatch],
            },
            device_timeout_ms: 3_600_000,
        }
    }

    /// Stages growing by `factor` from `first` (a share) up to the whole
    /// target: an exponential rate.
    pub fn exponential(first: f64, factor: f64) -> Self {
        let mut stages = Vec::new();
        let mut share = first.clamp(f64::MIN_POSITIVE, 1.0);
        while share < 1.0 && stages.len() < 64 {
            stages.push(share);
            share *= factor.max(1.01);
        }
        stages.push(1.0);
        RolloutPlan {
            stages,
            ..Self::staged()
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Offering stage `n` (from 0).
    Running(usize),
    /// Stopped by an operator; resumed where it was.
    Paused(usize),
    /// Every target device accepted, or finished.
    Completed,
    /// Stopped by its abort criteria: why.
    Aborted(String),
    /// Stopped by an operator for good.
    Cancelled,
}

impl RolloutState {
    /// Whether it has not ended: running, or paused (and so may go on).
    pub fn is_under_way(&self) -> bool {
        matches!(self, RolloutState::Running(_) | RolloutState::Paused(_))
    }
}

/// Devices of a rollout by where they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutView {
    /// Not offered yet.
    pub waiting: usize,
    /// Offered, not finished.
    pub in_progress: usize,
    /// Accepted the release.
    pub succeeded: usize,
    /// Refused, rolled back, aborted or timed out.
    pub failed: usize,
}

/// Bytes of an image one upload message carries at most (a message stays
/// well under [`MAX_PAYLOAD`](crate::MAX_PAYLOAD)).
pub const MAX_UPLOAD_CHUNK: usize = 128 * 1024;
/// Devices one rollout targets at most.
pub const MAX_DEVICES: usize = 100_000;
/// The rollout service's topics, under the fleet's address
/// (`lanyard/v1/lanyard-fleet/ota/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutTopic {
    /// Operator → service: a [`RolloutRequest`].
    Request,
    /// Service → operator: a [`RolloutAnswer`].
    Answer,
    /// Service → anyone: a [`ProgressReport`] after every change.
    Progress,
}

impl RolloutTopic {
    /// Its topic.
    pub fn topic(self) -> String {
        let suffix = match self {
            RolloutTopic::Request => "request",
            RolloutTopic::Answer => "answer",
            RolloutTopic::Progress => "progress",
        };
        format!("{TOPIC_PREFIX}{FLEET_KEY}/ota/{suffix}")
    }

    /// The request topic naming its writer (`.../ota/request/by/{identity}`),
    /// which a broker's ACL lets only that identity write
    /// ([`crate::acl::mosquitto_fleet_acl`]).
    pub fn request_by(identity: &str) -> String {
        format!(
            "{}/{}/{identity}",
            RolloutTopic::Request.topic(),
            lanyard_core::topic::BY_LEVEL
        )
    }

    /// Whether `topic` is a request topic, and if so the writer it names
    /// (`Some(None)`: the plain request topic, which names none). A writer
    /// is one topic level of 1 to 128 bytes
    /// ([`lanyard_core::topic::valid_writer`]).
    ///
    /// ```
    /// use lanyard_std::ota_messages::RolloutTopic;
    /// let named = RolloutTopic::request_by("lanyard-ops");
    /// assert_eq!(RolloutTopic::writer_of(&named), Some(Some("lanyard-ops")));
    /// assert_eq!(RolloutTopic::writer_of(&RolloutTopic::Request.topic()), Some(None));
    /// assert_eq!(RolloutTopic::writer_of(&RolloutTopic::Answer.topic()), None);
    /// ```
    pub fn writer_of(topic: &str) -> Option<Option<&str>> {
        let (base, writer) = lanyard_core::topic::split_writer(topic);
        (base == RolloutTopic::Request.topic()).then_some(writer)
    }
}

/// What an operator asks of the rollout service.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutAction {
    /// A piece of job `job`'s image, at `offset` (pieces come in order,
    /// the first at 0).
    Upload {
        /// The job the image is for.
        job: String,
        /// Where the piece goes.
        offset: u32,
        /// The piece.
        bytes: Vec<u8>,
    },
    /// Starts rolling out the release of the signed job `job` (encoded, as
    /// `Release::job_bytes` writes it), whose image was uploaded, to
    /// `devices` by `plan`.
    Start {
        /// The signed job.
        job: Vec<u8>,
        /// The devices, in the order they are offered it.
        devices: Vec<String>,
        /// The stages and abort criteria.
        plan: RolloutPlan,
    },
    /// Stops offering the release (devices under way go on).
    Pause(String),
    /// Goes on offering it.
    Resume(String),
    /// Stops for good; devices under way are told.
    Cancel(String),
    /// Where the rollout stands (answered with its progress).
    Status(String),
}

/// An operator's request, answered on [`RolloutTopic::Answer`] under the
/// same token.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRequest {
    /// Names the answer.
    pub token: String,
    /// What is asked.
    pub action: RolloutAction,
}

/// The service's answer to a [`RolloutRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutAnswer {
    /// The request's token.
    pub token: String,
    /// Why the request was refused; `None` when it was done.
    pub refused: Option<String>,
    /// The rollout's progress (for every request about a rollout that
    /// exists).
    pub progress: Option<ProgressReport>,
}

/// A rollout's progress: where it stands and its devices by state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressReport {
    /// The rollout's job.
    pub job: String,
    /// Where it stands.
    pub state: RolloutState,
    /// Its devices by where they stand.
    pub view: RolloutView,
}

fn encode_plan(e: &mut Encoder<Vec<u8>>, plan: &RolloutPlan) {
    // Writing to a Vec cannot fail.
    let _ = e.map(6).and_then(|e| {
        e.str("stages")?.array(plan.stages.len() as u64)?;
        for s in &plan.stages {
            e.f64(*s)?;
        }
        e.str("advance_when")?.f64(plan.advance_when)?;
        e.str("min_finished")?.u64(plan.abort.min_finished as u64)?;
        e.str("max_failure_rate")?
            .f64(plan.abort.max_failure_rate)?;
        e.str("abort_on")?.array(plan.abort.abort_on.len() as u64)?;
        for r in &plan.abort.abort_on {
            e.str(r.name())?;
        }
        e.str("device_timeout_ms")?.u64(plan.device_timeout_ms)
    });
}

fn share(d: &mut Decoder<'_>) -> Option<f64> {
    d.f64().ok().filter(|s| (0.0..=1.0).contains(s))
}

fn decode_plan(d: &mut Decoder<'_>) -> Option<RolloutPlan> {
    let (mut stages, mut advance_when, mut min_finished) = (None, None, None);
    let (mut max_failure_rate, mut abort_on, mut timeout) = (None, None, None);
    each_text_key(d, |key, d| {
        match key {
            "stages" => {
                let n = d.array().ok()??;
                let mut v = Vec::new();
                for _ in 0..n.min(64) {
                    v.push(share(d)?);
                }
                (n <= 64).then_some(())?;
                stages = Some(v);
            }
            "advance_when" => advance_when = Some(share(d)?),
            "min_finished" => min_finished = Some(usize::try_from(d.u64().ok()?).ok()?),
            "max_failure_rate" => max_failure_rate = Some(share(d)?),
            "abort_on" => {
                let n = d.array().ok()??;
                let mut v = Vec::new();
                for _ in 0..n.min(16) {
                    v.push(UpdateReason::named(d.str().ok()?)?);
                }
                (n <= 16).then_some(())?;
                abort_on = Some(v);
            }
            "device_timeout_ms" => timeout = Some(d.u64().ok()?),
            _ => return Some(false),
        }
        Some(true)
    })?;
    let plan = RolloutPlan {
        stages: stages?,
        advance_when: advance_when?,
        abort: AbortCriteria {
            min_finished: min_finished?,
            max_failure_rate: max_failure_rate?,
            abort_on: abort_on?,
        },
        device_timeout_ms: timeout?,
    };
    plan.is_well_formed().then_some(plan)
}

impl RolloutRequest {
    /// `{"token": tstr, "action": "upload" / "start" / "pause" / "resume" /
    /// "cancel" / "status", ...}`: an upload adds `"job"`, `"offset"` and
    /// `"bytes"`; a start `"job"` (the signed job, a byte string),
    /// `"devices"` and `"plan"`; the others `"job"` (its id).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let job_id = |e: &mut Encoder<Vec<u8>>, name: &str, job: &str| {
            let _ = e
                .map(3)
                .and_then(|e| e.str("token")?.str(&self.token))
                .and_then(|e| e.str("action")?.str(name))
                .and_then(|e| e.str("job")?.str(job));
        };
        match &self.action {
            RolloutAction::Upload { job, offset, bytes } => {
                let _ = e
                    .map(5)
                    .and_then(|e| e.str("token")?.str(&self.token))
                    .and_then(|e| e.str("action")?.str("upload"))
                    .and_then(|e| e.str("job")?.str(job))
                    .and_then(|e| e.str("offset")?.u32(*offset))
                    .and_then(|e| e.str("bytes")?.bytes(bytes));
            }
            RolloutAction::Start { job, devices, plan } => {
                let _ = e
                    .map(5)
                    .and_then(|e| e.str("token")?.str(&self.token))
                    .and_then(|e| e.str("action")?.str("start"))
                    .and_then(|e| e.str("job")?.bytes(job))
                    .and_then(|e| {
                        e.str("devices")?.array(devices.len() as u64)?;
                        for d in devices {
                            e.str(d)?;
                        }
                        e.str("plan")
                    });
                encode_plan(&mut e, plan);
            }
            RolloutAction::Pause(job) => job_id(&mut e, "pause", job),
            RolloutAction::Resume(job) => job_id(&mut e, "resume", job),
            RolloutAction::Cancel(job) => job_id(&mut e, "cancel", job),
            RolloutAction::Status(job) => job_id(&mut e, "status", job),
        }
        e.into_writer()
    }

    /// Reads what [`RolloutRequest::encode`] wrote; `None` for anything
    /// else (a field missing or of the wrong type, a plan whose stages do
    /// not grow to 1, more than [`MAX_DEVICES`] devices or a piece over
    /// [`MAX_UPLOAD_CHUNK`], bytes after it).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut action, mut job_id, mut job_bytes) = (None, None, None, None);
        let (mut offset, mut piece, mut devices, mut plan) = (None, None, None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "action" => action = Some(d.str().ok()?),
                "job" => match d.datatype().ok()? {
                    minicbor::data::Type::Bytes => job_bytes = Some(d.bytes().ok()?.to_vec()),
                    _ => job_id = Some(d.str().ok()?.to_owned()),
                },
                "offset" => offset = Some(d.u32().ok()?),
                "bytes" => {
                    let b = d.bytes().ok()?;
                    (b.len() <= MAX_UPLOAD_CHUNK).then_some(())?;
                    piece = Some(b.to_vec());
                }
                "devices" => {
                    let n = d.array().ok()??;
                    (n as usize <= MAX_DEVICES).then_some(())?;
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(d.str().ok()?.to_owned());
                    }
                    devices = Some(v);
                }
                "plan" => plan = Some(decode_plan(d)?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        let action = match action? {
            "upload" => RolloutAction::Upload {
                job: job_id?,
                offset: offset?,
                bytes: piece?,
            },
            "start" => RolloutAction::Start {
                job: job_bytes?,
                devices: devices?,
                plan: plan?,
            },
            "pause" => RolloutAction::Pause(job_id?),
            "resume" => RolloutAction::Resume(job_id?),
            "cancel" => RolloutAction::Cancel(job_id?),
            "status" => RolloutAction::Status(job_id?),
            _ => return None,
        };
        Some(RolloutRequest {
            token: token?,
            action,
        })
    }
}

fn encode_progress(e: &mut Encoder<Vec<u8>>, p: &ProgressReport) {
    let (state, stage, why) = match &p.state {
        RolloutState::Running(s) => ("running", Some(*s), None),
        RolloutState::Paused(s) => ("paused", Some(*s), None),
        RolloutState::Completed => ("completed", None, None),
        RolloutState::Aborted(why) => ("aborted", None, Some(why.as_str())),
        RolloutState::Cancelled => ("cancelled", None, None),
    };
    let v = &p.view;
    let fields = 6 + u64::from(stage.is_some()) + u64::from(why.is_some());
    // Writing to a Vec cannot fail.
    let _ = e.map(fields).and_then(|e| {
        e.str("job")?.str(&p.job)?.str("state")?.str(state)?;
        if let Some(s) = stage {
            e.str("stage")?.u64(s as u64)?;
        }
        if let Some(w) = why {
            e.str("why")?.str(w)?;
        }
        e.str("waiting")?.u64(v.waiting as u64)?;
        e.str("in_progress")?.u64(v.in_progress as u64)?;
        e.str("succeeded")?.u64(v.succeeded as u64)?;
        e.str("failed")?.u64(v.failed as u64)
    });
}

fn decode_progress(d: &mut Decoder<'_>) -> Option<ProgressReport> {
    let (mut job, mut state, mut stage, mut why) = (None, None, None, None);
    let mut view = RolloutView::default();
    each_text_key(d, |key, d| {
        let count = |d: &mut Decoder<'_>| usize::try_from(d.u64().ok()?).ok();
        match key {
            "job" => job = Some(d.str().ok()?.to_owned()),
            "state" => state = Some(d.str().ok()?.to_owned()),
            "stage" => stage = Some(count(d)?),
            "why" => why = Some(d.str().ok()?.to_owned()),
            "waiting" => view.waiting = count(d)?,
            "in_progress" => view.in_progress = count(d)?,
            "succeeded" => view.succeeded = count(d)?,
            "failed" => view.failed = count(d)?,
            _ => return Some(false),
        }
        Some(true)
    })?;
    let state = match state?.as_str() {
        "running" => RolloutState::Running(stage?),
        "paused" => RolloutState::Paused(stage?),
        "completed" => RolloutState::Completed,
        "aborted" => RolloutState::Aborted(why?),
        "cancelled" => RolloutState::Cancelled,
        _ => return None,
    };
    Some(ProgressReport {
        job: job?,
        state,
        view,
    })
}

impl ProgressReport {
    /// `{"job": tstr, "state": "running" / "paused" / "completed" /
    /// "aborted" / "cancelled", ? "stage": uint, ? "why": tstr, "waiting":
    /// uint, "in_progress": uint, "succeeded": uint, "failed": uint}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        encode_progress(&mut e, self);
        e.into_writer()
    }

    /// Reads what [`ProgressReport::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut d = Decoder::new(bytes);
        let p = decode_progress(&mut d)?;
        (d.position() == bytes.len()).then_some(p)
    }
}

impl RolloutAnswer {
    /// `{"token": tstr, ? "refused": tstr, ? "progress": progress}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let fields = 1 + u64::from(self.refused.is_some()) + u64::from(self.progress.is_some());
        // Writing to a Vec cannot fail.
        let _ = e.map(fields).and_then(|e| {
            e.str("token")?.str(&self.token)?;
            if let Some(why) = &self.refused {
                e.str("refused")?.str(why)?;
            }
            Ok(e)
        });
        if let Some(p) = &self.progress {
            let _ = e.str("progress");
            encode_progress(&mut e, p);
        }
        e.into_writer()
    }

    /// Reads what [`RolloutAnswer::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut refused, mut progress) = (None, None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "refused" => refused = Some(d.str().ok()?.to_owned()),
                "progress" => progress = Some(decode_progress(d)?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(RolloutAnswer {
            token: token?,
            refused,
            progress,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_answers_and_progress_read_back_and_bad_ones_are_refused() {
        let mut plan = RolloutPlan::exponential(0.05, 3.0);
        plan.abort.abort_on.push(UpdateReason::SelfTestFailed);
        let requests = [
            RolloutAction::Upload {
                job: "fw-2".into(),
                offset: 131_072,
                bytes: vec![1, 2, 3],
            },
            RolloutAction::Start {
                job: vec![0xa1, 0x00, 0x01],
                devices: vec!["ly-020000000001".into(), "ly-020000000002".into()],
                plan,
            },
            RolloutAction::Pause("fw-2".into()),
            RolloutAction::Resume("fw-2".into()),
            RolloutAction::Cancel("fw-2".into()),
            RolloutAction::Status("fw-2".into()),
        ];
        for action in requests {
            let r = RolloutRequest {
                token: "op-1".into(),
                action,
            };
            assert_eq!(RolloutRequest::decode(&r.encode()), Some(r.clone()));
            let mut trailing = r.encode();
            trailing.push(0);
            assert_eq!(RolloutRequest::decode(&trailing), None);
        }
        for state in [
            RolloutState::Running(2),
            RolloutState::Paused(0),
            RolloutState::Completed,
            RolloutState::Aborted("1 of 1 finished devices failed".into()),
            RolloutState::Cancelled,
        ] {
            let p = ProgressReport {
                job: "fw-2".into(),
                state,
                view: RolloutView {
                    waiting: 7,
                    in_progress: 2,
                    succeeded: 1,
                    failed: 0,
                },
            };
            assert_eq!(ProgressReport::decode(&p.encode()), Some(p.clone()));
            let a = RolloutAnswer {
                token: "op-2".into(),
                refused: Some("no rollout fw-9".into()),
                progress: Some(p),
            };
            assert_eq!(RolloutAnswer::decode(&a.encode()), Some(a));
        }
        // A plan whose stages do not grow to 1, or a piece too large.
        let mut bad_plan = RolloutPlan::staged();
        bad_plan.stages = vec![0.5, 0.2, 1.0];
        let r = RolloutRequest {
            token: "t".into(),
            action: RolloutAction::Start {
                job: vec![1],
                devices: vec![],
                plan: bad_plan,
            },
        };
        assert_eq!(RolloutRequest::decode(&r.encode()), None);
        let r = RolloutRequest {
            token: "t".into(),
            action: RolloutAction::Upload {
                job: "fw".into(),
                offset: 0,
                bytes: vec![0; MAX_UPLOAD_CHUNK + 1],
            },
        };
        assert_eq!(RolloutRequest::decode(&r.encode()), None);
        assert_eq!(RolloutRequest::decode(b"\xa0"), None);
    }
}
