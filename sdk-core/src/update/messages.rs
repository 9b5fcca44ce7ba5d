//! The firmware update's messages: a job announcing an image, the device's
//! requests for blocks, the blocks, and the device's reports. CBOR maps with
//! small integer keys, like the agent's (see `docs/wire-format.md`).

use minicbor::Decoder;

use crate::agent::messages::{read_code, read_text, req, whole};
use crate::error::{DecodeError, Error};
use crate::wire::{cbor, each_field};

/// The firmware update's topics, under a device's address
/// (`lanyard/v1/{device-id}/update/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateTopic {
    /// Cloud → device: an [`UpdateJob`].
    Job,
    /// Device → cloud: a [`BlockRequest`].
    Request,
    /// Cloud → device: a [`Block`].
    Block,
    /// Device → cloud: an [`UpdateReport`].
    Report,
    /// Cloud → device: stop the job named (its id, CBOR text).
    Cancel,
}

impl UpdateTopic {
    /// Every topic.
    pub const ALL: [UpdateTopic; 5] = [
        UpdateTopic::Job,
        UpdateTopic::Request,
        UpdateTopic::Block,
        UpdateTopic::Report,
        UpdateTopic::Cancel,
    ];

    /// Its suffix after the device's address.
    pub const fn suffix(self) -> &'static str {
        match self {
            UpdateTopic::Job => "update/job",
            UpdateTopic::Request => "update/request",
            UpdateTopic::Block => "update/block",
            UpdateTopic::Report => "update/report",
            UpdateTopic::Cancel => "update/cancel",
        }
    }

    /// Whether the device sends it (else the cloud does).
    pub const fn from_device(self) -> bool {
        matches!(self, UpdateTopic::Request | UpdateTopic::Report)
    }

    /// The topic for `device_id` (in the shared namespace).
    pub fn topic(self, device_id: &str) -> heapless::String<128> {
        let mut s = heapless::String::new();
        // 11 + 64 + 1 + 14 bytes at most: always fits.
        let _ = s.push_str(crate::topic::TOPIC_PREFIX);
        let _ = s.push_str(device_id);
        let _ = s.push('/');
        let _ = s.push_str(self.suffix());
        s
    }

    /// The device and update topic `topic` names, if it is one.
    pub fn parse(topic: &str) -> Option<(&str, UpdateTopic)> {
        let rest = topic.strip_prefix(crate::topic::TOPIC_PREFIX)?;
        UpdateTopic::ALL.into_iter().find_map(|t| {
            let id = rest.strip_suffix(t.suffix())?.strip_suffix('/')?;
            crate::topic::valid_device_id(id).then_some((id, t))
        })
    }
}

/// The longest job id.
pub const MAX_JOB_ID: usize = 32;
/// The longest version text.
pub const MAX_VERSION: usize = 24;
/// The largest block a job may use (bytes).
pub const MAX_BLOCK_SIZE: u16 = 4096;

/// Cloud → device: an image to take. The signature is the fleet's Ed25519
/// signature of the image's [manifest](UpdateJob::manifest) (its version,
/// size and SHA-256), made on the operator's side: whoever serves the
/// blocks cannot change the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateJob<'a> {
    /// Names the job (and its blocks and reports).
    pub job_id: &'a str,
    /// The image's version.
    pub version: &'a str,
    /// Its size in bytes.
    pub size: u32,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// The Ed25519 signature of its manifest.
    pub signature: [u8; 64],
    /// The size of every block but the last.
    pub block_size: u16,
    /// Whether an older version may replace the running one.
    pub allow_downgrade: bool,
    /// Whether to take it even in degraded mode (low battery, bad health).
    pub force: bool,
}

/// What is signed: the CBOR array `[version, size, sha256]`.
pub const MANIFEST_MAX: usize = 1 + 1 + MAX_VERSION + 5 + 2 + 32;

impl<'a> UpdateJob<'a> {
    /// The bytes the signature covers, into `out`; their length.
    pub fn manifest(&self, out: &mut [u8; MANIFEST_MAX]) -> Result<usize, Error> {
        Ok(cbor::encode_into(out, |e| {
            e.array(3)?
                .str(self.version)?
                .u32(self.size)?
                .bytes(&self.sha256)?;
            Ok(())
        })?)
    }

    /// How many blocks the image is.
    pub fn blocks(&self) -> u32 {
        blocks(self.size, self.block_size)
    }

    /// Encodes into `out`; the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(cbor::encode_into(out, |e| {
            e.map(8)?;
            e.u8(0)?.str(self.job_id)?;
            e.u8(1)?.str(self.version)?;
            e.u8(2)?.u32(self.size)?;
            e.u8(3)?.bytes(&self.sha256)?;
            e.u8(4)?.bytes(&self.signature)?;
            e.u8(5)?.u16(self.block_size)?;
            e.u8(6)?.bool(self.allow_downgrade)?;
            e.u8(7)?.bool(self.force)?;
            Ok(())
        })?)
    }

    /// Decodes one job; the whole input must be it. A block size of 0 or
    /// over [`MAX_BLOCK_SIZE`], an empty image, or a digest or signature of
    /// the wrong length is malformed.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut version, mut size, mut sha, mut sig, mut bs) =
                (None, None, None, None, None, None);
            let (mut downgrade, mut force) = (false, false);
            each_field(d, |k, d| {
                match k {
                    0 => id = Some(read_text(d, MAX_JOB_ID, "a job id")?),
                    1 => version = Some(read_text(d, MAX_VERSION, "a version")?),
                    2 => size = Some(read_u32(d, "an image size")?),
                    3 => sha = Some(read_array::<32>(d, "a SHA-256")?),
                    4 => sig = Some(read_array::<64>(d, "an Ed25519 signature")?),
                    5 => {
                        let at = d.position();
                        let b = cbor::read_u64(d)?;
                        if b == 0 || b > u64::from(MAX_BLOCK_SIZE) {
                            return Err(DecodeError::Malformed {
                                what: "a block size",
                                at,
                            });
                        }
                        bs = Some(b as u16);
                    }
                    6 => downgrade = read_bool(d)?,
                    7 => force = read_bool(d)?,
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            let size = req(size, "size")?;
            if size == 0 {
                return Err(DecodeError::Malformed {
                    what: "an image size",
                    at: 0,
                });
            }
            Ok(UpdateJob {
                job_id: req(id, "job_id")?,
                version: req(version, "version")?,
                size,
                sha256: req(sha, "sha256")?,
                signature: req(sig, "signature")?,
                block_size: req(bs, "block_size")?,
                allow_downgrade: downgrade,
                force,
            })
        })
    }
}

/// The blocks an image of `size` bytes takes in blocks of `block_size`.
pub fn blocks(size: u32, block_size: u16) -> u32 {
    let bs = u32::from(block_size.max(1));
    size.div_ceil(bs)
}

fn read_u32(d: &mut Decoder<'_>, what: &'static str) -> Result<u32, DecodeError> {
    let at = d.position();
    u32::try_from(cbor::read_u64(d)?).map_err(|_| DecodeError::Malformed { what, at })
}

fn read_bool(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    let at = d.position();
    d.bool()
        .map_err(|_| DecodeError::Malformed { what: "a bool", at })
}

fn read_array<const N: usize>(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<[u8; N], DecodeError> {
    let at = d.position();
    cbor::read_bytes(d)?
        .try_into()
        .map_err(|_| DecodeError::Malformed { what, at })
}

/// Device → cloud: send `count` blocks from `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRequest<'a> {
    /// The job.
    pub job_id: &'a str,
    /// The first block wanted.
    pub first: u32,
    /// How many, from `first`.
    pub count: u16,
}

impl<'a> BlockRequest<'a> {
    /// Encodes into `out`; the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(cbor::encode_into(out, |e| {
            e.map(3)?;
            e.u8(0)?.str(self.job_id)?;
            e.u8(1)?.u32(self.first)?;
            e.u8(2)?.u16(self.count)?;
            Ok(())
        })?)
    }

    /// Decodes one request; the whole input must be it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut first, mut count) = (None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => id = Some(read_text(d, MAX_JOB_ID, "a job id")?),
                    1 => first = Some(read_u32(d, "a block index")?),
                    2 => {
                        let at = d.position();
                        count = Some(u16::try_from(cbor::read_u64(d)?).map_err(|_| {
                            DecodeError::Malformed {
                                what: "a block count",
                                at,
                            }
                        })?)
                    }
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(BlockRequest {
                job_id: req(id, "job_id")?,
                first: req(first, "first")?,
                count: req(count, "count")?,
            })
        })
    }
}

/// Cloud → device: one block of a job's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block<'a> {
    /// The job.
    pub job_id: &'a str,
    /// Which block.
    pub index: u32,
    /// Its bytes.
    pub data: &'a [u8],
}

impl<'a> Block<'a> {
    /// Encodes into `out`; the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(cbor::encode_into(out, |e| {
            e.map(3)?;
            e.u8(0)?.str(self.job_id)?;
            e.u8(1)?.u32(self.index)?;
            e.u8(2)?.bytes(self.data)?;
            Ok(())
        })?)
    }

    /// Decodes one block; the whole input must be it, and its data at most
    /// [`MAX_BLOCK_SIZE`] bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut index, mut data) = (None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => id = Some(read_text(d, MAX_JOB_ID, "a job id")?),
                    1 => index = Some(read_u32(d, "a block index")?),
                    2 => {
                        let at = d.position();
                        let b = cbor::read_bytes(d)?;
                        if b.is_empty() || b.len() > usize::from(MAX_BLOCK_SIZE) {
                            return Err(DecodeError::Malformed {
                                what: "a block",
                                at,
                            });
                        }
                        data = Some(b);
                    }
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(Block {
                job_id: req(id, "job_id")?,
                index: req(index, "index")?,
                data: req(data, "data")?,
            })
        })
    }
}

/// Where an update stands, as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateState {
    /// Offered and taken; nothing downloaded yet.
    Available,
    /// Blocks arriving (the report carries the progress).
    Downloading,
    /// Every block in; the digest and signature being checked.
    Verifying,
    /// Verified, marked for a trial boot: the device restarts into it.
    Verified,
    /// Running the new image on trial: its self-test decides.
    Testing,
    /// The new image confirmed: it stays.
    Accepted,
    /// Refused or rolled back (the reason says which); the old image runs.
    Rejected,
    /// Stopped before the end (cancelled, or its storage failed).
    Aborted,
}

impl UpdateState {
    /// Every state.
    pub const ALL: [UpdateState; 8] = [
        UpdateState::Available,
        UpdateState::Downloading,
        UpdateState::Verifying,
        UpdateState::Verified,
        UpdateState::Testing,
        UpdateState::Accepted,
        UpdateState::Rejected,
        UpdateState::Aborted,
    ];

    /// Its code on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The state `code` names.
    pub fn from_code(code: u64) -> Option<Self> {
        UpdateState::ALL
            .into_iter()
            .find(|s| u64::from(s.code()) == code)
    }

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            UpdateState::Available => "available",
            UpdateState::Downloading => "downloading",
            UpdateState::Verifying => "verifying",
            UpdateState::Verified => "verified",
            UpdateState::Testing => "testing",
            UpdateState::Accepted => "accepted",
            UpdateState::Rejected => "rejected",
            UpdateState::Aborted => "aborted",
        }
    }

    /// The state [`UpdateState::name`] names.
    pub fn named(name: &str) -> Option<Self> {
        UpdateState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the update is over (accepted, rejected or aborted).
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Accepted | UpdateState::Rejected | UpdateState::Aborted
        )
    }
}

/// Why an update was refused, rolled back or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateReason {
    /// Not newer than the running image (and the job does not allow it).
    Downgrade,
    /// Larger than the inactive slot, or than the blocks a device tracks.
    TooLarge,
    /// The device is in degraded mode (and the job is not forced).
    Degraded,
    /// Another update is under way.
    Busy,
    /// A block of the wrong size or out of range.
    BadBlock,
    /// The image's SHA-256 is not the job's.
    DigestMismatch,
    /// The signature does not verify with the fleet's key.
    BadSignature,
    /// The new image failed its self-test: the old one is back.
    SelfTestFailed,
    /// The device restarted before the new image was confirmed: the
    /// bootloader brought the old one back.
    ResetBeforeConfirm,
    /// The slot could not be written, read or switched.
    Storage,
    /// The cloud cancelled it.
    Cancelled,
}

impl UpdateReason {
    /// Every reason.
    pub const ALL: [UpdateReason; 11] = [
        UpdateReason::Downgrade,
        UpdateReason::TooLarge,
        UpdateReason::Degraded,
        UpdateReason::Busy,
        UpdateReason::BadBlock,
        UpdateReason::DigestMismatch,
        UpdateReason::BadSignature,
        UpdateReason::SelfTestFailed,
        UpdateReason::ResetBeforeConfirm,
        UpdateReason::Storage,
        UpdateReason::Cancelled,
    ];

    /// Its code on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The reason `code` names.
    pub fn from_code(code: u64) -> Option<Self> {
        UpdateReason::ALL
            .into_iter()
            .find(|r| u64::from(r.code()) == code)
    }

    /// The reason [`UpdateReason::name`] names.
    pub fn named(name: &str) -> Option<Self> {
        UpdateReason::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            UpdateReason::Downgrade => "downgrade",
            UpdateReason::TooLarge => "too_large",
            UpdateReason::Degraded => "degraded",
            UpdateReason::Busy => "busy",
            UpdateReason::BadBlock => "bad_block",
            UpdateReason::DigestMismatch => "digest_mismatch",
            UpdateReason::BadSignature => "bad_signature",
            UpdateReason::SelfTestFailed => "self_test_failed",
            UpdateReason::ResetBeforeConfirm => "reset_before_confirm",
            UpdateReason::Storage => "storage",
            UpdateReason::Cancelled => "cancelled",
        }
    }
}

/// Device → cloud: where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateReport<'a> {
    /// The job.
    pub job_id: &'a str,
    /// Its state.
    pub state: UpdateState,
    /// Blocks received.
    pub received: u32,
    /// Blocks in all.
    pub total: u32,
    /// Why, when rejected or aborted.
    pub reason: Option<UpdateReason>,
    /// Device clock, ms since the epoch.
    pub time_ms: u64,
}

impl<'a> UpdateReport<'a> {
    /// Encodes into `out`; the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(cbor::encode_into(out, |e| {
            e.map(5 + u64::from(self.reason.is_some()))?;
            e.u8(0)?.str(self.job_id)?;
            e.u8(1)?.u8(self.state.code())?;
            e.u8(2)?.u32(self.received)?;
            e.u8(3)?.u32(self.total)?;
            if let Some(r) = self.reason {
                e.u8(4)?.u8(r.code())?;
            }
            e.u8(5)?.u64(self.time_ms)?;
            Ok(())
        })?)
    }

    /// Decodes one report; the whole input must be it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        whole(bytes, |d| {
            let (mut id, mut state, mut received, mut total, mut reason, mut t) =
                (None, None, None, None, None, None);
            each_field(d, |k, d| {
                match k {
                    0 => id = Some(read_text(d, MAX_JOB_ID, "a job id")?),
                    1 => state = Some(read_code(d, UpdateState::from_code, "an update state")?),
                    2 => received = Some(read_u32(d, "a block count")?),
                    3 => total = Some(read_u32(d, "a block count")?),
                    4 => reason = Some(read_code(d, UpdateReason::from_code, "an update reason")?),
                    5 => t = Some(cbor::read_u64(d)?),
                    _ => cbor::skip_item(d, 0)?,
                }
                Ok(())
            })?;
            Ok(UpdateReport {
                job_id: req(id, "job_id")?,
                state: req(state, "state")?,
                received: req(received, "received")?,
                total: req(total, "total")?,
                reason,
                time_ms: req(t, "time_ms")?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_topics_parse_back() {
        for t in UpdateTopic::ALL {
            assert_eq!(
                UpdateTopic::parse(&t.topic("ly-0a0b0c0d0e0f")),
                Some(("ly-0a0b0c0d0e0f", t))
            );
        }
        assert_eq!(UpdateTopic::parse("lanyard/v1/a/b/update/job"), None);
        assert_eq!(UpdateTopic::parse("lanyard/v1/ly-1/update/jobs"), None);
    }

    #[test]
    fn the_report_in_the_wire_format_document_is_what_is_sent() {
        let r = UpdateReport {
            job_id: "job-1",
            state: UpdateState::Downloading,
            received: 3,
            total: 10,
            reason: None,
            time_ms: 1000,
        };
        let mut out = [0u8; 32];
        let n = r.encode(&mut out).unwrap();
        let hex: heapless::String<64> =
            out[..n].iter().fold(heapless::String::new(), |mut s, b| {
                let _ = core::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
                s
            });
        assert_eq!(hex.as_str(), "a500656a6f622d3101010203030a051903e8");
    }
}
