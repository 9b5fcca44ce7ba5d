//! `lanyard fleet` as an operator runs it, against mosquitto, a `lanyard
//! twin` and a `lanyard device`, each its own process.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mosquitto, lanyard_cli};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("LANYARD_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap(),
    )
}

#[test]
fn an_operator_sets_shows_commands_decommissions_and_reprovisions() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = dir.path().join("twin");
    let dev_dir = dir.path().join("dev");
    // The host takes writes from its operators only (`lanyard fleet`
    // names its client id, `lanyard-operator` by default, as the writer).
    let _twin = spawn(&[
        "twin",
        "--broker",
        &url,
        "--state-dir",
        twin_dir.to_str().unwrap(),
        "--operators",
        "lanyard-operator,lanyard-oncall",
    ]);
    let mut dev = spawn(&[
        "device",
        "--broker",
        &url,
        "--state-dir",
        dev_dir.to_str().unwrap(),
    ]);
    let id = "ly-020000000001";
    let fleet = |args: &[&str]| {
        let mut all = vec!["fleet", "--broker", &url];
        all.extend_from_slice(args);
        lanyard_cli(&all)
    };
    let show = || {
        let (ok, out, err) = fleet(&["show", id, "--json"]);
        ok.then(|| serde_json::from_str::<serde_json::Value>(&out).unwrap())
            .ok_or(err)
    };
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    until("the device registered", &|| show().is_ok());

    // Anyone else is refused, with the reason.
    let (ok, _, err) = fleet(&["--client-id", "lanyard-eve", "set", id, "fan.speed=9"]);
    assert!(!ok, "a write from outside the operator list");
    assert!(
        err.contains("lanyard-eve is not an operator of this fleet"),
        "{err}"
    );
    let (ok, _, err) = fleet(&["--client-id", "lanyard-eve", "command", id, "diagnostics"]);
    assert!(!ok, "a command from outside the operator list");
    assert!(
        err.contains("Rejected: lanyard-eve is not an operator of this fleet"),
        "{err}"
    );
    let (ok, out, _) = fleet(&[
        "--client-id",
        "lanyard-eve",
        "config",
        "--version",
        "9",
        "--set",
        "telemetry_ms=60000",
        id,
    ]);
    assert!(!ok, "a configuration from outside the operator list");
    assert!(
        out.contains("lanyard-eve is not an operator of this fleet"),
        "{out}"
    );

    // Desired state, answered with the version; the device reports it.
    let (ok, out, err) = fleet(&["set", id, "fan.speed=3", r#"mode="eco""#]);
    assert!(ok, "{err}");
    assert!(out.contains("desired state set, version"), "{out}");
    until("the device reported the desired state", &|| {
        show().is_ok_and(|s| {
            s["state"]["reported"]["fan"]["speed"] == 3 && s["state"]["reported"]["mode"] == "eco"
        })
    });
    let s = show().unwrap();
    assert_eq!(s["desired"]["mode"]["by"], "cloud");
    assert_eq!(s["reported"]["mode"]["by"], "device");
    let (ok, table, _) = fleet(&["show", id]);
    assert!(ok);
    assert!(
        table.contains("fan.speed") && table.contains("\"eco\""),
        "{table}"
    );

    // Refused writes say why, and exit 1.
    let (ok, _, err) = fleet(&["set", "ly-0000000000ee", "x=1"]);
    assert!(!ok);
    assert!(err.contains("ly-0000000000ee"), "{err}");
    let (ok, _, err) = fleet(&["set", id, "x=not json"]);
    assert!(!ok);
    assert!(err.contains("is not JSON"), "{err}");

    // A command, waited for to its final acknowledgement.
    let (ok, out, err) = fleet(&["command", id, "diagnostics"]);
    assert!(ok, "{err}");
    let ack: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ack["status"], "Succeeded");
    let (ok, out, _) = fleet(&["command", id, "reboot_the_moon"]);
    assert!(!ok);
    assert!(out.contains("Rejected"), "{out}");

    // Decommissioned: the device exits, the host refuses it; then back.
    let (ok, _, err) = fleet(&["decommission", id]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the device did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    until("the host refuses the decommissioned device", &|| {
        show().is_err_and(|e| e.contains("decommissioned"))
    });
    let (ok, out, err) = fleet(&["reprovision", id]);
    assert!(ok, "{err}");
    assert!(out.contains("may register again"));
    let (ok, _, err) = fleet(&["reprovision", id]);
    assert!(!ok, "twice");
    assert!(err.contains("not decommissioned"), "{err}");
}

/// Runs `lanyard fleet ... --broker url` off the async runtime.
async fn fleet_cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<String> = vec!["fleet".into(), "--broker".into(), url.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        lanyard_cli(&refs)
    })
    .await
    .unwrap()
}

/// The operator lists a fleet of 100 devices and pushes a configuration
/// change to all of them: 100 acknowledgements, counted; the same version
/// again is ignored by each (and the command says so, exit 1); a field
/// out of range is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_lists_the_fleet_and_pushes_a_configuration_to_a_hundred_devices() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = dir.path().join("twin");
    let _twin = spawn(&[
        "twin",
        "--broker",
        &url,
        "--state-dir",
        twin_dir.to_str().unwrap(),
    ]);
    let mut devices = Vec::new();
    for i in 0..100u8 {
        let d = dir.path().join(format!("dev{i}"));
        std::fs::create_dir_all(&d).unwrap();
        devices.push(common::spawn_device(broker.port, &d, [2, 0, 0, 0, 1, i]));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let (ok, out, _) = fleet_cli(&url, &["list", "--json"]).await;
        if ok {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            if v.as_array().unwrap().len() == 100 {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "the fleet never registered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let first = &listed[0];
    assert_eq!(first["device"], "ly-020000000100");
    assert_eq!(first["online"], true);
    assert_eq!(first["decommissioned"], false);
    assert!(first["firmware"].is_string(), "{first}");
    let (ok, table, err) = fleet_cli(&url, &["list"]).await;
    assert!(ok, "{err}");
    assert!(table.contains("100 devices"), "{table}");
    assert!(table.contains("ly-020000000163"), "{table}");

    let push = [
        "config",
        "--version",
        "5",
        "--set",
        "telemetry_ms=60000",
        "--all",
        "--json",
    ];
    let (ok, out, err) = fleet_cli(&url, &push).await;
    assert!(ok, "{out} {err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["devices"], 100);
    assert_eq!(report["applied"].as_array().unwrap().len(), 100, "{report}");
    assert_eq!(report["unanswered"].as_array().unwrap().len(), 0);

    // The same version again: each device already runs it.
    let (ok, out, err) = fleet_cli(&url, &push[..push.len() - 1]).await;
    assert!(!ok);
    assert!(out.contains("0 applied, 100 ignored"), "{out}");
    assert!(
        err.contains("100 of 100 devices did not apply version 5"),
        "{err}"
    );

    // Refused before sending: a field out of range, an unknown field.
    for (set, to, why) in [
        ("heartbeat_ms=5", "--all", "heartbeat_ms=5"),
        ("speed=5", "ly-020000000100", "not a field"),
    ] {
        let (ok, _, err) = fleet_cli(&url, &["config", "--version", "6", "--set", set, to]).await;
        assert!(!ok);
        assert!(err.contains(why), "{err}");
    }

    for (stop, task) in devices {
        let _ = stop.send(());
        let _ = task.await;
    }
}

/// A property under the manual_resolve policy (`lanyard twin --policies`)
/// that both sides changed waits for an operator: listed, shown, settled
/// with the device's value and, the next time, with the cloud's, which the
/// device is sent; the device (here speaking the wire protocol itself)
/// takes it and the shadow is in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_settles_conflicts_waiting_for_manual_resolution() {
    use lanyard_core::shadow::{PathBuf, StateTree, Value};
    use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
    use lanyard_std::mqtt::{MqttConfig, MqttTransport};
    use lanyard_std::transport::{Qos, Transport, TransportEvent};

    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.json");
    std::fs::write(
        &policies,
        r#"{"*": "cloud_wins", "setpoint": "manual_resolve"}"#,
    )
    .unwrap();
    let twin_dir = dir.path().join("twin");
    let _twin = spawn(&[
        "twin",
        "--broker",
        &url,
        "--state-dir",
        twin_dir.to_str().unwrap(),
        "--policies",
        policies.to_str().unwrap(),
    ]);
    // Bad policy files are refused with the reason.
    std::fs::write(dir.path().join("bad.json"), r#"{"setpoint": "whoever"}"#).unwrap();
    let (ok, _, err) = lanyard_cli(&[
        "twin",
        "--broker",
        &url,
        "--state-dir",
        dir.path().join("t2").to_str().unwrap(),
        "--policies",
        dir.path().join("bad.json").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("whoever") && err.contains("manual_resolve"),
        "{err}"
    );

    let id = "ly-0a0000000001";
    let at = |s: &str| format!("lanyard/v1/{id}/{s}");
    let mut dev = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", broker.port, id),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    dev.subscribe(&at("shadow/delta")).await.unwrap();
    dev.subscribe(&at("register/accepted")).await.unwrap();
    let report = |v: i64, ts: u64| {
        let mut t: StateTree<8, 256> = StateTree::new();
        t.insert(&PathBuf::from_dotted("setpoint").unwrap(), Value::Int(v))
            .unwrap();
        let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(ts);
        up.reported = Some(t);
        let mut buf = vec![0u8; 256];
        let n = up.encode(&mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    // Registered, as a device retries until the host (starting) answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    'registered: loop {
        assert!(Instant::now() < deadline, "never registered");
        dev.publish(
            &at("register"),
            &common::register_bytes(id),
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
        while let Ok(ev) = tokio::time::timeout(Duration::from_secs(2), dev.recv()).await {
            if matches!(ev.unwrap(), TransportEvent::Message { ref topic, .. } if *topic == at("register/accepted"))
            {
                break 'registered;
            }
        }
    }
    let show = || async {
        let (ok, out, err) = fleet_cli(&url, &["show", id, "--json"]).await;
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let now = || lanyard_std::clock::Clock::real().now_ms();

    for (round, (cloud, device, winner, expect)) in [(22, 18, "device", 18), (30, 25, "cloud", 30)]
        .into_iter()
        .enumerate()
    {
        // Agreed at a value; then the cloud and the device change it.
        let agreed = 20 + round as i64 * 100;
        let (ok, _, err) = fleet_cli(&url, &["set", id, &format!("setpoint={agreed}")]).await;
        assert!(ok, "{err}");
        dev.publish(
            &at("shadow/update"),
            &report(agreed, now()),
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while show().await["in_sync"] != true {
            assert!(Instant::now() < deadline, "never agreed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (ok, _, err) = fleet_cli(&url, &["set", id, &format!("setpoint={cloud}")]).await;
        assert!(ok, "{err}");
        dev.publish(
            &at("shadow/update"),
            &report(device, now()),
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let parked = loop {
            let (ok, out, err) = fleet_cli(&url, &["list", "--conflicts", "--json"]).await;
            assert!(ok, "{err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            if v.as_array().unwrap().len() == 1 {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "the conflict was never parked: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(parked[0]["device"], id);
        assert_eq!(parked[0]["parked"], 1);
        assert!(show().await["conflicts_parked"]["setpoint"].is_object());

        // Drain what the device was sent so far.
        while tokio::time::timeout(Duration::from_millis(300), dev.recv())
            .await
            .is_ok()
        {}
        let (ok, out, err) =
            fleet_cli(&url, &["resolve", id, "setpoint", "--winner", winner]).await;
        assert!(ok, "{err}");
        assert!(out.contains("settled"), "{out}");
        let s = show().await;
        assert_eq!(s["state"]["desired"]["setpoint"], expect, "{s}");
        assert!(s["conflicts_parked"].as_object().unwrap().is_empty());
        if winner == "cloud" {
            // The device is sent the cloud's value, takes it, and reports.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let delta = loop {
                let ev = tokio::time::timeout_at(deadline, dev.recv())
                    .await
                    .expect("no delta")
                    .unwrap();
                if let TransportEvent::Message { topic, payload } = ev
                    && topic == at("shadow/delta")
                {
                    break ShadowDelta::<8, 256>::decode(&payload).unwrap();
                }
            };
            assert_eq!(
                delta.state.get_dotted("setpoint").unwrap().value,
                Value::Int(30)
            );
            dev.publish(&at("shadow/update"), &report(30, now()), Qos::AtLeastOnce)
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while show().await["in_sync"] != true {
            assert!(Instant::now() < deadline, "never converged");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Nothing left to settle.
        let (ok, _, err) = fleet_cli(&url, &["resolve", id, "setpoint", "--winner", winner]).await;
        assert!(!ok);
        assert!(err.contains("no conflict is waiting"), "{err}");
    }
}

/// The development broker `lanyard broker-config --dev` prints runs a
/// mosquitto that an app reaches, and keeps its listener on loopback.
#[tokio::test]
async fn the_development_broker_configuration_runs_a_mosquitto_apps_reach() {
    let broker = Mosquitto::start_with_conf(|_, port| {
        let (ok, out, err) = lanyard_cli(&["broker-config", "--dev", "--port", &port.to_string()]);
        assert!(ok, "{err}");
        assert!(
            out.contains(&format!("listener {port} 127.0.0.1\n")),
            "{out}"
        );
        assert!(!out.contains("0.0.0.0"), "{out}");
        out
    });
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let config =
        lanyard_std::mqtt::MqttConfig::from_url(&url, "dev-broker-app", None, None).unwrap();
    let transport =
        lanyard_std::mqtt::MqttTransport::connect_and_wait(config, Duration::from_secs(10))
            .await
            .expect("the development broker takes an anonymous app");
    let app = lanyard_std::app::AppClient::new(transport).await.unwrap();
    app.close(Duration::from_secs(1)).await.unwrap();
    // The files of a production broker go together, and not with --dev.
    let (ok, _, err) = lanyard_cli(&["broker-config", "--ca", "ca.pem"]);
    assert!(!ok && err.contains("--cert"), "{err}");
    let (ok, _, err) = lanyard_cli(&["broker-config", "--dev", "--ca", "ca.pem"]);
    assert!(!ok && err.contains("cannot be used"), "{err}");
}
