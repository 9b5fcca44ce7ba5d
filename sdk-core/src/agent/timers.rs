//! The agent's timers: one deadline per kind of periodic work, kept in a
//! table indexed by [`Timer`]; `handle_timeout` runs the due ones.

use super::*;

/// The agent's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    Register = 0,
    Heartbeat,
    Telemetry,
    Health,
    ShadowSync,
}

pub(super) const TIMERS: usize = 5;

pub(super) const ALL_TIMERS: [Timer; TIMERS] = [
    Timer::Register,
    Timer::Heartbeat,
    Timer::Telemetry,
    Timer::Health,
    Timer::ShadowSync,
];

impl<P: TelemetryPolicy, const Q: usize, const M: usize, const L: usize, const B: usize>
    Agent<P, Q, M, L, B>
{
    pub(super) fn start_periodic(&mut self, now_ms: u64) {
        self.schedule(Timer::Heartbeat, now_ms + self.config.heartbeat_ms);
        self.schedule(Timer::Telemetry, now_ms + self.config.telemetry_ms);
        self.schedule(Timer::Health, now_ms + self.config.health_ms);
        self.schedule(Timer::ShadowSync, now_ms);
    }

    pub(super) fn schedule(&mut self, timer: Timer, at: u64) {
        if self.state == LifecycleState::Decommissioned {
            return;
        }
        self.timers[timer as usize] = Some(at);
    }
}
