//! Registration: the request, retried with exponential backoff and jitter
//! until the cloud answers, and the answer.

use super::*;

/// Where registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registration {
    /// Nothing sent since boot.
    NotSent,
    /// Sent `attempts` times and not answered; the next try is the
    /// `Register` timer.
    Waiting { attempts: u32 },
    /// The cloud answered (this boot).
    Answered,
}

impl Registration {
    /// Requests sent and not answered, for the backoff.
    fn attempts(self) -> u32 {
        match self {
            Registration::Waiting { attempts } => attempts,
            _ => 0,
        }
    }
}

impl<P: TelemetryPolicy, const Q: usize, const M: usize, const L: usize, const B: usize>
    Agent<P, Q, M, L, B>
{
    pub(super) fn send_register(&mut self, now_ms: u64) {
        self.stats.register_attempts += 1;
        let id = self.device_id.clone();
        let fw = self.firmware.clone();
        self.push(&Register {
            device_id: &id,
            firmware: &fw,
            config_version: self.config.version,
            boot_count: self.boot_count,
            time_ms: now_ms,
            // Only a resumed boot registers while registered, and only
            // with `persistence` does a boot resume.
            resumed: cfg!(feature = "persistence") && self.state.is_registered(),
            capacity: Some(ShadowCapacity {
                leaves: L as u32,
                pool_bytes: B as u32,
            }),
        });
        // Exponential backoff with equal jitter: wait in [b/2, b].
        let base = FIRST_REGISTER_BACKOFF_MS
            .checked_shl(self.registration.attempts())
            .unwrap_or(MAX_REGISTER_BACKOFF_MS)
            .min(MAX_REGISTER_BACKOFF_MS);
        self.registration = Registration::Waiting {
            attempts: self.registration.attempts().saturating_add(1),
        };
        // In u32 (base is at most a minute): a 64-bit remainder would
        // bring the 0.9 KB software divider into a Cortex-M image.
        let half = (base / 2) as u32;
        let wait = u64::from(half + (self.next_random() as u32) % (half + 1));
        self.schedule(Timer::Register, now_ms + wait);
    }

    pub(super) fn next_random(&mut self) -> u64 {
        // xorshift64: deterministic per device, no clock, no allocator.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A registration was sent and not answered yet.
    pub(super) fn awaiting_registration(&self) -> bool {
        matches!(self.registration, Registration::Waiting { .. })
    }

    /// The cloud's answer to a registration: the cloud's time, the fleet's
    /// configuration, and Active (or, for a device resumed in service,
    /// only the time and a newer configuration).
    pub(super) fn registration_answered(
        &mut self,
        now_ms: u64,
        bytes: &[u8],
        platform: &mut Platform<'_>,
    ) -> Result<(), InboundError> {
        let m = RegisterAccepted::decode(bytes)?;
        if m.device_id != self.device_id.as_str() {
            return Err(InboundError::WrongDevice);
        }
        // A device resumed in service registers again only for the
        // cloud's time and any newer configuration (and only with
        // `persistence` does a boot resume).
        let resumed = cfg!(feature = "persistence")
            && self.state.is_registered()
            && self.awaiting_registration();
        if !resumed && self.state != LifecycleState::Provisioning {
            return Err(InboundError::NotNow(self.state));
        }
        let config = match m.config {
            Some(raw) => Some(self.config.decode_update(&mut Decoder::new(raw))?),
            None => None,
        };
        self.timers[Timer::Register as usize] = None;
        self.registration = Registration::Answered;
        // The answer's time is the cloud's clock now (less the trip).
        self.cloud_offset_ms = Some((m.time_ms as i64).saturating_sub(now_ms as i64));
        if resumed {
            // The state stays; the configuration goes through the
            // usual update, and only if newer than the device's.
            if let Some(c) = config.filter(|c| c.version > self.config.version) {
                self.apply_config(now_ms, c, platform);
            }
            return Ok(());
        }
        if let Some(c) = config.filter(|c| c.validate().is_ok()) {
            self.push_event(AgentEvent::ConfigApplied(c.version));
            self.config = c;
        }
        self.transition(now_ms, Trigger::RegistrationAccepted, platform);
        self.start_periodic(now_ms);
        self.persist(platform);
        Ok(())
    }
}
