//! The device side of the shadow: deltas handed to the application, what it
//! reached reported, what it refused sent with the report, and the
//! device's own state reported when it changes.

use super::*;

/// A shadow update sent by the agent.
struct ShadowMessage<'a, const L: usize, const B: usize>(ShadowUpdateRef<'a, L, B>);

impl<const L: usize, const B: usize> Encodable for ShadowMessage<'_, L, B> {
    const KIND: MessageKind = MessageKind::ShadowUpdate;
    fn encode_cbor<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        self.0.encode_cbor(e)
    }
}

/// Why [`Agent::report_tree`] reported nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportError {
    /// The leaf of the state that did not fit, by position in path order.
    pub leaf: usize,
    /// Why.
    pub error: Error,
}

impl core::fmt::Display for ReportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "leaf {} not reported: {}", self.leaf, self.error)
    }
}

impl<P: TelemetryPolicy, const Q: usize, const M: usize, const L: usize, const B: usize>
    Agent<P, Q, M, L, B>
{
    /// Reports a value of the device's own state at `path` (a sensor's
    /// reading, a setting changed on the device, the position a valve
    /// reached after [`Applied::Pending`]). It is sent at once if the value
    /// changed; a refusal of the desired value at `path` is withdrawn. On
    /// error (the reported shadow is full, an unusable path) nothing
    /// changed.
    pub fn report(&mut self, now_ms: u64, path: Path<'_>, value: Value<'_>) -> Result<(), Error> {
        let meta = LeafMeta::new(Source::Device, self.cloud_now(now_ms));
        let mut changed = self.put_reported(path, value, meta)?;
        changed |= self.rejected.remove(path);
        if changed {
            self.reported_changed(now_ms);
        }
        Ok(())
    }

    /// Reports several properties of the device's own state at once: every
    /// leaf of `state` (a null leaf removes a property the device no longer
    /// has), all or nothing. On error the reported state is as it
    /// was and the error says which leaf of `state` (its position in path
    /// order) did not fit. Sent at once if anything changed.
    pub fn report_tree<const TL: usize, const TB: usize>(
        &mut self,
        now_ms: u64,
        state: &StateTree<TL, TB>,
    ) -> Result<(), ReportError> {
        // Applied to a copy first: a property that does not fit leaves
        // the reported state as it was.
        let before = (self.reported.clone(), self.rejected.clone());
        let meta = LeafMeta::new(Source::Device, self.cloud_now(now_ms));
        let mut changed = false;
        for (i, leaf) in state.iter().enumerate() {
            let put = match leaf.value {
                Value::Null => Ok(self.reported.remove(leaf.path)),
                v => self.put_reported(leaf.path, v, meta),
            };
            match put {
                Ok(c) => changed |= c,
                Err(error) => {
                    (self.reported, self.rejected) = before;
                    return Err(ReportError { leaf: i, error });
                }
            }
            changed |= self.rejected.remove(leaf.path);
        }
        if changed {
            self.reported_changed(now_ms);
        }
        Ok(())
    }

    /// Reports a typed value of the device's own state: every property
    /// `state` serializes to (see [`crate::shadow::typed`]; `None` fields
    /// are left as they are), all or nothing, as
    /// [`Agent::report_tree`] does.
    #[cfg(feature = "serde")]
    pub fn report_typed<T: serde::Serialize + ?Sized>(
        &mut self,
        now_ms: u64,
        state: &T,
    ) -> Result<(), crate::shadow::typed::TypedError> {
        use crate::shadow::typed::TypedError;
        let mut update = StateTree::<L, B>::new();
        crate::shadow::typed::to_tree(state, &mut update)?;
        self.report_tree(now_ms, &update).map_err(|e| {
            let err = TypedError::tree(e.error);
            match update.iter().nth(e.leaf) {
                Some(leaf) => err.at(leaf.path),
                None => err,
            }
        })
    }

    /// Sets a reported leaf, replacing a leaf above it or leaves below it
    /// as a merge would (a map where a value was, or the reverse). Returns
    /// whether anything changed.
    pub(super) fn put_reported(
        &mut self,
        path: Path<'_>,
        value: Value<'_>,
        meta: LeafMeta,
    ) -> Result<bool, Error> {
        if self.reported.get(path).is_some_and(|e| e.value == value) {
            return Ok(false);
        }
        match self.reported.insert_with_meta(path, value, meta) {
            Err(Error::Path(crate::error::PathError::LeafMapClash)) => {
                self.reported.remove_overlapping(path);
                self.reported.insert_with_meta(path, value, meta)?;
            }
            r => r?,
        }
        Ok(true)
    }

    /// The reported state (or the refusals) changed: saved with the next
    /// sync, which is brought forward to now.
    pub(super) fn reported_changed(&mut self, now_ms: u64) {
        self.reported_dirty = true;
        if self.state.is_registered() {
            self.schedule(Timer::ShadowSync, now_ms);
        }
    }

    /// Hands each leaf of a delta to the application and reports what it
    /// says the device reached. Not inlined, here and in the other large
    /// inbound paths: the decoded delta (a tree), a command's result buffer
    /// and a decoded configuration would otherwise share one stack frame
    /// with everything the caller keeps, several KiB on a microcontroller,
    /// instead of each living only while it runs.
    ///
    /// Only a change is reported: a delta that repeats a value the
    /// application clamped, refused or is still working on sends nothing,
    /// so a twin that answers every report with the outstanding delta
    /// does not start a loop.
    #[inline(never)]
    pub(super) fn apply_delta(
        &mut self,
        now_ms: u64,
        bytes: &[u8],
        platform: &mut Platform<'_>,
    ) -> Result<(), InboundError> {
        let mut delta = ShadowDelta::<L, B>::empty();
        // Into this one tree: `decode` would build and move copies of it.
        delta.decode_into(bytes)?;
        let meta = LeafMeta::new(Source::Device, self.cloud_now(now_ms));
        let (mut reached, mut rejected, mut pending) = (0u16, 0u16, 0u16);
        let mut changed = false;
        for leaf in delta.state.iter() {
            let refusal = match platform.desired.apply(now_ms, leaf.path, leaf.value) {
                Applied::Reached(v) => {
                    reached += 1;
                    match self.put_reported(leaf.path, v, meta) {
                        Ok(c) => {
                            changed |= c;
                            None
                        }
                        Err(_) => Some(RejectReason::NoRoom),
                    }
                }
                Applied::Rejected(r) => {
                    rejected += 1;
                    Some(r)
                }
                Applied::Pending => {
                    pending += 1;
                    None
                }
            };
            changed |= self.set_refusal(leaf.path, refusal);
        }
        self.push_event(AgentEvent::DesiredHandled {
            reached,
            rejected,
            pending,
        });
        if changed {
            // Saved now, as a configuration is: the device acted on it.
            self.persist(platform);
            self.schedule(Timer::ShadowSync, now_ms);
        }
        Ok(())
    }

    /// Records (or withdraws) the refusal of the desired value at `path`;
    /// returns whether that changed anything.
    pub(super) fn set_refusal(&mut self, path: Path<'_>, refusal: Option<RejectReason>) -> bool {
        let Some(reason) = refusal else {
            return self.rejected.remove(path);
        };
        let code = Value::Int(i64::from(reason.code()));
        if self.rejected.get(path).is_some_and(|e| e.value == code) {
            return false;
        }
        let meta = LeafMeta::new(Source::Device, 0);
        if self.rejected.insert_with_meta(path, code, meta).is_err() {
            self.stats.refusals_unreported += 1;
            return false;
        }
        true
    }

    pub(super) fn send_shadow(&mut self, now_ms: u64) {
        // Encoded from the tree where it is: a copy would be a 3 KiB
        // `ShadowUpdate` on the stack.
        // Stamped on the cloud's clock once the registration answer said
        // what it is: a device without a real-time clock counts from boot,
        // and LatestWins compares the two sides' times.
        let up = ShadowUpdateRef {
            desired: None,
            reported: Some(&self.reported),
            expected_version: None,
            timestamp_ms: self.cloud_now(now_ms),
            client_token: None,
            rejected: (!self.rejected.is_empty()).then_some(&self.rejected),
        };
        let pushed = self.outbox.push(&ShadowMessage(up));
        self.count_pushed(MessageKind::ShadowUpdate, pushed);
    }
}
