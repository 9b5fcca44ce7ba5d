//! A device driver against a real mosquitto broker, with a scripted cloud on
//! another MQTT connection.

mod common;

use std::time::Duration;

use common::Mosquitto;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::*;
use lanyard_std::clock::Clock;
use lanyard_std::driver::{DeviceDriver, StdPlatform, std_agent};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::sim::SimulatedSensors;
use lanyard_std::store::FileStore;
use lanyard_std::transport::{Qos, Transport, TransportEvent};

const ID: &str = "ly-0a1b2c3d4e5f";

fn fast_config(version: u64) -> Vec<u8> {
    let c = DeviceConfig {
        version,
        heartbeat_ms: 1_000,
        telemetry_ms: 1_000,
        health_ms: 1_000,
        shadow_sync_ms: 1_000,
        ..DeviceConfig::default()
    };
    let mut e = minicbor::Encoder::new(Vec::new());
    c.encode_cbor(&mut e).unwrap();
    e.into_writer()
}

fn device(port: u16, dir: &std::path::Path) -> DeviceDriver<MqttTransport> {
    let clock = Clock::real();
    let agent = std_agent([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f], "test");
    let transport = MqttTransport::connect(MqttConfig::new("127.0.0.1", port, ID));
    let platform = StdPlatform {
        storage: Box::new(FileStore::open(dir).unwrap()),
        probe: Box::new(SimulatedSensors::new(clock.now_ms(), 60_000, 0)),
        telemetry: Box::new(SimulatedSensors::new(clock.now_ms(), 60_000, 0)),
        commands: Box::new(lanyard_std::sim::simulated_board(
            SimulatedSensors::new(clock.now_ms(), 60_000, 0),
            Default::default(),
        )),
        desired: Box::new(lanyard_core::agent::platform::MirrorDesired),
    };
    DeviceDriver::new(agent, transport, platform, clock)
}

/// Waits for the next message on `kind` for the device.
async fn next(cloud: &mut MqttTransport, kind: MessageKind) -> Vec<u8> {
    loop {
        if let TransportEvent::Message { topic, payload } = cloud.recv().await.unwrap() {
            if MessageKind::parse_topic(&topic) == Some((ID, kind)) {
                return payload;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_registers_reports_and_acknowledges_commands_over_mosquitto() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "cloud"));
    for kind in [
        MessageKind::Register,
        MessageKind::Lifecycle,
        MessageKind::Ack,
        MessageKind::Heartbeat,
    ] {
        cloud.subscribe(&topic("+", kind)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut driver = device(broker.port, dir.path());
    driver.start().await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        driver
            .run_until(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        driver
    });

    let script = async {
        let reg = next(&mut cloud, MessageKind::Register).await;
        assert_eq!(Register::decode(&reg).unwrap().device_id, ID);
        let cfg = fast_config(1);
        let mut buf = vec![0u8; 512];
        let n = RegisterAccepted {
            device_id: ID,
            config: Some(&cfg),
            time_ms: 0,
        }
        .encode(&mut buf)
        .unwrap();
        cloud
            .publish(
                &topic(ID, MessageKind::RegisterAccepted),
                &buf[..n],
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
        loop {
            let ev =
                LifecycleEvent::decode(&next(&mut cloud, MessageKind::Lifecycle).await).unwrap();
            if ev.to == LifecycleState::Active {
                break;
            }
        }
        // Heartbeats at the configured 1 s.
        let hb = Heartbeat::decode(&next(&mut cloud, MessageKind::Heartbeat).await).unwrap();
        assert_eq!(hb.state, LifecycleState::Active);
        let now = Clock::real().now_ms();
        let n = Command {
            id: "c1",
            name: "diagnostics",
            args: &[],
            issued_ms: now,
            expires_ms: now + 60_000,
        }
        .encode(&mut buf)
        .unwrap();
        cloud
            .publish(
                &topic(ID, MessageKind::Command),
                &buf[..n],
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
        let mut statuses = Vec::new();
        while statuses.len() < 2 {
            let bytes = next(&mut cloud, MessageKind::Ack).await;
            let ack = Ack::decode(&bytes).unwrap();
            assert_eq!(ack.command_id, "c1");
            statuses.push(ack.status);
        }
        assert_eq!(statuses, vec![AckStatus::Accepted, AckStatus::Succeeded]);
    };
    tokio::time::timeout(Duration::from_secs(20), script)
        .await
        .expect("the script finished in time");
    stop_tx.send(()).unwrap();
    let driver = run.await.unwrap();
    assert_eq!(driver.agent().state(), LifecycleState::Active);
    assert_eq!(driver.agent().stats().commands_executed, 1);
    drop(broker);
}
