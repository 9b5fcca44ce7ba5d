//! Saving the agent's state through [`Storage`](super::platform::Storage)
//! and resuming it at boot (the `persistence` feature).
//!
//! Without the feature the agent keeps nothing: `persist` is empty, boot
//! starts from the agent as built, and this code is not in the image
//! (with the registration again after a resumed boot that it brings,
//! 3.7 KB of flash on the STM32 reference firmware).

use minicbor::decode::Decoder;
use minicbor::encode::Encoder;

use super::commands::Running;
use super::platform::{Platform, StorageSlot};
use super::{
    AckReason, AckStatus, Agent, AgentEvent, BootError, DEDUPE_WINDOW, LifecycleState, Remembered,
    STATE_RECORD_MAX, TelemetryPolicy,
};
use crate::error::DecodeError;
use crate::shadow::{LeafMeta, Source};
use crate::wire::{CborWriter, cbor, each_field};

impl<P: TelemetryPolicy, const Q: usize, const M: usize, const L: usize, const B: usize>
    Agent<P, Q, M, L, B>
{
    /// Reads back the state [`Agent::persist`] saved, if any. A record that
    /// cannot be read stops the boot (see [`BootError`]); a command that was
    /// running when the device went down is remembered and answered as
    /// interrupted.
    pub(super) fn resume(
        &mut self,
        now_ms: u64,
        platform: &mut Platform<'_>,
    ) -> Result<(), BootError> {
        let mut buf = [0u8; STATE_RECORD_MAX];
        let n = platform
            .storage
            .load(StorageSlot::AgentState, &mut buf)
            .map_err(|e| {
                self.stats.storage_failures += 1;
                BootError::Storage(e)
            })?;
        if n == 0 {
            return Ok(());
        }
        let interrupted = self.restore(&buf[..n]).map_err(BootError::Unreadable)?;
        if let Some(r) = interrupted {
            self.issued_ms = r.issued_ms;
            self.finish(
                now_ms,
                &r.id,
                AckStatus::Failed,
                Some(AckReason::Interrupted),
                Some("the device restarted while it ran"),
                platform,
            );
        }
        Ok(())
    }

    /// Saves the agent's state; called after every change to it. A failed
    /// save is counted and reported as an event, never fatal.
    pub(super) fn persist(&mut self, platform: &mut Platform<'_>) {
        // Measured first, then streamed to the store: no record-sized
        // buffer here (see `Storage::store_with`).
        let len = cbor::measure(|e| self.encode_state(e));
        // Boot reads at most STATE_RECORD_MAX bytes back.
        if len > STATE_RECORD_MAX {
            self.stats.storage_failures += 1;
            return;
        }
        let this = &*self;
        let stored = platform
            .storage
            .store_with(StorageSlot::AgentState, len, &mut |sink| {
                cbor::stream(sink, |e| this.encode_state(e)).map(|_| ())
            });
        if stored.is_err() {
            self.stats.storage_failures += 1;
            self.push_event(AgentEvent::StorageFailed);
        }
    }

    /// The persisted record: `{0: state, 1: device id, 2: config, 3: boots,
    /// 4: lifecycle seq, 5: [* [command id, status, reason, issued]], 6: reported
    /// state, ? 7: newest issue time let go of by the window, ? 8: [[command
    /// id, issued]] of the command started and not finished}`.
    fn encode_state(&self, e: &mut Encoder<CborWriter<'_>>) -> cbor::EncodeResult {
        e.map(7 + u64::from(self.forgotten_ms.is_some()) + u64::from(self.running.is_some()))?;
        e.u8(0)?.u8(self.state.code())?;
        e.u8(1)?.str(&self.device_id)?;
        e.u8(2)?;
        self.config.encode_cbor(e)?;
        e.u8(3)?.u64(self.boot_count)?;
        e.u8(4)?.u64(self.lifecycle_seq)?;
        e.u8(5)?.array(self.dedupe.len() as u64)?;
        for r in self.dedupe.iter() {
            e.array(4)?.str(&r.id)?.u8(r.status as u8)?;
            match r.reason {
                Some(x) => e.u64(x.code())?,
                None => e.null()?,
            };
            e.u64(r.issued_ms)?;
        }
        e.u8(6)?;
        self.reported.encode_cbor(e)?;
        if let Some(w) = self.forgotten_ms {
            e.u8(7)?.u64(w)?;
        }
        if let Some(r) = &self.running {
            e.u8(8)?.array(1)?.array(2)?.str(&r.id)?.u64(r.issued_ms)?;
        }
        Ok(())
    }

    /// Restores the record; returns the command that was running when it
    /// was saved, if one was.
    fn restore(&mut self, bytes: &[u8]) -> Result<Option<Running>, DecodeError> {
        let mut d = Decoder::new(bytes);
        let mut state = None;
        let mut config = self.config.clone();
        let mut dedupe: heapless::Deque<Remembered, DEDUPE_WINDOW> = heapless::Deque::new();
        // Decoded aside, so a record that fails halfway changes nothing.
        // On the stack while it lasts: the agent keeps no spare tree for
        // the one time a boot needs it.
        let mut reported = crate::shadow::StateTree::<L, B>::new();
        let (mut boots, mut seq) = (0, 0);
        let (mut forgotten, mut running) = (None, None);
        each_field(&mut d, |k, d| {
            let at = d.position();
            match k {
                0 => {
                    state = Some(LifecycleState::from_code(cbor::read_u64(d)?).ok_or(
                        DecodeError::Malformed {
                            what: "a state code",
                            at,
                        },
                    )?)
                }
                1 => {
                    if cbor::read_str(d)? != self.device_id.as_str() {
                        return Err(DecodeError::Malformed {
                            what: "this device's id",
                            at,
                        });
                    }
                }
                2 => config = self.config.decode_update(d)?,
                3 => boots = cbor::read_u64(d)?,
                4 => seq = cbor::read_u64(d)?,
                6 => {
                    reported.clear();
                    reported.decode_cbor(d, LeafMeta::new(Source::Device, 0), false)?;
                }
                5 => cbor::each_tuple(
                    d,
                    4,
                    "a definite array of remembered commands",
                    "[command id, status, reason, issued]",
                    |d| {
                        let at = d.position();
                        let mut id = heapless::String::new();
                        id.push_str(cbor::read_str(d)?)
                            .map_err(|_| DecodeError::Malformed {
                                what: "a command id",
                                at,
                            })?;
                        let status = AckStatus::from_code(cbor::read_u64(d)?).ok_or(
                            DecodeError::Malformed {
                                what: "an ack status",
                                at,
                            },
                        )?;
                        let reason = if cbor::peek(d)? == cbor::NULL {
                            d.set_position(d.position() + 1);
                            None
                        } else {
                            Some(AckReason::from_code(cbor::read_u64(d)?))
                        };
                        let issued_ms = cbor::read_u64(d)?;
                        if dedupe.is_full() {
                            dedupe.pop_front();
                        }
                        let _ = dedupe.push_back(Remembered {
                            id,
                            status,
                            reason,
                            issued_ms,
                        });
                        Ok(())
                    },
                )?,
                7 => forgotten = Some(cbor::read_u64(d)?),
                8 => cbor::each_tuple(
                    d,
                    2,
                    "a list of the started command",
                    "[command id, issued]",
                    |d| {
                        let at = d.position();
                        let mut id = heapless::String::new();
                        id.push_str(cbor::read_str(d)?)
                            .map_err(|_| DecodeError::Malformed {
                                what: "a command id",
                                at,
                            })?;
                        running = Some(Running {
                            id,
                            issued_ms: cbor::read_u64(d)?,
                        });
                        Ok(())
                    },
                )?,
                _ => cbor::skip_item(d, 0)?,
            }
            Ok(())
        })?;
        config.validate().map_err(|_| DecodeError::Malformed {
            what: "a valid configuration",
            at: 0,
        })?;
        self.state = state.ok_or(DecodeError::MissingField("state"))?;
        self.config = config;
        self.boot_count = boots;
        self.lifecycle_seq = seq;
        self.dedupe = dedupe;
        self.forgotten_ms = forgotten;
        self.reported = reported;
        Ok(running)
    }
}
