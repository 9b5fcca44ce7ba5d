//! Which devices are alive, in what state and health: the host's view of
//! the fleet from their heartbeats (state and health) and lifecycle events,
//! and the events it tells apps about (on [`AppTopic::Event`]).
//!
//! A device is offline once it has missed `missed_heartbeats` (3 by
//! default) of the fleet's heartbeat intervals, and online again at its
//! next message. A host that starts gives every device it knows one full
//! grace period from then.
//!
//! [`AppTopic::Event`]: lanyard_core::topic::AppTopic::Event

use std::collections::{HashMap, HashSet};

use lanyard_core::agent::health::HealthStatus;
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::shadow::{ConflictPolicy, Source};
use minicbor::Encoder;

/// Heartbeat intervals a device may miss before it is offline.
pub const DEFAULT_MISSED_HEARTBEATS: u32 = 3;

/// The host's view of each device.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    last_seen: HashMap<String, u64>,
    offline: HashSet<String>,
    state: HashMap<String, LifecycleState>,
    health: HashMap<String, HealthStatus>,
}

/// Something the host noticed about a device, published for apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetEvent {
    /// It was offline and sent something.
    Online {
        /// When, host clock (ms since the epoch).
        at_ms: u64,
    },
    /// It missed its heartbeats.
    Offline {
        /// When it was marked offline.
        at_ms: u64,
        /// When it was last heard from.
        last_seen_ms: u64,
    },
    /// Its lifecycle state changed.
    Lifecycle {
        /// When the host heard of it.
        at_ms: u64,
        /// From.
        from: LifecycleState,
        /// To.
        to: LifecycleState,
    },
    /// Its health status changed.
    Health {
        /// When the host heard of it.
        at_ms: u64,
        /// The new status.
        status: HealthStatus,
    },
    /// A property changed on both sides since they last agreed.
    Conflict {
        /// When the host settled (or parked) it.
        at_ms: u64,
        /// The property, dotted.
        path: String,
        /// The policy that applied.
        policy: ConflictPolicy,
        /// Whose value stands; `None` when parked for an operator
        /// (`lanyard fleet resolve`).
        winner: Option<Source>,
    },
    /// The host refused what the device or an app sent for it (a
    /// decommissioned device, desired state past its capacity, an update
    /// that does not apply).
    Refused {
        /// When.
        at_ms: u64,
        /// Who sent it: `"device"` or `"app"`.
        from: &'static str,
        /// Why, as the refusal said.
        reason: String,
    },
}

impl FleetEvent {
    /// Its kind, as the payload names it.
    pub fn kind(&self) -> &'static str {
        match self {
            FleetEvent::Online { .. } => "online",
            FleetEvent::Offline { .. } => "offline",
            FleetEvent::Lifecycle { .. } => "lifecycle",
            FleetEvent::Health { .. } => "health",
            FleetEvent::Conflict { .. } => "conflict",
            FleetEvent::Refused { .. } => "refused",
        }
    }

    /// The payload: a CBOR map with text keys (`kind`, `at_ms`, and by
    /// kind `last_seen_ms`; `from` and `to`; `status`; `path`, `policy`
    /// and `winner` (absent when parked); `from` and `reason`). States,
    /// statuses and policies by name.
    pub fn encode(&self) -> Vec<u8> {
        let fields = self.fields();
        let mut e = Encoder::new(Vec::new());
        let write = |e: &mut Encoder<Vec<u8>>| -> Result<(), minicbor::encode::Error<_>> {
            e.map(2 + fields.len() as u64)?
                .str("kind")?
                .str(self.kind())?
                .str("at_ms")?
                .u64(self.at_ms())?;
            for (k, v) in &fields {
                e.str(k)?;
                match v {
                    Field::Ms(n) => e.u64(*n)?,
                    Field::Text(t) => e.str(t)?,
                };
            }
            Ok(())
        };
        // Writing to a Vec cannot fail.
        let _ = write(&mut e);
        e.into_writer()
    }

    /// When the host noticed it (ms since the epoch, host clock).
    pub fn at_ms(&self) -> u64 {
        match *self {
            FleetEvent::Online { at_ms }
            | FleetEvent::Offline { at_ms, .. }
            | FleetEvent::Lifecycle { at_ms, .. }
            | FleetEvent::Health { at_ms, .. }
            | FleetEvent::Conflict { at_ms, .. }
            | FleetEvent::Refused { at_ms, .. } => at_ms,
        }
    }

    /// Its fields besides `kind` and `at_ms`, in the payload's order.
    fn fields(&self) -> Vec<(&'static str, Field<'_>)> {
        match self {
            FleetEvent::Online { .. } => vec![],
            FleetEvent::Offline { last_seen_ms, .. } => {
                vec![("last_seen_ms", Field::Ms(*last_seen_ms))]
            }
            FleetEvent::Lifecycle { from, to, .. } => vec![
                ("from", Field::Text(from.name())),
                ("to", Field::Text(to.name())),
            ],
            FleetEvent::Health { status, .. } => vec![("status", Field::Text(status.name()))],
            FleetEvent::Conflict {
                path,
                policy,
                winner,
                ..
            } => {
                let mut v = vec![
                    ("path", Field::Text(path)),
                    ("policy", Field::Text(policy.name())),
                ];
                if let Some(w) = winner {
                    v.push(("winner", Field::Text(super::operator::winner_name(*w))));
                }
                v
            }
            FleetEvent::Refused { from, reason, .. } => {
                vec![("from", Field::Text(from)), ("reason", Field::Text(reason))]
            }
        }
    }

    /// As JSON, with the keys of [`FleetEvent::encode`] (for the
    /// bindings and logs).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"kind": self.kind(), "at_ms": self.at_ms()});
        for (k, f) in self.fields() {
            v[k] = match f {
                Field::Ms(n) => n.into(),
                Field::Text(t) => t.into(),
            };
        }
        v
    }

    /// Reads what [`FleetEvent::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut kind, mut at_ms, mut last_seen_ms) = (None, None, None);
        let (mut from, mut to, mut status) = (None, None, None);
        let (mut path, mut policy, mut winner, mut reason) = (None, None, None, None);
        crate::text_map::read_text_map(bytes, |key, d| {
            match key {
                "kind" => kind = Some(d.str().ok()?.to_owned()),
                "at_ms" => at_ms = Some(d.u64().ok()?),
                "last_seen_ms" => last_seen_ms = Some(d.u64().ok()?),
                "from" => from = Some(d.str().ok()?),
                "to" => to = state_named(d.str().ok()?),
                "status" => status = health_named(d.str().ok()?),
                "path" => path = Some(d.str().ok()?.to_owned()),
                "policy" => policy = ConflictPolicy::from_name(d.str().ok()?),
                "winner" => winner = Some(super::operator::winner_named(d.str().ok()?)?),
                "reason" => reason = Some(d.str().ok()?.to_owned()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        let at_ms = at_ms?;
        Some(match kind?.as_str() {
            "online" => FleetEvent::Online { at_ms },
            "offline" => FleetEvent::Offline {
                at_ms,
                last_seen_ms: last_seen_ms?,
            },
            "lifecycle" => FleetEvent::Lifecycle {
                at_ms,
                from: state_named(from?)?,
                to: to?,
            },
            "conflict" => FleetEvent::Conflict {
                at_ms,
                path: path?,
                policy: policy?,
                winner,
            },
            "refused" => FleetEvent::Refused {
                at_ms,
                from: match from? {
                    "device" => "device",
                    "app" => "app",
                    _ => return None,
                },
                reason: reason?,
            },
            "health" => FleetEvent::Health {
                at_ms,
                status: status?,
            },
            _ => return None,
        })
    }
}

/// A field's value in an event's payload.
enum Field<'a> {
    Ms(u64),
    Text(&'a str),
}

pub(super) fn state_named(name: &str) -> Option<LifecycleState> {
    (0..16)
        .filter_map(LifecycleState::from_code)
        .find(|s| s.name() == name)
}

pub(super) fn health_named(name: &str) -> Option<HealthStatus> {
    (0..3)
        .filter_map(HealthStatus::from_code)
        .find(|s| s.name() == name)
}

impl Liveness {
    /// Device `key` was heard from: online again if it was offline.
    pub(super) fn seen(&mut self, now_ms: u64, key: &str) -> Option<FleetEvent> {
        match self.last_seen.get_mut(key) {
            Some(t) => *t = now_ms,
            None => {
                self.last_seen.insert(key.to_owned(), now_ms);
            }
        }
        self.offline
            .remove(key)
            .then_some(FleetEvent::Online { at_ms: now_ms })
    }

    /// Starts watching a device the host knows but has not heard from
    /// since it started (its grace period counts from now).
    pub(super) fn known(&mut self, now_ms: u64, key: &str) {
        self.last_seen.entry(key.to_owned()).or_insert(now_ms);
    }

    /// Its lifecycle state is `to` (a heartbeat or a lifecycle event says
    /// so); an event when it changed.
    pub(super) fn state(
        &mut self,
        now_ms: u64,
        key: &str,
        to: LifecycleState,
    ) -> Option<FleetEvent> {
        let from = self.state.insert(key.to_owned(), to)?;
        (from != to).then_some(FleetEvent::Lifecycle {
            at_ms: now_ms,
            from,
            to,
        })
    }

    /// Its health is `status`; an event when it changed (or is first known
    /// and not normal).
    pub(super) fn health(
        &mut self,
        now_ms: u64,
        key: &str,
        status: HealthStatus,
    ) -> Option<FleetEvent> {
        let was = self.health.insert(key.to_owned(), status);
        (was.unwrap_or(HealthStatus::Normal) != status).then_some(FleetEvent::Health {
            at_ms: now_ms,
            status,
        })
    }

    /// Forgets a device (decommissioned): no longer watched or counted.
    pub(super) fn forget(&mut self, key: &str) {
        self.last_seen.remove(key);
        self.offline.remove(key);
        self.state.remove(key);
        self.health.remove(key);
    }

    /// Devices silent for longer than `window_ms`, now marked offline.
    pub(super) fn sweep(&mut self, now_ms: u64, window_ms: u64) -> Vec<(String, FleetEvent)> {
        let mut out = Vec::new();
        for (key, &seen) in &self.last_seen {
            if now_ms.saturating_sub(seen) > window_ms && !self.offline.contains(key) {
                out.push((
                    key.clone(),
                    FleetEvent::Offline {
                        at_ms: now_ms,
                        last_seen_ms: seen,
                    },
                ));
            }
        }
        for (key, _) in &out {
            self.offline.insert(key.clone());
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether `key` is offline.
    pub(super) fn is_offline(&self, key: &str) -> bool {
        self.offline.contains(key)
    }

    /// Its lifecycle state and health, as far as the host knows.
    pub(super) fn condition(&self, key: &str) -> (Option<LifecycleState>, Option<HealthStatus>) {
        (self.state.get(key).copied(), self.health.get(key).copied())
    }

    /// When `key` was last heard from.
    pub(super) fn last_seen(&self, key: &str) -> Option<u64> {
        self.last_seen.get(key).copied()
    }

    /// Devices watched, offline, by lifecycle state and by health (for the
    /// metrics).
    pub(super) fn counts(&self) -> LivenessCounts {
        let mut c = LivenessCounts {
            watched: self.last_seen.len(),
            offline: self.offline.len(),
            ..LivenessCounts::default()
        };
        for s in self.state.values() {
            *c.by_state.entry(s.name()).or_default() += 1;
        }
        for h in self.health.values() {
            *c.by_health.entry(h.name()).or_default() += 1;
        }
        c
    }
}

/// What [`Liveness::counts`] counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct LivenessCounts {
    pub(super) watched: usize,
    pub(super) offline: usize,
    pub(super) by_state: HashMap<&'static str, usize>,
    pub(super) by_health: HashMap<&'static str, usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_anything_else_is_refused() {
        for ev in [
            FleetEvent::Online { at_ms: 5 },
            FleetEvent::Offline {
                at_ms: 9,
                last_seen_ms: 2,
            },
            FleetEvent::Lifecycle {
                at_ms: 3,
                from: LifecycleState::Active,
                to: LifecycleState::Degraded,
            },
            FleetEvent::Health {
                at_ms: 4,
                status: HealthStatus::Critical,
            },
            FleetEvent::Conflict {
                at_ms: 6,
                path: "hvac.setpoint".into(),
                policy: ConflictPolicy::ManualResolve,
                winner: None,
            },
            FleetEvent::Conflict {
                at_ms: 7,
                path: "mode".into(),
                policy: ConflictPolicy::LatestWins,
                winner: Some(Source::Device),
            },
            FleetEvent::Refused {
                at_ms: 8,
                from: "app",
                reason: "the device is decommissioned".into(),
            },
        ] {
            assert_eq!(FleetEvent::decode(&ev.encode()), Some(ev.clone()));
            assert_eq!(ev.to_json()["kind"], ev.kind());
        }
        assert_eq!(FleetEvent::decode(b"\xa0"), None);
        assert_eq!(FleetEvent::decode(b"\xff"), None);
        let mut bytes = FleetEvent::Online { at_ms: 1 }.encode();
        bytes.push(0);
        assert_eq!(FleetEvent::decode(&bytes), None);
    }

    #[test]
    fn a_silent_device_goes_offline_once_and_comes_back() {
        let mut l = Liveness::default();
        l.known(0, "a");
        assert_eq!(l.seen(1_000, "b"), None);
        assert!(l.sweep(3_000, 3_000).is_empty());
        let gone = l.sweep(3_001, 3_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "a");
        assert!(l.sweep(9_000, 3_000).iter().all(|(k, _)| k == "b"));
        assert!(l.is_offline("a"));
        assert_eq!(
            l.seen(9_500, "a"),
            Some(FleetEvent::Online { at_ms: 9_500 })
        );
        assert!(!l.is_offline("a"));
        l.forget("b");
        assert_eq!(l.counts().watched, 1);
    }
}
