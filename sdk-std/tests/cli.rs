//! The `lanyard` command as a user runs it.

use std::process::Command;

fn lanyard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn decode_prints_any_message_as_json_and_refuses_garbage_clearly() {
    let (ok, out, _) = lanyard(&["decode", "a50001011b0000018bcfe591040219290403020400"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["type"], "heartbeat");
    assert_eq!(v["message"]["state"], "Active");
    let (ok, _, err) = lanyard(&["decode", "--kind", "ack", "ff00"]);
    assert!(!ok);
    assert!(err.starts_with("lanyard: ack:"), "{err}");
    let (ok, _, err) = lanyard(&["decode", "abc"]);
    assert!(!ok);
    assert!(err.contains("odd number of hex digits"), "{err}");
    // A character that is not a hex digit (here one of two bytes in UTF-8)
    // is a clear error, not a crash.
    for bad in ["aé0", "é", "a\u{200f}b0", "zz"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["decode", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a hex digit at character"),
            "{bad:?}: {err}"
        );
    }
}

/// The operator changes a hundred devices at once (its setpoint step, at
/// 3:45): the twin host answers the burst and every device reports the
/// change. With rumqttc's default in-flight window the host stopped
/// hearing from the fleet on the demo's embedded broker.
#[test]
fn the_demos_operator_changes_a_hundred_devices_at_once() {
    let (ok, out, err) = lanyard(&[
        "demo",
        "--devices",
        "100",
        "--speed",
        "10",
        "--minutes",
        "4",
    ]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("desired -> reported"))
        .unwrap_or_else(|| panic!("no desired -> reported row:\n{out}"));
    assert!(row.contains("100 changes"), "{row}");
    assert!(
        out.contains("0 times a device went offline"),
        "{}",
        out.split("== summary").nth(1).unwrap_or(&out)
    );
}

#[test]
fn the_demo_warns_above_the_speed_it_keeps() {
    let (ok, _, err) = lanyard(&[
        "demo",
        "--devices",
        "5",
        "--speed",
        "1000",
        "--minutes",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: 5 devices at 1000x may be more than this machine keeps up with"),
        "{err}"
    );
}

#[test]
fn the_demo_runs_a_small_fleet_to_its_summary() {
    // Three minutes: the operator's third step pushes a configuration.
    let dir = tempfile::tempdir().unwrap();
    let fleet_file = dir.path().join("fleet.json");
    let (ok, out, err) = lanyard(&[
        "demo",
        "--devices",
        "5",
        "--speed",
        "20",
        "--minutes",
        "3",
        "--cost-fleet",
        fleet_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("-> register"), "no timeline:\n{out}");
    assert!(out.contains("state Provisioning -> Active"), "{out}");
    let summary = out.split("== summary").nth(1).expect("a summary");
    let devices: usize = summary
        .lines()
        .skip_while(|l| !l.starts_with("devices by state"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            l.split_whitespace()
                .last()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(devices, 5);
    assert!(summary.contains("heartbeat"));
    assert!(summary.contains("conflicts by policy"));
    assert!(
        summary.contains("configuration pushed to the fleet: 5 applied, 0 ignored"),
        "{summary}"
    );
    assert!(
        summary.contains("liveness: 5 of 5 devices online"),
        "{summary}"
    );
    // The reference scenario's outcomes beside the run's: at a speed the
    // machine keeps, every device registered in time and every command
    // the operator sent succeeded.
    let table: Vec<&str> = summary
        .lines()
        .skip_while(|l| !l.starts_with("expected (the reference scenario) and this run"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(table.len(), 10, "{summary}");
    for row in ["registration", "command acks", "heartbeats"] {
        let line = table
            .iter()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row: {summary}"));
        assert!(line.contains(" ok "), "{line}");
    }
    assert!(out.contains("times are simulated"), "{out}");

    // The demo's traffic, priced for 10,000 such devices: the month's
    // messages are the demo's, scaled.
    let total: f64 = summary
        .lines()
        .find(|l| l.trim_start().starts_with("total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let (ok, out, err) = lanyard(&["cost", "--fleet", fleet_file.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["devices"], 10_000);
    let expected = total / 5.0 * 10_000.0 * (30.0 * 86_400.0 / 180.0);
    let got = report["messages_per_month"].as_f64().unwrap();
    assert!((got / expected - 1.0).abs() < 1e-6, "{got} vs {expected}");
    assert!(report["total_usd"].as_f64().unwrap() > 0.0);
}

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_command_serves_prometheus_metrics() {
    use lanyard_std::mqtt::{MqttConfig, MqttTransport};
    use lanyard_std::transport::{Qos, Transport};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut twin = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "twin",
            "--broker",
            &format!("mqtt://127.0.0.1:{}", broker.port),
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let fetch = || async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let mut app = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "app"));
    let mut register = vec![0u8; 256];
    let n = lanyard_core::agent::messages::Register {
        device_id: "t1",
        firmware: "1",
        config_version: 0,
        boot_count: 1,
        time_ms: 5,
        resumed: false,
        capacity: None,
    }
    .encode(&mut register)
    .unwrap();
    use lanyard_core::agent::messages::Encodable;
    let check = async {
        loop {
            // Keep sending until the twin is subscribed and has counted it
            // (only a registered device has a shadow to update).
            app.publish("lanyard/v1/t1/register", &register[..n], Qos::AtLeastOnce)
                .await
                .unwrap();
            app.publish(
                "$aws/things/t1/shadow/update",
                br#"{"state":{"desired":{"x":1}}}"#,
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if let Ok(body) = fetch().await {
                if body.contains("lanyard_twin_updates_total ")
                    && body.contains("lanyard_twin_shadows 1")
                {
                    assert!(body.contains("# TYPE lanyard_twin_conflicts_total counter"));
                    assert!(body.contains("lanyard_twin_conflicts_total{policy=\"cloud_wins\"} 0"));
                    return;
                }
            }
        }
    };
    let r = tokio::time::timeout(std::time::Duration::from_secs(20), check).await;
    let _ = twin.kill();
    let _ = twin.wait();
    r.expect("metrics served in time");
}

#[test]
fn a_device_with_another_identitys_certificate_is_refused_before_connecting() {
    let pki = common::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(&["ly-0000000000bb"], (2020, 2100));
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.path().join("dev.pem"), cert).unwrap();
    std::fs::write(dir.path().join("dev.key"), key).unwrap();
    assert_eq!(
        pki.client("ly-0000000000bb").client_identity().as_deref(),
        Some("ly-0000000000bb")
    );
    let p = |f: &str| dir.path().join(f).display().to_string();
    let state = p("state");
    let (ok, _, err) = lanyard(&[
        "device",
        "--broker",
        "mqtts://127.0.0.1:1",
        "--ca",
        &p("ca.pem"),
        "--cert",
        &p("dev.pem"),
        "--key",
        &p("dev.key"),
        "--mac",
        "02:00:00:00:00:aa",
        "--state-dir",
        &state,
    ]);
    assert!(!ok);
    assert!(
        err.contains("certificate is for \"ly-0000000000bb\"")
            && err.contains("this device is \"ly-0200000000aa\""),
        "{err}"
    );
}

#[test]
fn cost_prints_the_reference_fleet_and_reads_a_fleet_file() {
    let (ok, out, _) = lanyard(&["cost"]);
    assert!(ok);
    assert!(
        out.contains("275.76 M messages and 41.4 GB a month"),
        "{out}"
    );
    assert!(out.contains("$666.49"), "{out}");
    assert!(out.contains("0.067"), "{out}");
    let (ok, out, _) = lanyard(&["cost", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total_usd"], 666.49);
    assert_eq!(v["messages_per_month"], 275_760_000u64);

    // A fleet of its own: 80 % aggregated by its gateways.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.json");
    std::fs::write(
        &file,
        r#"{"classes": [{"name": "valves", "devices": 2000, "every_s": 60, "bytes": 100}],
            "operations": {"aggregation": 0.8}}"#,
    )
    .unwrap();
    let (ok, out, _) = lanyard(&["cost", "--json", "--fleet", file.to_str().unwrap()]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["devices"], 2000);
    assert_eq!(v["messages_per_month"], 2000u64 * 1440 * 30 / 5);

    std::fs::write(&file, r#"{"classes": [{"devices": 1, "every_s": 60}]}"#).unwrap();
    let (ok, _, err) = lanyard(&["cost", "--fleet", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("classes[0].bytes: missing"), "{err}");
    let (ok, _, err) = lanyard(&["cost", "--fleet", "/nonexistent/fleet.json"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/fleet.json"), "{err}");
}

#[test]
fn the_ota_demo_rolls_a_good_release_out_and_stops_a_bad_one_after_its_first_stage() {
    let (ok, out, err) = lanyard(&["demo", "--ota", "--devices", "20"]);
    assert!(ok, "{err}\n{out}");
    // 1 %, 10 %, 50 %, 100 % of 20 devices: 1, 2, 10, 20 offered.
    for stage in ["Running(0)", "Running(1)", "Running(2)", "Running(3)"] {
        assert!(out.contains(&format!("fw-2.0.0 {stage}")), "{out}");
    }
    let summary = out.split("== summary").nth(1).expect("a summary");
    assert!(summary.contains("rollout fw-2.0.0 completed"), "{summary}");
    assert!(
        summary.contains("rollout fw-3.0.0 aborted: 1 of 1 finished devices failed"),
        "{summary}"
    );
    assert!(summary.contains("  2.0.0      20"), "{summary}");
    assert!(
        summary.contains("rejected (self_test_failed)      1"),
        "{summary}"
    );
}
