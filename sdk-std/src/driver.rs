//! The tokio driver of the device agent: it moves the agent's messages over
//! a [`Transport`], feeds it inbound messages and the time, and sleeps until
//! its next deadline. It adds no rules: every decision is the agent's.

use lanyard_core::agent::health::SlowTelemetryOnLowBattery;
use lanyard_core::agent::messages::{MessageKind, parse_topic_in, topic_in};
use lanyard_core::agent::platform::{
    CommandHandler, DesiredState, HealthProbe, Platform, Storage, TelemetrySource,
};
use lanyard_core::agent::{Agent, AgentEvent};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// The agent type the std driver runs: 64 queued messages of up to `M`
/// bytes (1 KiB unless chosen), a shadow of `L` leaves and `B` bytes of
/// keys and text (16 and 512 unless chosen). A gateway holding an 8 KB
/// AWS-sized document picks larger ones, with `M` above the encoded
/// reported state (see [`DeviceBuilder::build_with_capacity`]).
///
/// [`DeviceBuilder::build_with_capacity`]: crate::device::DeviceBuilder::build_with_capacity
pub type StdAgent<
    const M: usize = 1024,
    const L: usize = { lanyard_core::agent::SHADOW_LEAVES },
    const B: usize = { lanyard_core::agent::SHADOW_POOL },
> = Agent<SlowTelemetryOnLowBattery, 64, M, L, B>;

/// A std agent for the device with `mac` (its id derives from it),
/// reporting `firmware` as its version, with the default configuration
/// and telemetry policy until the cloud sends its own. Boxed: its fixed
/// buffers are too large for a task's stack.
pub fn std_agent(mac: [u8; 6], firmware: &'static str) -> Box<StdAgent> {
    std_agent_with_capacity(mac, firmware)
}

/// [`std_agent`] with the capacities of its type: messages of up to `M`
/// bytes, `L` leaves and `B` bytes of shadow.
pub fn std_agent_with_capacity<const M: usize, const L: usize, const B: usize>(
    mac: [u8; 6],
    firmware: &'static str,
) -> Box<StdAgent<M, L, B>> {
    let size = std::mem::size_of::<StdAgent<M, L, B>>();
    if size <= 128 * 1024 {
        return new_std_agent(mac, firmware);
    }
    // A large agent (a gateway's outbox of big messages) is built as a
    // value before it is boxed, which would overflow a task's stack: it is
    // built on a thread whose stack has room for a few copies of it.
    std::thread::Builder::new()
        .name("lanyard-agent-init".into())
        .stack_size(4 * size + (1 << 20))
        .spawn(move || new_std_agent(mac, firmware))
        .ok()
        .and_then(|t| t.join().ok())
        // Only if no thread could be made: try on this stack.
        .unwrap_or_else(|| new_std_agent(mac, firmware))
}

fn new_std_agent<const M: usize, const L: usize, const B: usize>(
    mac: [u8; 6],
    firmware: &'static str,
) -> Box<StdAgent<M, L, B>> {
    Box::new(Agent::new(
        lanyard_core::agent::Identity {
            mac,
            device_id: None,
            firmware,
        },
        lanyard_core::agent::config::DeviceConfig::default(),
        SlowTelemetryOnLowBattery,
    ))
}

/// What the driver saw, for logs, timelines and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverEvent {
    /// A message was published.
    Sent {
        /// Clock time, ms.
        at_ms: u64,
        /// What it was.
        kind: MessageKind,
        /// Its bytes.
        payload: Vec<u8>,
    },
    /// A message arrived and the agent took it.
    Received {
        /// Clock time, ms.
        at_ms: u64,
        /// What it was.
        kind: MessageKind,
        /// Its bytes (a device acts on a delta's or a configuration's
        /// content; the agent has already applied it).
        payload: Vec<u8>,
    },
    /// Something was refused or failed without stopping the device.
    Refused {
        /// Clock time, ms.
        at_ms: u64,
        /// What and why.
        why: Refusal,
    },
    /// An event of the agent.
    Agent {
        /// Clock time, ms.
        at_ms: u64,
        /// The event.
        event: AgentEvent,
    },
    /// The transport reconnected.
    Reconnected {
        /// Clock time, ms.
        at_ms: u64,
    },
}

/// What a [`DriverEvent::Refused`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A message on a topic that is not the device's.
    UnknownTopic(String),
    /// The agent refused an inbound message of this kind; nothing changed.
    Inbound(MessageKind, lanyard_core::agent::InboundError),
    /// A local change was not reported: an unusable path or a full shadow.
    Report(lanyard_core::Error),
    /// A command outcome arrived with no command running.
    NothingRunning,
    /// The outbound journal could not record or prune a message (it is
    /// still sent: only its survival of a crash is lost).
    Journal(std::io::ErrorKind),
    /// A message the agent queued did not fit the driver's buffer and was
    /// not sent.
    Unsendable(lanyard_core::EncodeError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownTopic(t) => write!(f, "unknown topic {t}"),
            Refusal::Inbound(kind, e) => write!(f, "{}: {e}", kind.topic_suffix()),
            Refusal::Report(e) => write!(f, "local change not reported: {e}"),
            Refusal::NothingRunning => f.write_str("a command outcome with no command running"),
            Refusal::Journal(e) => write!(f, "outbound journal: {e}"),
            Refusal::Unsendable(e) => write!(f, "message not sent: {e}"),
        }
    }
}

/// Why [`DeviceDriver::start`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The transport could not subscribe or deliver.
    Transport(TransportError),
    /// The agent refused to start (decommissioned, or saved state that
    /// cannot be read).
    Boot(lanyard_core::agent::BootError),
}

impl From<TransportError> for StartError {
    fn from(e: TransportError) -> Self {
        StartError::Transport(e)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Transport(e) => e.fmt(f),
            StartError::Boot(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

/// The platform pieces a driver lends the agent.
pub struct StdPlatform {
    /// Persistent storage.
    pub storage: Box<dyn Storage + Send>,
    /// Health metrics.
    pub probe: Box<dyn HealthProbe + Send>,
    /// The application's telemetry.
    pub telemetry: Box<dyn TelemetrySource + Send>,
    /// Application commands.
    pub commands: Box<dyn CommandHandler + Send>,
    /// What becomes of desired state ([`MirrorDesired`](lanyard_core::agent::platform::MirrorDesired) takes it as it is).
    pub desired: Box<dyn DesiredState + Send>,
}

impl StdPlatform {
    /// Lends the pieces to the agent for one call.
    pub fn lend(&mut self) -> Platform<'_> {
        Platform {
            storage: &mut *self.storage,
            probe: &mut *self.probe,
            telemetry: &mut *self.telemetry,
            commands: &mut *self.commands,
            desired: &mut *self.desired,
        }
    }
}

/// One object lent as several platform parts (a board whose sensor feeds
/// both its health and its telemetry, a device whose commands and desired
/// state move the same motor), and reachable from other tasks. The agent
/// never calls two parts at once, so the lock is never contended by it.
pub struct Shared<T>(pub std::sync::Arc<std::sync::Mutex<T>>);

impl<T> Shared<T> {
    /// `value`, shared.
    pub fn new(value: T) -> Self {
        Shared(std::sync::Arc::new(std::sync::Mutex::new(value)))
    }

    /// The value, locked (a panic elsewhere while it was locked does not
    /// make it unusable).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T: HealthProbe> HealthProbe for Shared<T> {
    fn metrics(&mut self, now_ms: u64) -> lanyard_core::agent::health::HealthMetrics {
        self.lock().metrics(now_ms)
    }
}

impl<T: TelemetrySource> TelemetrySource for Shared<T> {
    fn read(
        &mut self,
        now_ms: u64,
        readings: &mut lanyard_core::agent::platform::Readings,
    ) -> bool {
        self.lock().read(now_ms, readings)
    }
}

impl<T: CommandHandler> CommandHandler for Shared<T> {
    fn execute(
        &mut self,
        now_ms: u64,
        name: &str,
        args: lanyard_core::agent::platform::Args<'_>,
        result: &mut [u8],
    ) -> Option<
        Result<
            lanyard_core::agent::platform::Completion,
            lanyard_core::agent::platform::CommandFailure,
        >,
    > {
        self.lock().execute(now_ms, name, args, result)
    }
}

/// Runs one agent over one transport.
pub struct DeviceDriver<
    T: Transport,
    const M: usize = 1024,
    const L: usize = { lanyard_core::agent::SHADOW_LEAVES },
    const B: usize = { lanyard_core::agent::SHADOW_POOL },
> {
    // Boxed: the agent's fixed buffers are too large to move around on a
    // task's stack.
    agent: Box<StdAgent<M, L, B>>,
    transport: T,
    platform: StdPlatform,
    clock: Clock,
    events: Option<mpsc::UnboundedSender<DriverEvent>>,
    local: Option<mpsc::UnboundedReceiver<LocalChange>>,
    finished: Option<mpsc::UnboundedReceiver<CommandResult>>,
    metrics: Option<crate::metrics::Metrics>,
    buf: Vec<u8>,
    journal: Option<crate::store::OutboundJournal>,
    /// Messages a previous process journalled and never got acknowledged:
    /// sent first by `start`.
    leftovers: crate::store::Undelivered,
    /// At-least-once publishes handed to the transport by this process.
    qos1_published: u64,
    /// The tenant whose namespace the device's topics are in, if any.
    tenant: Option<String>,
    /// Firmware updates, if the device takes them, and what they have to
    /// send.
    updates: Option<crate::update::DeviceUpdates>,
    update_out: Vec<crate::update::Outgoing>,
}

/// A change of the device's own state (a button, a local setting), to be
/// reported in its shadow: a dotted path and its new value.
pub type LocalChange = (String, LocalValue);

/// How an application command that answered
/// [`Completion::Later`](lanyard_core::agent::platform::Completion::Later)
/// ended: its result (CBOR, empty for none) or why it failed. Sent to the
/// driver given it by [`DeviceDriver::with_command_results`].
pub type CommandResult = Result<Vec<u8>, lanyard_core::agent::platform::CommandFailure>;

/// The value of a [`LocalChange`]: a scalar the shadow holds, owned so it
/// can cross a channel.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}

impl LocalValue {
    /// As the shadow's value type.
    pub fn as_value(&self) -> lanyard_core::shadow::Value<'_> {
        use lanyard_core::shadow::Value;
        match self {
            LocalValue::Bool(b) => Value::Bool(*b),
            LocalValue::Int(i) => Value::Int(*i),
            LocalValue::Float(x) => Value::Float(*x),
            LocalValue::Text(t) => Value::Text(t),
        }
    }
}

/// A MAC address written `02:00:00:00:00:bb` (the agent derives the
/// device id from it).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("MAC address needs six bytes: {s}"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        let hex = (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit());
        *m = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| hex)
            .ok_or_else(|| format!("bad MAC byte {p:?} in {s}"))?;
    }
    Ok(mac)
}

/// The topics a device listens on.
pub const DEVICE_INBOUND: [MessageKind; 4] = [
    MessageKind::RegisterAccepted,
    MessageKind::ShadowDelta,
    MessageKind::Command,
    MessageKind::Config,
];

impl<T: Transport, const M: usize, const L: usize, const B: usize> DeviceDriver<T, M, L, B> {
    /// A driver; call [`DeviceDriver::start`] next.
    pub fn new(
        agent: Box<StdAgent<M, L, B>>,
        transport: T,
        platform: StdPlatform,
        clock: Clock,
    ) -> Self {
        DeviceDriver {
            agent,
            transport,
            platform,
            clock,
            events: None,
            local: None,
            finished: None,
            metrics: None,
            buf: vec![0; M],
            journal: None,
            leftovers: Vec::new(),
            qos1_published: 0,
            tenant: None,
            updates: None,
            update_out: Vec::new(),
        }
    }

    /// Puts the device's topics in `tenant`'s namespace
    /// (`lanyard/v1/{tenant}/{device-id}/...`). Refuses a name that
    /// [`valid_tenant`](lanyard_core::agent::messages::valid_tenant)
    /// refuses.
    pub fn with_tenant(mut self, tenant: &str) -> Result<Self, crate::InvalidTenant> {
        crate::check_tenant(tenant)?;
        self.tenant = Some(tenant.to_owned());
        Ok(self)
    }

    /// The device's topic for `kind`, in its tenant's namespace if it has
    /// one.
    /// Takes firmware updates (see [`crate::update`]): the driver
    /// subscribes to the device's update topics, hands them `updates`, and
    /// sends what it answers. In the shared namespace only.
    pub fn with_updates(mut self, updates: crate::update::DeviceUpdates) -> Self {
        self.updates = Some(updates);
        self
    }

    /// The firmware updates, if any.
    pub fn updates(&self) -> Option<&crate::update::DeviceUpdates> {
        self.updates.as_ref()
    }

    fn topic_of(&self, kind: MessageKind) -> String {
        // The tenant name was checked by `with_tenant`.
        topic_in(self.tenant.as_deref(), self.agent.device_id(), kind)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Keeps at-least-once messages in an [`OutboundJournal`] in `dir`
    /// until the broker acknowledges them, and sends what a killed
    /// predecessor left unacknowledged first thing in
    /// [`DeviceDriver::start`]. Fails on a damaged journal (which it leaves
    /// for inspection).
    ///
    /// [`OutboundJournal`]: crate::store::OutboundJournal
    pub fn with_journal(mut self, dir: &std::path::Path) -> std::io::Result<Self> {
        let (journal, leftovers) = crate::store::OutboundJournal::open(dir)?;
        self.journal = Some(journal);
        self.leftovers = leftovers;
        Ok(self)
    }

    /// Messages journalled and not yet acknowledged by the broker.
    pub fn unacknowledged(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.len())
    }

    /// Sends what the driver sees to `tx`.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<DriverEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Counts messages, bytes, queue depth, health and state in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Takes local changes of the device's state from `rx`.
    pub fn with_local_changes(mut self, rx: mpsc::UnboundedReceiver<LocalChange>) -> Self {
        self.local = Some(rx);
        self
    }

    /// Takes the outcomes of long-running commands from `rx`: each one
    /// finishes the command running then (one runs at a time).
    pub fn with_command_results(mut self, rx: mpsc::UnboundedReceiver<CommandResult>) -> Self {
        self.finished = Some(rx);
        self
    }

    /// The agent.
    pub fn agent(&self) -> &StdAgent<M, L, B> {
        &self.agent
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn emit(&self, e: DriverEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Subscribes to the device's inbound topics and boots the agent
    /// (restoring its persisted state). Refused when the device is
    /// decommissioned or its saved state cannot be read
    /// ([`StartError::Boot`]): it never starts again from scratch on its own.
    pub async fn start(&mut self) -> Result<(), StartError> {
        for kind in DEVICE_INBOUND {
            self.transport.subscribe(&self.topic_of(kind)).await?;
        }
        if self.updates.is_some() && self.tenant.is_none() {
            use lanyard_core::update::messages::UpdateTopic;
            for t in UpdateTopic::ALL.into_iter().filter(|t| !t.from_device()) {
                self.transport
                    .subscribe(&t.topic(self.agent.device_id()))
                    .await?;
            }
        }
        // What a killed predecessor never got acknowledged goes first, in
        // its original order.
        for (kind, bytes) in std::mem::take(&mut self.leftovers) {
            self.publish(kind, &bytes, true).await?;
        }
        let now = self.clock.now_ms();
        self.agent
            .boot(now, &mut self.platform.lend())
            .map_err(StartError::Boot)?;
        if let Some(u) = self.updates.as_mut() {
            let out = u.boot(now);
            self.update_out.extend(out);
        }
        Ok(self.flush().await?)
    }

    /// Publishes one message; an at-least-once one is journalled first.
    async fn publish(
        &mut self,
        kind: MessageKind,
        bytes: &[u8],
        needs_ack: bool,
    ) -> Result<(), TransportError> {
        let qos = if needs_ack {
            Qos::AtLeastOnce
        } else {
            Qos::AtMostOnce
        };
        if needs_ack {
            self.qos1_published += 1;
            if let Some(j) = &mut self.journal
                && let Err(e) = j.record(self.qos1_published, kind, bytes)
            {
                // Still sent: only its survival of a crash is lost.
                self.emit(DriverEvent::Refused {
                    at_ms: self.clock.now_ms(),
                    why: Refusal::Journal(e.kind()),
                });
            }
        }
        let topic = self.topic_of(kind);
        self.transport.publish(&topic, bytes, qos).await
    }

    /// Drops from the journal what the broker has acknowledged.
    fn prune_journal(&mut self) {
        let acked = self.transport.acknowledged();
        if let Some(j) = &mut self.journal
            && let Err(e) = j.acknowledged(acked)
        {
            self.emit(DriverEvent::Refused {
                at_ms: self.clock.now_ms(),
                why: Refusal::Journal(e.kind()),
            });
        }
    }

    /// Publishes everything the agent has queued and reports its events.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        let now = self.clock.now_ms();
        loop {
            let t = match self.agent.poll_transmit(&mut self.buf) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                // The buffer holds the agent's largest message; a message
                // too large for it stays queued, so stop here.
                Err(e) => {
                    self.emit(DriverEvent::Refused {
                        at_ms: now,
                        why: Refusal::Unsendable(e),
                    });
                    break;
                }
            };
            // Lent out for the publish, which borrows the driver.
            let buf = std::mem::take(&mut self.buf);
            let sent = self.publish(t.kind, &buf[..t.len], t.needs_ack).await;
            self.buf = buf;
            sent?;
            if self.events.is_some() {
                self.emit(DriverEvent::Sent {
                    at_ms: now,
                    kind: t.kind,
                    payload: self.buf[..t.len].to_vec(),
                });
            }
        }
        while let Some(event) = self.agent.poll_event() {
            self.emit(DriverEvent::Agent { at_ms: now, event });
        }
        for (t, bytes) in std::mem::take(&mut self.update_out) {
            let topic = t.topic(self.agent.device_id());
            self.transport
                .publish(&topic, &bytes, Qos::AtLeastOnce)
                .await?;
        }
        if let Some(u) = self.updates.as_mut() {
            if u.restart_if_due() {
                // Everything said before the restart.
                self.transport
                    .flush(std::time::Duration::from_secs(5))
                    .await?;
            }
        }
        self.prune_journal();
        if let Some(m) = &self.metrics {
            let id = self.agent.device_id().to_owned();
            let stats = self.agent.stats();
            for (kind, n) in MessageKind::ALL.iter().zip(stats.queued) {
                if n > 0 {
                    m.set_total(
                        "lanyard_device_messages_total",
                        "Messages the device queued for sending, by kind",
                        vec![("device", id.clone()), ("kind", kind.topic_suffix().into())],
                        n as f64,
                    );
                }
            }
            m.set(
                "lanyard_device_queue_depth",
                "Messages waiting in the outbox",
                vec![("device", id.clone())],
                self.agent.queued() as f64,
            );
            m.set_total(
                "lanyard_device_dropped_total",
                "Messages dropped from a full outbox",
                vec![("device", id.clone())],
                stats.dropped.iter().sum::<u64>() as f64,
            );
            m.set(
                "lanyard_device_health",
                "Health status: 0 normal, 1 warning, 2 critical",
                vec![("device", id.clone())],
                self.agent.health().status as u8 as f64,
            );
            m.set(
                "lanyard_device_state",
                "Lifecycle state code (0 unprovisioned .. 5 decommissioned)",
                vec![("device", id)],
                f64::from(self.agent.state().code()),
            );
        }
        Ok(())
    }

    /// Sends what the agent has queued and waits, at most `within`, until
    /// the broker has every message: call it before dropping a driver
    /// whose last messages matter (a decommissioned device's
    /// acknowledgement and final lifecycle event).
    pub async fn finish(&mut self, within: std::time::Duration) -> Result<(), TransportError> {
        self.flush().await?;
        self.transport.flush(within).await?;
        self.prune_journal();
        Ok(())
    }

    /// Runs until `stop` completes, the transport closes, or the device
    /// is decommissioned (then its final acknowledgement and lifecycle
    /// event are delivered, for up to five seconds, before it returns: a
    /// decommissioned device has nothing more to do, and does not start
    /// again).
    pub async fn run_until(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), TransportError> {
        tokio::pin!(stop);
        loop {
            if self.agent.state() == lanyard_core::agent::lifecycle::LifecycleState::Decommissioned
            {
                return self.finish(std::time::Duration::from_secs(5)).await;
            }
            self.flush().await?;
            let next_update = self.updates.as_ref().and_then(|u| u.next_tick());
            let wait = match (self.agent.poll_timeout(), next_update) {
                (Some(a), Some(b)) => self.clock.real_wait_until(a.min(b)),
                (Some(at), None) | (None, Some(at)) => self.clock.real_wait_until(at),
                (None, None) => std::time::Duration::from_secs(3_600),
            };
            let local = async {
                match self.local.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let finished = async {
                match self.finished.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return Ok(()),
                Some(outcome) = finished => {
                    let now = self.clock.now_ms();
                    let outcome = outcome.as_deref().map_err(|e| *e);
                    if self.agent.complete_command(now, outcome, &mut self.platform.lend()).is_err() {
                        self.emit(DriverEvent::Refused { at_ms: now, why: Refusal::NothingRunning });
                    }
                }
                Some((path, value)) = local => {
                    let now = self.clock.now_ms();
                    match lanyard_core::shadow::PathBuf::from_dotted(&path) {
                        Ok(p) => {
                            match self.agent.report(now, p.as_path(), value.as_value()) {
                                // The sync it asks for is due now: send it
                                // before anything else can overwrite it.
                                Ok(()) => self.agent.handle_timeout(now, &mut self.platform.lend()),
                                Err(e) => self.emit(DriverEvent::Refused { at_ms: now, why: Refusal::Report(e) }),
                            }
                        }
                        Err(e) => self.emit(DriverEvent::Refused { at_ms: now, why: Refusal::Report(e.into()) }),
                    }
                }
                ev = self.transport.recv() => {
                    let now = self.clock.now_ms();
                    match ev? {
                        TransportEvent::Message { topic, payload } => self.inbound(now, &topic, &payload),
                        TransportEvent::Reconnected => {
                            self.emit(DriverEvent::Reconnected { at_ms: now });
                            self.agent.handle_reconnect(now);
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    let now = self.clock.now_ms();
                    self.agent.handle_timeout(now, &mut self.platform.lend());
                    if let Some(u) = self.updates.as_mut() {
                        let out = u.tick(now);
                        self.update_out.extend(out);
                    }
                }
            }
        }
    }

    fn inbound(&mut self, now: u64, topic: &str, payload: &[u8]) {
        if let Some(u) = self.updates.as_mut() {
            if let Some((id, t)) = lanyard_core::update::messages::UpdateTopic::parse(topic) {
                if id == self.agent.device_id() && self.tenant.is_none() {
                    let degraded = self.agent.state()
                        == lanyard_core::agent::lifecycle::LifecycleState::Degraded;
                    let out = u.inbound(now, t, payload, degraded);
                    self.update_out.extend(out);
                }
                return;
            }
        }
        let Some((id, kind)) = parse_topic_in(self.tenant.as_deref(), topic) else {
            self.emit(DriverEvent::Refused {
                at_ms: now,
                why: Refusal::UnknownTopic(topic.to_owned()),
            });
            return;
        };
        if id != self.agent.device_id() {
            return;
        }
        match self
            .agent
            .handle_inbound(now, kind, payload, &mut self.platform.lend())
        {
            Ok(()) => {
                if self.events.is_some() {
                    self.emit(DriverEvent::Received {
                        at_ms: now,
                        kind,
                        payload: payload.to_vec(),
                    });
                }
            }
            Err(e) => self.emit(DriverEvent::Refused {
                at_ms: now,
                why: Refusal::Inbound(kind, e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_mac("02:4c:59:0:0:FF"),
            Ok([2, 0x4c, 0x59, 0, 0, 0xff])
        );
        for bad in [
            "02:4c:59:00:00",
            "02:4c:59:00:00:00:01",
            "02:4c:59:00:00:+1",
            "02:4c:59:00:00:100",
            "02::59:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
