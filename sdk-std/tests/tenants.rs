//! Two tenants on one mosquitto with the generated tenant ACL: a device
//! works in its tenant's namespace end to end, and a client of another
//! tenant can neither write into that namespace nor read from it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Mosquitto;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::device_id_from_mac;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::app::AppClient;
use lanyard_std::clock::Clock;
use lanyard_std::driver::{DeviceDriver, StdPlatform, std_agent};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::sim::SimulatedSensors;
use lanyard_std::store::FileStore;
use lanyard_std::transport::{Qos, Transport};
use lanyard_std::twin::{TwinHost, run_twin};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x21];

fn client(port: u16, client_id: &str, user: &str) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", port, client_id);
    c.username = Some(user.into());
    c.persistent_session = false;
    c
}

fn blink_args() -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    e.map(2).unwrap();
    e.str("count").unwrap().u64(2).unwrap();
    e.str("period_ms").unwrap().u64(100).unwrap();
    e.into_writer()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_a_broker_without_reaching_into_each_other() {
    let broker = Mosquitto::start_configured(|dir: &Path| {
        std::fs::write(
            dir.join("acl"),
            lanyard_std::acl::mosquitto_tenant_acl(&["lanyard-twin", "lanyard-app"]).unwrap(),
        )
        .unwrap();
        format!("acl_file {}\n", dir.join("acl").display())
    });
    let port = broker.port;
    let id = device_id_from_mac(MAC).to_string();
    let acme_device = format!("acme/{id}");

    // The twin host serves two tenants, as a trusted user.
    let fleet = DeviceConfig {
        version: 1,
        heartbeat_ms: 1_000,
        telemetry_ms: 1_000,
        health_ms: 1_000,
        shadow_sync_ms: 1_000,
        ..DeviceConfig::default()
    };
    let mut host = TwinHost::in_memory(fleet)
        .with_tenants(&["acme", "globex"])
        .unwrap();
    let (stop_twin, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let twin = tokio::spawn(async move {
        let mut t = MqttTransport::connect_and_wait(
            client(port, "lanyard-twin", "lanyard-twin"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        run_twin(&mut host, &mut t, Clock::real(), false, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        host
    });

    // acme's device: tenant as user name, device id as client id.
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::real();
    let agent = std_agent(MAC, "test");
    let platform = StdPlatform {
        storage: Box::new(FileStore::open(dir.path()).unwrap()),
        probe: Box::new(SimulatedSensors::new(clock.now_ms(), 600_000, 0)),
        telemetry: Box::new(SimulatedSensors::new(clock.now_ms(), 600_000, 0)),
        commands: Box::new(lanyard_std::sim::simulated_board(
            SimulatedSensors::new(clock.now_ms(), 600_000, 0),
            Default::default(),
        )),
        desired: Box::new(lanyard_core::agent::platform::MirrorDesired),
    };
    let mut driver = DeviceDriver::new(
        agent,
        MqttTransport::connect(client(port, &id, &format!("acme/{id}"))),
        platform,
        clock,
    )
    .with_tenant("acme")
    .unwrap();
    let (stop_dev, dev_rx) = tokio::sync::oneshot::channel::<()>();
    let device = tokio::spawn(async move {
        driver.start().await.unwrap();
        driver
            .run_until(async {
                let _ = dev_rx.await;
            })
            .await
            .unwrap();
    });

    let app = AppClient::for_tenants(
        MqttTransport::connect_and_wait(
            client(port, "lanyard-app", "lanyard-app"),
            Duration::from_secs(5),
        )
        .await
        .unwrap(),
    )
    .await
    .unwrap();

    // A globex client (its own id) tries to forge acme's device state and
    // to listen to its commands.
    let rogue_id = "ly-0000000000ee";
    let mut rogue = MqttTransport::connect_and_wait(
        client(port, rogue_id, &format!("globex/{rogue_id}")),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    rogue
        .subscribe(&tenant_topic("acme", &id, MessageKind::Command).unwrap())
        .await
        .unwrap();

    let script = async {
        // Registered in acme's namespace.
        while app
            .get_shadow(&acme_device, Duration::from_millis(500))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut forged: Box<ShadowUpdate<8, 256>> =
            Box::new(ShadowUpdate::new(Clock::real().now_ms()));
        let mut state: StateTree<8, 256> = StateTree::new();
        state
            .insert(&PathBuf::from_dotted("forged").unwrap(), Value::Int(1))
            .unwrap();
        forged.reported = Some(state);
        let mut buf = vec![0u8; 512];
        let n = forged.encode(&mut buf).unwrap();
        rogue
            .publish(
                &tenant_topic("acme", &id, MessageKind::ShadowUpdate).unwrap(),
                &buf[..n],
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
        // In its own namespace the rogue may register itself.
        let mut reg = vec![0u8; 256];
        let n = Register {
            device_id: rogue_id,
            firmware: "x",
            config_version: 0,
            boot_count: 1,
            time_ms: 1,
            resumed: false,
            capacity: None,
        }
        .encode(&mut reg)
        .unwrap();
        rogue
            .publish(
                &tenant_topic("globex", rogue_id, MessageKind::Register).unwrap(),
                &reg[..n],
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
        while app
            .get_shadow(&format!("globex/{rogue_id}"), Duration::from_millis(500))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The command to acme's device is run and acknowledged.
        let outcome = app
            .command(
                &acme_device,
                "blink_led",
                &blink_args(),
                Clock::real().now_ms(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(outcome.status, AckStatus::Succeeded);

        // The forged state never reached acme's shadow, and the rogue heard
        // no command.
        let shadow = app
            .get_shadow(&acme_device, Duration::from_secs(5))
            .await
            .unwrap();
        let forged_path = PathBuf::from_dotted("forged").unwrap();
        assert!(shadow.reported().get(forged_path.as_path()).is_none());
        assert!(
            tokio::time::timeout(Duration::from_millis(500), rogue.recv())
                .await
                .is_err(),
            "a globex client read acme's command"
        );
    };
    tokio::time::timeout(Duration::from_secs(30), script)
        .await
        .expect("finished in time");

    stop_dev.send(()).unwrap();
    device.await.unwrap();
    stop_twin.send(()).unwrap();
    let host = twin.await.unwrap();
    let mut names: Vec<&str> = host.devices().collect();
    names.sort();
    assert_eq!(names, [acme_device.as_str(), &format!("globex/{rogue_id}")]);
}
