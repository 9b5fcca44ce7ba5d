//! Rollouts run by the twin host's side of the fleet rather than by the
//! operator's process: `lanyard twin --rollouts DIR` (or [`serve_rollouts`]
//! in a program) takes signed releases from operators over the broker,
//! keeps them and each rollout's [journal](super::journal) in `DIR`, serves
//! the blocks, drives the rollouts, and takes them up again from their
//! journals when it starts. The operator signs on its side; the service
//! never holds the key (a release it was given is checked against its
//! job's size and SHA-256; the signature is the devices' to check).
//!
//! Operators talk to it with [`AppClient`](crate::app::AppClient)'s
//! rollout calls (`lanyard ota start / pause / resume / cancel / status`),
//! on three topics under the fleet's address ([`RolloutTopic`]): requests
//! ([`RolloutRequest`], CBOR maps with text keys, as the other operator
//! messages), answers ([`RolloutAnswer`], matched by token), and each
//! rollout's progress after every change ([`ProgressReport`]). An image
//! larger than a message travels in pieces ([`RolloutAction::Upload`],
//! [`MAX_UPLOAD_CHUNK`] bytes at most, in order) before the rollout that
//! uses it is started.
//!
//! Who may change rollouts: with an operator list (`lanyard twin
//! --operators`), only the listed operators, each on the request topic
//! that names it ([`RolloutTopic::request_by`], which the broker's ACL
//! lets only that identity write); anyone may ask a rollout's status.
//! Any listed operator may pause, resume or cancel any rollout: stopping
//! a bad release must not wait for the one who started it. Every start,
//! pause, resume and cancel, and how each rollout ended, goes into the
//! service's own [audit log](crate::audit) (`DIR/audit.log`, checked by
//! `lanyard audit verify`), with who asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lanyard_core::update::messages::UpdateJob;

use super::journal::{RolloutJournal, plan_json, state_json};
use super::run::RolloutRun;
use super::{Release, Rollout, RolloutState};
use crate::audit::{AuditAction, AuditLog};
pub use crate::ota_messages::{
    MAX_DEVICES, MAX_UPLOAD_CHUNK, ProgressReport, RolloutAction, RolloutAnswer, RolloutRequest,
    RolloutTopic,
};
use crate::transport::{Qos, Transport, TransportEvent};

/// The largest image the service takes (the Linux device's slot).
pub const MAX_IMAGE: usize = 64 << 20;
/// Images being uploaded at once at most (an upload not started is
/// dropped when a new one would pass this).
pub const MAX_UPLOADS: usize = 4;

/// A job id the service keeps a directory for: what a release may be
/// named (1 to 32 bytes of letters, digits, `.`, `-` and `_`, not
/// starting with `.`).
fn job_dir_name(job: &str) -> bool {
    !job.is_empty()
        && job.len() <= lanyard_core::update::messages::MAX_JOB_ID
        && !job.starts_with('.')
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The rollout service's state: the rollouts it runs and the images being
/// uploaded. See the [module](self).
struct Service<C> {
    dir: PathBuf,
    connect: C,
    runs: HashMap<String, RolloutRun>,
    uploads: HashMap<String, Vec<u8>>,
    progress: tokio::sync::mpsc::UnboundedSender<ProgressReport>,
    /// Who may change rollouts (`None`: whoever the broker lets write
    /// the request topics).
    operators: Option<Vec<String>>,
    audit: AuditLog,
}

/// Beside a rollout's journal once its end is in the audit log: a
/// service that stopped before recording it records it when it starts.
const ENDED_RECORDED: &str = "ended.audited";

/// The actor of an audit entry whose request named no writer.
const UNNAMED: &str = "operator";

/// The actor of the entries the service makes itself.
const SERVICE: &str = "rollout-service";

impl<T, C> Service<C>
where
    T: Transport + Send + 'static,
    C: FnMut(&str) -> T,
{
    /// Starts the rollout of `release` (kept in `dir/{job}`) from where its
    /// journal says, or new.
    fn start(&mut self, release: Release, rollout: Option<Rollout>) -> Result<(), String> {
        let job = release.job_id.clone();
        let home = self.dir.join(&job);
        let mut journal = RolloutJournal::at(home.join("rollout.json"));
        let (rollout, finished) = match (journal.load().map_err(|e| e.to_string())?, rollout) {
            (Some(r), None) => (r.rollout, r.progress),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "rollout {job} exists (its journal is {}); a release is rolled out once: \
                     sign it under another job id",
                    journal.path().display()
                ));
            }
            (None, Some(r)) => {
                release
                    .save(&home)
                    .map_err(|e| format!("{}: {e}", home.display()))?;
                (r, Vec::new())
            }
            (None, None) => return Err(format!("rollout {job} has no journal")),
        };
        if !rollout.state().is_under_way() {
            return Ok(());
        }
        let transport = (self.connect)(&job);
        let run = RolloutRun::start(transport, release, rollout, finished, Some(journal));
        let mut watch = run.progress();
        let out = self.progress.clone();
        self.runs.insert(job.clone(), run);
        tokio::spawn(async move {
            loop {
                let p = watch.borrow_and_update().clone();
                let report = ProgressReport {
                    job: job.clone(),
                    state: p.state,
                    view: p.view,
                };
                if out.send(report).is_err() || watch.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Records an entry in the audit log, durably; a log that cannot be
    /// written is reported, the action stands.
    fn record(&mut self, actor: &str, action: AuditAction, detail: serde_json::Value) {
        let now = crate::clock::Clock::real().now_ms();
        self.audit.record(now, actor, action, None, detail);
        if let Err(e) = self.audit.commit() {
            tracing::error!(path = %self.audit.path().display(), "audit log not written: {e}");
        }
    }

    /// Records how rollout `job` ended, once.
    fn record_end(&mut self, report: &ProgressReport) {
        let marker = self.dir.join(&report.job).join(ENDED_RECORDED);
        if marker.exists() {
            return;
        }
        let v = &report.view;
        self.record(
            SERVICE,
            AuditAction::RolloutEnded,
            serde_json::json!({
                "job": report.job,
                "state": state_json(&report.state),
                "succeeded": v.succeeded,
                "failed": v.failed,
                "in_progress": v.in_progress,
                "waiting": v.waiting,
            }),
        );
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::warn!(path = %marker.display(), "{e}");
        }
    }

    /// Takes the runs that ended out of the service, recording how.
    fn sweep(&mut self) {
        let ended: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, run)| !run.is_under_way())
            .map(|(job, _)| job.clone())
            .collect();
        for job in ended {
            // Read from the run, before it leaves: its journal answers for
            // it from now on.
            if let Some(report) = self.progress_of(&job) {
                self.record_end(&report);
            }
            self.runs.remove(&job);
        }
    }

    /// Takes up every rollout whose journal in `dir` says it has not
    /// ended; records the end of those that ended while it was not
    /// there to see it.
    fn resume_all(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let home = entry.path();
            if !home.join("rollout.json").exists() {
                continue;
            }
            let job = entry.file_name().to_string_lossy().into_owned();
            if let Some(report) = self.progress_of(&job)
                && !report.state.is_under_way()
            {
                self.record_end(&report);
                continue;
            }
            let resumed = Release::load(&home)
                .map_err(|e| e.to_string())
                .and_then(|release| self.start(release, None));
            if let Err(e) = resumed {
                tracing::error!(dir = %home.display(), "rollout not taken up: {e}");
            }
        }
    }

    /// The last progress the service published of `job`, from its
    /// journal when it does not run.
    fn progress_of(&self, job: &str) -> Option<ProgressReport> {
        if let Some(run) = self.runs.get(job) {
            let p = run.progress().borrow().clone();
            return Some(ProgressReport {
                job: job.to_owned(),
                state: p.state,
                view: p.view,
            });
        }
        if !job_dir_name(job) {
            return None;
        }
        let r = RolloutJournal::at(self.dir.join(job).join("rollout.json"))
            .load()
            .ok()??;
        let finished: HashMap<String, _> = r.progress.into_iter().collect();
        let view = r
            .rollout
            .view(crate::clock::Clock::real().now_ms(), |d| finished.get(d));
        Some(ProgressReport {
            job: job.to_owned(),
            state: r.rollout.state().clone(),
            view,
        })
    }

    /// Does what `action` asks, for `writer` (the identity its topic
    /// names); the job it concerns, whose progress is answered.
    fn handle(
        &mut self,
        action: RolloutAction,
        writer: Option<&str>,
    ) -> Result<Option<String>, String> {
        // Anyone may look; only operators, when there is a list, change.
        if !matches!(action, RolloutAction::Status(_))
            && let Some(operators) = &self.operators
            && let Some(why) = crate::acl::operator_refusal(
                operators,
                writer,
                "rollouts",
                &RolloutTopic::request_by("{identity}"),
            )
        {
            return Err(why);
        }
        let actor = writer.unwrap_or(UNNAMED);
        match action {
            RolloutAction::Upload { job, offset, bytes } => {
                if !job_dir_name(&job) {
                    return Err(format!("{job:?} is not a job id"));
                }
                if offset == 0 {
                    if self.uploads.len() >= MAX_UPLOADS && !self.uploads.contains_key(&job) {
                        let oldest = self.uploads.keys().next().cloned();
                        if let Some(o) = oldest {
                            self.uploads.remove(&o);
                        }
                    }
                    self.uploads.insert(job.clone(), Vec::new());
                }
                let image = self
                    .uploads
                    .get_mut(&job)
                    .ok_or_else(|| format!("no upload of {job} under way: start at offset 0"))?;
                if offset as usize != image.len() {
                    return Err(format!(
                        "a piece at {offset}, where {} bytes of {job} are in",
                        image.len()
                    ));
                }
                if image.len() + bytes.len() > MAX_IMAGE {
                    self.uploads.remove(&job);
                    return Err(format!("an image over {MAX_IMAGE} bytes"));
                }
                image.extend_from_slice(&bytes);
                Ok(None)
            }
            RolloutAction::Start { job, devices, plan } => {
                let id = UpdateJob::decode(&job)
                    .map_err(|e| format!("the job: {e}"))?
                    .job_id
                    .to_owned();
                if !job_dir_name(&id) {
                    return Err(format!("{id:?} is not a job id the service keeps"));
                }
                if devices.is_empty() {
                    return Err("no device to roll out to".into());
                }
                if let Some(d) = devices
                    .iter()
                    .find(|d| !lanyard_core::topic::valid_device_id(d))
                {
                    return Err(format!("{d:?} is not a device id"));
                }
                let image = self
                    .uploads
                    .remove(&id)
                    .ok_or_else(|| format!("the image of {id} was not uploaded"))?;
                let release = Release::from_parts(&job, image).map_err(|e| e.to_string())?;
                let detail = serde_json::json!({
                    "job": id,
                    "version": release.version,
                    "sha256": crate::hex::to_hex(&release.sha256),
                    "bytes": release.image.len(),
                    "devices": devices.len(),
                    "plan": plan_json(&plan),
                });
                let rollout = Rollout::new(&id, devices, plan);
                self.start(release, Some(rollout))?;
                self.record(actor, AuditAction::RolloutStarted, detail);
                Ok(Some(id))
            }
            RolloutAction::Pause(job) => {
                self.control(&job, RolloutRun::pause, actor, AuditAction::RolloutPaused)
            }
            RolloutAction::Resume(job) => {
                self.control(&job, RolloutRun::resume, actor, AuditAction::RolloutResumed)
            }
            RolloutAction::Cancel(job) => self.control(
                &job,
                RolloutRun::cancel,
                actor,
                AuditAction::RolloutCancelled,
            ),
            RolloutAction::Status(job) => Ok(Some(job)),
        }
    }

    /// `act` on rollout `job`, under way, for `actor`, recorded as
    /// `audited`.
    fn control(
        &mut self,
        job: &str,
        act: fn(&RolloutRun),
        actor: &str,
        audited: AuditAction,
    ) -> Result<Option<String>, String> {
        match self.runs.get(job) {
            Some(run) if run.is_under_way() => {
                act(run);
                self.record(actor, audited, serde_json::json!({ "job": job }));
                Ok(Some(job.to_owned()))
            }
            _ if self.progress_of(job).is_some() => Err(format!("rollout {job} has ended")),
            _ => Err(format!("no rollout {job}")),
        }
    }
}

/// Why the rollout service stopped.
#[derive(Debug)]
pub enum ServeError {
    /// Its directory cannot be made.
    Dir(PathBuf, std::io::Error),
    /// Its connection to the broker failed.
    Transport(crate::transport::TransportError),
    /// Its audit log (`DIR/audit.log`) cannot be opened, or is broken.
    Audit(PathBuf, crate::audit::AuditError),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Dir(dir, e) => write!(f, "rollouts directory {}: {e}", dir.display()),
            ServeError::Transport(e) => write!(f, "rollout service: {e}"),
            ServeError::Audit(path, e) => write!(f, "rollouts audit log {}: {e}", path.display()),
        }
    }
}

impl std::error::Error for ServeError {}

impl From<crate::transport::TransportError> for ServeError {
    fn from(e: crate::transport::TransportError) -> Self {
        ServeError::Transport(e)
    }
}

/// Serves rollouts on `transport` until `stop`: takes up the rollouts
/// whose journals in `dir` have not ended, answers operators' requests,
/// and publishes each rollout's progress. `operators`, when given, are
/// the only identities whose requests change rollouts (see the
/// [module](self)). `connect(job)` opens the broker connection a
/// rollout's firmware server runs on (one per rollout).
pub async fn serve_rollouts<T, U, C>(
    mut transport: T,
    dir: &Path,
    operators: Option<Vec<String>>,
    connect: C,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError>
where
    T: Transport,
    U: Transport + Send + 'static,
    C: FnMut(&str) -> U,
{
    std::fs::create_dir_all(dir).map_err(|e| ServeError::Dir(dir.to_owned(), e))?;
    let audit_path = dir.join("audit.log");
    let audit = AuditLog::open(&audit_path).map_err(|e| ServeError::Audit(audit_path, e))?;
    let request = RolloutTopic::Request.topic();
    transport.subscribe(&request).await?;
    transport
        .subscribe(&format!("{request}/{}/+", lanyard_core::topic::BY_LEVEL))
        .await?;
    let (progress, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let mut service = Service {
        dir: dir.to_owned(),
        connect,
        runs: HashMap::new(),
        uploads: HashMap::new(),
        progress,
        operators,
        audit,
    };
    service.resume_all();
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            Some(report) = reports.recv() => {
                transport
                    .publish(&RolloutTopic::Progress.topic(), &report.encode(), Qos::AtLeastOnce)
                    .await?;
            }
            _ = sweep.tick() => service.sweep(),
            ev = transport.recv() => {
                let TransportEvent::Message { topic, payload } = ev? else { continue };
                let Some(writer) = RolloutTopic::writer_of(&topic) else {
                    continue;
                };
                // A request that does not read has no token to answer.
                let Some(request) = RolloutRequest::decode(&payload) else {
                    tracing::warn!(bytes = payload.len(), "rollout request that does not read");
                    continue;
                };
                // A control's answer shows the rollout after it took it.
                let settled: Option<fn(&RolloutState) -> bool> = match &request.action {
                    RolloutAction::Pause(_) => Some(|s| !matches!(s, RolloutState::Running(_))),
                    RolloutAction::Resume(_) => Some(|s| !matches!(s, RolloutState::Paused(_))),
                    RolloutAction::Cancel(_) => Some(|s| !s.is_under_way()),
                    _ => None,
                };
                let (refused, job) = match service.handle(request.action, writer) {
                    Ok(job) => (None, job),
                    Err(why) => (Some(why), None),
                };
                if let (Some(want), Some(run)) =
                    (settled, job.as_ref().and_then(|j| service.runs.get(j)))
                {
                    let mut progress = run.progress();
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        progress.wait_for(|p| want(&p.state)),
                    )
                    .await;
                }
                let answer = RolloutAnswer {
                    token: request.token,
                    refused,
                    progress: job.and_then(|j| service.progress_of(&j)),
                };
                transport
                    .publish(&RolloutTopic::Answer.topic(), &answer.encode(), Qos::AtLeastOnce)
                    .await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::RolloutPlan;

    #[tokio::test]
    async fn the_service_refuses_what_it_cannot_roll_out_and_says_why() {
        use crate::app::{AppClient, AppError};
        use crate::transport::MemoryBroker;
        use std::time::Duration;
        let broker = MemoryBroker::new();
        let dir = tempfile::tempdir().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (service, b) = (broker.connect(), broker.clone());
        let home = dir.path().to_owned();
        let serving = tokio::spawn(async move {
            serve_rollouts(service, &home, None, move |_| b.connect(), async {
                let _ = stopped.await;
            })
            .await
        });
        let app = AppClient::new(broker.connect()).await.unwrap();
        let t = Duration::from_secs(5);
        // The service subscribes as it starts; the memory broker keeps
        // nothing for later.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([8; 32]));
        let release = Release::sign("fw-5", "5.0.0", vec![3; 3000], 1024, &key.sk).unwrap();
        let rejected = |r: Result<ProgressReport, AppError>| match r {
            Err(AppError::Rejected(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        let mut raw = broker.connect();
        raw.subscribe(&RolloutTopic::Answer.topic()).await.unwrap();
        let mut ask = async |action| {
            let request = RolloutRequest {
                token: "t-1".into(),
                action,
            };
            raw.publish(
                &RolloutTopic::Request.topic(),
                &request.encode(),
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
            loop {
                let ev = tokio::time::timeout(t, raw.recv()).await.unwrap().unwrap();
                if let TransportEvent::Message { payload, .. } = ev
                    && let Some(a) = RolloutAnswer::decode(&payload)
                    && a.token == "t-1"
                {
                    return a.refused.unwrap_or_default();
                }
            }
        };
        // Pieces out of order; a start with no image; an image that is not
        // the job's; a device id that is not one.
        let piece = |offset| RolloutAction::Upload {
            job: "fw-5".into(),
            offset,
            bytes: vec![3; 10],
        };
        assert!(ask(piece(5)).await.contains("no upload of fw-5"));
        assert_eq!(ask(piece(0)).await, "");
        assert!(
            ask(piece(20))
                .await
                .contains("a piece at 20, where 10 bytes")
        );
        let start = |devices: Vec<&str>| RolloutAction::Start {
            job: release.job_bytes(),
            devices: devices.into_iter().map(str::to_owned).collect(),
            plan: RolloutPlan::staged(),
        };
        assert!(
            ask(start(vec!["ly-020000000001"]))
                .await
                .contains("not the one the job describes")
        );
        assert!(
            ask(start(vec!["ly-020000000001"]))
                .await
                .contains("was not uploaded")
        );
        assert!(ask(start(vec!["../etc"])).await.contains("not a device id"));
        let devices = vec!["ly-020000000001".to_owned()];
        let plan = RolloutPlan::staged();
        assert!(rejected(app.rollout_status("fw-5", t).await).contains("no rollout fw-5"));
        // Started once, and only once; nothing is left in the directory
        // by the refusals.
        let started = app
            .start_rollout(&release, devices.clone(), &plan, t)
            .await
            .unwrap();
        assert_eq!(started.state, RolloutState::Running(0));
        assert!(dir.path().join("fw-5").join("job.cbor").exists());
        let again = rejected(app.start_rollout(&release, devices, &plan, t).await);
        assert!(again.contains("rollout fw-5 exists"), "{again}");
        let cancelled = app.cancel_rollout("fw-5", t).await.unwrap();
        assert_eq!(cancelled.state, RolloutState::Cancelled);
        let ended = rejected(app.pause_rollout("fw-5", t).await);
        assert!(ended.contains("has ended"), "{ended}");
        assert_eq!(
            app.rollout_status("fw-5", t).await.unwrap().state,
            RolloutState::Cancelled
        );
        let mut entries: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        entries.sort();
        assert_eq!(entries, ["audit.log", "fw-5"]);
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn only_operators_change_rollouts_and_the_audit_log_says_who() {
        use crate::app::{AppClient, AppError};
        use crate::transport::MemoryBroker;
        use std::time::Duration;
        let broker = MemoryBroker::new();
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        let serve = |broker: &MemoryBroker| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (service, b) = (broker.connect(), broker.clone());
            let home = dir.path().to_owned();
            let operators = Some(vec!["ops-a".to_owned(), "ops-b".to_owned()]);
            let serving = tokio::spawn(async move {
                serve_rollouts(service, &home, operators, move |_| b.connect(), async {
                    let _ = stopped.await;
                })
                .await
            });
            (stop, serving)
        };
        let (stop, serving) = serve(&broker);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([9; 32]));
        let release = Release::sign("fw-6", "6.0.0", vec![4; 2000], 1024, &key.sk).unwrap();
        let devices = vec!["ly-020000000002".to_owned()];
        let plan = RolloutPlan::staged();
        let refused = |r: Result<ProgressReport, AppError>| match r {
            Err(AppError::Rejected(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        let unnamed = AppClient::new(broker.connect()).await.unwrap();
        let why = refused(
            unnamed
                .start_rollout(&release, devices.clone(), &plan, t)
                .await,
        );
        assert!(why.contains("only from its operators"), "{why}");
        let stranger = AppClient::new(broker.connect())
            .await
            .unwrap()
            .as_operator("mallory")
            .unwrap();
        let why = refused(
            stranger
                .start_rollout(&release, devices.clone(), &plan, t)
                .await,
        );
        assert!(why.contains("mallory is not an operator"), "{why}");
        let a = AppClient::new(broker.connect())
            .await
            .unwrap()
            .as_operator("ops-a")
            .unwrap();
        let b = AppClient::new(broker.connect())
            .await
            .unwrap()
            .as_operator("ops-b")
            .unwrap();
        a.start_rollout(&release, devices, &plan, t).await.unwrap();
        // Another operator may stop it; a stranger may not; anyone may look.
        let why = refused(stranger.cancel_rollout("fw-6", t).await);
        assert!(why.contains("mallory is not an operator"), "{why}");
        assert_eq!(
            b.pause_rollout("fw-6", t).await.unwrap().state,
            RolloutState::Paused(0)
        );
        assert_eq!(
            unnamed.rollout_status("fw-6", t).await.unwrap().state,
            RolloutState::Paused(0)
        );
        a.cancel_rollout("fw-6", t).await.unwrap();
        let _ = stop.send(());
        serving.await.unwrap().unwrap();

        // The end is recorded once, whether the service saw it before it
        // stopped or finds it in the journal when it starts again.
        for _ in 0..2 {
            let (stop, serving) = serve(&broker);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = stop.send(());
            serving.await.unwrap().unwrap();
        }
        let log = dir.path().join("audit.log");
        assert_eq!(crate::audit::verify(&log).unwrap().entries, 4);
        let entries: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let said: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
            .collect();
        assert_eq!(
            said,
            [
                ("ops-a", "rollout_started"),
                ("ops-b", "rollout_paused"),
                ("ops-a", "rollout_cancelled"),
                ("rollout-service", "rollout_ended"),
            ]
        );
        let started = &entries[0]["detail"];
        assert_eq!(started["job"], "fw-6");
        assert_eq!(started["version"], "6.0.0");
        assert_eq!(started["sha256"], crate::hex::to_hex(&release.sha256));
        assert_eq!(started["devices"], 1);
        assert_eq!(entries[3]["detail"]["state"], "cancelled");
    }

    #[test]
    fn job_ids_that_would_leave_the_directory_are_refused() {
        for ok in ["fw-2", "fw-2.0.0", "release_7"] {
            assert!(job_dir_name(ok), "{ok}");
        }
        for bad in ["", "..", ".hidden", "a/b", "fw 2", &"x".repeat(33)] {
            assert!(!job_dir_name(bad), "{bad}");
        }
    }
}
