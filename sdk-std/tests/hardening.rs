//! What one misbehaving device, one bad message or one crash can do, each
//! tried against the real thing: a mosquitto configured the way Lanyard
//! generates it (mutual TLS with certificates made here, identity from the
//! certificate, the generated ACL), the `lanyard` processes killed and
//! restarted, and the twin host's own rules.

mod common;

use std::time::Duration;

use common::{Mosquitto, Pki, fleet_broker};
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::app::{AppClient, AppError};
use lanyard_std::clock::Clock;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport, TransportError, TransportEvent};
use lanyard_std::twin::{RunError, TwinHost, TwinLimits, run_twin};

const A: &str = "ly-00000000000a";
const B: &str = "ly-00000000000b";

/// A `shadow-update` with `desired` and/or `reported` leaves.
fn update_bytes(desired: &[(&str, Value)], reported: &[(&str, Value)]) -> Vec<u8> {
    let tree = |leaves: &[(&str, Value)]| {
        let mut t = StateTree::<16, 512>::new();
        for (p, v) in leaves {
            t.insert(&PathBuf::from_dotted(p).unwrap(), *v).unwrap();
        }
        t
    };
    let mut up = ShadowUpdate::<16, 512>::new(10);
    up.desired = (!desired.is_empty()).then(|| tree(desired));
    up.reported = (!reported.is_empty()).then(|| tree(reported));
    let mut buf = vec![0u8; 2048];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn host() -> TwinHost {
    TwinHost::in_memory(DeviceConfig::default())
}

async fn recv_within(t: &mut MqttTransport, d: Duration) -> Option<(String, Vec<u8>)> {
    match tokio::time::timeout(d, t.recv()).await {
        Ok(Ok(TransportEvent::Message { topic, payload })) => Some((topic, payload)),
        _ => None,
    }
}

/// `host` served over TLS as `lanyard-twin` until the sender is used; the
/// host comes back from the task.
fn serve_host(
    pki: &Pki,
    port: u16,
    mut host: TwinHost,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<TwinHost>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = pki.mqtt(port, "lanyard-twin", "lanyard-twin");
    let task = tokio::spawn(async move {
        let mut t = MqttTransport::connect_and_wait(cfg, Duration::from_secs(10))
            .await
            .unwrap();
        run_twin(&mut host, &mut t, Clock::real(), true, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        host
    });
    (stop_tx, task)
}

/// Device `A` over TLS, registered (retried until the host is up) and
/// watching its deltas.
async fn registered_device(pki: &Pki, port: u16) -> MqttTransport {
    let mut dev = MqttTransport::connect_and_wait(pki.mqtt(port, A, A), Duration::from_secs(10))
        .await
        .unwrap();
    dev.subscribe(&topic(A, MessageKind::RegisterAccepted))
        .await
        .unwrap();
    dev.subscribe(&topic(A, MessageKind::ShadowDelta))
        .await
        .unwrap();
    loop {
        dev.publish(
            &topic(A, MessageKind::Register),
            &common::register_bytes_at_boot(A, 1),
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
        if recv_within(&mut dev, Duration::from_millis(500))
            .await
            .is_some()
        {
            return dev;
        }
    }
}

// ---- identity and direction ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_its_certificate_not_the_client_id_it_claims() {
    let pki = Pki::new();
    let broker = fleet_broker(&pki, &["lanyard-twin"], false);
    let wait = Duration::from_secs(10);
    let mut twin = MqttTransport::connect_and_wait(
        pki.mqtt(broker.port, "lanyard-twin", "lanyard-twin"),
        wait,
    )
    .await
    .unwrap();
    twin.subscribe("lanyard/v1/#").await.unwrap();
    let mut dev_a = MqttTransport::connect_and_wait(pki.mqtt(broker.port, A, A), wait)
        .await
        .unwrap();
    dev_a
        .subscribe(&topic(A, MessageKind::Command))
        .await
        .unwrap();
    // B holds a valid certificate of its own and claims to be A.
    let mut impostor = MqttTransport::connect_and_wait(pki.mqtt(broker.port, B, A), wait)
        .await
        .unwrap();
    impostor
        .subscribe(&topic(A, MessageKind::Command))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // B writes into A's shadow: dropped by the broker. A writes its own.
    impostor
        .publish(
            &topic(A, MessageKind::ShadowUpdate),
            b"forged",
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    dev_a
        .publish(
            &topic(A, MessageKind::ShadowUpdate),
            b"genuine",
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    let (t, payload) = recv_within(&mut twin, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (t.as_str(), payload.as_slice()),
        (
            topic(A, MessageKind::ShadowUpdate).as_str(),
            &b"genuine"[..]
        )
    );

    // A's command reaches A only; and A was never knocked off the broker.
    twin.publish(&topic(A, MessageKind::Command), b"cmd", Qos::AtLeastOnce)
        .await
        .unwrap();
    let (_, payload) = recv_within(&mut dev_a, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(payload, b"cmd");
    assert!(
        recv_within(&mut impostor, Duration::from_millis(700))
            .await
            .is_none(),
        "B read A's command"
    );
    assert_eq!(dev_a.stats().reconnects, 0, "A was taken over");
    while let Some((_, payload)) = recv_within(&mut twin, Duration::from_millis(500)).await {
        assert_ne!(payload, b"forged", "the forged update got through");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_certificate_is_one_device_of_it_not_any() {
    let pki = Pki::new();
    let broker = fleet_broker(&pki, &["lanyard-twin"], true);
    let wait = Duration::from_secs(10);
    let mut twin = MqttTransport::connect_and_wait(
        pki.mqtt(broker.port, "lanyard-twin", "lanyard-twin"),
        wait,
    )
    .await
    .unwrap();
    twin.subscribe("lanyard/v1/#").await.unwrap();
    let a = format!("acme/{A}");
    let b = format!("acme/{B}");
    let mut dev_b = MqttTransport::connect_and_wait(pki.mqtt(broker.port, &b, A), wait)
        .await
        .unwrap();
    let mut dev_a = MqttTransport::connect_and_wait(pki.mqtt(broker.port, &a, A), wait)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_update = format!("lanyard/v1/{a}/shadow/update");
    dev_b
        .publish(&a_update, b"forged", Qos::AtLeastOnce)
        .await
        .unwrap();
    dev_a
        .publish(&a_update, b"genuine", Qos::AtLeastOnce)
        .await
        .unwrap();
    let (t, payload) = recv_within(&mut twin, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (t.as_str(), payload.as_slice()),
        (a_update.as_str(), &b"genuine"[..])
    );
    assert!(
        recv_within(&mut twin, Duration::from_millis(700))
            .await
            .is_none(),
        "the other device of the tenant wrote into A's shadow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_set_desired_state_and_an_app_cannot_set_reported_state() {
    let pki = Pki::new();
    let broker = fleet_broker(&pki, &["lanyard-twin", "lanyard-app"], false);
    let port = broker.port;
    let wait = Duration::from_secs(10);
    let (stop_tx, twin) = serve_host(&pki, port, host());
    let mut dev = registered_device(&pki, port).await;
    // The device writes desired state on its own topic: refused whole.
    dev.publish(
        &topic(A, MessageKind::ShadowUpdate),
        &update_bytes(
            &[("door", Value::Text("unlocked"))],
            &[("temp", Value::Int(20))],
        ),
        Qos::AtLeastOnce,
    )
    .await
    .unwrap();
    assert!(
        recv_within(&mut dev, Duration::from_secs(1))
            .await
            .is_none(),
        "a delta came back for desired state the device wrote"
    );
    // An app (an operator identity) writes desired state: it reaches the
    // device as a delta. Reported state from the app is refused.
    let app_t = MqttTransport::connect_and_wait(pki.mqtt(port, "lanyard-app", "lanyard-app"), wait)
        .await
        .unwrap();
    let app = AppClient::new(app_t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut desired = StateTree::<16, 512>::new();
    desired
        .insert(
            &PathBuf::from_dotted("door").unwrap(),
            Value::Text("locked"),
        )
        .unwrap();
    app.set_desired(A, &desired, 20).await.unwrap();
    let (t, _) = recv_within(&mut dev, Duration::from_secs(5)).await.unwrap();
    assert_eq!(t, topic(A, MessageKind::ShadowDelta).as_str());
    let shadow = app.get_shadow(A, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        shadow.desired().get_dotted("door").map(|e| e.value),
        Some(Value::Text("locked"))
    );
    assert!(shadow.reported().get_dotted("temp").is_none());
    let _ = stop_tx.send(());
    let host = twin.await.unwrap();
    assert_eq!(host.stats().wrong_direction, 1);
}

#[test]
fn wrong_side_writes_are_refused_counted_and_answered_to_the_app() {
    let mut h = host();
    h.handle(
        1,
        &topic(A, MessageKind::Register),
        &common::register_bytes_at_boot(A, 1),
    );
    // An app's update carrying reported state, with a client token.
    let mut up = ShadowUpdate::<16, 512>::new(10);
    let mut t = StateTree::<16, 512>::new();
    t.insert(&PathBuf::from_dotted("temp").unwrap(), Value::Int(99))
        .unwrap();
    up.reported = Some(t);
    up.client_token = Some("tok".try_into().unwrap());
    let mut buf = vec![0u8; 1024];
    let n = up.encode(&mut buf).unwrap();
    let out = h.handle(2, &format!("lanyard/v1/{A}/shadow/desired"), &buf[..n]);
    let answer = out
        .iter()
        .find(|p| p.topic.ends_with("shadow/desired/answer"))
        .expect("the app is answered");
    let a = lanyard_std::twin::DesiredAnswer::decode(&answer.payload).unwrap();
    assert_eq!(a.outcome, Err("an app writes desired state only".into()));
    assert!(h.shadow(A).unwrap().reported().is_empty());
    assert_eq!(h.stats().wrong_direction, 1);
}

// ---- registration, limits, ids ----

#[test]
fn only_registered_devices_have_shadows_within_the_limits() {
    let mut h = host().with_limits(TwinLimits {
        max_devices: 3,
        max_devices_per_tenant: 3,
        device_messages_per_s: 5,
        device_burst: 10,
        ..TwinLimits::default()
    });
    // A flood of made-up ids writing updates: nothing is made.
    for i in 0..1_000 {
        let id = format!("ly-{i:012x}");
        let up = update_bytes(&[], &[("temp", Value::Int(i))]);
        h.handle(1, &topic(&id, MessageKind::ShadowUpdate), &up);
        h.handle(1, &format!("lanyard/v1/{id}/shadow/desired"), &up);
        h.handle(
            1,
            &format!("$aws/things/{id}/shadow/update"),
            br#"{"state":{"reported":{"x":1}}}"#,
        );
    }
    assert_eq!(h.devices().count(), 0);
    assert_eq!(h.stats().unregistered, 3_000);
    // Three register; the fourth is over the limit and not answered.
    for (i, id) in [
        "ly-000000000001",
        "ly-000000000002",
        "ly-000000000003",
        "ly-000000000004",
    ]
    .iter()
    .enumerate()
    {
        let out = h.handle(
            1,
            &topic(id, MessageKind::Register),
            &common::register_bytes_at_boot(id, 1),
        );
        assert_eq!(out.len(), usize::from(i < 3), "{id}");
    }
    assert_eq!(h.devices().count(), 3);
    assert_eq!(h.stats().over_device_limit, 1);
    // A registered device over its rate: the burst passes, then one a
    // second per 200 ms.
    let id = "ly-000000000001";
    let up = update_bytes(&[], &[("temp", Value::Int(1))]);
    let before = h.stats().updates;
    for _ in 0..30 {
        h.handle(1_000, &topic(id, MessageKind::ShadowUpdate), &up);
    }
    assert_eq!(h.stats().updates - before, 10);
    assert_eq!(h.stats().rate_limited, 20);
    h.handle(1_200, &topic(id, MessageKind::ShadowUpdate), &up);
    assert_eq!(h.stats().updates - before, 11);
    // Visible in the metrics.
    let m = lanyard_std::metrics::Metrics::new();
    let mut h = h.with_metrics(m.clone());
    h.handle(1_200, &topic(id, MessageKind::ShadowUpdate), &up);
    h.export();
    let text = m.render();
    assert!(
        text.contains("lanyard_twin_refused_total{reason=\"rate_limited\"} 21"),
        "{text}"
    );
    assert!(
        text.contains("lanyard_twin_refused_total{reason=\"unregistered\"} 3000"),
        "{text}"
    );
    assert!(
        text.contains("lanyard_twin_refused_total{reason=\"over_device_limit\"} 1"),
        "{text}"
    );
}

#[test]
fn a_tenant_is_held_to_its_own_device_limit() {
    let mut h = host()
        .with_tenants(&["acme", "globex"])
        .unwrap()
        .with_limits(TwinLimits {
            max_devices_per_tenant: 2,
            ..TwinLimits::default()
        });
    for (tenant, id, answered) in [
        ("acme", "ly-000000000001", true),
        ("acme", "ly-000000000002", true),
        ("acme", "ly-000000000003", false),
        ("globex", "ly-000000000003", true),
    ] {
        let out = h.handle(
            1,
            &format!("lanyard/v1/{tenant}/{id}/register"),
            &common::register_bytes_at_boot(id, 1),
        );
        assert_eq!(!out.is_empty(), answered, "{tenant}/{id}");
    }
    assert_eq!(h.stats().over_device_limit, 1);
}

#[test]
fn odd_device_ids_are_refused_everywhere_an_id_enters() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = TwinHost::open(dir.path(), DeviceConfig::default()).unwrap();
    for id in [
        ".",
        "..",
        "a b",
        "%c",
        "$SYS",
        "a\u{200f}b",
        "lanyard-twin",
        "LANYARD",
        "x.y",
        "é",
        &"a".repeat(65),
    ] {
        for t in [
            format!("lanyard/v1/{id}/register"),
            format!("$aws/things/{id}/shadow/update"),
        ] {
            assert!(
                h.handle(1, &t, &common::register_bytes_at_boot(id, 1))
                    .is_empty(),
                "{id:?}"
            );
        }
        assert!(!lanyard_core::topic::valid_device_id(id), "{id:?}");
    }
    assert_eq!(h.devices().count(), 0);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files made"
    );
}

#[tokio::test]
async fn the_app_client_refuses_odd_ids_before_sending() {
    let broker = lanyard_std::transport::MemoryBroker::new();
    let app = AppClient::new(broker.connect()).await.unwrap();
    for id in ["..", "a b", "lanyard-twin", "$SYS"] {
        let r = app
            .command(id, "blink_led", &[], 1, Duration::from_millis(100))
            .await;
        assert!(matches!(r, Err(AppError::BadDevice(_))), "{id:?}: {r:?}");
        let r = app.get_shadow(id, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(AppError::BadDevice(_))), "{id:?}");
    }
}

// ---- one bad message ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_are_dropped_and_counted_without_losing_the_connection() {
    // A stock broker (no size limit of its own): messages of 100 KB and
    // 1 MB reach the host, which must keep serving.
    let broker = Mosquitto::start();
    let port = broker.port;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let twin = tokio::spawn(async move {
        let mut host = host();
        let mut t = MqttTransport::connect(MqttConfig::new("127.0.0.1", port, "lanyard-twin"));
        run_twin(&mut host, &mut t, Clock::real(), true, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        (host, t.stats())
    });
    let mut dev = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", port, A),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    dev.subscribe(&topic(A, MessageKind::RegisterAccepted))
        .await
        .unwrap();
    dev.subscribe(&format!("$aws/things/{A}/shadow/get/#"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Sent by mosquitto's own client: Lanyard's refuses to send more than
    // it would read.
    let big = tempfile::NamedTempFile::new().unwrap();
    for size in [100_000, 1_000_000] {
        std::fs::write(big.path(), vec![0xa5; size]).unwrap();
        let sent = std::process::Command::new("mosquitto_pub")
            .args(["-p", &port.to_string(), "-q", "1", "-i", B, "-t"])
            .arg(topic(A, MessageKind::Register).as_str())
            .arg("-f")
            .arg(big.path())
            .status()
            .expect("mosquitto_pub (mosquitto-clients) is installed");
        assert!(sent.success());
    }
    // A get whose client token would be echoed back at 100 KB.
    let token = "t".repeat(100);
    dev.publish(
        &format!("$aws/things/{A}/shadow/get"),
        format!(r#"{{"clientToken":"{token}"}}"#).as_bytes(),
        Qos::AtLeastOnce,
    )
    .await
    .unwrap();
    // Still served: a registration is answered.
    let answered = async {
        loop {
            dev.publish(
                &topic(A, MessageKind::Register),
                &common::register_bytes_at_boot(A, 1),
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
            while let Some((t, payload)) = recv_within(&mut dev, Duration::from_millis(500)).await {
                if t.ends_with("/registered")
                    || t == topic(A, MessageKind::RegisterAccepted).as_str()
                {
                    return;
                }
                // The get refused for its token (unregistered then, or too
                // long): never echoed.
                assert!(payload.len() < 1_000, "{t}: {} bytes echoed", payload.len());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), answered)
        .await
        .expect("the host kept serving");
    let _ = stop_tx.send(());
    let (host, stats) = twin.await.unwrap();
    assert_eq!(stats.oversize_dropped, 1, "the 1 MB message");
    assert_eq!(host.stats().oversize, 1, "the 100 KB message");
    assert_eq!(stats.reconnects, 0, "the host lost its connection");
}

#[test]
fn an_aws_get_with_a_long_client_token_is_refused_not_echoed() {
    let mut h = host();
    h.handle(
        1,
        &topic(A, MessageKind::Register),
        &common::register_bytes_at_boot(A, 1),
    );
    let token = "t".repeat(65);
    let out = h.handle(
        2,
        &format!("$aws/things/{A}/shadow/get"),
        format!(r#"{{"clientToken":"{token}"}}"#).as_bytes(),
    );
    assert_eq!(out.len(), 1);
    assert!(out[0].topic.ends_with("/get/rejected"));
    let doc: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(doc["code"], 400);
    assert!(!String::from_utf8_lossy(&out[0].payload).contains(&token));
}

// ---- silent misconfiguration ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_host_the_acl_does_not_trust_says_so_at_start() {
    let pki = Pki::new();
    let broker = fleet_broker(&pki, &["lanyard-twin"], false);
    let mut host = host();
    // Its certificate names an identity the ACL does not trust.
    let mut t = MqttTransport::connect_and_wait(
        pki.mqtt(broker.port, "lanyard-stranger", "lanyard-stranger"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let r = run_twin(
        &mut host,
        &mut t,
        Clock::real(),
        true,
        std::future::pending(),
    )
    .await;
    match r {
        Err(RunError::Transport(TransportError::NotDelivering(topics))) => {
            assert!(topics.contains("/register"), "{topics}");
        }
        other => panic!("expected NotDelivering, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The trusted identity starts (and would serve until stopped).
    let mut t = MqttTransport::connect_and_wait(
        pki.mqtt(broker.port, "lanyard-twin", "lanyard-twin"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let r = run_twin(&mut host, &mut t, Clock::real(), true, async {
        tokio::time::sleep(lanyard_std::twin::PROBE_TIMEOUT + Duration::from_secs(1)).await
    })
    .await;
    assert_eq!(r, Ok(()));
}

/// Operators write as themselves: the broker's ACL lets each write only
/// under its own name, and the twin host takes writes only from its
/// operator list, refusing anyone else with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_hosts_operators_write_and_none_can_write_as_another() {
    let pki = Pki::new();
    // The broker knows two operators; the host takes writes from one.
    let acl =
        lanyard_std::acl::mosquitto_fleet_acl(&["lanyard-twin"], &["lanyard-ops", "lanyard-eve"])
            .unwrap();
    let broker = common::broker_with_acl(&pki, acl);
    let port = broker.port;
    let wait = Duration::from_secs(10);
    // The host's connection is shared with the rollout service, as
    // `lanyard twin --rollouts` shares it: the broker gives the identity
    // one session.
    let t = MqttTransport::connect_and_wait(pki.mqtt(port, "lanyard-twin", "lanyard-twin"), wait)
        .await
        .unwrap();
    let mut shared = lanyard_std::transport::SharedConnection::new(t);
    let joiner = shared.joiner();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let twin = tokio::spawn(async move {
        let mut host = host().with_operators(&["lanyard-ops"]);
        run_twin(&mut host, &mut shared, Clock::real(), true, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        (host, shared.reconnects())
    });
    let mut dev = registered_device(&pki, port).await;
    dev.subscribe(&topic(A, MessageKind::Command))
        .await
        .unwrap();
    let operator = |cn: &'static str, claims: &'static str| {
        let cfg = pki.mqtt(port, cn, cn);
        async move {
            let t = MqttTransport::connect_and_wait(cfg, wait).await.unwrap();
            AppClient::new(t)
                .await
                .unwrap()
                .as_operator(claims)
                .unwrap()
        }
    };
    let mut desired = StateTree::<16, 512>::new();
    desired
        .insert(&PathBuf::from_dotted("fan").unwrap(), Value::Int(2))
        .unwrap();
    let short = Duration::from_secs(2);

    // An operator of the host: applied.
    let ops = operator("lanyard-ops", "lanyard-ops").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = ops.set_desired_within(A, &desired, 10, wait).await.unwrap();
    assert!(v > 0);
    // One the broker knows but the host does not: refused, and told why.
    let eve = operator("lanyard-eve", "lanyard-eve").await;
    let r = eve.set_desired_within(A, &desired, 11, wait).await;
    assert_eq!(
        r,
        Err(AppError::Rejected(
            "lanyard-eve is not an operator of this fleet".into()
        ))
    );
    // Commands too: the host answers eve's, and passes the operator's on
    // to the device (which no operator may write to directly).
    let refused = eve.command(A, "blink_led", &[], 20, wait).await.unwrap();
    assert_eq!(refused.status, AckStatus::Rejected);
    assert_eq!(
        refused.detail.as_deref(),
        Some("lanyard-eve is not an operator of this fleet")
    );
    let report = ops
        .command_to(
            &[A.to_owned()],
            "blink_led",
            &[],
            (21, 60_000),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(report.unanswered, [A]);
    // (After the delta of the operator's desired change.)
    let command = loop {
        let (t, payload) = recv_within(&mut dev, wait)
            .await
            .expect("the command reached the device");
        if t == topic(A, MessageKind::Command).as_str() {
            break payload;
        }
    };
    assert_eq!(Command::decode(&command).unwrap().name, "blink_led");
    // Writing as another operator: the broker drops it, nothing answers.
    let forger = operator("lanyard-eve", "lanyard-ops").await;
    let r = forger.set_desired_within(A, &desired, 12, short).await;
    assert_eq!(r, Err(AppError::Timeout));
    // Not naming itself at all: the broker drops it too (only the twin
    // host may write the plain topic).
    let t = MqttTransport::connect_and_wait(pki.mqtt(port, "lanyard-ops", "lanyard-ops-2"), wait)
        .await
        .unwrap();
    let anonymous = AppClient::new(t).await.unwrap();
    let r = anonymous.set_desired_within(A, &desired, 13, short).await;
    assert_eq!(r, Err(AppError::Timeout));

    // Rollouts the same way: the service beside the host, on the host's
    // connection, answers its operator (here: no such rollout), refuses
    // one it does not list, and never sees a request written as another.
    let rollouts = tempfile::tempdir().unwrap();
    let (stop_rollouts, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = joiner.join();
    let home = rollouts.path().to_owned();
    let serving = tokio::spawn(async move {
        lanyard_std::ota::service::serve_rollouts(
            service,
            &home,
            Some(vec!["lanyard-ops".to_owned()]),
            move |_| joiner.join(),
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ops.cancel_rollout("fw-1", wait).await.unwrap_err(),
        AppError::Rejected("no rollout fw-1".into())
    );
    assert_eq!(
        eve.cancel_rollout("fw-1", wait).await.unwrap_err(),
        AppError::Rejected("lanyard-eve is not an operator of this fleet".into())
    );
    assert_eq!(
        forger.cancel_rollout("fw-1", short).await.unwrap_err(),
        AppError::Timeout
    );
    stop_rollouts.send(()).unwrap();
    serving.await.unwrap().unwrap();

    stop_tx.send(()).unwrap();
    let (host, reconnects) = twin.await.unwrap();
    assert_eq!(host.stats().unauthorised, 2);
    assert_eq!(host.shadow(A).unwrap().version(), v);
    // One session throughout: nothing took the host's over.
    assert_eq!(reconnects, 0);
}
