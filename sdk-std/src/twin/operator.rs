//! An operator's requests to the twin host beyond desired state, and their
//! answers: settling a conflict parked for an operator, and listing the
//! fleet a page at a time. Each is a CBOR map with text keys (operators'
//! tools are not constrained devices, and text keys keep the messages
//! readable in `lanyard decode`); see `docs/wire-format.md`.

use lanyard_core::agent::health::HealthStatus;
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::shadow::Source;
use minicbor::{Decoder, Encoder};

use crate::text_map::{each_text_key, read_text_map};

/// Devices in one page of a listing at most: a page stays far below the
/// largest message (each summary is about 150 bytes).
pub const MAX_LISTING_PAGE: usize = 200;

/// Settle the conflict parked at `path` with `winner`'s value (on
/// [`AppTopic::Resolve`](lanyard_core::topic::AppTopic::Resolve); answered
/// on the desired-answer topic with the document's version, or why not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRequest {
    /// Names the answer.
    pub token: String,
    /// The contested property, dotted (`hvac.setpoint`).
    pub path: String,
    /// Whose value stands: the cloud's (the device is sent it) or the
    /// device's (it becomes the desired value).
    pub winner: Source,
}

impl ResolveRequest {
    /// `{"token": tstr, "path": tstr, "winner": "cloud" / "device"}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        // Writing to a Vec cannot fail.
        let _ = e
            .map(3)
            .and_then(|e| e.str("token")?.str(&self.token))
            .and_then(|e| e.str("path")?.str(&self.path))
            .and_then(|e| e.str("winner")?.str(winner_name(self.winner)));
        e.into_writer()
    }

    /// Reads what [`ResolveRequest::encode`] wrote; `None` for anything
    /// else (a missing field, an unknown winner, bytes after it).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut path, mut winner) = (None, None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "path" => path = Some(d.str().ok()?.to_owned()),
                "winner" => winner = winner_named(d.str().ok()?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(ResolveRequest {
            token: token?,
            path: path?,
            winner: winner?,
        })
    }
}

/// `"cloud"` or `"device"`.
pub fn winner_name(s: Source) -> &'static str {
    match s {
        Source::Cloud => "cloud",
        _ => "device",
    }
}

/// The side `name` (`"cloud"` or `"device"`) names.
pub fn winner_named(name: &str) -> Option<Source> {
    match name {
        "cloud" => Some(Source::Cloud),
        "device" => Some(Source::Device),
        _ => None,
    }
}

/// Ask for the fleet's devices whose names sort after `after`, at most
/// `limit` of them (on [`AppTopic::List`](lanyard_core::topic::AppTopic::List),
/// addressed to [`FLEET_KEY`](lanyard_core::topic::FLEET_KEY)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// Names the answer.
    pub token: String,
    /// Where the page starts: after this device (the previous page's
    /// `next`); from the first device when `None`.
    pub after: Option<String>,
    /// Devices wanted, up to [`MAX_LISTING_PAGE`].
    pub limit: usize,
}

impl ListRequest {
    /// `{"token": tstr, ? "after": tstr, "limit": uint}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let n = 2 + u64::from(self.after.is_some());
        let _ = e.map(n).and_then(|e| e.str("token")?.str(&self.token));
        if let Some(a) = &self.after {
            let _ = e.str("after").and_then(|e| e.str(a));
        }
        let _ = e.str("limit").and_then(|e| e.u64(self.limit as u64));
        e.into_writer()
    }

    /// Reads what [`ListRequest::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut after, mut limit) = (None, None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "after" => after = Some(d.str().ok()?.to_owned()),
                "limit" => limit = Some(d.u64().ok()?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(ListRequest {
            token: token?,
            after,
            limit: usize::try_from(limit?).ok()?.min(MAX_LISTING_PAGE),
        })
    }
}

/// What the host knows of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    /// Its name (`{tenant}/{id}` on a host that serves tenants).
    pub device: String,
    /// Its shadow's version (0 once decommissioned).
    pub version: u64,
    /// Whether its reported state matches its desired state.
    pub in_sync: bool,
    /// Conflicts waiting for an operator.
    pub parked: u32,
    /// Properties it refused to take.
    pub refused: u32,
    /// Heard from within its heartbeat window (false when decommissioned).
    pub online: bool,
    /// When it was last heard from (host clock, ms since the epoch); a host
    /// counts from its own start for devices it has not heard since.
    pub last_seen_ms: Option<u64>,
    /// Its lifecycle state, once a heartbeat or lifecycle event said.
    pub state: Option<LifecycleState>,
    /// Its health, once a heartbeat or health report said.
    pub health: Option<HealthStatus>,
    /// The firmware its last registration named (since this host started).
    pub firmware: Option<String>,
    /// Retired: its messages are refused until it is re-provisioned.
    pub decommissioned: bool,
}

impl DeviceSummary {
    fn encode_cbor(
        &self,
        e: &mut Encoder<Vec<u8>>,
    ) -> Result<(), minicbor::encode::Error<core::convert::Infallible>> {
        let n = 7
            + u64::from(self.last_seen_ms.is_some())
            + u64::from(self.state.is_some())
            + u64::from(self.health.is_some())
            + u64::from(self.firmware.is_some());
        e.map(n)?.str("device")?.str(&self.device)?;
        e.str("version")?.u64(self.version)?;
        e.str("in_sync")?.bool(self.in_sync)?;
        e.str("parked")?.u32(self.parked)?;
        e.str("refused")?.u32(self.refused)?;
        e.str("online")?.bool(self.online)?;
        e.str("decommissioned")?.bool(self.decommissioned)?;
        if let Some(t) = self.last_seen_ms {
            e.str("last_seen_ms")?.u64(t)?;
        }
        if let Some(s) = self.state {
            e.str("state")?.str(s.name())?;
        }
        if let Some(h) = self.health {
            e.str("health")?.str(h.name())?;
        }
        if let Some(f) = &self.firmware {
            e.str("firmware")?.str(f)?;
        }
        Ok(())
    }

    fn decode_cbor(d: &mut Decoder<'_>) -> Option<Self> {
        let mut s = DeviceSummary {
            device: String::new(),
            version: 0,
            in_sync: false,
            parked: 0,
            refused: 0,
            online: false,
            last_seen_ms: None,
            state: None,
            health: None,
            firmware: None,
            decommissioned: false,
        };
        let mut named = false;
        each_text_key(d, |key, d| {
            match key {
                "device" => {
                    s.device = d.str().ok()?.to_owned();
                    named = true;
                }
                "version" => s.version = d.u64().ok()?,
                "in_sync" => s.in_sync = d.bool().ok()?,
                "parked" => s.parked = d.u32().ok()?,
                "refused" => s.refused = d.u32().ok()?,
                "online" => s.online = d.bool().ok()?,
                "decommissioned" => s.decommissioned = d.bool().ok()?,
                "last_seen_ms" => s.last_seen_ms = Some(d.u64().ok()?),
                "state" => s.state = Some(super::liveness::state_named(d.str().ok()?)?),
                "health" => s.health = Some(super::liveness::health_named(d.str().ok()?)?),
                "firmware" => s.firmware = Some(d.str().ok()?.to_owned()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        named.then_some(s)
    }

    /// As JSON, with the keys of the CBOR map (for the CLI and bindings).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "device": self.device,
            "version": self.version,
            "in_sync": self.in_sync,
            "parked": self.parked,
            "refused": self.refused,
            "online": self.online,
            "decommissioned": self.decommissioned,
            "last_seen_ms": self.last_seen_ms,
            "state": self.state.map(LifecycleState::name),
            "health": self.health.map(HealthStatus::name),
            "firmware": self.firmware,
        })
    }
}

/// One page of the fleet's devices, in the order of their names (on
/// [`AppTopic::Listing`](lanyard_core::topic::AppTopic::Listing)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The request's token.
    pub token: String,
    /// The devices of this page.
    pub devices: Vec<DeviceSummary>,
    /// Where the next page starts (its request's `after`); `None` on the
    /// last page.
    pub next: Option<String>,
}

impl Listing {
    /// `{"token": tstr, "devices": [* summary], ? "next": tstr}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let write = |e: &mut Encoder<Vec<u8>>| {
            e.map(2 + u64::from(self.next.is_some()))?
                .str("token")?
                .str(&self.token)?;
            e.str("devices")?.array(self.devices.len() as u64)?;
            for s in &self.devices {
                s.encode_cbor(e)?;
            }
            if let Some(n) = &self.next {
                e.str("next")?.str(n)?;
            }
            Ok::<_, minicbor::encode::Error<_>>(())
        };
        // Writing to a Vec cannot fail.
        let _ = write(&mut e);
        e.into_writer()
    }

    /// Reads what [`Listing::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut devices, mut next) = (None, Vec::new(), None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "next" => next = Some(d.str().ok()?.to_owned()),
                "devices" => {
                    let n = d.array().ok()??;
                    if n > MAX_LISTING_PAGE as u64 {
                        return None;
                    }
                    for _ in 0..n {
                        devices.push(DeviceSummary::decode_cbor(d)?);
                    }
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(Listing {
            token: token?,
            devices,
            next,
        })
    }
}

/// The fleet's conflict policies from a JSON object of `{dotted path:
/// policy name}` (names as [`ConflictPolicy::name`] spells them:
/// `cloud_wins`, `device_wins`, `latest_wins`, `manual_resolve`); the key
/// `"*"` sets the policy of every other property (cloud wins if absent).
/// What `lanyard twin --policies` reads and the bindings take.
///
/// ```
/// use lanyard_core::shadow::ConflictPolicy;
/// let json = serde_json::json!({"*": "cloud_wins", "sensors": "device_wins"});
/// let fleet = lanyard_std::twin::fleet_policies_from_json(&json).unwrap();
/// assert_eq!(fleet.default, ConflictPolicy::CloudWins);
/// assert_eq!(fleet.properties()[0].1, ConflictPolicy::DeviceWins);
/// assert!(lanyard_std::twin::fleet_policies_from_json(&serde_json::json!({"a": "maybe"})).is_err());
/// ```
///
/// [`ConflictPolicy::name`]: lanyard_core::shadow::ConflictPolicy::name
pub fn fleet_policies_from_json(
    json: &serde_json::Value,
) -> Result<lanyard_core::shadow::FleetPolicies, String> {
    use lanyard_core::shadow::{ConflictPolicy, FleetPolicies};
    let map = json
        .as_object()
        .ok_or("the policies are a JSON object of {\"dotted.path\": \"policy\"}")?;
    let parse = |path: &str, v: &serde_json::Value| {
        v.as_str()
            .and_then(ConflictPolicy::from_name)
            .ok_or_else(|| {
                let names: Vec<&str> = ConflictPolicy::ALL.iter().map(|p| p.name()).collect();
                format!("{path:?}: {v} is not a policy: one of {}", names.join(", "))
            })
    };
    let mut fleet = FleetPolicies::new(match map.get("*") {
        Some(v) => parse("*", v)?,
        None => ConflictPolicy::CloudWins,
    });
    for (path, v) in map {
        if path != "*" {
            fleet
                .set(path, parse(path, v)?)
                .map_err(|e| format!("{path:?}: {e}"))?;
        }
    }
    Ok(fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_listings_round_trip_and_anything_else_is_refused() {
        let r = ResolveRequest {
            token: "op-1".into(),
            path: "hvac.setpoint".into(),
            winner: Source::Device,
        };
        assert_eq!(ResolveRequest::decode(&r.encode()), Some(r.clone()));
        let mut bad = r.encode();
        bad.push(0);
        assert_eq!(ResolveRequest::decode(&bad), None);
        assert_eq!(ResolveRequest::decode(b"\xa0"), None);

        let l = ListRequest {
            token: "t".into(),
            after: Some("dev-9".into()),
            limit: 50,
        };
        assert_eq!(ListRequest::decode(&l.encode()), Some(l));
        let huge = ListRequest {
            token: "t".into(),
            after: None,
            limit: 1_000_000,
        };
        assert_eq!(
            ListRequest::decode(&huge.encode()).unwrap().limit,
            MAX_LISTING_PAGE
        );

        let page = Listing {
            token: "t".into(),
            devices: vec![
                DeviceSummary {
                    device: "dev-1".into(),
                    version: 4,
                    in_sync: false,
                    parked: 1,
                    refused: 0,
                    online: true,
                    last_seen_ms: Some(17),
                    state: Some(LifecycleState::Active),
                    health: Some(HealthStatus::Warning),
                    firmware: Some("1.2.0".into()),
                    decommissioned: false,
                },
                DeviceSummary {
                    device: "dev-2".into(),
                    version: 0,
                    in_sync: true,
                    parked: 0,
                    refused: 0,
                    online: false,
                    last_seen_ms: None,
                    state: None,
                    health: None,
                    firmware: None,
                    decommissioned: true,
                },
            ],
            next: Some("dev-2".into()),
        };
        assert_eq!(Listing::decode(&page.encode()), Some(page.clone()));
        assert_eq!(page.devices[0].to_json()["health"], "Warning");
        assert_eq!(Listing::decode(b"\xff"), None);
    }
}
