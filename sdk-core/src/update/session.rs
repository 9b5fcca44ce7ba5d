//! The conversation of firmware updates, for a driver: the [`Updater`]'s
//! rules applied to the messages on the update topics, with what to send
//! back, when to save the download record and when to restart, sans-I/O
//! like the agent. The std driver and the bare-metal one both move bytes
//! through it, so a device on Linux and one on a microcontroller update
//! the same way.
//!
//! A driver calls [`UpdateSession::handle`] with each message on an update
//! topic, then drains [`UpdateSession::poll_transmit`] (reports and block
//! requests), saves the record when [`UpdateSession::take_record`] gives
//! one, restarts when [`UpdateSession::take_restart`] says so, and calls
//! `poll_transmit` again by [`UpdateSession::poll_timeout`] (blocks asked
//! for that did not come are asked again).

use heapless::String;

use super::messages::{
    Block, BlockRequest, MAX_JOB_ID, UpdateJob, UpdateReason, UpdateReport, UpdateState,
    UpdateTopic,
};
use super::{Offer, Stored, Taken, UpdateSlot, Updater, WINDOW};
use crate::agent::messages::whole;
use crate::error::{DecodeError, Error};
use crate::wire::cbor;

/// What the device running the session is, when a job is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running<'a> {
    /// The running image's version.
    pub version: &'a str,
    /// Whether the device is in degraded mode (no update unless forced).
    pub degraded: bool,
}

/// A job refused at its offer: reported once, never taken.
#[derive(Debug, Clone)]
struct Refusal {
    job_id: String<MAX_JOB_ID>,
    total: u32,
    reason: UpdateReason,
}

/// The device's firmware updates over a message link, with its inactive
/// slot `S`. See the [module](self).
#[derive(Debug)]
pub struct UpdateSession<S> {
    updater: Updater,
    slot: S,
    refusal: Option<Refusal>,
    report_due: bool,
    verify_due: bool,
    save_due: bool,
    restart_due: bool,
    want: [u32; WINDOW],
    want_len: usize,
    max_block: u16,
}

impl<S: UpdateSlot> UpdateSession<S> {
    /// Updates into `slot`, trusting images signed with the fleet's
    /// Ed25519 `key`.
    pub fn new(key: [u8; 32], slot: S) -> Self {
        UpdateSession {
            updater: Updater::new(key),
            slot,
            refusal: None,
            report_due: false,
            verify_due: false,
            save_due: false,
            restart_due: false,
            want: [0; WINDOW],
            want_len: 0,
            max_block: super::messages::MAX_BLOCK_SIZE,
        }
    }

    /// Refuses jobs whose blocks are larger than `bytes` (as
    /// [`UpdateReason::BadBlock`]): a device whose link carries smaller
    /// messages than [`MAX_BLOCK_SIZE`](super::messages::MAX_BLOCK_SIZE)
    /// blocks says so, rather than take a job whose blocks never arrive.
    pub fn with_max_block_size(mut self, bytes: u16) -> Self {
        self.max_block = bytes;
        self
    }

    /// The rules' state (the job, its progress).
    pub fn updater(&self) -> &Updater {
        &self.updater
    }

    /// The slot (a platform reads its bootloader's requests there).
    pub fn slot_mut(&mut self) -> &mut S {
        &mut self.slot
    }

    /// Takes back the download record saved before a restart. One that
    /// does not read is an error and nothing changes: the platform drops
    /// it, and the job starts over when offered again.
    pub fn resume(&mut self, record: &[u8]) -> Result<(), Error> {
        self.updater.resume(record)
    }

    /// At start, after [`UpdateSession::resume`]: `running_trial` is the
    /// bootloader's word that this boot runs the new image on trial. A
    /// verified image on trial runs `self_test`: passed, it is confirmed;
    /// failed, the slot is reverted and a restart is due. The outcome is
    /// reported, and a download under way is asked for again.
    pub fn boot(&mut self, running_trial: bool, self_test: impl FnOnce() -> bool) {
        if self.updater.state().is_none() {
            return;
        }
        self.updater.booted(running_trial);
        if self.updater.state() == Some(UpdateState::Testing) {
            let passed = self_test();
            if self.updater.self_test(passed, &mut self.slot).is_ok() && !passed {
                self.restart_due = true;
            }
        }
        self.save_due = true;
        self.report_due = true;
    }

    /// A message on one of the update topics (those the cloud sends),
    /// from a device running as `running` says. A message that does not
    /// read is an error and changes nothing.
    pub fn handle(
        &mut self,
        topic: UpdateTopic,
        payload: &[u8],
        running: Running<'_>,
    ) -> Result<(), Error> {
        match topic {
            UpdateTopic::Job => {
                let job = UpdateJob::decode(payload)?;
                self.offered(&job, running);
            }
            UpdateTopic::Block => {
                let block = Block::decode(payload)?;
                match self.updater.block(&block, &mut self.slot) {
                    Ok(Stored::Progress { .. }) => self.save_due = true,
                    Ok(Stored::Complete) => {
                        self.save_due = true;
                        self.report_due = true;
                        // After the report saying so has gone: the check
                        // reads the whole image.
                        self.verify_due = true;
                    }
                    // A block of another job, one had already, or one of
                    // the wrong size: the download goes on.
                    Ok(Stored::Duplicate | Stored::OtherJob) | Err(_) => {}
                }
            }
            UpdateTopic::Cancel => {
                let id = whole(payload, cbor::read_str)?;
                self.updater.cancel(id);
                self.save_due = true;
                self.report_due = true;
            }
            UpdateTopic::Request | UpdateTopic::Report => {
                return Err(Error::Decode(DecodeError::Malformed {
                    what: "an update message the cloud sends",
                    at: 0,
                }));
            }
        }
        Ok(())
    }

    fn offered(&mut self, job: &UpdateJob<'_>, running: Running<'_>) {
        let offer = Offer {
            running_version: running.version,
            slot_capacity: self.slot.capacity(),
            degraded: running.degraded,
        };
        let taken = if job.block_size > self.max_block {
            Err(UpdateReason::BadBlock)
        } else {
            self.updater.offer(job, offer)
        };
        match taken {
            Ok(taken) => {
                if taken == Taken::Started && self.slot.erase().is_err() {
                    self.updater.abort(UpdateReason::Storage);
                }
                self.save_due = true;
                self.report_due = true;
            }
            Err(reason) => {
                // Too long an id cannot be reported under its name: the
                // cloud sees nothing and its offer times out.
                if let Ok(job_id) = String::try_from(job.job_id) {
                    self.refusal = Some(Refusal {
                        job_id,
                        total: job.blocks(),
                        reason,
                    });
                }
            }
        }
    }

    /// The next message to send at `now_ms` (device clock, ms since the
    /// epoch), encoded into `out` (at least 128 bytes; it is also the
    /// buffer the image is read back through when verified, so a larger
    /// one verifies faster): its topic and length. `None` when nothing is
    /// due.
    pub fn poll_transmit(
        &mut self,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Option<(UpdateTopic, usize)>, Error> {
        if let Some(r) = self.refusal.take() {
            let report = UpdateReport {
                job_id: &r.job_id,
                state: UpdateState::Rejected,
                received: 0,
                total: r.total,
                reason: Some(r.reason),
                time_ms: now_ms,
            };
            return Ok(Some((UpdateTopic::Report, report.encode(out)?)));
        }
        if core::mem::take(&mut self.report_due)
            && let Some(report) = self.updater.report(now_ms)
        {
            return Ok(Some((UpdateTopic::Report, report.encode(out)?)));
        }
        if core::mem::take(&mut self.verify_due) {
            if self.updater.verify(&mut self.slot, out).is_ok() {
                self.restart_due = true;
            }
            self.save_due = true;
            if let Some(report) = self.updater.report(now_ms) {
                return Ok(Some((UpdateTopic::Report, report.encode(out)?)));
            }
        }
        if self.want_len == 0 {
            self.want_len = self.updater.wanted(now_ms, &mut self.want);
        }
        if self.want_len > 0 {
            let Some(report) = self.updater.report(now_ms) else {
                self.want_len = 0;
                return Ok(None);
            };
            self.want_len -= 1;
            let request = BlockRequest {
                job_id: report.job_id,
                first: self.want[self.want_len],
                count: 1,
            };
            return Ok(Some((UpdateTopic::Request, request.encode(out)?)));
        }
        Ok(None)
    }

    /// The download record, into `out` (at least
    /// [`RECORD_MAX`](super::RECORD_MAX) bytes), when it changed since it
    /// was last taken: the platform saves it before it sends anything
    /// more, so that a restart resumes from it. `Some(0)`: there is no
    /// job (nothing to keep).
    pub fn take_record(&mut self, out: &mut [u8]) -> Option<Result<usize, Error>> {
        core::mem::take(&mut self.save_due).then(|| self.updater.save(out))
    }

    /// Whether the device must restart now (into a verified image on
    /// trial, or back to the old one after a failed self-test), once what
    /// [`UpdateSession::poll_transmit`] had to send has gone.
    pub fn take_restart(&mut self) -> bool {
        core::mem::take(&mut self.restart_due)
    }

    /// When to call [`UpdateSession::poll_transmit`] again, if nothing
    /// arrives before: when a block asked for is due to be asked again.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.updater.next_ask()
    }
}
