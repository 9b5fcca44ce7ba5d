//! The twin host, message in and publishes out: registration, shadow
//! updates from devices and apps, conflicts, the AWS IoT topics, and
//! persistence across a restart.

mod common;

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{ConflictPolicy, PathBuf, StateTree, Value};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use lanyard_std::twin::{TwinHost, app_topics};
use serde_json::json;

const ID: &str = "ly-0a1b2c3d4e5f";

fn update(desired: &[(&str, i64)], reported: &[(&str, i64)], ts: u64) -> Vec<u8> {
    let tree = |pairs: &[(&str, i64)]| {
        let mut t: StateTree<16, 512> = StateTree::new();
        for (k, v) in pairs {
            t.insert(&PathBuf::from_dotted(k).unwrap(), Value::Int(*v))
                .unwrap();
        }
        t
    };
    let mut up: ShadowUpdate<16, 512> = ShadowUpdate::new(ts);
    if !desired.is_empty() {
        up.desired = Some(tree(desired));
    }
    if !reported.is_empty() {
        up.reported = Some(tree(reported));
    }
    let mut buf = vec![0u8; 1024];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn t(suffix: &str) -> String {
    format!("lanyard/v1/{ID}/{suffix}")
}

/// A host on which `ids` have registered (only they get shadows).
fn host_with(mut host: TwinHost, ids: &[&str]) -> TwinHost {
    for id in ids {
        assert_eq!(
            host.handle(
                1,
                &format!("lanyard/v1/{id}/register"),
                &common::register_bytes(id)
            )
            .len(),
            1
        );
    }
    host
}

#[test]
fn registration_is_answered_with_the_fleet_configuration() {
    let cfg = DeviceConfig {
        version: 7,
        heartbeat_ms: 20_000,
        ..DeviceConfig::default()
    };
    let mut host = TwinHost::in_memory(cfg.clone());
    let mut buf = vec![0u8; 256];
    let n = Register {
        device_id: ID,
        firmware: "1",
        config_version: 0,
        boot_count: 1,
        time_ms: 5,
        resumed: false,
        capacity: None,
    }
    .encode(&mut buf)
    .unwrap();
    let out = host.handle(10, &t("register"), &buf[..n]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, t("register/accepted"));
    let acc = RegisterAccepted::decode(&out[0].payload).unwrap();
    let got = DeviceConfig::default()
        .decode_update(&mut minicbor::Decoder::new(acc.config.unwrap()))
        .unwrap();
    assert_eq!(got, cfg);
    // A registration naming another device on this topic is ignored.
    let n = Register {
        device_id: "ly-ffffffffffff",
        firmware: "1",
        config_version: 0,
        boot_count: 1,
        time_ms: 5,
        resumed: false,
        capacity: None,
    }
    .encode(&mut buf)
    .unwrap();
    assert!(host.handle(11, &t("register"), &buf[..n]).is_empty());
    assert_eq!(host.stats().rejected, 1);

    // The device rebooted and resumed in service: answered with the time
    // (what it asks for), counted apart from new devices.
    let n = Register {
        device_id: ID,
        firmware: "1",
        config_version: 7,
        boot_count: 2,
        time_ms: 600,
        resumed: true,
        capacity: None,
    }
    .encode(&mut buf)
    .unwrap();
    let out = host.handle(5_000, &t("register"), &buf[..n]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        RegisterAccepted::decode(&out[0].payload).unwrap().time_ms,
        5_000
    );
    assert_eq!(
        (host.stats().registrations, host.stats().reregistrations),
        (1, 1)
    );
}

#[test]
fn desired_changes_reach_the_device_as_a_delta_until_it_reports_them() {
    let mut host = host_with(TwinHost::in_memory(DeviceConfig::default()), &[ID]);
    let out = host.handle(
        100,
        &t(app_topics::SET_DESIRED),
        &update(&[("led.on", 1)], &[], 100),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, t("shadow/delta"));
    let d: ShadowDelta<16, 512> = ShadowDelta::decode(&out[0].payload).unwrap();
    assert_eq!(d.state.get_dotted("led.on").unwrap().value, Value::Int(1));
    // The device reports it: in step, no delta.
    assert!(
        host.handle(
            200,
            &t("shadow/update"),
            &update(&[], &[("led.on", 1)], 200)
        )
        .is_empty()
    );
    assert!(host.shadow(ID).unwrap().in_sync());
    // A malformed update is refused with a reason, and changes nothing.
    let v = host.shadow(ID).unwrap().version();
    let out = host.handle(300, &t("shadow/update"), &[0xa1, 0x02]);
    assert_eq!(out[0].topic, t(app_topics::REJECTED));
    assert_eq!(host.shadow(ID).unwrap().version(), v);
}

#[test]
fn conflicts_are_settled_by_policy_and_counted() {
    let mut host = host_with(
        TwinHost::in_memory(DeviceConfig::default()).with_policies(
            lanyard_core::shadow::FleetPolicies::new(ConflictPolicy::DeviceWins),
        ),
        &[ID],
    );
    host.handle(
        0,
        &t(app_topics::SET_DESIRED),
        &update(&[("temp", 70)], &[], 0),
    );
    host.handle(0, &t("shadow/update"), &update(&[], &[("temp", 70)], 0));
    host.handle(
        10_000,
        &t(app_topics::SET_DESIRED),
        &update(&[("temp", 72)], &[], 10_000),
    );
    // The device was offline and changed it too: device wins, no delta;
    // apps are told of the conflict.
    let out = host.handle(
        20_000,
        &t("shadow/update"),
        &update(&[], &[("temp", 68)], 10_500),
    );
    assert_eq!(out.len(), 1, "only the event, no delta");
    assert_eq!(out[0].topic, t("fleet/event"));
    assert_eq!(
        lanyard_std::twin::FleetEvent::decode(&out[0].payload),
        Some(lanyard_std::twin::FleetEvent::Conflict {
            at_ms: 20_000,
            path: "temp".into(),
            policy: ConflictPolicy::DeviceWins,
            winner: Some(lanyard_core::shadow::Source::Device),
        })
    );
    assert_eq!(host.stats().conflicts, [0, 1, 0, 0]);
    assert_eq!(
        host.shadow(ID)
            .unwrap()
            .desired()
            .get_dotted("temp")
            .unwrap()
            .value,
        Value::Int(68)
    );
}

#[test]
fn aws_iot_topics_and_documents() {
    let mut host = host_with(
        TwinHost::in_memory(DeviceConfig::default()),
        &["thermostat-1"],
    );
    let base = "$aws/things/thermostat-1/shadow";
    let req = json!({"state": {"desired": {"color": "RED"}}, "clientToken": "t1"});
    let out = host.handle(
        1_700_000_000_000,
        &format!("{base}/update"),
        &serde_json::to_vec(&req).unwrap(),
    );
    let topics: Vec<&str> = out.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            format!("{base}/update/accepted"),
            // The device itself hears of it, in its own format.
            "lanyard/v1/thermostat-1/shadow/delta".to_string(),
            format!("{base}/update/delta"),
            format!("{base}/update/documents")
        ]
    );
    let cbor: ShadowDelta<16, 512> = ShadowDelta::decode(&out[1].payload).unwrap();
    assert_eq!(
        cbor.state.get_dotted("color").unwrap().value,
        Value::Text("RED")
    );
    let delta: serde_json::Value = serde_json::from_slice(&out[2].payload).unwrap();
    assert_eq!(delta["state"], json!({"color": "RED"}));
    assert_eq!(delta["clientToken"], json!("t1"));

    let out = host.handle(
        1_700_000_001_000,
        &format!("{base}/update"),
        br#"{"state":{"desired":{"color":"BLUE"}},"version":9}"#,
    );
    assert_eq!(out[0].topic, format!("{base}/update/rejected"));
    let err: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(
        (err["code"].clone(), err["message"].clone()),
        (json!(409), json!("Version conflict"))
    );

    let out = host.handle(1_700_000_002_000, &format!("{base}/update"), b"{oops");
    let err: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(err["code"], json!(400));

    let out = host.handle(
        1_700_000_003_000,
        &format!("{base}/get"),
        br#"{"clientToken":"g"}"#,
    );
    assert_eq!(out[0].topic, format!("{base}/get/accepted"));
    let doc: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(doc["state"]["delta"], json!({"color": "RED"}));
    assert_eq!(doc["clientToken"], json!("g"));

    // Deleting empties the document; the device stays registered.
    let out = host.handle(1_700_000_004_000, &format!("{base}/delete"), b"{}");
    assert_eq!(out[0].topic, format!("{base}/delete/accepted"));
    let out = host.handle(1_700_000_005_000, &format!("{base}/get"), b"{}");
    assert_eq!(out[0].topic, format!("{base}/get/accepted"));
    let doc: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(doc["state"], json!({}));
    // A thing that never registered has no shadow to update.
    let out = host.handle(
        1_700_000_006_000,
        "$aws/things/never-registered/shadow/update",
        &serde_json::to_vec(&req).unwrap(),
    );
    assert_eq!(
        out[0].topic,
        "$aws/things/never-registered/shadow/update/rejected"
    );
}

#[test]
fn topics_that_are_not_ours_or_name_wildcards_are_ignored() {
    let mut host = TwinHost::in_memory(DeviceConfig::default());
    assert!(host.handle(0, "other/topic", b"x").is_empty());
    assert!(
        host.handle(
            0,
            "lanyard/v1/+/shadow/update",
            &update(&[("a", 1)], &[], 0)
        )
        .is_empty()
    );
    assert_eq!(host.devices().count(), 0);
}

#[test]
fn shadows_survive_a_restart_of_the_host() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut host = host_with(
            TwinHost::open(dir.path(), DeviceConfig::default()).unwrap(),
            &[ID],
        );
        host.handle(
            100,
            &t(app_topics::SET_DESIRED),
            &update(&[("a", 1)], &[], 100),
        );
        host.handle(110, &t("shadow/update"), &update(&[], &[("b", 2)], 110));
    }
    let host = TwinHost::open(dir.path(), DeviceConfig::default()).unwrap();
    let s = host.shadow(ID).unwrap();
    assert_eq!(s.version(), 2);
    assert_eq!(s.desired().get_dotted("a").unwrap().value, Value::Int(1));
    assert_eq!(s.reported().get_dotted("b").unwrap().value, Value::Int(2));
    // A damaged file does not stop the host: set aside, loudly.
    std::fs::write(dir.path().join("ly-bad.cbor"), b"\xff").unwrap();
    let host = TwinHost::open(dir.path(), DeviceConfig::default()).unwrap();
    assert_eq!(host.stats().damaged_records, 1);
    assert!(host.shadow("ly-bad").unwrap().reported().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join(".damaged"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn tenants_have_their_own_namespaces_and_other_tenants_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TwinHost::open(dir.path(), DeviceConfig::default())
        .unwrap()
        .with_tenants(&["acme", "globex"])
        .unwrap();
    assert!(
        host.subscriptions(true)
            .iter()
            .all(|f| f.starts_with("lanyard/v1/+/+/")),
        "tenant topics only, no AWS"
    );
    let tt = |tenant: &str, suffix: &str| format!("lanyard/v1/{tenant}/{ID}/{suffix}");

    // The same device id registers in two tenants: two shadows.
    for tenant in ["acme", "globex"] {
        let out = host.handle(10, &tt(tenant, "register"), &common::register_bytes(ID));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, tt(tenant, "register/accepted"));
        assert_eq!(
            RegisterAccepted::decode(&out[0].payload).unwrap().device_id,
            ID
        );
    }
    let mut names: Vec<&str> = host.devices().collect();
    names.sort();
    assert_eq!(names, [format!("acme/{ID}"), format!("globex/{ID}")]);

    // An update in acme's namespace changes acme's shadow only, and its
    // delta goes back to acme's topic.
    let out = host.handle(
        20,
        &tt("acme", "shadow/desired"),
        &update(&[("fan", 2)], &[], 20),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, tt("acme", "shadow/delta"));
    let fan = PathBuf::from_dotted("fan").unwrap();
    assert!(
        host.shadow(&format!("acme/{ID}"))
            .unwrap()
            .desired()
            .get(fan.as_path())
            .is_some()
    );
    assert!(
        host.shadow(&format!("globex/{ID}"))
            .unwrap()
            .desired()
            .get(fan.as_path())
            .is_none()
    );

    // A tenant this host does not serve, and the shared namespace: refused,
    // nothing created.
    let before = host.stats().rejected;
    assert!(
        host.handle(30, &tt("initech", "register"), &common::register_bytes(ID))
            .is_empty()
    );
    assert!(
        host.handle(
            30,
            &tt("initech", "shadow/update"),
            &update(&[], &[("fan", 1)], 30)
        )
        .is_empty()
    );
    assert_eq!(host.stats().rejected, before + 2);
    assert!(
        host.handle(30, &t("register"), &common::register_bytes(ID))
            .is_empty()
    );
    assert_eq!(host.devices().count(), 2);

    // Kept per tenant on disk, and loaded back by a restarted host.
    assert!(dir.path().join("acme").join(format!("{ID}.cbor")).exists());
    let again = TwinHost::open(dir.path(), DeviceConfig::default())
        .unwrap()
        .with_tenants(&["acme", "globex"])
        .unwrap();
    let fan_again = again
        .shadow(&format!("acme/{ID}"))
        .unwrap()
        .desired()
        .get(fan.as_path())
        .map(|e| e.value);
    assert_eq!(fan_again, Some(Value::Int(2)));
    assert!(
        TwinHost::in_memory(DeviceConfig::default())
            .with_tenants(&["Bad/Name"])
            .is_err()
    );
}

/// A device's update reporting `reported` and refusing `refused` (path,
/// reason code).
fn refusing(reported: &[(&str, i64)], refused: &[(&str, i64)], ts: u64) -> Vec<u8> {
    let mut up: ShadowUpdate<16, 512> = ShadowUpdate::decode(&update(&[], reported, ts)).unwrap();
    let mut t: StateTree<16, 512> = StateTree::new();
    for (k, v) in refused {
        t.insert(&PathBuf::from_dotted(k).unwrap(), Value::Int(*v))
            .unwrap();
    }
    up.rejected = Some(t);
    let mut buf = vec![0u8; 1024];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn refusals_are_kept_in_the_document_until_the_device_reports_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let refused_in = |host: &TwinHost| -> Vec<(String, u32)> {
        host.shadow(ID)
            .unwrap()
            .rejected()
            .map(|(p, c)| (p.keys().collect::<Vec<_>>().join("."), c))
            .collect()
    };
    {
        let mut host = host_with(
            TwinHost::open(dir.path(), DeviceConfig::default()).unwrap(),
            &[ID],
        );
        host.handle(
            100,
            &t(app_topics::SET_DESIRED),
            &update(&[("valve.position", 150)], &[], 100),
        );
        let out = host.handle(
            200,
            &t("shadow/update"),
            &refusing(&[("valve.position", 40)], &[("valve.position", 1)], 200),
        );
        // Still out of step: the delta goes out again (the device answers
        // it without a new report, see the agent's tests).
        assert_eq!(out.len(), 1);
        assert_eq!(refused_in(&host), [("valve.position".to_string(), 1)]);
        // The app's GET sees it in the document.
        let out = host.handle(210, &t(app_topics::GET), b"");
        let doc = lanyard_std::twin::TwinShadow::decode(&out[0].payload, ConflictPolicy::CloudWins)
            .unwrap();
        assert_eq!(doc.rejected().count(), 1);
        // An app's desired update does not withdraw it: only the device can.
        host.handle(
            300,
            &t(app_topics::SET_DESIRED),
            &update(&[("valve.position", 160)], &[], 300),
        );
        assert_eq!(refused_in(&host).len(), 1);
        // A refusal that does not decode as reason codes is refused whole.
        let v = host.shadow(ID).unwrap().version();
        let mut up: ShadowUpdate<16, 512> =
            ShadowUpdate::decode(&update(&[], &[("valve.position", 41)], 310)).unwrap();
        let mut bad: StateTree<16, 512> = StateTree::new();
        bad.insert(
            &PathBuf::from_dotted("valve.position").unwrap(),
            Value::Text("no"),
        )
        .unwrap();
        up.rejected = Some(bad);
        let mut buf = vec![0u8; 1024];
        let n = up.encode(&mut buf).unwrap();
        let out = host.handle(310, &t("shadow/update"), &buf[..n]);
        assert_eq!(out[0].topic, t(app_topics::REJECTED));
        assert_eq!(host.shadow(ID).unwrap().version(), v);
        assert_eq!(
            host.shadow(ID)
                .unwrap()
                .reported()
                .get_dotted("valve.position")
                .unwrap()
                .value,
            Value::Int(40)
        );
    }
    // Kept across a restart of the host.
    let mut host = TwinHost::open(dir.path(), DeviceConfig::default()).unwrap();
    assert_eq!(refused_in(&host), [("valve.position".to_string(), 1)]);
    // The device takes a later value and reports without the refusal.
    host.handle(
        400,
        &t("shadow/update"),
        &update(&[], &[("valve.position", 80)], 400),
    );
    assert!(refused_in(&host).is_empty());
}

#[test]
fn desired_state_past_what_the_device_holds_is_refused_and_the_app_told_why() {
    use lanyard_std::twin::DesiredAnswer;
    let mut host = TwinHost::in_memory(DeviceConfig::default());
    let mut buf = vec![0u8; 256];
    let n = Register {
        device_id: ID,
        firmware: "1",
        config_version: 0,
        boot_count: 1,
        time_ms: 5,
        resumed: false,
        capacity: Some(ShadowCapacity {
            leaves: 4,
            pool_bytes: 64,
        }),
    }
    .encode(&mut buf)
    .unwrap();
    host.handle(10, &t("register"), &buf[..n]);
    let with_token = |pairs: &[(&str, i64)], token: &str| {
        let mut up: ShadowUpdate<16, 512> = ShadowUpdate::decode(&update(pairs, &[], 20)).unwrap();
        up.client_token = Some(heapless::String::try_from(token).unwrap());
        let mut b = vec![0u8; 1024];
        let n = up.encode(&mut b).unwrap();
        b.truncate(n);
        b
    };
    let with_token_null = |gone: &str, (k, v): (&str, i64), token: &str| {
        let mut d: StateTree<16, 512> = StateTree::new();
        d.insert(&PathBuf::from_dotted(gone).unwrap(), Value::Null)
            .unwrap();
        d.insert(&PathBuf::from_dotted(k).unwrap(), Value::Int(v))
            .unwrap();
        let mut up: ShadowUpdate<16, 512> = ShadowUpdate::new(60);
        up.desired = Some(d);
        up.client_token = Some(heapless::String::try_from(token).unwrap());
        let mut b = vec![0u8; 1024];
        let n = up.encode(&mut b).unwrap();
        b.truncate(n);
        b
    };
    let answer_of = |out: &[lanyard_std::twin::Publish]| {
        out.iter()
            .find(|p| p.topic == t(app_topics::ANSWER))
            .and_then(|p| DesiredAnswer::decode(&p.payload))
            .expect("an answer")
    };

    // Three leaves fit: applied, answered with the version, the delta sent.
    let out = host.handle(
        20,
        &t(app_topics::SET_DESIRED),
        &with_token(&[("a", 1), ("b", 2), ("c", 3)], "t1"),
    );
    assert_eq!(
        answer_of(&out),
        DesiredAnswer {
            token: "t1".into(),
            outcome: Ok(1)
        }
    );
    assert!(out.iter().any(|p| p.topic == t("shadow/delta")));

    // Two more would make five: refused whole, the app told why, nothing
    // sent to the device, the document as it was.
    let out = host.handle(
        30,
        &t(app_topics::SET_DESIRED),
        &with_token(&[("d", 4), ("e", 5)], "t2"),
    );
    let answer = answer_of(&out);
    assert_eq!(answer.token, "t2");
    let why = answer.outcome.unwrap_err();
    assert!(
        why.contains("5 leaves") && why.contains("4 leaves"),
        "{why}"
    );
    assert!(out.iter().any(|p| p.topic == t(app_topics::REJECTED)));
    assert!(!out.iter().any(|p| p.topic == t("shadow/delta")));
    let s = host.shadow(ID).unwrap();
    assert_eq!((s.version(), s.desired().len()), (1, 3));

    // Bytes count as well as leaves.
    let long = "x".repeat(60);
    let out = host.handle(
        40,
        &t(app_topics::SET_DESIRED),
        &with_token(&[(long.as_str(), 1)], "t3"),
    );
    assert!(answer_of(&out).outcome.is_err());
    assert_eq!(host.shadow(ID).unwrap().desired().len(), 3);

    // The same through the AWS topics: update/rejected, code 413.
    let out = host.handle(
        50,
        &format!("$aws/things/{ID}/shadow/update"),
        json!({"state": {"desired": {"f": 6, "g": 7}}, "clientToken": "aws1"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        out[0].topic,
        format!("$aws/things/{ID}/shadow/update/rejected")
    );
    let doc: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(
        (doc["code"].as_u64(), doc["clientToken"].as_str()),
        (Some(413), Some("aws1"))
    );
    assert_eq!(host.shadow(ID).unwrap().desired().len(), 3);

    // Deleting one makes room for another.
    let out = host.handle(
        60,
        &t(app_topics::SET_DESIRED),
        &with_token_null("a", ("d", 4), "t4"),
    );
    assert!(answer_of(&out).outcome.is_ok());
}

#[test]
fn a_registration_repeated_before_its_answer_arrived_is_answered_again_not_counted() {
    let mut host = TwinHost::in_memory(DeviceConfig::default());
    let reg = |boot_count: u64| {
        let mut buf = vec![0u8; 256];
        let n = Register {
            device_id: ID,
            firmware: "1",
            config_version: 0,
            boot_count,
            time_ms: 5,
            resumed: false,
            capacity: None,
        }
        .encode(&mut buf)
        .unwrap();
        buf.truncate(n);
        buf
    };
    for at in [10, 2_010, 6_010] {
        let out = host.handle(at, &t("register"), &reg(1));
        assert_eq!(out.len(), 1, "every try is answered");
        assert_eq!(out[0].topic, t("register/accepted"));
    }
    assert_eq!(
        (
            host.stats().registrations,
            host.stats().registration_retries
        ),
        (1, 2)
    );
    // The next boot registers anew.
    host.handle(9_000, &t("register"), &reg(2));
    assert_eq!(
        (
            host.stats().registrations,
            host.stats().registration_retries
        ),
        (2, 2)
    );
}

#[test]
fn every_way_in_has_the_same_effects_on_devices_and_on_subscribers_of_the_other_format() {
    let mut host = host_with(
        TwinHost::in_memory(DeviceConfig::default()).with_aws_topics(true),
        &[ID],
    );
    let aws = |suffix: &str| format!("$aws/things/{ID}/shadow/{suffix}");
    let topics = |out: &[lanyard_std::twin::Publish]| -> Vec<String> {
        out.iter().map(|p| p.topic.clone()).collect()
    };
    // An app's desired state (CBOR): the device's delta, and the AWS
    // subscribers' delta and documents.
    let out = host.handle(
        10,
        &t(app_topics::SET_DESIRED),
        &update(&[("a", 1)], &[], 10),
    );
    assert_eq!(
        topics(&out),
        [
            t("shadow/delta"),
            aws("update/delta"),
            aws("update/documents")
        ]
    );
    let docs: serde_json::Value = serde_json::from_slice(&out[2].payload).unwrap();
    assert_eq!(docs["current"]["state"]["desired"], json!({"a": 1}));
    // Desired state through AWS: the same for the device (the CBOR delta).
    let out = host.handle(20, &aws("update"), br#"{"state":{"desired":{"b":2}}}"#);
    assert_eq!(
        topics(&out),
        [
            aws("update/accepted"),
            t("shadow/delta"),
            aws("update/delta"),
            aws("update/documents")
        ]
    );
    let d: ShadowDelta<16, 512> = ShadowDelta::decode(&out[1].payload).unwrap();
    assert_eq!(d.state.get_dotted("b").unwrap().value, Value::Int(2));
    // The device reports both (CBOR): in step, no delta anywhere; AWS
    // subscribers see the reported side change.
    let out = host.handle(
        30,
        &t("shadow/update"),
        &update(&[], &[("a", 1), ("b", 2)], 30),
    );
    assert_eq!(topics(&out), [aws("update/documents")]);
    let docs: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(
        docs["current"]["state"]["reported"],
        json!({"a": 1, "b": 2})
    );
    // Reported through AWS while desired differs: the device hears the delta.
    host.handle(
        40,
        &t(app_topics::SET_DESIRED),
        &update(&[("a", 5)], &[], 40),
    );
    let out = host.handle(50, &aws("update"), br#"{"state":{"reported":{"b":3}}}"#);
    assert!(
        topics(&out).contains(&t("shadow/delta")),
        "{:?}",
        topics(&out)
    );
    // Without the AWS topics, nothing is published on them.
    let mut plain = host_with(TwinHost::in_memory(DeviceConfig::default()), &[ID]);
    let out = plain.handle(
        10,
        &t(app_topics::SET_DESIRED),
        &update(&[("a", 1)], &[], 10),
    );
    assert_eq!(topics(&out), [t("shadow/delta")]);
}

fn heartbeat(
    seq: u64,
    state: lanyard_core::agent::lifecycle::LifecycleState,
    health: lanyard_core::agent::health::HealthStatus,
) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let n = Heartbeat {
        seq,
        time_ms: seq,
        uptime_ms: seq,
        state,
        health,
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(n);
    buf
}

/// Liveness: a device silent for 3 heartbeat intervals is offline (one
/// event), online again at its next message; state and health changes are
/// events too, and the metrics count devices by state, health and
/// liveness.
#[test]
fn a_silent_device_goes_offline_and_its_changes_are_events() {
    use lanyard_core::agent::health::HealthStatus;
    use lanyard_core::agent::lifecycle::LifecycleState;
    use lanyard_std::twin::FleetEvent;

    let fleet = DeviceConfig {
        heartbeat_ms: 1_000,
        ..DeviceConfig::default()
    };
    let metrics = lanyard_std::metrics::Metrics::new();
    let mut host = host_with(TwinHost::in_memory(fleet), &[ID]).with_metrics(metrics.clone());
    let events = |out: Vec<lanyard_std::twin::Publish>| -> Vec<FleetEvent> {
        out.iter()
            .filter(|p| p.topic == t("fleet/event"))
            .map(|p| FleetEvent::decode(&p.payload).unwrap())
            .collect()
    };
    let hb = |seq, state| heartbeat(seq, state, HealthStatus::Normal);
    assert!(
        events(host.handle(10_000, &t("heartbeat"), &hb(1, LifecycleState::Active))).is_empty()
    );
    assert!(
        host.check_liveness(13_000).is_empty(),
        "3 intervals: not yet"
    );
    let gone = events(host.check_liveness(13_001));
    assert_eq!(
        gone,
        [FleetEvent::Offline {
            at_ms: 13_001,
            last_seen_ms: 10_000
        }]
    );
    assert!(host.is_offline(ID));
    assert!(host.check_liveness(20_000).is_empty(), "said once");
    host.export();
    assert!(metrics.render().contains("lanyard_twin_devices_offline 1"));

    // Back, degraded and critical: three events in one message.
    let back = events(host.handle(
        21_000,
        &t("heartbeat"),
        &heartbeat(2, LifecycleState::Degraded, HealthStatus::Critical),
    ));
    assert_eq!(
        back,
        [
            FleetEvent::Online { at_ms: 21_000 },
            FleetEvent::Lifecycle {
                at_ms: 21_000,
                from: LifecycleState::Active,
                to: LifecycleState::Degraded
            },
            FleetEvent::Health {
                at_ms: 21_000,
                status: HealthStatus::Critical
            },
        ]
    );
    assert!(!host.is_offline(ID));
    assert_eq!(host.last_seen(ID), Some(21_000));
    host.export();
    let text = metrics.render();
    assert!(text.contains("lanyard_twin_devices_offline 0"), "{text}");
    assert!(
        text.contains("lanyard_twin_devices{state=\"Degraded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lanyard_twin_devices{state=\"Active\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("lanyard_twin_devices_by_health{status=\"Critical\"} 1"),
        "{text}"
    );

    // A device that never registered is not watched.
    let other = "lanyard/v1/ly-0000000000ff/heartbeat";
    assert!(
        host.handle(21_000, other, &hb(1, LifecycleState::Active))
            .is_empty()
    );
    assert!(!host.is_offline("ly-0000000000ff"));
    assert_eq!(host.last_seen("ly-0000000000ff"), None);
}

/// The shipped alert rules name only metrics a twin host exports.
#[test]
fn the_alert_rules_use_the_hosts_metrics() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/lanyard-alerts.yml"
    ))
    .unwrap();
    let metrics = lanyard_std::metrics::Metrics::new();
    let host = TwinHost::in_memory(DeviceConfig::default()).with_metrics(metrics.clone());
    host.export();
    let exported = metrics.render();
    let mut named = 0;
    for (i, _) in rules.match_indices("lanyard_twin_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "{name} is not exported"
        );
        named += 1;
    }
    assert!(named >= 7, "{named}");
}

/// A conflict under MANUAL_RESOLVE is parked, told to apps, listed, and
/// settled by an operator with either winner: the cloud's value goes to
/// the device as a delta, the device's becomes the desired value. Requests
/// that name no parked conflict are answered with why.
#[test]
fn an_operator_settles_a_parked_conflict_with_either_winner() {
    use lanyard_core::shadow::{FleetPolicies, Source};
    use lanyard_std::twin::{FleetEvent, ListRequest, Listing, ResolveRequest};

    let mut policies = FleetPolicies::new(ConflictPolicy::CloudWins);
    policies
        .set("setpoint", ConflictPolicy::ManualResolve)
        .unwrap();
    policies.set("mode", ConflictPolicy::ManualResolve).unwrap();
    let mut host = host_with(
        TwinHost::in_memory(DeviceConfig::default()).with_policies(policies),
        &[ID, "ly-0a1b2c3d4e60"],
    );
    // Both sides agree, then both change while the device is away.
    host.handle(
        0,
        &t(app_topics::SET_DESIRED),
        &update(&[("setpoint", 20), ("mode", 1)], &[], 0),
    );
    host.handle(
        0,
        &t("shadow/update"),
        &update(&[], &[("setpoint", 20), ("mode", 1)], 0),
    );
    host.handle(
        1_000,
        &t(app_topics::SET_DESIRED),
        &update(&[("setpoint", 22), ("mode", 2)], &[], 1_000),
    );
    let out = host.handle(
        2_000,
        &t("shadow/update"),
        &update(&[], &[("setpoint", 18), ("mode", 3)], 1_500),
    );
    let parked: Vec<FleetEvent> = out
        .iter()
        .filter(|p| p.topic == t("fleet/event"))
        .filter_map(|p| FleetEvent::decode(&p.payload))
        .collect();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(parked.iter().all(|e| matches!(
        e,
        FleetEvent::Conflict {
            policy: ConflictPolicy::ManualResolve,
            winner: None,
            ..
        }
    )));
    assert_eq!(host.shadow(ID).unwrap().parked().count(), 2);

    // The fleet's inventory shows them waiting.
    let list = |host: &mut TwinHost, after: Option<&str>, limit| {
        let out = host.handle(
            3_000,
            "lanyard/v1/lanyard-fleet/operator/list",
            &ListRequest {
                token: "l".into(),
                after: after.map(str::to_owned),
                limit,
            }
            .encode(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].topic,
            "lanyard/v1/lanyard-fleet/operator/list/answer"
        );
        Listing::decode(&out[0].payload).unwrap()
    };
    let page = list(&mut host, None, 1);
    assert_eq!(page.devices.len(), 1);
    assert_eq!(page.devices[0].device, ID);
    assert_eq!(page.devices[0].parked, 2);
    assert_eq!(
        page.devices[0].firmware.as_deref(),
        Some("1"),
        "as it registered"
    );
    assert_eq!(page.next.as_deref(), Some(ID));
    let rest = list(&mut host, page.next.as_deref(), 10);
    assert_eq!(rest.devices.len(), 1);
    assert_eq!(rest.devices[0].device, "ly-0a1b2c3d4e60");
    assert_eq!(rest.next, None);

    let resolve = |host: &mut TwinHost, path: &str, winner| {
        host.handle(
            4_000,
            &t("operator/resolve"),
            &ResolveRequest {
                token: format!("r-{path}"),
                path: path.into(),
                winner,
            }
            .encode(),
        )
    };
    let answer = |out: &[lanyard_std::twin::Publish]| {
        let a = out
            .iter()
            .find(|p| p.topic == t("shadow/desired/answer"))
            .expect("answered");
        lanyard_std::twin::DesiredAnswer::decode(&a.payload)
            .unwrap()
            .outcome
    };
    // The device's value stands: it becomes desired.
    let out = resolve(&mut host, "mode", Source::Device);
    assert!(answer(&out).is_ok(), "{:?}", answer(&out));
    let s = host.shadow(ID).unwrap();
    assert_eq!(s.desired().get_dotted("mode").unwrap().value, Value::Int(3));
    assert_eq!(s.parked().count(), 1);
    // The cloud's value stands: the device is sent it.
    let out = resolve(&mut host, "setpoint", Source::Cloud);
    assert!(answer(&out).is_ok());
    let delta = out
        .iter()
        .find(|p| p.topic == t("shadow/delta"))
        .expect("the device is sent the cloud's value");
    let d: ShadowDelta<16, 512> = ShadowDelta::decode(&delta.payload).unwrap();
    assert_eq!(
        d.state.get_dotted("setpoint").unwrap().value,
        Value::Int(22)
    );
    assert_eq!(d.state.get_dotted("mode"), None, "settled for the device");
    assert_eq!(host.shadow(ID).unwrap().parked().count(), 0);
    // The device takes it: in sync.
    host.handle(
        5_000,
        &t("shadow/update"),
        &update(&[], &[("setpoint", 22)], 5_000),
    );
    assert!(host.shadow(ID).unwrap().in_sync());

    // Nothing parked there (any more), a bad path, garbage: told why.
    let again = answer(&resolve(&mut host, "setpoint", Source::Cloud)).unwrap_err();
    assert!(again.contains("no conflict is waiting"), "{again}");
    let bad = answer(&resolve(&mut host, "a..b", Source::Cloud)).unwrap_err();
    assert!(bad.contains("a..b"), "{bad}");
    let out = host.handle(6_000, &t("operator/resolve"), b"\x01");
    assert_eq!(out[0].topic, t("shadow/rejected"));

    // Decommissioned: the operator waiting is answered with its own token
    // (not with a refusal any app's wait could take for its own).
    let mut event = vec![0u8; 64];
    let n = LifecycleEvent {
        from: lanyard_core::agent::lifecycle::LifecycleState::Active,
        to: lanyard_core::agent::lifecycle::LifecycleState::Decommissioned,
        cause: lanyard_core::agent::lifecycle::Trigger::Decommission,
        time_ms: 7_000,
        seq: 9,
    }
    .encode(&mut event)
    .unwrap();
    host.handle(7_000, &t("lifecycle"), &event[..n]);
    let out = resolve(&mut host, "mode", Source::Cloud);
    assert!(
        out.iter().all(|p| p.topic != t("shadow/rejected")),
        "{out:?}"
    );
    let why = answer(&out).unwrap_err();
    assert!(why.contains("decommissioned"), "{why}");
    let a = out
        .iter()
        .find(|p| p.topic == t("shadow/desired/answer"))
        .unwrap();
    assert_eq!(
        lanyard_std::twin::DesiredAnswer::decode(&a.payload)
            .unwrap()
            .token,
        "r-mode"
    );
}

/// After a conflict the core holds the next sync back a while (a jittered
/// backoff); changes arriving meanwhile are settled when the wait is over,
/// without waiting for the device's next message.
#[test]
fn a_sync_held_back_after_a_conflict_is_settled_when_its_wait_is_over() {
    let mut host = host_with(TwinHost::in_memory(DeviceConfig::default()), &[ID]);
    let base = 1_790_000_000_000u64;
    let set = |host: &mut TwinHost, at: u64, v: i64| {
        host.handle(
            at,
            &t(app_topics::SET_DESIRED),
            &update(&[("temp", v)], &[], at),
        )
    };
    let report = |host: &mut TwinHost, at: u64, v: i64| {
        host.handle(at, &t("shadow/update"), &update(&[], &[("temp", v)], at))
    };
    set(&mut host, base, 20);
    report(&mut host, base + 100, 20);
    // A conflict (cloud wins): the next sync waits up to a second.
    set(&mut host, base + 1_000, 22);
    report(&mut host, base + 1_100, 18);
    assert_eq!(host.stats().conflicts, [1, 0, 0, 0]);
    assert!(
        host.settle_deferred(base + 1_100).is_empty(),
        "nothing held"
    );
    // Both sides change again at once: held back, not yet decided.
    set(&mut host, base + 1_100, 25);
    report(&mut host, base + 1_100, 15);
    assert_eq!(host.stats().conflicts, [1, 0, 0, 0], "held back");
    let out = host.settle_deferred(base + 3_000);
    assert_eq!(
        host.stats().conflicts,
        [2, 0, 0, 0],
        "decided once the wait was over"
    );
    let delta = out
        .iter()
        .find(|p| p.topic == t("shadow/delta"))
        .expect("the cloud's value sent");
    let d: ShadowDelta<16, 512> = ShadowDelta::decode(&delta.payload).unwrap();
    assert_eq!(d.state.get_dotted("temp").unwrap().value, Value::Int(25));
    assert!(host.settle_deferred(base + 9_000).is_empty(), "once");
}

#[test]
fn a_command_for_a_device_not_in_service_is_refused_at_once_by_the_host() {
    let mut host = host_with(TwinHost::in_memory(DeviceConfig::default()), &[ID]);
    let command = |id: &str| {
        let mut buf = vec![0u8; 128];
        let n = Command {
            id,
            name: "blink_led",
            args: &[],
            issued_ms: 1_000,
            expires_ms: 60_000,
        }
        .encode(&mut buf)
        .unwrap();
        buf.truncate(n);
        buf
    };
    // A registered device answers for itself: the host says nothing.
    assert!(host.handle(1_000, &t("cmd"), &command("c1")).is_empty());
    // One that never registered: rejected on its ack topic, and nothing is
    // made for it.
    let stranger = "ly-ffffffffffff";
    let out = host.handle(1_000, &format!("lanyard/v1/{stranger}/cmd"), &command("c2"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, format!("lanyard/v1/{stranger}/ack"));
    let ack = Ack::decode(&out[0].payload).unwrap();
    assert_eq!(
        (ack.command_id, ack.status, ack.reason, ack.detail),
        (
            "c2",
            AckStatus::Rejected,
            Some(AckReason::UnknownDevice),
            Some("no device with this id has registered")
        )
    );
    assert_eq!(host.devices().count(), 1);
    // Bytes that are no command are ignored.
    assert!(
        host.handle(1_000, &format!("lanyard/v1/{stranger}/cmd"), b"\xff")
            .is_empty()
    );
}

/// A desired update carrying a client token.
fn update_with_token(desired: &[(&str, i64)], token: &str) -> Vec<u8> {
    let mut t: StateTree<16, 512> = StateTree::new();
    for (k, v) in desired {
        t.insert(&PathBuf::from_dotted(k).unwrap(), Value::Int(*v))
            .unwrap();
    }
    let mut up: ShadowUpdate<16, 512> = ShadowUpdate::new(5);
    up.desired = Some(t);
    up.client_token = Some(heapless::String::try_from(token).unwrap());
    let mut buf = vec![0u8; 1024];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn only_the_hosts_operators_write_and_the_audit_log_names_them() {
    use lanyard_std::twin::{DesiredAnswer, ResolveRequest};

    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let mut host = host_with(
        TwinHost::in_memory(DeviceConfig::default())
            .with_operators(&["lanyard-ops", "lanyard-oncall"])
            .with_audit(&audit)
            .unwrap(),
        &[ID],
    );
    let answer = |out: &[lanyard_std::twin::Publish]| {
        out.iter()
            .find(|p| p.topic == t("shadow/desired/answer"))
            .and_then(|p| DesiredAnswer::decode(&p.payload))
            .expect("an answer")
    };
    let version = host.shadow(ID).unwrap().version();

    // Not naming its writer, or naming one not in the list: refused, the
    // writer told why on its token, nothing changed.
    let out = host.handle(
        10,
        &t("shadow/desired"),
        &update_with_token(&[("fan", 1)], "t1"),
    );
    let a = answer(&out);
    assert_eq!(a.token, "t1");
    assert!(
        a.outcome
            .as_ref()
            .unwrap_err()
            .contains("only from its operators"),
        "{a:?}"
    );
    let out = host.handle(
        11,
        &t("shadow/desired/by/lanyard-eve"),
        &update_with_token(&[("fan", 2)], "t2"),
    );
    assert_eq!(
        answer(&out).outcome,
        Err("lanyard-eve is not an operator of this fleet".to_owned())
    );
    let resolve = ResolveRequest {
        token: "t3".into(),
        path: "fan".into(),
        winner: lanyard_core::shadow::Source::Cloud,
    };
    let out = host.handle(12, &t("operator/resolve/by/lanyard-eve"), &resolve.encode());
    assert_eq!(answer(&out).token, "t3");
    assert!(answer(&out).outcome.is_err());
    let mut token = Vec::new();
    minicbor::encode("t4", &mut token).unwrap();
    let out = host.handle(13, &t("operator/reprovision/by/lanyard-eve"), &token);
    assert_eq!(answer(&out).token, "t4");
    assert_eq!(host.stats().unauthorised, 4);
    assert_eq!(host.shadow(ID).unwrap().version(), version);

    // A writer named on a topic that is not an operator's write: ignored.
    assert!(
        host.handle(
            14,
            &t("shadow/update/by/lanyard-ops"),
            &update(&[], &[("fan", 9)], 14)
        )
        .is_empty()
    );

    // An operator's write is applied and recorded under its name.
    let out = host.handle(
        20,
        &t("shadow/desired/by/lanyard-oncall"),
        &update_with_token(&[("fan", 3)], "t5"),
    );
    assert_eq!(answer(&out).outcome, Ok(version + 1));
    assert_eq!(host.stats().unauthorised, 4);

    // Commands and configurations: an operator's are passed on to the
    // device's own topic, anyone else's answered with the reason.
    let mut buf = [0u8; 256];
    let n = Command {
        id: "c1",
        name: "blink_led",
        args: &[],
        issued_ms: 30,
        expires_ms: 60_000,
    }
    .encode(&mut buf)
    .unwrap();
    let cmd = buf[..n].to_vec();
    let out = host.handle(30, &t("cmd/by/lanyard-eve"), &cmd);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, t("ack"));
    let ack = Ack::decode(&out[0].payload).unwrap();
    assert_eq!(
        (ack.command_id, ack.status, ack.reason, ack.detail),
        (
            "c1",
            AckStatus::Rejected,
            Some(AckReason::NotAllowed),
            Some("lanyard-eve is not an operator of this fleet")
        )
    );
    let out = host.handle(31, &t("cmd/by/lanyard-ops"), &cmd);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].topic.as_str(), &out[0].payload),
        (t("cmd").as_str(), &cmd)
    );
    let mut patch = lanyard_core::agent::config::ConfigPatch::new(7);
    patch
        .set(
            lanyard_core::agent::config::ConfigField::TelemetryMs,
            60_000,
        )
        .unwrap();
    let mut e = minicbor::Encoder::new(Vec::new());
    patch.encode_cbor(&mut e).unwrap();
    let config = e.into_writer();
    let out = host.handle(32, &t("config/by/lanyard-eve"), &config);
    let refused = ConfigAck::decode(&out[0].payload).unwrap();
    assert_eq!(
        (refused.version, refused.outcome),
        (7, ConfigOutcome::Rejected)
    );
    let out = host.handle(33, &t("config/by/lanyard-ops"), &config);
    assert_eq!(
        (out[0].topic.as_str(), &out[0].payload),
        (t("config").as_str(), &config)
    );
    // The passed-on configuration comes back on the device's topic: not
    // recorded twice.
    assert!(host.handle(34, &t("config"), &config).is_empty());
    assert_eq!(host.stats().unauthorised, 6);

    // An operator's decommissioning: the entry names who asked for it.
    let n = Command {
        id: "c2",
        name: "decommission",
        args: &[],
        issued_ms: 40,
        expires_ms: 60_000,
    }
    .encode(&mut buf)
    .unwrap();
    assert_eq!(
        host.handle(40, &t("cmd/by/lanyard-oncall"), &buf[..n])
            .len(),
        1
    );
    let mut ev = [0u8; 64];
    let n = LifecycleEvent {
        from: lanyard_core::agent::lifecycle::LifecycleState::Active,
        to: lanyard_core::agent::lifecycle::LifecycleState::Decommissioned,
        cause: lanyard_core::agent::lifecycle::Trigger::Decommission,
        time_ms: 41,
        seq: 3,
    }
    .encode(&mut ev)
    .unwrap();
    host.handle(41, &t("lifecycle"), &ev[..n]);

    host.flush().unwrap();
    let log = std::fs::read_to_string(&audit).unwrap();
    let desired: Vec<&str> = log.lines().filter(|l| l.contains("desired_set")).collect();
    assert_eq!(desired.len(), 1, "{log}");
    assert!(desired[0].contains("\"actor\":\"lanyard-oncall\""), "{log}");
    let pushed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config_pushed"))
        .collect();
    assert_eq!(pushed.len(), 1, "{log}");
    assert!(pushed[0].contains("\"actor\":\"lanyard-ops\""), "{log}");
    let retired: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"decommissioned\""))
        .collect();
    assert_eq!(retired.len(), 1, "{log}");
    assert!(
        retired[0].contains("\"requested_by\":\"lanyard-oncall\""),
        "{log}"
    );
}
