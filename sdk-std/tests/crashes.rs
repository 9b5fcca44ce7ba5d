//! Crashes and their aftermath with real processes: the `lanyard` command
//! (twin host and device) and a device process of the valve example (this
//! test binary started again as the device), killed with SIGKILL and
//! restarted; damaged files; decommissioning across restarts.

mod common;

#[path = "../examples/valve.rs"]
#[allow(dead_code)]
mod valve;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Mosquitto;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::app::{AppClient, AppError};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport, TransportEvent};
use lanyard_std::twin::TwinHost;

fn lanyard(args: &[&str], dir: Option<&Path>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lanyard"));
    c.args(args);
    if let Some(d) = dir {
        c.arg("--state-dir").arg(d);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A twin host keeping its shadows in `dir` (SQLite there, the default).
fn twin(port: u16, dir: &Path) -> Child {
    lanyard(
        &[
            "twin",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--device-rate",
            "100000",
            "--device-burst",
            "100000",
        ],
        Some(dir),
    )
}

/// A twin host keeping a file per device in `dir`.
fn twin_files(port: u16, dir: &Path) -> Child {
    lanyard(
        &[
            "twin",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--device-rate",
            "100000",
            "--device-burst",
            "100000",
            "--files",
        ],
        Some(dir),
    )
}

/// A twin host keeping its shadows in an SQLite database in `dir`.
fn twin_db(port: u16, dir: &Path) -> Child {
    let db = dir.join("twin.db");
    lanyard(
        &[
            "twin",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--device-rate",
            "100000",
            "--device-burst",
            "100000",
            "--db",
            db.to_str().unwrap(),
        ],
        None,
    )
}

fn device(port: u16, dir: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["device", "--broker"];
    let url = format!("mqtt://127.0.0.1:{port}");
    args.push(&url);
    args.extend_from_slice(extra);
    lanyard(&args, Some(dir))
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Waits for a child to exit by itself; its status and stderr.
fn exits_within(c: &mut Child, d: Duration) -> (bool, String) {
    let deadline = Instant::now() + d;
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = c.stderr.take().unwrap().read_to_string(&mut err);
            return (status.success(), err);
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn app(port: u16, name: &str) -> AppClient {
    let t = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", port, name),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    AppClient::new(t).await.unwrap()
}

/// Waits until the twin host has a shadow for `id`.
async fn registered(app: &mut AppClient, id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while app
        .get_shadow(id, Duration::from_millis(500))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{id} did not register");
    }
}

fn now() -> u64 {
    lanyard_std::clock::Clock::real().now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_device_stays_decommissioned_on_both_sides_until_reprovisioned() {
    let broker = Mosquitto::start();
    let port = broker.port;
    let twin_dir = tempfile::tempdir().unwrap();
    let dev_dir = tempfile::tempdir().unwrap();
    let mut host = twin(port, twin_dir.path());
    let mut dev = device(port, dev_dir.path(), &[]);
    let id = lanyard_core::agent::device_id_from_mac([2, 0, 0, 0, 0, 1]).to_string();
    let mut app = app(port, "lanyard-app-decommission").await;
    registered(&mut app, &id, Duration::from_secs(20)).await;

    let outcome = app
        .command(&id, "decommission", &[], now(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcome.status, AckStatus::Succeeded);
    // The device process ends by itself.
    let (ok, err) = exits_within(&mut dev, Duration::from_secs(10));
    assert!(ok, "{err}");

    // The twin host refuses everything of it, across a crash of its own.
    let refused = |r: Result<Box<lanyard_std::twin::TwinShadow>, AppError>| matches!(r, Err(AppError::Rejected(ref why)) if why.contains("decommissioned"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused(app.get_shadow(&id, Duration::from_secs(2)).await) {
        assert!(Instant::now() < deadline, "the twin host kept the device");
    }
    kill(&mut host);
    let mut host = twin(port, twin_dir.path());
    let mut forger = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", port, "forger"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    forger
        .subscribe(&topic(&id, MessageKind::RegisterAccepted))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused(app.get_shadow(&id, Duration::from_secs(2)).await) {
        assert!(Instant::now() < deadline, "the restarted host forgot");
    }
    forger
        .publish(
            &topic(&id, MessageKind::Register),
            &common::register_bytes(&id),
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), forger.recv())
            .await
            .is_err(),
        "a decommissioned device's registration was answered"
    );

    // Restarted, the device refuses to start, and says why.
    let mut dev = device(port, dev_dir.path(), &[]);
    let (ok, err) = exits_within(&mut dev, Duration::from_secs(10));
    assert!(!ok);
    assert!(err.contains("decommissioned"), "{err}");

    // An operator re-provisions it on both sides: it registers again.
    app.reprovision(&id, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(
        app.reprovision(&id, Duration::from_secs(5)).await,
        Err(AppError::Rejected(_))
    ));
    let mut dev = device(port, dev_dir.path(), &["--reprovision"]);
    registered(&mut app, &id, Duration::from_secs(20)).await;
    kill(&mut dev);
    kill(&mut host);
}

/// The valve device, when this test binary is started as it (see
/// `a_command_running_when_the_device_is_killed_is_never_run_again`).
#[test]
fn valve_device_process() {
    let (Ok(url), Ok(dir)) = (
        std::env::var("LANYARD_TEST_VALVE_BROKER"),
        std::env::var("LANYARD_TEST_VALVE_DIR"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let id = lanyard_core::agent::device_id_from_mac(VALVE_MAC);
        let broker = MqttConfig::from_url(&url, id.as_str(), None, None).unwrap();
        let (mut driver, _) = valve::valve(broker, Path::new(&dir), VALVE_MAC, 80).unwrap();
        driver.start().await.unwrap();
        driver.run_until(std::future::pending()).await.unwrap();
    });
}

const VALVE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];

fn valve_process(port: u16, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "valve_device_process",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(
            "LANYARD_TEST_VALVE_BROKER",
            format!("mqtt://127.0.0.1:{port}"),
        )
        .env("LANYARD_TEST_VALVE_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_running_when_the_device_is_killed_is_never_run_again() {
    let broker = Mosquitto::start();
    let port = broker.port;
    let twin_dir = tempfile::tempdir().unwrap();
    let dev_dir = tempfile::tempdir().unwrap();
    let mut host = twin(port, twin_dir.path());
    let id = lanyard_core::agent::device_id_from_mac(VALVE_MAC).to_string();
    let mut dev = valve_process(port, dev_dir.path());
    let mut app = app(port, "lanyard-app-interrupted").await;
    registered(&mut app, &id, Duration::from_secs(20)).await;

    let mut watch = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", port, "watcher"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    watch
        .subscribe(&topic(&id, MessageKind::Ack))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `calibrate` with 5 sweeps runs for 2.5 s, finished by the motor task.
    let mut args = Vec::new();
    minicbor::encode(
        std::collections::BTreeMap::from([("sweeps", 5u8)]),
        &mut args,
    )
    .unwrap();
    let now = lanyard_std::clock::Clock::real().now_ms();
    let mut cmd = vec![0u8; 256];
    let n = lanyard_core::agent::messages::Command {
        id: "cal-1",
        name: "calibrate",
        args: &args,
        issued_ms: now,
        expires_ms: now + 120_000,
    }
    .encode(&mut cmd)
    .unwrap();
    cmd.truncate(n);
    watch
        .publish(&topic(&id, MessageKind::Command), &cmd, Qos::AtLeastOnce)
        .await
        .unwrap();
    let mut acks = Vec::new();
    let next_ack = async |watch: &mut MqttTransport, within: Duration| match tokio::time::timeout(
        within,
        watch.recv(),
    )
    .await
    {
        Ok(Ok(TransportEvent::Message { payload, .. })) => {
            let a = Ack::decode(&payload).unwrap();
            Some((
                a.command_id.to_owned(),
                a.status,
                a.reason,
                a.detail.map(str::to_owned),
            ))
        }
        _ => None,
    };
    while acks.len() < 2 {
        acks.push(
            next_ack(&mut watch, Duration::from_secs(5))
                .await
                .expect("acks"),
        );
    }
    assert_eq!(acks[1].1, AckStatus::InProgress, "{acks:?}");
    // Killed while it calibrates, and started again.
    kill(&mut dev);
    let mut dev = valve_process(port, dev_dir.path());
    // (Acknowledgements the killed process had not seen reach the broker
    // are sent again first, from its journal: Accepted, InProgress.)
    let (cid, status, reason) = loop {
        let (cid, status, reason, _) = next_ack(&mut watch, Duration::from_secs(20))
            .await
            .expect("the interrupted command is answered");
        if status.is_final() {
            break (cid, status, reason);
        }
    };
    assert_eq!(
        (cid.as_str(), status, reason),
        ("cal-1", AckStatus::Failed, Some(AckReason::Interrupted))
    );
    // The same command again (a retry, a replay): answered, not run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch
        .publish(&topic(&id, MessageKind::Command), &cmd, Qos::AtLeastOnce)
        .await
        .unwrap();
    let (cid, status, reason, detail) = next_ack(&mut watch, Duration::from_secs(5))
        .await
        .expect("the replay is answered");
    assert_eq!(
        (cid.as_str(), status, reason, detail.as_deref()),
        (
            "cal-1",
            AckStatus::Failed,
            Some(AckReason::Interrupted),
            Some("duplicate")
        )
    );
    // A run would be accepted again and end with Succeeded after its
    // 2.5 s; what comes instead is the same answer (the broker may also
    // deliver the original again, which was never acknowledged to it).
    while let Some(ack) = next_ack(&mut watch, Duration::from_secs(4)).await {
        assert_eq!(
            ack,
            (
                "cal-1".to_owned(),
                AckStatus::Failed,
                Some(AckReason::Interrupted),
                Some("duplicate".to_owned())
            ),
            "the command ran again"
        );
    }
    kill(&mut dev);
    kill(&mut host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_host_killed_under_load_loses_no_acknowledged_update() {
    killed_under_load(twin_files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_host_on_sqlite_killed_under_load_loses_no_acknowledged_update() {
    killed_under_load(twin_db).await;
}

async fn killed_under_load(twin: fn(u16, &Path) -> Child) {
    const DEVICES: usize = 20;
    const UPDATES: usize = 60;
    let broker = Mosquitto::start();
    let port = broker.port;
    let twin_dir = tempfile::tempdir().unwrap();
    let mut host = twin(port, twin_dir.path());
    let ids: Vec<String> = (0..DEVICES)
        .map(|i| format!("ly-0000000001{i:02x}"))
        .collect();
    let mut devices = Vec::new();
    for id in &ids {
        let mut t = MqttTransport::connect_and_wait(
            MqttConfig::new("127.0.0.1", port, id.clone()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        t.subscribe(&topic(id, MessageKind::RegisterAccepted))
            .await
            .unwrap();
        loop {
            t.publish(
                &topic(id, MessageKind::Register),
                &common::register_bytes(id),
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
            if tokio::time::timeout(Duration::from_millis(500), t.recv())
                .await
                .is_ok()
            {
                break;
            }
        }
        devices.push(t);
    }
    // Each update reports a leaf of its own: a lost one leaves a hole. All
    // sent at once, so that the host has a backlog each time it is killed.
    for i in 0..UPDATES {
        for (t, id) in devices.iter_mut().zip(&ids) {
            let mut up = ShadowUpdate::<16, 512>::new(i as u64 + 1);
            let mut tree = StateTree::<16, 512>::new();
            tree.insert(
                &PathBuf::from_dotted(&format!("k{i}")).unwrap(),
                Value::Int(i as i64),
            )
            .unwrap();
            up.reported = Some(tree);
            let mut buf = vec![0u8; 512];
            let n = up.encode(&mut buf).unwrap();
            t.publish(
                &topic(id, MessageKind::ShadowUpdate),
                &buf[..n],
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
        }
    }
    for t in &mut devices {
        t.flush(Duration::from_secs(10)).await.unwrap();
    }
    // Every update is the broker's now; the host is killed three times
    // while it works through them.
    let mut kills = 0;
    for wait_ms in [150, 250, 250] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        kill(&mut host);
        host = twin(port, twin_dir.path());
        kills += 1;
    }
    assert_eq!(kills, 3);
    let app = app(port, "lanyard-app-load").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let s = app.get_shadow(id, Duration::from_secs(2)).await;
            let missing: Vec<usize> = (0..UPDATES)
                .filter(|i| {
                    s.as_ref().map_or(true, |s| {
                        s.reported().get_dotted(&format!("k{i}")).is_none()
                    })
                })
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: updates {missing:?} were acknowledged to the broker and never applied"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    kill(&mut host);
}

#[test]
fn damaged_shadow_files_are_set_aside_and_the_rest_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["ly-000000000301", "ly-000000000302", "ly-000000000303"];
    {
        let mut h = TwinHost::open(dir.path(), DeviceConfig::default()).unwrap();
        for id in ids {
            h.handle(
                1,
                &topic(id, MessageKind::Register),
                &common::register_bytes(id),
            );
            let mut up = ShadowUpdate::<16, 512>::new(2);
            let mut tree = StateTree::<16, 512>::new();
            tree.insert(
                &PathBuf::from_dotted("name").unwrap(),
                Value::Text("a value long enough"),
            )
            .unwrap();
            up.reported = Some(tree);
            let mut buf = vec![0u8; 512];
            let n = up.encode(&mut buf).unwrap();
            h.handle(2, &topic(id, MessageKind::ShadowUpdate), &buf[..n]);
        }
    }
    let file = |id: &str| lanyard_std::twin::shadow_file(dir.path(), id);
    // One truncated, one with a byte flipped inside a value.
    let bytes = std::fs::read(file(ids[0])).unwrap();
    std::fs::write(file(ids[0]), &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = std::fs::read(file(ids[1])).unwrap();
    let at = bytes.windows(5).position(|w| w == b"value").unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(file(ids[1]), &bytes).unwrap();

    let h = TwinHost::open(dir.path(), DeviceConfig::default()).unwrap();
    assert_eq!(h.stats().damaged_records, 2);
    assert_eq!(
        h.shadow(ids[2])
            .unwrap()
            .reported()
            .get_dotted("name")
            .map(|e| e.value),
        Some(Value::Text("a value long enough"))
    );
    for id in &ids[..2] {
        // Still registered, with an empty shadow; the damaged file kept aside.
        assert!(h.shadow(id).unwrap().reported().is_empty());
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join(".damaged"))
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_damaged_saved_state_refuses_to_start_instead_of_starting_over() {
    let broker = Mosquitto::start();
    let port = broker.port;
    let twin_dir = tempfile::tempdir().unwrap();
    let dev_dir = tempfile::tempdir().unwrap();
    let mut host = twin(port, twin_dir.path());
    let mut dev = device(port, dev_dir.path(), &[]);
    let id = lanyard_core::agent::device_id_from_mac([2, 0, 0, 0, 0, 1]).to_string();
    let mut app = app(port, "lanyard-app-damaged").await;
    registered(&mut app, &id, Duration::from_secs(20)).await;
    // In Active, with its window of commands saved.
    let outcome = app
        .command(
            &id,
            "enter_maintenance",
            &[],
            now(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status, AckStatus::Succeeded);
    kill(&mut dev);
    let state = dev_dir.path().join("agent-state.cbor");
    let mut bytes = std::fs::read(&state).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&state, &bytes).unwrap();

    let mut dev = device(port, dev_dir.path(), &[]);
    let (ok, err) = exits_within(&mut dev, Duration::from_secs(10));
    assert!(!ok);
    assert!(
        err.contains("damaged") && err.contains("agent-state.cbor"),
        "{err}"
    );
    // Left in place for inspection.
    assert_eq!(std::fs::read(&state).unwrap(), bytes);
    kill(&mut host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_of_files_is_taken_into_the_database_once() {
    let dir = tempfile::tempdir().unwrap();
    let id = "ly-000000000401";
    {
        let mut h = TwinHost::open(dir.path(), DeviceConfig::default()).unwrap();
        h.handle(
            1,
            &topic(id, MessageKind::Register),
            &common::register_bytes(id),
        );
    }
    let broker = Mosquitto::start();
    let mut host = twin(broker.port, dir.path());
    let mut app = app(broker.port, "lanyard-app-import").await;
    // Served from the database: the device is known at once.
    registered(&mut app, id, Duration::from_secs(20)).await;
    kill(&mut host);
    assert!(dir.path().join("twin.db").exists());
    assert!(!dir.path().join(format!("{id}.cbor")).exists());
    assert!(
        dir.path()
            .join("imported-files")
            .join(format!("{id}.cbor"))
            .exists()
    );
    let h = TwinHost::open_sqlite(dir.path().join("twin.db"), DeviceConfig::default()).unwrap();
    assert!(h.shadow(id).is_some());
}

/// Liveness with real processes: a device SIGKILLed is offline for the
/// twin host after 3 missed heartbeats (1 s each here), and online again
/// when it is restarted; apps hear both as events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_device_goes_offline_and_comes_back_online() {
    use lanyard_std::twin::FleetEvent;

    let broker = Mosquitto::start();
    let port = broker.port;
    let dir = tempfile::tempdir().unwrap();
    let mut host = lanyard(
        &[
            "twin",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--heartbeat-ms",
            "1000",
        ],
        Some(&dir.path().join("twin")),
    );
    let id = "ly-020000000001";
    let dev_dir = dir.path().join("dev");
    let mut dev = device(port, &dev_dir, &[]);
    let mut app = app(port, "lanyard-liveness-app").await;
    registered(&mut app, id, Duration::from_secs(20)).await;
    // A heartbeat at the fleet's 1 s once registered.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    kill(&mut dev);
    let offline = fleet_event(&mut app, id, "offline").await;
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(1_900) && after < Duration::from_secs(8),
        "offline {after:?} after the kill"
    );
    let FleetEvent::Offline {
        at_ms,
        last_seen_ms,
    } = offline
    else {
        unreachable!()
    };
    assert!(at_ms - last_seen_ms > 3_000, "{offline:?}");

    let mut dev = device(port, &dev_dir, &[]);
    fleet_event(&mut app, id, "online").await;
    kill(&mut dev);
    kill(&mut host);
}

/// The next fleet event of `kind` about `id`, within 15 s.
async fn fleet_event(app: &mut AppClient, id: &str, kind: &str) -> lanyard_std::twin::FleetEvent {
    use lanyard_std::app::AppEvent;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "no {kind} event");
        if let Ok(Ok(AppEvent::Fleet { device, event })) =
            tokio::time::timeout(Duration::from_millis(500), app.next_event()).await
            && device == id
            && event.kind() == kind
        {
            return event;
        }
    }
}
