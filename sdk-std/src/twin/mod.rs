//! The twin host: the cloud (or gateway) side of the shadow. It keeps the
//! shadows of many devices, accepts registrations, applies updates from
//! devices and apps with the conflict policies of `lanyard-core`, answers
//! with deltas, and speaks the AWS IoT shadow topics and JSON documents
//! too. [`TwinHost::handle`] is message in, publishes out, so it runs over
//! any transport ([`run_twin`] drives it over one) and tests need no broker.

use lanyard_core::topic::{BY_LEVEL, OPERATOR_WRITES};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::{
    Ack, AckReason, AckStatus, Command, Encodable, HealthMessage, Heartbeat, LifecycleEvent,
    MessageKind, Register, RegisterAccepted, ShadowCapacity, TOPIC_PREFIX, topic, valid_device_id,
};
use lanyard_core::shadow::{ConflictPolicy, FleetPolicies, Shadow};
use lanyard_core::topic::{AppTopic, Topic, filter, topic_of_key};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};

use crate::aws_json;

mod liveness;
mod operator;
mod store;

use crate::transport::{Qos, Transport, TransportError, TransportEvent};
pub use liveness::{DEFAULT_MISSED_HEARTBEATS, FleetEvent};
pub use operator::{
    DeviceSummary, ListRequest, Listing, MAX_LISTING_PAGE, ResolveRequest,
    fleet_policies_from_json, winner_name, winner_named,
};
pub use store::{
    Batch, DirStore, Loaded, PgStore, Put, ShadowStore, SqliteStore, Stored, marker_file,
    shadow_file,
};

/// Leaves per tree of a hosted shadow.
pub const TWIN_LEAVES: usize = 64;
/// Pool bytes per tree of a hosted shadow.
pub const TWIN_POOL: usize = 4096;
/// A hosted shadow.
pub type TwinShadow = Shadow<TWIN_LEAVES, TWIN_POOL>;
type TwinUpdate = ShadowUpdate<TWIN_LEAVES, TWIN_POOL>;

/// Topic suffixes the host serves beyond the device protocol, for apps.
pub mod app_topics {
    use lanyard_core::topic::AppTopic;
    /// App → host: a `shadow-update` whose desired part the host applies.
    pub const SET_DESIRED: &str = AppTopic::SetDesired.suffix();
    /// App → host: ask for the whole document.
    pub const GET: &str = AppTopic::Get.suffix();
    /// Host → app: the whole `shadow-document`.
    pub const DOCUMENT: &str = AppTopic::Document.suffix();
    /// Host → app: the reason an update was refused (UTF-8 text).
    pub const REJECTED: &str = AppTopic::Rejected.suffix();
    /// Host → app: the answer to a desired-state update that carried a
    /// client token, a [`DesiredAnswer`](super::DesiredAnswer).
    pub const ANSWER: &str = AppTopic::DesiredAnswer.suffix();
}

/// The host's answer to an app's desired-state update with a client token:
/// CBOR `{1: token, 2: version}` when applied, `{1: token, 3: reason}` when
/// refused (the device could not hold it, a version conflict, bad input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredAnswer {
    /// The update's client token.
    pub token: String,
    /// The document's version after it, or why it was refused.
    pub outcome: Result<u64, String>,
}

impl DesiredAnswer {
    /// As CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = minicbor::Encoder::new(Vec::new());
        // Encoding into a Vec cannot fail.
        let _ = e.map(2).and_then(|e| e.u8(1)?.str(&self.token));
        let _ = match &self.outcome {
            Ok(v) => e.u8(2).and_then(|e| e.u64(*v)),
            Err(why) => e.u8(3).and_then(|e| e.str(why)),
        };
        e.into_writer()
    }

    /// From CBOR; `None` when it is not an answer.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut d = minicbor::Decoder::new(bytes);
        if d.map().ok()? != Some(2) || d.u8().ok()? != 1 {
            return None;
        }
        let token = d.str().ok()?.to_owned();
        let outcome = match d.u8().ok()? {
            2 => Ok(d.u64().ok()?),
            3 => Err(d.str().ok()?.to_owned()),
            _ => return None,
        };
        (d.position() == bytes.len()).then_some(DesiredAnswer { token, outcome })
    }
}

/// The topics a twin host acts on, of every device.
const HOST_TOPICS: [Topic; 12] = [
    Topic::Device(MessageKind::Register),
    Topic::Device(MessageKind::ShadowUpdate),
    // Its state: that it decommissioned itself, and for liveness.
    Topic::Device(MessageKind::Lifecycle),
    // Liveness: alive, its state and health. Not the health reports: a
    // heartbeat carries the health status too, and health reports come
    // twice as often (every 5 s by default): taking them as well doubled
    // what the broker delivers to the host for no more than a status
    // known 5 s sooner (a fleet of 10,000 saturated the broker).
    Topic::Device(MessageKind::Heartbeat),
    Topic::App(AppTopic::SetDesired),
    Topic::App(AppTopic::Get),
    Topic::App(AppTopic::Reprovision),
    Topic::App(AppTopic::Resolve),
    // Addressed to `FLEET_KEY`: the fleet's inventory.
    Topic::App(AppTopic::List),
    // For the audit log: configurations operators push to devices, and
    // the devices' answers.
    Topic::Device(MessageKind::Config),
    Topic::Device(MessageKind::ConfigAck),
    // Commands, to answer at once those for a device not in service (an
    // app would otherwise wait out its timeout).
    Topic::Device(MessageKind::Command),
];

/// Limits that keep one misbehaving device (or a flood of made-up ones)
/// from exhausting the host. What goes over a limit is refused, counted
/// ([`TwinStats`], and the metrics) and logged; nothing is created for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinLimits {
    /// Devices registered at most (a shadow each, about 40 KB of memory).
    pub max_devices: usize,
    /// Devices registered at most per tenant (hosts that serve tenants).
    pub max_devices_per_tenant: usize,
    /// Messages per second a device may send the host (registrations and
    /// shadow updates), sustained.
    pub device_messages_per_s: u32,
    /// Messages a device may send at once above that rate.
    pub device_burst: u32,
    /// Largest message the host reads (bytes); the largest shadow document
    /// it writes is 64 KiB.
    pub max_message: usize,
}

impl Default for TwinLimits {
    fn default() -> Self {
        TwinLimits {
            max_devices: 100_000,
            max_devices_per_tenant: 100_000,
            device_messages_per_s: 20,
            device_burst: 40,
            max_message: 64 * 1024,
        }
    }
}

/// A device's allowance of messages (a token bucket).
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at_ms: u64,
}

/// A client token of an AWS request may be at most this long (the AWS IoT
/// limit); a longer one is refused, not echoed.
const MAX_CLIENT_TOKEN: usize = 64;

/// What the host subscribes to; `aws` adds the `$aws/things/...` topics
/// (some brokers, rumqttd among them, refuse filters starting with `$`).
pub fn subscriptions(aws: bool) -> Vec<String> {
    let mut v = host_filters(false);
    if aws {
        for op in ["update", "get", "delete"] {
            v.push(format!("$aws/things/+/shadow/{op}"));
        }
    }
    v
}

/// The host's topics as filters, and its operators' writes naming their
/// writer (`.../by/+`).
fn host_filters(tenants: bool) -> Vec<String> {
    let mut v: Vec<String> = HOST_TOPICS
        .iter()
        .map(|t| filter(tenants, *t).to_string())
        .collect();
    for w in OPERATOR_WRITES {
        v.push(format!("{}/{BY_LEVEL}/+", filter(tenants, w)));
    }
    v
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// Bytes.
    pub payload: Vec<u8>,
    /// Delivery.
    pub qos: Qos,
}

/// Counters of the host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TwinStats {
    /// Registrations accepted of devices not yet registered.
    pub registrations: u64,
    /// Registrations again of devices that resumed their saved state in
    /// service after a reboot (they ask for the cloud's time).
    pub reregistrations: u64,
    /// Repeats of a registration already answered (the device retried
    /// before the answer reached it): answered again, not counted above.
    pub registration_retries: u64,
    /// Updates applied (device and app, CBOR and JSON).
    pub updates: u64,
    /// Updates refused (undecodable, version conflict, capacity).
    pub rejected: u64,
    /// Deltas published.
    pub deltas: u64,
    /// Conflicts, by policy (`ConflictPolicy::ALL` order).
    pub conflicts: [u64; 4],
    /// Writes on the wrong side: desired state from a device's own topic,
    /// reported state from an app's.
    pub wrong_direction: u64,
    /// Operators' writes from identities not in the host's operator list
    /// (refused).
    pub unauthorised: u64,
    /// Messages about devices that never registered (nothing is created
    /// for them).
    pub unregistered: u64,
    /// Registrations refused over [`TwinLimits::max_devices`] or
    /// [`TwinLimits::max_devices_per_tenant`].
    pub over_device_limit: u64,
    /// Device messages dropped over the device's rate.
    pub rate_limited: u64,
    /// Messages over [`TwinLimits::max_message`] dropped.
    pub oversize: u64,
    /// Messages from or about decommissioned devices refused.
    pub decommissioned_refused: u64,
    /// Devices decommissioned.
    pub decommissioned: u64,
    /// Times a device was marked offline (it missed its heartbeats).
    pub went_offline: u64,
    /// Stored shadows found damaged at start and set aside.
    pub damaged_records: u64,
}

/// The shadows of a fleet.
pub struct TwinHost {
    shadows: HashMap<String, Box<TwinShadow>>,
    /// Who is alive, in what state and health.
    liveness: liveness::Liveness,
    /// Heartbeat intervals a device may miss before it is offline.
    missed_heartbeats: u32,
    /// The fleet's audit log, committed with each flush.
    audit: Option<crate::audit::AuditLog>,
    /// Where shadows are kept; `None` in memory only.
    store: Option<Box<dyn ShadowStore>>,
    /// What the messages handled since the last [`TwinHost::flush`]
    /// changed: the devices whose shadow to write, those decommissioned
    /// and re-provisioned.
    dirty: HashSet<String>,
    retired: Vec<(String, u64)>,
    reinstated: Vec<String>,
    /// Each shadow's version as stored (the compare-and-set of the next
    /// write).
    stored: HashMap<String, u64>,
    /// Writes wait for [`TwinHost::flush`] ([`run_twin`] flushes once per
    /// batch of messages) instead of being made after every message.
    batching: bool,
    fleet_config: DeviceConfig,
    stats: TwinStats,
    rng: u64,
    metrics: Option<crate::metrics::Metrics>,
    /// Tenants served, when topics are namespaced by tenant.
    tenants: Option<Vec<String>>,
    /// The fleet's conflict policies.
    policies: FleetPolicies,
    /// The boot count of each device's last registration, to tell a retry
    /// from a new registration.
    boots: HashMap<String, u64>,
    /// What each device said it holds when it registered (not persisted:
    /// learnt again at the next registration).
    capacities: HashMap<String, ShadowCapacity>,
    /// The firmware each device's last registration named (not persisted:
    /// learnt again at the next registration).
    firmware: HashMap<String, String>,
    /// Shadows whose sync the core held back after a conflict, and until
    /// when ([`TwinHost::settle_deferred`]).
    deferred: HashMap<String, u64>,
    limits: TwinLimits,
    /// Each registered device's message allowance.
    allowances: HashMap<String, Allowance>,
    /// Devices decommissioned (persisted as a marker file each): nothing
    /// of theirs is accepted until an operator re-provisions them.
    decommissioned: HashSet<String>,
    /// The AWS IoT shadow topics are served: changes made through the
    /// Lanyard topics are published on them too.
    aws: bool,
    /// Subscriptions shared with the other hosts of this group
    /// (`$share/{group}/...`): each message goes to one of them.
    share_group: Option<String>,
    /// The identities whose writes this host takes (`None`: every writer
    /// the broker lets through).
    operators: Option<Vec<String>>,
    /// Who wrote the message being handled, as its topic names them
    /// (`.../by/{identity}`), for the audit log.
    writer: Option<String>,
    /// The last configuration passed on to each device for a named
    /// operator, already recorded: not recorded again when it comes back on
    /// the device's own topic.
    relayed_configs: HashMap<String, u64>,
    /// The operator who sent each device a decommission command, until the
    /// device reports it done.
    decommission_asked: HashMap<String, String>,
}

/// A payload's fingerprint, to know a message again.
fn payload_hash(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

impl TwinHost {
    /// A host that keeps its shadows in memory only.
    pub fn in_memory(fleet_config: DeviceConfig) -> Self {
        TwinHost {
            shadows: HashMap::new(),
            store: None,
            dirty: HashSet::new(),
            retired: Vec::new(),
            reinstated: Vec::new(),
            stored: HashMap::new(),
            batching: false,
            fleet_config,
            stats: TwinStats::default(),
            rng: 0x2545_f491_4f6c_dd1d,
            metrics: None,
            tenants: None,
            capacities: HashMap::new(),
            firmware: HashMap::new(),
            deferred: HashMap::new(),
            policies: FleetPolicies::default(),
            boots: HashMap::new(),
            limits: TwinLimits::default(),
            allowances: HashMap::new(),
            decommissioned: HashSet::new(),
            aws: false,
            audit: None,
            liveness: liveness::Liveness::default(),
            missed_heartbeats: liveness::DEFAULT_MISSED_HEARTBEATS,
            share_group: None,
            operators: None,
            writer: None,
            relayed_configs: HashMap::new(),
            decommission_asked: HashMap::new(),
        }
    }

    /// Takes desired state, conflict resolutions and re-provisionings only
    /// from `operators`: each such write names its writer at the end of its
    /// topic (`.../by/{identity}`, which the broker's ACL makes the
    /// writer's own: [`crate::acl`]), and one from anyone else is refused
    /// with the reason, answered to its token and counted
    /// ([`TwinStats::unauthorised`]). The audit log records who wrote.
    pub fn with_operators(mut self, operators: &[&str]) -> Self {
        self.operators = Some(operators.iter().map(|o| (*o).to_owned()).collect());
        self
    }

    /// Why a write of kind `t` by `by` is refused, if it is.
    fn unauthorised(&self, t: Topic, by: Option<&str>) -> Option<String> {
        let operators = self.operators.as_ref()?;
        // The device's own command and configuration topics carry what
        // this host passes on, and what identities the broker trusts
        // write there.
        if !OPERATOR_WRITES.contains(&t) || (matches!(t, Topic::Device(_)) && by.is_none()) {
            return None;
        }
        crate::acl::operator_refusal(
            operators,
            by,
            t.suffix(),
            &format!(".../{}/{BY_LEVEL}/{{identity}}", t.suffix()),
        )
    }

    /// Refuses write `t` from outside the operator list: the writer is
    /// answered on its token when the request carries one, a command with
    /// its acknowledgement, a configuration with its config-ack.
    fn refuse_unauthorised(
        &mut self,
        now_ms: u64,
        key: &str,
        t: Topic,
        payload: &[u8],
        why: String,
    ) -> Vec<Publish> {
        self.stats.unauthorised += 1;
        tracing::warn!(device = key, "write refused: {why}");
        match t {
            Topic::Device(MessageKind::Command) => {
                let Ok(cmd) = Command::decode(payload) else {
                    return Vec::new();
                };
                let ack = Ack {
                    command_id: cmd.id,
                    status: AckStatus::Rejected,
                    reason: Some(AckReason::NotAllowed),
                    detail: Some(&why),
                    result: None,
                    time_ms: now_ms,
                };
                return vec![encoded(key, MessageKind::Ack, &ack)];
            }
            Topic::Device(MessageKind::Config) => {
                let Some((version, _)) = config_fields(payload) else {
                    return Vec::new();
                };
                let ack = lanyard_core::agent::messages::ConfigAck {
                    version,
                    outcome: lanyard_core::agent::messages::ConfigOutcome::Rejected,
                    current_version: 0,
                    field: None,
                    reason: Some(&why),
                    time_ms: now_ms,
                };
                return vec![encoded(key, MessageKind::ConfigAck, &ack)];
            }
            _ => {}
        }
        let token = match t {
            Topic::App(AppTopic::Resolve) => ResolveRequest::decode(payload).map(|r| r.token),
            Topic::App(AppTopic::Reprovision) => {
                minicbor::decode::<&str>(payload).ok().map(str::to_owned)
            }
            _ => {
                let mut update: Box<TwinUpdate> = Box::new(ShadowUpdate::new(0));
                update
                    .decode_into(payload)
                    .ok()
                    .and(update.client_token.as_deref().map(str::to_owned))
            }
        };
        let mut out = vec![rejected(key, &why)];
        out.extend(token.map(|t| answer_to(key, &t, Err(why))));
        out
    }

    /// Publishes every change on the AWS IoT shadow topics too
    /// (`update/delta`, `update/documents`), as [`run_twin`] does when it
    /// serves them, so that a subscriber of either format sees every
    /// change, whichever format made it.
    pub fn with_aws_topics(mut self, on: bool) -> Self {
        self.aws = on;
        self
    }

    /// Records registrations, decommissionings, re-provisionings and
    /// desired-state writes in the audit log at `path` (see
    /// [`crate::audit`]), each batch's entries made durable by the same
    /// [`TwinHost::flush`] as its shadows. A broken log is refused.
    pub fn with_audit(mut self, path: &std::path::Path) -> Result<Self, crate::audit::AuditError> {
        self.audit = Some(crate::audit::AuditLog::open(path)?);
        Ok(self)
    }

    /// Marks a device offline once it has missed `n` of the fleet's
    /// heartbeat intervals (3 by default).
    pub fn with_missed_heartbeats(mut self, n: u32) -> Self {
        self.missed_heartbeats = n.max(1);
        self
    }

    /// Marks offline the devices silent for too long; returns the events
    /// to publish. [`run_twin`] calls it every second.
    pub fn check_liveness(&mut self, now_ms: u64) -> Vec<Publish> {
        let window = self
            .fleet_config
            .heartbeat_ms
            .saturating_mul(u64::from(self.missed_heartbeats));
        let gone = self.liveness.sweep(now_ms, window);
        for (key, _) in &gone {
            tracing::info!(device = key.as_str(), "device offline");
        }
        self.stats.went_offline += gone.len() as u64;
        gone.into_iter()
            .map(|(key, ev)| fleet_event(&key, ev))
            .collect()
    }

    /// Settles the shadows whose sync was held back after a conflict (the
    /// core's backoff) and whose wait is over: a device changed again
    /// meanwhile is not left without its delta until its next message.
    /// Returns what to publish; [`run_twin`] calls it every second.
    pub fn settle_deferred(&mut self, now_ms: u64) -> Vec<Publish> {
        let due: Vec<String> = self
            .deferred
            .iter()
            .filter(|(_, until)| **until <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in due {
            self.deferred.remove(&key);
            if self.shadows.contains_key(&key) {
                out.extend(self.settle(now_ms, &key, None, None));
                self.persist(&key);
            }
        }
        out
    }

    /// Whether the host has marked device `key` offline.
    pub fn is_offline(&self, key: &str) -> bool {
        self.liveness.is_offline(key)
    }

    /// When device `key` was last heard from (host clock, ms).
    pub fn last_seen(&self, key: &str) -> Option<u64> {
        self.liveness.last_seen(key)
    }

    /// What a registered device's message says of its liveness, state and
    /// health: the events to publish.
    fn watch(
        &mut self,
        now_ms: u64,
        key: &str,
        kind: MessageKind,
        payload: &[u8],
    ) -> Vec<FleetEvent> {
        let mut events: Vec<FleetEvent> = self.liveness.seen(now_ms, key).into_iter().collect();
        match kind {
            MessageKind::Heartbeat => {
                if let Ok(hb) = Heartbeat::decode(payload) {
                    events.extend(self.liveness.state(now_ms, key, hb.state));
                    events.extend(self.liveness.health(now_ms, key, hb.health));
                }
            }
            // Not subscribed by `run_twin` (see `HOST_TOPICS`); taken when
            // handed to `handle` directly.
            MessageKind::Health => {
                if let Ok(h) = HealthMessage::decode(payload) {
                    events.extend(self.liveness.health(now_ms, key, h.report.status));
                }
            }
            MessageKind::Lifecycle => {
                if let Ok(ev) = LifecycleEvent::decode(payload) {
                    events.extend(self.liveness.state(now_ms, key, ev.to));
                }
            }
            _ => {}
        }
        events
    }

    fn audit(
        &mut self,
        now_ms: u64,
        actor: &str,
        action: crate::audit::AuditAction,
        key: &str,
        detail: serde_json::Value,
    ) {
        // An operator's write names who made it.
        let actor = match (&self.writer, actor) {
            (Some(who), "operator" | "app") => who.as_str(),
            _ => actor,
        };
        if let Some(log) = &mut self.audit {
            log.record(now_ms, actor, action, Some(key), detail);
        }
    }

    /// Shares the host's subscriptions with the other hosts of `group`
    /// (`$share/{group}/...`, which mosquitto supports): the broker gives
    /// each message to one of them. Use it with a store they all write
    /// ([`PgStore`]), so that each host reads what the others changed.
    pub fn with_share_group(mut self, group: &str) -> Result<Self, crate::InvalidTenant> {
        // The same rule as a tenant name: one topic level, nothing special.
        crate::check_tenant(group)?;
        self.share_group = Some(group.to_owned());
        Ok(self)
    }

    /// Enforces `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: TwinLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves tenants' namespaces (`lanyard/v1/{tenant}/{device-id}/...`)
    /// instead of the shared one: only `tenants`' topics are acted on; a
    /// message under any other tenant is refused and counted. A device is
    /// then named `{tenant}/{device-id}` ([`TwinHost::shadow`], the app
    /// client) and its shadow is kept in a directory per tenant. The AWS
    /// IoT topics, which have no tenants, are not served.
    pub fn with_tenants(mut self, tenants: &[&str]) -> Result<Self, crate::InvalidTenant> {
        for t in tenants {
            crate::check_tenant(t)?;
        }
        self.tenants = Some(tenants.iter().map(|t| t.to_string()).collect());
        Ok(self)
    }

    /// The topic filters this host needs; `aws` adds the AWS IoT topics
    /// (not served to tenants); with a share group, each is
    /// `$share/{group}/{filter}`.
    pub fn subscriptions(&self, aws: bool) -> Vec<String> {
        let plain = match &self.tenants {
            None => subscriptions(aws),
            Some(_) => host_filters(true),
        };
        match &self.share_group {
            None => plain,
            Some(g) => plain
                .into_iter()
                .map(|f| format!("$share/{g}/{f}"))
                .collect(),
        }
    }

    /// A host that persists every shadow in `dir` ([`DirStore`]: one file
    /// per device, written atomically and sealed with a checksum) and loads
    /// those already there. See [`TwinHost::with_store`].
    pub fn open(dir: impl Into<PathBuf>, fleet_config: DeviceConfig) -> io::Result<Self> {
        Self::with_store(Box::new(DirStore::open(dir)?), fleet_config)
    }

    /// A host that keeps its shadows in an SQLite database at `path`
    /// ([`SqliteStore`]). See [`TwinHost::with_store`].
    pub fn open_sqlite(path: impl AsRef<Path>, fleet_config: DeviceConfig) -> io::Result<Self> {
        Self::with_store(Box::new(SqliteStore::open(path)?), fleet_config)
    }

    /// A host that keeps its shadows in the PostgreSQL database at `url`,
    /// shared with other hosts ([`PgStore`]). See [`TwinHost::with_store`].
    pub fn open_postgres(url: &str, fleet_config: DeviceConfig) -> io::Result<Self> {
        Self::with_store(Box::new(PgStore::connect(url)?), fleet_config)
    }

    /// A host that keeps its shadows in `store` and loads those already
    /// there. A damaged record does not stop the host: the store sets it
    /// aside, it is logged as an error and counted, and its device keeps
    /// its registration with an empty shadow (the device's next report
    /// fills the reported side again; desired state set before is lost and
    /// must be set again).
    pub fn with_store(
        mut store: Box<dyn ShadowStore>,
        fleet_config: DeviceConfig,
    ) -> io::Result<Self> {
        let mut host = Self::in_memory(fleet_config);
        let loaded = store.load()?;
        for key in loaded.decommissioned {
            host.decommissioned.insert(key);
        }
        for (key, read) in loaded.shadows {
            let decoded = read.and_then(|b| {
                TwinShadow::decode(&b, host.policies.default).map_err(|e| e.to_string())
            });
            let shadow = match decoded {
                Ok(s) => {
                    host.stored.insert(key.clone(), s.version());
                    Box::new(s)
                }
                Err(why) => {
                    host.stats.damaged_records += 1;
                    tracing::error!(
                        device = %key,
                        error = %why,
                        "damaged shadow set aside; the device keeps its registration with an empty shadow"
                    );
                    host.dirty.insert(key.clone());
                    Box::new(TwinShadow::new(host.policies.default))
                }
            };
            // The fleet's policies are set on every shadow by
            // `with_policies`, on those loaded here too.
            host.shadows.insert(key, shadow);
        }
        host.store = Some(store);
        // The empty shadows of damaged records, written now.
        host.flush()?;
        Ok(host)
    }

    /// Writes what the messages handled since the last flush changed, in
    /// one step of the store. Without [`TwinHost::batching`] every message
    /// is flushed as it is handled. A write made from a stale copy (another
    /// host changed the shadow meanwhile) is refused by the store; the
    /// host then reads the stored shadow again and returns its key, so
    /// that the caller handles that device's messages again on the fresh
    /// copy ([`run_twin`] does, and drops the answers it had made).
    pub fn flush(&mut self) -> io::Result<Vec<String>> {
        if let Some(log) = &mut self.audit {
            log.commit()?;
        }
        let Some(store) = self.store.as_mut() else {
            self.dirty.clear();
            self.retired.clear();
            self.reinstated.clear();
            return Ok(Vec::new());
        };
        let mut batch = Batch::default();
        let mut buf = vec![0u8; 64 * 1024];
        for key in self.dirty.drain() {
            let Some(shadow) = self.shadows.get(&key) else {
                continue;
            };
            match shadow.encode(&mut buf) {
                Ok(n) => batch.puts.push(Put {
                    replaces: self.stored.get(&key).copied(),
                    version: shadow.version(),
                    bytes: buf[..n].to_vec(),
                    key,
                }),
                Err(e) => tracing::error!(device = %key, error = %e, "could not encode shadow"),
            }
        }
        batch.decommissioned = std::mem::take(&mut self.retired);
        batch.reprovisioned = std::mem::take(&mut self.reinstated);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let conflicts = store.commit(&batch)?;
        for p in &batch.puts {
            if !conflicts.contains(&p.key) {
                self.stored.insert(p.key.clone(), p.version);
            }
        }
        for (key, _) in &batch.decommissioned {
            self.stored.remove(key);
        }
        let mut fresh = Vec::with_capacity(conflicts.len());
        for key in &conflicts {
            tracing::warn!(device = %key, "shadow changed by another host meanwhile: read again");
            fresh.push(store.reload(key)?);
        }
        for (key, stored) in conflicts.iter().zip(fresh) {
            self.take_stored(key, stored);
        }
        Ok(conflicts)
    }

    /// Makes what the store holds for `key` this host's copy.
    fn take_stored(&mut self, key: &str, stored: Stored) {
        self.shadows.remove(key);
        self.stored.remove(key);
        self.decommissioned.remove(key);
        match stored {
            Stored::Shadow(version, bytes) => {
                if let Ok(s) = TwinShadow::decode(&bytes, self.policies.default) {
                    let mut s = Box::new(s);
                    let _ = self.policies.apply_to(&mut s);
                    self.shadows.insert(key.to_owned(), s);
                    self.stored.insert(key.to_owned(), version);
                }
            }
            Stored::Decommissioned => {
                self.decommissioned.insert(key.to_owned());
            }
            Stored::Absent => {}
        }
    }

    /// With a store other hosts write too: reads `key` from it when this
    /// host does not know the device, or knows it as decommissioned (it
    /// may have been registered, or re-provisioned, through another host),
    /// or is about to answer a `get` (another host may have changed it).
    fn refresh(&mut self, key: &str, for_get: bool) {
        let Some(store) = self.store.as_mut().filter(|s| s.shared()) else {
            return;
        };
        if !for_get && self.shadows.contains_key(key) && !self.decommissioned.contains(key) {
            return;
        }
        match store.reload(key) {
            Ok(stored) => self.take_stored(key, stored),
            Err(e) => tracing::error!(device = key, error = %e, "could not read the store"),
        }
    }

    /// The device a topic is about, as this host names it (its id, or
    /// `{tenant}/{id}`), whichever way in; `None` for a topic it does not
    /// serve.
    pub fn key_of(&self, topic_name: &str) -> Option<String> {
        if let Some(rest) = topic_name.strip_prefix("$aws/things/") {
            return Some(rest.split_once("/shadow/")?.0.to_owned());
        }
        let rest = topic_name.strip_prefix(TOPIC_PREFIX)?;
        let levels = if self.tenants.is_some() { 2 } else { 1 };
        let mut parts = rest.splitn(levels + 1, '/');
        let key: Vec<&str> = parts.by_ref().take(levels).collect();
        (key.len() == levels && parts.next().is_some()).then(|| key.join("/"))
    }

    /// Writes wait for [`TwinHost::flush`] when `on` (what [`run_twin`]
    /// does: one write of the store per batch of messages, before any of
    /// them is acknowledged or answered).
    pub fn batching(&mut self, on: bool) {
        self.batching = on;
    }

    /// Exports the counters to `metrics` after every message.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes the counters to the metrics given to
    /// [`TwinHost::with_metrics`] ([`run_twin`] does after every message).
    pub fn export(&self) {
        let Some(m) = &self.metrics else { return };
        let s = self.stats;
        m.set(
            "lanyard_twin_shadows",
            "Shadows hosted",
            vec![],
            self.shadows.len() as f64,
        );
        let live = self.liveness.counts();
        m.set(
            "lanyard_twin_devices_offline",
            "Registered devices that missed their heartbeats",
            vec![],
            live.offline as f64,
        );
        m.set_total(
            "lanyard_twin_went_offline_total",
            "Times a device was marked offline",
            vec![],
            s.went_offline as f64,
        );
        // Every state and status, so that one that empties reads 0.
        for state in (0..16).filter_map(LifecycleState::from_code) {
            let n = live.by_state.get(state.name()).copied().unwrap_or(0);
            m.set(
                "lanyard_twin_devices",
                "Registered devices by lifecycle state (from their heartbeats)",
                vec![("state", state.name().into())],
                n as f64,
            );
        }
        for status in (0..3).filter_map(lanyard_core::agent::health::HealthStatus::from_code) {
            let n = live.by_health.get(status.name()).copied().unwrap_or(0);
            m.set(
                "lanyard_twin_devices_by_health",
                "Registered devices by health status",
                vec![("status", status.name().into())],
                n as f64,
            );
        }
        m.set_total(
            "lanyard_twin_registrations_total",
            "Registrations accepted",
            vec![],
            s.registrations as f64,
        );
        m.set_total(
            "lanyard_twin_reregistrations_total",
            "Registrations again after a device's resumed boot",
            vec![],
            s.reregistrations as f64,
        );
        m.set_total(
            "lanyard_twin_registration_retries_total",
            "Registrations repeated before the answer reached the device",
            vec![],
            s.registration_retries as f64,
        );
        m.set_total(
            "lanyard_twin_updates_total",
            "Shadow updates applied",
            vec![],
            s.updates as f64,
        );
        m.set_total(
            "lanyard_twin_rejected_total",
            "Messages refused",
            vec![],
            s.rejected as f64,
        );
        m.set_total(
            "lanyard_twin_deltas_total",
            "Deltas published",
            vec![],
            s.deltas as f64,
        );
        for (reason, n) in [
            ("wrong_direction", s.wrong_direction),
            ("unregistered", s.unregistered),
            ("over_device_limit", s.over_device_limit),
            ("rate_limited", s.rate_limited),
            ("oversize", s.oversize),
            ("decommissioned", s.decommissioned_refused),
        ] {
            m.set_total(
                "lanyard_twin_refused_total",
                "Messages refused, by reason",
                vec![("reason", reason.into())],
                n as f64,
            );
        }
        m.set_total(
            "lanyard_twin_decommissioned_total",
            "Devices decommissioned",
            vec![],
            s.decommissioned as f64,
        );
        m.set_total(
            "lanyard_twin_damaged_records_total",
            "Stored shadows found damaged and set aside",
            vec![],
            s.damaged_records as f64,
        );
        for (p, n) in ConflictPolicy::ALL.iter().zip(s.conflicts) {
            m.set_total(
                "lanyard_twin_conflicts_total",
                "Conflicts, by policy",
                vec![("policy", p.name().into())],
                n as f64,
            );
        }
    }

    /// Counters.
    pub fn stats(&self) -> TwinStats {
        self.stats
    }

    /// A device's shadow.
    pub fn shadow(&self, device_id: &str) -> Option<&TwinShadow> {
        self.shadows.get(device_id).map(|b| &**b)
    }

    /// Devices with a shadow.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.shadows.keys().map(String::as_str)
    }

    /// The shadow of a registered device. Shadows are made by registration
    /// only ([`TwinHost::register`]); every other way in checks first.
    fn shadow_mut(&mut self, id: &str) -> &mut TwinShadow {
        let policies = &self.policies;
        self.shadows.entry(id.to_owned()).or_insert_with(|| {
            let mut s = Box::new(TwinShadow::new(policies.default));
            // Each path was checked when the policy was set, and there are
            // no more of them than a shadow holds.
            let _ = policies.apply_to(&mut s);
            s
        })
    }

    /// Whether device `key` is decommissioned (nothing of it is accepted
    /// until [`TwinHost::reprovision`]).
    pub fn is_decommissioned(&self, key: &str) -> bool {
        self.decommissioned.contains(key)
    }

    /// Accepts decommissioned device `key` again: it may register anew
    /// (with a new shadow). `false` when it was not decommissioned.
    pub fn reprovision(&mut self, key: &str) -> bool {
        if !self.decommissioned.remove(key) {
            return false;
        }
        self.reinstated.push(key.to_owned());
        self.written();
        tracing::info!(device = key, "device re-provisioned");
        true
    }

    /// Device `key` decommissioned itself: its shadow and everything known
    /// of it go; a marker keeps the fact across restarts.
    fn retire(&mut self, now_ms: u64, key: &str) {
        // Its last document goes into the audit entry: the shadow leaves
        // the store, its final state stays on record.
        let last = self.shadows.remove(key).and_then(|s| {
            self.audit
                .as_ref()
                .and_then(|_| aws_json::get_document(&s, now_ms, None).ok())
                .and_then(|doc| serde_json::to_value(doc).ok())
        });
        self.capacities.remove(key);
        self.firmware.remove(key);
        self.deferred.remove(key);
        self.boots.remove(key);
        self.allowances.remove(key);
        self.liveness.forget(key);
        self.decommissioned.insert(key.to_owned());
        self.stats.decommissioned += 1;
        self.dirty.remove(key);
        self.retired.push((key.to_owned(), now_ms));
        let asked_by = self.decommission_asked.remove(key);
        self.audit(
            now_ms,
            key,
            crate::audit::AuditAction::Decommissioned,
            key,
            serde_json::json!({"final_shadow": last, "requested_by": asked_by}),
        );
        self.written();
        tracing::info!(device = key, "device decommissioned");
    }

    /// Takes one message from device `key`'s allowance; `false` (counted)
    /// when it has none left. Devices not registered have no allowance
    /// kept for them (their messages are refused or bounded otherwise).
    fn allow(&mut self, now_ms: u64, key: &str) -> bool {
        let (rate, burst) = (
            f64::from(self.limits.device_messages_per_s),
            f64::from(self.limits.device_burst.max(1)),
        );
        let Some(a) = self.allowances.get_mut(key) else {
            return true;
        };
        let elapsed = now_ms.saturating_sub(a.at_ms) as f64 / 1000.0;
        a.tokens = (a.tokens + elapsed * rate).min(burst);
        a.at_ms = now_ms;
        if a.tokens >= 1.0 {
            a.tokens -= 1.0;
            true
        } else {
            self.stats.rate_limited += 1;
            tracing::debug!(device = key, "message over the device's rate dropped");
            false
        }
    }

    /// Settles conflicts with `policies`, on the shadows it has and the
    /// ones it makes (the default: the cloud wins everywhere).
    pub fn with_policies(mut self, policies: FleetPolicies) -> Self {
        for s in self.shadows.values_mut() {
            let _ = policies.apply_to(s);
        }
        self.policies = policies;
        self
    }

    /// Device `id`'s shadow changed: written at the next flush.
    fn persist(&mut self, id: &str) {
        self.dirty.insert(id.to_owned());
        self.written();
    }

    /// Flushes now unless batching.
    fn written(&mut self) {
        if !self.batching {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "could not write shadows");
            }
        }
    }

    fn jitter(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng as u32
    }

    /// Handles one message; returns what to publish.
    pub fn handle(&mut self, now_ms: u64, topic_name: &str, payload: &[u8]) -> Vec<Publish> {
        self.writer = None;
        if payload.len() > self.limits.max_message {
            self.stats.oversize += 1;
            tracing::warn!(
                topic = topic_name,
                bytes = payload.len(),
                "oversize message dropped"
            );
            return Vec::new();
        }
        if let Some(rest) = topic_name.strip_prefix("$aws/things/") {
            if self.tenants.is_some() {
                return Vec::new();
            }
            return match rest.split_once("/shadow/") {
                Some((thing, op)) if valid_device_id(thing) => {
                    self.refresh(thing, op == "get");
                    self.aws(now_ms, thing, op, payload)
                }
                _ => Vec::new(),
            };
        }
        let Some(rest) = topic_name.strip_prefix(TOPIC_PREFIX) else {
            return Vec::new();
        };
        // `key` names the device here: its id, or `{tenant}/{id}`.
        let (key, id, suffix) = match &self.tenants {
            None => {
                let Some((id, suffix)) = rest.split_once('/') else {
                    return Vec::new();
                };
                (id.to_owned(), id, suffix)
            }
            Some(tenants) => {
                let Some((tenant, after)) = rest.split_once('/') else {
                    return Vec::new();
                };
                let Some((id, suffix)) = after.split_once('/') else {
                    return Vec::new();
                };
                if !tenants.iter().any(|t| t == tenant) {
                    // Not a tenant of this host: nothing is created for it.
                    self.stats.rejected += 1;
                    return Vec::new();
                }
                (format!("{tenant}/{id}"), id, suffix)
            }
        };
        if id == lanyard_core::topic::FLEET_KEY && suffix == AppTopic::List.suffix() {
            let tenant = key.strip_suffix(id).unwrap_or("");
            return self.list_request(tenant, payload);
        }
        // Also what keeps the host's own start-up probes (a reserved id)
        // from being acted on.
        if !valid_device_id(id) {
            return Vec::new();
        }
        let (suffix, by) = lanyard_core::topic::split_writer(suffix);
        let Some(t) = Topic::from_suffix(suffix) else {
            return Vec::new();
        };
        // Only an operator's write names its writer.
        if by.is_some() && !OPERATOR_WRITES.contains(&t) {
            return Vec::new();
        }
        let key = key.as_str();
        if let Some(why) = self.unauthorised(t, by) {
            return self.refuse_unauthorised(now_ms, key, t, payload, why);
        }
        self.writer = by.map(str::to_owned);
        if let (Some(_), Topic::Device(kind)) = (by, t) {
            // An operator's command or configuration: recorded (a
            // configuration), and passed on to the device's own topic.
            if kind == MessageKind::Config {
                self.config_pushed(now_ms, key, payload);
                self.relayed_configs
                    .insert(key.to_owned(), payload_hash(payload));
            }
            // Who asked for a decommissioning, for its audit entry when the
            // device reports it.
            if let (Some(who), Ok(cmd)) = (by, Command::decode(payload)) {
                if cmd.name == "decommission" && kind == MessageKind::Command {
                    self.decommission_asked
                        .insert(key.to_owned(), who.to_owned());
                }
            }
            return vec![Publish {
                topic: topic(key, kind).to_string(),
                payload: payload.to_vec(),
                qos: Qos::AtLeastOnce,
            }];
        }
        self.refresh(key, t == Topic::App(AppTopic::Get));
        if t == Topic::App(AppTopic::Reprovision) {
            return self.reprovision_request(now_ms, key, payload);
        }
        if t == Topic::Device(MessageKind::Command) {
            return self.command_seen(now_ms, key, payload);
        }
        if t == Topic::Device(MessageKind::Config) {
            // An operator's push, on its way to the device: recorded, not
            // a sign of the device's life nor a use of its allowance. One
            // this host passed on was recorded with its writer.
            if self.relayed_configs.get(key) == Some(&payload_hash(payload)) {
                self.relayed_configs.remove(key);
            } else {
                self.config_pushed(now_ms, key, payload);
            }
            return Vec::new();
        }
        if self.decommissioned.contains(key) {
            self.stats.decommissioned_refused += 1;
            tracing::debug!(
                device = key,
                topic = topic_name,
                "decommissioned device: refused"
            );
            const WHY: &str = "the device is decommissioned";
            let from_app = matches!(t, Topic::App(_));
            let mut out = vec![refusal(now_ms, key, from_app, WHY.to_owned())];
            match (t, ResolveRequest::decode(payload)) {
                // A resolve names its answer: the operator waiting for it
                // is told, and no other app's wait ends on it.
                (Topic::App(AppTopic::Resolve), Some(req)) => {
                    out.push(answer_to(key, &req.token, Err(WHY.to_owned())));
                }
                (Topic::App(AppTopic::SetDesired | AppTopic::Get | AppTopic::Resolve), _) => {
                    out.push(rejected(key, WHY));
                }
                _ => {}
            }
            return out;
        }
        if matches!(t, Topic::Device(_)) && !self.allow(now_ms, key) {
            return Vec::new();
        }
        let events = match t {
            Topic::Device(kind) if self.shadows.contains_key(key) => {
                self.watch(now_ms, key, kind, payload)
            }
            _ => Vec::new(),
        };
        let mut out = match t {
            Topic::Device(MessageKind::Register) => self.register(now_ms, key, id, payload),
            Topic::Device(MessageKind::ShadowUpdate) => {
                self.cbor_update(now_ms, key, payload, false)
            }
            Topic::Device(MessageKind::Lifecycle) => {
                if let Ok(ev) = LifecycleEvent::decode(payload) {
                    if ev.to == LifecycleState::Decommissioned && self.shadows.contains_key(key) {
                        self.retire(now_ms, key);
                    }
                }
                Vec::new()
            }
            Topic::Device(MessageKind::ConfigAck) if self.shadows.contains_key(key) => {
                self.config_acknowledged(now_ms, key, payload);
                Vec::new()
            }
            Topic::App(AppTopic::SetDesired) => self.cbor_update(now_ms, key, payload, true),
            Topic::App(AppTopic::Resolve) => self.resolve_request(now_ms, key, payload),
            Topic::App(AppTopic::Get) => match self.shadows.get(key) {
                Some(s) => {
                    let mut buf = vec![0u8; 64 * 1024];
                    match s.encode(&mut buf) {
                        Ok(n) => vec![Publish {
                            topic: app_topic(key, AppTopic::Document),
                            payload: buf[..n].to_vec(),
                            qos: Qos::AtLeastOnce,
                        }],
                        Err(_) => Vec::new(),
                    }
                }
                None => vec![rejected(key, "no shadow for this device")],
            },
            _ => Vec::new(),
        };
        if self.shadows.contains_key(key) {
            // A device registered by this message is watched from now.
            self.liveness.known(now_ms, key);
        }
        out.extend(events.into_iter().map(|e| fleet_event(key, e)));
        out
    }

    /// A command on its way to device `key`: nothing for a device in
    /// service (it answers); for one that never registered, or was
    /// decommissioned, the app is answered at once on the device's ack
    /// topic: rejected, [`AckReason::UnknownDevice`].
    fn command_seen(&mut self, now_ms: u64, key: &str, payload: &[u8]) -> Vec<Publish> {
        let why = if self.decommissioned.contains(key) {
            "the device is decommissioned"
        } else if self.shadows.contains_key(key) {
            return Vec::new();
        } else {
            "no device with this id has registered"
        };
        let Ok(cmd) = Command::decode(payload) else {
            return Vec::new();
        };
        self.stats.rejected += 1;
        let ack = Ack {
            command_id: cmd.id,
            status: AckStatus::Rejected,
            reason: Some(AckReason::UnknownDevice),
            detail: Some(why),
            result: None,
            time_ms: now_ms,
        };
        vec![encoded(key, MessageKind::Ack, &ack)]
    }

    /// An operator's request to accept decommissioned device `key` again:
    /// the payload is a client token (CBOR text), answered on the answer
    /// topic.
    fn reprovision_request(&mut self, now_ms: u64, key: &str, payload: &[u8]) -> Vec<Publish> {
        let Ok(token) = minicbor::decode::<&str>(payload) else {
            return vec![rejected(
                key,
                "a re-provisioning request is a client token (CBOR text)",
            )];
        };
        let outcome = if self.reprovision(key) {
            self.audit(
                now_ms,
                "operator",
                crate::audit::AuditAction::Reprovisioned,
                key,
                serde_json::json!({}),
            );
            self.written();
            Ok(0)
        } else {
            Err("the device is not decommissioned".to_owned())
        };
        vec![answer_to(key, token, outcome)]
    }

    /// An operator's decision on a conflict parked for one (a
    /// [`ResolveRequest`]), answered on the answer topic with the
    /// document's version or why not; the device is sent the delta when
    /// the cloud's value stands.
    fn resolve_request(&mut self, now_ms: u64, key: &str, payload: &[u8]) -> Vec<Publish> {
        let Some(req) = ResolveRequest::decode(payload) else {
            return vec![rejected(
                key,
                "a resolve request is a CBOR map of token, path and winner (\"cloud\" or \"device\")",
            )];
        };
        let answer = |outcome| answer_to(key, &req.token, outcome);
        let path = match lanyard_core::shadow::PathBuf::from_dotted(&req.path) {
            Ok(p) => p,
            Err(e) => return vec![answer(Err(format!("{:?}: {e}", req.path)))],
        };
        let Some(shadow) = self.shadows.get_mut(key) else {
            return vec![answer(Err(
                "unknown device: it has not registered".to_owned()
            ))];
        };
        let version = match shadow.resolve(path.as_path(), req.winner, now_ms) {
            Ok(v) => v,
            Err(lanyard_core::Error::NotParked) => {
                return vec![answer(Err(format!(
                    "no conflict is waiting for an operator at {}",
                    req.path
                )))];
            }
            Err(e) => return vec![answer(Err(e.to_string()))],
        };
        self.audit(
            now_ms,
            "operator",
            crate::audit::AuditAction::ConflictResolved,
            key,
            serde_json::json!({"path": req.path, "winner": winner_name(req.winner), "version": version}),
        );
        let mut out = self.settle(now_ms, key, None, None);
        out.push(answer(Ok(version)));
        self.persist(key);
        out
    }

    /// Records a configuration an operator pushed to device `key` (the
    /// version and the fields it changes), if the host knows the device
    /// and the push reads as a `device-config` map.
    fn config_pushed(&mut self, now_ms: u64, key: &str, payload: &[u8]) {
        if self.audit.is_none() || !self.shadows.contains_key(key) {
            return;
        }
        let Some((version, fields)) = config_fields(payload) else {
            tracing::debug!(device = key, "unreadable configuration push not recorded");
            return;
        };
        self.audit(
            now_ms,
            "operator",
            crate::audit::AuditAction::ConfigPushed,
            key,
            serde_json::json!({"version": version, "fields": fields}),
        );
        self.written();
    }

    /// Records device `key`'s answer to a configuration: applied, ignored
    /// or rejected (with the field and why).
    fn config_acknowledged(&mut self, now_ms: u64, key: &str, payload: &[u8]) {
        use lanyard_core::agent::messages::{ConfigAck, ConfigOutcome};
        if self.audit.is_none() {
            return;
        }
        let Ok(ack) = ConfigAck::decode(payload) else {
            return;
        };
        let outcome = match ack.outcome {
            ConfigOutcome::Applied => "applied",
            ConfigOutcome::Ignored => "ignored",
            ConfigOutcome::Rejected => "rejected",
        };
        self.audit(
            now_ms,
            key,
            crate::audit::AuditAction::ConfigAcknowledged,
            key,
            serde_json::json!({
                "version": ack.version,
                "outcome": outcome,
                "running": ack.current_version,
                "field": ack.field,
                "reason": ack.reason,
            }),
        );
        self.written();
    }

    /// A page of the fleet's inventory (a [`ListRequest`]) for the
    /// operator, of the devices whose key starts with `tenant` (empty, or
    /// `{tenant}/` on a host that serves tenants).
    fn list_request(&self, tenant: &str, payload: &[u8]) -> Vec<Publish> {
        let at = format!("{tenant}{}", lanyard_core::topic::FLEET_KEY);
        let Some(req) = ListRequest::decode(payload) else {
            return vec![rejected(
                &at,
                "a list request is a CBOR map of token, limit and optionally after",
            )];
        };
        let after = req.after.as_deref().map(|a| format!("{tenant}{a}"));
        let mut keys: Vec<&String> = self
            .shadows
            .keys()
            .chain(self.decommissioned.iter())
            .filter(|k| k.starts_with(tenant) && after.as_ref().is_none_or(|a| *k > a))
            .collect();
        keys.sort();
        keys.dedup();
        let more = keys.len() > req.limit;
        keys.truncate(req.limit);
        let devices: Vec<DeviceSummary> = keys.iter().map(|k| self.summary(k, tenant)).collect();
        let next = more
            .then(|| devices.last().map(|d| d.device.clone()))
            .flatten();
        vec![Publish {
            topic: app_topic(&at, AppTopic::Listing),
            payload: Listing {
                token: req.token,
                devices,
                next,
            }
            .encode(),
            qos: Qos::AtLeastOnce,
        }]
    }

    /// What the host knows of device `key`, named without `tenant`.
    fn summary(&self, key: &str, tenant: &str) -> DeviceSummary {
        let shadow = self.shadows.get(key);
        let decommissioned = self.decommissioned.contains(key);
        let (state, health) = self.liveness.condition(key);
        DeviceSummary {
            device: key.strip_prefix(tenant).unwrap_or(key).to_owned(),
            version: shadow.map_or(0, |s| s.version()),
            in_sync: shadow.is_none_or(|s| s.in_sync()),
            parked: shadow.map_or(0, |s| s.parked().count() as u32),
            refused: shadow.map_or(0, |s| s.rejected().count() as u32),
            online: !decommissioned && !self.liveness.is_offline(key),
            last_seen_ms: self.liveness.last_seen(key),
            state,
            health,
            firmware: self.firmware.get(key).cloned(),
            decommissioned,
        }
    }

    /// A registration of device `id`, known here as `key`: the only way a
    /// shadow is made, within the device limits.
    fn register(&mut self, now_ms: u64, key: &str, id: &str, payload: &[u8]) -> Vec<Publish> {
        let Ok(reg) = Register::decode(payload) else {
            self.stats.rejected += 1;
            return Vec::new();
        };
        if reg.device_id != id {
            self.stats.rejected += 1;
            return Vec::new();
        }
        if !self.shadows.contains_key(key) {
            if let Some(why) = self.over_device_limit(key) {
                self.stats.over_device_limit += 1;
                tracing::warn!(device = key, "registration refused: {why}");
                return Vec::new();
            }
            self.allowances.insert(
                key.to_owned(),
                Allowance {
                    tokens: f64::from(self.limits.device_burst),
                    at_ms: now_ms,
                },
            );
        }
        // A device registers once per boot; the same boot again is a
        // retry that crossed the answer (answered again, counted apart).
        if self.boots.insert(key.to_owned(), reg.boot_count) == Some(reg.boot_count) {
            self.stats.registration_retries += 1;
        } else if reg.resumed {
            self.stats.reregistrations += 1;
        } else {
            self.stats.registrations += 1;
            self.audit(
                now_ms,
                key,
                crate::audit::AuditAction::Registered,
                key,
                serde_json::json!({"boot": reg.boot_count, "firmware": reg.firmware}),
            );
        }
        if let Some(c) = reg.capacity {
            self.capacities.insert(key.to_owned(), c);
        }
        self.firmware
            .insert(key.to_owned(), reg.firmware.to_owned());
        self.shadow_mut(key);
        self.persist(key);
        let mut cfg = minicbor::Encoder::new(Vec::new());
        // Encoding into a Vec cannot fail.
        let _ = self.fleet_config.encode_cbor(&mut cfg);
        let cfg = cfg.into_writer();
        let accepted = RegisterAccepted {
            device_id: id,
            config: Some(&cfg),
            time_ms: now_ms,
        };
        vec![encoded(key, MessageKind::RegisterAccepted, &accepted)]
    }

    /// Why a new device `key` may not register, if a limit says so.
    fn over_device_limit(&self, key: &str) -> Option<String> {
        if self.shadows.len() >= self.limits.max_devices {
            return Some(format!(
                "the host serves its limit of {} devices",
                self.limits.max_devices
            ));
        }
        let (tenant, _) = key.split_once('/')?;
        let prefix = format!("{tenant}/");
        // Counted when a new device asks, not kept: registrations of new
        // devices are rare next to their messages.
        let n = self
            .shadows
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .count();
        (n >= self.limits.max_devices_per_tenant).then(|| {
            format!(
                "tenant {tenant} has its limit of {} devices",
                self.limits.max_devices_per_tenant
            )
        })
    }

    /// A CBOR update from the device itself or, `from_app`, from an app.
    fn cbor_update(
        &mut self,
        now_ms: u64,
        id: &str,
        payload: &[u8],
        from_app: bool,
    ) -> Vec<Publish> {
        if !self.shadows.contains_key(id) {
            // Nothing is made for a device that never registered.
            self.stats.unregistered += 1;
            tracing::debug!(
                device = id,
                "update for a device that has not registered: refused"
            );
            return if from_app {
                vec![rejected(id, "unknown device: it has not registered")]
            } else {
                Vec::new()
            };
        }
        let mut update: Box<TwinUpdate> = Box::new(ShadowUpdate::new(0));
        if let Err(e) = update.decode_into(payload) {
            self.stats.rejected += 1;
            let why = e.to_string();
            return vec![rejected(id, &why), refusal(now_ms, id, from_app, why)];
        }
        let token = update.client_token.as_deref().map(str::to_owned);
        let answer = |outcome| {
            token
                .as_deref()
                .filter(|_| from_app)
                .map(|t| answer_to(id, t, outcome))
        };
        // Each side writes its own half: a device its reported state (and
        // its refusals), an app its desired state. Anything else is refused
        // whole, so that neither can set what the other one owns.
        let wrong = if from_app {
            (update.reported.is_some() || update.rejected.is_some())
                .then_some("an app writes desired state only")
        } else {
            update
                .desired
                .is_some()
                .then_some("a device writes reported state only")
        };
        if let Some(why) = wrong {
            self.stats.wrong_direction += 1;
            tracing::warn!(device = id, from_app, "update refused: {why}");
            let mut out = vec![refusal(now_ms, id, from_app, why.to_owned())];
            if from_app {
                out.push(rejected(id, why));
                out.extend(answer(Err(why.to_owned())));
            }
            return out;
        }
        // Time comes from the writer (for LatestWins), but never from the
        // future of this host's clock.
        update.timestamp_ms = update.timestamp_ms.min(now_ms);
        // Kept to undo an update whose desired state the device could not
        // hold, only when it could (the common small update cannot, and the
        // shadow is not copied for it); and for the AWS `update/documents`
        // topic, which shows the document before and after.
        let could_exceed = self.could_exceed_capacity(id, &update);
        let before = (could_exceed || self.aws_topics())
            .then(|| self.shadows.get(id).cloned())
            .flatten();
        let shadow = self.shadow_mut(id);
        let refused = match update.apply_to(shadow) {
            Err(e) => Some(e.to_string()),
            Ok(_) if could_exceed => self.over_capacity(id),
            Ok(_) => None,
        };
        if let Some(why) = refused {
            self.stats.rejected += 1;
            if let Some(b) = before {
                self.shadows.insert(id.to_owned(), b);
            }
            let mut out = vec![
                rejected(id, &why),
                refusal(now_ms, id, from_app, why.clone()),
            ];
            out.extend(answer(Err(why)));
            return out;
        }
        self.stats.updates += 1;
        let version = self.shadows.get(id).map_or(0, |s| s.version());
        if from_app {
            self.audit(
                now_ms,
                "app",
                crate::audit::AuditAction::DesiredSet,
                id,
                serde_json::json!({"version": version}),
            );
        }
        let mut out = self.settle(now_ms, id, before.as_deref(), token.as_deref());
        out.extend(answer(Ok(version)));
        self.persist(id);
        out
    }

    /// Whether applying `update` could leave device `id` more desired state
    /// than it holds: merged, the desired state has at most the leaves and
    /// pool bytes of the current one and the update's together.
    fn could_exceed_capacity(&self, id: &str, update: &TwinUpdate) -> bool {
        let (Some(cap), Some(new)) = (self.capacities.get(id), update.desired.as_ref()) else {
            return false;
        };
        let (leaves, bytes) = self
            .shadows
            .get(id)
            .map_or((0, 0), |s| (s.desired().len(), s.desired().pool_used()));
        leaves + new.len() > cap.leaves as usize
            || bytes + new.pool_used() > cap.pool_bytes as usize
    }

    /// Why device `id` could not hold its desired state, if it could not:
    /// more leaves or bytes than it said it holds when it registered.
    fn over_capacity(&self, id: &str) -> Option<String> {
        let cap = self.capacities.get(id)?;
        let desired = self.shadows.get(id)?.desired();
        let (leaves, bytes) = (desired.len(), desired.pool_used());
        (leaves > cap.leaves as usize || bytes > cap.pool_bytes as usize).then(|| {
            format!(
                "desired state of {leaves} leaves and {bytes} bytes is more than the device holds \
                 ({} leaves, {} bytes)",
                cap.leaves, cap.pool_bytes
            )
        })
    }

    /// Whether the AWS IoT shadow topics are served (by [`run_twin`] when
    /// asked, never to tenants).
    fn aws_topics(&self) -> bool {
        self.aws && self.tenants.is_none()
    }

    /// What every applied update leads to, whichever way it came in (the
    /// device's or an app's CBOR topic, or the AWS topics): the conflict
    /// rules run (and are counted), and if the device is not in step it is
    /// sent the delta as CBOR; subscribers of the AWS topics get
    /// `update/delta` and, given the document before, `update/documents`.
    fn settle(
        &mut self,
        now_ms: u64,
        id: &str,
        before: Option<&TwinShadow>,
        token: Option<&str>,
    ) -> Vec<Publish> {
        let jitter = self.jitter();
        let mut conflicts = [0u64; 4];
        let mut events = Vec::new();
        let shadow = self.shadow_mut(id);
        let synced = shadow.sync(now_ms, jitter, |c| {
            let i = ConflictPolicy::ALL.iter().position(|p| *p == c.policy).unwrap_or(0);
            conflicts[i] += 1;
            tracing::info!(device = id, path = %c.path, policy = c.policy.name(), winner = ?c.winner, "conflict");
            events.push(FleetEvent::Conflict {
                at_ms: now_ms,
                path: c.path.to_string_lossy().as_str().to_owned(),
                policy: c.policy,
                winner: c.winner,
            });
        });
        for (a, b) in self.stats.conflicts.iter_mut().zip(conflicts) {
            *a += b;
        }
        if let Err(lanyard_core::Error::BackingOff { until_ms }) = synced {
            // Held back after a conflict: settled when the wait is over.
            self.deferred.insert(id.to_owned(), until_ms);
        }
        let mut out: Vec<Publish> = events.into_iter().map(|e| fleet_event(id, e)).collect();
        let Some(shadow) = self.shadows.get(id).map(|b| &**b) else {
            return out;
        };
        if !shadow.in_sync() {
            if let Ok(d) = ShadowDelta::<TWIN_LEAVES, TWIN_POOL>::of(shadow, now_ms) {
                let mut buf = vec![0u8; 64 * 1024];
                if let Ok(n) = d.encode(&mut buf) {
                    out.push(Publish {
                        topic: topic(id, MessageKind::ShadowDelta).to_string(),
                        payload: buf[..n].to_vec(),
                        qos: Qos::AtLeastOnce,
                    });
                }
            }
        }
        if self.aws_topics() {
            let base = format!("$aws/things/{id}/shadow");
            if !shadow.in_sync() {
                if let Ok(d) = aws_json::delta_document(shadow, now_ms, token) {
                    out.push(aws_publish(&base, "update/delta", &d));
                }
            }
            if let Some(before) = before {
                out.push(aws_publish(
                    &base,
                    "update/documents",
                    &aws_json::documents_document(before, shadow, now_ms, token),
                ));
            }
        }
        if !shadow.in_sync() {
            self.stats.deltas += 1;
        }
        out
    }

    fn aws(&mut self, now_ms: u64, thing: &str, op: &str, payload: &[u8]) -> Vec<Publish> {
        let base = format!("$aws/things/{thing}/shadow");
        let json = |suffix: &str, doc: serde_json::Value| aws_publish(&base, suffix, &doc);
        let refuse = |code: u16, message: String| serde_json::json!({"code": code, "message": message, "timestamp": now_ms / 1000});
        if self.decommissioned.contains(thing) {
            self.stats.decommissioned_refused += 1;
            return match op {
                "update" | "get" | "delete" => vec![json(
                    &format!("{op}/rejected"),
                    refuse(403, format!("Thing '{thing}' is decommissioned")),
                )],
                _ => Vec::new(),
            };
        }
        if !self.shadows.contains_key(thing) && matches!(op, "update" | "get" | "delete") {
            // Only registered devices have shadows, whichever way in.
            self.stats.unregistered += 1;
            return vec![json(
                &format!("{op}/rejected"),
                refuse(404, format!("No shadow exists with name: '{thing}'")),
            )];
        }
        match op {
            "update" => {
                let req = match aws_json::parse_update::<TWIN_LEAVES, TWIN_POOL>(payload) {
                    Ok(r) => r,
                    Err(e) => {
                        self.stats.rejected += 1;
                        return vec![json(
                            "update/rejected",
                            aws_json::error_document(&e, now_ms, None),
                        )];
                    }
                };
                let previous = self.shadows.get(thing).cloned();
                let shadow = self.shadow_mut(thing);
                let previous = previous.unwrap_or_else(|| Box::new(shadow.clone()));
                let applied = req.apply_to(shadow, now_ms);
                if applied.is_ok() {
                    if let Some(why) = self.over_capacity(thing) {
                        self.stats.rejected += 1;
                        self.shadows.insert(thing.to_owned(), previous);
                        return vec![json(
                            "update/rejected",
                            serde_json::json!({"code": 413, "message": why, "timestamp": now_ms / 1000,
                                               "clientToken": req.client_token}),
                        )];
                    }
                }
                match applied {
                    Err(e) => {
                        self.stats.rejected += 1;
                        vec![json(
                            "update/rejected",
                            aws_json::error_document(&e, now_ms, req.client_token.as_deref()),
                        )]
                    }
                    Ok(version) => {
                        self.stats.updates += 1;
                        if !matches!(req.desired, aws_json::Part::Absent) {
                            self.audit(
                                now_ms,
                                "aws",
                                crate::audit::AuditAction::DesiredSet,
                                thing,
                                serde_json::json!({"version": version}),
                            );
                        }
                        let mut out = vec![aws_publish(
                            &base,
                            "update/accepted",
                            &aws_json::accepted_document(&req, version, now_ms),
                        )];
                        // Served on the AWS topics whatever `run_twin` was
                        // told: the request came on one.
                        let aws = std::mem::replace(&mut self.aws, true);
                        out.extend(self.settle(
                            now_ms,
                            thing,
                            Some(&previous),
                            req.client_token.as_deref(),
                        ));
                        self.aws = aws;
                        self.persist(thing);
                        out
                    }
                }
            }
            "get" => {
                let token = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| {
                        v.get("clientToken")
                            .and_then(|t| t.as_str())
                            .map(String::from)
                    });
                // Echoed back in the answer: bounded as `update` bounds it.
                if token.as_ref().is_some_and(|t| t.len() > MAX_CLIENT_TOKEN) {
                    self.stats.rejected += 1;
                    return vec![json(
                        "get/rejected",
                        refuse(
                            400,
                            format!("clientToken longer than {MAX_CLIENT_TOKEN} bytes"),
                        ),
                    )];
                }
                match self.shadows.get(thing) {
                    Some(s) => match aws_json::get_document(s, now_ms, token.as_deref()) {
                        Ok(doc) => vec![aws_publish(&base, "get/accepted", &doc)],
                        Err(e) => vec![json(
                            "get/rejected",
                            aws_json::error_document(&e, now_ms, token.as_deref()),
                        )],
                    },
                    None => vec![json(
                        "get/rejected",
                        serde_json::json!({"code": 404, "message": format!("No shadow exists with name: '{thing}'"), "timestamp": now_ms / 1000}),
                    )],
                }
            }
            // The document is emptied; the device stays registered.
            "delete" => match self.shadows.remove(thing) {
                Some(s) => {
                    self.shadow_mut(thing);
                    self.persist(thing);
                    vec![json(
                        "delete/accepted",
                        serde_json::json!({"version": s.version(), "timestamp": now_ms / 1000}),
                    )]
                }
                None => vec![json(
                    "delete/rejected",
                    serde_json::json!({"code": 404, "message": format!("No shadow exists with name: '{thing}'"), "timestamp": now_ms / 1000}),
                )],
            },
            _ => Vec::new(),
        }
    }
}

/// The app topic `t` of the device known here as `key`.
fn app_topic(key: &str, t: AppTopic) -> String {
    topic_of_key(key, Topic::App(t)).map_or_else(String::new, |s| s.to_string())
}

fn fleet_event(key: &str, ev: FleetEvent) -> Publish {
    Publish {
        topic: app_topic(key, AppTopic::Event),
        payload: ev.encode(),
        qos: Qos::AtLeastOnce,
    }
}

/// A `device-config` map's version and fields by name (what an operator's
/// push changes); `None` when it is not one.
fn config_fields(payload: &[u8]) -> Option<(u64, serde_json::Map<String, serde_json::Value>)> {
    use lanyard_core::agent::config::ConfigField;
    let mut d = minicbor::Decoder::new(payload);
    let (mut version, mut fields) = (None, serde_json::Map::new());
    for _ in 0..d.map().ok()?? {
        let k = d.u8().ok()?;
        if k == 0 {
            version = Some(d.u64().ok()?);
        } else if let Some(f) = ConfigField::ALL.into_iter().find(|f| *f as u8 == k) {
            fields.insert(f.name().to_owned(), d.u64().ok()?.into());
        } else {
            d.skip().ok()?;
        }
    }
    (d.position() == payload.len()).then_some(())?;
    Some((version?, fields))
}

/// The answer to the request that carried `token` (desired state,
/// re-provisioning, a conflict's settling): the version, or why not.
fn answer_to(key: &str, token: &str, outcome: Result<u64, String>) -> Publish {
    Publish {
        topic: app_topic(key, AppTopic::DesiredAnswer),
        payload: DesiredAnswer {
            token: token.to_owned(),
            outcome,
        }
        .encode(),
        qos: Qos::AtLeastOnce,
    }
}

/// The event telling apps that the host refused what the device (or, when
/// `from_app`, an app) sent for `key`.
fn refusal(now_ms: u64, key: &str, from_app: bool, reason: String) -> Publish {
    fleet_event(
        key,
        FleetEvent::Refused {
            at_ms: now_ms,
            from: if from_app { "app" } else { "device" },
            reason,
        },
    )
}

/// A document published on one of a thing's AWS shadow topics
/// (`{base}/{suffix}`), written straight from `doc`.
fn aws_publish(base: &str, suffix: &str, doc: &impl serde::Serialize) -> Publish {
    Publish {
        topic: format!("{base}/{suffix}"),
        // The documents hold text keys only, so writing them cannot fail.
        payload: serde_json::to_vec(doc).unwrap_or_default(),
        qos: Qos::AtLeastOnce,
    }
}

fn rejected(id: &str, why: &str) -> Publish {
    Publish {
        topic: app_topic(id, AppTopic::Rejected),
        payload: why.as_bytes().to_vec(),
        qos: Qos::AtLeastOnce,
    }
}

fn encoded<T: Encodable>(id: &str, kind: MessageKind, m: &T) -> Publish {
    let mut buf = vec![0u8; 8192];
    let n = m.encode(&mut buf).unwrap_or(0);
    Publish {
        topic: topic(id, kind).to_string(),
        payload: buf[..n].to_vec(),
        qos: Qos::AtLeastOnce,
    }
}

/// How long [`run_twin`] waits for its start-up probes to come back.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most messages [`run_twin`] handles in one batch (one write of the store).
pub const MAX_BATCH: usize = 256;

/// Why [`run_twin`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The transport failed, or the broker does not deliver the host's
    /// subscriptions ([`TransportError::NotDelivering`]).
    Transport(TransportError),
    /// The store could not write a batch. Nothing of it was acknowledged:
    /// the broker sends it again to the next host to connect.
    Store(String),
}

impl From<TransportError> for RunError {
    fn from(e: TransportError) -> Self {
        RunError::Transport(e)
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Transport(e) => e.fmt(f),
            RunError::Store(e) => write!(f, "could not write shadows: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Runs a host over a transport until the transport closes or `stop`
/// completes; `aws` serves the AWS IoT topics too.
///
/// Messages are handled in batches (what has arrived, up to
/// [`MAX_BATCH`]): the batch is written to the store in one step, then its
/// answers are published and its messages acknowledged to the broker. A
/// host killed at any point loses nothing the broker will not send again,
/// and a busy host pays one durable write per batch, not per message.
///
/// At start the host publishes a probe on each topic it subscribes to
/// (under a reserved id no device can have) and fails with
/// [`TransportError::NotDelivering`] if they have not all come back within
/// [`PROBE_TIMEOUT`]: a broker whose ACL does not let this client read
/// those topics accepts the subscription all the same and then delivers
/// nothing, and devices would retry their registration for ever.
pub async fn run_twin<T: Transport>(
    host: &mut TwinHost,
    transport: &mut T,
    clock: crate::clock::Clock,
    aws: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    host.aws = aws;
    host.batching = true;
    transport.hold_acks();
    let filters = host.subscriptions(aws);
    for f in &filters {
        transport.subscribe(f).await?;
    }
    let probe_id = format!(
        "{}-probe-{}",
        lanyard_core::topic::RESERVED_PREFIX,
        clock.now_ms()
    );
    let mut probes: HashSet<String> = filters
        .iter()
        .map(|f| {
            // A shared subscription would hand the probe to another host
            // of the group: each probe topic is also subscribed as itself.
            let plain = match &host.share_group {
                Some(g) => f.trim_start_matches(&format!("$share/{g}/")).to_owned(),
                None => f.clone(),
            };
            plain.replace('+', &probe_id)
        })
        .collect();
    if host.share_group.is_some() {
        for p in &probes {
            transport.subscribe(p).await?;
        }
    }
    for p in &probes {
        transport.publish(p, b"", Qos::AtLeastOnce).await?;
    }
    let probe_deadline = tokio::time::sleep(PROBE_TIMEOUT);
    tokio::pin!(stop);
    tokio::pin!(probe_deadline);
    // Every device known is watched from now: silent ones go offline
    // after the grace period.
    let now = clock.now_ms();
    let keys: Vec<String> = host.shadows.keys().cloned().collect();
    for key in keys {
        host.liveness.known(now, &key);
    }
    let mut liveness_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    liveness_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    let mut batch: Vec<(String, Vec<u8>, Vec<Publish>)> = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = liveness_tick.tick() => {
                let mut due = host.check_liveness(clock.now_ms());
                let settled = host.settle_deferred(clock.now_ms());
                if !settled.is_empty() {
                    // Durable before the device is told.
                    host.flush().map_err(|e| RunError::Store(e.to_string()))?;
                    due.extend(settled);
                }
                for p in due {
                    transport.publish(&p.topic, &p.payload, p.qos).await?;
                }
                host.export();
            }
            _ = &mut probe_deadline, if !probes.is_empty() => {
                let mut silent: Vec<String> = probes.into_iter().collect();
                silent.sort();
                return Err(TransportError::NotDelivering(silent.join(", ")).into());
            }
            ev = transport.recv() => {
                let mut next = Some(ev?);
                let mut taken = 0;
                while let Some(ev) = next.take() {
                    taken += 1;
                    if let TransportEvent::Message { topic, payload } = ev {
                        if probes.remove(&topic) {
                            if probes.is_empty() {
                                tracing::info!("twin host: the broker delivers all its subscriptions");
                            }
                        } else {
                            let answers = host.handle(clock.now_ms(), &topic, &payload);
                            batch.push((topic, payload, answers));
                        }
                    }
                    if taken < MAX_BATCH {
                        next = transport.try_recv();
                    }
                }
                // Durable first; then answered and acknowledged. A device
                // another host changed meanwhile has its messages handled
                // again on the fresh copy, their first answers dropped.
                for _ in 0..8 {
                    let stale = host.flush().map_err(|e| RunError::Store(e.to_string()))?;
                    if stale.is_empty() {
                        break;
                    }
                    for (topic, payload, answers) in &mut batch {
                        if host.key_of(topic).is_some_and(|k| stale.contains(&k)) {
                            *answers = host.handle(clock.now_ms(), topic, payload);
                        }
                    }
                }
                for (_, _, answers) in batch.drain(..) {
                    out.extend(answers);
                }
                for p in out.drain(..) {
                    transport.publish(&p.topic, &p.payload, p.qos).await?;
                }
                transport.ack_handled();
                host.export();
            }
        }
    }
}
