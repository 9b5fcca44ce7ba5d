//! The gateway bridge on an in-memory "serial port" and broker: what a link
//! may carry goes through both ways, unchanged; everything else is dropped
//! and counted.

use std::time::Duration;

use lanyard_core::agent::messages::{MessageKind, topic};
use lanyard_nostd::envelope::{decode_envelope, encode_envelope};
use lanyard_nostd::frame::{FrameDecoder, encode_frame};
use lanyard_std::bridge::{Bridge, BridgeStats};
use lanyard_std::transport::{MemoryBroker, Qos, Transport, TransportEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ID: &str = "ly-020000000001";

fn frame(device: &str, kind: MessageKind, message: &[u8]) -> Vec<u8> {
    let mut env = vec![0u8; 256];
    let n = encode_envelope(device, kind, message, &mut env).unwrap();
    let mut f = vec![0u8; 300];
    let m = encode_frame(&env[..n], &mut f).unwrap();
    f.truncate(m);
    f
}

async fn next_message(t: &mut impl Transport) -> (String, Vec<u8>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), t.recv())
            .await
            .expect("a message in time")
            .unwrap()
        {
            TransportEvent::Message { topic, payload } => return (topic, payload),
            TransportEvent::Reconnected => {}
        }
    }
}

#[tokio::test]
async fn the_bridge_carries_one_devices_messages_both_ways_and_drops_the_rest() {
    let broker = MemoryBroker::new();
    let mut cloud = broker.connect();
    cloud.subscribe("lanyard/v1/#").await.unwrap();
    let (device_end, bridge_end) = tokio::io::duplex(4096);
    let (mut dev_rx, mut dev_tx) = tokio::io::split(device_end);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut bridge = Bridge::new(broker.connect());
    let task = tokio::spawn(async move {
        let r = bridge
            .run(bridge_end, async {
                let _ = stop_rx.await;
            })
            .await;
        (r.unwrap(), bridge.link_stats())
    });

    // A wildcard for a device id is refused (the bridge would otherwise
    // subscribe to every device's topics); the first good frame names the
    // device, and its message is published as is.
    let mut first = frame("+", MessageKind::Register, &[0xa0]);
    first.extend(frame(ID, MessageKind::Register, &[0xa1, 0x01, 0x02]));
    dev_tx.write_all(&first).await.unwrap();
    let (t, p) = next_message(&mut cloud).await;
    assert_eq!(
        (t.as_str(), p.as_slice()),
        (
            topic(ID, MessageKind::Register).as_str(),
            &[0xa1, 0x01, 0x02][..]
        )
    );

    // Then: another device's frame, a cloud-only kind from the device,
    // noise, a damaged frame. None is published; a good frame after them is.
    let mut bad = Vec::new();
    bad.extend(frame("ly-someone-else", MessageKind::Heartbeat, &[0xa0]));
    bad.extend(frame(ID, MessageKind::Command, &[0xa0]));
    bad.extend([7, 7, 7, 0]);
    let mut damaged = frame(ID, MessageKind::Heartbeat, &[0xa0]);
    damaged[3] ^= 0x20;
    bad.extend(damaged);
    bad.extend(frame(ID, MessageKind::Heartbeat, &[0xa2]));
    dev_tx.write_all(&bad).await.unwrap();
    let (t, p) = next_message(&mut cloud).await;
    assert_eq!(
        (t, p),
        (topic(ID, MessageKind::Heartbeat).to_string(), vec![0xa2])
    );

    // The cloud's command for the device arrives framed; one for another
    // device does not (the bridge subscribed to this device's topics only,
    // and checks anyway).
    cloud
        .publish(
            &topic("ly-someone-else", MessageKind::Command),
            &[0xa3],
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    cloud
        .publish(&topic(ID, MessageKind::Command), &[0xa4], Qos::AtLeastOnce)
        .await
        .unwrap();
    let mut decoder: FrameDecoder<512> = FrameDecoder::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.is_empty() {
        let n = tokio::time::timeout(Duration::from_secs(5), dev_rx.read(&mut buf))
            .await
            .expect("a frame for the device")
            .unwrap();
        decoder.feed(&buf[..n], |f| {
            let e = decode_envelope(f).unwrap();
            got.push((e.kind, e.device_id.to_string(), e.message.to_vec()));
        });
    }
    assert_eq!(got, [(MessageKind::Command, ID.to_string(), vec![0xa4])]);

    stop.send(()).unwrap();
    let (stats, link) = task.await.unwrap();
    assert_eq!((link.crc_errors + link.malformed), 2, "{link:?}");
    assert_eq!(
        BridgeStats {
            bytes_in: 0,
            bytes_out: 0,
            ..stats
        },
        BridgeStats {
            to_cloud: 2,
            to_device: 1,
            bad_envelopes: 1,
            misdirected: 2,
            bytes_in: 0,
            bytes_out: 0,
            fog: Default::default(),
        }
    );
}

#[tokio::test]
async fn a_bridge_puts_its_device_in_a_tenants_namespace_without_telling_the_device() {
    use lanyard_core::agent::messages::tenant_topic;
    let broker = MemoryBroker::new();
    let mut cloud = broker.connect();
    cloud.subscribe("lanyard/v1/#").await.unwrap();
    let (device_end, bridge_end) = tokio::io::duplex(4096);
    let (mut dev_rx, mut dev_tx) = tokio::io::split(device_end);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut bridge = Bridge::new(broker.connect()).with_tenant("acme").unwrap();
    assert!(
        Bridge::new(broker.connect())
            .with_tenant("no/slash")
            .is_err()
    );
    let task = tokio::spawn(async move {
        bridge
            .run(bridge_end, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap()
    });

    dev_tx
        .write_all(&frame(ID, MessageKind::Register, &[0xa0]))
        .await
        .unwrap();
    let (t, _) = next_message(&mut cloud).await;
    assert_eq!(
        t,
        tenant_topic("acme", ID, MessageKind::Register)
            .unwrap()
            .as_str()
    );

    // Another tenant's command for the same id is not the device's.
    for tenant in ["globex", "acme"] {
        cloud
            .publish(
                &tenant_topic(tenant, ID, MessageKind::Command).unwrap(),
                tenant.as_bytes(),
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
    }
    let mut decoder: FrameDecoder<512> = FrameDecoder::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.is_empty() {
        let n = tokio::time::timeout(Duration::from_secs(5), dev_rx.read(&mut buf))
            .await
            .expect("a frame for the device")
            .unwrap();
        decoder.feed(&buf[..n], |f| {
            let e = decode_envelope(f).unwrap();
            got.push((e.topic.to_string(), e.message.to_vec()));
        });
    }
    // The device sees its shared-namespace topic, and only acme's command.
    assert_eq!(
        got,
        [(
            topic(ID, MessageKind::Command).to_string(),
            b"acme".to_vec()
        )]
    );
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!((stats.to_cloud, stats.to_device), (1, 1));
}

fn telemetry(seq: u64, temp: f64) -> Vec<u8> {
    use lanyard_core::agent::messages::{Encodable, Telemetry};
    use lanyard_core::shadow::{PathBuf, StateTree, Value};
    let mut readings: StateTree<16, 512> = StateTree::new();
    readings
        .insert(
            &PathBuf::from_dotted("temperature_c").unwrap(),
            Value::Float(temp),
        )
        .unwrap();
    let mut buf = vec![0u8; 128];
    let n = Telemetry::<16, 512> {
        seq,
        time_ms: seq,
        readings,
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(n);
    buf
}

/// A bridge with the fog tier on (`window_ms` windows), running on one end
/// of an in-memory link (bound to the device first when `adopt`): the
/// device's writing half, the stop, and the task that returns the counters.
async fn fog_bridge(
    broker: &MemoryBroker,
    window_ms: u64,
    adopt: bool,
) -> (
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<BridgeStats>,
) {
    let (device_end, bridge_end) = tokio::io::duplex(64 * 1024);
    let (_, dev_tx) = tokio::io::split(device_end);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut bridge = Bridge::new(broker.connect()).with_fog(lanyard_std::fog::FogConfig {
        window_ms,
        dead_band: 0.0,
    });
    if adopt {
        bridge.adopt_device(ID).await.unwrap();
    }
    let task = tokio::spawn(async move {
        bridge
            .run(bridge_end, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap()
    });
    (dev_tx, stop, task)
}

/// With the fog tier on, the device's telemetry goes up as one summary a
/// window; its health report is not held back.
#[tokio::test]
async fn the_fog_tier_sends_one_summary_a_window_and_alerts_at_once() {
    let broker = MemoryBroker::new();
    let mut cloud = broker.connect();
    cloud.subscribe("lanyard/v1/#").await.unwrap();
    let (mut dev_tx, stop, task) = fog_bridge(&broker, 1_500, false).await;
    let mut frames = Vec::new();
    for seq in 1..=20 {
        frames.extend(frame(
            ID,
            MessageKind::Telemetry,
            &telemetry(seq, 20.0 + seq as f64),
        ));
    }
    frames.extend(frame(ID, MessageKind::Health, &[0xa1, 0x00, 0x02]));
    dev_tx.write_all(&frames).await.unwrap();
    // The health report first, at once; then one summary of the 20.
    let (t, p) = next_message(&mut cloud).await;
    assert_eq!(t, topic(ID, MessageKind::Health).as_str());
    assert_eq!(p, [0xa1, 0x00, 0x02]);
    let (t, p) = next_message(&mut cloud).await;
    assert_eq!(t, topic(ID, MessageKind::Telemetry).as_str());
    let summary = lanyard_core::agent::messages::Telemetry::<64, 4096>::decode(&p).unwrap();
    let json = lanyard_std::aws_json::tree_to_json(&summary.readings);
    assert_eq!(
        json["temperature_c"],
        serde_json::json!({"count": 20, "min": 21.0, "max": 40.0, "mean": 30.5, "last": 40.0})
    );
    let _ = stop.send(());
    let stats = task.await.unwrap();
    assert_eq!((stats.fog.readings, stats.fog.summaries), (20, 1));
    assert_eq!(stats.to_cloud, 2);
    assert!(stats.fog.byte_reduction() > 0.8, "{:?}", stats.fog);
}

/// An app asks for a device's raw readings (`fog/raw`, seconds): they pass
/// the fog tier unsummarised until then; asking for 0 seconds ends it, and
/// a request that is not a number changes nothing.
#[tokio::test]
async fn raw_readings_pass_the_fog_tier_on_demand() {
    let broker = MemoryBroker::new();
    let mut cloud = broker.connect();
    cloud
        .subscribe(&topic(ID, MessageKind::Telemetry))
        .await
        .unwrap();
    let (mut dev_tx, stop, task) = fog_bridge(&broker, 60_000, true).await;
    let raw_topic = format!("lanyard/v1/{ID}/fog/raw");
    let app = lanyard_std::app::AppClient::new(broker.connect())
        .await
        .unwrap();
    // Summarised: nothing comes before the window ends.
    dev_tx
        .write_all(&frame(ID, MessageKind::Telemetry, &telemetry(1, 20.0)))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cloud.recv())
            .await
            .is_err()
    );
    cloud
        .publish(&raw_topic, b"\x61x", Qos::AtLeastOnce)
        .await
        .unwrap();
    app.raw_readings(ID, 60).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reading = telemetry(2, 21.5);
    dev_tx
        .write_all(&frame(ID, MessageKind::Telemetry, &reading))
        .await
        .unwrap();
    let (t, p) = next_message(&mut cloud).await;
    assert_eq!(t, topic(ID, MessageKind::Telemetry).as_str());
    assert_eq!(p, reading, "as the device sent it");
    // Ended: summarised again.
    app.raw_readings(ID, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    dev_tx
        .write_all(&frame(ID, MessageKind::Telemetry, &telemetry(3, 22.0)))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cloud.recv())
            .await
            .is_err()
    );
    let _ = stop.send(());
    let stats = task.await.unwrap();
    assert_eq!(stats.fog.raw, 1);
    assert_eq!(stats.fog.readings, 2, "the others were summarised");
    assert_eq!(stats.misdirected, 1, "the request that was not a number");
}
