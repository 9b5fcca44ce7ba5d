//! A device keeping its shadow in AWS IoT Core's shadow service
//! (`lanyard_std::aws_device`): the service's documents, as the AWS IoT
//! developer guide shows them, turned into the agent's messages and back,
//! with the fleet's conflict policies applied on the device; then a real
//! device over mosquitto against the twin host's AWS topics.

mod common;

use std::time::Duration;

use lanyard_core::agent::messages::{MessageKind, Register, RegisterAccepted};
use lanyard_core::shadow::{ConflictPolicy, FleetPolicies, PathBuf, StateTree, Value};
use lanyard_core::topic::topic_in;
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use lanyard_std::aws_device::{AwsShadowName, AwsShadowTransport};
use lanyard_std::transport::{MemoryBroker, MemoryTransport, Qos, Transport, TransportEvent};
use serde_json::{Value as Json, json};

const ID: &str = "lamp-0a1b2c";

fn lanyard(kind: MessageKind) -> String {
    topic_in(None, ID, kind).unwrap().to_string()
}

fn register() -> Vec<u8> {
    common::register_bytes(ID)
}

fn report(leaves: &[(&str, Value<'_>)]) -> Vec<u8> {
    let mut tree: StateTree = StateTree::new();
    for (path, v) in leaves {
        tree.insert(&PathBuf::from_dotted(path).unwrap(), *v)
            .unwrap();
    }
    let mut up: ShadowUpdate = ShadowUpdate::new(1);
    up.reported = Some(tree);
    let mut buf = vec![0u8; 4096];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// The agent's side publishes `payload` on `topic` through the wrapper.
async fn sends(device: &mut AwsShadowTransport<MemoryTransport>, topic: &str, payload: &[u8]) {
    device
        .publish(topic, payload, Qos::AtLeastOnce)
        .await
        .unwrap();
}

/// The scripted service (or a cloud) publishes `payload` on `topic`.
async fn say(service: &mut MemoryTransport, topic: &str, payload: &[u8]) {
    service
        .publish(topic, payload, Qos::AtLeastOnce)
        .await
        .unwrap();
}

/// The next message the scripted service sees, as (topic, JSON).
async fn service_gets(service: &mut MemoryTransport) -> (String, Json) {
    let ev = tokio::time::timeout(Duration::from_secs(5), service.recv())
        .await
        .expect("the service got nothing")
        .unwrap();
    let TransportEvent::Message { topic, payload } = ev else {
        panic!("not a message: {ev:?}")
    };
    (topic, serde_json::from_slice(&payload).unwrap())
}

async fn device_gets(device: &mut AwsShadowTransport<MemoryTransport>) -> (String, Vec<u8>) {
    let ev = tokio::time::timeout(Duration::from_secs(5), device.recv())
        .await
        .expect("the device got nothing")
        .unwrap();
    let TransportEvent::Message { topic, payload } = ev else {
        panic!("not a message: {ev:?}")
    };
    (topic, payload)
}

fn delta_json(payload: &[u8]) -> (u64, Json) {
    let d: ShadowDelta = ShadowDelta::decode(payload).unwrap();
    (d.version, lanyard_std::aws_json::tree_to_json(&d.state))
}

#[tokio::test]
async fn the_services_documents_become_the_agents_messages_and_policies_decide_on_the_device() {
    let broker = MemoryBroker::new();
    let mut service = broker.connect();
    let name = AwsShadowName::named(ID, "lamp");
    service.subscribe(&name.topic("get")).await.unwrap();
    service.subscribe(&name.topic("update")).await.unwrap();
    let mut policies = FleetPolicies::new(ConflictPolicy::CloudWins);
    policies.set("lights", ConflictPolicy::DeviceWins).unwrap();
    let mut device = AwsShadowTransport::new(broker.connect(), ID, name.clone(), &policies);
    let stats = device.stats();
    device
        .subscribe(&lanyard(MessageKind::RegisterAccepted))
        .await
        .unwrap();
    device
        .subscribe(&lanyard(MessageKind::ShadowDelta))
        .await
        .unwrap();

    // Registering reads the named shadow.
    sends(&mut device, &lanyard(MessageKind::Register), &register()).await;
    let (topic, get) = service_gets(&mut service).await;
    assert_eq!(topic, "$aws/things/lamp-0a1b2c/shadow/name/lamp/get");
    let token = get["clientToken"].as_str().unwrap().to_owned();

    // A get/accepted document of the developer guide's shape: desired,
    // reported, delta, metadata, version, timestamp (seconds), token.
    let doc = json!({
        "state": {
            "desired": {"color": "red", "lights": {"on": true, "level": 80}},
            "reported": {"color": "green", "lights": {"on": true, "level": 80}},
            "delta": {"color": "red"}
        },
        "metadata": {
            "desired": {"color": {"timestamp": 1_700_000_000},
                        "lights": {"on": {"timestamp": 1_700_000_000}, "level": {"timestamp": 1_700_000_000}}},
            "reported": {"color": {"timestamp": 1_699_999_000},
                         "lights": {"on": {"timestamp": 1_699_999_000}, "level": {"timestamp": 1_699_999_000}}}
        },
        "version": 7,
        "timestamp": 1_700_000_100,
        "clientToken": token,
    });
    say(
        &mut service,
        &name.topic("get/accepted"),
        doc.to_string().as_bytes(),
    )
    .await;
    let (topic, payload) = device_gets(&mut device).await;
    assert_eq!(topic, lanyard(MessageKind::RegisterAccepted));
    let accepted = RegisterAccepted::decode(&payload).unwrap();
    assert_eq!(accepted.device_id, ID);
    assert_eq!(accepted.time_ms, 1_700_000_100_000);
    let (topic, payload) = device_gets(&mut device).await;
    assert_eq!(topic, lanyard(MessageKind::ShadowDelta));
    assert_eq!(delta_json(&payload), (7, json!({"color": "red"})));

    // An update/delta: only what changed on the cloud's side, with its
    // metadata. The agent gets the whole outstanding delta.
    let delta = json!({
        "version": 8,
        "timestamp": 1_700_000_200,
        "state": {"lights": {"on": false}},
        "metadata": {"lights": {"on": {"timestamp": 1_700_000_200}}},
    });
    say(
        &mut service,
        &name.topic("update/delta"),
        delta.to_string().as_bytes(),
    )
    .await;
    let (_, payload) = device_gets(&mut device).await;
    assert_eq!(
        delta_json(&payload),
        (8, json!({"color": "red", "lights": {"on": false}}))
    );

    // The device reports: the service gets an update request of the
    // guide's shape.
    sends(
        &mut device,
        &lanyard(MessageKind::ShadowUpdate),
        &report(&[
            ("color", Value::Text("red")),
            ("lights.on", Value::Bool(false)),
        ]),
    )
    .await;
    let (topic, update) = service_gets(&mut service).await;
    assert_eq!(topic, "$aws/things/lamp-0a1b2c/shadow/name/lamp/update");
    assert_eq!(
        update["state"],
        json!({"reported": {"color": "red", "lights": {"on": false}}})
    );
    assert!(update["clientToken"].is_string());
    assert!(device.try_recv().is_none(), "in sync: no delta");

    // Both sides change: the cloud sets blue, lights on at level 90; the
    // device, meanwhile, has yellow at level 20. `lights` is the device's
    // (DeviceWins): its level is written back as desired. The colour is
    // the cloud's (CloudWins): the delta pushes blue again, with the
    // lights' `on`, which only the cloud changed.
    let delta = json!({"version": 9, "timestamp": 1_700_000_300,
                       "state": {"color": "blue", "lights": {"on": true, "level": 90}}});
    say(
        &mut service,
        &name.topic("update/delta"),
        delta.to_string().as_bytes(),
    )
    .await;
    let (_, payload) = device_gets(&mut device).await;
    assert_eq!(
        delta_json(&payload).1,
        json!({"color": "blue", "lights": {"on": true, "level": 90}})
    );
    sends(
        &mut device,
        &lanyard(MessageKind::ShadowUpdate),
        &report(&[
            ("color", Value::Text("yellow")),
            ("lights.level", Value::Int(20)),
        ]),
    )
    .await;
    // One update: the report and the level the device won, together, so
    // the service never holds the report without the win (it would send
    // a delta undoing it).
    let (topic, update) = service_gets(&mut service).await;
    assert_eq!(topic, name.topic("update"));
    assert_eq!(
        update["state"],
        json!({"reported": {"color": "yellow", "lights": {"level": 20}},
               "desired": {"lights": {"level": 20}}})
    );
    let (_, payload) = device_gets(&mut device).await;
    assert_eq!(
        delta_json(&payload).1,
        json!({"color": "blue", "lights": {"on": true}})
    );
    {
        let s = stats.lock().unwrap();
        assert_eq!(s.desired_written, 1);
        // The colour at boot (two values, no history: the cloud's by
        // policy), then the colour and the level.
        assert_eq!(s.conflicts, 3, "{s:?}");
        assert_eq!(s.reports_sent, 2);
    }

    // A delta older than what the device has (the service's deltas can
    // arrive out of order) is dropped.
    let old = json!({"version": 8, "state": {"color": "purple"}});
    say(
        &mut service,
        &name.topic("update/delta"),
        old.to_string().as_bytes(),
    )
    .await;

    // The service's refusals of the device's requests are counted with
    // what it said (another client's are not the device's); unreadable
    // documents are dropped and change nothing.
    let refused = json!({"code": 400, "message": "Missing required node: state",
                         "timestamp": 1700000400, "clientToken": update["clientToken"]});
    say(
        &mut service,
        &name.topic("update/rejected"),
        refused.to_string().as_bytes(),
    )
    .await;
    let not_ours = json!({"code": 400, "message": "someone else's", "clientToken": "app-1"});
    say(
        &mut service,
        &name.topic("update/rejected"),
        not_ours.to_string().as_bytes(),
    )
    .await;
    say(&mut service, &name.topic("update/delta"), b"{not json").await;
    say(
        &mut service,
        &name.topic("update/delta"),
        br#"{"version": 10, "state": "not a map"}"#,
    )
    .await;
    // A message that is not the shadow's passes through untouched.
    device
        .subscribe(&lanyard(MessageKind::Command))
        .await
        .unwrap();
    say(&mut service, &lanyard(MessageKind::Command), b"\xa0").await;
    let (topic, payload) = device_gets(&mut device).await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        (lanyard(MessageKind::Command).as_str(), &b"\xa0"[..])
    );
    let s = stats.lock().unwrap().clone();
    assert_eq!(s.rejections, 1);
    assert_eq!(
        s.last_rejection,
        Some((400, "Missing required node: state".to_owned()))
    );
    assert_eq!(s.unreadable, 2);
    assert_eq!(s.stale, 1);
    assert_eq!(s.deltas_delivered, 4);
}

#[tokio::test]
async fn a_thing_without_a_shadow_registers_and_a_classic_shadow_uses_the_classic_topics() {
    let broker = MemoryBroker::new();
    let mut service = broker.connect();
    let name = AwsShadowName::classic(ID);
    service.subscribe(&name.topic("get")).await.unwrap();
    let mut device = AwsShadowTransport::new(
        broker.connect(),
        ID,
        name.clone(),
        &FleetPolicies::default(),
    );
    device
        .subscribe(&lanyard(MessageKind::ShadowDelta))
        .await
        .unwrap();
    sends(&mut device, &lanyard(MessageKind::Register), &register()).await;
    let (topic, get) = service_gets(&mut service).await;
    assert_eq!(topic, "$aws/things/lamp-0a1b2c/shadow/get");
    let token = &get["clientToken"];
    // Any other refusal is not a registration; another client's 404 is
    // not the device's answer.
    let answer = |code: u16, message: &str| {
        json!({"code": code, "message": message, "clientToken": token}).to_string()
    };
    say(
        &mut service,
        &name.topic("get/rejected"),
        answer(403, "Forbidden").as_bytes(),
    )
    .await;
    say(
        &mut service,
        &name.topic("get/rejected"),
        br#"{"code": 404, "message": "No shadow", "clientToken": "app-7"}"#,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), device.recv())
            .await
            .is_err(),
        "another client's answer registered the device"
    );
    say(
        &mut service,
        &name.topic("get/rejected"),
        answer(404, "No shadow exists with name: 'lamp-0a1b2c'").as_bytes(),
    )
    .await;
    let (topic, payload) = device_gets(&mut device).await;
    assert_eq!(topic, lanyard(MessageKind::RegisterAccepted));
    assert_eq!(RegisterAccepted::decode(&payload).unwrap().device_id, ID);
    assert_eq!(device.stats().lock().unwrap().rejections, 1);
    // Decoded to check the helper makes what a device sends.
    assert_eq!(Register::decode(&register()).unwrap().device_id, ID);
}

/// A device over mosquitto keeps its shadow in the twin host's AWS topics,
/// as it would in AWS IoT Core: an AWS-side client sets desired state, the
/// device applies it and reports; a property the fleet gives to the device
/// keeps the device's local change; one the cloud owns is put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_keeps_its_shadow_on_the_aws_topics_over_mosquitto() {
    use lanyard_std::clock::Clock;
    use lanyard_std::driver::{DeviceDriver, LocalValue, StdPlatform, std_agent};
    use lanyard_std::mqtt::{MqttConfig, MqttTransport};
    use lanyard_std::sim::SimulatedSensors;
    use lanyard_std::store::FileStore;

    let broker = common::Mosquitto::start();
    let twin_dir = tempfile::tempdir().unwrap();
    let (stop_twin, twin) = common::spawn_twin(broker.port, twin_dir.path());
    let clock = Clock::real();
    let agent = std_agent([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f], "test");
    let id = agent.device_id().to_owned();
    let name = AwsShadowName::classic(&id);

    // The operator creates the thing (here: the twin host registers it).
    let mut op = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "lanyard-op"));
    let accepted = topic_in(None, &id, MessageKind::RegisterAccepted)
        .unwrap()
        .to_string();
    op.subscribe(&accepted).await.unwrap();
    let mut aws = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "lanyard-aws"));
    aws.subscribe(&name.topic("get/accepted")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.publish(
        &topic_in(None, &id, MessageKind::Register).unwrap(),
        &common::register_bytes(&id),
        Qos::AtLeastOnce,
    )
    .await
    .unwrap();
    loop {
        if let TransportEvent::Message { topic, .. } = op.recv().await.unwrap()
            && topic == accepted
        {
            break;
        }
    }

    let mut policies = FleetPolicies::new(ConflictPolicy::CloudWins);
    policies.set("mode", ConflictPolicy::DeviceWins).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let transport = AwsShadowTransport::new(
        MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, &id)),
        &id,
        name.clone(),
        &policies,
    );
    let stats = transport.stats();
    let platform = StdPlatform {
        storage: Box::new(FileStore::open(dir.path()).unwrap()),
        probe: Box::new(SimulatedSensors::new(clock.now_ms(), 600_000, 0)),
        telemetry: Box::new(SimulatedSensors::new(clock.now_ms(), 600_000, 0)),
        commands: Box::new(lanyard_std::sim::simulated_board(
            SimulatedSensors::new(clock.now_ms(), 600_000, 0),
            Default::default(),
        )),
        // Reaches whatever is desired.
        desired: Box::new(lanyard_core::agent::platform::MirrorDesired),
    };
    let (local_tx, local_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut driver =
        DeviceDriver::new(agent, transport, platform, clock).with_local_changes(local_rx);
    let (stop_device, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let device = tokio::spawn(async move {
        driver.start().await.unwrap();
        driver
            .run_until(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
    });

    // The shadow as the AWS side reads it, until `done` says so.
    let mut tokens = 0;
    let mut wait_for = async |what: &str, done: &dyn Fn(&Json) -> bool| -> Json {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the shadow never showed {what}"
            );
            tokens += 1;
            let get = json!({"clientToken": format!("t{tokens}")});
            aws.publish(
                &name.topic("get"),
                get.to_string().as_bytes(),
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    if let TransportEvent::Message { topic, payload } = aws.recv().await.unwrap()
                        && topic == name.topic("get/accepted")
                    {
                        let doc: Json = serde_json::from_slice(&payload).unwrap();
                        if doc["clientToken"] == get["clientToken"] {
                            return doc;
                        }
                    }
                }
            })
            .await;
            if let Ok(doc) = got
                && done(&doc)
            {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    // Desired state from the AWS side reaches the device, which reports it.
    let set = json!({"state": {"desired": {"valve": {"open": true}, "mode": "eco"}}});
    op.publish(
        &name.topic("update"),
        set.to_string().as_bytes(),
        Qos::AtLeastOnce,
    )
    .await
    .unwrap();
    let doc = wait_for("the device reaching the desired state", &|d| {
        d["state"]["reported"]["valve"]["open"] == json!(true)
            && d["state"]["reported"]["mode"] == json!("eco")
            && d["state"].get("delta").is_none()
    })
    .await;
    assert_eq!(doc["state"]["desired"]["mode"], json!("eco"));

    // Changed on the device: `mode` is the device's, so it becomes the
    // desired value too.
    local_tx
        .send(("mode".into(), LocalValue::Text("manual".into())))
        .unwrap();
    wait_for("the device's mode as desired", &|d| {
        d["state"]["desired"]["mode"] == json!("manual")
            && d["state"]["reported"]["mode"] == json!("manual")
            && d["state"].get("delta").is_none()
    })
    .await;

    // `valve` is the cloud's: the device's local change is reported, then
    // put back by a delta the device applies and reports again.
    let before = stats.lock().unwrap().clone();
    local_tx
        .send(("valve.open".into(), LocalValue::Bool(false)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for("the valve open again", &|d| {
        d["state"]["reported"]["valve"]["open"] == json!(true)
            && d["state"]["desired"]["valve"]["open"] == json!(true)
            && d["state"].get("delta").is_none()
    })
    .await;
    {
        let s = stats.lock().unwrap();
        assert!(s.reports_sent >= before.reports_sent + 2, "{s:?}");
        assert!(s.deltas_delivered > before.deltas_delivered, "{s:?}");
        assert_eq!(s.desired_written, before.desired_written, "{s:?}");
        assert!(s.desired_written >= 1, "{s:?}");
        assert_eq!(s.rejections, 0, "{s:?}");
    }

    let _ = stop_device.send(());
    device.await.unwrap();
    let _ = stop_twin.send(());
    twin.await.unwrap();
}
