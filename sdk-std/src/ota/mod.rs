//! Firmware updates on the cloud's side: a [`Release`] is an image and the
//! job announcing it, signed on the operator's side with the fleet's
//! Ed25519 key; the [`FirmwareServer`] offers releases to devices, answers
//! their block requests and keeps each device's progress from its reports.
//! The server never holds the signing key: a release reaches it signed.
//!
//! A [`Rollout`] decides, from the devices' progress, which devices are
//! offered a release next: stage by stage (1 %, 10 %, 50 %, 100 % by
//! default, or growing by a factor), each stage opening when enough of the
//! last succeeded, and stopping by itself when its abort criteria are met,
//! leaving the rest of the fleet on the old version. Its
//! [journal](journal) lets a rollout process that stopped go on where it
//! was; a [`RolloutRun`] runs one in the background of an application.

pub mod journal;
pub mod run;
pub mod service;

pub use crate::ota_messages::{AbortCriteria, RolloutPlan, RolloutState, RolloutView};
pub use run::{RolloutProgress, RolloutRun};

use std::collections::HashMap;

use lanyard_core::update::messages::{
    Block, BlockRequest, MANIFEST_MAX, UpdateJob, UpdateReason, UpdateReport, UpdateState,
    UpdateTopic,
};

use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// An image and its signed job.
#[derive(Clone)]
pub struct Release {
    /// The job's id.
    pub job_id: String,
    /// The image's version.
    pub version: String,
    /// The image.
    pub image: Vec<u8>,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// The fleet's signature of its manifest.
    pub signature: [u8; 64],
    /// The block size.
    pub block_size: u16,
    /// Whether devices on a newer version may take it.
    pub allow_downgrade: bool,
    /// Whether devices in degraded mode take it.
    pub force: bool,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("job_id", &self.job_id)
            .field("version", &self.version)
            .field("size", &self.image.len())
            .finish_non_exhaustive()
    }
}

/// Why a release cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRelease(pub String);

impl std::fmt::Display for BadRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "release: {}", self.0)
    }
}

impl std::error::Error for BadRelease {}

impl Release {
    /// Signs `image` as `version` for job `job_id`, in blocks of
    /// `block_size`, with the fleet's key (on the operator's side).
    pub fn sign(
        job_id: &str,
        version: &str,
        image: Vec<u8>,
        block_size: u16,
        key: &ed25519_compact::SecretKey,
    ) -> Result<Self, BadRelease> {
        use lanyard_core::update::messages::{MAX_BLOCK_SIZE, MAX_JOB_ID, MAX_VERSION};
        if job_id.is_empty() || job_id.len() > MAX_JOB_ID {
            return Err(BadRelease(format!("job id: 1 to {MAX_JOB_ID} bytes")));
        }
        if version.is_empty() || version.len() > MAX_VERSION {
            return Err(BadRelease(format!("version: 1 to {MAX_VERSION} bytes")));
        }
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(BadRelease(format!("block size: 1 to {MAX_BLOCK_SIZE}")));
        }
        let size = u32::try_from(image.len())
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| BadRelease("an image of 1 byte to 4 GiB".into()))?;
        let blocks = lanyard_core::update::messages::blocks(size, block_size);
        if blocks > lanyard_core::update::MAX_BLOCKS {
            return Err(BadRelease(format!(
                "{blocks} blocks: at most {}; use larger blocks",
                lanyard_core::update::MAX_BLOCKS
            )));
        }
        let mut release = Release {
            job_id: job_id.to_owned(),
            version: version.to_owned(),
            sha256: lanyard_core::update::sha256(&image),
            image,
            signature: [0; 64],
            block_size,
            allow_downgrade: false,
            force: false,
        };
        let mut manifest = [0u8; MANIFEST_MAX];
        let n = release
            .job()
            .manifest(&mut manifest)
            .map_err(|e| BadRelease(e.to_string()))?;
        release.signature = *key.sign(&manifest[..n], None);
        Ok(release)
    }

    /// Writes it to `dir`: `job.cbor` (the signed job) and `image.bin`.
    pub fn save(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        crate::store::write_atomic(&dir.join("image.bin"), &self.image)?;
        crate::store::write_atomic(&dir.join("job.cbor"), &self.job_bytes())
    }

    /// Reads what [`Release::save`] wrote; the image must have the job's
    /// size and SHA-256 (the signature is the devices' to check).
    pub fn load(dir: &std::path::Path) -> Result<Self, BadRelease> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| BadRelease(format!("{}: {e}", dir.join(name).display())))
        };
        let (job_bytes, image) = (read("job.cbor")?, read("image.bin")?);
        Release::from_parts(&job_bytes, image)
            .map_err(|e| BadRelease(format!("{}: {e}", dir.display())))
    }

    /// The release of the signed job `job_bytes` (as [`Release::job_bytes`]
    /// writes it) and its `image`, which must have the job's size and
    /// SHA-256 (the signature is the devices' to check).
    pub fn from_parts(job_bytes: &[u8], image: Vec<u8>) -> Result<Self, BadRelease> {
        let job = UpdateJob::decode(job_bytes).map_err(|e| BadRelease(format!("the job: {e}")))?;
        if job.size as usize != image.len() || lanyard_core::update::sha256(&image) != job.sha256 {
            return Err(BadRelease(
                "the image is not the one the job describes (size or SHA-256)".into(),
            ));
        }
        Ok(Release {
            job_id: job.job_id.to_owned(),
            version: job.version.to_owned(),
            sha256: job.sha256,
            signature: job.signature,
            block_size: job.block_size,
            allow_downgrade: job.allow_downgrade,
            force: job.force,
            image,
        })
    }

    /// Its signed job, encoded.
    pub fn job_bytes(&self) -> Vec<u8> {
        let mut job = vec![0u8; 256];
        // A release's job always fits: its id and version are bounded.
        let n = self.job().encode(&mut job).unwrap_or(0);
        job.truncate(n);
        job
    }

    /// Its job.
    pub fn job(&self) -> UpdateJob<'_> {
        UpdateJob {
            job_id: &self.job_id,
            version: &self.version,
            size: self.image.len() as u32,
            sha256: self.sha256,
            signature: self.signature,
            block_size: self.block_size,
            allow_downgrade: self.allow_downgrade,
            force: self.force,
        }
    }

    /// Block `index`, if the image has it.
    pub fn block(&self, index: u32) -> Option<&[u8]> {
        let bs = usize::from(self.block_size);
        let start = (index as usize).checked_mul(bs)?;
        (start < self.image.len()).then(|| &self.image[start..(start + bs).min(self.image.len())])
    }
}

/// A device's progress, from its last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProgress {
    /// The job.
    pub job_id: String,
    /// Its state on the device.
    pub state: UpdateState,
    /// Blocks the device has.
    pub received: u32,
    /// Blocks in all.
    pub total: u32,
    /// Why, when rejected or aborted.
    pub reason: Option<UpdateReason>,
}

/// Blocks one request may ask for at most (a device asks a few at a
/// time; more is a misbehaving peer).
pub const MAX_BLOCKS_PER_REQUEST: u16 = 16;

/// Serves releases to devices. See the [module](self).
#[derive(Debug, Default)]
pub struct FirmwareServer {
    releases: HashMap<String, Release>,
    devices: HashMap<String, DeviceProgress>,
    served: HashMap<(String, u32), u32>,
}

/// A message to publish: its topic and bytes.
pub type Publish = (String, Vec<u8>);

impl FirmwareServer {
    /// A server with no release.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a release.
    pub fn add(&mut self, release: Release) {
        self.releases.insert(release.job_id.clone(), release);
    }

    /// The topics it listens to.
    pub fn filters() -> Vec<String> {
        [UpdateTopic::Request, UpdateTopic::Report]
            .iter()
            .map(|t| format!("{}+/{}", lanyard_core::topic::TOPIC_PREFIX, t.suffix()))
            .collect()
    }

    /// The job of release `job_id` for `device`, to publish; `None` for an
    /// unknown release or device id.
    pub fn offer(&self, device: &str, job_id: &str) -> Option<Publish> {
        let release = self.releases.get(job_id)?;
        if !lanyard_core::topic::valid_device_id(device) {
            return None;
        }
        let mut buf = vec![0u8; 256];
        let n = release.job().encode(&mut buf).ok()?;
        buf.truncate(n);
        Some((UpdateTopic::Job.topic(device).to_string(), buf))
    }

    /// The cancellation of `job_id` for `device`.
    pub fn cancel(&self, device: &str, job_id: &str) -> Publish {
        let mut payload = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = minicbor::encode(job_id, &mut payload);
        (UpdateTopic::Cancel.topic(device).to_string(), payload)
    }

    /// A device's message: block requests are answered with the blocks
    /// (unknown jobs and blocks past the image are not); reports update
    /// the device's progress.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> Vec<Publish> {
        let Some((device, t)) = UpdateTopic::parse(topic) else {
            return Vec::new();
        };
        match t {
            UpdateTopic::Request => {
                let Ok(req) = BlockRequest::decode(payload) else {
                    return Vec::new();
                };
                let Some(release) = self.releases.get(req.job_id) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                for index in req.first
                    ..req
                        .first
                        .saturating_add(u32::from(req.count.min(MAX_BLOCKS_PER_REQUEST)))
                {
                    let Some(data) = release.block(index) else {
                        break;
                    };
                    let block = Block {
                        job_id: req.job_id,
                        index,
                        data,
                    };
                    let mut buf = vec![0u8; data.len() + 64];
                    if let Ok(n) = block.encode(&mut buf) {
                        buf.truncate(n);
                        out.push((UpdateTopic::Block.topic(device).to_string(), buf));
                        *self.served.entry((device.to_owned(), index)).or_default() += 1;
                    }
                }
                out
            }
            UpdateTopic::Report => {
                if let Ok(r) = UpdateReport::decode(payload) {
                    self.devices.insert(
                        device.to_owned(),
                        DeviceProgress {
                            job_id: r.job_id.to_owned(),
                            state: r.state,
                            received: r.received,
                            total: r.total,
                            reason: r.reason,
                        },
                    );
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Takes back what a device had reported before this server started
    /// (from a rollout's [journal](journal)); a newer report replaces it.
    pub fn restore_progress(&mut self, device: &str, progress: DeviceProgress) {
        self.devices.insert(device.to_owned(), progress);
    }

    /// A device's progress, from its last report.
    pub fn progress(&self, device: &str) -> Option<&DeviceProgress> {
        self.devices.get(device)
    }

    /// How many times each block was sent to `device` (index → times).
    pub fn served(&self, device: &str) -> HashMap<u32, u32> {
        self.served
            .iter()
            .filter(|((d, _), _)| d == device)
            .map(|((_, i), n)| (*i, *n))
            .collect()
    }
}

/// Runs `server` on `transport` until `stop`: answers block requests and
/// keeps reports. The server is shared (offers and progress come from
/// outside while it runs).
pub async fn run_firmware_server<T: Transport>(
    server: std::sync::Arc<std::sync::Mutex<FirmwareServer>>,
    transport: &mut T,
    mut offers: tokio::sync::mpsc::UnboundedReceiver<Publish>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TransportError> {
    for f in FirmwareServer::filters() {
        transport.subscribe(&f).await?;
    }
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            Some((topic, payload)) = offers.recv() => {
                transport.publish(&topic, &payload, Qos::AtLeastOnce).await?;
            }
            ev = transport.recv() => {
                if let TransportEvent::Message { topic, payload } = ev? {
                    let out = server.lock().expect("firmware server").handle(&topic, &payload);
                    for (topic, payload) in out {
                        transport.publish(&topic, &payload, Qos::AtLeastOnce).await?;
                    }
                }
            }
        }
    }
}

/// A release rolled out to a list of devices. See the [module](self).
#[derive(Debug, Clone)]
pub struct Rollout {
    job_id: String,
    plan: RolloutPlan,
    devices: Vec<String>,
    offered: HashMap<String, u64>,
    state: RolloutState,
}

fn finished_ok(p: Option<&DeviceProgress>, job: &str) -> Option<bool> {
    let p = p.filter(|p| p.job_id == job)?;
    match p.state {
        UpdateState::Accepted => Some(true),
        UpdateState::Rejected | UpdateState::Aborted => Some(false),
        _ => None,
    }
}

impl Rollout {
    /// A rollout of `job_id` to `devices`, in that order, by `plan`.
    pub fn new(job_id: &str, devices: Vec<String>, plan: RolloutPlan) -> Self {
        Rollout {
            job_id: job_id.to_owned(),
            plan,
            devices,
            offered: HashMap::new(),
            state: RolloutState::Running(0),
        }
    }

    /// The release's job id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Its devices, in the order they are offered the release.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Its plan.
    pub fn plan(&self) -> &RolloutPlan {
        &self.plan
    }

    /// Where it stands.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// The devices by where they stand, `progress` giving each one's.
    pub fn view<'a>(
        &self,
        now_ms: u64,
        progress: impl Fn(&str) -> Option<&'a DeviceProgress>,
    ) -> RolloutView {
        let mut v = RolloutView::default();
        for d in &self.devices {
            match self.offered.get(d) {
                None => v.waiting += 1,
                Some(at) => match finished_ok(progress(d), &self.job_id) {
                    Some(true) => v.succeeded += 1,
                    Some(false) => v.failed += 1,
                    None if now_ms.saturating_sub(*at) > self.plan.device_timeout_ms => {
                        v.failed += 1
                    }
                    None => v.in_progress += 1,
                },
            }
        }
        v
    }

    /// Moves the rollout on at `now_ms`: aborts it if its criteria say so,
    /// opens the next stage when the last one did well enough, and returns
    /// the devices to offer the release now.
    pub fn step<'a>(
        &mut self,
        now_ms: u64,
        progress: impl Fn(&str) -> Option<&'a DeviceProgress>,
    ) -> Vec<String> {
        let RolloutState::Running(mut stage) = self.state else {
            return Vec::new();
        };
        let v = self.view(now_ms, &progress);
        let finished = v.succeeded + v.failed;
        let abort_now = self.offered.keys().find_map(|d| {
            let p = progress(d).filter(|p| p.job_id == self.job_id)?;
            p.reason.filter(|r| self.plan.abort.abort_on.contains(r))
        });
        if let Some(r) = abort_now {
            self.state =
                RolloutState::Aborted(format!("a device refused the release: {}", r.name()));
            return Vec::new();
        }
        if finished >= self.plan.abort.min_finished.max(1)
            && v.failed as f64 / finished as f64 > self.plan.abort.max_failure_rate
        {
            self.state = RolloutState::Aborted(format!(
                "{} of {} finished devices failed (more than {:.0} %)",
                v.failed,
                finished,
                self.plan.abort.max_failure_rate * 100.0
            ));
            return Vec::new();
        }
        let n = self.devices.len();
        let target = |stage: usize| -> usize {
            let share = self.plan.stages.get(stage).copied().unwrap_or(1.0);
            ((share * n as f64).ceil() as usize).clamp(1, n)
        };
        // The stage's devices are all offered and enough accepted: the
        // next one opens.
        while self.offered.len() >= target(stage)
            && v.succeeded as f64 >= self.plan.advance_when * target(stage) as f64
            && stage + 1 < self.plan.stages.len()
        {
            stage += 1;
        }
        if v.waiting == 0 && v.in_progress == 0 {
            self.state = RolloutState::Completed;
            return Vec::new();
        }
        self.state = RolloutState::Running(stage);
        let want = target(stage).saturating_sub(self.offered.len());
        let next: Vec<String> = self
            .devices
            .iter()
            .filter(|d| !self.offered.contains_key(*d))
            .take(want)
            .cloned()
            .collect();
        for d in &next {
            self.offered.insert(d.clone(), now_ms);
        }
        next
    }

    /// Stops offering (devices under way go on).
    pub fn pause(&mut self) {
        if let RolloutState::Running(s) = self.state {
            self.state = RolloutState::Paused(s);
        }
    }

    /// Goes on where it was paused.
    pub fn resume(&mut self) {
        if let RolloutState::Paused(s) = self.state {
            self.state = RolloutState::Running(s);
        }
    }

    /// Stops for good; the devices offered and not finished are to be
    /// sent a cancellation ([`FirmwareServer::cancel`]): returned.
    pub fn cancel<'a>(
        &mut self,
        progress: impl Fn(&str) -> Option<&'a DeviceProgress>,
    ) -> Vec<String> {
        self.state = RolloutState::Cancelled;
        self.offered
            .keys()
            .filter(|d| finished_ok(progress(d), &self.job_id).is_none())
            .cloned()
            .collect()
    }
}

/// What an operator tells a rollout under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutControl {
    /// Stop offering the release (devices under way go on).
    Pause,
    /// Go on offering it.
    Resume,
    /// Stop for good: devices offered and not finished are told to drop
    /// the job (those past verification finish their trial).
    Cancel,
}

/// How long a device offered a job may stay silent about it before it is
/// offered it again (offline, or not subscribed yet: the offer was lost).
/// A device takes the same job again as it stands.
pub const REOFFER_AFTER_MS: u64 = 2_000;

/// Runs `rollout` against `server` (served by [`run_firmware_server`],
/// whose offers channel is `offers`) until it completes, aborts by its
/// criteria, or is cancelled through `control`; `progress` sees it after
/// every step (every 200 ms). With a `journal`, every change is written
/// there before the offers it decided go out (see [`journal`]). Returns
/// how it ended; `Err` when the firmware server stopped first, or the
/// journal could not be written.
///
/// A rollout taken back from a journal offers again, after
/// [`REOFFER_AFTER_MS`], the devices it had offered that have reported
/// nothing of the job (the offer may have been lost with the process).
pub async fn drive_rollout(
    server: &std::sync::Arc<std::sync::Mutex<FirmwareServer>>,
    offers: &tokio::sync::mpsc::UnboundedSender<Publish>,
    mut rollout: Rollout,
    control: &mut tokio::sync::mpsc::UnboundedReceiver<RolloutControl>,
    mut journal: Option<&mut journal::RolloutJournal>,
    mut progress: impl FnMut(&Rollout, &RolloutView),
) -> Result<RolloutState, String> {
    let job_id = rollout.job_id().to_owned();
    // Wall-clock time: offers and timeouts keep their meaning across a
    // restart of the process, through the journal.
    let clock = crate::clock::Clock::real();
    let mut offered_at: HashMap<String, u64> = rollout.offered.clone();
    let mut control_open = true;
    loop {
        let now = clock.now_ms();
        let msgs = {
            let s = server.lock().expect("firmware server");
            let mut offered = rollout.step(now, |d| s.progress(d));
            if matches!(rollout.state(), RolloutState::Running(_)) {
                let silent: Vec<String> = offered_at
                    .iter()
                    .filter(|(d, at)| {
                        now.saturating_sub(**at) >= REOFFER_AFTER_MS
                            && s.progress(d).is_none_or(|p| p.job_id != job_id)
                    })
                    .map(|(d, _)| d.clone())
                    .collect();
                offered.extend(silent);
            }
            for d in &offered {
                offered_at.insert(d.clone(), now);
            }
            if let Some(j) = journal.as_deref_mut() {
                j.save(&rollout, |d| s.progress(d))
                    .map_err(|e| format!("rollout journal {}: {e}", j.path().display()))?;
            }
            let view = rollout.view(now, |d| s.progress(d));
            progress(&rollout, &view);
            offered
                .iter()
                .filter_map(|d| s.offer(d, &job_id))
                .collect::<Vec<_>>()
        };
        for m in msgs {
            if offers.send(m).is_err() {
                return Err("the firmware server stopped".into());
            }
        }
        match rollout.state() {
            RolloutState::Completed | RolloutState::Aborted(_) | RolloutState::Cancelled => {
                return Ok(rollout.state().clone());
            }
            _ => {}
        }
        if offers.is_closed() {
            return Err("the firmware server stopped".into());
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            c = control.recv(), if control_open => match c {
                Some(RolloutControl::Pause) => rollout.pause(),
                Some(RolloutControl::Resume) => rollout.resume(),
                Some(RolloutControl::Cancel) => {
                    let cancels: Vec<Publish> = {
                        let s = server.lock().expect("firmware server");
                        let told: Vec<Publish> = rollout
                            .cancel(|d| s.progress(d))
                            .into_iter()
                            .map(|d| s.cancel(&d, &job_id))
                            .collect();
                        if let Some(j) = journal.as_deref_mut() {
                            j.save(&rollout, |d| s.progress(d)).map_err(|e| {
                                format!("rollout journal {}: {e}", j.path().display())
                            })?;
                        }
                        told
                    };
                    for m in cancels {
                        let _ = offers.send(m);
                    }
                }
                // Nobody can send any more: run to the end.
                None => control_open = false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ly-0200000000{i:02x}")).collect()
    }

    /// Runs `rollout` with devices that end in `outcome` one step after
    /// their offer; returns how many were offered at each step.
    fn drive(rollout: &mut Rollout, outcome: impl Fn(&str) -> DeviceProgress) -> Vec<usize> {
        let mut progress: HashMap<String, DeviceProgress> = HashMap::new();
        let mut waves = Vec::new();
        for step in 0..50u64 {
            let offered = rollout.step(step, |d| progress.get(d));
            waves.push(offered.len());
            for d in offered {
                progress.insert(d.clone(), outcome(&d));
            }
            if !matches!(rollout.state(), RolloutState::Running(_)) {
                break;
            }
        }
        waves.retain(|n| *n > 0);
        waves
    }

    fn ends(state: UpdateState, reason: Option<UpdateReason>) -> impl Fn(&str) -> DeviceProgress {
        move |_| DeviceProgress {
            job_id: "job".into(),
            state,
            received: 1,
            total: 1,
            reason,
        }
    }

    #[test]
    fn a_good_release_opens_1_10_50_100_percent_in_turn() {
        let mut r = Rollout::new("job", fleet(100), RolloutPlan::staged());
        let waves = drive(&mut r, ends(UpdateState::Accepted, None));
        assert_eq!(waves, [1, 9, 40, 50]);
        assert_eq!(r.state(), &RolloutState::Completed);
    }

    #[test]
    fn a_release_that_fails_its_self_test_stops_after_the_first_stage() {
        let mut r = Rollout::new("job", fleet(100), RolloutPlan::staged());
        let waves = drive(
            &mut r,
            ends(UpdateState::Rejected, Some(UpdateReason::SelfTestFailed)),
        );
        assert_eq!(waves, [1]);
        assert!(
            matches!(r.state(), RolloutState::Aborted(why) if why.contains("1 of 1")),
            "{:?}",
            r.state()
        );
        let v = r.view(100, |_| None);
        assert_eq!(v.waiting, 99);
    }

    #[test]
    fn a_bad_signature_aborts_at_once_and_an_exponential_plan_grows_by_its_factor() {
        let mut plan = RolloutPlan::staged();
        plan.abort.min_finished = 10;
        let mut r = Rollout::new("job", fleet(100), plan);
        drive(
            &mut r,
            ends(UpdateState::Rejected, Some(UpdateReason::BadSignature)),
        );
        assert!(matches!(r.state(), RolloutState::Aborted(why) if why.contains("bad_signature")));

        let plan = RolloutPlan::exponential(0.02, 2.0);
        assert_eq!(plan.stages, [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0]);
        let mut r = Rollout::new("job", fleet(100), plan);
        let waves = drive(&mut r, ends(UpdateState::Accepted, None));
        assert_eq!(waves.iter().sum::<usize>(), 100);
        assert_eq!(waves[0], 2);
    }

    #[test]
    fn a_paused_rollout_offers_nothing_until_resumed_and_silent_devices_time_out() {
        let mut r = Rollout::new("job", fleet(10), RolloutPlan::staged());
        assert_eq!(r.step(0, |_| None).len(), 1);
        r.pause();
        assert!(r.step(1, |_| None).is_empty());
        r.resume();
        // The first device never answers: after its timeout it has failed,
        // and 1 of 1 failed aborts.
        let late = RolloutPlan::staged().device_timeout_ms + 1;
        assert!(r.step(late, |_| None).is_empty());
        assert!(matches!(r.state(), RolloutState::Aborted(_)));
    }
}

#[cfg(test)]
mod driving {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A device's report, as the server would receive it.
    fn report(server: &Arc<Mutex<FirmwareServer>>, device: &str, state: UpdateState) {
        let r = UpdateReport {
            job_id: "fw-9",
            state,
            received: 0,
            total: 4,
            reason: None,
            time_ms: 0,
        };
        let mut buf = [0u8; 128];
        let n = r.encode(&mut buf).unwrap();
        let topic = UpdateTopic::Report.topic(device);
        server.lock().unwrap().handle(&topic, &buf[..n]);
    }

    #[tokio::test]
    async fn a_paused_rollout_offers_nothing_more_and_a_cancelled_one_tells_its_devices() {
        let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([4; 32]));
        let release = Release::sign("fw-9", "2.0.0", vec![7; 4096], 1024, &key.sk).unwrap();
        let server = Arc::new(Mutex::new(FirmwareServer::new()));
        server.lock().unwrap().add(release);
        let devices: Vec<String> = (1..=4).map(|i| format!("ly-02000000000{i}")).collect();
        let mut plan = RolloutPlan::staged();
        plan.stages = vec![0.25, 1.0];
        let (offers, mut published) = tokio::sync::mpsc::unbounded_channel();
        let (control, mut controlled) = tokio::sync::mpsc::unbounded_channel();
        let rollout = Rollout::new("fw-9", devices.clone(), plan);
        let s = server.clone();
        let first = devices[0].clone();
        let driving = tokio::spawn(async move {
            drive_rollout(&s, &offers, rollout, &mut controlled, None, |_, _| {}).await
        });
        // The first stage: one device offered. Paused, the device
        // succeeds, and nothing more is offered.
        let (topic, _) = published.recv().await.unwrap();
        assert_eq!(topic, UpdateTopic::Job.topic(&first).as_str());
        control.send(RolloutControl::Pause).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        report(&server, &first, UpdateState::Accepted);
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(published.try_recv().is_err(), "offered while paused");
        // Resumed: the other three. Cancelled while they download: each
        // is told to drop the job.
        control.send(RolloutControl::Resume).unwrap();
        let mut offered = Vec::new();
        while offered.len() < 3 {
            let (topic, _) = published.recv().await.unwrap();
            offered.push(topic);
        }
        for d in &devices[1..] {
            report(&server, d, UpdateState::Downloading);
        }
        control.send(RolloutControl::Cancel).unwrap();
        let ended = driving.await.unwrap().unwrap();
        assert_eq!(ended, RolloutState::Cancelled);
        let mut cancels = Vec::new();
        while let Ok((topic, _)) = published.try_recv() {
            cancels.push(topic);
        }
        cancels.sort();
        let want: Vec<String> = devices[1..]
            .iter()
            .map(|d| UpdateTopic::Cancel.topic(d).to_string())
            .collect();
        assert_eq!(cancels, want);
    }
}
