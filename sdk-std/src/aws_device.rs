//! A device that keeps its shadow in AWS IoT Core's shadow service rather
//! than in a Lanyard twin host: for a fleet that has outgrown one, or that
//! lives in AWS already.
//!
//! [`AwsShadowTransport`] wraps the device's transport. The agent and its
//! driver are unchanged: they still speak Lanyard's CBOR messages, and the
//! wrapper translates the shadow's part of the conversation to the AWS
//! topics (`$aws/things/{thing}/shadow/...`, or
//! `$aws/things/{thing}/shadow/name/{name}/...` for a named shadow) and
//! JSON documents:
//!
//! | the agent sends / expects  | on AWS IoT                                        |
//! |----------------------------|---------------------------------------------------|
//! | `register`                 | `get` (the thing's shadow is read)                 |
//! | `register/accepted`        | made here from `get/accepted`, or `get/rejected` 404 (no shadow yet) |
//! | `shadow/update` (reported) | `update` with `{"state": {"reported": ...}}`     |
//! | `shadow/delta`             | made here from `update/delta` and `get/accepted`  |
//!
//! Every other message (telemetry, health, lifecycle, commands, their
//! acknowledgements) travels on its Lanyard topic, which AWS IoT carries
//! like any other (a rule can route them).
//!
//! There is no twin host to apply the fleet's conflict policies, so they
//! are applied here, on the device: the wrapper mirrors the document in
//! a [`Shadow`] with the fleet's [`FleetPolicies`], and after every change
//! from either side runs [`Shadow::sync`]. A property the policy gives to
//! the device (`DeviceWins`, or `LatestWins` when the device changed it
//! last) has its value written back as the desired one, so the service's
//! delta for it ends; under `CloudWins` the delta goes to the application
//! as before; a `ManualResolve` conflict stays outstanding (the service
//! keeps the delta) and is counted.
//!
//! Refusals of desired values (the application's `Applied::Rejected`) have
//! nowhere to go in an AWS document and are not sent; the service's
//! `update/rejected` answers are counted in [`AwsShadowStats`] and logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lanyard_core::agent::messages::{Encodable, MessageKind, RegisterAccepted};
use lanyard_core::shadow::{FleetPolicies, Shadow, ShadowConfig, Source, StateTree, Value};
use lanyard_core::topic::topic_in;
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use serde_json::{Value as Json, json};

use crate::aws_json;
use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// Which AWS IoT shadow a device keeps: the thing's classic shadow, or one
/// of its named shadows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsShadowName {
    /// The thing's name (the device's id, as the broker checks it).
    pub thing: String,
    /// A named shadow; `None` for the classic one.
    pub shadow: Option<String>,
}

impl AwsShadowName {
    /// The thing's classic shadow.
    pub fn classic(thing: &str) -> Self {
        AwsShadowName {
            thing: thing.to_owned(),
            shadow: None,
        }
    }

    /// One of the thing's named shadows.
    pub fn named(thing: &str, shadow: &str) -> Self {
        AwsShadowName {
            thing: thing.to_owned(),
            shadow: Some(shadow.to_owned()),
        }
    }

    /// The topic of an operation (`get`, `update`, `update/delta`, ...).
    ///
    /// ```
    /// use lanyard_std::aws_device::AwsShadowName;
    /// assert_eq!(AwsShadowName::classic("pump-7").topic("update"),
    ///            "$aws/things/pump-7/shadow/update");
    /// assert_eq!(AwsShadowName::named("pump-7", "config").topic("update/delta"),
    ///            "$aws/things/pump-7/shadow/name/config/update/delta");
    /// ```
    pub fn topic(&self, op: &str) -> String {
        match &self.shadow {
            None => format!("$aws/things/{}/shadow/{op}", self.thing),
            Some(name) => format!("$aws/things/{}/shadow/name/{name}/{op}", self.thing),
        }
    }
}

/// What the wrapper has done, for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsShadowStats {
    /// Reported-state updates sent to the service.
    pub reports_sent: u64,
    /// Deltas handed to the agent.
    pub deltas_delivered: u64,
    /// Desired-state writes made because a policy gave a property to the
    /// device.
    pub desired_written: u64,
    /// Conflicts the policies decided (or parked).
    pub conflicts: u64,
    /// `update/rejected` and `get/rejected` answers other than "no shadow
    /// yet": code and message of the last one in `last_rejection`.
    pub rejections: u64,
    /// The last rejection, as the service said it.
    pub last_rejection: Option<(u16, String)>,
    /// Deltas older than the document already mirrored, dropped.
    pub stale: u64,
    /// Messages on the shadow topics that could not be read (not JSON, not
    /// a document); each is dropped and changes nothing.
    pub unreadable: u64,
}

/// The leaf and byte capacity of the mirrored document: the core's
/// defaults, which hold the service's 8 KB state documents.
type Mirror = Shadow;

/// Wraps a device's transport so that its shadow lives in AWS IoT Core.
/// See the module documentation.
pub struct AwsShadowTransport<T: Transport> {
    inner: T,
    name: AwsShadowName,
    /// The Lanyard topics of the messages translated here.
    register: String,
    register_accepted: String,
    update: String,
    delta: String,
    device_id: String,
    mirror: Box<Mirror>,
    /// Reused for every report and delta (large: kept off the stack).
    incoming: Box<ShadowUpdate>,
    outgoing: Box<ShadowDelta>,
    written: Box<StateTree>,
    /// The service's document version, last seen.
    version: u64,
    registering: bool,
    queued: VecDeque<TransportEvent>,
    tokens: u64,
    /// Starts each client token of this wrapper: the service publishes the
    /// answers to every client's requests on the same topics, and only
    /// answers to this wrapper's own requests are acted on.
    token_prefix: String,
    stats: Arc<Mutex<AwsShadowStats>>,
    /// At-least-once publishes made on the inner transport.
    inner_sent: u64,
    /// For each of the driver's at-least-once publishes not yet known to
    /// be acknowledged, the inner count once it was sent: it is
    /// acknowledged when the inner transport has acknowledged that many
    /// (a report becomes one or two inner publishes, a registration one).
    marks: VecDeque<u64>,
    /// The driver's publishes known to be acknowledged, dropped from
    /// `marks`.
    acked_before: u64,
}

impl<T: Transport> AwsShadowTransport<T> {
    /// Wraps `inner` for the device `device_id` (its Lanyard topics, no
    /// tenant) keeping its shadow in `name`, with the fleet's conflict
    /// `policies`.
    pub fn new(inner: T, device_id: &str, name: AwsShadowName, policies: &FleetPolicies) -> Self {
        let topic = |kind| {
            topic_in(None, device_id, kind)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        let mut mirror: Box<Mirror> = Box::new(Shadow::new(policies.default));
        // A policy that does not fit is refused by `FleetPolicies::set`
        // already (both hold as many).
        let _ = policies.apply_to(&mut mirror);
        // No backoff between syncs: the twin host's protects the fleet from
        // a device and the cloud undoing each other's changes in a loop,
        // but here a sync runs only when a message arrives, and what it
        // writes back (desired made equal to reported) makes the service
        // send no delta, so there is no loop to slow down.
        mirror.set_config(ShadowConfig {
            backoff_base_ms: 0,
            backoff_cap_ms: 0,
            ..ShadowConfig::default()
        });
        AwsShadowTransport {
            register: topic(MessageKind::Register),
            register_accepted: topic(MessageKind::RegisterAccepted),
            update: topic(MessageKind::ShadowUpdate),
            delta: topic(MessageKind::ShadowDelta),
            inner,
            name,
            device_id: device_id.to_owned(),
            mirror,
            incoming: Box::new(ShadowUpdate::new(0)),
            outgoing: Box::new(ShadowDelta::empty()),
            written: Box::new(StateTree::new()),
            version: 0,
            registering: false,
            queued: VecDeque::new(),
            tokens: 0,
            token_prefix: format!("ly{:08x}-", rand::random::<u32>()),
            stats: Arc::default(),
            inner_sent: 0,
            marks: VecDeque::new(),
            acked_before: 0,
        }
    }

    /// A handle on the counters, readable while the driver owns the
    /// transport.
    pub fn stats(&self) -> Arc<Mutex<AwsShadowStats>> {
        self.stats.clone()
    }

    fn count(&self, f: impl FnOnce(&mut AwsShadowStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    fn token(&mut self) -> String {
        self.tokens += 1;
        format!("{}{}", self.token_prefix, self.tokens)
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    async fn publish_json(&mut self, op: &str, doc: &Json) -> Result<(), TransportError> {
        let bytes = serde_json::to_vec(doc).unwrap_or_default();
        let topic = self.name.topic(op);
        self.inner_sent += 1;
        self.inner.publish(&topic, &bytes, Qos::AtLeastOnce).await
    }

    async fn request_document(&mut self) -> Result<(), TransportError> {
        let token = self.token();
        self.publish_json("get", &json!({ "clientToken": token }))
            .await
    }

    /// The agent's report: mirrored, settled, then sent to the service in
    /// one update with the desired values the device won, so that the
    /// service never sees the report without them (it would send a delta
    /// for the difference, undoing the device's win).
    async fn report(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        if let Err(e) = self.incoming.decode_into(payload) {
            // The agent encoded it: not expected, and nothing to send.
            tracing::warn!("AWS shadow: the agent's report could not be read: {e}");
            return Ok(());
        }
        let Some(reported) = self.incoming.reported.as_ref().filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let now = Self::now_ms();
        // A report the mirror cannot hold is still sent: the service is
        // the record, the mirror only decides conflicts.
        let _ = self.mirror.apply_reported(reported, None, now);
        let mut state = json!({"reported": aws_json::tree_to_json(reported)});
        if let Some(won) = self.decide(now) {
            state["desired"] = won;
        }
        let doc = json!({"state": state, "clientToken": self.token()});
        self.publish_json("update", &doc).await?;
        self.count(|s| s.reports_sent += 1);
        self.deliver_delta();
        Ok(())
    }

    /// After a change from the service: decides, writes back what the
    /// device won, hands the delta to the agent.
    async fn settle(&mut self, now: u64) -> Result<(), TransportError> {
        if let Some(won) = self.decide(now) {
            let doc = json!({"state": {"desired": won}, "clientToken": self.token()});
            self.publish_json("update", &doc).await?;
        }
        self.deliver_delta();
        Ok(())
    }

    /// Runs the policies over the mirror; returns the desired values the
    /// device won, as JSON, if any.
    fn decide(&mut self, now: u64) -> Option<Json> {
        let mut conflicts = 0u64;
        let before = self.mirror.version();
        let synced = self.mirror.sync(now, rand::random(), |_| conflicts += 1);
        self.count(|s| s.conflicts += conflicts);
        // What this sync took from the device is the device's now, at a
        // version past the one before it. (Not "at the current version": a
        // sync that changes something without a new version, a cloud win,
        // would write back what an earlier sync gave the device.)
        self.written.clear();
        if let Ok(report) = synced
            && report.changed
        {
            for leaf in self.mirror.desired().iter() {
                if leaf.meta.source == Source::Device && leaf.meta.version > before {
                    let _ = self
                        .written
                        .insert_with_meta(leaf.path, leaf.value, leaf.meta);
                }
            }
        }
        if self.written.is_empty() {
            return None;
        }
        self.count(|s| s.desired_written += 1);
        Some(aws_json::tree_to_json(&self.written))
    }

    /// Queues the mirror's delta, if any, for the agent.
    fn deliver_delta(&mut self) {
        let delta = &mut self.outgoing;
        if self.mirror.delta_into(&mut delta.state).is_err() || delta.state.is_empty() {
            return;
        }
        delta.version = self.version;
        let mut buf = vec![0u8; delta.state.encoded_len_bound() + 32];
        if let Ok(n) = delta.encode(&mut buf) {
            buf.truncate(n);
            self.queued.push_back(TransportEvent::Message {
                topic: self.delta.clone(),
                payload: buf,
            });
            self.count(|s| s.deltas_delivered += 1);
        }
    }

    /// Answers the agent's registration (the service knows the thing).
    fn accept_registration(&mut self, time_ms: u64) {
        if !std::mem::take(&mut self.registering) {
            return;
        }
        let accepted = RegisterAccepted {
            device_id: &self.device_id,
            config: None,
            time_ms,
        };
        let mut buf = vec![0u8; 128 + self.device_id.len()];
        if let Ok(n) = accepted.encode(&mut buf) {
            buf.truncate(n);
            self.queued.push_back(TransportEvent::Message {
                topic: self.register_accepted.clone(),
                payload: buf,
            });
        }
    }

    /// Translates a message on one of the shadow's AWS topics; `None` for
    /// any other topic.
    async fn translate_service_message(
        &mut self,
        topic: &str,
        payload: &[u8],
    ) -> Option<Result<(), TransportError>> {
        let base = self.name.topic("");
        let op = topic.strip_prefix(&base)?;
        let now = Self::now_ms();
        let doc: Json = match serde_json::from_slice(payload) {
            Ok(d) => d,
            Err(_) => {
                self.count(|s| s.unreadable += 1);
                return Some(Ok(()));
            }
        };
        let time_ms = doc
            .get("timestamp")
            .and_then(Json::as_u64)
            .map_or(now, |s| s * 1000);
        let version = doc.get("version").and_then(Json::as_u64);
        let ours = doc
            .get("clientToken")
            .and_then(Json::as_str)
            .is_some_and(|t| t.starts_with(&self.token_prefix));
        if matches!(op, "get/accepted" | "get/rejected" | "update/rejected") && !ours {
            // Another client's answer (an app reading the shadow, say):
            // not this device's to act on.
            return Some(Ok(()));
        }
        if op == "update/delta" && version.is_some_and(|v| v <= self.version) {
            // Older than (or the same as) the document already mirrored:
            // the service's deltas can arrive out of order.
            self.count(|s| s.stale += 1);
            return Some(Ok(()));
        }
        // Taken once the document is read (below).
        let seen = |this: &mut Self| {
            if let Some(v) = version {
                this.version = this.version.max(v);
            }
        };
        match op {
            "get/accepted" => {
                let state = doc.get("state");
                let part = |k: &str| state.and_then(|s| s.get(k)).and_then(Json::as_object);
                let desired =
                    part("desired").map(|m| aws_json::tree_from_json::<512, 16384>(m, false));
                let reported =
                    part("reported").map(|m| aws_json::tree_from_json::<512, 16384>(m, false));
                match (desired.transpose(), reported.transpose()) {
                    (Ok(d), Ok(r)) => {
                        seen(self);
                        // The whole document again (after a boot or a lost
                        // connection): the mirror takes it. Documents the
                        // service holds fit the mirror (both hold 8 KB);
                        // one that does not is counted and the mirror keeps
                        // what fitted.
                        if !replace_side(&mut self.mirror, true, d.as_ref(), time_ms)
                            || !replace_side(&mut self.mirror, false, r.as_ref(), time_ms)
                        {
                            self.count(|s| s.unreadable += 1);
                        }
                        self.accept_registration(time_ms);
                        Some(self.settle(now).await)
                    }
                    _ => {
                        self.count(|s| s.unreadable += 1);
                        Some(Ok(()))
                    }
                }
            }
            "update/delta" => {
                let Some(state) = doc.get("state").and_then(Json::as_object) else {
                    self.count(|s| s.unreadable += 1);
                    return Some(Ok(()));
                };
                match aws_json::tree_from_json::<512, 16384>(state, false) {
                    Ok(t) => {
                        seen(self);
                        let _ = self.mirror.apply_desired(&t, None, time_ms);
                        Some(self.settle(now).await)
                    }
                    Err(_) => {
                        self.count(|s| s.unreadable += 1);
                        Some(Ok(()))
                    }
                }
            }
            "get/rejected" | "update/rejected" => {
                let code = doc.get("code").and_then(Json::as_u64).unwrap_or(0) as u16;
                let message = doc
                    .get("message")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_owned();
                if op == "get/rejected" && code == 404 {
                    // A thing without a shadow yet: known to the service.
                    self.accept_registration(now);
                    return Some(Ok(()));
                }
                tracing::warn!("AWS shadow {op}: {code} {message}");
                self.count(|s| {
                    s.rejections += 1;
                    s.last_rejection = Some((code, message));
                });
                Some(Ok(()))
            }
            _ => Some(Ok(())),
        }
    }
}

/// Replaces one side of the mirror with `tree` (absent: emptied): the
/// leaves it no longer has are deleted, the others written. False when it
/// does not fit; the caller then keeps its mirror as it was.
fn replace_side(
    mirror: &mut Mirror,
    desired: bool,
    tree: Option<&StateTree>,
    time_ms: u64,
) -> bool {
    let current = if desired {
        mirror.desired()
    } else {
        mirror.reported()
    };
    let mut update: Box<StateTree> = Box::new(tree.cloned().unwrap_or_default());
    for leaf in current.iter() {
        let kept = tree.is_some_and(|t| t.get(leaf.path).is_some());
        if !kept
            && update
                .insert_with_meta(leaf.path, Value::Null, leaf.meta)
                .is_err()
        {
            return false;
        }
    }
    let applied = if desired {
        mirror.apply_desired(&update, None, time_ms)
    } else {
        mirror.apply_reported(&update, None, time_ms)
    };
    applied.is_ok()
}

#[async_trait]
impl<T: Transport> Transport for AwsShadowTransport<T> {
    async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError> {
        if filter == self.register_accepted {
            // Answered here.
            return Ok(());
        }
        if filter == self.delta {
            for op in [
                "get/accepted",
                "get/rejected",
                "update/delta",
                "update/rejected",
            ] {
                let topic = self.name.topic(op);
                self.inner.subscribe(&topic).await?;
            }
            return Ok(());
        }
        self.inner.subscribe(filter).await
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
    ) -> Result<(), TransportError> {
        let result = if topic == self.register {
            self.registering = true;
            self.request_document().await
        } else if topic == self.update {
            self.report(payload).await
        } else {
            if qos == Qos::AtLeastOnce {
                self.inner_sent += 1;
            }
            self.inner.publish(topic, payload, qos).await
        };
        if qos == Qos::AtLeastOnce {
            let acked = self.inner.acknowledged();
            while self.marks.front().is_some_and(|m| *m <= acked) {
                self.marks.pop_front();
                self.acked_before += 1;
            }
            self.marks.push_back(self.inner_sent);
        }
        result
    }

    async fn recv(&mut self) -> Result<TransportEvent, TransportError> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Ok(e);
            }
            match self.inner.recv().await? {
                TransportEvent::Message { topic, payload } => {
                    match self.translate_service_message(&topic, &payload).await {
                        Some(r) => r?,
                        None => return Ok(TransportEvent::Message { topic, payload }),
                    }
                }
                TransportEvent::Reconnected => {
                    // Deltas sent while the connection was down are lost:
                    // the whole document is read again.
                    self.request_document().await?;
                    return Ok(TransportEvent::Reconnected);
                }
            }
        }
    }

    fn try_recv(&mut self) -> Option<TransportEvent> {
        self.queued.pop_front()
    }

    fn hold_acks(&mut self) {
        self.inner.hold_acks()
    }

    fn ack_handled(&mut self) {
        self.inner.ack_handled()
    }

    async fn flush(&mut self, within: std::time::Duration) -> Result<(), TransportError> {
        self.inner.flush(within).await
    }

    fn reconnects(&self) -> u64 {
        self.inner.reconnects()
    }

    fn has_connected(&self) -> bool {
        self.inner.has_connected()
    }

    fn acknowledged(&self) -> u64 {
        let acked = self.inner.acknowledged();
        self.acked_before + self.marks.iter().take_while(|m| **m <= acked).count() as u64
    }
}
