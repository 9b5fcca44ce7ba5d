//! A device holds the shadow its type says: a gateway built with room for
//! 64 leaves takes 40 desired properties and reports them all; a default
//! device (16 leaves) is protected by the twin host, which refuses the
//! same 40 with a reason the app sees. Over mosquitto.

mod common;

use std::time::{Duration, Instant};

use common::{Mosquitto, spawn_twin};
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_std::app::{AppClient, AppError};
use lanyard_std::device::DeviceBuilder;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};

fn forty() -> StateTree<64, 4096> {
    let mut t = StateTree::new();
    for i in 0..40 {
        t.insert(
            &PathBuf::from_dotted(&format!("zone{:02}.setpoint", i)).unwrap(),
            Value::Int(i),
        )
        .unwrap();
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_host_holds_a_device_to_the_capacity_it_announced() {
    let broker = Mosquitto::start();
    let twin_dir = tempfile::tempdir().unwrap();
    let (stop_twin, twin) = spawn_twin(broker.port, twin_dir.path());
    let config = || MqttConfig::new("127.0.0.1", broker.port, "");

    // A gateway with room for 64 leaves and 4 KiB of keys and text.
    let big_dir = tempfile::tempdir().unwrap();
    let (mut gateway, _) =
        DeviceBuilder::new([2, 0, 0, 0, 0x0c, 1], "gw-1", config(), big_dir.path())
            .build_with_capacity::<8192, 64, 4096>()
            .unwrap();
    let gateway_id = gateway.agent().device_id().to_owned();
    // A default device: 16 leaves, 512 bytes.
    let small_dir = tempfile::tempdir().unwrap();
    let (mut small, _) =
        DeviceBuilder::new([2, 0, 0, 0, 0x0c, 2], "dev-1", config(), small_dir.path())
            .build()
            .unwrap();
    let small_id = small.agent().device_id().to_owned();
    let (stop_gw, gw_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_small, small_rx) = tokio::sync::oneshot::channel::<()>();
    let gw_task = tokio::spawn(async move {
        gateway.start().await.unwrap();
        gateway
            .run_until(async {
                let _ = gw_rx.await;
            })
            .await
            .unwrap();
    });
    let small_task = tokio::spawn(async move {
        small.start().await.unwrap();
        small
            .run_until(async {
                let _ = small_rx.await;
            })
            .await
            .unwrap();
    });

    let app = AppClient::new(MqttTransport::connect(MqttConfig::new(
        "127.0.0.1",
        broker.port,
        "capacity-app",
    )))
    .await
    .unwrap();
    for id in [&gateway_id, &small_id] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while app
            .get_shadow(id, Duration::from_millis(500))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "{id} never registered");
        }
    }

    // The gateway takes all 40 and reports them.
    app.set_desired(&gateway_id, &forty(), 1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = app
            .get_shadow(&gateway_id, Duration::from_secs(2))
            .await
            .unwrap();
        if doc.in_sync() && doc.reported().len() == 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never reported 40: {doc:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The small device would not hold them: refused, with the reason.
    match app.set_desired(&small_id, &forty(), 2).await {
        Err(AppError::Rejected(why)) => assert!(why.contains("16 leaves"), "{why}"),
        other => panic!("40 leaves on a 16-leaf device: {other:?}"),
    }
    let doc = app
        .get_shadow(&small_id, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(doc.desired().is_empty() && doc.in_sync());

    let _ = (stop_gw.send(()), stop_small.send(()));
    gw_task.await.unwrap();
    small_task.await.unwrap();
    let _ = stop_twin.send(());
    twin.await.unwrap();
}
