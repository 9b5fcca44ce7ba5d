//! The twin host, devices and an app over a real mosquitto: desired state
//! reaching a device, a delta sent while the device was offline caught up
//! on reconnection, and a device process killed with SIGKILL resuming with
//! its state.

mod common;

use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use common::{Mosquitto, spawn_device, spawn_twin};
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{ConflictPolicy, PathBuf, Shadow, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::clock::Clock;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport, TransportEvent};
use lanyard_std::twin::app_topics;

fn set_desired(key: &str, v: i64) -> Vec<u8> {
    let mut t: StateTree<8, 256> = StateTree::new();
    t.insert(&PathBuf::from_dotted(key).unwrap(), Value::Int(v))
        .unwrap();
    let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(Clock::real().now_ms());
    up.desired = Some(t);
    let mut buf = vec![0u8; 256];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Asks the host for the device's document until `check` holds.
async fn until_document(
    app: &mut MqttTransport,
    id: &str,
    check: impl Fn(&Shadow<64, 4096>) -> bool,
) {
    loop {
        app.publish(
            &format!("{TOPIC_PREFIX}{id}/{}", app_topics::GET),
            b"",
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
        let deadline = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                ev = app.recv() => {
                    if let TransportEvent::Message { topic, payload } = ev.unwrap() {
                        if topic.ends_with(app_topics::DOCUMENT) {
                            let doc = Shadow::<64, 4096>::decode(&payload, ConflictPolicy::CloudWins).unwrap();
                            if check(&doc) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_reaches_the_device_and_a_delta_sent_while_it_was_offline_is_not_missed() {
    let broker = Mosquitto::start();
    let (host_dir, dev_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (twin_stop, twin) = spawn_twin(broker.port, host_dir.path());
    let mac = [2, 0, 0, 0, 0, 7];
    let id = lanyard_core::agent::device_id_from_mac(mac).to_string();
    let mut app = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "app"));
    app.subscribe(&format!("{TOPIC_PREFIX}{id}/{}", app_topics::DOCUMENT))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let script = async {
        let (stop, dev) = spawn_device(broker.port, dev_dir.path(), mac);
        // Desired state is for registered devices only: asked for the
        // document until the device has one.
        let get = format!("{TOPIC_PREFIX}{id}/{}", app_topics::GET);
        loop {
            app.publish(&get, b"", Qos::AtLeastOnce).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(300), app.recv())
                .await
                .is_ok()
            {
                break;
            }
        }
        let topic = format!("{TOPIC_PREFIX}{id}/{}", app_topics::SET_DESIRED);
        app.publish(&topic, &set_desired("led.on", 1), Qos::AtLeastOnce)
            .await
            .unwrap();
        let on = |v: i64| {
            move |d: &Shadow<64, 4096>| {
                d.in_sync()
                    && d.reported()
                        .get_dotted("led.on")
                        .is_some_and(|e| e.value == Value::Int(v))
            }
        };
        until_document(&mut app, &id, on(1)).await;

        // The device goes away; the app changes its mind meanwhile.
        stop.send(()).unwrap();
        dev.await.unwrap();
        app.publish(&topic, &set_desired("led.on", 0), Qos::AtLeastOnce)
            .await
            .unwrap();
        until_document(&mut app, &id, |d| !d.in_sync()).await;

        // Back with the same state: it reports, gets the delta, applies it.
        let (stop, dev) = spawn_device(broker.port, dev_dir.path(), mac);
        until_document(&mut app, &id, on(0)).await;
        stop.send(()).unwrap();
        dev.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), script)
        .await
        .expect("converged in time");
    twin_stop.send(()).unwrap();
    let host = twin.await.unwrap();
    // Once as new, once again after the restart (for the cloud's time; the
    // device kept its state).
    assert_eq!(host.stats().registrations, 1);
    assert_eq!(host.stats().reregistrations, 1);
    assert!(host.stats().deltas >= 2);
}

struct Device(Child);

impl Device {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        Device(
            Process::new(env!("CARGO_BIN_EXE_lanyard"))
                .args([
                    "device",
                    "--broker",
                    &format!("mqtt://127.0.0.1:{port}"),
                    "--mac",
                    "02:00:00:00:00:09",
                ])
                .arg("--state-dir")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// SIGKILL: no clean shutdown, no flushing.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn next_for(
    app: &mut MqttTransport,
    id: &str,
    kinds: &[MessageKind],
) -> (MessageKind, Vec<u8>) {
    loop {
        if let TransportEvent::Message { topic, payload } = app.recv().await.unwrap() {
            if let Some((tid, kind)) = MessageKind::parse_topic(&topic) {
                if tid == id && kinds.contains(&kind) {
                    return (kind, payload);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_process_killed_with_sigkill_resumes_its_state_and_runs_no_command_twice() {
    let broker = Mosquitto::start();
    let (host_dir, dev_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (twin_stop, twin) = spawn_twin(broker.port, host_dir.path());
    let id = "ly-020000000009";
    let mut app = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "app"));
    for kind in [
        MessageKind::Register,
        MessageKind::Lifecycle,
        MessageKind::Ack,
        MessageKind::Heartbeat,
    ] {
        app.subscribe(&topic(id, kind)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let script = async {
        let device = Device::start(broker.port, dev_dir.path());
        loop {
            let (_, p) = next_for(&mut app, id, &[MessageKind::Lifecycle]).await;
            if LifecycleEvent::decode(&p).unwrap().to == LifecycleState::Active {
                break;
            }
        }
        let now = Clock::real().now_ms();
        let mut buf = vec![0u8; 256];
        let n = Command {
            id: "once",
            name: "enter_maintenance",
            args: &[],
            issued_ms: now,
            expires_ms: now + 60_000,
        }
        .encode(&mut buf)
        .unwrap();
        let cmd = buf[..n].to_vec();
        app.publish(&topic(id, MessageKind::Command), &cmd, Qos::AtLeastOnce)
            .await
            .unwrap();
        loop {
            let (_, p) = next_for(&mut app, id, &[MessageKind::Ack]).await;
            if Ack::decode(&p).unwrap().status == AckStatus::Succeeded {
                break;
            }
        }
        device.kill();

        // Restarted: it registers again (for the cloud's time) but resumes
        // in Maintenance, and the same command is acknowledged, not run
        // again.
        let _device = Device::start(broker.port, dev_dir.path());
        let (kind, p) = next_for(
            &mut app,
            id,
            &[MessageKind::Register, MessageKind::Heartbeat],
        )
        .await;
        assert_eq!(kind, MessageKind::Register);
        let again = Register::decode(&p).unwrap();
        assert_eq!((again.boot_count, again.resumed), (2, true));
        let (_, p) = next_for(&mut app, id, &[MessageKind::Heartbeat]).await;
        assert_eq!(
            Heartbeat::decode(&p).unwrap().state,
            LifecycleState::Maintenance
        );
        app.publish(&topic(id, MessageKind::Command), &cmd, Qos::AtLeastOnce)
            .await
            .unwrap();
        let (_, p) = next_for(&mut app, id, &[MessageKind::Ack, MessageKind::Lifecycle]).await;
        let ack = Ack::decode(&p).expect("an ack, not a lifecycle change");
        assert_eq!(
            (ack.command_id, ack.status, ack.detail),
            ("once", AckStatus::Succeeded, Some("duplicate"))
        );
    };
    tokio::time::timeout(Duration::from_secs(30), script)
        .await
        .expect("finished in time");
    twin_stop.send(()).unwrap();
    let host = twin.await.unwrap();
    assert_eq!(host.stats().registrations, 1);
    assert_eq!(host.stats().reregistrations, 1);
}

/// What a killed device had journalled and not yet had acknowledged.
fn journalled(dir: &std::path::Path) -> Vec<(MessageKind, Vec<u8>)> {
    lanyard_std::store::OutboundJournal::open(dir).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_made_while_the_broker_is_down_survive_a_sigkill_of_the_device() {
    let mut broker = Mosquitto::start();
    let (host_dir, dev_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (twin_stop, twin) = spawn_twin(broker.port, host_dir.path());
    let id = "ly-020000000009";
    let mut app = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "app"));
    for kind in [MessageKind::Lifecycle, MessageKind::ShadowUpdate] {
        app.subscribe(&topic(id, kind)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let script = async {
        let device = Device::start(broker.port, dev_dir.path());
        loop {
            let (_, p) = next_for(&mut app, id, &[MessageKind::Lifecycle]).await;
            if LifecycleEvent::decode(&p).unwrap().to == LifecycleState::Active {
                break;
            }
        }
        // The broker goes; the device keeps reporting its shadow (every 2 s
        // in the test fleet's configuration, at least once), which only the
        // journal now holds: rumqttc's queue is in the process's memory.
        broker.kill();
        let pending = loop {
            let j = journalled(dev_dir.path());
            if j.iter().any(|(k, _)| *k == MessageKind::ShadowUpdate) {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        device.kill();

        broker.restart();
        // The app must be back (and subscribed) before the device is.
        while app.recv().await.unwrap() != TransportEvent::Reconnected {}
        let _device = Device::start(broker.port, dev_dir.path());
        let (kind, first) = &pending[0];
        loop {
            let (k, p) = next_for(&mut app, id, &[*kind]).await;
            if k == *kind && p == *first {
                break;
            }
        }
        // Acknowledged by the broker, so out of the journal.
        while !journalled(dev_dir.path()).is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(40), script)
        .await
        .expect("finished in time");
    twin_stop.send(()).unwrap();
    twin.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_sets_state_reads_shadows_watches_changes_and_awaits_command_acks() {
    use lanyard_std::app::{AppClient, AppError, AppEvent};
    let broker = Mosquitto::start();
    let (host_dir, dev_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (twin_stop, twin) = spawn_twin(broker.port, host_dir.path());
    let mac = [2, 0, 0, 0, 0, 8];
    let id = lanyard_core::agent::device_id_from_mac(mac).to_string();
    let mut app = AppClient::new(MqttTransport::connect(MqttConfig::new(
        "127.0.0.1",
        broker.port,
        "app",
    )))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop, dev) = spawn_device(broker.port, dev_dir.path(), mac);
    let now = || Clock::real().now_ms();

    let script = async {
        // Unknown until the device registers.
        while app
            .get_shadow(&id, Duration::from_millis(500))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut want: StateTree<8, 256> = StateTree::new();
        want.insert(&PathBuf::from_dotted("fan.speed").unwrap(), Value::Int(3))
            .unwrap();
        app.set_desired(&id, &want, now()).await.unwrap();
        let (mut saw_delta, mut saw_report) = (false, false);
        while !(saw_delta && saw_report) {
            match app.next_event().await.unwrap() {
                AppEvent::Delta { device, state } if device == id => {
                    saw_delta |= state.get_dotted("fan.speed").is_some();
                }
                AppEvent::Reported { device, state, .. } if device == id => {
                    saw_report |= state
                        .get_dotted("fan.speed")
                        .is_some_and(|e| e.value == Value::Int(3));
                }
                _ => {}
            }
        }
        let doc = app.get_shadow(&id, Duration::from_secs(5)).await.unwrap();
        assert!(doc.in_sync());

        let ok = app
            .command(&id, "diagnostics", &[], now(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ok.status, AckStatus::Succeeded);
        assert!(ok.result.is_some());
        let unknown = app
            .command(&id, "self_destruct", &[], now(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (unknown.status, unknown.reason),
            (AckStatus::Rejected, Some(AckReason::UnknownCommand))
        );
        let absent = app
            .command(
                "ly-ffffffffffff",
                "diagnostics",
                &[],
                now(),
                Duration::from_secs(10),
            )
            .await;
        // Refused by the twin host at once, not left to time out.
        assert_eq!(
            absent,
            Err(AppError::Rejected(
                "ly-ffffffffffff: no device with this id has registered".into()
            ))
        );
        assert!(matches!(
            app.get_shadow("ly-ffffffffffff", Duration::from_secs(5))
                .await,
            Err(AppError::Rejected(_))
        ));
    };
    tokio::time::timeout(Duration::from_secs(30), script)
        .await
        .expect("finished in time");
    stop.send(()).unwrap();
    dev.await.unwrap();
    twin_stop.send(()).unwrap();
    twin.await.unwrap();
}
