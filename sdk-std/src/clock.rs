//! Wall-clock time for the drivers, optionally compressed for simulations.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, running `speed` times faster than
/// real time from the moment it was made (speed 1: the real clock).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_real: Instant,
    origin_ms: u64,
    speed: f64,
}

impl Clock {
    /// The real clock.
    pub fn real() -> Self {
        Self::compressed(1.0)
    }

    /// A clock `speed` times faster than real time (at least 1).
    pub fn compressed(speed: f64) -> Self {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            origin_real: Instant::now(),
            origin_ms,
            speed: speed.max(1.0),
        }
    }

    /// Now, in (possibly compressed) ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        let real = self.origin_real.elapsed().as_secs_f64() * 1_000.0;
        self.origin_ms + (real * self.speed) as u64
    }

    /// The real time to wait until `deadline_ms` on this clock.
    pub fn real_wait_until(&self, deadline_ms: u64) -> Duration {
        let ahead = deadline_ms.saturating_sub(self.now_ms()) as f64;
        Duration::from_secs_f64(ahead / self.speed / 1_000.0)
    }
}
