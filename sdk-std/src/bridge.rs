//! The gateway side of the framed serial link: frames from a device on a
//! serial port, a pseudo-terminal or a TCP socket become MQTT publishes, and
//! the device's inbound topics become frames, so a serial device looks to
//! the twin host like any MQTT device.
//!
//! The bridge holds no rules of the SDK. It checks what a link may carry:
//! a link speaks for one device (the one named by its first frame), sends
//! only device-to-cloud kinds, and receives only the other kinds; anything
//! else is dropped and counted. QoS follows the message kind, as on a
//! device with its own MQTT connection.

use std::future::Future;

use lanyard_core::agent::messages::{MessageKind, parse_topic_in, topic, topic_in};
use lanyard_core::update::messages::UpdateTopic;
use lanyard_nostd::envelope::{
    UpdateEnvelope, decode_envelope, decode_update_envelope, encode_with_topic,
};
use lanyard_nostd::frame::{FrameDecoder, LinkStats, encode_frame, max_frame_len};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// Largest frame the bridge accepts from a device, encoded: 4 KiB holds a
/// framed envelope of any message the SDK sends (its largest is a
/// persisted-state-sized shadow report).
pub const MAX_FRAME: usize = 4096;

/// Connects to a device's TCP serial socket (qemu's `-serial
/// tcp:...,server=on`, a serial-to-network adapter), retrying until it
/// answers or `within` has passed. Retrying, not probing first: such a
/// socket serves one client, and a probe's connection would be the one
/// the device talked to.
pub async fn connect_tcp(
    addr: &str,
    within: std::time::Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Opens a serial port or pseudo-terminal as an async stream. The port is
/// read and written by two blocking threads (a tty has no readiness
/// notification tokio's file type could use, and a file read in flight
/// would hold back writes); set the port's baud rate and raw mode before,
/// e.g. `stty -F /dev/ttyUSB0 raw 115200`.
pub fn open_serial(path: &std::path::Path) -> std::io::Result<tokio::io::DuplexStream> {
    use std::io::{Read, Write};
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut writer = reader.try_clone()?;
    let (ours, theirs) = tokio::io::duplex(MAX_FRAME);
    let (mut from_port, mut to_port) = tokio::io::split(theirs);
    let rt = tokio::runtime::Handle::current();
    let rt2 = rt.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || rt.block_on(to_port.write_all(&buf[..n])).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = rt2.block_on(from_port.read(&mut buf)) {
            if n == 0 || writer.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    Ok(ours)
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Messages from the device published.
    pub to_cloud: u64,
    /// Messages from the cloud framed to the device.
    pub to_device: u64,
    /// Good frames that were not an envelope with a lanyard topic.
    pub bad_envelopes: u64,
    /// Envelopes for another device than the link's, or of a kind devices
    /// do not send.
    pub misdirected: u64,
    /// Bytes read from the device.
    pub bytes_in: u64,
    /// Bytes written to the device.
    pub bytes_out: u64,
    /// Telemetry summarised by the fog tier ([`Bridge::with_fog`]) instead
    /// of published as it came.
    pub fog: crate::fog::FogStats,
}

/// Why the bridge stopped.
#[derive(Debug)]
pub enum BridgeError {
    /// The serial side failed or closed.
    Serial(std::io::Error),
    /// The MQTT side failed.
    Transport(TransportError),
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Serial(e) => write!(f, "serial link: {e}"),
            BridgeError::Transport(e) => write!(f, "broker: {e}"),
        }
    }
}

impl std::error::Error for BridgeError {}

/// One device's link and its MQTT side.
pub struct Bridge<T: Transport> {
    transport: T,
    device_id: Option<String>,
    decoder: Box<FrameDecoder<MAX_FRAME>>,
    stats: BridgeStats,
    /// The tenant whose namespace the device's MQTT topics are in; the
    /// device itself never knows it.
    tenant: Option<String>,
    /// Telemetry summarised over windows, when asked.
    fog: Option<crate::fog::Aggregator>,
    /// Where apps ask for the device's raw readings, once the link has a
    /// device and a fog tier.
    raw_topic: Option<String>,
}

impl<T: Transport> Bridge<T> {
    /// A bridge publishing over `transport`; it learns the device's id from
    /// the first frame.
    pub fn new(transport: T) -> Self {
        Bridge {
            transport,
            device_id: None,
            decoder: Box::new(FrameDecoder::new()),
            stats: BridgeStats::default(),
            tenant: None,
            fog: None,
            raw_topic: None,
        }
    }

    /// Summarises the device's telemetry over windows (see
    /// [`crate::fog`]): one summary a window instead of every reading;
    /// everything else passes at once.
    pub fn with_fog(mut self, config: crate::fog::FogConfig) -> Self {
        self.fog = Some(crate::fog::Aggregator::new(config));
        self
    }

    /// Publishes the summaries of the windows ended by `now_ms` (all of
    /// them when `all`).
    async fn publish_summaries(&mut self, now_ms: u64, all: bool) -> Result<(), BridgeError> {
        let Some(fog) = self.fog.as_mut() else {
            return Ok(());
        };
        let due = if all { fog.drain() } else { fog.due(now_ms) };
        self.stats.fog = fog.stats();
        for (device, summary) in due {
            let t = self.mqtt_topic(&device, MessageKind::Telemetry);
            self.transport
                .publish(&t, &summary, Qos::AtMostOnce)
                .await
                .map_err(BridgeError::Transport)?;
            self.stats.to_cloud += 1;
        }
        Ok(())
    }

    /// Puts the device in `tenant`'s namespace on the MQTT side: its frames
    /// (shared-namespace topics, the device is not told) are published
    /// under `lanyard/v1/{tenant}/{device-id}/...`, and only that
    /// tenant's topics for it are framed back. Call before
    /// [`Bridge::run`]; refuses an invalid name.
    pub fn with_tenant(mut self, tenant: &str) -> Result<Self, crate::InvalidTenant> {
        crate::check_tenant(tenant)?;
        self.tenant = Some(tenant.to_owned());
        Ok(self)
    }

    /// The MQTT topic of `kind` for `device_id`.
    fn mqtt_topic(&self, device_id: &str, kind: MessageKind) -> String {
        // The tenant name was checked by `with_tenant`.
        topic_in(self.tenant.as_deref(), device_id, kind)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Binds the link to `device_id` now and subscribes to its topics, so
    /// messages for the device reach it even before it says anything
    /// (otherwise the first frame names the device).
    pub async fn adopt_device(&mut self, device_id: &str) -> Result<(), BridgeError> {
        self.adopt(device_id).await
    }

    /// Counters.
    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    /// Frame counters of the serial side (CRC errors, malformed, oversized).
    pub fn link_stats(&self) -> LinkStats {
        self.decoder.stats()
    }

    /// The device this link speaks for, once known.
    pub fn device_id(&self) -> Option<&str> {
        self.device_id.as_deref()
    }

    async fn adopt(&mut self, device_id: &str) -> Result<(), BridgeError> {
        for kind in MessageKind::ALL.into_iter().filter(|k| !k.from_device()) {
            let t = self.mqtt_topic(device_id, kind);
            self.transport
                .subscribe(&t)
                .await
                .map_err(BridgeError::Transport)?;
        }
        // Firmware updates live in the shared namespace only (the std
        // device takes them there too).
        if self.tenant.is_none() {
            for t in UpdateTopic::ALL.into_iter().filter(|t| !t.from_device()) {
                self.transport
                    .subscribe(&t.topic(device_id))
                    .await
                    .map_err(BridgeError::Transport)?;
            }
        }
        if self.fog.is_some() {
            let key = match &self.tenant {
                Some(t) => format!("{t}/{device_id}"),
                None => device_id.to_owned(),
            };
            let raw = lanyard_core::topic::topic_of_key(
                &key,
                lanyard_core::topic::Topic::App(lanyard_core::topic::AppTopic::RawReadings),
            )
            .map(|s| s.to_string())
            .unwrap_or_default();
            self.transport
                .subscribe(&raw)
                .await
                .map_err(BridgeError::Transport)?;
            self.raw_topic = Some(raw);
        }
        self.device_id = Some(device_id.to_owned());
        Ok(())
    }

    /// Moves messages both ways until `stop` completes (returns the
    /// counters) or a side fails.
    pub async fn run<S>(
        &mut self,
        serial: S,
        stop: impl Future<Output = ()>,
    ) -> Result<BridgeStats, BridgeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut rx, mut tx) = tokio::io::split(serial);
        let mut chunk = vec![0u8; 1024];
        tokio::pin!(stop);
        let mut fog_tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = &mut stop => {
                    self.publish_summaries(now_ms(), true).await?;
                    return Ok(self.stats);
                }
                _ = fog_tick.tick(), if self.fog.is_some() => {
                    self.publish_summaries(now_ms(), false).await?;
                }
                n = rx.read(&mut chunk) => {
                    let n = n.map_err(BridgeError::Serial)?;
                    if n == 0 {
                        self.publish_summaries(now_ms(), true).await?;
                        // What the device said last (a decommissioning
                        // device's final acknowledgement) must still go out.
                        self.transport
                            .flush(std::time::Duration::from_secs(5))
                            .await
                            .map_err(BridgeError::Transport)?;
                        return Err(BridgeError::Serial(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the device side closed the link",
                        )));
                    }
                    self.stats.bytes_in += n as u64;
                    let mut frames = Vec::new();
                    self.decoder.feed(&chunk[..n], |f| frames.push(f.to_vec()));
                    for f in frames {
                        self.publish_frame(&f).await?;
                    }
                }
                ev = self.transport.recv() => {
                    match ev.map_err(BridgeError::Transport)? {
                        TransportEvent::Message { topic, payload }
                            if self.raw_topic.as_deref() == Some(topic.as_str()) =>
                        {
                            self.raw_asked(&payload);
                        }
                        TransportEvent::Message { topic, payload } => {
                            if let Some(frame) = self.frame_for_device(&topic, &payload) {
                                tx.write_all(&frame).await.map_err(BridgeError::Serial)?;
                                tx.flush().await.map_err(BridgeError::Serial)?;
                                self.stats.to_device += 1;
                                self.stats.bytes_out += frame.len() as u64;
                            }
                        }
                        // Subscriptions are restored; the device's periodic
                        // shadow report (answered with the delta) catches up
                        // on anything missed.
                        TransportEvent::Reconnected => {}
                    }
                }
            }
        }
    }

    /// An app's request for the device's raw readings: seconds, a CBOR
    /// unsigned integer (0 ends it). Anything else is counted and ignored.
    fn raw_asked(&mut self, payload: &[u8]) {
        let (Some(fog), Some(device)) = (self.fog.as_mut(), self.device_id.as_deref()) else {
            return;
        };
        let mut d = minicbor::Decoder::new(payload);
        match d.u64() {
            Ok(s) if d.position() == payload.len() => {
                fog.raw_for(now_ms(), device, s.saturating_mul(1000));
                tracing::info!(device, seconds = s, "raw readings asked for");
            }
            _ => self.stats.misdirected += 1,
        }
        self.stats.fog = fog.stats();
    }

    /// Publishes one frame from the device, if the link may carry it.
    async fn publish_frame(&mut self, frame: &[u8]) -> Result<(), BridgeError> {
        if let Ok(u) = decode_update_envelope(frame) {
            return self.publish_update(u).await;
        }
        // An id that is not a plain topic level (a wildcard, a separator)
        // would make the bridge subscribe to others' topics or publish to
        // an invalid one.
        let Some(e) = decode_envelope(frame)
            .ok()
            .filter(|e| lanyard_core::agent::messages::valid_device_id(e.device_id))
        else {
            self.stats.bad_envelopes += 1;
            return Ok(());
        };
        if !e.kind.from_device() {
            self.stats.misdirected += 1;
            return Ok(());
        }
        match self.device_id.as_deref() {
            None => self.adopt(e.device_id).await?,
            Some(id) if id != e.device_id => {
                self.stats.misdirected += 1;
                return Ok(());
            }
            Some(_) => {}
        }
        let qos = if e.kind.needs_ack() {
            Qos::AtLeastOnce
        } else {
            Qos::AtMostOnce
        };
        if e.kind == MessageKind::Telemetry
            && let Some(fog) = self.fog.as_mut()
            && !fog.passes_raw(now_ms(), e.device_id)
        {
            // Unreadable telemetry is counted by the aggregator and dropped.
            let _ = fog.take(now_ms(), e.device_id, e.message);
            self.stats.fog = fog.stats();
            return Ok(());
        }
        let t = self.mqtt_topic(e.device_id, e.kind);
        self.transport
            .publish(&t, e.message, qos)
            .await
            .map_err(BridgeError::Transport)?;
        self.stats.to_cloud += 1;
        Ok(())
    }

    /// Publishes a firmware update message from the device (a block
    /// request, a report), if it speaks for the link's device.
    async fn publish_update(&mut self, u: UpdateEnvelope<'_>) -> Result<(), BridgeError> {
        let mine = self.device_id.as_deref() == Some(u.device_id);
        if !mine || !u.topic.from_device() || self.tenant.is_some() {
            self.stats.misdirected += 1;
            return Ok(());
        }
        self.transport
            .publish(&u.topic.topic(u.device_id), u.message, Qos::AtLeastOnce)
            .await
            .map_err(BridgeError::Transport)?;
        self.stats.to_cloud += 1;
        Ok(())
    }

    /// The frame for one inbound MQTT message, if it is for the device.
    fn frame_for_device(&mut self, mqtt_topic: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let device_topic = match UpdateTopic::parse(mqtt_topic) {
            Some((id, t))
                if self.tenant.is_none()
                    && self.device_id.as_deref() == Some(id)
                    && !t.from_device() =>
            {
                t.topic(id)
            }
            _ => {
                let parsed = parse_topic_in(self.tenant.as_deref(), mqtt_topic);
                let kind = match (parsed, self.device_id.as_deref()) {
                    (Some((id, kind)), Some(mine)) if id == mine && !kind.from_device() => kind,
                    _ => {
                        self.stats.misdirected += 1;
                        return None;
                    }
                };
                // The device speaks the shared namespace whatever its
                // tenant.
                topic(self.device_id.as_deref()?, kind)
            }
        };
        let mut envelope = vec![0u8; device_topic.len() + payload.len() + 16];
        let n = encode_with_topic(&device_topic, payload, &mut envelope).ok()?;
        let mut frame = vec![0u8; max_frame_len(n)];
        let m = encode_frame(&envelope[..n], &mut frame).ok()?;
        frame.truncate(m);
        Some(frame)
    }
}

/// The gateway's clock, ms since the epoch (fog windows).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
