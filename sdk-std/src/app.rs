//! The app side: set desired state, read a shadow, watch deltas and reported
//! changes, send a command and wait for its final acknowledgement. It speaks
//! the twin host's topics over any [`Transport`], which a task of its own
//! drives ([`router`]): every call takes `&self`, so one client serves
//! several tasks at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod rollouts;
mod router;
use router::Router;
pub use router::{DropCounter, Events, Watch, ZeroCapacity};

use lanyard_core::agent::messages::{
    Ack, AckReason, AckStatus, Command, Encodable, MessageKind, Telemetry,
};
use lanyard_core::agent::platform::RejectReason;
use lanyard_core::shadow::{ConflictPolicy, Path, StateTree};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate, reason_code};

use crate::transport::{Transport, TransportError};
use crate::twin::{DesiredAnswer, TWIN_LEAVES, TWIN_POOL, TwinShadow};
use lanyard_core::topic::{AppTopic, Topic, filter, topic_of_key, valid_device_id};

/// Why an app request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    /// No answer in time.
    Timeout,
    /// The host refused the request; its reason.
    Rejected(String),
    /// A message could not be encoded or decoded.
    Codec(lanyard_core::Error),
    /// The transport failed.
    Transport(TransportError),
    /// Not a device name a topic can carry (an id, or `{tenant}/{id}`);
    /// nothing was sent.
    BadDevice(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Timeout => f.write_str("no answer in time"),
            AppError::Rejected(why) => write!(f, "rejected: {why}"),
            AppError::Codec(why) => write!(f, "bad message: {why}"),
            AppError::BadDevice(name) => write!(f, "{name:?} is not a device name"),
            AppError::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<TransportError> for AppError {
    fn from(e: TransportError) -> Self {
        AppError::Transport(e)
    }
}

/// What an app can watch.
#[derive(Debug, Clone, PartialEq)]
pub enum AppEvent {
    /// The host sent a device its delta.
    Delta {
        /// The device.
        device: String,
        /// The desired leaves that differ from reported.
        state: Box<StateTree<TWIN_LEAVES, TWIN_POOL>>,
    },
    /// A device reported state.
    Reported {
        /// The device.
        device: String,
        /// What it reported.
        state: Box<StateTree<TWIN_LEAVES, TWIN_POOL>>,
        /// The desired properties it refuses, and why (empty when it
        /// refuses none).
        rejected: Vec<Rejection>,
    },
    /// A device's telemetry.
    Telemetry {
        /// The device.
        device: String,
        /// Its sequence number.
        seq: u64,
        /// When it was read (ms since the epoch).
        time_ms: u64,
        /// The readings.
        readings: Box<StateTree<TWIN_LEAVES, TWIN_POOL>>,
    },
    /// Something the twin host noticed about a device: online, offline, a
    /// lifecycle or health change.
    Fleet {
        /// The device.
        device: String,
        /// What.
        event: crate::twin::FleetEvent,
    },
    /// A command acknowledgement.
    Ack {
        /// The device.
        device: String,
        /// The command id.
        command_id: String,
        /// Its status.
        status: AckStatus,
    },
}

/// A desired property a device refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The property, dotted (`valve.position`).
    pub path: String,
    /// Why.
    pub reason: RejectReason,
}

impl Rejection {
    /// The rejections of a device's update, or of a shadow document.
    pub fn all_of<'a>(rejected: impl Iterator<Item = (Path<'a>, u32)>) -> Vec<Rejection> {
        rejected
            .map(|(path, code)| Rejection {
                path: path.keys().collect::<Vec<_>>().join("."),
                reason: RejectReason::from_code(code),
            })
            .collect()
    }
}

/// The final outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Succeeded, Failed or Rejected.
    pub status: AckStatus,
    /// Why, for Failed and Rejected.
    pub reason: Option<AckReason>,
    /// The result (CBOR), for Succeeded.
    pub result: Option<Vec<u8>>,
    /// Why, in the device's words, when it gave them (a handler's error
    /// text; the agent's own for some refusals).
    pub detail: Option<String>,
}

impl HostAnswers {
    /// The one answer of a single request: its version, the host's
    /// refusal, or no answer in time.
    fn into_single(mut self) -> Result<u64, AppError> {
        if let Some((_, version)) = self.applied.pop() {
            return Ok(version);
        }
        if let Some((_, why)) = self.refused.pop() {
            return Err(AppError::Rejected(why));
        }
        Err(AppError::Timeout)
    }
}

/// One request to the twin host, answered on the device's answer topic
/// with its token.
struct HostRequest<'a> {
    device: &'a str,
    topic: AppTopic,
    payload: Vec<u8>,
    token: String,
}

/// The twin host's answers to requests about many devices asked at once
/// (desired changes, conflicts settled): each device in one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAnswers {
    /// Done: the document's new version.
    pub applied: Vec<(String, u64)>,
    /// Refused by the host, with its reason.
    pub refused: Vec<(String, String)>,
    /// No answer in time.
    pub unanswered: Vec<String>,
}

/// What became of one command sent to many devices
/// ([`AppClient::command_to`]): each device in one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandFanOutReport {
    /// Final acknowledgements, in the order they came.
    pub finished: Vec<(String, CommandOutcome)>,
    /// Refused at once by the twin host: no device in service has the id
    /// (with the host's words).
    pub unknown: Vec<(String, String)>,
    /// No final acknowledgement in time.
    pub unanswered: Vec<String>,
}

/// What became of a configuration pushed to many devices
/// ([`AppClient::push_config_to`]): each device in one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigPushReport {
    /// Applied whole.
    pub applied: Vec<String>,
    /// Not newer than what the device runs (its version with it).
    pub ignored: Vec<(String, u64)>,
    /// A field the device refused (`field: why`); nothing changed.
    pub rejected: Vec<(String, String)>,
    /// No answer in time (offline, or not a device of this fleet).
    pub unanswered: Vec<String>,
}

impl ConfigPushReport {
    /// Whether every device applied it.
    pub fn all_applied(&self) -> bool {
        self.ignored.is_empty() && self.rejected.is_empty() && self.unanswered.is_empty()
    }
}

/// The configuration change to `version` that sets each named field
/// (`telemetry_ms`, ...; [`ConfigField`](lanyard_core::agent::config::ConfigField)'s
/// names) and keeps the others, for [`AppClient::push_config_to`]; the
/// first unknown field or out-of-range value is refused, named, with the
/// fields there are.
///
/// ```
/// let patch = lanyard_std::app::config_patch(7, [("telemetry_ms", 60_000)])?;
/// assert_eq!(patch.fields().len(), 1);
/// assert!(lanyard_std::app::config_patch(7, [("speed", 5)]).unwrap_err().contains("not a field"));
/// # Ok::<(), String>(())
/// ```
pub fn config_patch<'a>(
    version: u64,
    fields: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<lanyard_core::agent::config::ConfigPatch, String> {
    use lanyard_core::agent::config::{ConfigField, ConfigPatch};
    let mut patch = ConfigPatch::new(version);
    for (name, value) in fields {
        let field = ConfigField::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = ConfigField::ALL.iter().map(|f| f.name()).collect();
            format!("{name:?} is not a field: one of {}", names.join(", "))
        })?;
        patch
            .set(field, value)
            .map_err(|e| format!("{name}={value}: {}", e.reason))?;
    }
    Ok(patch)
}

/// [`config_patch`] from `field=value` texts (the CLI's `--set`).
///
/// ```
/// let patch = lanyard_std::app::config_patch_from_text(3, &["telemetry_ms=60000".into()])?;
/// assert_eq!(patch.fields().len(), 1);
/// assert!(lanyard_std::app::config_patch_from_text(3, &["telemetry_ms".into()]).is_err());
/// # Ok::<(), String>(())
/// ```
pub fn config_patch_from_text(
    version: u64,
    sets: &[String],
) -> Result<lanyard_core::agent::config::ConfigPatch, String> {
    let mut given = Vec::new();
    for f in sets {
        let (name, value) = f
            .split_once('=')
            .ok_or_else(|| format!("{f:?}: field=value"))?;
        let value: u64 = value
            .parse()
            .map_err(|_| format!("{name}: {value:?} is not a whole number"))?;
        given.push((name, value));
    }
    config_patch(version, given)
}

/// The topic `t` of `device` (an id, or `{tenant}/{id}`); a name that
/// cannot be in a topic is refused before anything is sent.
fn device_topic(device: &str, t: Topic) -> Result<String, AppError> {
    topic_of_key(device, t)
        .filter(|_| device.split('/').all(valid_device_id))
        .map(|s| s.to_string())
        .ok_or_else(|| AppError::BadDevice(device.to_owned()))
}

/// How many events [`AppClient::next_event`] keeps unread before it drops
/// newer ones (counted by [`AppClient::events_dropped`]).
pub const EVENT_QUEUE: usize = 10_000;

/// An app connected to a twin host through a transport.
///
/// Its calls take `&self` and may run at once from several tasks (share it
/// in an `Arc`): each waits only for its own answers. Events go to
/// subscriptions ([`AppClient::events`]), each a bounded queue; the
/// client's own ([`AppClient::next_event`]) watches the whole fleet.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use lanyard_std::app::{AppClient, AppError, Watch};
/// use lanyard_std::transport::MemoryBroker;
///
/// # #[tokio::main] async fn main() -> Result<(), AppError> {
/// let broker = MemoryBroker::new();
/// let app = Arc::new(AppClient::new(broker.connect()).await?);
/// let mut valve = app.events(Watch::device("ly-0a0000000001"), 100).expect("room for events");
/// // Two calls at once: neither waits for the other's answer (here none
/// // comes: no twin host is on this broker).
/// let (a, b) = tokio::join!(
///     app.get_shadow("ly-0a0000000001", Duration::from_millis(50)),
///     app.command("ly-0a0000000002", "ping", &[], 1, Duration::from_millis(50)),
/// );
/// assert_eq!((a.unwrap_err(), b.unwrap_err()), (AppError::Timeout, AppError::Timeout));
/// assert!(valve.try_next().is_none() && valve.dropped() == 0);
/// # Ok(()) }
/// ```
pub struct AppClient {
    router: Router,
    /// The subscription `next_event` reads; `None` once taken.
    own_events: Option<Events>,
    next_id: AtomicU64,
    /// The issue time of the last command sent: each command gets a later
    /// one (see `command`).
    last_issued_ms: Mutex<u64>,
    /// The operator identity its writes name (`.../by/{identity}`).
    operator: Mutex<Option<String>>,
    /// Topics carry a tenant level; devices are named `{tenant}/{id}`.
    tenants: bool,
}

impl AppClient {
    /// Subscribes to what an app watches, in the shared namespace.
    pub async fn new<T: Transport + 'static>(transport: T) -> Result<Self, AppError> {
        Self::subscribed(transport, false).await
    }

    /// An app for a host that serves tenants
    /// ([`TwinHost::with_tenants`](crate::twin::TwinHost::with_tenants)):
    /// devices are named `{tenant}/{device-id}` in every call and event.
    pub async fn for_tenants<T: Transport + 'static>(transport: T) -> Result<Self, AppError> {
        Self::subscribed(transport, true).await
    }

    async fn subscribed<T: Transport + 'static>(
        mut transport: T,
        tenants: bool,
    ) -> Result<Self, AppError> {
        for t in [
            Topic::Device(MessageKind::Ack),
            Topic::Device(MessageKind::ShadowDelta),
            Topic::Device(MessageKind::ShadowUpdate),
            Topic::Device(MessageKind::Telemetry),
            Topic::App(AppTopic::Document),
            Topic::App(AppTopic::Rejected),
            Topic::App(AppTopic::DesiredAnswer),
            Topic::App(AppTopic::Event),
            Topic::App(AppTopic::Listing),
            Topic::Device(MessageKind::ConfigAck),
        ] {
            transport.subscribe(&filter(tenants, t)).await?;
        }
        let router = Router::start(transport, tenants, event_of);
        let own_events = router.events(Watch::Fleet, EVENT_QUEUE).ok();
        Ok(AppClient {
            router,
            own_events,
            next_id: AtomicU64::new(0),
            last_issued_ms: Mutex::new(0),
            operator: Mutex::new(None),
            tenants,
        })
    }

    /// A new subscription to `watch`'s events (a device, a list, the
    /// fleet) holding at most `capacity` unread (at least one); it sees
    /// what arrives from now on. Any number may be open; each gets every event it watches,
    /// apart from the answers a call of this client is waiting for.
    pub fn events(&self, watch: Watch, capacity: usize) -> Result<Events, ZeroCapacity> {
        self.router.events(watch, capacity)
    }

    /// The client's own subscription (what [`next_event`](Self::next_event)
    /// reads), to read it apart from the client, say while another task
    /// shares the client; `next_event` then fails. `None` once taken.
    pub fn take_events(&mut self) -> Option<Events> {
        self.own_events.take()
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Names `identity` as the writer of its desired state, conflict
    /// resolutions and re-provisionings (at the end of their topics:
    /// `.../by/{identity}`), for a twin host that takes them only from its
    /// operators ([`crate::twin::TwinHost::with_operators`]). Give the
    /// identity the broker knows the client by (with mutual TLS, its
    /// certificate's name): the broker's ACL ([`crate::acl`]) lets a
    /// client write only under its own. Refused (with the reason) if it
    /// cannot be one topic level.
    pub fn as_operator(self, identity: &str) -> Result<Self, String> {
        self.set_operator(identity)?;
        Ok(self)
    }

    /// Where this client writes `t` for `device`: with an operator
    /// identity, an operator's write names it (`.../by/{identity}`).
    fn write_topic(&self, device: &str, t: Topic) -> Result<String, AppError> {
        let topic = device_topic(device, t)?;
        Ok(match self.operator_identity().as_deref() {
            Some(who) if lanyard_core::topic::OPERATOR_WRITES.contains(&t) => {
                format!("{topic}/{}/{who}", lanyard_core::topic::BY_LEVEL)
            }
            _ => topic,
        })
    }

    /// [`as_operator`](Self::as_operator) on a client already made.
    pub fn set_operator(&self, identity: &str) -> Result<(), String> {
        if !lanyard_core::topic::valid_writer(identity) {
            return Err(format!(
                "operator identity {identity:?}: one topic level (no '/', '+' or '#'), \
                 1 to 128 bytes"
            ));
        }
        *self.operator.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.to_owned());
        Ok(())
    }

    /// Asks for `desired` on `device` (null leaves delete) and waits up to
    /// ten seconds for the host's answer; see
    /// [`AppClient::set_desired_within`].
    pub async fn set_desired<const L: usize, const P: usize>(
        &self,
        device: &str,
        desired: &StateTree<L, P>,
        now_ms: u64,
    ) -> Result<u64, AppError> {
        self.set_desired_within(device, desired, now_ms, Duration::from_secs(10))
            .await
    }

    /// Asks for `desired` on `device` (null leaves delete) and waits up to
    /// `timeout` for the host to apply it: the document's new version, or
    /// [`AppError::Rejected`] with the host's reason (more state than the
    /// device said it holds, bad input). The host then sends the device
    /// its delta.
    pub async fn set_desired_within<const L: usize, const P: usize>(
        &self,
        device: &str,
        desired: &StateTree<L, P>,
        now_ms: u64,
        timeout: Duration,
    ) -> Result<u64, AppError> {
        self.set_desired_to(&[(device, desired)], now_ms, timeout)
            .await?
            .into_single()
    }

    /// Asks for each `(device, desired)` change at once and waits up to
    /// `timeout` for the host's answers: an operator's change over a fleet
    /// takes one round trip, not one per device. A device id that cannot be
    /// one is refused before anything is sent.
    pub async fn set_desired_to<const L: usize, const P: usize>(
        &self,
        changes: &[(&str, &StateTree<L, P>)],
        now_ms: u64,
        timeout: Duration,
    ) -> Result<HostAnswers, AppError> {
        let mut requests = Vec::with_capacity(changes.len());
        let mut buf = vec![0u8; 64 * 1024];
        for (device, desired) in changes {
            let token = format!("app-{now_ms}-{}", self.next_id());
            requests.push(HostRequest {
                device,
                topic: AppTopic::SetDesired,
                payload: desired_update(desired, now_ms, Some(&token), &mut buf)?,
                token,
            });
        }
        self.ask_many(requests, timeout).await
    }

    /// Sends `desired` for `device` (null leaves delete) without waiting
    /// for the host: no answer is asked for, so nothing says whether it was
    /// applied or refused (a refusal still comes as an event, and the
    /// shadow shows the outcome). For a stream of writes at the broker's
    /// pace; [`close`](Self::close) waits until the broker has them all.
    /// A device id that cannot be one is refused before anything is sent.
    pub async fn send_desired<const L: usize, const P: usize>(
        &self,
        device: &str,
        desired: &StateTree<L, P>,
        now_ms: u64,
    ) -> Result<(), AppError> {
        let topic = self.write_topic(device, Topic::App(AppTopic::SetDesired))?;
        let payload = desired_update(desired, now_ms, None, &mut vec![0u8; 64 * 1024])?;
        self.router.publish(&topic, &payload).await
    }

    /// The device's whole shadow.
    pub async fn get_shadow(
        &self,
        device: &str,
        timeout: Duration,
    ) -> Result<Box<TwinShadow>, AppError> {
        let t = device_topic(device, Topic::App(AppTopic::Get))?;
        let doc = device_topic(device, Topic::App(AppTopic::Document))?;
        let rejected = device_topic(device, Topic::App(AppTopic::Rejected))?;
        let mut waiting = self.router.wait_on([doc, rejected.clone()]);
        self.router.publish(&t, b"").await?;
        let (topic, payload) = waiting.next(tokio::time::Instant::now() + timeout).await?;
        if topic == rejected {
            return Err(AppError::Rejected(
                String::from_utf8_lossy(&payload).into_owned(),
            ));
        }
        TwinShadow::decode(&payload, ConflictPolicy::CloudWins)
            .map(Box::new)
            .map_err(AppError::Codec)
    }

    /// Accepts decommissioned `device` again (an operator's act: the
    /// broker's ACL lets only operator identities write the topic), so
    /// that it may register anew. Waits up to `timeout` for the host's
    /// answer; [`AppError::Rejected`] when the device is not decommissioned.
    pub async fn reprovision(&self, device: &str, timeout: Duration) -> Result<(), AppError> {
        let token = self.operator_token();
        let mut payload = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = minicbor::encode(token.as_str(), &mut payload);
        // Not `shadow/rejected`: the device is decommissioned, so other
        // apps' writes are refused there meanwhile.
        self.ask(device, AppTopic::Reprovision, &payload, &token, timeout)
            .await
            .map(|_| ())
    }

    /// Settles the conflict parked for an operator at `path` (dotted) on
    /// `device`: [`Source::Cloud`](lanyard_core::shadow::Source::Cloud)
    /// keeps the desired value (the device is sent it), `Source::Device`
    /// makes the reported value the desired one. Returns the document's
    /// version; [`AppError::Rejected`] with the host's reason (nothing
    /// parked there, an unknown device).
    pub async fn resolve(
        &self,
        device: &str,
        path: &str,
        winner: lanyard_core::shadow::Source,
        timeout: Duration,
    ) -> Result<u64, AppError> {
        self.resolve_to(&[(device, path)], winner, timeout)
            .await?
            .into_single()
    }

    /// Settles each `(device, path)` conflict with `winner` at once (see
    /// [`resolve`](Self::resolve)) and waits up to `timeout` for the host's
    /// answers. A path that cannot be one is refused before anything is
    /// sent.
    pub async fn resolve_to(
        &self,
        conflicts: &[(&str, &str)],
        winner: lanyard_core::shadow::Source,
        timeout: Duration,
    ) -> Result<HostAnswers, AppError> {
        let mut requests = Vec::with_capacity(conflicts.len());
        for (device, path) in conflicts {
            lanyard_core::shadow::PathBuf::from_dotted(path)
                .map_err(|e| AppError::Rejected(format!("{path:?}: {e}")))?;
            let token = self.operator_token();
            let request = crate::twin::ResolveRequest {
                token: token.clone(),
                path: (*path).to_owned(),
                winner,
            };
            // The host answers every resolve with its token, a
            // decommissioned device's too: another app's refusal never ends
            // this wait.
            requests.push(HostRequest {
                device,
                topic: AppTopic::Resolve,
                payload: request.encode(),
                token,
            });
        }
        self.ask_many(requests, timeout).await
    }

    /// Every device of the fleet (of `tenant`, on a host that serves
    /// tenants: pass `Some(tenant)`), in the order of their names, read a
    /// page at a time; each page waits up to `timeout`.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<crate::twin::DeviceSummary>, AppError> {
        let at = match tenant {
            Some(t) => format!("{t}/{}", lanyard_core::topic::FLEET_KEY),
            None => lanyard_core::topic::FLEET_KEY.to_owned(),
        };
        let (Some(ask), Some(answers)) = (
            topic_of_key(&at, Topic::App(AppTopic::List)),
            topic_of_key(&at, Topic::App(AppTopic::Listing)),
        ) else {
            return Err(AppError::BadDevice(at));
        };
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let token = self.operator_token();
            let request = crate::twin::ListRequest {
                token: token.clone(),
                after: after.take(),
                limit: crate::twin::MAX_LISTING_PAGE,
            };
            let mut waiting = self.router.wait_on([answers.to_string()]);
            self.router.publish(&ask, &request.encode()).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            let page = loop {
                let (_, payload) = waiting.next(deadline).await?;
                match crate::twin::Listing::decode(&payload) {
                    Some(page) if page.token == token => break page,
                    _ => continue,
                }
            };
            all.extend(page.devices);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// The devices a rollout can target: every device of the fleet in
    /// the shared namespace that is not decommissioned, in the order of
    /// their names, or with `running` only those whose last registration
    /// named that firmware version (a group by what it runs). Each page
    /// of the listing waits up to `timeout`.
    pub async fn devices_running(
        &self,
        running: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<String>, AppError> {
        Ok(self
            .list(None, timeout)
            .await?
            .into_iter()
            .filter(|d| !d.decommissioned)
            .filter(|d| running.is_none() || d.firmware.as_deref() == running)
            .map(|d| d.device)
            .collect())
    }

    /// Pushes the configuration change `patch` to each of `devices` and
    /// waits up to `timeout` for their acknowledgements: which applied
    /// it, which ignored it (not newer than theirs), which refused a
    /// field, and which did not answer.
    pub async fn push_config_to(
        &self,
        devices: &[String],
        patch: &lanyard_core::agent::config::ConfigPatch,
        timeout: Duration,
    ) -> Result<ConfigPushReport, AppError> {
        use lanyard_core::agent::messages::{ConfigAck, ConfigOutcome};
        let mut e = minicbor::Encoder::new(Vec::new());
        // Encoding into a Vec cannot fail.
        let _ = patch.encode_cbor(&mut e);
        let payload = e.into_writer();
        let mut waiting = std::collections::HashMap::new();
        for d in devices {
            let ack = device_topic(d, Topic::Device(MessageKind::ConfigAck))?;
            waiting.insert(ack, d.clone());
        }
        let sends = devices
            .iter()
            .map(|d| self.write_topic(d, Topic::Device(MessageKind::Config)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut answers = self.router.wait_on(waiting.keys().cloned());
        for t in &sends {
            self.router.publish(t, &payload).await?;
        }
        let mut report = ConfigPushReport::default();
        let deadline = tokio::time::Instant::now() + timeout;
        while !waiting.is_empty() {
            let (topic, bytes) = match answers.next(deadline).await {
                Ok(m) => m,
                Err(AppError::Timeout) => break,
                Err(e) => return Err(e),
            };
            let Ok(ack) = ConfigAck::decode(&bytes) else {
                self.count_undecodable();
                continue;
            };
            if ack.version != patch.version {
                // An answer to an earlier push.
                continue;
            }
            let Some(device) = waiting.remove(&topic) else {
                continue;
            };
            match ack.outcome {
                ConfigOutcome::Applied => report.applied.push(device),
                ConfigOutcome::Ignored => report.ignored.push((device, ack.current_version)),
                ConfigOutcome::Rejected => {
                    let why = ack.reason.unwrap_or("refused");
                    report.rejected.push((
                        device,
                        match ack.field {
                            Some(field) => format!("{field}: {why}"),
                            // Refused as a whole (by the host: not an
                            // operator's).
                            None => why.to_owned(),
                        },
                    ))
                }
            }
        }
        report.unanswered = waiting.into_values().collect();
        report.unanswered.sort();
        Ok(report)
    }

    /// Asks `device`'s gateway to pass its telemetry on unsummarised for
    /// `for_secs` seconds (at most an hour; 0 ends it), bypassing the fog
    /// tier's aggregation ([`crate::fog`]). Nothing answers: the readings
    /// come as telemetry events. A device without a fog tier in front of
    /// it sends raw readings anyway.
    pub async fn raw_readings(&self, device: &str, for_secs: u64) -> Result<(), AppError> {
        let t = device_topic(device, Topic::App(AppTopic::RawReadings))?;
        let mut payload = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = minicbor::encode(for_secs, &mut payload);
        self.router.publish(&t, &payload).await
    }

    /// A client token unique across processes too: an operator's next run
    /// with the same client id may be handed answers its predecessor never
    /// read.
    /// Revokes every certificate of `device` (compromise, or with
    /// `decommission` for good: it gets no new one) through the
    /// provisioning service, which has the broker refuse them; waits up to
    /// `timeout` for its answer: how many were revoked, or
    /// [`AppError::Rejected`] with why not (no certificate was issued to
    /// that device). Only operator identities may ask (the broker's ACL).
    pub async fn revoke(
        &self,
        device: &str,
        reason: &str,
        decommission: bool,
        timeout: Duration,
    ) -> Result<u64, AppError> {
        use crate::provision::messages::{
            RevokeAnswer, RevokeRequest, revoke_answer_topic, revoke_topic,
        };
        if self.tenants || !lanyard_core::topic::valid_device_id(device) {
            // Certificates are issued in the shared namespace only.
            return Err(AppError::BadDevice(device.to_owned()));
        }
        let answer_topic = revoke_answer_topic(device);
        self.router.subscribe(&answer_topic).await?;
        let token = self.operator_token();
        let request = RevokeRequest {
            token: token.clone(),
            reason: reason.to_owned(),
            decommission,
        };
        let mut waiting = self.router.wait_on([answer_topic]);
        self.router
            .publish(&revoke_topic(device), &request.encode())
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, payload) = waiting.next(deadline).await?;
            match RevokeAnswer::decode(&payload) {
                Some(a) if a.token == token => return a.outcome.map_err(AppError::Rejected),
                _ => continue,
            }
        }
    }

    /// The operator identity its writes name, if one was set.
    fn operator_identity(&self) -> Option<String> {
        self.operator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn operator_token(&self) -> String {
        format!(
            "op-{}-{}",
            crate::clock::Clock::real().now_ms(),
            self.next_id()
        )
    }

    /// Publishes `payload` on `device`'s topic `t` and waits up to
    /// `timeout` for the host's answer that names `token` (the host answers
    /// refusals with the token too). Other apps' answers pass by.
    async fn ask(
        &self,
        device: &str,
        t: AppTopic,
        payload: &[u8],
        token: &str,
        timeout: Duration,
    ) -> Result<u64, AppError> {
        let request = HostRequest {
            device,
            topic: t,
            payload: payload.to_vec(),
            token: token.to_owned(),
        };
        self.ask_many(vec![request], timeout).await?.into_single()
    }

    /// Sends every request, then waits up to `timeout` for the host's
    /// answers, each matched by its device's answer topic and its token.
    /// A device id that cannot be one is refused before anything is sent.
    async fn ask_many(
        &self,
        requests: Vec<HostRequest<'_>>,
        timeout: Duration,
    ) -> Result<HostAnswers, AppError> {
        // Answer topic -> (device, token).
        let mut waiting = std::collections::HashMap::new();
        let mut sends = Vec::with_capacity(requests.len());
        for r in requests {
            sends.push((self.write_topic(r.device, Topic::App(r.topic))?, r.payload));
            let answers = device_topic(r.device, Topic::App(AppTopic::DesiredAnswer))?;
            waiting.insert(answers, (r.device.to_owned(), r.token));
        }
        let mut answers = self.router.wait_on(waiting.keys().cloned());
        for (topic, payload) in &sends {
            self.router.publish(topic, payload).await?;
        }
        let mut report = HostAnswers::default();
        let deadline = tokio::time::Instant::now() + timeout;
        while !waiting.is_empty() {
            let (topic, payload) = match answers.next(deadline).await {
                Ok(m) => m,
                Err(AppError::Timeout) => break,
                Err(e) => return Err(e),
            };
            let Some(answer) = DesiredAnswer::decode(&payload) else {
                continue;
            };
            // Another request's answer (an earlier one, another app's).
            if waiting.get(&topic).is_none_or(|(_, t)| *t != answer.token) {
                continue;
            }
            if let Some((device, _)) = waiting.remove(&topic) {
                match answer.outcome {
                    Ok(version) => report.applied.push((device, version)),
                    Err(why) => report.refused.push((device, why)),
                }
            }
        }
        report.unanswered = waiting.into_values().map(|(d, _)| d).collect();
        report.unanswered.sort();
        Ok(report)
    }

    /// Sends a command and waits for its final acknowledgement. A device
    /// not in service (never registered, or decommissioned) is refused at
    /// once by the twin host: [`AppError::Rejected`].
    ///
    /// Commands from one client carry strictly increasing issue times
    /// (`now_ms`, or a millisecond past the previous command's): a device
    /// refuses as stale a command issued no later than one its dedupe
    /// window has let go of, and two commands stamped with the same
    /// millisecond would make the later one look that old.
    pub async fn command(
        &self,
        device: &str,
        name: &str,
        args: &[u8],
        now_ms: u64,
        timeout: Duration,
    ) -> Result<CommandOutcome, AppError> {
        let lifetime_ms = timeout.as_millis() as u64;
        self.command_expiring(device, name, args, (now_ms, lifetime_ms), timeout)
            .await
    }

    /// [`command`](Self::command) with the command's lifetime on the
    /// device's clock apart from how long to wait for its answer: `at` is
    /// (now, lifetime) in ms on the clock devices keep, which a simulation
    /// may run faster than real time.
    pub async fn command_expiring(
        &self,
        device: &str,
        name: &str,
        args: &[u8],
        at: (u64, u64),
        timeout: Duration,
    ) -> Result<CommandOutcome, AppError> {
        let mut report = self
            .command_to(&[device.to_owned()], name, args, at, timeout)
            .await?;
        if let Some((_, outcome)) = report.finished.pop() {
            return Ok(outcome);
        }
        if let Some((device, why)) = report.unknown.pop() {
            return Err(AppError::Rejected(format!("{device}: {why}")));
        }
        Err(AppError::Timeout)
    }

    /// Sends the same command to each of `devices` at once (each copy with
    /// its own id) and waits up to `timeout` for their final
    /// acknowledgements: an operator's step over a fleet takes one round
    /// trip, not one per device. `at` is as for
    /// [`command_expiring`](Self::command_expiring). A device id that
    /// cannot be one is refused before anything is sent.
    pub async fn command_to(
        &self,
        devices: &[String],
        name: &str,
        args: &[u8],
        (now_ms, lifetime_ms): (u64, u64),
        timeout: Duration,
    ) -> Result<CommandFanOutReport, AppError> {
        // Ack topic -> (device, command id).
        let mut waiting = std::collections::HashMap::new();
        let mut sends = Vec::with_capacity(devices.len());
        for device in devices {
            let cmd_topic = self.write_topic(device, Topic::Device(MessageKind::Command))?;
            let ack_topic = device_topic(device, Topic::Device(MessageKind::Ack))?;
            let issued_ms = {
                let mut last = self
                    .last_issued_ms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                *last = now_ms.max(*last + 1);
                *last
            };
            let id = format!("app-{issued_ms}-{}", self.next_id());
            let mut buf = vec![0u8; 1024];
            let n = Command {
                id: &id,
                name,
                args,
                issued_ms,
                expires_ms: issued_ms + lifetime_ms,
            }
            .encode(&mut buf)
            .map_err(AppError::Codec)?;
            buf.truncate(n);
            sends.push((cmd_topic, buf));
            waiting.insert(ack_topic, (device.clone(), id));
        }
        let mut answers = self.router.wait_on(waiting.keys().cloned());
        for (topic, payload) in &sends {
            self.router.publish(topic, payload).await?;
        }
        let mut report = CommandFanOutReport::default();
        let deadline = tokio::time::Instant::now() + timeout;
        while !waiting.is_empty() {
            let (topic, payload) = match answers.next(deadline).await {
                Ok(m) => m,
                Err(AppError::Timeout) => break,
                Err(e) => return Err(e),
            };
            let Ok(ack) = Ack::decode(&payload) else {
                self.count_undecodable();
                continue;
            };
            // Another command's acknowledgement, or not yet the last.
            let ours = waiting
                .get(&topic)
                .is_some_and(|(_, id)| *id == ack.command_id);
            if !ours {
                continue;
            }
            if ack.reason == Some(AckReason::UnknownDevice) {
                // The twin host's answer: no device in service has the id.
                if let Some((device, _)) = waiting.remove(&topic) {
                    let why = ack.detail.unwrap_or("unknown device").to_owned();
                    report.unknown.push((device, why));
                }
            } else if ack.status.is_final() {
                if let Some((device, _)) = waiting.remove(&topic) {
                    report.finished.push((
                        device,
                        CommandOutcome {
                            status: ack.status,
                            reason: ack.reason,
                            result: ack.result.map(<[u8]>::to_vec),
                            detail: ack.detail.map(str::to_owned),
                        },
                    ));
                }
            }
        }
        report.unanswered = waiting.into_values().map(|(d, _)| d).collect();
        report.unanswered.sort();
        Ok(report)
    }

    /// Sends `device` a new configuration (it applies it if the version is
    /// newer and every field valid, and answers with a config-ack).
    pub async fn push_config(
        &self,
        device: &str,
        config: &lanyard_core::agent::config::DeviceConfig,
    ) -> Result<(), AppError> {
        let t = self.write_topic(device, Topic::Device(MessageKind::Config))?;
        let mut e = minicbor::Encoder::new(Vec::new());
        // Encoding into a Vec cannot fail.
        let _ = config.encode_cbor(&mut e);
        self.router.publish(&t, &e.into_writer()).await
    }

    /// Ends the app: waits up to `within` for what it published to reach
    /// the broker, then drops the connection. Calls still waiting, and
    /// later ones, fail with [`TransportError::Closed`].
    pub async fn close(&self, within: Duration) -> Result<(), AppError> {
        self.router.close(within).await
    }

    /// Messages skipped because they did not decode (a misbehaving
    /// device's, say), each also logged.
    pub fn undecodable(&self) -> u64 {
        self.router.undecodable.load(Ordering::Relaxed)
    }

    fn count_undecodable(&self) {
        self.router.undecodable.fetch_add(1, Ordering::Relaxed);
    }

    /// Events [`next_event`](Self::next_event) dropped because more than
    /// [`EVENT_QUEUE`] were waiting to be read.
    pub fn events_dropped(&self) -> u64 {
        self.own_events.as_ref().map_or(0, Events::dropped)
    }

    /// The next delta, report, telemetry, fleet event or acknowledgement
    /// of any device. A message that does not decode, or whose topic names
    /// no valid device (the twin host's start-up probes use a reserved
    /// id), is skipped: one device's bad message does not stop an app from
    /// hearing the others. Fails once the own subscription was taken
    /// ([`take_events`](Self::take_events)).
    pub async fn next_event(&mut self) -> Result<AppEvent, AppError> {
        match self.own_events.as_mut() {
            Some(events) => events.next().await,
            None => Err(AppError::Transport(TransportError::Closed)),
        }
    }
}

impl AppEvent {
    /// The device it is about.
    pub fn device(&self) -> &str {
        match self {
            AppEvent::Delta { device, .. }
            | AppEvent::Reported { device, .. }
            | AppEvent::Telemetry { device, .. }
            | AppEvent::Fleet { device, .. }
            | AppEvent::Ack { device, .. } => device,
        }
    }
}

/// The event a message no call waits for makes, if any (see
/// [`AppClient::next_event`]); what does not decode is counted in
/// `undecodable` and logged.
fn event_of(
    topic: &str,
    payload: &[u8],
    tenants: bool,
    undecodable: &AtomicU64,
) -> Option<AppEvent> {
    if let Some(ev) = fleet_event(topic, payload, tenants, undecodable) {
        return ev;
    }
    let (device, kind) = if tenants {
        MessageKind::parse_tenant_topic(topic).map(|(tn, id, k)| (format!("{tn}/{id}"), k))
    } else {
        MessageKind::parse_topic(topic).map(|(id, k)| (id.to_owned(), k))
    }?;
    if !device.split('/').all(valid_device_id) {
        return None;
    }
    match device_event(device, kind, payload) {
        Ok(ev) => ev,
        Err(e) => {
            undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, error = %e, "undecodable message skipped");
            None
        }
    }
}

/// The host's event about a device, if `topic` is one's: `Some(None)` when
/// it is but does not decode.
fn fleet_event(
    topic: &str,
    payload: &[u8],
    tenants: bool,
    undecodable: &AtomicU64,
) -> Option<Option<AppEvent>> {
    let rest = topic
        .strip_prefix(lanyard_core::agent::messages::TOPIC_PREFIX)?
        .strip_suffix(AppTopic::Event.suffix())?
        .strip_suffix('/')?;
    let levels = rest.split('/').count();
    if levels != 1 + usize::from(tenants) || !rest.split('/').all(valid_device_id) {
        return None;
    }
    match crate::twin::FleetEvent::decode(payload) {
        Some(event) => Some(Some(AppEvent::Fleet {
            device: rest.to_owned(),
            event,
        })),
        None => {
            undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, "undecodable fleet event skipped");
            Some(None)
        }
    }
}

/// The event a message of `kind` from `device` makes, if any.
fn device_event(
    device: String,
    kind: MessageKind,
    payload: &[u8],
) -> Result<Option<AppEvent>, AppError> {
    let codec = AppError::Codec;
    Ok(Some(match kind {
        MessageKind::ShadowDelta => {
            let d: Box<ShadowDelta<TWIN_LEAVES, TWIN_POOL>> =
                Box::new(ShadowDelta::decode(payload).map_err(codec)?);
            AppEvent::Delta {
                device,
                state: Box::new(d.state),
            }
        }
        MessageKind::ShadowUpdate => {
            let mut up: Box<ShadowUpdate<TWIN_LEAVES, TWIN_POOL>> = Box::new(ShadowUpdate::new(0));
            up.decode_into(payload).map_err(codec)?;
            let Some(state) = up.reported.take() else {
                return Ok(None);
            };
            let rejected = up.rejected.as_ref().map_or_else(Vec::new, |t| {
                Rejection::all_of(
                    t.iter()
                        .filter_map(|l| Some((l.path, reason_code(l.value)?))),
                )
            });
            AppEvent::Reported {
                device,
                state: Box::new(state),
                rejected,
            }
        }
        MessageKind::Telemetry => {
            let t: Box<Telemetry<TWIN_LEAVES, TWIN_POOL>> =
                Box::new(Telemetry::decode(payload).map_err(codec)?);
            AppEvent::Telemetry {
                device,
                seq: t.seq,
                time_ms: t.time_ms,
                readings: Box::new(t.readings),
            }
        }
        MessageKind::Ack => {
            let a = Ack::decode(payload).map_err(codec)?;
            AppEvent::Ack {
                device,
                command_id: a.command_id.to_owned(),
                status: a.status,
            }
        }
        _ => return Ok(None),
    }))
}

/// The shadow update an app sends for `desired` at `now_ms`, with the
/// client token the host answers under, if one is asked for; encoded
/// through `buf` (64 KiB, kept by the caller across a fan-out).
fn desired_update<const L: usize, const P: usize>(
    desired: &StateTree<L, P>,
    now_ms: u64,
    token: Option<&str>,
    buf: &mut [u8],
) -> Result<Vec<u8>, AppError> {
    let mut up: Box<ShadowUpdate<L, P>> = Box::new(ShadowUpdate::new(now_ms));
    up.desired = Some(desired.clone());
    // "app-", two numbers of at most 20 digits and a dash: always within a
    // token's 64 bytes.
    up.client_token = token.and_then(|t| heapless::String::try_from(t).ok());
    let n = up.encode(buf).map_err(AppError::Codec)?;
    Ok(buf[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{MemoryBroker, Qos, TransportEvent};

    /// Two commands sent in the same millisecond still carry distinct,
    /// increasing issue times (else a device could refuse the retry of a
    /// lost one as stale).
    #[tokio::test]
    async fn commands_from_one_client_have_increasing_issue_times() {
        let broker = MemoryBroker::new();
        let mut device_side = broker.connect();
        device_side.subscribe("lanyard/v1/+/cmd").await.unwrap();
        let app = AppClient::new(broker.connect()).await.unwrap();
        for _ in 0..3 {
            let r = app
                .command("ly-1", "ping", &[], 5_000, Duration::from_millis(5))
                .await;
            assert!(matches!(r, Err(AppError::Timeout)), "{r:?}");
        }
        let mut issued = Vec::new();
        while let Ok(Ok(TransportEvent::Message { payload, .. })) =
            tokio::time::timeout(Duration::from_millis(50), device_side.recv()).await
        {
            let cmd = Command::decode(&payload).unwrap();
            assert_eq!(cmd.expires_ms, cmd.issued_ms + 5);
            issued.push(cmd.issued_ms);
        }
        assert_eq!(issued, [5_000, 5_001, 5_002]);
    }

    /// One command to many devices: each answered one is reported with its
    /// outcome, the silent one as unanswered, another command's
    /// acknowledgement is not taken for one of them.
    #[tokio::test]
    async fn a_command_to_many_devices_reports_each() {
        let broker = MemoryBroker::new();
        let mut devices = broker.connect();
        devices.subscribe("lanyard/v1/+/cmd").await.unwrap();
        let mut answering = broker.connect();
        let app = AppClient::new(broker.connect()).await.unwrap();
        let device = tokio::spawn(async move {
            while let Ok(TransportEvent::Message { topic, payload }) = devices.recv().await {
                let cmd = Command::decode(&payload).unwrap();
                if !topic.contains("/ly-1/") {
                    continue;
                }
                for (id, status) in [
                    ("not-ours", AckStatus::Failed),
                    (cmd.id, AckStatus::Succeeded),
                ] {
                    let payload = ack(id, status);
                    answering
                        .publish("lanyard/v1/ly-1/ack", &payload, Qos::AtLeastOnce)
                        .await
                        .unwrap();
                }
            }
        });
        let ids = ["ly-1".to_owned(), "ly-2".to_owned()];
        let report = app
            .command_to(
                &ids,
                "ping",
                &[],
                (5_000, 1_000),
                Duration::from_millis(300),
            )
            .await
            .unwrap();
        assert_eq!(report.finished.len(), 1, "{report:?}");
        assert_eq!(report.finished[0].0, "ly-1");
        assert_eq!(report.finished[0].1.status, AckStatus::Succeeded);
        assert_eq!(report.unanswered, ["ly-2"]);
        assert!(report.unknown.is_empty());
        device.abort();
    }

    fn ack(id: &str, status: AckStatus) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let n = Ack {
            command_id: id,
            status,
            reason: None,
            detail: None,
            result: None,
            time_ms: 1,
        }
        .encode(&mut buf)
        .unwrap();
        buf[..n].to_vec()
    }

    /// A device that answers each command after `delay_ms` (its id's
    /// number, `ly-{delay_ms}`).
    fn slow_devices(broker: &MemoryBroker) -> tokio::task::JoinHandle<()> {
        let mut devices = broker.connect();
        let answering = std::sync::Arc::new(tokio::sync::Mutex::new(broker.connect()));
        tokio::spawn(async move {
            devices.subscribe("lanyard/v1/+/cmd").await.unwrap();
            while let Ok(TransportEvent::Message { topic, payload }) = devices.recv().await {
                let cmd = Command::decode(&payload).unwrap();
                let device = topic.split('/').nth(2).unwrap().to_owned();
                let delay: u64 = device.trim_start_matches("ly-").parse().unwrap();
                let (id, answering) = (cmd.id.to_owned(), answering.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let topic = format!("lanyard/v1/{device}/ack");
                    let payload = ack(&id, AckStatus::Succeeded);
                    let mut t = answering.lock().await;
                    t.publish(&topic, &payload, Qos::AtLeastOnce).await.unwrap();
                });
            }
        })
    }

    /// Calls from several tasks proceed at once: a command to a slow
    /// device does not hold up one to a fast device, nor a reader of
    /// events.
    #[tokio::test]
    async fn calls_wait_only_for_their_own_answers() {
        let broker = MemoryBroker::new();
        let devices = slow_devices(&broker);
        let mut app = AppClient::new(broker.connect()).await.unwrap();
        let mut events = app.take_events().unwrap();
        let app = std::sync::Arc::new(app);
        let reader = tokio::spawn(async move { events.next().await });
        let slow = {
            let app = app.clone();
            tokio::spawn(async move {
                app.command("ly-600", "ping", &[], 1, Duration::from_secs(5))
                    .await
            })
        };
        // Let the slow command be sent and waiting first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = tokio::time::Instant::now();
        let fast = app
            .command("ly-1", "ping", &[], 2, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(fast.status, AckStatus::Succeeded);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "the fast command waited {:?}",
            started.elapsed()
        );
        assert!(!slow.is_finished(), "the slow device answers after 600 ms");
        assert_eq!(slow.await.unwrap().unwrap().status, AckStatus::Succeeded);
        // The acknowledgements were the commands' answers, not events.
        assert!(!reader.is_finished());
        reader.abort();
        devices.abort();
    }

    /// Each subscription gets the events of the devices it watches, in a
    /// bounded queue that counts what it had to drop.
    #[tokio::test]
    async fn a_subscription_sees_its_devices_and_counts_what_it_dropped() {
        let broker = MemoryBroker::new();
        let mut device = broker.connect();
        let app = AppClient::new(broker.connect()).await.unwrap();
        assert!(matches!(app.events(Watch::Fleet, 0), Err(ZeroCapacity)));
        let mut one = app.events(Watch::device("ly-1"), 2).unwrap();
        let mut fleet = app.events(Watch::Fleet, 100).unwrap();
        for n in 0..5 {
            let payload = ack(&format!("c{n}"), AckStatus::Succeeded);
            device
                .publish("lanyard/v1/ly-1/ack", &payload, Qos::AtLeastOnce)
                .await
                .unwrap();
        }
        let payload = ack("other", AckStatus::Failed);
        device
            .publish("lanyard/v1/ly-2/ack", &payload, Qos::AtLeastOnce)
            .await
            .unwrap();
        let mut fleet_seen = Vec::new();
        while fleet_seen.len() < 6 {
            let ev = tokio::time::timeout(Duration::from_secs(2), fleet.next())
                .await
                .expect("six events")
                .unwrap();
            fleet_seen.push(ev.device().to_owned());
        }
        assert_eq!(fleet_seen.iter().filter(|d| *d == "ly-2").count(), 1);
        assert_eq!(fleet.dropped(), 0);
        let mut ids = Vec::new();
        while let Some(ev) = one.try_next() {
            let AppEvent::Ack {
                device, command_id, ..
            } = ev
            else {
                panic!("{ev:?}");
            };
            assert_eq!(device, "ly-1");
            ids.push(command_id);
        }
        assert_eq!(ids, ["c0", "c1"], "the oldest kept, the newer dropped");
        assert_eq!(one.dropped(), 3);
    }

    /// A call given up half-way (its task cancelled) leaves nothing behind:
    /// the answer it waited for comes later as an event.
    #[tokio::test]
    async fn a_cancelled_call_leaves_no_registration() {
        let broker = MemoryBroker::new();
        let mut device = broker.connect();
        let mut app = AppClient::new(broker.connect()).await.unwrap();
        let given_up = tokio::time::timeout(
            Duration::from_millis(50),
            app.command("ly-1", "ping", &[], 1, Duration::from_secs(10)),
        )
        .await;
        assert!(given_up.is_err());
        let payload = ack("late", AckStatus::Succeeded);
        device
            .publish("lanyard/v1/ly-1/ack", &payload, Qos::AtLeastOnce)
            .await
            .unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(2), app.next_event())
            .await
            .expect("the late acknowledgement as an event")
            .unwrap();
        assert!(matches!(ev, AppEvent::Ack { ref command_id, .. } if command_id == "late"));
    }

    /// After `close`, calls and readers fail at once with `Closed`.
    #[tokio::test]
    async fn a_closed_client_refuses_calls_and_ends_its_events() {
        let broker = MemoryBroker::new();
        let mut app = AppClient::new(broker.connect()).await.unwrap();
        let mut events = app.events(Watch::Fleet, 10).unwrap();
        app.close(Duration::from_secs(1)).await.unwrap();
        let r = app
            .command("ly-1", "ping", &[], 1, Duration::from_secs(10))
            .await;
        assert_eq!(r, Err(AppError::Transport(TransportError::Closed)));
        let r = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
        assert!(
            matches!(r, Ok(Err(AppError::Transport(TransportError::Closed)))),
            "{r:?}"
        );
        let r = tokio::time::timeout(Duration::from_secs(1), app.next_event()).await;
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    }
}
