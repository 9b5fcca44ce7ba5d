//! End to end on an emulated STM32F405: the reference firmware
//! (examples/stm32) runs in qemu's `netduinoplus2` machine with USART1 on a
//! TCP socket; the gateway bridge connects it to a real mosquitto; a twin
//! host and an app act on it through MQTT.
//!
//! Checked through the broker: the device registers, reports telemetry from
//! its (simulated) SHT3x through lanyard-nostd's driver, applies a desired
//! state change and reports it, blinks its LED on command and acknowledges,
//! applies a configuration update, and exits with status 0 once
//! decommissioned, having printed what it did over semihosting.
//!
//! It needs the firmware built and qemu installed, so it is ignored by a
//! plain `cargo test`; `scripts/test-all.sh` builds the firmware and runs
//! it with `LANYARD_STM32_ELF` set to the image.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mosquitto, free_port, spawn_twin};
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{PathBuf as ShadowPath, StateTree, Value};
use lanyard_std::app::{AppClient, AppEvent};
use lanyard_std::bridge::{Bridge, connect_tcp};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport, TransportEvent};

/// The firmware's id: `ly-` and its MAC, 02:4c:59:00:00:01.
const ID: &str = "ly-024c59000001";

/// Waits for the next message from the device of `kind` that `accept`
/// takes, failing after `within`.
async fn next_from_device<T: Transport>(
    observer: &mut T,
    kind: MessageKind,
    within: Duration,
    mut accept: impl FnMut(&[u8]) -> bool,
) -> Vec<u8> {
    let want = topic(ID, kind).to_string();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, observer.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want} within {within:?}"))
            .unwrap();
        if let TransportEvent::Message { topic, payload } = ev
            && topic == want
            && accept(&payload)
        {
            return payload;
        }
    }
}

fn blink_args(count: u64, period_ms: u64) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    e.map(2).unwrap();
    e.str("count").unwrap().u64(count).unwrap();
    e.str("period_ms").unwrap().u64(period_ms).unwrap();
    e.into_writer()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-arm and the firmware: run by scripts/test-all.sh"]
async fn the_stm32_firmware_in_qemu_registers_reports_obeys_and_decommissions() {
    let elf = std::env::var("LANYARD_STM32_ELF")
        .expect("LANYARD_STM32_ELF: the firmware image (scripts/test-all.sh builds it)");
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (stop_twin, twin) = spawn_twin(broker.port, dir.path());

    let mut observer = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", broker.port, "observer"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    observer
        .subscribe(&format!("{TOPIC_PREFIX}{ID}/#"))
        .await
        .unwrap();

    // qemu waits for the bridge before it starts the CPU, so nothing the
    // firmware sends is lost.
    let serial_port = free_port();
    let mut qemu = Command::new("qemu-system-arm")
        .args([
            "-machine",
            "netduinoplus2",
            "-nographic",
            "-monitor",
            "none",
            "-semihosting-config",
            "enable=on,target=native",
            "-serial",
            &format!("tcp:127.0.0.1:{serial_port},server=on"),
            "-kernel",
            &elf,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-arm is installed (scripts/test-all.sh installs it)");
    let output = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let output = output.clone();
        let stdout = qemu.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("qemu: {line}");
                output.lock().unwrap().push(line);
            }
        })
    };

    let serial = connect_tcp(&format!("127.0.0.1:{serial_port}"), Duration::from_secs(20))
        .await
        .expect("qemu's serial socket");
    let bridge_mqtt = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", broker.port, "bridge"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let (stop_bridge, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bridge = tokio::spawn(async move {
        let mut b = Bridge::new(bridge_mqtt);
        let r = b
            .run(serial, async {
                let _ = stop_rx.await;
            })
            .await;
        (r.map_err(|e| e.to_string()), b.link_stats())
    });

    let started = Instant::now();
    // Registration, then telemetry at the fleet's 1 s interval, read from
    // the simulated SHT3x (19..23 °C, 45 %RH) through the real driver.
    let reg = next_from_device(
        &mut observer,
        MessageKind::Register,
        Duration::from_secs(20),
        |_| true,
    )
    .await;
    assert_eq!(Register::decode(&reg).unwrap().device_id, ID);
    let tel = next_from_device(
        &mut observer,
        MessageKind::Telemetry,
        Duration::from_secs(20),
        |_| true,
    )
    .await;
    let tel: Telemetry<16, 512> = Telemetry::decode(&tel).unwrap();
    let reading = |k: &str| match tel.readings.get_dotted(k).map(|e| e.value) {
        Some(Value::Float(x)) => x,
        Some(Value::Int(i)) => i as f64,
        other => panic!("{k}: {other:?} in {:?}", tel.readings),
    };
    let (temp, hum, battery) = (
        reading("temperature_c"),
        reading("humidity_pct"),
        reading("battery_pct"),
    );
    assert!((19.0..=23.1).contains(&temp), "temperature {temp}");
    assert!((44.0..=46.0).contains(&hum), "humidity {hum}");
    assert!(battery > 80.0, "battery {battery}");

    // A desired-state change reaches the device and comes back reported.
    let mut app = AppClient::new(
        MqttTransport::connect_and_wait(
            MqttConfig::new("127.0.0.1", broker.port, "app"),
            Duration::from_secs(10),
        )
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    let path = ShadowPath::from_dotted("target_c").unwrap();
    let mut desired: StateTree<16, 512> = StateTree::new();
    desired.insert(&path, Value::Int(22)).unwrap();
    app.set_desired(ID, &desired, now_ms()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, app.next_event()).await {
            Ok(Ok(AppEvent::Reported { device, state, .. }))
                if device == ID
                    && state.get(path.as_path()).map(|e| e.value) == Some(Value::Int(22)) =>
            {
                break;
            }
            Ok(Ok(_)) => continue,
            other => panic!("no report of target_c = 22: {other:?}"),
        }
    }

    // The LED blinks on command; the final acknowledgement says so.
    let outcome = app
        .command(
            ID,
            "blink_led",
            &blink_args(3, 100),
            now_ms(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status, AckStatus::Succeeded);

    // A configuration update is applied.
    let config = DeviceConfig {
        version: 7,
        heartbeat_ms: 2_000,
        telemetry_ms: 2_000,
        health_ms: 1_000,
        shadow_sync_ms: 5_000,
        ..DeviceConfig::default()
    };
    let mut e = minicbor::Encoder::new(Vec::new());
    config.encode_cbor(&mut e).unwrap();
    observer
        .publish(
            &topic(ID, MessageKind::Config),
            &e.into_writer(),
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    let ack = next_from_device(
        &mut observer,
        MessageKind::ConfigAck,
        Duration::from_secs(20),
        |_| true,
    )
    .await;
    let ack = ConfigAck::decode(&ack).unwrap();
    assert_eq!(
        (ack.version, ack.outcome, ack.current_version),
        (7, ConfigOutcome::Applied, 7)
    );

    // Decommissioning ends the firmware with status 0.
    let outcome = app
        .command(ID, "decommission", &[], now_ms(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(outcome.status, AckStatus::Succeeded);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = qemu.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "qemu did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    reader.join().unwrap();
    println!("whole scenario: {:.1} s", started.elapsed().as_secs_f64());
    assert!(status.success(), "firmware exit status {status:?}");

    let lines = output.lock().unwrap().clone();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("state Unprovisioned -> Provisioning"), "{lines:#?}");
    assert!(has("state Provisioning -> Active"), "{lines:#?}");
    assert!(has("desired state applied"), "{lines:#?}");
    assert!(has("config 7 applied"), "{lines:#?}");
    assert!(has("-> Decommissioned"), "{lines:#?}");
    // Three blinks: on and off each.
    assert!(has("led toggles=6"), "{lines:#?}");
    assert!(has("bad_frames=0"), "{lines:#?}");

    let _ = stop_bridge.send(());
    let (result, link) = bridge.await.unwrap();
    // The firmware closing its side ends the bridge; either way no frame
    // from it was damaged.
    let _ = result;
    assert_eq!((link.crc_errors, link.malformed, link.oversized), (0, 0, 0));
    let _ = stop_twin.send(());
    twin.await.unwrap();
}
