//! MQTT transport over rumqttc on tokio, with reconnection: exponential
//! backoff with full jitter, subscriptions restored, and a
//! [`TransportEvent::Reconnected`] so the driver resynchronises (the device
//! reports its shadow again and the twin answers with the current delta, so
//! a delta sent while the device was offline is never missed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id (the device id for devices).
    pub client_id: String,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// First reconnection backoff window.
    pub backoff_base: Duration,
    /// Largest reconnection backoff window.
    pub backoff_cap: Duration,
    /// TLS settings; `None` for plain TCP.
    pub tls: Option<rumqttc::TlsConfiguration>,
    /// User name to present (brokers apply per-user ACL rules to it); with
    /// TLS client certificates, brokers usually take it from the
    /// certificate instead.
    pub username: Option<String>,
    /// Ask the broker to keep the session (subscriptions and queued QoS 1
    /// messages) while disconnected. On by default.
    pub persistent_session: bool,
    /// At-least-once messages this client may have sent and not yet had
    /// acknowledged (100 by default; each slot costs about 100 bytes).
    /// While they are all taken, the client sends nothing more, and that
    /// includes its acknowledgements of what it received: a client that
    /// answers bursts (a twin host) needs more, or a broker that waits
    /// for those acknowledgements before it acknowledges the client's
    /// messages (rumqttd does) deadlocks with it. See [`HOST_INFLIGHT`].
    pub max_inflight: u16,
}

/// [`MqttConfig::max_inflight`] for a client that answers a fleet, such as
/// a twin host: an operator's change to a hundred devices makes it send a
/// few hundred messages at once (measured 2026-11-29: with the default
/// 100, `lanyard demo` on its embedded rumqttd stopped hearing from every
/// device after the first such change).
pub const HOST_INFLIGHT: u16 = 2_000;

impl MqttConfig {
    /// Plain TCP to `host:port` with the defaults: 10 s keep-alive, backoff
    /// from 250 ms to 8 s.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        MqttConfig {
            host: host.into(),
            port,
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(10),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(8),
            tls: None,
            username: None,
            persistent_session: true,
            max_inflight: 100,
        }
    }

    /// A configuration from a broker URL, `mqtt://host:port` or
    /// `mqtts://host:port`, and for `mqtts` the TLS files: the CA
    /// certificate (PEM) that signed the broker's, and optionally the
    /// client certificate and key for mutual TLS. The files are read and
    /// checked here (see [`TlsFiles::load`](crate::tls::TlsFiles::load)),
    /// so a bad one is a clear error before any connection.
    pub fn from_url(
        url: &str,
        client_id: impl Into<String>,
        ca: Option<&std::path::Path>,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, String> {
        let (tls, rest) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(format!(
                    "broker must be mqtt://host:port or mqtts://host:port, got {url}"
                ));
            }
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("broker needs a port: {url}"))?;
        let port = port.parse().map_err(|_| format!("bad port in {url}"))?;
        let mut c = MqttConfig::new(host, port, client_id);
        match (tls, ca) {
            (true, Some(ca)) => {
                let files = crate::tls::TlsFiles::load(ca, client).map_err(|e| e.to_string())?;
                c.tls = Some(files.to_rumqttc());
            }
            (true, None) => return Err(format!("{url}: mqtts needs a CA certificate")),
            (false, _) if ca.is_some() || client.is_some() => {
                return Err(format!(
                    "{url}: TLS files given for a plain connection (mqtts://?)"
                ));
            }
            (false, _) => {}
        }
        Ok(c)
    }
}

pub use crate::MAX_PAYLOAD;

/// The largest MQTT packet the client reads before it must drop the
/// connection: well above [`MAX_PAYLOAD`], so that a message a broker
/// without Lanyard's limit accepts is still read and dropped rather than
/// cutting the connection (and coming back, redelivered, for ever).
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;

/// A connection failure in words an operator can act on: the TLS alerts a
/// broker sends about this client's certificate are named first, then the
/// client's own text.
///
/// ```
/// let why = lanyard_std::mqtt::describe_failure("IO: received fatal alert: CertificateRevoked");
/// assert!(why.starts_with("the broker refused this client's certificate: it is revoked"));
/// ```
pub fn describe_failure(error: &str) -> String {
    match certificate_refusal(error) {
        Some(why) => format!("{why} ({error})"),
        None => error.to_owned(),
    }
}

/// What a connection failure says about this client's certificate, if it
/// was the broker refusing it (a TLS alert): such a failure does not go
/// away by trying again.
pub fn certificate_refusal(error: &str) -> Option<&'static str> {
    const ALERTS: [(&str, &str); 4] = [
        (
            "CertificateRevoked",
            "the broker refused this client's certificate: it is revoked (the device was \
             decommissioned, its key reported compromised, or a renewal replaced it)",
        ),
        (
            "CertificateExpired",
            "the broker refused this client's certificate: it has expired (renew it, or \
             provision the device again by claim if the fleet allows it)",
        ),
        (
            "UnknownCA",
            "the broker does not trust the CA that signed this client's certificate",
        ),
        (
            "BadCertificate",
            "the broker refused this client's certificate",
        ),
    ];
    ALERTS
        .iter()
        .find(|(alert, _)| error.contains(alert))
        .map(|(_, why)| *why)
}

/// Counters of the connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MqttStats {
    /// Successful connections after the first.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub failed_attempts: u64,
    /// Messages over [`MAX_PAYLOAD`] dropped on receipt.
    pub oversize_dropped: u64,
}

/// A received QoS 1 message not yet acknowledged to the broker, and the
/// connection it came on: an acknowledgement belongs to that connection
/// only (after a reconnection the broker sends the message again, and its
/// packet id may name another message by then).
struct Unacked {
    publish: rumqttc::Publish,
    connection: u64,
}

/// An MQTT connection.
pub struct MqttTransport {
    client: AsyncClient,
    /// `None` until the first connection attempt ends; then whether it
    /// succeeded (or why not). Later losses are retried silently.
    first: watch::Receiver<Option<Result<(), String>>>,
    rx: mpsc::UnboundedReceiver<(TransportEvent, Option<Unacked>)>,
    /// The messages handed out by `recv` and not acknowledged yet: the last
    /// one, acknowledged when `recv` is called again (the caller has
    /// handled it by then), or with `hold_acks`, all of them until
    /// `ack_handled`.
    unacked: Vec<Unacked>,
    held: bool,
    /// Counts connections: an acknowledgement is sent only on the
    /// connection its message came on.
    connection: Arc<AtomicU64>,
    filters: Arc<Mutex<Vec<String>>>,
    stats: Arc<Mutex<MqttStats>>,
    delivery: Arc<Delivery>,
    switch: CredentialSwitch,
    task: JoinHandle<()>,
}

/// Changes the client certificate of a running [`MqttTransport`] (a
/// renewed one): the connection is made again with it, the session (same
/// client id) resumes, and what was in flight is sent again. Cheap to
/// clone; from any task.
#[derive(Debug, Clone)]
pub struct CredentialSwitch {
    tx: mpsc::UnboundedSender<rumqttc::TlsConfiguration>,
    connection: Arc<AtomicU64>,
}

impl CredentialSwitch {
    /// Reconnects with `tls` and waits up to `within` for the broker to
    /// take it. `false` if it did not in time (the transport keeps trying
    /// with `tls`; switch back to keep the old certificate) or the
    /// transport is gone.
    pub async fn switch(&self, tls: rumqttc::TlsConfiguration, within: Duration) -> bool {
        let before = self.connection.load(Ordering::Acquire);
        if self.tx.send(tls).is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.connection.load(Ordering::Acquire) > before {
                return true;
            }
            if self.tx.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// What [`Transport::flush`] waits for: every publish handed to rumqttc
/// written out (QoS 0) or acknowledged by the broker (QoS 1).
#[derive(Default)]
struct Delivery {
    requested_qos0: AtomicU64,
    written_qos0: AtomicU64,
    requested_qos1: AtomicU64,
    acked_qos1: AtomicU64,
}

impl Delivery {
    fn done(&self) -> bool {
        self.written_qos0.load(Ordering::Acquire) >= self.requested_qos0.load(Ordering::Acquire)
            && self.acked_qos1.load(Ordering::Acquire)
                >= self.requested_qos1.load(Ordering::Acquire)
    }
}

impl MqttTransport {
    /// Starts connecting in the background; waits for nothing. Publishes
    /// made before the connection is up are queued by rumqttc.
    pub fn connect(config: MqttConfig) -> Self {
        let mut opts = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        opts.set_keep_alive(config.keep_alive);
        // A persistent session: the broker keeps QoS 1 messages for us while
        // we are away (as long as the broker itself keeps running).
        opts.set_clean_session(!config.persistent_session);
        if let Some(user) = &config.username {
            opts.set_credentials(user.clone(), "");
        }
        opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_PAYLOAD + 1024);
        // A message is acknowledged to the broker only once handled (see
        // `recv`): a process killed before that gets it again.
        opts.set_manual_acks(true);
        if let Some(tls) = config.tls.clone() {
            opts.set_transport(rumqttc::Transport::Tls(tls));
        }
        opts.set_inflight(config.max_inflight.max(1));
        // Room for every request the in-flight window lets through, and
        // the acknowledgements behind them.
        let requests = 1024.max(2 * usize::from(config.max_inflight));
        let (client, mut eventloop) = AsyncClient::new(opts, requests);
        // Small messages: without TCP_NODELAY, Nagle and delayed ACKs add
        // tens of milliseconds to every exchange.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        let (first_tx, first) = watch::channel(None);
        let filters: Arc<Mutex<Vec<String>>> = Arc::default();
        let stats: Arc<Mutex<MqttStats>> = Arc::default();
        let delivery: Arc<Delivery> = Arc::default();
        let connection: Arc<AtomicU64> = Arc::default();
        let (switch_tx, mut switch_rx) = mpsc::unbounded_channel::<rumqttc::TlsConfiguration>();
        let switch = CredentialSwitch {
            tx: switch_tx,
            connection: connection.clone(),
        };
        let task = {
            let (client, filters, stats) = (client.clone(), filters.clone(), stats.clone());
            let (delivery, connection) = (delivery.clone(), connection.clone());
            tokio::spawn(async move {
                let mut connected_before = false;
                let mut attempt: u32 = 0;
                loop {
                    let polled = tokio::select! {
                        biased;
                        Some(tls) = switch_rx.recv() => {
                            // New credentials: drop the connection (in-flight
                            // publishes are kept and sent again) and make the
                            // next one with them.
                            eventloop.mqtt_options.set_transport(rumqttc::Transport::Tls(tls));
                            eventloop.clean();
                            continue;
                        }
                        polled = eventloop.poll() => polled,
                    };
                    match polled {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if p.payload.len() > MAX_PAYLOAD {
                                // Dropped for good: acknowledged, so the
                                // broker does not send it again.
                                stats.lock().expect("stats").oversize_dropped += 1;
                                tracing::warn!(topic = %p.topic, bytes = p.payload.len(), "oversize message dropped");
                                let _ = client.try_ack(&p);
                                continue;
                            }
                            let ev = TransportEvent::Message {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                            };
                            let unacked = (p.qos != QoS::AtMostOnce).then(|| Unacked {
                                publish: p,
                                connection: connection.load(Ordering::Acquire),
                            });
                            if tx.send((ev, unacked)).is_err() {
                                return;
                            }
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connection.fetch_add(1, Ordering::AcqRel);
                            attempt = 0;
                            first_tx.send_replace(Some(Ok(())));
                            // Restore subscriptions (the broker may have lost
                            // the session).
                            for f in filters.lock().expect("filters").iter() {
                                let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                            }
                            if connected_before {
                                stats.lock().expect("stats").reconnects += 1;
                                if tx.send((TransportEvent::Reconnected, None)).is_err() {
                                    return;
                                }
                            }
                            connected_before = true;
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            delivery.acked_qos1.fetch_add(1, Ordering::AcqRel);
                        }
                        // QoS 0 publishes carry packet id 0.
                        Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                            delivery.written_qos0.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if tx.is_closed() {
                                return;
                            }
                            stats.lock().expect("stats").failed_attempts += 1;
                            if !connected_before {
                                first_tx.send_replace(Some(Err(describe_failure(&e.to_string()))));
                            }
                            tracing::debug!(error = %e, attempt, "mqtt connection lost");
                            // Full jitter: a random wait in [0, window].
                            let window = config
                                .backoff_base
                                .saturating_mul(1u32 << attempt.min(16))
                                .min(config.backoff_cap);
                            attempt = attempt.saturating_add(1);
                            let wait = rand::rng().random_range(0..=window.as_millis() as u64);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                    }
                }
            })
        };
        MqttTransport {
            client,
            first,
            rx,
            unacked: Vec::new(),
            held: false,
            connection,
            filters,
            stats,
            delivery,
            switch,
            task,
        }
    }

    /// A handle that changes this connection's client certificate.
    pub fn credential_switch(&self) -> CredentialSwitch {
        self.switch.clone()
    }

    /// Connects and waits for the broker's answer: the first failure (a
    /// refused certificate, an unknown host, a closed port) is returned as an
    /// error with its cause instead of being retried in the background.
    pub async fn connect_and_wait(
        config: MqttConfig,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let mut t = Self::connect(config);
        let outcome = match tokio::time::timeout(timeout, t.first.wait_for(Option::is_some)).await {
            Err(_) => Err(TransportError::NoAnswer),
            Ok(Err(_)) => Err(TransportError::Closed),
            Ok(Ok(v)) => match v.clone() {
                Some(Err(why)) => Err(TransportError::Refused(why)),
                _ => Ok(()),
            },
        };
        // Dropping `t` on error stops its background task.
        outcome.map(|()| t)
    }

    /// Connection counters.
    pub fn stats(&self) -> MqttStats {
        *self.stats.lock().expect("stats")
    }

    /// Acknowledges the messages handed out that came on the current
    /// connection (the caller is done with them).
    fn ack_all(&mut self) {
        let now = self.connection.load(Ordering::Acquire);
        for u in self.unacked.drain(..) {
            if u.connection == now {
                let _ = self.client.try_ack(&u.publish);
            }
        }
    }

    /// Disconnects cleanly, after waiting up to a second for what was
    /// published to be delivered (and acknowledging the last message
    /// received: it has been handled).
    pub async fn disconnect(mut self) {
        self.ack_all();
        let _ = self.flush(Duration::from_secs(1)).await;
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

impl Drop for MqttTransport {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    }
}

#[async_trait]
impl Transport for MqttTransport {
    async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError> {
        self.filters
            .lock()
            .expect("filters")
            .push(filter.to_owned());
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| TransportError::Client(e.to_string()))
    }

    async fn publish(&mut self, topic: &str, payload: &[u8], q: Qos) -> Result<(), TransportError> {
        self.client
            .publish(topic, qos(q), false, payload.to_vec())
            .await
            .map_err(|e| TransportError::Client(e.to_string()))?;
        // Counted once queued (the event loop may even have sent it
        // already: `flush` compares with `>=`).
        match q {
            Qos::AtMostOnce => &self.delivery.requested_qos0,
            Qos::AtLeastOnce => &self.delivery.requested_qos1,
        }
        .fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The next event. A QoS 1 message is acknowledged to the broker when
    /// `recv` is called again, not when it arrives: what the caller was
    /// handling when it died is sent again by the broker (at least once
    /// across crashes). A message is safe to receive twice: updates carry
    /// versions and timestamps, commands ids.
    async fn recv(&mut self) -> Result<TransportEvent, TransportError> {
        if !self.held {
            self.ack_all();
        }
        let (ev, unacked) = self.rx.recv().await.ok_or(TransportError::Closed)?;
        self.unacked.extend(unacked);
        Ok(ev)
    }

    fn try_recv(&mut self) -> Option<TransportEvent> {
        if !self.held {
            self.ack_all();
        }
        let (ev, unacked) = self.rx.try_recv().ok()?;
        self.unacked.extend(unacked);
        Some(ev)
    }

    fn hold_acks(&mut self) {
        self.held = true;
    }

    fn ack_handled(&mut self) {
        self.ack_all();
    }

    fn acknowledged(&self) -> u64 {
        self.delivery.acked_qos1.load(Ordering::Acquire)
    }

    fn reconnects(&self) -> u64 {
        self.stats().reconnects
    }

    fn has_connected(&self) -> bool {
        matches!(*self.first.borrow(), Some(Ok(())))
    }

    async fn flush(&mut self, within: Duration) -> Result<(), TransportError> {
        let deadline = tokio::time::Instant::now() + within;
        // Polled: the counters move at network speed, and a flush happens
        // once, at shutdown.
        while !self.delivery.done() {
            if tokio::time::Instant::now() >= deadline {
                return Err(TransportError::NotDelivered);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// A client id no other client of this process has: `{prefix}-{pid}-{n}`.
/// The broker closes a connection when another client takes its id, so
/// two clients in one process (two apps of a binding, say) must not share
/// one.
pub fn unique_client_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod url_tests {
    use super::MqttConfig;
    use std::path::Path;

    #[test]
    fn broker_urls_parse_and_bad_ones_say_why() {
        let c = MqttConfig::from_url("mqtt://broker.local:1883", "dev", None, None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.tls.is_none()),
            ("broker.local", 1883, true)
        );
        let err =
            |url: &str, ca: Option<&Path>| MqttConfig::from_url(url, "d", ca, None).unwrap_err();
        assert!(err("http://x:1", None).contains("mqtt://host:port"));
        assert!(err("mqtt://x", None).contains("needs a port"));
        assert!(err("mqtt://x:99999", None).contains("bad port"));
        assert!(err("mqtts://x:8883", None).contains("CA certificate"));
        assert!(err("mqtt://x:1883", Some(Path::new("ca.pem"))).contains("plain connection"));
        // A CA file that is not there is named in the error.
        assert!(
            err("mqtts://x:8883", Some(Path::new("/nonexistent/ca.pem")))
                .contains("/nonexistent/ca.pem")
        );
    }
}
