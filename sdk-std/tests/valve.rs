//! The smart valve example (`examples/valve.rs`) against a real mosquitto
//! and a twin host, driven by the app client: a reachable position is
//! pending while the valve moves and reported when reached; a position past
//! its limit is refused, the app sees why, and the device and the twin do
//! not start a report/delta loop over it.

mod common;

#[path = "../examples/valve.rs"]
#[allow(dead_code)]
mod valve;

use std::time::{Duration, Instant};

use common::{Mosquitto, spawn_twin};
use lanyard_core::agent::messages::{AckReason, AckStatus, MessageKind};
use lanyard_core::agent::platform::RejectReason;
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_std::app::{AppClient, AppEvent, Rejection};
use lanyard_std::driver::DriverEvent;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];

fn desired(key: &str, v: Value<'_>) -> StateTree<16, 512> {
    let mut t = StateTree::new();
    t.insert(&PathBuf::from_dotted(key).unwrap(), v).unwrap();
    t
}

/// Shadow updates the device sent, from its driver's events so far.
fn reports_sent(events: &mut tokio::sync::mpsc::UnboundedReceiver<DriverEvent>) -> usize {
    let mut n = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(
            e,
            DriverEvent::Sent {
                kind: MessageKind::ShadowUpdate,
                ..
            }
        ) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valve_moves_reports_what_it_reached_and_refuses_past_its_limit() {
    let broker = Mosquitto::start();
    let twin_dir = tempfile::tempdir().unwrap();
    let dev_dir = tempfile::tempdir().unwrap();
    let (stop_twin, twin) = spawn_twin(broker.port, twin_dir.path());

    let id = lanyard_core::agent::device_id_from_mac(MAC).to_string();
    let (driver, mechanism) = valve::valve(
        MqttConfig::new("127.0.0.1", broker.port, id.clone()),
        dev_dir.path(),
        MAC,
        80,
    )
    .unwrap();
    let (ev_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut driver = driver.with_events(ev_tx);
    let (stop_dev, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let device = tokio::spawn(async move {
        driver.start().await.unwrap();
        driver
            .run_until(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
    });

    let mut app = AppClient::new(MqttTransport::connect(MqttConfig::new(
        "127.0.0.1",
        broker.port,
        "valve-app",
    )))
    .await
    .unwrap();
    // Registered: the twin has a shadow for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app
        .get_shadow(&id, Duration::from_millis(500))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the valve never registered");
    }

    // A reachable position: pending while it moves (10 % per 100 ms),
    // then reported where it arrived. Positions passed on the way are
    // reported too; nothing claims 60 before the valve is there.
    app.set_desired(&id, &desired("position", Value::Int(60)), 1)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "never reached 60: {seen:?}");
        let Ok(Ok(AppEvent::Reported { state, .. })) =
            tokio::time::timeout(Duration::from_secs(1), app.next_event()).await
        else {
            continue;
        };
        if let Some(Value::Int(p)) = state.get_dotted("position").map(|e| e.value) {
            assert!(
                p == 60 || mechanism.lock().unwrap().position >= p,
                "reported {p} ahead of the valve"
            );
            seen.push(p);
            if p == 60 {
                break;
            }
        }
    }
    assert!(seen.len() >= 3, "intermediate positions reported: {seen:?}");
    let doc = app.get_shadow(&id, Duration::from_secs(2)).await.unwrap();
    assert!(doc.in_sync(), "{doc:?}");

    // Past the limit: refused, with the reason, and the position stays.
    reports_sent(&mut events);
    app.set_desired(&id, &desired("position", Value::Int(95)), 2)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        assert!(Instant::now() < deadline, "no refusal seen");
        if let Ok(Ok(AppEvent::Reported { rejected, .. })) =
            tokio::time::timeout(Duration::from_secs(1), app.next_event()).await
        {
            if !rejected.is_empty() {
                break rejected;
            }
        }
    };
    assert_eq!(
        rejected,
        [Rejection {
            path: "position".into(),
            reason: RejectReason::OutOfRange
        }]
    );
    let doc = app.get_shadow(&id, Duration::from_secs(2)).await.unwrap();
    let refused: Vec<(String, u32)> = doc
        .rejected()
        .map(|(p, c)| (p.keys().collect::<Vec<_>>().join("."), c))
        .collect();
    assert_eq!(refused, [("position".to_string(), 1)]);
    assert_eq!(
        doc.reported().get_dotted("position").unwrap().value,
        Value::Int(60)
    );
    assert_eq!(mechanism.lock().unwrap().position, 60);

    // No loop: over the next three seconds the device sends at most its
    // periodic syncs (every 2 s here), not a report per delta.
    reports_sent(&mut events);
    let version = doc.version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = reports_sent(&mut events);
    assert!(sent <= 3, "{sent} shadow updates in 3 s");
    let doc = app.get_shadow(&id, Duration::from_secs(2)).await.unwrap();
    assert!(
        doc.version() <= version + 3,
        "version {} -> {}",
        version,
        doc.version()
    );

    // A reachable value again: the refusal is withdrawn once it is there.
    app.set_desired(&id, &desired("position", Value::Int(30)), 3)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "never settled at 30");
        let doc = app.get_shadow(&id, Duration::from_secs(2)).await.unwrap();
        if doc.in_sync() && doc.rejected().count() == 0 {
            assert_eq!(
                doc.reported().get_dotted("position").unwrap().value,
                Value::Int(30)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Its own telemetry reaches the app: the flow at its position.
    let deadline = Instant::now() + Duration::from_secs(10);
    let readings = loop {
        assert!(Instant::now() < deadline, "no telemetry");
        if let Ok(Ok(AppEvent::Telemetry {
            device, readings, ..
        })) = tokio::time::timeout(Duration::from_secs(1), app.next_event()).await
        {
            if device == id {
                break readings;
            }
        }
    };
    let position = match readings.get_dotted("position").map(|e| e.value) {
        Some(Value::Int(p)) => p,
        other => panic!("position {other:?}"),
    };
    assert_eq!(
        readings.get_dotted("flow_lpm").map(|e| e.value),
        Some(Value::Float(valve::flow_lpm(position)))
    );

    // A command that takes a while: in progress, then its result.
    let mut args = lanyard_core::minicbor::Encoder::new(Vec::new());
    args.map(1).unwrap().str("sweeps").unwrap().u8(2).unwrap();
    let started = Instant::now();
    let outcome = app
        .command(
            &id,
            "calibrate",
            &args.into_writer(),
            lanyard_std::clock::Clock::real().now_ms(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status, AckStatus::Succeeded, "{outcome:?}");
    // {"travel_pct": 100}
    assert_eq!(
        outcome.result.as_deref(),
        Some(
            &[
                0xa1, 0x6a, b't', b'r', b'a', b'v', b'e', b'l', b'_', b'p', b'c', b't', 0x18, 100
            ][..]
        )
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "two sweeps take ten ticks"
    );
    let bad = app
        .command(
            &id,
            "calibrate",
            &[0xa1, 0x66, b's', b'w', b'e', b'e', b'p', b's', 0x09],
            lanyard_std::clock::Clock::real().now_ms(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        (bad.status, bad.reason),
        (AckStatus::Rejected, Some(AckReason::BadArguments))
    );
    // Text where the typed arguments want a number: refused before the
    // handler runs.
    let wrong_type = app
        .command(
            &id,
            "calibrate",
            &[0xa1, 0x66, b's', b'w', b'e', b'e', b'p', b's', 0x61, b'x'],
            lanyard_std::clock::Clock::real().now_ms(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        (wrong_type.status, wrong_type.reason),
        (AckStatus::Rejected, Some(AckReason::BadArguments))
    );
    assert_eq!(mechanism.lock().unwrap().calibrating, None);

    // More desired state than the valve holds (16 leaves): refused by the
    // twin host, the app told why, nothing reaches the device.
    let mut many: StateTree<32, 1024> = StateTree::new();
    for i in 0..17 {
        many.insert(
            &PathBuf::from_dotted(&format!("extra.k{i}")).unwrap(),
            Value::Int(i),
        )
        .unwrap();
    }
    let version = app
        .get_shadow(&id, Duration::from_secs(2))
        .await
        .unwrap()
        .version();
    match app.set_desired(&id, &many, 4).await {
        Err(lanyard_std::app::AppError::Rejected(why)) => {
            assert!(why.contains("16 leaves"), "{why}")
        }
        other => panic!("17 leaves on a 16-leaf device: {other:?}"),
    }
    let doc = app.get_shadow(&id, Duration::from_secs(2)).await.unwrap();
    assert_eq!(doc.version(), version);
    assert!(doc.desired().get_dotted("extra.k0").is_none());

    let _ = stop_dev.send(());
    device.await.unwrap();
    let _ = stop_twin.send(());
    twin.await.unwrap();
}
