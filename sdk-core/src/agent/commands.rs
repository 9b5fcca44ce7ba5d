//! Commands: what becomes of each (admission, in one function), running
//! them (the agent's own, or the application's handler, at once or later),
//! their acknowledgements and the dedupe window that keeps a retry from
//! running twice.

use super::*;
use crate::agent::platform::MAX_DETAIL_LEN;

#[derive(Debug, Clone)]
pub(super) struct Remembered {
    pub(super) id: heapless::String<MAX_COMMAND_ID_LEN>,
    pub(super) status: AckStatus,
    pub(super) reason: Option<AckReason>,
    pub(super) issued_ms: u64,
}

/// What [`Agent::admit`] decided for a command.
pub(super) enum Admission {
    /// Seen before: acknowledged again with what it ended as.
    Duplicate {
        status: AckStatus,
        reason: Option<AckReason>,
    },
    /// The command still running, sent again.
    InProgress,
    /// Not remembered, and issued no later than the newest command the
    /// dedupe window has let go of.
    Stale,
    /// The cloud's time is not known since a resumed boot.
    NeedsCloudTime,
    /// Past its expiry, on the cloud's clock.
    Expired,
    /// Not allowed in the current lifecycle state.
    NotAllowed,
    /// An application command while another still runs.
    Busy,
    /// To run.
    Run(CommandKind),
}

/// Who runs an admitted command.
#[derive(Clone, Copy)]
pub(super) enum CommandKind {
    Application,
    #[cfg(feature = "diagnostic-commands")]
    Diagnostics,
    Lifecycle(Trigger),
    Decommission,
}

/// [`Agent::complete_command`] was called with no command running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NothingRunning;

impl core::fmt::Display for NothingRunning {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no command is running")
    }
}

#[derive(Debug, Clone)]
pub(super) struct Running {
    pub(super) id: heapless::String<MAX_COMMAND_ID_LEN>,
    pub(super) issued_ms: u64,
}

impl<P: TelemetryPolicy, const Q: usize, const M: usize, const L: usize, const B: usize>
    Agent<P, Q, M, L, B>
{
    /// Decides what becomes of a command, before anything runs: every
    /// rule of admission in one place, in the order they apply.
    pub(super) fn admit(&self, now_ms: u64, cmd: &Command<'_>) -> Admission {
        if let Some(seen) = self.dedupe.iter().find(|r| r.id.as_str() == cmd.id) {
            return Admission::Duplicate {
                status: seen.status,
                reason: seen.reason,
            };
        }
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.id.as_str() == cmd.id)
        {
            return Admission::InProgress;
        }
        // Like a replay window: a command not remembered but issued no
        // later than the newest one the window has let go of may have run
        // already, and running it twice is worse than refusing it. The
        // watermark is persisted with the window, so this holds across
        // restarts. Retries must keep their original issue time.
        if self.forgotten_ms.is_some_and(|w| cmd.issued_ms <= w) {
            return Admission::Stale;
        }
        // Resumed after a reboot and not yet answered: the device does not
        // know the cloud's time, so it cannot tell whether the command has
        // expired (a clock counting from boot would call everything fresh).
        // (Without `persistence` every boot registers from the start and
        // learns the time before it is in service.)
        if cfg!(feature = "persistence")
            && self.cloud_offset_ms.is_none()
            && self.state.is_registered()
        {
            return Admission::NeedsCloudTime;
        }
        // Expiry is the cloud's time: compare on its clock.
        if self.cloud_now(now_ms) > cmd.expires_ms {
            return Admission::Expired;
        }
        let (allowed, kind) = match cmd.name {
            #[cfg(feature = "diagnostic-commands")]
            "diagnostics" => (self.state.is_registered(), CommandKind::Diagnostics),
            "enter_maintenance" => (
                next_state(self.state, Trigger::EnterMaintenance).is_ok(),
                CommandKind::Lifecycle(Trigger::EnterMaintenance),
            ),
            "exit_maintenance" => (
                next_state(self.state, Trigger::ExitMaintenance).is_ok(),
                CommandKind::Lifecycle(Trigger::ExitMaintenance),
            ),
            "decommission" => (
                next_state(self.state, Trigger::Decommission).is_ok(),
                CommandKind::Decommission,
            ),
            _ => (
                matches!(
                    self.state,
                    LifecycleState::Active | LifecycleState::Degraded
                ),
                CommandKind::Application,
            ),
        };
        match (allowed, kind) {
            (false, _) => Admission::NotAllowed,
            // One long-running application command at a time.
            (true, CommandKind::Application) if self.running.is_some() => Admission::Busy,
            (true, kind) => Admission::Run(kind),
        }
    }

    // Not inlined: see `apply_delta`.
    #[inline(never)]
    pub(super) fn command(&mut self, now_ms: u64, cmd: &Command<'_>, platform: &mut Platform<'_>) {
        let kind = match self.admit(now_ms, cmd) {
            Admission::Duplicate { status, reason } => {
                // Seen before: acknowledge again, never run twice.
                self.stats.duplicate_commands += 1;
                self.push(&Ack {
                    command_id: cmd.id,
                    status,
                    reason,
                    detail: Some("duplicate"),
                    result: None,
                    time_ms: now_ms,
                });
                return;
            }
            Admission::InProgress => {
                self.stats.duplicate_commands += 1;
                self.ack(now_ms, cmd.id, AckStatus::InProgress, None, None, None);
                return;
            }
            Admission::Stale => {
                self.stats.stale_commands += 1;
                return self.refuse_unremembered(
                    now_ms,
                    cmd.id,
                    AckReason::Stale,
                    "issued before the commands the device remembers",
                );
            }
            // Refused for now and not remembered, so that a retry is
            // judged once the time is known.
            Admission::NeedsCloudTime => {
                self.stats.refused_before_time += 1;
                return self.refuse_unremembered(
                    now_ms,
                    cmd.id,
                    AckReason::Busy,
                    "the cloud's time is not known yet since boot",
                );
            }
            Admission::Expired => {
                self.issued_ms = cmd.issued_ms;
                return self.reject(now_ms, cmd.id, AckReason::Expired, platform);
            }
            Admission::NotAllowed => {
                self.issued_ms = cmd.issued_ms;
                return self.reject(now_ms, cmd.id, AckReason::NotAllowed, platform);
            }
            // Not remembered: it did not run, and a retry may once the
            // running command is done.
            Admission::Busy => {
                return self.refuse_unremembered(
                    now_ms,
                    cmd.id,
                    AckReason::Busy,
                    "another command is running",
                );
            }
            Admission::Run(kind) => kind,
        };
        self.issued_ms = cmd.issued_ms;
        match kind {
            CommandKind::Application => self.run_application(now_ms, cmd, platform),
            #[cfg(feature = "diagnostic-commands")]
            CommandKind::Diagnostics => {
                self.stats.commands_executed += 1;
                self.ack(now_ms, cmd.id, AckStatus::Accepted, None, None, None);
                let mut result = [0u8; MAX_COMMAND_ARGS_LEN];
                let report = self.config.thresholds.evaluate(
                    &self.metrics(now_ms, platform),
                    self.state == LifecycleState::Degraded,
                );
                let n = HealthMessage {
                    time_ms: now_ms,
                    report,
                }
                .encode(&mut result)
                .unwrap_or(0);
                self.finish_with(now_ms, cmd.id, &result[..n], platform);
            }
            CommandKind::Lifecycle(trigger) => {
                self.stats.commands_executed += 1;
                self.ack(now_ms, cmd.id, AckStatus::Accepted, None, None, None);
                self.transition(now_ms, trigger, platform);
                self.finish(now_ms, cmd.id, AckStatus::Succeeded, None, None, platform);
            }
            CommandKind::Decommission => {
                // Acknowledge, send the final audit event, wipe, and keep
                // only the fact that the device is decommissioned.
                self.stats.commands_executed += 1;
                self.ack(now_ms, cmd.id, AckStatus::Accepted, None, None, None);
                self.transition(now_ms, Trigger::Decommission, platform);
                self.ack(
                    now_ms,
                    cmd.id,
                    AckStatus::Succeeded,
                    None,
                    Some("decommissioned"),
                    None,
                );
                self.push_event(AgentEvent::CommandFinished(AckStatus::Succeeded));
                if platform.storage.wipe().is_err() {
                    self.stats.storage_failures += 1;
                    self.push_event(AgentEvent::StorageFailed);
                }
                self.timers = [None; TIMERS];
                self.running = None;
                self.dedupe.clear();
                self.forgotten_ms = None;
                self.reported.clear();
                self.rejected.clear();
                // What is left after the wipe: that the device is
                // decommissioned, so that no restart brings it back.
                self.persist(platform);
            }
        }
    }

    /// Hands a command to the application's handler and acknowledges what
    /// it says.
    pub(super) fn run_application(
        &mut self,
        now_ms: u64,
        cmd: &Command<'_>,
        platform: &mut Platform<'_>,
    ) {
        // Saved as started before it runs: if the device dies while it
        // runs, the next boot answers it as interrupted instead of running
        // it again (at most once, across crashes).
        let mut id = heapless::String::new();
        let _ = id.push_str(cmd.id);
        self.running = Some(Running {
            id,
            issued_ms: cmd.issued_ms,
        });
        self.persist(platform);
        let mut result = [0u8; MAX_COMMAND_ARGS_LEN];
        let outcome = platform
            .commands
            .execute(now_ms, cmd.name, cmd.args(), &mut result);
        if !matches!(outcome, Some(Ok(Completion::Later))) {
            self.running = None;
        }
        match outcome {
            None => self.reject(now_ms, cmd.id, AckReason::UnknownCommand, platform),
            Some(Err(failure)) => {
                let mut cut = [0u8; MAX_DETAIL_LEN + 3];
                let (status, reason, detail) = match failure {
                    CommandFailure::BadArguments => {
                        (AckStatus::Rejected, AckReason::BadArguments, None)
                    }
                    CommandFailure::BadArgumentsBecause(n) => (
                        AckStatus::Rejected,
                        AckReason::BadArguments,
                        detail_of(&result, n, &mut cut),
                    ),
                    CommandFailure::Failed(why) => {
                        (AckStatus::Failed, AckReason::ExecutionFailed, Some(why))
                    }
                    CommandFailure::FailedBecause(n) => (
                        AckStatus::Failed,
                        AckReason::ExecutionFailed,
                        detail_of(&result, n, &mut cut),
                    ),
                };
                // A failure ran: it was accepted first.
                if status == AckStatus::Failed {
                    self.ack(now_ms, cmd.id, AckStatus::Accepted, None, None, None);
                }
                self.finish(now_ms, cmd.id, status, Some(reason), detail, platform);
            }
            Some(Ok(Completion::Done(n))) => {
                self.stats.commands_executed += 1;
                self.ack(now_ms, cmd.id, AckStatus::Accepted, None, None, None);
                let n = n.min(result.len());
                self.finish_with(now_ms, cmd.id, &result[..n], platform);
            }
            Some(Ok(Completion::Later)) => {
                self.stats.commands_executed += 1;
                self.ack(now_ms, cmd.id, AckStatus::Accepted, None, None, None);
                self.ack(now_ms, cmd.id, AckStatus::InProgress, None, None, None);
            }
        }
    }

    /// Finishes the application command that answered
    /// [`Completion::Later`]: `Ok(result)` (CBOR,
    /// empty for none) succeeds it, `Err` fails or rejects it. The final
    /// acknowledgement is queued and the command remembered, so a retry of
    /// it is answered without running it again.
    pub fn complete_command(
        &mut self,
        now_ms: u64,
        outcome: Result<&[u8], CommandFailure>,
        platform: &mut Platform<'_>,
    ) -> Result<(), NothingRunning> {
        let r = self.running.take().ok_or(NothingRunning)?;
        self.issued_ms = r.issued_ms;
        match outcome {
            Ok(result) if result.len() <= MAX_COMMAND_ARGS_LEN => {
                self.finish_with(now_ms, &r.id, result, platform)
            }
            Ok(_) => self.finish(
                now_ms,
                &r.id,
                AckStatus::Failed,
                Some(AckReason::ExecutionFailed),
                Some("result too large"),
                platform,
            ),
            // No buffer holds a detail here: the reason alone goes.
            Err(CommandFailure::BadArguments | CommandFailure::BadArgumentsBecause(_)) => {
                self.reject(now_ms, &r.id, AckReason::BadArguments, platform)
            }
            Err(CommandFailure::FailedBecause(_)) => self.finish(
                now_ms,
                &r.id,
                AckStatus::Failed,
                Some(AckReason::ExecutionFailed),
                None,
                platform,
            ),
            Err(CommandFailure::Failed(why)) => self.finish(
                now_ms,
                &r.id,
                AckStatus::Failed,
                Some(AckReason::ExecutionFailed),
                Some(why),
                platform,
            ),
        }
        Ok(())
    }

    /// The id of the application command still running, if one is.
    pub fn running_command(&self) -> Option<&str> {
        self.running.as_ref().map(|r| r.id.as_str())
    }

    /// Refuses a command without remembering it in the dedupe window, so a
    /// retry of the same id is judged again: a stale one stays stale, one
    /// refused before the cloud's time was known is judged once it is.
    pub(super) fn refuse_unremembered(
        &mut self,
        now_ms: u64,
        id: &str,
        reason: AckReason,
        detail: &str,
    ) {
        self.ack(
            now_ms,
            id,
            AckStatus::Rejected,
            Some(reason),
            Some(detail),
            None,
        );
    }

    pub(super) fn reject(
        &mut self,
        now_ms: u64,
        id: &str,
        reason: AckReason,
        platform: &mut Platform<'_>,
    ) {
        self.finish(
            now_ms,
            id,
            AckStatus::Rejected,
            Some(reason),
            None,
            platform,
        );
    }

    pub(super) fn finish_with(
        &mut self,
        now_ms: u64,
        id: &str,
        result: &[u8],
        platform: &mut Platform<'_>,
    ) {
        let result = (!result.is_empty()).then_some(result);
        self.ack(now_ms, id, AckStatus::Succeeded, None, None, result);
        self.remember(id, AckStatus::Succeeded, None, platform);
    }

    /// Sends the final acknowledgement and remembers it for deduplication.
    pub(super) fn finish(
        &mut self,
        now_ms: u64,
        id: &str,
        status: AckStatus,
        reason: Option<AckReason>,
        detail: Option<&str>,
        platform: &mut Platform<'_>,
    ) {
        self.ack(now_ms, id, status, reason, detail, None);
        self.remember(id, status, reason, platform);
    }

    pub(super) fn remember(
        &mut self,
        id: &str,
        status: AckStatus,
        reason: Option<AckReason>,
        platform: &mut Platform<'_>,
    ) {
        let mut s = heapless::String::new();
        let _ = s.push_str(id);
        if self.dedupe.is_full() {
            if let Some(gone) = self.dedupe.pop_front() {
                self.forgotten_ms = Some(self.forgotten_ms.unwrap_or(0).max(gone.issued_ms));
            }
        }
        let _ = self.dedupe.push_back(Remembered {
            id: s,
            status,
            reason,
            issued_ms: self.issued_ms,
        });
        self.push_event(AgentEvent::CommandFinished(status));
        self.persist(platform);
    }

    pub(super) fn ack(
        &mut self,
        now_ms: u64,
        id: &str,
        status: AckStatus,
        reason: Option<AckReason>,
        detail: Option<&str>,
        result: Option<&[u8]>,
    ) {
        self.push(&Ack {
            command_id: id,
            status,
            reason,
            detail,
            result,
            time_ms: now_ms,
        });
    }
}

/// The detail a handler wrote in the first `n` bytes of `buf`: valid UTF-8
/// (what is not ends it), at most [`MAX_DETAIL_LEN`] bytes, a longer one
/// cut at a character boundary and ending with `...` (built in `cut`).
fn detail_of<'a>(buf: &'a [u8], n: usize, cut: &'a mut [u8]) -> Option<&'a str> {
    let n = n.min(buf.len());
    let bytes = &buf[..n.min(MAX_DETAIL_LEN)];
    // One check finds both the end of valid text and, for a text cut
    // mid-character, the boundary before it.
    let valid = match core::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) => e.valid_up_to(),
    };
    if valid == 0 {
        return None;
    }
    let end = if n > MAX_DETAIL_LEN {
        cut.get_mut(..valid)?.copy_from_slice(&bytes[..valid]);
        cut.get_mut(valid..valid + 3)?.copy_from_slice(b"...");
        valid + 3
    } else {
        cut.get_mut(..valid)?.copy_from_slice(&bytes[..valid]);
        valid
    };
    core::str::from_utf8(&cut[..end]).ok()
}
