//! Firmware updates on the cloud's side: a [`Release`] is an image and the
//! job announcing it, signed on the operator's side with the fleet's
//! Ed25519 key; the [`FirmwareServer`] offers releases to devices, answers
//! their block requests and keeps each device's progress from its reports.
//! The server never holds the signing key: a release reaches it signed.
//!
//! Staged rollouts over the server (stages, abort criteria, pause and
//! resume) are not built yet.

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
